//! Timestep embeddings (diffusers `models/embeddings.py`): the sinusoidal `Timesteps` projection
//! (`get_timestep_embedding`) and the `TimestepEmbedding` MLP with its optional `cond_proj` (the
//! guidance-scale input of LCM-style students, `time_cond_proj_dim`).

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cm_lora::LoraLinear;

use super::silu;

/// Sinusoidal embedding of (possibly fractional) timesteps, equal to diffusers'
/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift, scale=1, max_period=1e4)`.
///
/// `freq_i = exp(-ln(10000) * i / (dim/2 - downscale_freq_shift))`, output `[sin(t freq), cos(t freq)]`
/// (or `[cos, sin]` with `flip_sin_to_cos`), zero-padded when `dim` is odd.
///
/// The timesteps arrive as host values (one per batch element): the embedding is computed on the
/// host and uploaded once, so a forward pass never waits for a device-to-host read.
///
/// # Shapes
/// `timesteps`: `batch` values -> `[batch, dim]`.
pub fn timestep_embedding<B: Backend>(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let batch = timesteps.len();
    // The same f32 arguments torch forms, then a correctly rounded sine / cosine (a backend's
    // fast vectorised sine loses ~1e-4 at t ~ 1000, which alone would exceed the golden tolerance).
    let half = dim / 2;
    let denominator = half as f32 - downscale_freq_shift as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((i as f32 * -(10000f32.ln()) / denominator) as f64).exp() as f32)
        .collect();
    let mut values = Vec::with_capacity(batch * dim);
    for &t in timesteps {
        let args: Vec<f64> = freqs.iter().map(|&f| (t * f) as f64).collect();
        let sin = args.iter().map(|a| a.sin() as f32);
        let cos = args.iter().map(|a| a.cos() as f32);
        if flip_sin_to_cos {
            values.extend(cos);
            values.extend(sin);
        } else {
            values.extend(sin);
            values.extend(cos);
        }
        if dim % 2 == 1 {
            values.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, dim]), device)
}

/// Hyper-parameters of a [`TimestepEmbedding`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal input.
    pub in_channels: usize,
    /// Width of the embedding (`4 * block_out_channels[0]`).
    pub time_embed_dim: usize,
    /// Width of the extra condition (`time_cond_proj_dim`), if any.
    pub cond_proj_dim: Option<usize>,
}

/// `TimestepEmbedding`: `linear_2(SiLU(linear_1(t + cond_proj(cond))))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// Bias-free projection of the condition (guidance embedding) added to the input.
    pub cond_proj: Option<LoraLinear<B>>,
    /// First layer.
    pub linear_1: LoraLinear<B>,
    /// Second layer.
    pub linear_2: LoraLinear<B>,
}

impl TimestepEmbeddingConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedding<B> {
        TimestepEmbedding {
            cond_proj: self.cond_proj_dim.map(|d| {
                LinearConfig::new(d, self.in_channels)
                    .with_bias(false)
                    .init(device)
                    .into()
            }),
            linear_1: LoraLinear::new(
                &LinearConfig::new(self.in_channels, self.time_embed_dim),
                device,
            ),
            linear_2: LoraLinear::new(
                &LinearConfig::new(self.time_embed_dim, self.time_embed_dim),
                device,
            ),
        }
    }
}

impl<B: Backend> TimestepEmbedding<B> {
    /// # Shapes
    /// `sample`: `[batch, in_channels]`, `condition`: `[batch, cond_proj_dim]` -> `[batch, time_embed_dim]`.
    pub fn forward(&self, sample: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
        let sample = match (&self.cond_proj, condition) {
            (Some(proj), Some(cond)) => sample + proj.forward(cond),
            _ => sample,
        };
        self.linear_2.forward(silu(self.linear_1.forward(sample)))
    }
}

//! The oracle's student: a small MLP epsilon-predictor of low-dimensional data, conditioned on
//! the timestep (the UNet's sinusoid), a class one-hot, and optionally the guidance scale (the LCM
//! guidance embedding, as `time_cond_proj_dim` gives the SD UNet).
//!
//! `out = W_out SiLU(... SiLU(W_in [x, emb(t), onehot(c), emb(1000 (w - 1))]))`, an x0 (default),
//! noise or v prediction.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_models::nn::timestep_embedding;
use cm_schedulers::config::PredictionType;
use cm_schedulers::guidance::guidance_scale_embedding;

use crate::denoiser::Denoiser;
use crate::error::{Result, TrainError};

/// Shape of an [`MlpDenoiser`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpConfig {
    /// Data dimension.
    pub dim: usize,
    /// Number of classes (width of the one-hot condition).
    pub classes: usize,
    /// Width of the timestep sinusoid.
    pub time_dim: usize,
    /// Width of the guidance embedding (0: the network does not take `w`).
    pub guidance_dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Number of hidden layers (after the input layer).
    pub layers: usize,
    /// What the output means (the engine handles any; `Sample` predicts x0 directly, which spares
    /// a small network the `1 / alpha_t` (~15x at t = 999) amplification of a noise estimate).
    pub prediction: PredictionType,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            classes: 3,
            time_dim: 32,
            guidance_dim: 0,
            hidden: 128,
            layers: 3,
            prediction: PredictionType::Sample,
        }
    }
}

/// The MLP.
#[derive(Module, Debug)]
pub struct MlpDenoiser<B: Backend> {
    /// First layer.
    pub input: Linear<B>,
    /// Hidden layers.
    pub hidden: Vec<Linear<B>>,
    /// Output layer (`hidden -> dim`).
    pub output: Linear<B>,
    /// Width of the timestep sinusoid.
    pub time_dim: usize,
    /// Width of the guidance embedding (0: none).
    pub guidance_dim: usize,
    /// What the output means.
    pub prediction: PredictionType,
}

impl MlpConfig {
    /// A randomly initialised MLP.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MlpDenoiser<B> {
        let inputs = self.dim + self.time_dim + self.classes + self.guidance_dim;
        MlpDenoiser {
            input: LinearConfig::new(inputs, self.hidden).init(device),
            hidden: (0..self.layers)
                .map(|_| LinearConfig::new(self.hidden, self.hidden).init(device))
                .collect(),
            output: LinearConfig::new(self.hidden, self.dim).init(device),
            time_dim: self.time_dim,
            guidance_dim: self.guidance_dim,
            prediction: self.prediction,
        }
    }
}

impl<B: Backend> Denoiser<B, 2> for MlpDenoiser<B> {
    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    fn takes_guidance(&self) -> bool {
        self.guidance_dim > 0
    }

    fn predict(
        &self,
        x: Tensor<B, 4>,
        t: &[usize],
        condition: Tensor<B, 2>,
        guidance: Option<&[f32]>,
    ) -> Result<Tensor<B, 4>> {
        let [n, d, h, w] = x.dims();
        let device = x.device();
        if t.len() != n {
            return Err(TrainError::Invalid(format!(
                "{} timesteps for {n} examples",
                t.len()
            )));
        }
        let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        let mut parts = vec![
            x.reshape([n, d * h * w]),
            timestep_embedding(&times, self.time_dim, true, 0.0, &device),
            condition,
        ];
        if self.guidance_dim > 0 {
            let w = guidance.ok_or_else(|| {
                TrainError::Invalid("this MLP takes the guidance scale: pass it".into())
            })?;
            let shifted: Vec<f32> = w.iter().map(|w| w - 1.0).collect();
            parts.push(guidance_scale_embedding(
                &shifted,
                self.guidance_dim,
                &device,
            ));
        }
        let mut hidden = silu(self.input.forward(Tensor::cat(parts, 1)));
        for layer in &self.hidden {
            hidden = silu(layer.forward(hidden));
        }
        Ok(self.output.forward(hidden).reshape([n, d, h, w]))
    }
}

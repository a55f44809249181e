//! The discrete DDPM noise schedule: betas, `alpha_bar_t = prod(1 - beta)`, `alpha_t`, `sigma_t`,
//! and the forward process `x_t = alpha_t x0 + sigma_t eps` (diffusers `add_noise`).
//!
//! Numbers are computed the way diffusers / torch compute them, so timesteps and step results
//! agree to float rounding: betas in f32 from `torch.linspace` (whose f32 formula is reproduced),
//! the cumulative product accumulated in f64 and stored in f32 (torch's CPU `cumprod`).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};

/// `torch.linspace(start, end, steps, dtype=float32)`: the two halves are computed from each end.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// The betas of a config (`trained_betas` if given).
pub fn betas(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    if let Some(betas) = &config.trained_betas {
        return betas.iter().map(|&b| b as f32).collect();
    }
    match config.beta_schedule.as_str() {
        "scaled_linear" => linspace_f32(
            config.beta_start.sqrt() as f32,
            config.beta_end.sqrt() as f32,
            n,
        )
        .into_iter()
        .map(|b| b * b)
        .collect(),
        "squaredcos_cap_v2" => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
        _ => linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
    }
}

/// A discrete noise schedule over `T` training timesteps.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
}

impl NoiseSchedule {
    /// Builds the schedule of a (validated) config.
    pub fn new(config: &SchedulerConfig) -> Self {
        let betas = betas(config);
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            betas,
            alphas_cumprod,
            final_alpha_cumprod,
        }
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The betas.
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// `alpha_bar_t` for every `t`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `alpha_bar` "before" timestep 0 (1 with `set_alpha_to_one`, else `alpha_bar_0`).
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    fn check(&self, t: usize) -> Result<()> {
        if t >= self.betas.len() {
            return Err(SchedulerError::InvalidArgument(format!(
                "timestep {t} is outside 0..{}",
                self.betas.len()
            )));
        }
        Ok(())
    }

    /// `alpha_bar_t`.
    pub fn alpha_bar(&self, t: usize) -> Result<f32> {
        self.check(t)?;
        Ok(self.alphas_cumprod[t])
    }

    /// `alpha_bar_t`, or [`Self::final_alpha_cumprod`] for `t < 0` (diffusers' "previous" rule).
    pub fn alpha_bar_or_final(&self, t: i64) -> Result<f32> {
        if t < 0 {
            Ok(self.final_alpha_cumprod)
        } else {
            self.alpha_bar(t as usize)
        }
    }

    /// `alpha_t = sqrt(alpha_bar_t)`, the signal scale.
    pub fn alpha(&self, t: usize) -> Result<f32> {
        Ok(self.alpha_bar(t)?.sqrt())
    }

    /// `sigma_t = sqrt(1 - alpha_bar_t)`, the noise scale.
    pub fn sigma(&self, t: usize) -> Result<f32> {
        Ok((1.0 - self.alpha_bar(t)?).sqrt())
    }

    /// The forward process `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`, one timestep
    /// per batch element (diffusers `add_noise`).
    ///
    /// # Shapes
    /// `x0`, `noise`: `[batch, ...]`; `timesteps.len() == batch`.
    pub fn add_noise<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        noise: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>> {
        let batch = x0.dims()[0];
        if timesteps.len() != batch {
            return Err(SchedulerError::InvalidArgument(format!(
                "add_noise got {} timesteps for a batch of {batch}",
                timesteps.len()
            )));
        }
        let mut signal = Vec::with_capacity(batch);
        let mut noise_scale = Vec::with_capacity(batch);
        for &t in timesteps {
            let alpha_bar = self.alpha_bar(t)?;
            signal.push(alpha_bar.sqrt());
            noise_scale.push((1.0 - alpha_bar).sqrt());
        }
        let device = x0.device();
        Ok(x0 * per_sample(&signal, &device) + noise * per_sample(&noise_scale, &device))
    }
}

/// A `[batch, 1, ..., 1]` tensor of per-sample scalars, broadcastable against `[batch, ...]`.
pub fn per_sample<B: Backend, const D: usize>(values: &[f32], device: &B::Device) -> Tensor<B, D> {
    let mut shape = [1usize; D];
    shape[0] = values.len();
    Tensor::<B, 1>::from_floats(values, device).reshape(shape)
}

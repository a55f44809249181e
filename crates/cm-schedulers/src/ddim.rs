//! DDIM with `eta = 0` (diffusers `schedulers/scheduling_ddim.py`): inference timesteps with
//! leading / trailing / linspace spacing, and the deterministic step
//! `x0 = (x_t - sigma_t eps) / alpha_t; x_prev = alpha_prev x0 + sigma_prev eps`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Result, SchedulerError};
use crate::schedule::NoiseSchedule;

/// Inference timesteps of diffusers' `DDIMScheduler.set_timesteps(n)` (descending).
pub fn ddim_timesteps(config: &SchedulerConfig, n: usize) -> Result<Vec<usize>> {
    let t = config.num_train_timesteps;
    if n == 0 || n > t {
        return Err(SchedulerError::InvalidArgument(format!(
            "number of inference steps must be in 1..={t}, got {n}"
        )));
    }
    let steps: Vec<i64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, T - 1, n).round()[::-1]
            (0..n)
                .rev()
                .map(|i| {
                    let v = if n == 1 {
                        0.0
                    } else {
                        (t - 1) as f64 * i as f64 / (n - 1) as f64
                    };
                    v.round_ties_even() as i64
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (t / n) as i64;
            (0..n as i64)
                .rev()
                .map(|i| i * ratio + config.steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(T, 0, -T / n)) - 1
            let ratio = t as f64 / n as f64;
            let mut out = Vec::new();
            let mut v = t as f64;
            let mut i = 0;
            while v > 0.0 {
                out.push(v.round_ties_even() as i64 - 1);
                i += 1;
                v = t as f64 - i as f64 * ratio;
            }
            out
        }
    };
    steps
        .into_iter()
        .map(|s| {
            usize::try_from(s).ok().filter(|&s| s < t).ok_or_else(|| {
                SchedulerError::InvalidArgument(format!(
                    "timestep {s} outside 0..{t} (steps_offset too large?)"
                ))
            })
        })
        .collect()
}

/// The result of one DDIM step.
#[derive(Debug, Clone)]
pub struct DdimStepOutput<B: Backend, const D: usize> {
    /// `x_prev`.
    pub prev_sample: Tensor<B, D>,
    /// The model's estimate of the clean sample.
    pub pred_original_sample: Tensor<B, D>,
}

/// Clean-sample and noise estimates from a model output, for any prediction type.
/// `alpha_bar` is `alpha_bar_t` of the sample.
pub fn predict_x0_and_eps<B: Backend, const D: usize>(
    prediction_type: PredictionType,
    model_output: Tensor<B, D>,
    sample: Tensor<B, D>,
    alpha_bar: f32,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let (alpha, sigma) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    match prediction_type {
        PredictionType::Epsilon => {
            let x0 = (sample - model_output.clone() * sigma) / alpha;
            (x0, model_output)
        }
        PredictionType::Sample => {
            let eps = (sample - model_output.clone() * alpha) / sigma;
            (model_output, eps)
        }
        PredictionType::VPrediction => {
            let x0 = sample.clone() * alpha - model_output.clone() * sigma;
            let eps = model_output * alpha + sample * sigma;
            (x0, eps)
        }
    }
}

/// One deterministic DDIM move from `alpha_bar_t` to `alpha_bar_s` given `x0` and `eps` estimates:
/// `x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s) eps`.
pub fn ddim_move<B: Backend, const D: usize>(
    x0: Tensor<B, D>,
    eps: Tensor<B, D>,
    alpha_bar_s: f32,
) -> Tensor<B, D> {
    x0 * alpha_bar_s.sqrt() + eps * (1.0 - alpha_bar_s).sqrt()
}

/// `DDIMScheduler` with `eta = 0`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl DdimScheduler {
    /// A scheduler for a validated config, with no timesteps set yet.
    pub fn new(config: SchedulerConfig) -> Self {
        let schedule = NoiseSchedule::new(&config);
        Self {
            config,
            schedule,
            timesteps: Vec::new(),
        }
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The config.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Sets `n` inference timesteps by the config's spacing and returns them.
    pub fn set_timesteps(&mut self, n: usize) -> Result<&[usize]> {
        self.timesteps = ddim_timesteps(&self.config, n)?;
        Ok(&self.timesteps)
    }

    /// The current inference timesteps (descending).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The timestep diffusers steps to from `t`: `t - T / n` (may be negative: then the final
    /// alpha-bar is used).
    pub fn prev_timestep(&self, t: usize) -> Result<i64> {
        if self.timesteps.is_empty() {
            return Err(SchedulerError::InvalidArgument(
                "call set_timesteps before step".into(),
            ));
        }
        Ok(t as i64 - (self.config.num_train_timesteps / self.timesteps.len()) as i64)
    }

    /// One DDIM step from `t` (eta = 0), as `DDIMScheduler.step`.
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        t: usize,
        sample: Tensor<B, D>,
    ) -> Result<DdimStepOutput<B, D>> {
        let prev = self.prev_timestep(t)?;
        let alpha_bar_t = self.schedule.alpha_bar(t)?;
        let alpha_bar_prev = self.schedule.alpha_bar_or_final(prev)?;
        let (mut x0, eps) = predict_x0_and_eps(
            self.config.prediction_type,
            model_output,
            sample,
            alpha_bar_t,
        );
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r);
        }
        Ok(DdimStepOutput {
            prev_sample: ddim_move(x0.clone(), eps, alpha_bar_prev),
            pred_original_sample: x0,
        })
    }
}

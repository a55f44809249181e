//! The LCM scheduler (diffusers `schedulers/scheduling_lcm.py`): timesteps taken from the teacher's
//! `original_inference_steps`-step DDIM grid, the boundary-condition scalings `c_skip` / `c_out`,
//! and multistep consistency sampling (predict x0, re-noise to the next timestep with fresh noise).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::SchedulerConfig;
use crate::ddim::predict_x0_and_eps;
use crate::error::{Result, SchedulerError};
use crate::schedule::NoiseSchedule;

/// `sigma_data` of the LCM boundary condition.
pub const LCM_SIGMA_DATA: f32 = 0.5;

/// `(c_skip, c_out)` at timestep `t`: with `s = timestep_scaling * t`,
/// `c_skip = sd^2 / (s^2 + sd^2)`, `c_out = s / sqrt(s^2 + sd^2)`, `sd = 0.5`.
pub fn lcm_boundary_scalings(t: f32, timestep_scaling: f32) -> (f32, f32) {
    let scaled = t * timestep_scaling;
    let sd2 = LCM_SIGMA_DATA * LCM_SIGMA_DATA;
    let c_skip = sd2 / (scaled * scaled + sd2);
    let c_out = scaled / (scaled * scaled + sd2).sqrt();
    (c_skip, c_out)
}

/// The teacher grid LCM samples from: `[k - 1, 2k - 1, ..., T - 1]` with
/// `k = T / original_inference_steps` (ascending; `[19, 39, ..., 999]` for SD1.5).
pub fn lcm_origin_timesteps(config: &SchedulerConfig) -> Vec<usize> {
    let k = config.num_train_timesteps / config.original_inference_steps;
    (1..=config.original_inference_steps)
        .map(|i| i * k - 1)
        .collect()
}

/// Timesteps of `LCMScheduler.set_timesteps(n)` (descending): `[999, 759, 499, 259]` for 4 steps.
pub fn lcm_timesteps(config: &SchedulerConfig, n: usize) -> Result<Vec<usize>> {
    let origin = lcm_origin_timesteps(config);
    if n == 0 || n > origin.len() {
        return Err(SchedulerError::InvalidArgument(format!(
            "LCM supports 1..={} steps (original_inference_steps), got {n}",
            origin.len()
        )));
    }
    let reversed: Vec<usize> = origin.into_iter().rev().collect();
    // np.floor(np.linspace(0, len, num=n, endpoint=False))
    Ok((0..n)
        .map(|i| reversed[((i as f64) * reversed.len() as f64 / n as f64).floor() as usize])
        .collect())
}

/// The result of one LCM step.
#[derive(Debug, Clone)]
pub struct LcmStepOutput<B: Backend, const D: usize> {
    /// The sample at the next timestep (the final image latents after the last step).
    pub prev_sample: Tensor<B, D>,
    /// The consistency function's output `c_skip x_t + c_out x0`.
    pub denoised: Tensor<B, D>,
}

/// `LCMScheduler` (multistep consistency sampling).
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl LcmScheduler {
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

    /// Sets `n` timesteps from the teacher grid and returns them.
    pub fn set_timesteps(&mut self, n: usize) -> Result<&[usize]> {
        self.timesteps = lcm_timesteps(&self.config, n)?;
        Ok(&self.timesteps)
    }

    /// Sets a custom descending timestep list (each below `T`).
    pub fn set_custom_timesteps(&mut self, timesteps: &[usize]) -> Result<&[usize]> {
        let t = self.config.num_train_timesteps;
        if timesteps.is_empty() {
            return Err(SchedulerError::InvalidArgument(
                "custom timestep list is empty".into(),
            ));
        }
        if let Some(bad) = timesteps.iter().find(|&&s| s >= t) {
            return Err(SchedulerError::InvalidArgument(format!(
                "custom timestep {bad} is outside 0..{t}"
            )));
        }
        if timesteps.windows(2).any(|w| w[0] <= w[1]) {
            return Err(SchedulerError::InvalidArgument(format!(
                "custom timesteps must be strictly descending, got {timesteps:?}"
            )));
        }
        self.timesteps = timesteps.to_vec();
        Ok(&self.timesteps)
    }

    /// The current timesteps.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Step `index` of the current timesteps. `noise` (standard normal, shape of `sample`) is used
    /// to re-noise to the next timestep; it is ignored (may be `None`) on the last step.
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        index: usize,
        sample: Tensor<B, D>,
        noise: Option<Tensor<B, D>>,
    ) -> Result<LcmStepOutput<B, D>> {
        let t = *self.timesteps.get(index).ok_or_else(|| {
            SchedulerError::InvalidArgument(format!(
                "step index {index} but {} timesteps are set",
                self.timesteps.len()
            ))
        })?;
        let last = index + 1 == self.timesteps.len();
        let prev_t = if last { t } else { self.timesteps[index + 1] };
        let alpha_bar_t = self.schedule.alpha_bar(t)?;
        let alpha_bar_prev = self.schedule.alpha_bar(prev_t)?;
        let (c_skip, c_out) = lcm_boundary_scalings(t as f32, self.config.timestep_scaling as f32);
        let (x0, _) = predict_x0_and_eps(
            self.config.prediction_type,
            model_output,
            sample.clone(),
            alpha_bar_t,
        );
        let denoised = x0 * c_out + sample * c_skip;
        let prev_sample = if last {
            denoised.clone()
        } else {
            let noise = noise.ok_or_else(|| {
                SchedulerError::InvalidArgument(format!(
                    "LCM step {index} re-noises: pass the fresh noise"
                ))
            })?;
            denoised.clone() * alpha_bar_prev.sqrt() + noise * (1.0 - alpha_bar_prev).sqrt()
        };
        Ok(LcmStepOutput {
            prev_sample,
            denoised,
        })
    }
}

//! Consistency parameterisations `f(x_t, t)`, shared by training and sampling.
//!
//! - [`DdimToBoundary`] (seed notebook, multi-boundary CD, PCM): `f` is the DDIM step from `t` to
//!   the boundary `b` with the network's noise estimate; timestep 0 is clean data, so with `b = 0`
//!   `f` is the x0 estimate. `f(x_b, b) = x_b` holds exactly (returned unchanged).
//! - [`LcmParameterisation`] (diffusers LCM): `f = c_skip(t) x_t + c_out(t) x0`, boundary ignored.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::PredictionType;
use crate::ddim::{ddim_move, predict_x0_and_eps};
use crate::error::Result;
use crate::lcm::lcm_boundary_scalings;
use crate::schedule::NoiseSchedule;

/// A consistency function built from a denoiser's raw output.
pub trait ConsistencyParameterisation {
    /// `f(x_t, t)` towards `boundary` given the model output at `(x_t, t)`.
    fn consistency_output<B: Backend, const D: usize>(
        &self,
        schedule: &NoiseSchedule,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        t: usize,
        boundary: usize,
    ) -> Result<Tensor<B, D>>;
}

/// `f(x_t, t) = DDIM(t -> b)` with boundary 0 = clean data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdimToBoundary {
    /// What the network predicts.
    pub prediction_type: PredictionType,
}

impl ConsistencyParameterisation for DdimToBoundary {
    fn consistency_output<B: Backend, const D: usize>(
        &self,
        schedule: &NoiseSchedule,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        t: usize,
        boundary: usize,
    ) -> Result<Tensor<B, D>> {
        if t == boundary {
            // The boundary condition, exactly.
            return Ok(sample);
        }
        let (x0, eps) = predict_x0_and_eps(
            self.prediction_type,
            model_output,
            sample,
            schedule.alpha_bar(t)?,
        );
        if boundary == 0 {
            return Ok(x0);
        }
        Ok(ddim_move(x0, eps, schedule.alpha_bar(boundary)?))
    }
}

/// `f = c_skip(t) x_t + c_out(t) x0` (LCM, `sigma_data = 0.5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcmParameterisation {
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// `timestep_scaling` (10).
    pub timestep_scaling: f32,
}

impl ConsistencyParameterisation for LcmParameterisation {
    fn consistency_output<B: Backend, const D: usize>(
        &self,
        schedule: &NoiseSchedule,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        t: usize,
        _boundary: usize,
    ) -> Result<Tensor<B, D>> {
        let (c_skip, c_out) = lcm_boundary_scalings(t as f32, self.timestep_scaling);
        let (x0, _) = predict_x0_and_eps(
            self.prediction_type,
            model_output,
            sample.clone(),
            schedule.alpha_bar(t)?,
        );
        Ok(x0 * c_out + sample * c_skip)
    }
}

//! Consistency parameterisations `f(x_t, t)`, shared by training and sampling, with one timestep and
//! one boundary PER EXAMPLE of the batch (diffusers' `extract_into_tensor` / `append_dims`).
//!
//! Every quantity the consistency step needs (the clean-sample estimate, the noise estimate, a DDIM
//! move, `f` itself) is linear in the sample `x` and the model output `o`: `y_i = P_i x_i + Q_i o_i`
//! with per-example scalars computed on the host in f64 ([`Linear`]). That makes per-example
//! timesteps cheap (two `[batch, 1, ..]` uploads, no device reads) and keeps the boundary condition
//! exact: where `t_i = b_i`, `P_i = 1` and `Q_i = 0`, so `f(x_b, b) = x_b` bit for bit.
//!
//! - [`DdimToBoundary`] (seed notebook, multi-boundary CD, PCM): `f` is the DDIM step from `t` to
//!   the boundary `b` with the network's noise estimate; timestep 0 is clean data, so with `b = 0`
//!   `f` is the x0 estimate.
//! - [`LcmParameterisation`] (diffusers LCM): `f = c_skip(t) x_t + c_out(t) x0`, boundary ignored.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::PredictionType;
use crate::error::{Result, SchedulerError};
use crate::lcm::lcm_boundary_scalings;
use crate::schedule::{per_sample, NoiseSchedule};

/// Per-example coefficients of `y_i = P_i x_i + Q_i o_i` (sample `x`, model output `o`).
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `P_i`, the weight of the sample.
    pub sample: Vec<f64>,
    /// `Q_i`, the weight of the model output.
    pub output: Vec<f64>,
}

impl Linear {
    /// Builds the coefficients example by example.
    pub fn from_fn(batch: usize, f: impl FnMut(usize) -> (f64, f64)) -> Self {
        let (sample, output) = (0..batch).map(f).unzip();
        Self { sample, output }
    }

    /// The forward process per example, `x_t = sqrt(ab_i) x0 + sqrt(1 - ab_i) noise` (`P` weighs
    /// the clean sample, `Q` the noise).
    pub fn noising(alpha_bars: &[f64]) -> Self {
        Self::from_fn(alpha_bars.len(), |i| {
            (alpha_bars[i].sqrt(), (1.0 - alpha_bars[i]).sqrt())
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.sample.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.sample.is_empty()
    }

    /// `P_i x_i + Q_i o_i`. An example with `Q_i = 0` and `P_i = 1` returns `x_i` exactly.
    ///
    /// # Shapes
    /// `sample`, `output`: `[batch, ...]` with `batch == self.len()`.
    pub fn apply<B: Backend, const D: usize>(
        &self,
        sample: Tensor<B, D>,
        output: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let device = sample.device();
        let to_f32 = |v: &[f64]| v.iter().map(|&c| c as f32).collect::<Vec<_>>();
        let p: Tensor<B, D> = per_sample(&to_f32(&self.sample), &device);
        let q: Tensor<B, D> = per_sample(&to_f32(&self.output), &device);
        sample * p + output * q
    }
}

/// `(x0, eps)` as linear forms `(a_x, a_o)`, `(e_x, e_o)` of the sample and the model output at
/// `alpha_bar` (exact for every prediction type).
pub fn x0_and_eps_coefficients(
    prediction_type: PredictionType,
    alpha_bar: f64,
) -> ((f64, f64), (f64, f64)) {
    let (alpha, sigma) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    match prediction_type {
        // x0 = (x - sigma o) / alpha, eps = o
        PredictionType::Epsilon => ((1.0 / alpha, -sigma / alpha), (0.0, 1.0)),
        // x0 = o, eps = (x - alpha o) / sigma
        PredictionType::Sample => ((0.0, 1.0), (1.0 / sigma, -alpha / sigma)),
        // x0 = alpha x - sigma o, eps = sigma x + alpha o
        PredictionType::VPrediction => ((alpha, -sigma), (sigma, alpha)),
    }
}

/// The DDIM move from `alpha_bar_t` to `alpha_bar_s` as `(P, Q)`:
/// `x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) eps` with `x0`, `eps` estimated from the output.
pub fn ddim_coefficients(
    prediction_type: PredictionType,
    alpha_bar_t: f64,
    alpha_bar_s: f64,
) -> (f64, f64) {
    let ((ax, ao), (ex, eo)) = x0_and_eps_coefficients(prediction_type, alpha_bar_t);
    let (a_s, s_s) = (alpha_bar_s.sqrt(), (1.0 - alpha_bar_s).sqrt());
    (a_s * ax + s_s * ex, a_s * ao + s_s * eo)
}

fn check_lengths(t: &[usize], boundary: &[usize]) -> Result<()> {
    if t.len() != boundary.len() {
        return Err(SchedulerError::InvalidArgument(format!(
            "{} timesteps but {} boundaries: give one per example",
            t.len(),
            boundary.len()
        )));
    }
    Ok(())
}

/// A consistency function built from a denoiser's raw output.
pub trait ConsistencyParameterisation {
    /// The coefficients of `f(x_t, t)` towards `boundary`, one example per entry.
    fn coefficients(
        &self,
        schedule: &NoiseSchedule,
        t: &[usize],
        boundary: &[usize],
    ) -> Result<Linear>;

    /// `f(x_t, t)` towards `boundary` given the model output at `(x_t, t)`, per example.
    ///
    /// # Shapes
    /// `model_output`, `sample`: `[batch, ...]`; `t`, `boundary`: `batch` values each.
    fn consistency_output<B: Backend, const D: usize>(
        &self,
        schedule: &NoiseSchedule,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        t: &[usize],
        boundary: &[usize],
    ) -> Result<Tensor<B, D>> {
        let batch = sample.dims()[0];
        if t.len() != batch {
            return Err(SchedulerError::InvalidArgument(format!(
                "{} timesteps for a batch of {batch}",
                t.len()
            )));
        }
        Ok(self
            .coefficients(schedule, t, boundary)?
            .apply(sample, model_output))
    }
}

/// `f(x_t, t) = DDIM(t -> b)` with boundary 0 = clean data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdimToBoundary {
    /// What the network predicts.
    pub prediction_type: PredictionType,
}

impl ConsistencyParameterisation for DdimToBoundary {
    fn coefficients(
        &self,
        schedule: &NoiseSchedule,
        t: &[usize],
        boundary: &[usize],
    ) -> Result<Linear> {
        check_lengths(t, boundary)?;
        let mut coefficients = Linear::from_fn(t.len(), |_| (1.0, 0.0));
        for (i, (&t, &b)) in t.iter().zip(boundary).enumerate() {
            if b > t {
                return Err(SchedulerError::InvalidArgument(format!(
                    "boundary {b} lies above timestep {t}"
                )));
            }
            if t == b {
                // The boundary condition, exactly: P = 1, Q = 0.
                continue;
            }
            let alpha_bar_b = if b == 0 {
                1.0
            } else {
                schedule.alpha_bar(b)? as f64
            };
            let (p, q) = ddim_coefficients(
                self.prediction_type,
                schedule.alpha_bar(t)? as f64,
                alpha_bar_b,
            );
            coefficients.sample[i] = p;
            coefficients.output[i] = q;
        }
        Ok(coefficients)
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
    fn coefficients(
        &self,
        schedule: &NoiseSchedule,
        t: &[usize],
        boundary: &[usize],
    ) -> Result<Linear> {
        check_lengths(t, boundary)?;
        let mut out = Linear::from_fn(t.len(), |_| (0.0, 0.0));
        for (i, &t) in t.iter().enumerate() {
            let (c_skip, c_out) = lcm_boundary_scalings(t as f32, self.timestep_scaling);
            let ((ax, ao), _) =
                x0_and_eps_coefficients(self.prediction_type, schedule.alpha_bar(t)? as f64);
            out.sample[i] = c_skip as f64 + c_out as f64 * ax;
            out.output[i] = c_out as f64 * ao;
        }
        Ok(out)
    }
}

/// Either parameterisation, chosen at run time (from a training config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Parameterisation {
    /// [`DdimToBoundary`].
    DdimToBoundary(DdimToBoundary),
    /// [`LcmParameterisation`].
    Lcm(LcmParameterisation),
}

impl ConsistencyParameterisation for Parameterisation {
    fn coefficients(
        &self,
        schedule: &NoiseSchedule,
        t: &[usize],
        boundary: &[usize],
    ) -> Result<Linear> {
        match self {
            Self::DdimToBoundary(p) => p.coefficients(schedule, t, boundary),
            Self::Lcm(p) => p.coefficients(schedule, t, boundary),
        }
    }
}

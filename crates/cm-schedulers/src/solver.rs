//! The skipping-step DDIM solver of consistency distillation: the teacher's 50-step DDIM grid
//! `[19, 39, ..., 999]` and training pairs `(t, s = t - 20)`.
//!
//! Two variants, differing only at the bottom of the grid:
//! - [`SolverVariant::Diffusers`] (diffusers' LCM distillation script `DDIMSolver`): from `t = 19`
//!   the solver moves to `s = 0` with `alpha_bar_0`, a (very slightly) noisy point;
//! - [`SolverVariant::Seed`] (the course notebook): `t = 20 i - 1`, `s = max(t - 20, 0)`, and
//!   timestep 0 is clean data (`alpha_bar = 1`).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::PredictionType;
use crate::consistency::{ddim_coefficients, Linear};
use crate::error::{Result, SchedulerError};
use crate::schedule::NoiseSchedule;

/// Which bottom-of-grid rule the solver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverVariant {
    /// `s = 0` keeps `alpha_bar_0` (diffusers).
    Diffusers,
    /// `s = 0` is clean data, `alpha_bar = 1` (the seed notebook).
    Seed,
}

/// The skipping-step DDIM solver.
#[derive(Debug, Clone)]
pub struct DdimSolver {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    skip: usize,
    variant: SolverVariant,
}

impl DdimSolver {
    /// A solver with `ddim_steps` grid points (`T / ddim_steps` apart; 50 for SD1.5 -> skip 20).
    pub fn new(schedule: NoiseSchedule, ddim_steps: usize, variant: SolverVariant) -> Result<Self> {
        let t = schedule.num_train_timesteps();
        if ddim_steps == 0 || ddim_steps > t {
            return Err(SchedulerError::InvalidArgument(format!(
                "the DDIM solver grid needs 1..={t} steps, got {ddim_steps}"
            )));
        }
        let skip = t / ddim_steps;
        Ok(Self {
            timesteps: (1..=ddim_steps).map(|i| i * skip - 1).collect(),
            schedule,
            skip,
            variant,
        })
    }

    /// The grid, ascending (`[19, 39, ..., 999]`).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Distance between grid points (20).
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The variant.
    pub fn variant(&self) -> SolverVariant {
        self.variant
    }

    /// The training pair of grid index `i`: `(t_i, max(t_i - skip, 0))`.
    pub fn pair(&self, index: usize) -> Result<(usize, usize)> {
        let t = *self.timesteps.get(index).ok_or_else(|| {
            SchedulerError::InvalidArgument(format!(
                "solver index {index} outside 0..{}",
                self.timesteps.len()
            ))
        })?;
        Ok((t, t.saturating_sub(self.skip)))
    }

    /// The training pairs of per-example grid indices: `(t, s)` lists, one entry per example.
    pub fn pairs(&self, indices: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
        let pairs = indices
            .iter()
            .map(|&i| self.pair(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(pairs.into_iter().unzip())
    }

    /// `alpha_bar` the solver uses at timestep `s` (1 at `s = 0` in the seed variant).
    pub fn alpha_bar(&self, s: usize) -> Result<f32> {
        if s == 0 && self.variant == SolverVariant::Seed {
            Ok(1.0)
        } else {
            self.schedule.alpha_bar(s)
        }
    }

    /// The per-example coefficients of the DDIM move `t_i -> s_i` applied to a (guided) teacher
    /// output: `x_s = P x_t + Q o` (see [`Linear`]).
    pub fn coefficients(
        &self,
        prediction_type: PredictionType,
        t: &[usize],
        s: &[usize],
    ) -> Result<Linear> {
        if t.len() != s.len() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{} timesteps t but {} timesteps s",
                t.len(),
                s.len()
            )));
        }
        let mut out = Linear::from_fn(t.len(), |_| (0.0, 0.0));
        for (i, (&t, &s)) in t.iter().zip(s).enumerate() {
            let (p, q) = ddim_coefficients(
                prediction_type,
                self.schedule.alpha_bar(t)? as f64,
                self.alpha_bar(s)? as f64,
            );
            out.sample[i] = p;
            out.output[i] = q;
        }
        Ok(out)
    }

    /// One DDIM move `t_i -> s_i` per example from the teacher's output at `(x_t, t)`.
    ///
    /// # Shapes
    /// `output`, `sample`: `[batch, ...]`; `t`, `s`: `batch` values each.
    pub fn step<B: Backend, const D: usize>(
        &self,
        prediction_type: PredictionType,
        output: Tensor<B, D>,
        sample: Tensor<B, D>,
        t: &[usize],
        s: &[usize],
    ) -> Result<Tensor<B, D>> {
        Ok(self
            .coefficients(prediction_type, t, s)?
            .apply(sample, output))
    }
}

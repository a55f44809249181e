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

use crate::ddim::ddim_move;
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

    /// `alpha_bar` the solver uses at timestep `s` (1 at `s = 0` in the seed variant).
    pub fn alpha_bar(&self, s: usize) -> Result<f32> {
        if s == 0 && self.variant == SolverVariant::Seed {
            Ok(1.0)
        } else {
            self.schedule.alpha_bar(s)
        }
    }

    /// One DDIM move from `t` to `s` given the teacher's clean-sample and noise estimates.
    pub fn step<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        eps: Tensor<B, D>,
        s: usize,
    ) -> Result<Tensor<B, D>> {
        Ok(ddim_move(x0, eps, self.alpha_bar(s)?))
    }
}

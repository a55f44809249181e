//! Boundary sets of multi-boundary consistency distillation and the deterministic sampler that
//! takes one DDIM-to-boundary step per segment.
//!
//! `K` segments split `[0, T - 1]` at boundaries `0 = b_0 < b_1 < ... < b_{K-1}`; segment `k` is
//! `(b_k, b_{k+1}]` with `b_K = T - 1`. Evenly spaced boundaries sit on the teacher's DDIM grid
//! `G = [0, 19, 39, ..., 999]` at `b_k = G[n - floor((K - k) n / K)]` (`n` = 50 grid steps), so that
//! sampling visits the same timesteps as diffusers' LCM schedule for K steps (K = 4: boundaries
//! `[0, 259, 499, 759]`, visited `[999, 759, 499, 259]`). K = 4 gives 4 segments (the original's
//! `linspace(0, 999, K)` gave K - 1).

use crate::error::{Result, SchedulerError};

/// A set of segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundarySet {
    boundaries: Vec<usize>,
    top: usize,
}

impl BoundarySet {
    /// `k` segments evenly spaced on a DDIM grid of `ddim_steps` steps over `num_train_timesteps`.
    pub fn evenly_spaced(k: usize, num_train_timesteps: usize, ddim_steps: usize) -> Result<Self> {
        if ddim_steps == 0 || ddim_steps > num_train_timesteps {
            return Err(SchedulerError::InvalidArgument(format!(
                "DDIM grid of {ddim_steps} steps over {num_train_timesteps} timesteps"
            )));
        }
        if k == 0 || k > ddim_steps {
            return Err(SchedulerError::InvalidArgument(format!(
                "number of segments K must be in 1..={ddim_steps} (the DDIM grid), got {k}"
            )));
        }
        let skip = num_train_timesteps / ddim_steps;
        let grid = |j: usize| if j == 0 { 0 } else { j * skip - 1 };
        let boundaries = (0..k)
            .map(|i| grid(ddim_steps - (k - i) * ddim_steps / k))
            .collect();
        Ok(Self {
            boundaries,
            top: num_train_timesteps - 1,
        })
    }

    /// An explicit, strictly increasing list starting at 0, all below `num_train_timesteps`.
    pub fn explicit(boundaries: &[usize], num_train_timesteps: usize) -> Result<Self> {
        if boundaries.first() != Some(&0) {
            return Err(SchedulerError::InvalidArgument(format!(
                "boundaries must start at 0, got {boundaries:?}"
            )));
        }
        if boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SchedulerError::InvalidArgument(format!(
                "boundaries must be strictly increasing, got {boundaries:?}"
            )));
        }
        if let Some(b) = boundaries.iter().find(|&&b| b >= num_train_timesteps - 1) {
            return Err(SchedulerError::InvalidArgument(format!(
                "boundary {b} leaves an empty top segment (timesteps end at {})",
                num_train_timesteps - 1
            )));
        }
        Ok(Self {
            boundaries: boundaries.to_vec(),
            top: num_train_timesteps - 1,
        })
    }

    /// The boundaries `b_0 = 0 < ... < b_{K-1}`.
    pub fn boundaries(&self) -> &[usize] {
        &self.boundaries
    }

    /// Number of segments `K`.
    pub fn num_segments(&self) -> usize {
        self.boundaries.len()
    }

    /// `b(s)`: the largest boundary `<= s` (the training rule: online and target both go there).
    pub fn boundary_at_or_below(&self, s: usize) -> usize {
        *self
            .boundaries
            .iter()
            .rev()
            .find(|&&b| b <= s)
            .unwrap_or(&0)
    }

    /// `b(s_i)` for every example (the per-example training rule).
    pub fn boundaries_at_or_below(&self, s: &[usize]) -> Vec<usize> {
        s.iter().map(|&s| self.boundary_at_or_below(s)).collect()
    }

    /// The boundary a sample at `t > 0` steps to: the largest boundary `< t`.
    pub fn boundary_below(&self, t: usize) -> usize {
        *self.boundaries.iter().rev().find(|&&b| b < t).unwrap_or(&0)
    }

    /// The timesteps the deterministic sampler evaluates the model at, descending:
    /// `T - 1, b_{K-1}, ..., b_1` (one per segment).
    pub fn sampling_timesteps(&self) -> Vec<usize> {
        std::iter::once(self.top)
            .chain(self.boundaries[1..].iter().rev().copied())
            .collect()
    }
}

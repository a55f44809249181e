//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! Burn 0.21's schedulers are stateful iterators (and its cosine restarts, its linear one refuses a
//! start of 0); a function of the step is what exact resume needs (a resumed run computes the same
//! rate for step `k` with nothing to restore), so the three shapes diffusers' scripts use are
//! written here: constant, linear decay and cosine decay, each after an optional linear warm-up
//! from 0 (diffusers `get_scheduler(name, num_warmup_steps, num_training_steps)`).

use serde::{Deserialize, Serialize};

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// `lr` throughout (diffusers `constant` / `constant_with_warmup`).
    Constant,
    /// Linearly to 0 at the last step (diffusers `linear`).
    Linear,
    /// Half a cosine to 0 at the last step (diffusers `cosine`).
    Cosine,
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    /// What follows the warm-up.
    #[serde(default = "constant")]
    pub decay: LrDecay,
}

fn constant() -> LrDecay {
    LrDecay::Constant
}

impl LrSchedule {
    /// The rate of optimizer step `step` (0-based) of `total` steps.
    pub fn at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            LrDecay::Constant => self.lr,
            LrDecay::Linear => self.lr * (1.0 - progress),
            LrDecay::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule {
            lr: 1.0,
            warmup_steps: 4,
            decay: LrDecay::Cosine,
        };
        assert_eq!(s.at(0, 104), 0.25);
        assert_eq!(s.at(3, 104), 1.0);
        assert_eq!(s.at(4, 104), 1.0);
        assert!((s.at(54, 104) - 0.5).abs() < 1e-12);
        assert!(s.at(103, 104) < 0.001);
        let l = LrSchedule {
            decay: LrDecay::Linear,
            warmup_steps: 0,
            ..s
        };
        assert!((l.at(50, 100) - 0.5).abs() < 1e-12);
        let c = LrSchedule {
            decay: LrDecay::Constant,
            warmup_steps: 0,
            ..s
        };
        assert_eq!(c.at(99, 100), 1.0);
    }
}

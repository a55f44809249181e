//! The random draws of one training step, made on the host from a seeded generator.
//!
//! Every draw of example `e` of step `k` comes from a generator seeded by `(seed, k, e)` alone (`e`
//! indexes the step's whole batch, across micro-batches and data-parallel peers), so:
//! - a run resumed at step `k` draws exactly what the uninterrupted run drew, on any backend (CPU
//!   and CUDA see the same noise);
//! - splitting a batch into micro-batches (gradient accumulation) or over peers (data parallelism)
//!   changes nothing but float rounding: each example gets the same draws either way;
//! - one step can be replayed from its inputs.
//!
//! The generator is `Xoshiro256PlusPlus` (a fixed, documented algorithm) and normals come from
//! `rand_distr`'s `StandardNormal`, both pinned by `Cargo.lock`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the guidance scale `w` of each example is chosen (`eps = u + w (c - u)`; 1 = no guidance).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GuidanceDraw {
    /// The same `w` for every example (the course notebook: 7.5).
    Fixed(f32),
    /// `w ~ U[min, max]` per example (LCM: `[w_min, w_max]`, e.g. 5..15 in diffusers' scale + 1).
    Uniform {
        /// Smallest scale.
        min: f32,
        /// Largest scale.
        max: f32,
    },
}

impl GuidanceDraw {
    /// Whether every draw is exactly 1 (then no unconditional pass ever runs).
    pub fn is_unguided(&self) -> bool {
        matches!(self, Self::Fixed(w) if *w == 1.0)
    }
}

/// The draws of one micro-batch.
#[derive(Debug, Clone)]
pub struct StepDraws<B: Backend> {
    /// Per-example index into the solver grid: `t = grid[i]`, `s = t - skip`.
    pub solver_index: Vec<usize>,
    /// Standard-normal noise, the shape of the batch.
    pub noise: Tensor<B, 4>,
    /// Per-example guidance scale.
    pub guidance: Vec<f32>,
    /// Per-example condition dropout (the example is trained unconditionally).
    pub drop_condition: Vec<bool>,
}

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawSpec {
    /// Number of solver grid points to choose from (50).
    pub grid_points: usize,
    /// Guidance scales.
    pub guidance: GuidanceDraw,
    /// Probability of dropping an example's condition.
    pub condition_dropout: f64,
}

/// A 64-bit mix of the run seed and a position (SplitMix64's finaliser), so nearby steps get
/// unrelated streams.
pub fn stream_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut z = seed ^ 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        z = z
            .wrapping_add(p.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// A generator for `(seed, parts...)`.
pub fn generator(seed: u64, parts: &[u64]) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(stream_seed(seed, parts))
}

/// `count` standard normals from `rng`.
pub fn normals(rng: &mut Xoshiro256PlusPlus, count: usize) -> Vec<f32> {
    (0..count).map(|_| StandardNormal.sample(rng)).collect()
}

impl DrawSpec {
    /// The draws of examples `first, first + 1, ...` of step `step`'s batch, for a micro-batch
    /// of `shape = [n, c, h, w]`.
    pub fn draw<B: Backend>(
        &self,
        seed: u64,
        step: u64,
        first: usize,
        shape: [usize; 4],
        device: &B::Device,
    ) -> StepDraws<B> {
        let batch = shape[0];
        let per_example: usize = shape[1..].iter().product();
        let mut solver_index = Vec::with_capacity(batch);
        let mut guidance = Vec::with_capacity(batch);
        let mut drop_condition = Vec::with_capacity(batch);
        let mut noise = Vec::with_capacity(batch * per_example);
        for e in first..first + batch {
            let mut rng = generator(seed, &[step, e as u64, 1]);
            solver_index.push(rng.random_range(0..self.grid_points));
            guidance.push(match self.guidance {
                GuidanceDraw::Fixed(w) => w,
                GuidanceDraw::Uniform { min, max } => min + (max - min) * rng.random::<f32>(),
            });
            let u: f64 = rng.random();
            drop_condition.push(self.condition_dropout > 0.0 && u < self.condition_dropout);
            noise.extend(normals(&mut rng, per_example));
        }
        StepDraws {
            solver_index,
            noise: Tensor::from_data(TensorData::new(noise, shape), device),
            guidance,
            drop_condition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    fn spec() -> DrawSpec {
        DrawSpec {
            grid_points: 50,
            guidance: GuidanceDraw::Uniform { min: 2.0, max: 8.0 },
            condition_dropout: 0.5,
        }
    }

    #[test]
    fn draws_are_a_function_of_seed_step_and_micro_batch() {
        let device = Default::default();
        let a = spec().draw::<B>(7, 10, 0, [4, 2, 3, 3], &device);
        let b = spec().draw::<B>(7, 10, 0, [4, 2, 3, 3], &device);
        assert_eq!(a.solver_index, b.solver_index);
        assert_eq!(a.guidance, b.guidance);
        assert_eq!(a.drop_condition, b.drop_condition);
        assert_eq!(a.noise.into_data(), b.noise.clone().into_data());
        let c = spec().draw::<B>(7, 11, 0, [4, 2, 3, 3], &device);
        assert_ne!(c.noise.into_data(), b.noise.clone().into_data());
        // Examples 2..4 drawn as a micro-batch of their own get the same draws.
        let tail = spec().draw::<B>(7, 10, 2, [2, 2, 3, 3], &device);
        assert_eq!(tail.solver_index, a.solver_index[2..]);
        assert_eq!(tail.guidance, a.guidance[2..]);
        assert_eq!(tail.noise.into_data(), b.noise.narrow(0, 2, 2).into_data());
        assert!(a.guidance.iter().all(|w| (2.0..8.0).contains(w)));
        assert!(a.solver_index.iter().all(|&i| i < 50));
    }

    #[test]
    fn noise_is_standard_normal() {
        let mut rng = generator(1, &[2]);
        let v = normals(&mut rng, 200_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
    }
}

//! The consistency engine: one training step for consistency training (CT), consistency
//! distillation with a guided teacher (CD) and multi-boundary CD; the loop around it; the
//! Gaussian-mixture oracle that checks both; and text-to-image sampling.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML run config (presets, file, overrides; unknown keys refused) |
//! | [`denoiser`] | the [`denoiser::Denoiser`] trait the step sees (SD UNet, oracle MLP, exact mixture), guidance |
//! | [`draws`] | the seeded random inputs of a step |
//! | [`step`] | THE consistency step (steps 1-5 of `docs/training.md`) |
//! | [`diffusion`] | the denoising objective (teachers, student initialisation); the [`diffusion::Objective`] trait |
//! | [`params`] | trainable parameters by path: ids, values, gradients, norms, EMA |
//! | [`lr`] | learning-rate schedules as functions of the step |
//! | [`trainer`] | the loop: accumulation, clipping, AdamW, NaN guard, target network |
//! | [`checkpoint`] | atomic checkpoints of what trains, exact resume |
//! | [`memory`] | memory estimates of a request before anything is allocated |
//! | [`metrics`] | JSON-lines log, loss-curve and scatter PNGs, progress lines |
//! | [`sd`] | the SD UNet as a denoiser (host timesteps, guidance embedding, half-precision bases) |
//! | [`sd_data`] | SD training data: latent cache in memory or on-the-fly encoding, epoch order |
//! | [`session`] | the loop's cadence: progress, metrics, validation, checkpoints, resume |
//! | [`parallel`] | data-parallel gradient averaging through burn-collective |
//! | [`sampler`] | DDIM and consistency samplers over any denoiser |
//! | [`oracle`] | the exact Gaussian-mixture teacher, the MLP student, SWD |
//! | [`run`] | a whole SD training run from a TOML config (what the examples call) |
//! | [`sampling`] | text-to-image sampling from a Stable Diffusion pipeline |

pub mod checkpoint;
pub mod config;
pub mod denoiser;
pub mod diffusion;
pub mod draws;
pub mod error;
pub mod eval;
pub mod lr;
pub mod memory;
pub mod metrics;
pub mod oracle;
pub mod parallel;
pub mod params;
pub mod run;
pub mod sampler;
pub mod sampling;
pub mod sd;
pub mod sd_data;
pub mod session;
pub mod step;
pub mod teacher;
pub mod trainer;

pub use error::{Result, TrainError};

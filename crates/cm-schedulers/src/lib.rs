//! Noise schedules, samplers and consistency math for few-step diffusion. Tensors only: this crate
//! never imports `cm-models`; a denoiser is whatever produces a model output tensor.
//!
//! - [`config`]: `scheduler_config.json` of diffusers' DDPM / DDIM / PNDM / LCM classes.
//! - [`schedule`]: betas, `alpha_bar`, `add_noise`.
//! - [`ddim`]: DDIM (eta 0) timesteps and steps; [`solver`]: the skipping-step DDIM solver of CD.
//! - [`lcm`]: LCM timesteps, boundary scalings, multistep sampling.
//! - [`consistency`]: the DDIM-to-boundary and LCM consistency parameterisations.
//! - [`boundaries`]: multi-boundary segment sets and their deterministic sampling timesteps.
//! - [`guidance`]: the guidance-scale embedding of `time_cond_proj_dim` students.

pub mod boundaries;
pub mod config;
pub mod consistency;
pub mod ddim;
pub mod error;
pub mod guidance;
pub mod lcm;
pub mod schedule;
pub mod solver;

pub use error::{Result, SchedulerError};

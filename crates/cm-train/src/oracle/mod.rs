//! The correctness oracle of the training engine: a labelled Gaussian mixture whose exact denoiser
//! is the teacher, a small MLP student trained through the SAME step and loop as Stable Diffusion,
//! and the measurements that decide whether training is right (per-sample error against the
//! teacher's ODE solution from the same noise, sliced Wasserstein distance of the samples).

pub mod experiment;
pub mod mixture;
pub mod mlp;
pub mod swd;

pub use mixture::{ExactDenoiser, GaussianMixture};
pub use mlp::{MlpConfig, MlpDenoiser};
pub use swd::sliced_wasserstein;

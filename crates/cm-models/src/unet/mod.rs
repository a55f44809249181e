//! `UNet2DConditionModel` as Stable Diffusion 1.5 uses it and as diffusers names it.

mod blocks;
mod config;
mod loading;
mod model;
mod split;

pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{PerBlock, UNetConfig};
pub use model::UNet2DConditionModel;

//! `AutoencoderKL`, the VAE of Stable Diffusion 1.5, as diffusers names it.

mod config;
mod loading;
mod model;

pub use config::VaeConfig;
pub use model::{
    AutoencoderKL, Decoder, DiagonalGaussian, DownEncoderBlock2D, Encoder, UpDecoderBlock2D,
    VaeMidBlock,
};

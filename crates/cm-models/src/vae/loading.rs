//! Loading `AutoencoderKL` weights written by diffusers (`vae/diffusion_pytorch_model.safetensors`).
//!
//! Remap table (file key -> Burn path), each line a naming that real files use:
//! - `.query.` -> `.to_q.`, `.key.` -> `.to_k.`, `.value.` -> `.to_v.`, `.proj_attn.` -> `.to_out.0.`:
//!   the mid-block attention as diffusers < 0.14 (`AttentionBlock`) saved it;
//! - 1x1-convolution-shaped q/k/v/out weights `[c, c, 1, 1]` (converted original-LDM checkpoints)
//!   load into the Linear layers (handled by `weights.rs` for every Linear).

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{AutoencoderKL, VaeConfig};
use crate::component::Component;
use crate::weights::LoadOptions;

impl<B: Backend> Component<B> for AutoencoderKL<B> {
    type Config = VaeConfig;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn load_options(dtype: DType) -> LoadOptions {
        LoadOptions::default()
            .remap(r"(attentions\.\d+)\.query\.", "$1.to_q.")
            .remap(r"(attentions\.\d+)\.key\.", "$1.to_k.")
            .remap(r"(attentions\.\d+)\.value\.", "$1.to_v.")
            .remap(r"(attentions\.\d+)\.proj_attn\.", "$1.to_out.0.")
            .with_dtype(dtype)
    }

    fn build(config: &VaeConfig, device: &B::Device) -> Self {
        config.init(device)
    }
}

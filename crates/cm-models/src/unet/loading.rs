//! Loading `UNet2DConditionModel` weights written by diffusers
//! (`unet/diffusion_pytorch_model[.fp16].safetensors`).
//!
//! The Burn module tree mirrors diffusers' attribute names, so the remap table is empty: every key
//! is the identity, e.g. `down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight`
//! (the feed-forward list is an enum list, so its indices survive). Linear weights are transposed
//! and GroupNorm/LayerNorm `weight`/`bias` become `gamma`/`beta` by burn-store's adapter.

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{UNet2DConditionModel, UNetConfig};
use crate::component::Component;
use crate::weights::LoadOptions;

impl<B: Backend> Component<B> for UNet2DConditionModel<B> {
    type Config = UNetConfig;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn load_options(dtype: DType) -> LoadOptions {
        LoadOptions::default().with_dtype(dtype)
    }

    fn build(config: &UNetConfig, device: &B::Device) -> Self {
        config.init(device)
    }
}

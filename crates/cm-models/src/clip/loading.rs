//! Loading `CLIPTextModel` weights written by transformers (`text_encoder/model.safetensors`).
//!
//! Remap table (file key -> Burn path), see also `docs/weights.md`:
//! - `^text_model\.` -> `` : the SD1.5 repository's file has keys under `text_model.`;
//!   transformers 5 saves them without it. Both load.
//! - `text_model.embeddings.position_ids` is a constant buffer (0..77), ignored.
//! - everything else is the identity; Linear weights are transposed and LayerNorm
//!   `weight`/`bias` become `gamma`/`beta` by burn-store's `PyTorchToBurnAdapter`.

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{ClipTextConfig, ClipTextModel};
use crate::component::Component;
use crate::weights::LoadOptions;

impl<B: Backend> Component<B> for ClipTextModel<B> {
    type Config = ClipTextConfig;
    const WEIGHTS_STEM: &'static str = "model";

    fn load_options(dtype: DType) -> LoadOptions {
        LoadOptions::default()
            // `text_model.encoder.layers.0...` -> `encoder.layers.0...` (keys without it pass unchanged).
            .remap(r"^text_model\.", "")
            // The position-id buffer of older transformers checkpoints: not a parameter.
            .ignore(r"(^|\.)embeddings\.position_ids$")
            .with_dtype(dtype)
    }

    fn build(config: &ClipTextConfig, device: &B::Device) -> Self {
        config.init(device)
    }
}

//! LoRA (low-rank adaptation) for Burn `Linear` and `Conv2d` layers.
//!
//! * **Layers.** [`LoraLinear`] / [`LoraConv2d`] wrap a base layer and carry any number of named
//!   adapters: `y = base(x) + sum_a (alpha_a / r_a) * up_a(down_a(dropout(x)))` over the active,
//!   unmerged ones. The factors are real `Linear` / `Conv2d` modules; conv factors follow the
//!   kohya / peft layout (down `[r, in, kh, kw]` with the base's kernel, stride, padding and
//!   dilation; up `[out, r, 1, 1]`). Without adapters the layer is exactly its base, with the
//!   base's parameter paths, so models built from these layers load ordinary checkpoints.
//! * **Operations on any module** built from those layers ([`describe`], [`plan`], [`inject`],
//!   [`set_active`], [`merge`], [`unmerge`], [`remove`], [`export`], [`import`]), selecting layers
//!   by dotted module path ([`TargetSelector`]: peft-style names such as [`LCM_LORA_TARGETS`],
//!   plus include / exclude regexes). Injection starts `up` at zero (the model is unchanged) and
//!   freezes every other parameter. See `session.rs` for how this reaches layers in a statically
//!   typed module tree.
//! * **Formats** ([`formats`]): peft / diffusers and kohya keys over backend-free
//!   [`LoraWeights`]; the safetensors files themselves are read and written by
//!   `cm_models::lora_file`.

mod adapter;
mod config;
mod conv;
mod error;
mod factors;
pub mod flex;
pub mod formats;
mod linear;
mod module_impl;
mod ops;
mod session;
pub mod shifted_conv;
mod targets;
pub mod tiled_conv;
pub mod tracked_conv;
mod weights;

pub use adapter::{AdapterMeta, LayerInfo};
pub use config::LoraConfig;
pub use conv::{ConvAdapter, LoraConv2d};
pub use error::LoraError;
pub use formats::LoraFormat;
pub use linear::{LinearAdapter, LoraLinear};
pub use ops::{
    adapter_names, check_weights, describe, export, import, inject, merge, plan, remove,
    set_active, unmerge, ImportReport, InjectReport,
};
pub use targets::{TargetSelector, ATTENTION_TARGETS, LCM_LORA_TARGETS};
pub use weights::{Factor, Geometry, LayerFactors, LoraWeights};

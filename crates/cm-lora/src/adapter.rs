//! What every adaptable layer shares: adapter bookkeeping, and the trait through which the
//! traversal in `session` reads and changes a layer without knowing its kind.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::{Geometry, LayerFactors, LoraConfig};

/// Name and state of one adapter on one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterMeta {
    /// Adapter name (`"cd"`, `"ct"`, ...); the same name on every layer it touches.
    pub name: String,
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Whether `up` has a bias.
    pub bias: bool,
    /// Whether the adapter contributes to the forward pass.
    pub active: bool,
    /// Whether the update is folded into the base weights (the adapter then adds nothing itself).
    pub merged: bool,
}

impl AdapterMeta {
    pub(crate) fn new(name: &str, config: &LoraConfig) -> Self {
        Self {
            name: name.to_string(),
            rank: config.rank,
            alpha: config.alpha,
            bias: config.bias,
            active: true,
            merged: false,
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the forward pass must add this adapter's own output.
    pub fn adds_output(&self) -> bool {
        self.active && !self.merged
    }
}

/// One adaptable layer as the traversal sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// Dotted module path.
    pub path: String,
    /// Shape of the base layer.
    pub geometry: Geometry,
    /// Whether the base layer has a bias (a biased adapter can only merge into one that has).
    pub base_bias: bool,
    /// Stride / dilation / groups problems that rule out adapters, if any.
    pub unsupported: Option<String>,
    /// Adapters on the layer, in insertion order.
    pub adapters: Vec<AdapterMeta>,
}

/// The adapters of a layer and their metadata, as parallel vectors (implemented by the
/// `adaptable_module!` macro).
pub(crate) trait AdapterStore {
    /// The factor module of one adapter.
    type Adapter;
    fn parts(&self) -> (&Vec<Self::Adapter>, &Vec<AdapterMeta>);
    fn parts_mut(&mut self) -> (&mut Vec<Self::Adapter>, &mut Vec<AdapterMeta>);
}

/// Implemented by [`crate::LoraLinear`] and [`crate::LoraConv2d`].
pub(crate) trait AdaptableLayer<B: Backend>: AdapterStore {
    fn info(&self, path: String) -> LayerInfo;
    /// Adds an adapter: random `down` and zero `up`, or the given factors (already checked).
    fn push_adapter(
        &mut self,
        meta: AdapterMeta,
        config: &LoraConfig,
        factors: Option<&LayerFactors>,
    );
    /// The adapter's factors in PyTorch layout.
    fn factors(&self, index: usize) -> LayerFactors;
    /// `base += sign * scale * delta` (merge with +1, unmerge with -1).
    fn fold(&mut self, index: usize, sign: f64);

    fn metas(&self) -> &[AdapterMeta] {
        self.parts().1
    }

    fn metas_mut(&mut self) -> &mut Vec<AdapterMeta> {
        self.parts_mut().1
    }

    fn push(&mut self, adapter: Self::Adapter, meta: AdapterMeta) {
        let (adapters, metas) = self.parts_mut();
        adapters.push(adapter);
        metas.push(meta);
    }

    fn remove_adapter(&mut self, index: usize) {
        let (adapters, metas) = self.parts_mut();
        adapters.remove(index);
        metas.remove(index);
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.metas().iter().position(|m| m.name == name)
    }
}

/// The output `up(down(dropout(x)))` of one adapter, before scaling.
pub(crate) trait AdapterUpdate<B: Backend, const D: usize> {
    fn update(&self, x: Tensor<B, D>) -> Tensor<B, D>;
}

/// `y + sum_a scale_a * update_a(x)` over the active, unmerged adapters (the shared forward pass).
/// The factors are f32: an f16 / bf16 input is cast up for the adapter path and its update cast
/// back to the base output's dtype (peft's behaviour with a half-precision base).
pub(crate) fn add_updates<B: Backend, A: AdapterUpdate<B, D>, const D: usize>(
    mut y: Tensor<B, D>,
    x: Tensor<B, D>,
    adapters: &[A],
    metas: &[AdapterMeta],
) -> Tensor<B, D> {
    let active: Vec<(&A, &AdapterMeta)> = adapters
        .iter()
        .zip(metas)
        .filter(|(_, m)| m.adds_output())
        .collect();
    if active.is_empty() {
        return y;
    }
    let out_dtype = y.dtype();
    let x = if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    };
    for (adapter, meta) in active {
        let update = adapter.update(x.clone()) * meta.scale();
        y = y + if out_dtype == DType::F32 {
            update
        } else {
            update.cast(out_dtype)
        };
    }
    y
}

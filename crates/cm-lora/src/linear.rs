//! `LoraLinear`: a `Linear` layer that can carry any number of named LoRA adapters.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::{add_updates, AdaptableLayer, AdapterMeta, AdapterUpdate, LayerInfo};
use crate::factors::{factor_tensor, fold_into, keep_f32};
use crate::{Geometry, LayerFactors, LoraConfig};

/// The factors of one adapter on a [`LoraLinear`]: `in -> r -> out`.
#[derive(Module, Debug)]
pub struct LinearAdapter<B: Backend> {
    /// `in -> r`, no bias (peft `lora_A`, kohya `lora_down`); random at init.
    pub down: Linear<B>,
    /// `r -> out` (peft `lora_B`, kohya `lora_up`); zero at init.
    pub up: Linear<B>,
    /// Dropout on the adapter's input.
    pub dropout: Dropout,
}

impl<B: Backend, const D: usize> AdapterUpdate<B, D> for LinearAdapter<B> {
    fn update(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.up.forward(self.down.forward(self.dropout.forward(x)))
    }
}

/// A `Linear` with optional LoRA adapters: `y = base(x) + sum_a scale_a * up_a(down_a(x))` over
/// the active, unmerged adapters. Without adapters it is exactly `base`.
///
/// Its parameter paths are the base's (`<path>.weight`, `<path>.bias`), so checkpoints load as for
/// a plain `Linear`; adapter factors live under `<path>.lora.<i>.{down,up}`.
#[derive(Debug, Clone)]
pub struct LoraLinear<B: Backend> {
    /// The base layer (frozen once an adapter is injected).
    pub base: Linear<B>,
    /// Adapter factors, parallel to [`Self::metas`].
    pub adapters: Vec<LinearAdapter<B>>,
    pub(crate) metas: Vec<AdapterMeta>,
}

impl<B: Backend> From<Linear<B>> for LoraLinear<B> {
    fn from(base: Linear<B>) -> Self {
        Self {
            base,
            adapters: Vec::new(),
            metas: Vec::new(),
        }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// A `Linear(d_in -> d_out)` without adapters.
    pub fn new(config: &LinearConfig, device: &B::Device) -> Self {
        config.init(device).into()
    }

    /// Adapters on this layer, in insertion order.
    pub fn adapter_metas(&self) -> &[AdapterMeta] {
        &self.metas
    }

    /// # Shapes
    /// `[..., in]` -> `[..., out]`.
    ///
    /// Inputs of more than two dimensions run as `[rows, in]` (a free reshape of a contiguous
    /// input): under autodiff, Burn 0.21's default `linear` backward reshapes the transposed weight
    /// (a `swap_dims` view) to the gradient's rank, which Burn-flex does by copying the whole
    /// weight on every backward (5% of an SD1.5 LoRA training step); a 2-D gradient needs no
    /// reshape and the GEMM reads the transposed weight in place.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if D > 2 {
            let dims = x.dims();
            let rows = dims[..D - 1].iter().product::<usize>();
            let out = self.forward(x.reshape([rows, dims[D - 1]]));
            let mut out_dims = dims;
            out_dims[D - 1] = out.dims()[1];
            return out.reshape(out_dims);
        }
        add_updates(self.base.forward(x.clone()), x, &self.adapters, &self.metas)
    }

    fn geometry(&self) -> Geometry {
        let [d_in, d_out] = self.base.weight.lazy_shape().dims();
        Geometry::Linear { d_in, d_out }
    }
}

impl<B: Backend> AdaptableLayer<B> for LoraLinear<B> {
    fn info(&self, path: String) -> LayerInfo {
        LayerInfo {
            path,
            geometry: self.geometry(),
            base_bias: self.base.bias.is_some(),
            unsupported: None,
            adapters: self.metas.clone(),
        }
    }

    fn push_adapter(
        &mut self,
        meta: AdapterMeta,
        config: &LoraConfig,
        factors: Option<&LayerFactors>,
    ) {
        let Geometry::Linear { d_in, d_out } = self.geometry() else {
            unreachable!("a Linear has a Linear geometry")
        };
        let device = self.base.weight.lazy_device();
        let mut down = LinearConfig::new(d_in, meta.rank)
            .with_bias(false)
            .init(&device);
        let mut up = LinearConfig::new(meta.rank, d_out)
            .with_bias(meta.bias)
            .with_initializer(Initializer::Zeros)
            .init(&device);
        if let Some(f) = factors {
            // Burn's Linear stores `[in, out]`: the transpose of the file's `[out, in]`.
            down.weight = Param::from_tensor(factor_tensor::<B, 2>(&f.down, &device).transpose());
            up.weight = Param::from_tensor(factor_tensor::<B, 2>(&f.up, &device).transpose());
            up.bias = f
                .up_bias
                .as_ref()
                .map(|b| Param::from_tensor(factor_tensor::<B, 1>(b, &device)));
        }
        keep_f32(&mut down.weight, &mut up.weight, &mut up.bias);
        let dropout = DropoutConfig::new(config.dropout).init();
        self.push(LinearAdapter { down, up, dropout }, meta);
    }

    fn factors(&self, index: usize) -> LayerFactors {
        let adapter = &self.adapters[index];
        LayerFactors {
            down: adapter.down.weight.val().transpose().into_data(),
            up: adapter.up.weight.val().transpose().into_data(),
            up_bias: adapter.up.bias.as_ref().map(|b| b.val().into_data()),
            alpha: self.metas[index].alpha,
            source: None,
        }
    }

    fn fold(&mut self, index: usize, sign: f64) {
        let adapter = &self.adapters[index];
        let scale = sign * self.metas[index].scale();
        let delta = adapter
            .down
            .weight
            .val()
            .matmul(adapter.up.weight.val())
            .detach()
            * scale;
        let up_bias = adapter.up.bias.as_ref();
        fold_into(
            &mut self.base.weight,
            &mut self.base.bias,
            delta,
            up_bias,
            scale,
        );
    }
}

crate::module_impl::adaptable_module!(LoraLinear, Linear, LinearAdapter);

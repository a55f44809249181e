//! `LoraConv2d`: a `Conv2d` layer that can carry any number of named LoRA adapters.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::{add_updates, AdaptableLayer, AdapterMeta, AdapterUpdate, LayerInfo};
use crate::factors::{factor_tensor, fold_into, keep_f32};
use crate::shifted_conv::conv2d_forward;
use crate::{Geometry, LayerFactors, LoraConfig};

/// The factors of one adapter on a [`LoraConv2d`] (kohya / peft layout).
#[derive(Module, Debug)]
pub struct ConvAdapter<B: Backend> {
    /// `[r, in, kh, kw]` with the base's kernel, stride, padding and dilation; no bias; random
    /// at init.
    pub down: Conv2d<B>,
    /// `[out, r, 1, 1]`; zero at init.
    pub up: Conv2d<B>,
    /// Dropout on the adapter's input.
    pub dropout: Dropout,
}

impl<B: Backend> AdapterUpdate<B, 4> for ConvAdapter<B> {
    fn update(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d_forward(
            &self.up,
            conv2d_forward(&self.down, self.dropout.forward(x)),
        )
    }
}

/// A `Conv2d` with optional LoRA adapters (see [`crate::LoraLinear`]); paths of the base
/// parameters are unchanged (`<path>.weight`, `<path>.bias`).
#[derive(Debug, Clone)]
pub struct LoraConv2d<B: Backend> {
    /// The base layer (frozen once an adapter is injected).
    pub base: Conv2d<B>,
    /// Adapter factors, parallel to the adapter metadata.
    pub adapters: Vec<ConvAdapter<B>>,
    pub(crate) metas: Vec<AdapterMeta>,
}

impl<B: Backend> From<Conv2d<B>> for LoraConv2d<B> {
    fn from(base: Conv2d<B>) -> Self {
        Self {
            base,
            adapters: Vec::new(),
            metas: Vec::new(),
        }
    }
}

impl<B: Backend> LoraConv2d<B> {
    /// A `Conv2d` without adapters.
    pub fn new(config: &Conv2dConfig, device: &B::Device) -> Self {
        config.init(device).into()
    }

    /// Adapters on this layer, in insertion order.
    pub fn adapter_metas(&self) -> &[AdapterMeta] {
        &self.metas
    }

    /// # Shapes
    /// `[batch, in, h, w]` -> `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        add_updates(
            conv2d_forward(&self.base, x.clone()),
            x,
            &self.adapters,
            &self.metas,
        )
    }

    fn geometry(&self) -> Geometry {
        let [c_out, c_in_per_group, kh, kw] = self.base.weight.lazy_shape().dims();
        Geometry::Conv {
            c_in: c_in_per_group * self.base.groups,
            c_out,
            kernel: [kh, kw],
            groups: self.base.groups,
        }
    }
}

impl<B: Backend> AdaptableLayer<B> for LoraConv2d<B> {
    fn info(&self, path: String) -> LayerInfo {
        LayerInfo {
            path,
            geometry: self.geometry(),
            base_bias: self.base.bias.is_some(),
            unsupported: (self.base.groups != 1)
                .then(|| format!("grouped convolution (groups = {})", self.base.groups)),
            adapters: self.metas.clone(),
        }
    }

    fn push_adapter(
        &mut self,
        meta: AdapterMeta,
        config: &LoraConfig,
        factors: Option<&LayerFactors>,
    ) {
        let Geometry::Conv {
            c_in,
            c_out,
            kernel,
            ..
        } = self.geometry()
        else {
            unreachable!("a Conv2d has a Conv geometry")
        };
        let device = self.base.weight.lazy_device();
        let mut down = Conv2dConfig::new([c_in, meta.rank], kernel)
            .with_stride(self.base.stride)
            .with_padding(self.base.padding.clone())
            .with_dilation(self.base.dilation)
            .with_bias(false)
            .init(&device);
        let mut up = Conv2dConfig::new([meta.rank, c_out], [1, 1])
            .with_bias(meta.bias)
            .with_initializer(Initializer::Zeros)
            .init(&device);
        if let Some(f) = factors {
            // Burn's Conv2d layout is PyTorch's: `[out, in, kh, kw]`.
            down.weight = Param::from_tensor(factor_tensor::<B, 4>(&f.down, &device));
            up.weight = Param::from_tensor(factor_tensor::<B, 4>(&f.up, &device));
            up.bias = f
                .up_bias
                .as_ref()
                .map(|b| Param::from_tensor(factor_tensor::<B, 1>(b, &device)));
        }
        keep_f32(&mut down.weight, &mut up.weight, &mut up.bias);
        let dropout = DropoutConfig::new(config.dropout).init();
        self.push(ConvAdapter { down, up, dropout }, meta);
    }

    fn factors(&self, index: usize) -> LayerFactors {
        let adapter = &self.adapters[index];
        LayerFactors {
            down: adapter.down.weight.val().into_data(),
            up: adapter.up.weight.val().into_data(),
            up_bias: adapter.up.bias.as_ref().map(|b| b.val().into_data()),
            alpha: self.metas[index].alpha,
            source: None,
        }
    }

    fn fold(&mut self, index: usize, sign: f64) {
        let adapter = &self.adapters[index];
        let scale = sign * self.metas[index].scale();
        let [r, c_in, kh, kw] = adapter.down.weight.val().dims();
        let [c_out, ..] = adapter.up.weight.val().dims();
        let down = adapter.down.weight.val().reshape([r, c_in * kh * kw]);
        let up = adapter.up.weight.val().reshape([c_out, r]);
        let delta = up.matmul(down).reshape([c_out, c_in, kh, kw]).detach() * scale;
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

crate::module_impl::adaptable_module!(LoraConv2d, Conv2d, ConvAdapter);

//! LoRA on a `Conv2d` layer (the LCM-LoRA target set includes the UNet's convolutions).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::LoraConfig;

/// A `Conv2d` with a low-rank update: `down` has the base's kernel, stride and padding and `r`
/// output channels; `up` is a 1x1 convolution to the base's output channels.
#[derive(Module, Debug)]
pub struct LoraConv2d<B: Backend> {
    /// The frozen base layer.
    pub base: Conv2d<B>,
    /// `[r, in, kh, kw]`, no bias.
    pub lora_down: Conv2d<B>,
    /// `[out, r, 1, 1]`, no bias, zero at init.
    pub lora_up: Conv2d<B>,
    /// `alpha / rank`.
    pub scale: f64,
}

impl<B: Backend> LoraConv2d<B> {
    /// Wraps `base` (groups = 1, dilation 1); the base parameters stop requiring gradients.
    /// `stride` and `padding` must be the base layer's (Burn's `Conv2d` keeps them private to
    /// its config).
    pub fn new(
        base: Conv2d<B>,
        stride: [usize; 2],
        padding: [usize; 4],
        config: LoraConfig,
        device: &B::Device,
    ) -> Self {
        let [out, inp, kh, kw] = base.weight.dims();
        let [top, left, bottom, right] = padding;
        Self {
            base: base.no_grad(),
            lora_down: Conv2dConfig::new([inp, config.rank], [kh, kw])
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .with_bias(false)
                .init(device),
            lora_up: Conv2dConfig::new([config.rank, out], [1, 1])
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            scale: config.scale(),
        }
    }

    /// # Shapes
    /// `[batch, in, h, w]` -> `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.base.forward(x.clone()) + self.lora_up.forward(self.lora_down.forward(x)) * self.scale
    }

    /// The weight update `scale * up @ down` as `[out, in, kh, kw]`.
    pub fn delta(&self) -> Tensor<B, 4> {
        let [r, inp, kh, kw] = self.lora_down.weight.dims();
        let [out, ..] = self.lora_up.weight.dims();
        let down = self.lora_down.weight.val().reshape([r, inp * kh * kw]);
        let up = self.lora_up.weight.val().reshape([out, r]);
        up.matmul(down).reshape([out, inp, kh, kw]) * self.scale
    }

    /// The base layer with the update folded into its weight.
    pub fn merge(&self) -> Conv2d<B> {
        let mut merged = self.base.clone();
        merged.weight =
            Param::from_tensor(self.base.weight.val() + self.delta()).set_require_grad(false);
        merged
    }
}

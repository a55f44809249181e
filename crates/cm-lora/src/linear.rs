//! LoRA on a `Linear` layer.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::LoraConfig;

/// A `Linear` with a low-rank update `scale * up(down(x))`.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The frozen base layer.
    pub base: Linear<B>,
    /// `in -> r`, no bias (peft `lora_A`, kohya `lora_down`).
    pub lora_down: Linear<B>,
    /// `r -> out`, no bias, zero at init (peft `lora_B`, kohya `lora_up`).
    pub lora_up: Linear<B>,
    /// `alpha / rank`.
    pub scale: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// Wraps `base`; the base parameters stop requiring gradients.
    pub fn new(base: Linear<B>, config: LoraConfig, device: &B::Device) -> Self {
        let [d_in, d_out] = base.weight.dims();
        Self {
            base: base.no_grad(),
            lora_down: LinearConfig::new(d_in, config.rank)
                .with_bias(false)
                .init(device),
            lora_up: LinearConfig::new(config.rank, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            scale: config.scale(),
        }
    }

    /// # Shapes
    /// `[..., in]` -> `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.base.forward(x.clone()) + self.lora_up.forward(self.lora_down.forward(x)) * self.scale
    }

    /// The weight update `scale * down @ up` in Burn's `[in, out]` layout.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.lora_down
            .weight
            .val()
            .matmul(self.lora_up.weight.val())
            * self.scale
    }

    /// The base layer with the update folded into its weight.
    pub fn merge(&self) -> Linear<B> {
        let mut merged = self.base.clone();
        merged.weight =
            Param::from_tensor(self.base.weight.val() + self.delta()).set_require_grad(false);
        merged
    }
}

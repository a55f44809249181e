//! LoRA adapters: identity at init, merge equals the unmerged output, frozen base, parameter counts.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor};
use cm_lora::{LoraConfig, LoraConv2d, LoraLinear};

type B = burn::backend::Flex;

fn rel(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    let diff: f32 = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar();
    let norm: f32 = b.powi_scalar(2).sum().sqrt().into_scalar();
    diff / norm
}

fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

#[test]
fn linear_adapter_starts_as_identity_and_merges_exactly() {
    let device = Default::default();
    let base = LinearConfig::new(16, 24).init::<B>(&device);
    // Burn initialises parameters lazily: materialise them so that the clone is the same layer.
    let _ = (base.weight.val(), base.bias.as_ref().map(|b| b.val()));
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
    };
    let mut lora = LoraLinear::new(base.clone(), config, &device);
    let x = random([2, 5, 16]);
    let same = (lora.forward(x.clone()) - base.forward(x.clone()))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(same, 0.0, "up starts at zero");
    // Train-like update of the up factor, then merge.
    lora.lora_up.weight = Param::from_tensor(random([4, 24]));
    let unmerged = lora.forward(x.clone()).unsqueeze_dim::<4>(0);
    let merged = lora.merge().forward(x).unsqueeze_dim::<4>(0);
    let error = rel(merged, unmerged);
    assert!(error < 1e-5, "merge rel. error {error}");
    // Trainable parameters: r * (in + out).
    assert_eq!(
        lora.lora_down.num_params() + lora.lora_up.num_params(),
        4 * (16 + 24)
    );
    assert!(!lora.base.weight.is_require_grad(), "base frozen");
}

#[test]
fn conv_adapter_merges_exactly_with_stride_and_padding() {
    let device = Default::default();
    let base = Conv2dConfig::new([6, 10], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init::<B>(&device);
    let _ = (base.weight.val(), base.bias.as_ref().map(|b| b.val()));
    let config = LoraConfig {
        rank: 3,
        alpha: 3.0,
    };
    let mut lora = LoraConv2d::new(base.clone(), [2, 2], [1, 1, 1, 1], config, &device);
    assert_eq!(lora.lora_down.weight.dims(), [3, 6, 3, 3]);
    assert_eq!(lora.lora_up.weight.dims(), [10, 3, 1, 1]);
    let x = random([2, 6, 9, 9]);
    assert_eq!(rel(lora.forward(x.clone()), base.forward(x.clone())), 0.0);
    lora.lora_up.weight = Param::from_tensor(random([10, 3, 1, 1]));
    let error = rel(lora.merge().forward(x.clone()), lora.forward(x));
    assert!(error < 1e-5, "merge rel. error {error}");
}

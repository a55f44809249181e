//! `Downsample2D` and `Upsample2D` with convolutions (diffusers `models/downsampling.py`,
//! `models/upsampling.py`).

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::Tensor;
use cm_lora::LoraConv2d;

use super::conv2d;

/// Stride-2 3x3 convolution. `padding = 1` (UNet) pads every side by one; `padding = 0` (VAE
/// encoder) pads only the right and bottom by one, as diffusers does with `F.pad(x, (0, 1, 0, 1))`
/// (done here by concatenating zeros of the input's dtype: Burn 0.21's asymmetric conv padding
/// builds an f32 pad and fails on f16 / bf16 inputs).
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The strided convolution.
    pub conv: LoraConv2d<B>,
    /// Pad right and bottom by one before the convolution (the VAE's `padding = 0`).
    pub pad_right_bottom: bool,
}

impl<B: Backend> Downsample2D<B> {
    /// Builds the module.
    pub fn new(channels: usize, out_channels: usize, padding: usize, device: &B::Device) -> Self {
        let pad = if padding == 0 {
            PaddingConfig2d::Valid
        } else {
            PaddingConfig2d::Explicit(padding, padding, padding, padding)
        };
        Self {
            conv: Conv2dConfig::new([channels, out_channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(pad)
                .init(device)
                .into(),
            pad_right_bottom: padding == 0,
        }
    }

    /// # Shapes
    /// `[batch, c, h, w]` -> `[batch, out, ceil(h/2), ceil(w/2)]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.pad_right_bottom {
            return self.conv.forward(x);
        }
        let [b, c, h, w] = x.dims();
        let options = (&x.device(), x.dtype());
        let x = Tensor::cat(vec![x, Tensor::zeros([b, c, h, 1], options)], 3);
        let x = Tensor::cat(vec![x, Tensor::zeros([b, c, 1, w + 1], options)], 2);
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling followed by a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The convolution after upsampling.
    pub conv: LoraConv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// Builds the module.
    pub fn new(channels: usize, out_channels: usize, device: &B::Device) -> Self {
        Self {
            conv: conv2d(channels, out_channels, 3, device),
        }
    }

    /// Upsamples to `size` (`[h, w]`; twice the input when `None`), then convolves.
    ///
    /// # Shapes
    /// `[batch, c, h, w]` -> `[batch, out, size]`.
    pub fn forward(&self, x: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([2 * h, 2 * w]);
        let x = interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest));
        self.conv.forward(x)
    }
}

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
/// encoder) pads only the right and bottom by one, as diffusers does with `F.pad(x, (0, 1, 0, 1))`.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The strided convolution.
    pub conv: LoraConv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// Builds the module.
    pub fn new(channels: usize, out_channels: usize, padding: usize, device: &B::Device) -> Self {
        let pad = if padding == 0 {
            PaddingConfig2d::Explicit(0, 0, 1, 1)
        } else {
            PaddingConfig2d::Explicit(padding, padding, padding, padding)
        };
        Self {
            conv: Conv2dConfig::new([channels, out_channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(pad)
                .init(device)
                .into(),
        }
    }

    /// # Shapes
    /// `[batch, c, h, w]` -> `[batch, out, ceil(h/2), ceil(w/2)]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
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

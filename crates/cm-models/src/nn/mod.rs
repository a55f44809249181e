//! Building blocks shared by the UNet and the VAE, named as diffusers names them
//! (`diffusers/models/{resnet,attention,attention_processor,embeddings,upsampling,downsampling}.py`,
//! `transformers/transformer_2d.py`), so Burn parameter paths equal checkpoint keys.

mod attention;
mod embeddings;
mod flex_kernel;
mod geglu;
mod group_norm;
pub(crate) mod packed_attention;
mod resnet;
mod sampling;
mod silu;
mod token_transpose;
mod transformer_2d;
pub mod vector_math;

pub use attention::{Attention, AttentionConfig};
pub use embeddings::{timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig};
pub use geglu::geglu;
pub use group_norm::group_norm;
pub use resnet::{ResnetBlock2D, ResnetBlock2DConfig};
pub use sampling::{Downsample2D, Upsample2D};
pub use silu::silu;
pub use token_transpose::transpose_tokens;
pub use transformer_2d::{
    BasicTransformerBlock, FeedForward, FeedForwardLayer, Geglu, Projection, Transformer2DModel,
    Transformer2DModelConfig,
};

use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_lora::LoraConv2d;

/// `t` with a contiguous layout (the same values). Burn-flex's element-wise kernels walk a strided
/// view (a slice of the last dimension, a transpose) one element at a time, once per op that reads
/// it; a reshape to 1-D cannot be a view of such a tensor, so Burn-flex copies it contiguous first
/// (its tiled copy when the view collapses to 2-D), and back to `D` dimensions is then free. Used
/// where a strided view feeds several element-wise ops. On a contiguous tensor it is a no-op.
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let dims = t.dims();
    t.reshape([dims.iter().product::<usize>()]).reshape(dims)
}

/// A `k x k` convolution with stride 1 and "same" padding `k / 2` (diffusers' conv3x3 / conv1x1).
pub fn conv2d<B: Backend>(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    device: &B::Device,
) -> LoraConv2d<B> {
    let pad = kernel / 2;
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
        .into()
}

/// `x` in `dtype` (no operation when it already is): the boundary of a half-precision module.
pub fn cast<B: burn::tensor::backend::Backend, const D: usize>(
    x: burn::tensor::Tensor<B, D>,
    dtype: burn::tensor::DType,
) -> burn::tensor::Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

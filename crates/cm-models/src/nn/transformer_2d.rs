//! `Transformer2DModel` and `BasicTransformerBlock` as SD1.5 uses them (diffusers
//! `models/transformers/transformer_2d.py`, `models/attention.py`): GroupNorm, `proj_in` (1x1 conv,
//! or linear with `use_linear_projection`), pre-norm blocks of self-attention, cross-attention and
//! a GEGLU feed-forward, `proj_out`, residual.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, LinearConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_lora::{LoraConv2d, LoraLinear};

use super::attention::{Attention, AttentionConfig};
use super::{conv2d, group_norm};

/// `GEGLU`: `proj` to twice the width, then `hidden * gelu(gate)`.
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `dim -> 2 * inner`.
    pub proj: LoraLinear<B>,
}

/// One entry of diffusers' `FeedForward.net` (`ModuleList([GEGLU, Dropout, Linear])`). An enum so
/// that the list keeps diffusers' indices: keys `ff.net.0.proj.*` and `ff.net.2.*`.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum FeedForwardLayer<B: Backend> {
    /// `net.0`.
    Geglu(Geglu<B>),
    /// `net.1` (no parameters; identity at inference).
    Dropout(Dropout),
    /// `net.2`.
    Linear(LoraLinear<B>),
}

/// `FeedForward` with the GEGLU activation (mult 4).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `[GEGLU, Dropout, Linear]`.
    pub net: Vec<FeedForwardLayer<B>>,
}

impl<B: Backend> FeedForward<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        let inner = 4 * dim;
        Self {
            net: vec![
                FeedForwardLayer::Geglu(Geglu {
                    proj: LoraLinear::new(&LinearConfig::new(dim, 2 * inner), device),
                }),
                FeedForwardLayer::Dropout(DropoutConfig::new(0.0).init()),
                FeedForwardLayer::Linear(LoraLinear::new(&LinearConfig::new(inner, dim), device)),
            ],
        }
    }

    /// # Shapes
    /// `[batch, tokens, dim]` -> same.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net.iter().fold(x, |x, layer| match layer {
            FeedForwardLayer::Geglu(geglu) => super::geglu(geglu.proj.forward(x)),
            FeedForwardLayer::Dropout(dropout) => dropout.forward(x),
            FeedForwardLayer::Linear(linear) => linear.forward(x),
        })
    }
}

/// `BasicTransformerBlock` (`norm_type="layer_norm"`, GEGLU, no attention bias).
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// Norm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// Norm before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Cross-attention to the text embeddings.
    pub attn2: Attention<B>,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// Feed-forward.
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// # Shapes
    /// `x`: `[batch, tokens, dim]`, `context`: `[batch, 77, cross_attention_dim]` -> `[batch, tokens, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        // 1. Self-attention.
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        // 2. Cross-attention.
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        // 3. Feed-forward.
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// Hyper-parameters of a [`Transformer2DModel`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transformer2DModelConfig {
    /// Channels of the feature map.
    pub in_channels: usize,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head (`in_channels / heads` in SD1.5).
    pub dim_head: usize,
    /// Width of the text embeddings.
    pub cross_attention_dim: usize,
    /// GroupNorm groups (eps 1e-6).
    pub norm_num_groups: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// `proj_in`/`proj_out` as Linear (SD2-style) instead of 1x1 conv (SD1.5).
    pub use_linear_projection: bool,
}

/// `proj_in` / `proj_out`: a 1x1 convolution (SD1.5) or a Linear.
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// 1x1 convolution on the spatial map.
    Conv(LoraConv2d<B>),
    /// Linear on tokens.
    Linear(LoraLinear<B>),
}

/// `Transformer2DModel` for continuous (latent) input.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// Input GroupNorm.
    pub norm: GroupNorm<B>,
    /// Channels -> inner width.
    pub proj_in: Projection<B>,
    /// The blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Inner width -> channels.
    pub proj_out: Projection<B>,
}

impl Transformer2DModelConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer2DModel<B> {
        let inner = self.heads * self.dim_head;
        let projection = |i, o| {
            if self.use_linear_projection {
                Projection::Linear(LoraLinear::new(&LinearConfig::new(i, o), device))
            } else {
                Projection::Conv(conv2d(i, o, 1, device))
            }
        };
        let attention = |cross| {
            AttentionConfig {
                query_dim: inner,
                cross_attention_dim: cross,
                heads: self.heads,
                dim_head: self.dim_head,
                bias: false,
                group_norm: None,
            }
            .init(device)
        };
        let layer_norm = || LayerNormConfig::new(inner).with_epsilon(1e-5).init(device);
        Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: projection(self.in_channels, inner),
            transformer_blocks: (0..self.layers)
                .map(|_| BasicTransformerBlock {
                    norm1: layer_norm(),
                    attn1: attention(None),
                    norm2: layer_norm(),
                    attn2: attention(Some(self.cross_attention_dim)),
                    norm3: layer_norm(),
                    ff: FeedForward::new(inner, device),
                })
                .collect(),
            proj_out: projection(inner, self.in_channels),
        }
    }
}

impl<B: Backend> Transformer2DModel<B> {
    /// # Shapes
    /// `x`: `[batch, c, h, w]`, `context`: `[batch, 77, cross_attention_dim]` -> `[batch, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let residual = x.clone();
        // 1. GroupNorm.
        let h = group_norm(&self.norm, x);
        // 2. proj_in and flatten to tokens [batch, h*w, inner].
        let tokens = |t: Tensor<B, 4>| {
            let c = t.dims()[1];
            super::transpose_tokens(t.reshape([batch, c, height * width]))
        };
        let h = match &self.proj_in {
            Projection::Conv(conv) => tokens(conv.forward(h)),
            Projection::Linear(linear) => linear.forward(tokens(h)),
        };
        // 3. Transformer blocks.
        let h = self
            .transformer_blocks
            .iter()
            .fold(h, |h, block| block.forward(h, context.clone()));
        // 4. proj_out and back to [batch, c, h, w].
        let spatial = |t: Tensor<B, 3>| {
            let c = t.dims()[2];
            super::transpose_tokens(t).reshape([batch, c, height, width])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(spatial(h)),
            Projection::Linear(linear) => spatial(linear.forward(h)),
        };
        // 5. Residual.
        debug_assert_eq!(out.dims()[1], channels);
        out + residual
    }
}

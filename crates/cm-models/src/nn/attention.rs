//! `Attention` (diffusers `models/attention_processor.py`, the `AttnProcessor2_0` path): multi-head
//! scaled dot-product attention with `to_q`, `to_k`, `to_v`, `to_out.0`. Used for the UNet's self-
//! and cross-attention (no bias on q/k/v) and for the VAE mid-block (with `group_norm`, biases,
//! one head, residual connection, spatial input).

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_lora::LoraLinear;

/// Hyper-parameters of an [`Attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the keys/values source (`cross_attention_dim`), `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Bias on `to_q`, `to_k`, `to_v`.
    pub bias: bool,
    /// `Some((groups, eps))`: GroupNorm on spatial input, and a residual connection (VAE).
    pub group_norm: Option<(usize, f64)>,
}

/// `Attention`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Optional input GroupNorm (VAE mid-block).
    pub group_norm: Option<GroupNorm<B>>,
    /// Query projection.
    pub to_q: LoraLinear<B>,
    /// Key projection.
    pub to_k: LoraLinear<B>,
    /// Value projection.
    pub to_v: LoraLinear<B>,
    /// `[Linear]`: diffusers' `to_out` is `ModuleList([Linear, Dropout])`; the dropout has no
    /// parameters, so the key stays `to_out.0`.
    pub to_out: Vec<LoraLinear<B>>,
    /// Number of heads.
    pub heads: usize,
}

impl AttentionConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let proj = |i, o, bias| LoraLinear::new(&LinearConfig::new(i, o).with_bias(bias), device);
        Attention {
            group_norm: self.group_norm.map(|(groups, eps)| {
                GroupNormConfig::new(groups, self.query_dim)
                    .with_epsilon(eps)
                    .init(device)
            }),
            to_q: proj(self.query_dim, inner, self.bias),
            to_k: proj(kv_dim, inner, self.bias),
            to_v: proj(kv_dim, inner, self.bias),
            to_out: vec![proj(inner, self.query_dim, true)],
            heads: self.heads,
        }
    }
}

impl<B: Backend> Attention<B> {
    /// Attention over token sequences.
    ///
    /// # Shapes
    /// `x`: `[batch, tokens, query_dim]`, `context`: `[batch, ctx_tokens, cross_attention_dim]`
    /// (or `None` for self-attention) -> `[batch, tokens, query_dim]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        // 1. Project.
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        // 2. softmax(q k^T / sqrt(dim_head)) v per head, heads packed in the last dimension
        //    (diffusers splits them out and merges them back; the values are the same).
        let out = super::packed_attention::attention(q, k, v, self.heads);
        // 3. Output projection (to_out.1 is dropout: identity at inference).
        self.to_out[0].forward(out)
    }

    /// Spatial self-attention of the VAE mid-block: GroupNorm, attention over the `h * w`
    /// positions, residual connection.
    ///
    /// # Shapes
    /// `x`: `[batch, channels, h, w]` -> same.
    pub fn forward_spatial(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let residual = x.clone();
        // 1. GroupNorm on the spatial map (applied before flattening, as diffusers does).
        let h = match &self.group_norm {
            Some(norm) => super::group_norm(norm, x),
            None => x,
        };
        // 2. [b, c, h, w] -> [b, h*w, c], attend, back.
        let tokens = super::transpose_tokens(h.reshape([batch, channels, height * width]));
        let out = self.forward(tokens, None);
        let out = super::transpose_tokens(out).reshape([batch, channels, height, width]);
        // 3. Residual connection (rescale_output_factor = 1).
        out + residual
    }
}

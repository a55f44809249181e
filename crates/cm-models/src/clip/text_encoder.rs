//! CLIP text encoder (`CLIPTextModel`), following transformers' `models/clip/modeling_clip.py`.
//!
//! Module and field names equal transformers' attribute names, so Burn parameter paths equal the
//! checkpoint keys once the optional `text_model.` prefix is removed (see `docs/weights.md`).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::config::{ClipActivation, ClipTextConfig};
use crate::error::{ModelError, Result};

/// `x * sigmoid(1.702 x)`, the GELU approximation of the original CLIP.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * sigmoid(x * 1.702)
}

/// Token + position embeddings (`CLIPTextEmbeddings`).
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden_size]`.
    pub token_embedding: Embedding<B>,
    /// `[max_position_embeddings, hidden_size]`.
    pub position_embedding: Embedding<B>,
}

/// Multi-head self-attention with a causal mask (`CLIPAttention`).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

/// The feed-forward block (`CLIPMLP`): fc1, activation, fc2.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// `hidden -> intermediate`.
    pub fc1: Linear<B>,
    /// `intermediate -> hidden`.
    pub fc2: Linear<B>,
    /// `true` for quick_gelu, `false` for exact GELU.
    pub quick_gelu: bool,
}

/// One pre-norm transformer layer (`CLIPEncoderLayer`).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Causal self-attention.
    pub self_attn: ClipAttention<B>,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: ClipMlp<B>,
}

/// The stack of layers (`CLIPEncoder`).
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// `num_hidden_layers` layers.
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// `CLIPTextModel` (transformers' `CLIPTextTransformer` without the wrapper).
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// Embeddings.
    pub embeddings: ClipTextEmbeddings<B>,
    /// Transformer layers.
    pub encoder: ClipEncoder<B>,
    /// Final layer norm.
    pub final_layer_norm: LayerNorm<B>,
    /// End-of-text id used to find the pooled position (2 = legacy argmax rule).
    pub eos_token_id: i64,
}

/// Outputs of [`ClipTextModel::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// `[batch, seq, hidden]`: the conditioning Stable Diffusion uses.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`: the final hidden state at the end-of-text token.
    pub pooler_output: Tensor<B, 2>,
}

impl ClipTextConfig {
    /// Builds a randomly initialised text encoder (load weights with
    /// [`ClipTextModel::load_safetensors`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextModel<B> {
        let h = self.hidden_size;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                layer_norm1: norm(),
                self_attn: ClipAttention {
                    q_proj: linear(h, h),
                    k_proj: linear(h, h),
                    v_proj: linear(h, h),
                    out_proj: linear(h, h),
                    num_heads: self.num_attention_heads,
                },
                layer_norm2: norm(),
                mlp: ClipMlp {
                    fc1: linear(h, self.intermediate_size),
                    fc2: linear(self.intermediate_size, h),
                    quick_gelu: self.activation() == ClipActivation::QuickGelu,
                },
            })
            .collect();
        ClipTextModel {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
            },
            encoder: ClipEncoder { layers },
            final_layer_norm: norm(),
            eos_token_id: self.eos_token_id,
        }
    }
}

impl<B: Backend> ClipAttention<B> {
    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // 1. Project to queries, keys and values, heads packed in the last dimension
        //    (transformers splits them out into [batch, heads, seq, head_dim]; the same values).
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        // 2. Scaled dot-product attention per head with the causal mask (scale = head_dim^-0.5).
        let out = crate::nn::packed_attention::causal_attention(q, k, v, self.num_heads);
        // 3. Project out (heads already merged).
        self.out_proj.forward(out)
    }
}

impl<B: Backend> ClipMlp<B> {
    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu {
            quick_gelu(x)
        } else {
            gelu(x)
        };
        self.fc2.forward(x)
    }
}

impl<B: Backend> ClipEncoderLayer<B> {
    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // 1. x = x + self_attn(layer_norm1(x))
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        // 2. x = x + mlp(layer_norm2(x))
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// Number of positions the model accepts (77 for SD1.5).
    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embedding.weight.dims()[0]
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.token_embedding.weight.dims()[1]
    }

    /// Number of token ids the embedding table holds (`vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.embeddings.token_embedding.weight.dims()[0]
    }

    /// Checks host-side token ids against the vocabulary. [`Self::forward`] does not read ids back
    /// from the device, so ids from anywhere but a tokenizer whose vocabulary fits this model
    /// (checked when a pipeline loads) should pass through here first.
    pub fn check_ids(&self, ids: &[i64]) -> Result<()> {
        let vocab = self.vocab_size() as i64;
        match ids.iter().find(|&&id| id < 0 || id >= vocab) {
            Some(bad) => Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the text encoder's vocabulary 0..{vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// Encodes token ids (each in `0..vocab_size`: see [`Self::check_ids`]; no device-to-host
    /// read happens here).
    ///
    /// # Shapes
    /// `input_ids`: `[batch, seq]` with `seq <= max_position_embeddings`.
    /// Returns `last_hidden_state` `[batch, seq, hidden]` and `pooler_output` `[batch, hidden]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<ClipTextOutput<B>> {
        let [batch, seq] = input_ids.dims();
        if seq == 0 || seq > self.max_positions() {
            return Err(ModelError::InvalidInput(format!(
                "text encoder input has {seq} tokens; expected 1..={} (tokenize with padding/truncation to 77)",
                self.max_positions()
            )));
        }
        let device = input_ids.device();
        // 1. Token embeddings + learned position embeddings for positions 0..seq.
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let hidden = self.embeddings.token_embedding.forward(input_ids.clone())
            + self.embeddings.position_embedding.forward(positions);
        // 2. Causal transformer layers.
        let hidden = self
            .encoder
            .layers
            .iter()
            .fold(hidden, |h, layer| layer.forward(h));
        // 3. Final layer norm.
        let last_hidden_state = self.final_layer_norm.forward(hidden);
        // 4. Pooled output at the end-of-text position of each sequence.
        let eos_positions = if self.eos_token_id == 2 {
            // transformers' legacy rule: the position of the largest id (the first 49407).
            input_ids.argmax(1)
        } else {
            // The first position holding eos_token_id (0 if absent, as torch's argmax of all-false).
            input_ids.equal_elem(self.eos_token_id).int().argmax(1)
        };
        let hidden_size = last_hidden_state.dims()[2];
        let index = eos_positions
            .reshape([batch, 1, 1])
            .expand([batch, 1, hidden_size]);
        let pooler_output = last_hidden_state
            .clone()
            .gather(1, index)
            .reshape([batch, hidden_size]);
        Ok(ClipTextOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}

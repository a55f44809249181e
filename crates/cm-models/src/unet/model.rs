//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`) for SD1.x-style configs,
//! with the optional `time_cond_proj_dim` guidance-embedding input of LCM-style students.

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_lora::LoraConv2d;

use super::blocks::{BlockSettings, DownBlock, DownBlockSpec, MidBlock, UpBlock, UpBlockSpec};
use super::config::UNetConfig;
use crate::error::{ModelError, Result};
use crate::nn::{
    conv2d, group_norm, silu, timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig,
};

/// `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Latents -> `block_out_channels[0]`.
    pub conv_in: LoraConv2d<B>,
    /// Timestep MLP (with `cond_proj` when `time_cond_proj_dim` is set).
    pub time_embedding: TimestepEmbedding<B>,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock<B>>,
    /// Bottleneck.
    pub mid_block: MidBlock<B>,
    /// Decoder levels.
    pub up_blocks: Vec<UpBlock<B>>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// `block_out_channels[0]` -> latents.
    pub conv_out: LoraConv2d<B>,
    /// Sinusoid width (`block_out_channels[0]`).
    pub time_proj_dim: usize,
    /// `flip_sin_to_cos` of the sinusoid.
    pub flip_sin_to_cos: bool,
    /// `freq_shift` of the sinusoid.
    pub freq_shift: f64,
    /// Map input from [0, 1] to [-1, 1].
    pub center_input_sample: bool,
    /// Width of the extra condition, 0 if none.
    pub time_cond_proj_dim: usize,
}

impl UNetConfig {
    /// Builds a randomly initialised UNet (load weights with
    /// [`UNet2DConditionModel::load_safetensors`]). Call on a validated config.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        let channels = &self.block_out_channels;
        let levels = channels.len();
        let settings = BlockSettings {
            temb_channels: self.time_embed_dim(),
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
        };
        // Down path.
        let mut output = channels[0];
        let down_blocks = (0..levels)
            .map(|i| {
                let input = output;
                output = channels[i];
                let spec = DownBlockSpec {
                    in_channels: input,
                    out_channels: output,
                    layers: self.layers_per_block,
                    cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                    heads: self.heads(i),
                    transformer_layers: self.transformer_layers_per_block.get(i),
                    add_downsample: i + 1 < levels,
                    downsample_padding: self.downsample_padding,
                };
                DownBlock::new(spec, &settings, device)
            })
            .collect();
        // Mid block.
        let last = levels - 1;
        let mid_block = MidBlock::new(
            channels[last],
            self.heads(last),
            self.transformer_layers_per_block.get(last),
            self.mid_block_scale_factor,
            &settings,
            device,
        );
        // Up path (reversed channels, heads and transformer depths).
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut output = reversed[0];
        let up_blocks = (0..levels)
            .map(|i| {
                let prev = output;
                output = reversed[i];
                let input = reversed[(i + 1).min(last)];
                let level = last - i;
                let spec = UpBlockSpec {
                    in_channels: input,
                    out_channels: output,
                    prev_output_channels: prev,
                    layers: self.layers_per_block + 1,
                    cross_attention: self.up_block_types[i] == "CrossAttnUpBlock2D",
                    heads: self.heads(level),
                    transformer_layers: self.transformer_layers_per_block.get(level),
                    add_upsample: i < last,
                };
                UpBlock::new(spec, &settings, device)
            })
            .collect();
        UNet2DConditionModel {
            conv_in: conv2d(self.in_channels, channels[0], 3, device),
            time_embedding: TimestepEmbeddingConfig {
                in_channels: channels[0],
                time_embed_dim: self.time_embed_dim(),
                cond_proj_dim: self.time_cond_proj_dim,
            }
            .init(device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_num_groups, channels[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv2d(channels[0], self.out_channels, 3, device),
            time_proj_dim: channels[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            center_input_sample: self.center_input_sample,
            time_cond_proj_dim: self.time_cond_proj_dim.unwrap_or(0),
        }
    }
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Predicts the noise (or v / x0, per the scheduler's `prediction_type`) of `sample`.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`
    /// - `timesteps`: `batch` host values (fractional timesteps allowed); the sinusoid is computed
    ///   on the host, so the pass never reads from the device
    /// - `encoder_hidden_states`: `[batch, tokens, cross_attention_dim]`
    /// - `timestep_cond`: `[batch, time_cond_proj_dim]`, required iff the model has `cond_proj`
    ///
    /// Returns `[batch, out_channels, h, w]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        encoder_hidden_states: Tensor<B, 3>,
        timestep_cond: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 4>> {
        self.check_inputs(
            &sample,
            timesteps,
            &encoder_hidden_states,
            timestep_cond.as_ref(),
        )?;
        // 0. Inputs in the weights' dtype (a half-precision UNet takes f32 callers' tensors; the
        //    output stays in that dtype), then center the input.
        let dtype = self.conv_in.base.weight.val().dtype();
        let sample = crate::nn::cast(sample, dtype);
        let encoder_hidden_states = crate::nn::cast(encoder_hidden_states, dtype);
        let timestep_cond = timestep_cond.map(|c| crate::nn::cast(c, dtype));
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        // 1. Time: sinusoid, then MLP (+ cond_proj(timestep_cond)).
        let t_emb = crate::nn::cast(
            timestep_embedding(
                timesteps,
                self.time_proj_dim,
                self.flip_sin_to_cos,
                self.freq_shift,
                &sample.device(),
            ),
            dtype,
        );
        let emb = self.time_embedding.forward(t_emb, timestep_cond);
        // 2. Pre-process.
        let mut h = self.conv_in.forward(sample);
        // 3. Down path, keeping every state for the skip connections.
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(h, emb.clone(), encoder_hidden_states.clone());
            h = out;
            skips.extend(states);
        }
        // 4. Mid block.
        h = self
            .mid_block
            .forward(h, emb.clone(), encoder_hidden_states.clone());
        // 5. Up path: each block consumes its skips; upsample to the next skip's size.
        for block in &self.up_blocks {
            let remaining = skips.len() - block.resnets.len();
            let upsample_size = (!block.upsamplers.is_empty() && remaining > 0).then(|| {
                let [_, _, sh, sw] = skips[remaining - 1].dims();
                [sh, sw]
            });
            h = block.forward(
                h,
                &mut skips,
                emb.clone(),
                encoder_hidden_states.clone(),
                upsample_size,
            );
        }
        // 6. Post-process.
        Ok(self
            .conv_out
            .forward(silu(group_norm(&self.conv_norm_out, h))))
    }

    pub(super) fn check_inputs(
        &self,
        sample: &Tensor<B, 4>,
        timesteps: &[f32],
        context: &Tensor<B, 3>,
        cond: Option<&Tensor<B, 2>>,
    ) -> Result<()> {
        let [batch, channels, _, _] = sample.dims();
        let expected_channels = self.conv_in.base.weight.dims()[1];
        if channels != expected_channels {
            return Err(ModelError::InvalidInput(format!(
                "UNet sample has {channels} channels; the model expects {expected_channels}"
            )));
        }
        if timesteps.len() != batch {
            return Err(ModelError::InvalidInput(format!(
                "UNet got {} timesteps for a batch of {batch}",
                timesteps.len()
            )));
        }
        if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(ModelError::InvalidInput(format!(
                "UNet timestep {t} is not a finite number"
            )));
        }
        let [cb, _, cd] = context.dims();
        let expected_dim = self
            .down_blocks
            .iter()
            .find_map(|b| b.attentions.first())
            .map(|a| a.transformer_blocks[0].attn2.to_k.base.weight.dims()[0]);
        if cb != batch || expected_dim.is_some_and(|d| d != cd) {
            return Err(ModelError::InvalidInput(format!(
                "encoder_hidden_states is [{cb}, _, {cd}]; expected batch {batch} and width {}",
                expected_dim.unwrap_or(cd)
            )));
        }
        match (cond, self.time_cond_proj_dim) {
            (None, 0) => Ok(()),
            (Some(_), 0) => Err(ModelError::InvalidInput(
                "timestep_cond given, but this UNet has no time_cond_proj_dim".into(),
            )),
            (None, d) => Err(ModelError::InvalidInput(format!(
                "this UNet has time_cond_proj_dim = {d}: pass a guidance embedding as timestep_cond"
            ))),
            (Some(c), d) if c.dims() != [batch, d] => Err(ModelError::InvalidInput(format!(
                "timestep_cond is {:?}; expected [{batch}, {d}]",
                c.dims()
            ))),
            _ => Ok(()),
        }
    }
}

//! The down, mid and up blocks of `UNet2DConditionModel` (diffusers
//! `models/unets/unet_2d_blocks.py`): `CrossAttnDownBlock2D` / `DownBlock2D` (one type here, with
//! or without attentions), `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::nn::{
    Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Transformer2DModel, Transformer2DModelConfig,
    Upsample2D,
};

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
}

impl BlockSettings {
    fn resnet<B: Backend>(
        &self,
        input: usize,
        output: usize,
        scale: f64,
        device: &B::Device,
    ) -> ResnetBlock2D<B> {
        ResnetBlock2DConfig {
            in_channels: input,
            out_channels: output,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor: scale,
        }
        .init(device)
    }

    /// `count` transformers after as many resnets, or none for blocks without attention.
    fn transformers<B: Backend>(
        &self,
        enabled: bool,
        count: usize,
        channels: usize,
        heads: usize,
        layers: usize,
        device: &B::Device,
    ) -> Vec<Transformer2DModel<B>> {
        if !enabled {
            return Vec::new();
        }
        (0..count)
            .map(|_| self.transformer(channels, heads, layers, device))
            .collect()
    }

    fn transformer<B: Backend>(
        &self,
        channels: usize,
        heads: usize,
        layers: usize,
        device: &B::Device,
    ) -> Transformer2DModel<B> {
        Transformer2DModelConfig {
            in_channels: channels,
            heads,
            dim_head: channels / heads,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.groups,
            layers,
            use_linear_projection: self.use_linear_projection,
        }
        .init(device)
    }
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet (empty for `DownBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `[Downsample2D]`, empty on the last level.
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// Arguments of [`DownBlock::new`].
pub(crate) struct DownBlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub layers: usize,
    pub cross_attention: bool,
    pub heads: usize,
    pub transformer_layers: usize,
    pub add_downsample: bool,
    pub downsample_padding: usize,
}

impl<B: Backend> DownBlock<B> {
    pub(crate) fn new(spec: DownBlockSpec, s: &BlockSettings, device: &B::Device) -> Self {
        let resnets = (0..spec.layers)
            .map(|i| {
                let input = if i == 0 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                s.resnet(input, spec.out_channels, 1.0, device)
            })
            .collect();
        let attentions = s.transformers(
            spec.cross_attention,
            spec.layers,
            spec.out_channels,
            spec.heads,
            spec.transformer_layers,
            device,
        );
        let downsamplers = if spec.add_downsample {
            vec![Downsample2D::new(
                spec.out_channels,
                spec.out_channels,
                spec.downsample_padding,
                device,
            )]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            attentions,
            downsamplers,
        }
    }

    /// Returns the output and every intermediate state the up path will concatenate.
    ///
    /// # Shapes
    /// `x`: `[batch, in, h, w]` -> `[batch, out, h/2, w/2]` (or `h, w` on the last level).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut h = x;
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(h, Some(temb.clone()));
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(h, context.clone());
            }
            states.push(h.clone());
        }
        for down in &self.downsamplers {
            h = down.forward(h);
            states.push(h.clone());
        }
        (h, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    /// `layers + 1` resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `layers` transformers.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock<B> {
    pub(crate) fn new(
        channels: usize,
        heads: usize,
        transformer_layers: usize,
        scale: f64,
        s: &BlockSettings,
        device: &B::Device,
    ) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| s.resnet(channels, channels, scale, device))
                .collect(),
            attentions: vec![s.transformer(channels, heads, transformer_layers, device)],
        }
    }

    /// # Shapes
    /// `[batch, c, h, w]` -> same.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut h = self.resnets[0].forward(x, Some(temb.clone()));
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = attention.forward(h, context.clone());
            h = resnet.forward(h, Some(temb.clone()));
        }
        h
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    /// Resnets, each taking the concatenation of the running state and one skip state.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet (empty for `UpBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `[Upsample2D]`, empty on the last level.
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// Arguments of [`UpBlock::new`].
pub(crate) struct UpBlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub prev_output_channels: usize,
    pub layers: usize,
    pub cross_attention: bool,
    pub heads: usize,
    pub transformer_layers: usize,
    pub add_upsample: bool,
}

impl<B: Backend> UpBlock<B> {
    pub(crate) fn new(spec: UpBlockSpec, s: &BlockSettings, device: &B::Device) -> Self {
        let resnets = (0..spec.layers)
            .map(|i| {
                let skip = if i == spec.layers - 1 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                let input = if i == 0 {
                    spec.prev_output_channels
                } else {
                    spec.out_channels
                };
                s.resnet(input + skip, spec.out_channels, 1.0, device)
            })
            .collect();
        let attentions = s.transformers(
            spec.cross_attention,
            spec.layers,
            spec.out_channels,
            spec.heads,
            spec.transformer_layers,
            device,
        );
        let upsamplers = if spec.add_upsample {
            vec![Upsample2D::new(
                spec.out_channels,
                spec.out_channels,
                device,
            )]
        } else {
            Vec::new()
        };
        Self {
            resnets,
            attentions,
            upsamplers,
        }
    }

    /// Consumes skip states from the end of `skips`; `upsample_size` is the spatial size of the
    /// next level's skip states (so odd latent sizes work as in diffusers).
    ///
    /// # Shapes
    /// `x`: `[batch, prev, h, w]` -> `[batch, out, upsample_size]` (or `h, w` on the last level).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut h = x;
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path provides one skip state per up resnet");
            h = resnet.forward(Tensor::cat(vec![h, skip], 1), Some(temb.clone()));
            if let Some(attention) = self.attentions.get(i) {
                h = attention.forward(h, context.clone());
            }
        }
        for up in &self.upsamplers {
            h = up.forward(h, upsample_size);
        }
        h
    }
}

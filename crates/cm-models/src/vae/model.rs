//! `AutoencoderKL` (diffusers `models/autoencoders/autoencoder_kl.py`, `vae.py`): encoder to a
//! diagonal Gaussian over latents, decoder back to images.

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use cm_lora::LoraConv2d;

use super::config::VaeConfig;
use crate::error::{ModelError, Result};
use crate::nn::{
    conv2d, group_norm, silu, Attention, AttentionConfig, Downsample2D, ResnetBlock2D,
    ResnetBlock2DConfig, Upsample2D,
};

/// `DownEncoderBlock2D`: resnets, then an optional (right/bottom padded) down-sampler.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `[Downsample2D]`, empty on the last level.
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// `UpDecoderBlock2D`: resnets, then an optional up-sampler.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `[Upsample2D]`, empty on the last level.
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// `UNetMidBlock2D` without time embedding: resnet, spatial attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMidBlock<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One single-head attention with GroupNorm (empty if `mid_block_add_attention` is false).
    pub attentions: Vec<Attention<B>>,
}

/// The encoder.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Image -> `block_out_channels[0]`.
    pub conv_in: LoraConv2d<B>,
    /// Levels.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock<B>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// -> `2 * latent_channels` (mean and log-variance).
    pub conv_out: LoraConv2d<B>,
}

/// The decoder.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Latents -> `block_out_channels[-1]`.
    pub conv_in: LoraConv2d<B>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock<B>,
    /// Levels (reversed channels).
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// -> image channels.
    pub conv_out: LoraConv2d<B>,
}

/// `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// Image -> moments.
    pub encoder: Encoder<B>,
    /// Latents -> image.
    pub decoder: Decoder<B>,
    /// 1x1 conv on the moments.
    pub quant_conv: Option<LoraConv2d<B>>,
    /// 1x1 conv on the latents before decoding.
    pub post_quant_conv: Option<LoraConv2d<B>>,
    /// Latent scale (0.18215 for SD1.5).
    pub scaling_factor: f64,
}

/// The diagonal Gaussian posterior `q(z | x)`.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    /// `[batch, latent, h, w]`.
    pub mean: Tensor<B, 4>,
    /// `[batch, latent, h, w]`, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// `mean + std * noise` with caller-provided standard normal `noise` (reproducible).
    pub fn sample_with(&self, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std() * noise
    }

    /// `mean + std * noise` with noise from the backend's seeded RNG (`B::seed`).
    pub fn sample(&self) -> Tensor<B, 4> {
        let noise = Tensor::random(
            self.mean.shape(),
            Distribution::Normal(0.0, 1.0),
            &self.mean.device(),
        );
        self.sample_with(noise)
    }

    /// The mode (= mean).
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }
}

fn resnet<B: Backend>(
    input: usize,
    output: usize,
    groups: usize,
    device: &B::Device,
) -> ResnetBlock2D<B> {
    ResnetBlock2DConfig {
        in_channels: input,
        out_channels: output,
        temb_channels: None,
        groups,
        eps: 1e-6,
        output_scale_factor: 1.0,
    }
    .init(device)
}

fn mid_block<B: Backend>(
    channels: usize,
    groups: usize,
    attention: bool,
    device: &B::Device,
) -> VaeMidBlock<B> {
    VaeMidBlock {
        resnets: vec![
            resnet(channels, channels, groups, device),
            resnet(channels, channels, groups, device),
        ],
        attentions: if attention {
            vec![AttentionConfig {
                query_dim: channels,
                cross_attention_dim: None,
                heads: 1,
                dim_head: channels,
                bias: true,
                group_norm: Some((groups, 1e-6)),
            }
            .init(device)]
        } else {
            Vec::new()
        },
    }
}

impl<B: Backend> VaeMidBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.resnets[0].forward(x, None);
        if let Some(attention) = self.attentions.first() {
            h = attention.forward_spatial(h);
        }
        self.resnets[1].forward(h, None)
    }
}

impl VaeConfig {
    /// Builds a randomly initialised VAE (load weights with [`AutoencoderKL::load_safetensors`]).
    /// Call on a validated config.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoencoderKL<B> {
        let channels = &self.block_out_channels;
        let levels = channels.len();
        let groups = self.norm_num_groups;
        let norm = |c| {
            GroupNormConfig::new(groups, c)
                .with_epsilon(1e-6)
                .init(device)
        };
        // Encoder.
        let mut output = channels[0];
        let down_blocks = (0..levels)
            .map(|i| {
                let input = output;
                output = channels[i];
                DownEncoderBlock2D {
                    resnets: (0..self.layers_per_block)
                        .map(|j| {
                            resnet(if j == 0 { input } else { output }, output, groups, device)
                        })
                        .collect(),
                    downsamplers: if i + 1 < levels {
                        vec![Downsample2D::new(output, output, 0, device)]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let top = channels[levels - 1];
        let encoder = Encoder {
            conv_in: conv2d(self.in_channels, channels[0], 3, device),
            down_blocks,
            mid_block: mid_block(top, groups, self.mid_block_add_attention, device),
            conv_norm_out: norm(top),
            conv_out: conv2d(top, 2 * self.latent_channels, 3, device),
        };
        // Decoder.
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut output = reversed[0];
        let up_blocks = (0..levels)
            .map(|i| {
                let prev = output;
                output = reversed[i];
                UpDecoderBlock2D {
                    resnets: (0..self.layers_per_block + 1)
                        .map(|j| resnet(if j == 0 { prev } else { output }, output, groups, device))
                        .collect(),
                    upsamplers: if i + 1 < levels {
                        vec![Upsample2D::new(output, output, device)]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let decoder = Decoder {
            conv_in: conv2d(self.latent_channels, top, 3, device),
            mid_block: mid_block(top, groups, self.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: norm(channels[0]),
            conv_out: conv2d(channels[0], self.out_channels, 3, device),
        };
        let latents = self.latent_channels;
        AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self
                .use_quant_conv
                .then(|| conv2d(2 * latents, 2 * latents, 1, device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv2d(latents, latents, 1, device)),
            scaling_factor: self.scaling_factor,
        }
    }
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// `[batch, 3, H, W]` -> `[batch, 2 * latent, H / f, W / f]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // 1. conv_in; 2. down blocks; 3. mid block; 4. norm, SiLU, conv_out.
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, None);
            }
            for down in &block.downsamplers {
                h = down.forward(h);
            }
        }
        h = self.mid_block.forward(h);
        self.conv_out
            .forward(silu(group_norm(&self.conv_norm_out, h)))
    }
}

impl<B: Backend> Decoder<B> {
    /// # Shapes
    /// `[batch, latent, h, w]` -> `[batch, 3, h * f, w * f]`.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        // 1. conv_in; 2. mid block; 3. up blocks; 4. norm, SiLU, conv_out.
        let mut h = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, None);
            }
            for up in &block.upsamplers {
                h = up.forward(h, None);
            }
        }
        self.conv_out
            .forward(silu(group_norm(&self.conv_norm_out, h)))
    }
}

impl<B: Backend> AutoencoderKL<B> {
    /// Spatial factor between images and latents.
    pub fn downsampling_factor(&self) -> usize {
        1 << self
            .encoder
            .down_blocks
            .iter()
            .filter(|b| !b.downsamplers.is_empty())
            .count()
    }

    /// The posterior of images in [-1, 1] (unscaled latents).
    ///
    /// # Shapes
    /// `images`: `[batch, 3, H, W]`, `H` and `W` multiples of [`Self::downsampling_factor`].
    pub fn encode(&self, images: Tensor<B, 4>) -> Result<DiagonalGaussian<B>> {
        let [_, _, h, w] = images.dims();
        let f = self.downsampling_factor();
        if h % f != 0 || w % f != 0 {
            return Err(ModelError::InvalidInput(format!(
                "image size {h}x{w} is not a multiple of the VAE's down-sampling factor {f}"
            )));
        }
        // A half-precision VAE runs in its dtype; the posterior comes back in f32.
        let dtype = self.dtype();
        let moments = self.encoder.forward(crate::nn::cast(images, dtype));
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        };
        let moments = crate::nn::cast(moments, burn::tensor::DType::F32);
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("two halves");
        Ok(DiagonalGaussian {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        })
    }

    /// Decodes unscaled latents to images in about [-1, 1].
    ///
    /// # Shapes
    /// `[batch, latent, h, w]` -> `[batch, 3, h * f, w * f]`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let latents = crate::nn::cast(latents, self.dtype());
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents,
        };
        crate::nn::cast(self.decoder.forward(z), burn::tensor::DType::F32)
    }

    /// The dtype of the weights (the VAE runs in it; inputs are cast, outputs come back in f32).
    pub fn dtype(&self) -> burn::tensor::DType {
        self.decoder.conv_in.base.weight.val().dtype()
    }

    /// Decodes *scaled* latents (as the UNet sees them: `z * scaling_factor`) to images in [0, 1],
    /// clamped, as diffusers' image processor does for `output_type="pt"`.
    pub fn decode_to_unit_range(&self, scaled_latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let images = self.decode(scaled_latents / self.scaling_factor);
        (images / 2.0 + 0.5).clamp(0.0, 1.0)
    }
}

//! Training a small Stable-Diffusion-shaped teacher from scratch on the captioned-shapes set (the
//! [demo] issue): an `AutoencoderKL` (reconstruction + KL), then a CLIP text encoder and a
//! `UNet2DConditionModel` trained together with the denoising objective (10% condition dropout,
//! so classifier-free guidance works). The result is written as a diffusers pipeline folder
//! (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), so every
//! command (and diffusers' `StableDiffusionPipeline`) loads it like SD1.5.
//!
//! The data set has 180 captions x 2 backgrounds = 360 distinct images; they are rendered once,
//! encoded once by the trained VAE, and sampled per example from `(seed, step, example)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData};
use cm_data::synthetic::{render, ShapeLabel, BACKGROUNDS, COLOURS, PLACES, SHAPES, SIZES};
use cm_losses::Loss;
use cm_models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use cm_models::config_json::JsonConfig;
use cm_models::unet::{UNet2DConditionModel, UNetConfig};
use cm_models::vae::{AutoencoderKL, VaeConfig};
use cm_models::{Component, WeightVariant};
use cm_schedulers::config::{PredictionType, SchedulerConfig};
use cm_schedulers::schedule::NoiseSchedule;

use crate::denoiser::Denoiser;
use crate::diffusion::{DiffusionStep, Objective};
use crate::draws::{generator, DrawSpec, GuidanceDraw, StepDraws};
use crate::error::{Result, TrainError};
use crate::lr::{LrDecay, LrSchedule};
use crate::parallel::train_on_peers;
use crate::params::initialize_on_host;
use crate::step::StepBatch;
use crate::trainer::{AdamWSettings, BatchSource, LoopSettings, TargetNetwork, Trainer};

/// Every caption of the grammar with its label, in a fixed order.
pub fn all_labels() -> Vec<ShapeLabel> {
    let mut out = Vec::new();
    for size in SIZES {
        for colour in COLOURS {
            for shape in SHAPES {
                for place in PLACES {
                    out.push(ShapeLabel {
                        shape: shape.into(),
                        colour: colour.0.into(),
                        size: size.0.into(),
                        place: place.0.into(),
                    });
                }
            }
        }
    }
    out
}

/// The text encoder and the UNet as one trainable denoiser; its condition is the prompt's token
/// ids (as f32 `[batch, 77]`, exact below 2^24), so condition dropout swaps in the ids of `""`.
#[derive(Module, Debug)]
pub struct TextUNet<B: Backend> {
    /// The text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// The denoiser.
    pub unet: UNet2DConditionModel<B>,
}

impl<B: Backend> Denoiser<B, 2> for TextUNet<B> {
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }

    fn predict(
        &self,
        x: Tensor<B, 4>,
        t: &[usize],
        condition: Tensor<B, 2>,
        _guidance: Option<&[f32]>,
    ) -> Result<Tensor<B, 4>> {
        let ids: Tensor<B, 2, Int> = condition.int();
        let context = self.text_encoder.forward(ids)?.last_hidden_state;
        let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        Ok(self.unet.forward(x, &times, context, None)?)
    }
}

/// The latent noise of a VAE step: the first `c * h * w` values of each example's (image-shaped)
/// draw, as `[n, c, h, w]`.
fn latent_noise<B: Backend>(draws: &StepDraws<B>, [n, c, h, w]: [usize; 4]) -> Tensor<B, 4> {
    draws
        .noise
        .clone()
        .reshape([n as i32, -1])
        .narrow(1, 0, c * h * w)
        .reshape([n, c, h, w])
}

/// The VAE objective: `mean((decode(z) - x)^2) + kl_weight * KL(q(z|x) || N(0, I))` with
/// `z = mean + std * eps` (eps from the step's draws, so the step is reproducible).
#[derive(Debug, Clone, Copy)]
pub struct VaeObjective {
    /// Weight of the KL term (per latent element, averaged).
    pub kl_weight: f64,
}

impl<B: AutodiffBackend, G, T> Objective<B, AutoencoderKL<B>, G, T, 2> for VaeObjective {
    fn loss(
        &self,
        vae: &AutoencoderKL<B>,
        _target: &G,
        _teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, 2>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>> {
        let images = Tensor::<B, 4>::from_inner(batch.x0.clone());
        let posterior = vae.encode(images.clone())?;
        let eps = latent_noise(draws, posterior.mean.dims());
        let z = posterior.sample_with(Tensor::from_inner(eps));
        let reconstruction = vae.decode(z);
        let mse = (reconstruction - images).powi_scalar(2).mean();
        let kl = (posterior.mean.clone().powi_scalar(2) + posterior.logvar.clone().exp()
            - posterior.logvar.clone()
            - 1.0)
            .mean()
            * 0.5;
        Ok(mse + kl * self.kl_weight)
    }

    fn validate(&self) -> Result<()> {
        if self.kl_weight.is_finite() && self.kl_weight >= 0.0 {
            Ok(())
        } else {
            Err(TrainError::Invalid(format!(
                "kl_weight {} must be >= 0",
                self.kl_weight
            )))
        }
    }
}

/// The decoder objective of [`TeacherRecipe::decoder_steps`] (encoder frozen):
/// `mean((decode(z) - x)^2)` with `z = mean + std * eps`, `eps` from the step's draws exactly as
/// in [`VaeObjective`] (so the same training as `VaeObjective { kl_weight: 0 }` on the frozen
/// encoder), but the posterior comes from the batch ([`PosteriorSource`]: computed once for every
/// image), so a step runs the decoder alone.
#[derive(Debug, Clone, Copy)]
pub struct DecoderObjective {
    /// `[c, h, w]` of a latent.
    pub latent: [usize; 3],
}

impl<B: AutodiffBackend, G, T> Objective<B, AutoencoderKL<B>, G, T, 2> for DecoderObjective {
    fn loss(
        &self,
        vae: &AutoencoderKL<B>,
        _target: &G,
        _teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, 2>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>> {
        let images = Tensor::<B, 4>::from_inner(batch.x0.clone());
        let n = images.dims()[0];
        let [c, h, w] = self.latent;
        let l = c * h * w;
        let posterior = batch.condition.clone();
        let mean = posterior.clone().narrow(1, 0, l).reshape([n, c, h, w]);
        let std = posterior.narrow(1, l, l).reshape([n, c, h, w]);
        let eps = latent_noise(draws, [n, c, h, w]);
        let z = Tensor::<B, 4>::from_inner(mean + std * eps);
        Ok((vae.decode(z) - images).powi_scalar(2).mean())
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// The VAE with gradients on the decoder and `post_quant_conv` only (the decoder phase of
/// [`TeacherRecipe::decoder_steps`]; a loaded VAE's parameters come without gradients, a new
/// one's all with them).
pub fn decoder_trainable<B: AutodiffBackend>(vae: AutoencoderKL<B>) -> AutoencoderKL<B> {
    struct RequireGrad;
    impl<B: Backend> ModuleMapper<B> for RequireGrad {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| t.set_require_grad(true))
        }
    }
    AutoencoderKL {
        encoder: vae.encoder.no_grad(),
        quant_conv: vae.quant_conv.map(|c| c.no_grad()),
        decoder: vae.decoder.map(&mut RequireGrad),
        post_quant_conv: vae.post_quant_conv.map(|c| c.map(&mut RequireGrad)),
        ..vae
    }
}

/// The 360 distinct images (label x background) at `side` pixels, as `[-1, 1]` CHW values.
pub struct ShapeImages {
    /// Labels, one per image.
    pub labels: Vec<ShapeLabel>,
    /// `[n * 3 * side * side]` values in [-1, 1].
    pub pixels: Vec<f32>,
    /// Image side.
    pub side: usize,
}

impl ShapeImages {
    /// Renders every label on every background.
    pub fn render(side: u32) -> Self {
        let mut labels = Vec::new();
        let mut pixels = Vec::new();
        for label in all_labels() {
            for background in BACKGROUNDS {
                let image = render(&label, side, background);
                for c in 0..3 {
                    pixels.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
                }
                labels.push(label.clone());
            }
        }
        Self {
            labels,
            pixels,
            side: side as usize,
        }
    }

    fn image(&self, i: usize) -> &[f32] {
        let n = 3 * self.side * self.side;
        &self.pixels[i * n..(i + 1) * n]
    }
}

fn pick(seed: u64, step: u64, example: usize, n: usize) -> usize {
    use rand::RngExt;
    generator(seed, &[step, example as u64, 9]).random_range(0..n)
}

/// Images for the VAE: example `e` of step `k` is image `U(seed, k, e)` of the 360.
pub struct ImageSource<'a> {
    /// The images.
    pub images: &'a ShapeImages,
    /// Seed.
    pub seed: u64,
}

impl<B: Backend> BatchSource<B, 2> for ImageSource<'_> {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 2>> {
        let n = examples.len();
        let side = self.images.side;
        let mut pixels = Vec::with_capacity(n * 3 * side * side);
        for e in examples {
            pixels.extend_from_slice(self.images.image(pick(
                self.seed,
                step,
                e,
                self.images.labels.len(),
            )));
        }
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(pixels, [n, 3, side, side]), device),
            condition: Tensor::zeros([n, 1], device),
            uncondition: Tensor::zeros([n, 1], device),
        })
    }
}

/// Decoder batches: example `e` of step `k` is image `U(seed, k, e)` of the 360 (`x0`) with its
/// frozen posterior as the condition: `[batch, 2 * c * h * w]`, the means then the stds (unscaled).
pub struct PosteriorSource<'a> {
    /// The images.
    pub images: &'a ShapeImages,
    /// `[n * latent]` posterior means (unscaled), image by image.
    pub means: &'a [f32],
    /// `[n * latent]` posterior stds (unscaled).
    pub stds: &'a [f32],
    /// Seed.
    pub seed: u64,
}

impl<B: Backend> BatchSource<B, 2> for PosteriorSource<'_> {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 2>> {
        let n = examples.len();
        let count = self.images.labels.len();
        let l = self.means.len() / count;
        let side = self.images.side;
        let mut pixels = Vec::with_capacity(n * 3 * side * side);
        let mut posterior = Vec::with_capacity(n * 2 * l);
        for e in examples {
            let i = pick(self.seed, step, e, count);
            pixels.extend_from_slice(self.images.image(i));
            posterior.extend_from_slice(&self.means[i * l..(i + 1) * l]);
            posterior.extend_from_slice(&self.stds[i * l..(i + 1) * l]);
        }
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(pixels, [n, 3, side, side]), device),
            condition: Tensor::from_data(TensorData::new(posterior, [n, 2 * l]), device),
            uncondition: Tensor::zeros([n, 2 * l], device),
        })
    }
}

/// Latents (posterior means and stds of the trained VAE, scaled) and token ids of the 360 images.
pub struct ShapeLatents {
    /// `[n * latent]` posterior means, already multiplied by the scaling factor.
    pub means: Vec<f32>,
    /// `[n * latent]` posterior stds, scaled likewise.
    pub stds: Vec<f32>,
    /// `[c, h, w]` of a latent.
    pub shape: [usize; 3],
    /// `[n * 77]` token ids of each image's caption.
    pub ids: Vec<f32>,
    /// The 77 ids of `""`.
    pub empty: Vec<f32>,
}

/// Latent batches for the UNet: `scaling (mean + std z)`, the caption's ids as the condition.
pub struct LatentShapesSource<'a> {
    /// The latents.
    pub latents: &'a ShapeLatents,
    /// Seed.
    pub seed: u64,
}

impl<B: Backend> BatchSource<B, 2> for LatentShapesSource<'_> {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 2>> {
        let n = examples.len();
        let l: usize = self.latents.shape.iter().product();
        let count = self.latents.means.len() / l;
        let mut x0 = Vec::with_capacity(n * l);
        let mut ids = Vec::with_capacity(n * 77);
        for e in examples {
            let i = pick(self.seed, step, e, count);
            let z = crate::draws::normals(&mut generator(self.seed, &[step, e as u64, 10]), l);
            x0.extend(
                (0..l).map(|j| self.latents.means[i * l + j] + self.latents.stds[i * l + j] * z[j]),
            );
            ids.extend_from_slice(&self.latents.ids[i * 77..(i + 1) * 77]);
        }
        let [c, h, w] = self.latents.shape;
        let empty: Vec<f32> = (0..n)
            .flat_map(|_| self.latents.empty.iter().copied())
            .collect();
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(x0, [n, c, h, w]), device),
            condition: Tensor::from_data(TensorData::new(ids, [n, 77]), device),
            uncondition: Tensor::from_data(TensorData::new(empty, [n, 77]), device),
        })
    }
}

/// The architecture and the budget of a teacher.
#[derive(Debug, Clone)]
pub struct TeacherRecipe {
    /// Image side in pixels.
    pub side: u32,
    /// VAE `block_out_channels` (its length - 1 halvings).
    pub vae_channels: Vec<usize>,
    /// UNet `block_out_channels`.
    pub unet_channels: Vec<usize>,
    /// UNet `layers_per_block`.
    pub unet_layers: usize,
    /// Text encoder width (and cross-attention width).
    pub text_width: usize,
    /// Text encoder layers.
    pub text_layers: usize,
    /// VAE steps.
    pub vae_steps: u64,
    /// UNet + text encoder steps (0 only with `resume_from`: keep its text encoder and UNet).
    pub unet_steps: u64,
    /// Decoder steps after the VAE phase: the VAE's reconstruction MSE again, with the encoder
    /// and `quant_conv` frozen ([`decoder_trainable`]), so the latents, and a UNet trained on
    /// them, stay valid while the decoder gets sharper (0: none).
    pub decoder_steps: u64,
    /// Batch size of both phases.
    pub batch: usize,
    /// Peers (threads) sharing each step's batch, gradients averaged: the same training, faster
    /// where one peer leaves cores idle (the CPU; [`crate::parallel::train_on_peers`]). Must
    /// divide `batch`.
    pub peers: usize,
    /// Learning rates (VAE, UNet).
    pub lr: (f64, f64),
    /// Seed.
    pub seed: u64,
    /// Hand a snapshot of the UNet phase to the caller every this many steps (0: never).
    pub snapshot_every: u64,
    /// Continue from a pipeline folder this recipe wrote: keep its VAE, train its text encoder
    /// and UNet `unet_steps` more steps (a fresh warm-up and cosine decay); the architecture
    /// fields above are then ignored (the folder's configs rule).
    pub resume_from: Option<PathBuf>,
    /// Take the VAE (weights, config and scaling factor) from this pipeline folder instead of
    /// training one, and train a new text encoder and UNet of the fields above on its latents
    /// (`vae_channels` and `vae_steps` are then ignored). Ignored with `resume_from`.
    pub vae_from: Option<PathBuf>,
}

impl Default for TeacherRecipe {
    fn default() -> Self {
        Self {
            side: 32,
            vae_channels: vec![16, 32, 64],
            unet_channels: vec![64, 128],
            unet_layers: 1,
            text_width: 64,
            text_layers: 2,
            vae_steps: 700,
            unet_steps: 2500,
            decoder_steps: 0,
            batch: 32,
            peers: 1,
            lr: (1e-3, 5e-4),
            seed: 0,
            snapshot_every: 500,
            resume_from: None,
            vae_from: None,
        }
    }
}

impl TeacherRecipe {
    /// Refuses architectures the configs cannot build, naming the field.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(format!("teacher recipe: {m}")));
        if self.vae_channels.is_empty()
            || self
                .vae_channels
                .iter()
                .any(|c| *c == 0 || !c.is_multiple_of(16))
        {
            return bad(format!("vae_channels {:?}: each must be a positive multiple of 16 (GroupNorm with 16 groups)", self.vae_channels));
        }
        if self.unet_channels.is_empty()
            || self
                .unet_channels
                .iter()
                .any(|c| *c == 0 || !c.is_multiple_of(32))
        {
            return bad(format!("unet_channels {:?}: each must be a positive multiple of 32 (GroupNorm with 32 groups)", self.unet_channels));
        }
        let vae_factor = 1usize << (self.vae_channels.len() - 1);
        let unet_factor = 1usize << (self.unet_channels.len() - 1);
        if self.side == 0 || !(self.side as usize).is_multiple_of(vae_factor * unet_factor) {
            return bad(format!(
                "side {} must be a multiple of {} (VAE factor {vae_factor} x UNet factor {unet_factor})",
                self.side,
                vae_factor * unet_factor
            ));
        }
        if self.unet_steps == 0 && self.resume_from.is_none() {
            return bad(
                "unet_steps 0 needs resume_from (a new text encoder and UNet must train)".into(),
            );
        }
        if self.peers == 0 || !self.batch.is_multiple_of(self.peers) {
            return bad(format!(
                "peers {} must be at least 1 and divide batch {}",
                self.peers, self.batch
            ));
        }
        if self.batch == 0 || self.text_width == 0 || !self.text_width.is_multiple_of(4) {
            return bad(format!(
                "batch {} and text_width {} must be positive, text_width a multiple of 4 heads",
                self.batch, self.text_width
            ));
        }
        Ok(())
    }
}

fn json_config<C: JsonConfig>(value: &serde_json::Value, name: &str) -> Result<C> {
    C::from_json_str_at(&value.to_string(), Path::new(name)).map_err(Into::into)
}

/// The diffusers configs of a recipe: `(vae, unet, text_encoder)` as JSON objects with every key
/// diffusers / transformers read.
pub fn configs(
    recipe: &TeacherRecipe,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let levels = recipe.vae_channels.len();
    let vae = serde_json::json!({
        "_class_name": "AutoencoderKL", "act_fn": "silu",
        "block_out_channels": recipe.vae_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "force_upcast": true, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "latents_mean": null, "latents_std": null, "layers_per_block": 1,
        "mid_block_add_attention": true, "norm_num_groups": 16,
        "sample_size": recipe.side, "scaling_factor": 1.0, "shift_factor": null,
        "use_post_quant_conv": true, "use_quant_conv": true
    });
    let latent_side = recipe.side as usize >> (levels - 1);
    let n = recipe.unet_channels.len();
    let mut down = vec!["CrossAttnDownBlock2D"; n];
    down[n - 1] = "DownBlock2D";
    let mut up = vec!["CrossAttnUpBlock2D"; n];
    up[0] = "UpBlock2D";
    let unet = serde_json::json!({
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": recipe.unet_channels, "center_input_sample": false,
        "cross_attention_dim": recipe.text_width, "down_block_types": down, "downsample_padding": 1,
        "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": recipe.unet_layers,
        "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "out_channels": 4,
        "sample_size": latent_side, "up_block_types": up, "use_linear_projection": false,
        "time_cond_proj_dim": null, "transformer_layers_per_block": 1
    });
    let text = serde_json::json!({
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": recipe.text_width,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": recipe.text_width * 4,
        "layer_norm_eps": 1e-5, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 4, "num_hidden_layers": recipe.text_layers, "pad_token_id": 1,
        "projection_dim": recipe.text_width, "vocab_size": 49408
    });
    (vae, unet, text)
}

fn settings(
    steps: u64,
    batch: usize,
    lr: f64,
    seed: u64,
    grid: usize,
    dropout: f64,
) -> LoopSettings {
    LoopSettings {
        steps,
        seed,
        batch_size: batch,
        accumulation: 1,
        lr: LrSchedule {
            lr,
            warmup_steps: steps / 50,
            decay: LrDecay::Cosine,
        },
        adamw: AdamWSettings {
            weight_decay: 0.0,
            ..Default::default()
        },
        max_grad_norm: Some(1.0),
        target: TargetNetwork::StopGrad,
        draws: DrawSpec {
            grid_points: grid,
            guidance: GuidanceDraw::Fixed(1.0),
            condition_dropout: dropout,
        },
    }
}

/// The mean loss of the last 100 steps of each phase (0 for a phase that did not run).
#[derive(Debug, Clone, Copy, Default)]
pub struct FinalLosses {
    /// VAE (MSE + KL).
    pub vae: f64,
    /// Decoder (reconstruction MSE, encoder frozen).
    pub decoder: f64,
    /// Text encoder + UNet (epsilon MSE).
    pub unet: f64,
}

/// A trained teacher: its modules (inner backend) and configs.
pub struct TrainedTeacher<B: Backend> {
    /// The VAE (scaling factor set to 1 / std of the latents).
    pub vae: AutoencoderKL<B>,
    /// The text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// The UNet.
    pub unet: UNet2DConditionModel<B>,
    /// Configs as JSON (vae, unet, text encoder).
    pub configs: (serde_json::Value, serde_json::Value, serde_json::Value),
    /// Final losses (mean of the last 100 steps of each phase; 0 for a phase that did not run).
    pub final_losses: FinalLosses,
}

/// Reads `dir/name` as JSON.
fn read_json(dir: &Path, name: &str) -> Result<serde_json::Value> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| cm_io::IoError::read(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

/// Seed streams of the three modules' initial values (xor-ed into the recipe's seed).
const VAE_STREAM: u64 = 0x5AE0;
const TEXT_ENCODER_STREAM: u64 = 0x7E47;
const UNET_STREAM: u64 = 0x0E70;

/// Trains a teacher with `recipe`; `progress` gets `(phase, step, total, loss)` after each step and
/// `snapshot` the teacher as it stands every `recipe.snapshot_every` UNet steps (so a long run that
/// is interrupted still leaves a usable pipeline behind). With `recipe.resume_from` the VAE,
/// text encoder and UNet (and their configs) come from that pipeline folder, phase 1 is skipped
/// and phase 3 continues for `unet_steps` more steps.
pub fn train_teacher<A: AutodiffBackend>(
    recipe: &TeacherRecipe,
    device: &A::Device,
    progress: &mut (dyn FnMut(&str, u64, u64, f64) + Send),
    snapshot: &mut (dyn FnMut(&TrainedTeacher<A::InnerBackend>) -> Result<()> + Send),
) -> Result<TrainedTeacher<A::InnerBackend>> {
    if recipe.resume_from.is_none() {
        recipe.check()?;
    }
    let tail = |v: &[f64]| v.iter().rev().take(100).sum::<f64>() / v.len().clamp(1, 100) as f64;
    let images = ShapeImages::render(recipe.side);
    A::seed(device, recipe.seed);
    let mut vae_losses = Vec::new();
    let (mut vae, student, vae_json, unet_json, text_json) = match &recipe.resume_from {
        Some(dir) => {
            // 1'. A pipeline written by this recipe: every module and config from the folder.
            let load = |e: cm_models::ModelError| {
                TrainError::Invalid(format!("resuming from {}: {e}", dir.display()))
            };
            let (vae, _, _) = AutoencoderKL::<A::InnerBackend>::from_folder(
                dir.join("vae"),
                WeightVariant::Auto,
                DType::F32,
                device,
            )
            .map_err(load)?;
            let (text_encoder, _, _) = ClipTextModel::<A>::from_folder(
                dir.join("text_encoder"),
                WeightVariant::Auto,
                DType::F32,
                device,
            )
            .map_err(load)?;
            let (unet, _, _) = UNet2DConditionModel::<A>::from_folder(
                dir.join("unet"),
                WeightVariant::Auto,
                DType::F32,
                device,
            )
            .map_err(load)?;
            let mut text_json = read_json(dir, "text_encoder/config.json")?;
            if let Some(map) = text_json.as_object_mut() {
                map.remove("torch_dtype");
            }
            (
                vae,
                TextUNet { text_encoder, unet },
                read_json(dir, "vae/config.json")?,
                read_json(dir, "unet/config.json")?,
                text_json,
            )
        }
        None => {
            let (vae_json, unet_json, text_json) = configs(recipe);
            let vae_config: VaeConfig = json_config(&vae_json, "vae/config.json")?;
            let unet_config: UNetConfig = json_config(&unet_json, "unet/config.json")?;
            let text_config: ClipTextConfig = json_config(&text_json, "text_encoder/config.json")?;
            // Initial values drawn on the host from the recipe's seed (one stream per module).
            let student = || -> Result<TextUNet<A>> {
                Ok(TextUNet {
                    text_encoder: initialize_on_host(
                        text_config.init::<A>(device),
                        recipe.seed ^ TEXT_ENCODER_STREAM,
                    )?,
                    unet: initialize_on_host(
                        unet_config.init::<A>(device),
                        recipe.seed ^ UNET_STREAM,
                    )?,
                })
            };
            if let Some(dir) = &recipe.vae_from {
                // 1''. A trained VAE from another pipeline folder; the UNet's sample_size follows it.
                let (vae, config, _) = AutoencoderKL::<A::InnerBackend>::from_folder(
                    dir.join("vae"),
                    WeightVariant::Auto,
                    DType::F32,
                    device,
                )
                .map_err(|e| TrainError::Invalid(format!("--vae-from {}: {e}", dir.display())))?;
                let unet_factor = 1usize << (recipe.unet_channels.len() - 1);
                let latent_side = recipe.side as usize / config.downsampling_factor();
                if !(recipe.side as usize).is_multiple_of(config.downsampling_factor())
                    || !latent_side.is_multiple_of(unet_factor)
                {
                    return Err(TrainError::Invalid(format!(
                        "--vae-from {}: its VAE makes {latent_side} x {latent_side} latents of {} px \
                         images, which the UNet's {} halvings cannot divide",
                        dir.display(),
                        recipe.side,
                        recipe.unet_channels.len() - 1
                    )));
                }
                let mut vae_json = read_json(dir, "vae/config.json")?;
                if let Some(map) = vae_json.as_object_mut() {
                    map.remove("torch_dtype");
                }
                let mut unet_json = unet_json;
                unet_json["sample_size"] = serde_json::json!(latent_side);
                (vae, student()?, vae_json, unet_json, text_json)
            } else {
                // 1. The VAE (initial values drawn on the host from the recipe's seed).
                let vae =
                    initialize_on_host(vae_config.init::<A>(device), recipe.seed ^ VAE_STREAM)?;
                let vae = train_on_peers::<A, AutoencoderKL<A>, _, _, TextUNet<A::InnerBackend>, 2>(
                    recipe.peers,
                    recipe.batch,
                    device,
                    vae,
                    &|vae, batch| {
                        Trainer::new(
                            vae,
                            settings(recipe.vae_steps, batch, recipe.lr.0, recipe.seed, 1000, 0.0),
                            VaeObjective { kl_weight: 1e-4 },
                        )
                    },
                    &|| ImageSource {
                        images: &images,
                        seed: recipe.seed,
                    },
                    &mut |_, r| {
                        progress("vae", r.step + 1, recipe.vae_steps, r.loss);
                        vae_losses.push(r.loss);
                        Ok(())
                    },
                )?;
                (vae, student()?, vae_json, unet_json, text_json)
            }
        }
    };

    // 1b. The posterior of every image under the (from now on frozen) encoder: the decoder phase
    //     draws from it, and its means give the latents of phase 3.
    let n = images.labels.len();
    let side = images.side;
    let all = Tensor::<A::InnerBackend, 4>::from_data(
        TensorData::new(images.pixels.clone(), [n, 3, side, side]),
        device,
    );
    let posterior = vae.encode(all)?;
    let [_, c, h, w] = posterior.mean.dims();
    let host = |t: Tensor<A::InnerBackend, 4>| -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().expect("f32")
    };
    let (means, stds) = (host(posterior.mean.clone()), host(posterior.std()));

    // 1c. More decoder training (encoder frozen: the latents do not change), the decoder alone.
    let mut decoder_losses = Vec::new();
    if recipe.decoder_steps > 0 {
        vae = train_on_peers::<A, AutoencoderKL<A>, _, _, TextUNet<A::InnerBackend>, 2>(
            recipe.peers,
            recipe.batch,
            device,
            decoder_trainable(AutoencoderKL::<A>::from_inner(vae)),
            &|vae, batch| {
                Trainer::new(
                    vae,
                    settings(
                        recipe.decoder_steps,
                        batch,
                        recipe.lr.0 * 0.5,
                        recipe.seed ^ 0xDEC0,
                        1000,
                        0.0,
                    ),
                    DecoderObjective { latent: [c, h, w] },
                )
            },
            &|| PosteriorSource {
                images: &images,
                means: &means,
                stds: &stds,
                seed: recipe.seed ^ 0xDEC0,
            },
            &mut |_, r| {
                progress("decoder", r.step + 1, recipe.decoder_steps, r.loss);
                decoder_losses.push(r.loss);
                Ok(())
            },
        )?;
    }

    // 2. Latents of the 360 images and (for a new VAE) the scaling factor that gives them unit
    //    variance.
    let mut vae_json = vae_json;
    if recipe.resume_from.is_none() && recipe.vae_from.is_none() {
        let var = means.iter().map(|m| (*m as f64).powi(2)).sum::<f64>() / means.len() as f64;
        vae.scaling_factor = 1.0 / var.sqrt().max(1e-6);
        vae_json["scaling_factor"] = serde_json::json!(vae.scaling_factor);
    }
    let scaling = vae.scaling_factor as f32;
    let tokenizer = ClipTokenizer::sd15()?;
    let ids: Vec<f32> = images
        .labels
        .iter()
        .flat_map(|l| {
            tokenizer
                .encode(&l.caption())
                .expect("grammar captions encode")
        })
        .map(|id| id as f32)
        .collect();
    let empty: Vec<f32> = tokenizer
        .encode("")?
        .into_iter()
        .map(|id| id as f32)
        .collect();
    let latents = ShapeLatents {
        means: means.iter().map(|m| m * scaling).collect(),
        stds: stds.iter().map(|s| s * scaling).collect(),
        shape: [c, h, w],
        ids,
        empty,
    };

    // 3. Text encoder + UNet with the denoising objective (10% condition dropout); none with
    //    unet_steps 0 (a resumed pipeline whose decoder alone was sharpened).
    let configs = (vae_json, unet_json, text_json);
    let teacher = |model: TextUNet<A::InnerBackend>, unet_losses: &[f64]| TrainedTeacher {
        vae: vae.clone(),
        text_encoder: model.text_encoder,
        unet: model.unet,
        configs: configs.clone(),
        final_losses: FinalLosses {
            vae: tail(&vae_losses),
            decoder: tail(&decoder_losses),
            unet: tail(unet_losses),
        },
    };
    if recipe.unet_steps == 0 {
        return Ok(teacher(student.valid(), &[]));
    }
    let schedule = NoiseSchedule::new(&SchedulerConfig::sd15());
    let data_seed = recipe.seed
        ^ 0xC0DE
        ^ if recipe.resume_from.is_some() {
            0x5EC0_0D00
        } else {
            0
        };
    let mut unet_losses = Vec::new();
    let trained = train_on_peers::<A, TextUNet<A>, _, _, TextUNet<A::InnerBackend>, 2>(
        recipe.peers,
        recipe.batch,
        device,
        student,
        &|model, batch| {
            Trainer::new(
                model,
                settings(
                    recipe.unet_steps,
                    batch,
                    recipe.lr.1,
                    recipe.seed,
                    1000,
                    0.1,
                ),
                DiffusionStep {
                    schedule: schedule.clone(),
                    loss: Loss::L2,
                },
            )
        },
        &|| LatentShapesSource {
            latents: &latents,
            seed: data_seed,
        },
        &mut |trainer, r| {
            progress("unet", r.step + 1, recipe.unet_steps, r.loss);
            unet_losses.push(r.loss);
            let done = r.step + 1;
            if recipe.snapshot_every > 0
                && done.is_multiple_of(recipe.snapshot_every)
                && done < recipe.unet_steps
            {
                snapshot(&teacher(trainer.student.valid(), &unet_losses))?;
            }
            Ok(())
        },
    )?;
    Ok(teacher(trained, &unet_losses))
}

/// Writes a trained teacher as a diffusers pipeline folder (weights in `dtype`: f16 or f32).
pub fn save_pipeline<B: Backend>(
    teacher: &TrainedTeacher<B>,
    dir: &Path,
    dtype: DType,
    tokenizer_dir: &Path,
) -> Result<()> {
    let convert =
        |tensors: BTreeMap<String, TensorData>, prefix: &str| -> BTreeMap<String, TensorData> {
            tensors
                .into_iter()
                .map(|(k, v)| {
                    (
                        format!("{prefix}{k}"),
                        if v.dtype.is_float() {
                            v.convert_dtype(dtype)
                        } else {
                            v
                        },
                    )
                })
                .collect()
        };
    let suffix = if dtype == DType::F16 { ".fp16" } else { "" };
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    let model_index = serde_json::json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null], "image_encoder": [null, null],
        "requires_safety_checker": false, "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    });
    let mut scheduler = serde_json::to_value(SchedulerConfig::sd15()).expect("json");
    scheduler["_class_name"] = serde_json::json!("DDIMScheduler");
    scheduler["clip_sample"] = serde_json::json!(false);
    // LCM-only keys: DDIMScheduler does not take them.
    if let Some(map) = scheduler.as_object_mut() {
        map.remove("original_inference_steps");
        map.remove("timestep_scaling");
    }
    let unet = convert(cm_models::weights::export_tensors(&teacher.unet)?, "");
    let vae = convert(cm_models::weights::export_tensors(&teacher.vae)?, "");
    let text = convert(
        cm_models::weights::export_tensors(&teacher.text_encoder)?,
        "text_model.",
    );
    let mut text_config = teacher.configs.2.clone();
    text_config["torch_dtype"] = serde_json::json!("float32");
    cm_io::write_dir_atomically(dir, |tmp| {
        std::fs::create_dir_all(tmp.join("unet")).map_err(|e| cm_io::IoError::write(tmp, e))?;
        for sub in ["vae", "text_encoder", "tokenizer", "scheduler"] {
            std::fs::create_dir_all(tmp.join(sub)).map_err(|e| cm_io::IoError::write(tmp, e))?;
        }
        cm_io::write_atomically(&tmp.join("model_index.json"), &json(&model_index))?;
        cm_io::write_atomically(
            &tmp.join("scheduler/scheduler_config.json"),
            &json(&scheduler),
        )?;
        cm_io::write_atomically(&tmp.join("unet/config.json"), &json(&teacher.configs.1))?;
        cm_io::write_atomically(&tmp.join("vae/config.json"), &json(&teacher.configs.0))?;
        cm_io::write_atomically(&tmp.join("text_encoder/config.json"), &json(&text_config))?;
        cm_io::write_tensors(
            tmp.join(format!("unet/diffusion_pytorch_model{suffix}.safetensors")),
            &unet,
            &Default::default(),
        )?;
        cm_io::write_tensors(
            tmp.join(format!("vae/diffusion_pytorch_model{suffix}.safetensors")),
            &vae,
            &Default::default(),
        )?;
        cm_io::write_tensors(
            tmp.join(format!("text_encoder/model{suffix}.safetensors")),
            &text,
            &Default::default(),
        )?;
        for file in [
            "vocab.json",
            "merges.txt",
            "special_tokens_map.json",
            "tokenizer_config.json",
        ] {
            let from = tokenizer_dir.join(file);
            let bytes = std::fs::read(&from).map_err(|e| cm_io::IoError::read(&from, e))?;
            cm_io::write_atomically(&tmp.join("tokenizer").join(file), &bytes)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The default place of the demo teacher in the repository.
pub fn demo_teacher_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
        .join("assets/demo-teacher")
}

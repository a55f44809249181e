//! A Stable Diffusion pipeline folder as diffusers writes it, loaded into Burn modules.
//!
//! Layout (diffusers `DiffusionPipeline.save_pretrained`): `model_index.json` naming each component's
//! library and class, and one folder per component: `unet/`, `vae/` (`config.json` +
//! `diffusion_pytorch_model[.fp16].safetensors`), `text_encoder/` (`config.json` +
//! `model[.fp16].safetensors`), `tokenizer/` (`tokenizer.json`, or `vocab.json` + `merges.txt`),
//! `scheduler/scheduler_config.json` (any scheduler class: its config is handed to
//! `cm-schedulers`, which this crate does not depend on). Components a text-to-image pipeline does
//! not need (`safety_checker`, `feature_extractor`, `image_encoder`) are listed in
//! [`StableDiffusion::skipped_components`], never silently dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use crate::component::Component;
pub use crate::component::WeightVariant;
use crate::error::{ModelError, Result};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::weights::LoadReport;

/// Pipeline classes whose folders hold an SD1.x text-to-image model (`model_index.json`'s
/// `_class_name`); other pipelines (SDXL, inpainting, img2img variants with other components) are
/// refused by name.
pub const SUPPORTED_PIPELINES: [&str; 4] = [
    "StableDiffusionPipeline",
    "LatentConsistencyModelPipeline",
    "StableDiffusionImg2ImgPipeline",
    "DiffusionPipeline",
];

/// How to load a pipeline folder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineLoadOptions {
    /// Weight file variant.
    pub variant: WeightVariant,
    /// Dtype of the UNet parameters.
    pub unet_dtype: DType,
    /// Dtype of the VAE and text encoder parameters (frozen parts may be f16 / bf16).
    pub frozen_dtype: DType,
}

impl Default for PipelineLoadOptions {
    fn default() -> Self {
        Self {
            variant: WeightVariant::Auto,
            unet_dtype: DType::F32,
            frozen_dtype: DType::F32,
        }
    }
}

/// The components of a Stable Diffusion pipeline folder. A clone shares the weights' storage on
/// backends whose tensors are reference-counted (Burn-flex's are).
#[derive(Debug, Clone)]
pub struct StableDiffusion<B: Backend> {
    /// The folder.
    pub root: PathBuf,
    /// Tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// Text encoder config.
    pub text_encoder_config: ClipTextConfig,
    /// Denoiser.
    pub unet: UNet2DConditionModel<B>,
    /// Denoiser config.
    pub unet_config: UNetConfig,
    /// Autoencoder.
    pub vae: AutoencoderKL<B>,
    /// Autoencoder config.
    pub vae_config: VaeConfig,
    /// `scheduler/scheduler_config.json` as JSON (its `_class_name` says which scheduler).
    pub scheduler_config: serde_json::Value,
    /// One load report per weight file.
    pub reports: Vec<LoadReport>,
    /// Components of `model_index.json` that were not loaded, with their classes.
    pub skipped_components: Vec<(String, String)>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parses `model_index.json` into component name -> (library, class); null entries are skipped.
fn read_model_index(path: &Path) -> Result<BTreeMap<String, (String, String)>> {
    let value = read_json(path)?;
    let object = value.as_object().ok_or_else(|| ModelError::ConfigParse {
        path: path.to_path_buf(),
        message: "expected a JSON object".into(),
    })?;
    let mut components = BTreeMap::new();
    for (name, entry) in object {
        if name.starts_with('_') {
            continue;
        }
        if let Some([library, class]) = entry.as_array().map(|a| a.as_slice()) {
            if let (Some(library), Some(class)) = (library.as_str(), class.as_str()) {
                components.insert(name.clone(), (library.to_string(), class.to_string()));
            }
        }
    }
    Ok(components)
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads a diffusers Stable Diffusion folder.
    pub fn load(
        root: impl AsRef<Path>,
        options: PipelineLoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        // 1. model_index.json: the pipeline class and the component classes we are about to build.
        let index_path = root.join("model_index.json");
        let class = read_json(&index_path)?
            .get("_class_name")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        if let Some(class) = class.filter(|c| !SUPPORTED_PIPELINES.contains(&c.as_str())) {
            return Err(ModelError::UnsupportedConfig {
                path: index_path,
                key: "_class_name".into(),
                found: class,
                expected: SUPPORTED_PIPELINES.join(", "),
            });
        }
        let index = read_model_index(&root.join("model_index.json"))?;
        let expect = |name: &str, classes: &[&str]| -> Result<()> {
            match index.get(name) {
                Some((_, class)) if classes.contains(&class.as_str()) => Ok(()),
                Some((_, class)) => Err(ModelError::UnsupportedConfig {
                    path: root.join("model_index.json"),
                    key: name.to_string(),
                    found: class.clone(),
                    expected: classes.join(" or "),
                }),
                None => Err(ModelError::ConfigParse {
                    path: root.join("model_index.json"),
                    message: format!("no `{name}` component"),
                }),
            }
        };
        expect("unet", &["UNet2DConditionModel"])?;
        expect("vae", &["AutoencoderKL"])?;
        expect("text_encoder", &["CLIPTextModel"])?;
        expect("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        if !index.contains_key("scheduler") {
            expect("scheduler", &[])?;
        }
        let used = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
        let skipped_components = index
            .iter()
            .filter(|(name, _)| !used.contains(&name.as_str()))
            .map(|(name, (_, class))| (name.clone(), class.clone()))
            .collect();

        // 2. Configs (validated) and weights, component by component.
        let tokenizer = ClipTokenizer::from_folder(root.join("tokenizer"))?;
        let (text_encoder, text_encoder_config, te_report) = ClipTextModel::from_folder(
            root.join("text_encoder"),
            options.variant,
            options.frozen_dtype,
            device,
        )?;
        let unet_dir = root.join("unet");
        let (unet, unet_config, unet_report) = UNet2DConditionModel::from_folder(
            &unet_dir,
            options.variant,
            options.unet_dtype,
            device,
        )?;
        let (vae, vae_config, vae_report) = AutoencoderKL::from_folder(
            root.join("vae"),
            options.variant,
            options.frozen_dtype,
            device,
        )?;
        let scheduler_config = read_json(&root.join("scheduler/scheduler_config.json"))?;

        // 3. Cross-component consistency. Token ids are checked here, once, rather than read back
        //    from the device on every text-encoder call.
        if tokenizer.vocab_size() > text_encoder.vocab_size() {
            return Err(ModelError::UnsupportedConfig {
                path: root.join("tokenizer"),
                key: "vocabulary (vocab.json / tokenizer.json)".into(),
                found: format!("{} tokens", tokenizer.vocab_size()),
                expected: format!(
                    "at most the text encoder's vocab_size ({}, {})",
                    text_encoder.vocab_size(),
                    root.join("text_encoder/config.json").display()
                ),
            });
        }
        if unet_config.cross_attention_dim != text_encoder_config.hidden_size {
            return Err(ModelError::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "cross_attention_dim".into(),
                found: unet_config.cross_attention_dim.to_string(),
                expected: format!(
                    "the text encoder's hidden_size ({})",
                    text_encoder_config.hidden_size
                ),
            });
        }
        if unet_config.in_channels != vae_config.latent_channels {
            return Err(ModelError::UnsupportedConfig {
                path: unet_dir.join("config.json"),
                key: "in_channels".into(),
                found: unet_config.in_channels.to_string(),
                expected: format!("the VAE's latent_channels ({})", vae_config.latent_channels),
            });
        }
        Ok(Self {
            root,
            tokenizer,
            text_encoder,
            text_encoder_config,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            reports: vec![te_report, unet_report, vae_report],
            skipped_components,
        })
    }

    /// `scheduler/scheduler_config.json` of the folder (for messages about the scheduler).
    pub fn scheduler_config_path(&self) -> PathBuf {
        self.root.join("scheduler/scheduler_config.json")
    }

    /// Text embeddings of prompts (`last_hidden_state`).
    ///
    /// # Shapes
    /// Returns `[prompts.len(), 77, hidden]`.
    pub fn encode_prompts(&self, prompts: &[&str], device: &B::Device) -> Result<Tensor<B, 3>> {
        let ids = self.tokenizer.encode_batch::<B>(prompts, device)?;
        let hidden = self.text_encoder.forward(ids)?.last_hidden_state;
        // A half-precision text encoder's embeddings come back in f32.
        Ok(crate::nn::cast(hidden, DType::F32))
    }

    /// Conditional and unconditional embeddings for classifier-free guidance, batched through the
    /// text encoder in one call: `(cond, uncond)`, each `[prompts.len(), 77, hidden]`. `negative`
    /// has one entry per prompt, or is empty for `""`.
    pub fn encode_prompts_with_negative(
        &self,
        prompts: &[&str],
        negative: &[&str],
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
        if !negative.is_empty() && negative.len() != prompts.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} negative prompts for {} prompts; give one per prompt or none",
                negative.len(),
                prompts.len()
            )));
        }
        let mut all: Vec<&str> = prompts.to_vec();
        all.extend((0..prompts.len()).map(|i| negative.get(i).copied().unwrap_or("")));
        let embeddings = self.encode_prompts(&all, device)?;
        let n = prompts.len();
        let [_, tokens, hidden] = embeddings.dims();
        let cond = embeddings.clone().slice([0..n, 0..tokens, 0..hidden]);
        let uncond = embeddings.slice([n..2 * n, 0..tokens, 0..hidden]);
        Ok((cond, uncond))
    }

    /// Decodes UNet-space (scaled) latents to images in [0, 1].
    ///
    /// # Shapes
    /// `[batch, 4, h, w]` -> `[batch, 3, h * f, w * f]`.
    pub fn decode_latents(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.vae.decode_to_unit_range(latents)
    }

    /// Spatial factor between images and latents (8 for SD1.5).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.downsampling_factor()
    }
}

//! The TOML run config of the three training methods, with the mission's SD1.5 defaults.
//!
//! A run's config is built in three layers: the method's preset ([`RunConfig::preset`]), then a
//! TOML file (only the keys it sets), then command-line overrides. The resolved config is saved
//! next to the outputs (`config.toml`). Unknown keys are refused with the file, the full key and
//! the closest known key (`unknown key train.lrr in cd.toml; did you mean train.lr?`); wrong types
//! name the key and the expected type. Every field is documented in `docs/training.md`, and the
//! committed `configs/{ct,cd,multiboundary}.toml` are checked to equal the presets.
//!
//! Guidance scales follow the usual CFG convention `eps = u + w (c - u)` (1 = no guidance);
//! diffusers' LCM scripts draw `w_diffusers = w - 1`.

use std::path::{Path, PathBuf};

use cm_losses::Loss;
use serde::{Deserialize, Serialize};

use crate::draws::GuidanceDraw;
use crate::error::{Result, TrainError};
use crate::lr::LrDecay;
use crate::step::ParameterisationKind;
use crate::trainer::{AdamWSettings, TargetNetwork};

/// The three training methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Consistency training: no teacher, the neighbour from the same data noise.
    Ct,
    /// Consistency distillation from a guided teacher, one segment.
    Cd,
    /// Multi-boundary consistency distillation: K segments, deterministic K-step sampling.
    Multiboundary,
}

impl Method {
    /// The name used in configs and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ct => "ct",
            Self::Cd => "cd",
            Self::Multiboundary => "multiboundary",
        }
    }
}

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// LoRA adapters on the UNet; the frozen base is also the teacher (adapters off).
    Lora,
    /// The whole UNet; the teacher is a separate frozen copy.
    Unet,
}

/// Dtype of frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenDtype {
    /// fp32.
    F32,
    /// fp16.
    F16,
    /// bf16.
    Bf16,
}

impl FrozenDtype {
    /// The Burn dtype.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::F16 => burn::tensor::DType::F16,
            Self::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The teacher: a diffusers Stable Diffusion folder (`None`: the built-in default).
    pub teacher: Option<PathBuf>,
    /// `lora` or `unet`.
    pub trainable: Trainable,
    /// LoRA rank.
    pub lora_rank: usize,
    /// LoRA alpha (scale alpha / rank).
    pub lora_alpha: f64,
    /// Module names LoRA wraps (peft's rule: a layer whose path ends with one of them).
    pub lora_targets: Vec<String>,
    /// Dtype of the frozen UNet base / teacher, VAE and text encoder (LoRA factors stay f32).
    pub frozen_dtype: FrozenDtype,
    /// `time_cond_proj_dim` of the student (0: none; LCM uses 256): the guidance scale becomes an
    /// input (freshly initialised `cond_proj`) instead of being baked in.
    pub guidance_embedding_dim: usize,
    /// Recompute activations in the backward pass (`Autodiff<B, BalancedCheckpointing>`).
    pub gradient_checkpointing: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            teacher: None,
            trainable: Trainable::Lora,
            lora_rank: 64,
            lora_alpha: 64.0,
            lora_targets: cm_lora::LCM_LORA_TARGETS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            frozen_dtype: FrozenDtype::F32,
            guidance_embedding_dim: 0,
            gradient_checkpointing: false,
        }
    }
}

/// How latents are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentMode {
    /// Encode once into cm-data's latent / text-embedding cache, then train from it.
    Cache,
    /// Encode every batch with the frozen VAE and text encoder.
    OnTheFly,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A folder of images with same-stem `.txt` captions.
    pub dir: Option<PathBuf>,
    /// A COCO `captions_*.json` (with `images`).
    pub coco: Option<PathBuf>,
    /// The course's CSV subset `index,file_name,caption` (with `images`).
    pub csv: Option<PathBuf>,
    /// Image folder of `coco` / `csv`.
    pub images: Option<PathBuf>,
    /// Training resolution in pixels (`None`: the teacher's native `sample_size * vae factor`).
    pub resolution: Option<u32>,
    /// Use at most this many items.
    pub max_items: Option<usize>,
    /// Images in the built-in synthetic shapes set when no source is given.
    pub synthetic_items: usize,
    /// Unreadable images: skip and count (true) or stop with the file named (false).
    pub skip_bad: bool,
    /// `cache` or `on_the_fly`.
    pub latents: LatentMode,
    /// Where the latent cache lives (`None`: `<out>/cache`).
    pub cache_dir: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: None,
            coco: None,
            csv: None,
            images: None,
            resolution: None,
            max_items: None,
            synthetic_items: 512,
            skip_bad: true,
            latents: LatentMode::Cache,
            cache_dir: None,
        }
    }
}

/// `[consistency]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// `ddim_to_boundary` or `lcm`.
    pub parameterisation: ParameterisationKind,
    /// `timestep_scaling` of the LCM parameterisation.
    pub timestep_scaling: f32,
    /// Segments K (evenly spaced on the solver grid; 1 = plain CD / CT).
    pub segments: usize,
    /// Explicit boundaries (start at 0, increasing), overriding `segments`.
    pub boundaries: Option<Vec<usize>>,
    /// Grid points of the DDIM solver (50: pairs `(t, t - 20)`).
    pub solver_steps: usize,
    /// `diffusers` (s = 0 keeps alpha_bar_0) or `seed` (s = 0 is clean data).
    pub solver_variant: SolverVariantName,
    /// The loss: `{ kind = "l2" }`, `{ kind = "pseudo_huber", c = 0.001 }` or
    /// `{ kind = "pseudo_huber_per_sample", c = ... }`.
    pub loss: Loss,
    /// `{ kind = "stop_grad" }` or `{ kind = "ema", decay = 0.95 }`.
    pub target: TargetNetwork,
    /// The teacher's guidance: a number (fixed `w`) or `{ min = 5.0, max = 15.0 }`.
    pub guidance: GuidanceDraw,
    /// Probability of training an example unconditionally.
    pub condition_dropout: f64,
}

/// The solver variants, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverVariantName {
    /// diffusers' `DDIMSolver`.
    Diffusers,
    /// The course notebook.
    Seed,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            parameterisation: ParameterisationKind::DdimToBoundary,
            timestep_scaling: 10.0,
            segments: 1,
            boundaries: None,
            solver_steps: 10,
            solver_variant: SolverVariantName::Seed,
            loss: Loss::PseudoHuber { c: 0.001 },
            target: TargetNetwork::StopGrad,
            // Distilled guidance for the guided methods (CD and multi-boundary; CT sets 1). On the
            // demo teacher, seeds 0 / 1, 4 steps: CD w = 2 84.0 / 87.5% fully right (Fréchet
            // 0.0030 / 0.0033) against w = 3 84.0 / 73.0% (0.0062 / 0.0060); multi-boundary K = 4
            // w = 2 80.0 / 83.5%, w = 3 79.5 / 78.0%, w = 4.5 70.5 / 70.5%. SD1.5 wants ~7.5.
            guidance: GuidanceDraw::Fixed(2.0),
            condition_dropout: 0.0,
        }
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients averaged).
    pub gradient_accumulation: u64,
    /// Data-parallel peers (one per GPU; on the CPU, threads sharing the cores); each trains
    /// `batch_size` examples per micro-batch, gradients averaged (burn-collective).
    pub devices: usize,
    /// Peers (threads) sharing each device, each training `batch_size / peers_per_device` of the
    /// device's examples, gradients averaged like devices': the update is one peer's on the whole
    /// batch (up to float summation order). On the CPU two peers keep both cores busy (Burn-flex
    /// runs most of a step on one core: the demo CD step trains 1.45x faster). Each peer holds
    /// its own student and optimizer state; the frozen teacher is shared.
    pub peers_per_device: PeersPerDevice,
    /// Seed of every random draw.
    pub seed: u64,
    /// Peak learning rate (AdamW; 1e-4 for LoRA, 1e-6 for the whole UNet).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// `constant`, `linear` or `cosine` after warm-up.
    pub lr_decay: LrDecay,
    /// AdamW (PyTorch defaults).
    pub adamw: AdamWSettings,
    /// Global-norm gradient clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 450,
            batch_size: 16,
            gradient_accumulation: 1,
            devices: 1,
            peers_per_device: PeersPerDevice::AUTO,
            seed: 0,
            lr: 1e-3,
            warmup_steps: 20,
            lr_decay: LrDecay::Cosine,
            adamw: AdamWSettings::default(),
            max_grad_norm: Some(1.0),
        }
    }
}

/// `train.peers_per_device`: a count, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeersPerDevice {
    /// Exactly this many peers per device (it must divide `batch_size`).
    Count(usize),
    /// Chosen by whoever runs the config: the example binaries take one peer per CPU core (at
    /// most 2, the measured case) on the CPU and 1 on a GPU ([`PeersPerDevice::auto_for`]); the
    /// library's [`crate::run::run_on_devices`], which does not know the hardware, takes 1.
    Auto(AutoKeyword),
}

/// The word `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoKeyword {
    /// `"auto"`.
    Auto,
}

impl PeersPerDevice {
    /// `"auto"`.
    pub const AUTO: Self = Self::Auto(AutoKeyword::Auto);

    /// The count (`"auto"` counts as 1).
    pub fn count(self) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Auto(_) => 1,
        }
    }

    /// What `"auto"` means on a machine with `cores` cores whose backend runs a step on about
    /// one core (the CPU): the largest divisor of `batch_size` that is at most `min(cores, 2)`.
    /// A count is kept as it is.
    pub fn auto_for(self, cores: usize, batch_size: usize) -> Self {
        match self {
            Self::Count(_) => self,
            Self::Auto(_) => {
                let most = cores.clamp(1, 2);
                Self::Count(
                    (1..=most)
                        .rev()
                        .find(|n| batch_size.is_multiple_of(*n))
                        .unwrap_or(1),
                )
            }
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Output folder.
    pub dir: PathBuf,
    /// Print a progress line every this many steps.
    pub log_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Validation grid every this many steps (0: only at the end).
    pub validate_every: u64,
    /// Prompts of the validation grid.
    pub validation_prompts: Vec<String>,
    /// Seed of the validation noise.
    pub validation_seed: u64,
    /// Dtype of the exported LoRA file (`f16` or `f32`).
    pub lora_dtype: FrozenDtype,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("out"),
            log_every: 10,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            validate_every: 0,
            validation_prompts: vec![
                "a large red circle in the center".into(),
                "a small blue square at the top left".into(),
                "a large green triangle at the bottom right".into(),
                "a small yellow circle at the top right".into(),
            ],
            validation_seed: 1234,
            lora_dtype: FrozenDtype::F32,
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `ct`, `cd` or `multiboundary`.
    #[serde(default = "default_method")]
    pub method: Method,
    /// `[model]`.
    #[serde(default)]
    pub model: ModelConfig,
    /// `[data]`.
    #[serde(default)]
    pub data: DataConfig,
    /// `[consistency]`.
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    /// `[train]`.
    #[serde(default)]
    pub train: TrainConfig,
    /// `[output]`.
    #[serde(default)]
    pub output: OutputConfig,
}

fn default_method() -> Method {
    Method::Cd
}

impl RunConfig {
    /// The defaults of `method` (the mission's SD1.5 recipe): CD distils a w = 7.5 teacher with
    /// LoRA rank 64 / alpha 64 on the 14 LCM targets, AdamW 1e-4, pseudo-Huber c = 0.001;
    /// multi-boundary uses K = 4 segments; CT has no teacher (w = 1); CD and multi-boundary train
    /// against an EMA target (decay 0.95).
    pub fn preset(method: Method) -> Self {
        let mut config = Self {
            method,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            consistency: ConsistencyConfig::default(),
            train: TrainConfig::default(),
            output: OutputConfig::default(),
        };
        config.output.dir = PathBuf::from("out").join(method.name());
        match method {
            // LCM's target network: an EMA (0.95) of the student. On the previous demo teacher at
            // 4 steps it drew CD 41.5% fully right against 37.0% with the stop-grad target,
            // multi-boundary 41.5% against 34.0% (same runs otherwise; docs/benchmarks.md). CT
            // keeps stop-grad. The 4-step samplers visit 999, 759, 499, 259: points of the 50-step
            // grid, not of the 10-step one (CD on the current demo teacher: 74.0% fully right at 4
            // steps on the 50-step grid against 61.5% on the 10-step one; CT did better on the
            // 10-step grid, 64.0% against 59.5%, and keeps it).
            Method::Cd => {
                config.consistency.solver_steps = 50;
                config.consistency.target = TargetNetwork::Ema { decay: 0.95 };
            }
            Method::Multiboundary => {
                config.consistency.segments = 4;
                config.consistency.solver_steps = 50;
                config.consistency.target = TargetNetwork::Ema { decay: 0.95 };
            }
            Method::Ct => config.consistency.guidance = GuidanceDraw::Fixed(1.0),
        }
        config
    }

    /// Reads a TOML file over the preset of its `method` (or of `default_method` when the file
    /// names none). Unknown keys are refused with a "did you mean".
    pub fn from_toml_file(path: &Path, default_method: Method) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(&text, path, default_method)
    }

    /// [`Self::from_toml_file`] on a string (`origin` names it in messages).
    pub fn from_toml_str(text: &str, origin: &Path, default_method: Method) -> Result<Self> {
        let config_error = |message: String| TrainError::Config {
            path: origin.to_path_buf(),
            message,
        };
        let file: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| config_error(format!("not valid TOML: {e}")))?;
        let method = match file.get("method") {
            None => default_method,
            Some(v) => Method::deserialize(v.clone()).map_err(|_| {
                config_error(format!(
                    "`method` is {v}; expected \"ct\", \"cd\" or \"multiboundary\""
                ))
            })?,
        };
        let preset = Self::preset(method);
        let known = toml::Value::try_from(&preset).expect("a preset serialises");
        check_keys(&toml::Value::Table(file.clone()), &known, "").map_err(config_error)?;
        // Types are checked on the file's own text, so a message shows its line and key.
        if let Err(e) = toml::from_str::<Self>(text) {
            return Err(config_error(e.to_string().trim().to_string()));
        }
        let mut merged = known;
        merge(&mut merged, toml::Value::Table(file));
        let config: Self = merged
            .try_into()
            .map_err(|e: toml::de::Error| config_error(e.message().to_string()))?;
        config.validate().map_err(|e| config_error(e.to_string()))?;
        Ok(config)
    }

    /// The resolved config as commented-free TOML (what `config.toml` in the outputs holds).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serialises")
    }

    /// Checks values that serde's types do not (ranges, combinations), naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |key: &str, message: String| Err(TrainError::Invalid(format!("`{key}`: {message}")));
        if self.train.steps == 0 {
            return bad("train.steps", "must be at least 1".into());
        }
        if self.train.batch_size == 0 {
            return bad("train.batch_size", "must be at least 1".into());
        }
        if self.train.gradient_accumulation == 0 {
            return bad("train.gradient_accumulation", "must be at least 1".into());
        }
        if !(1..=64).contains(&self.train.devices) {
            return bad(
                "train.devices",
                format!("{} must be in 1..=64", self.train.devices),
            );
        }
        if let PeersPerDevice::Count(n) = self.train.peers_per_device {
            if !(1..=64).contains(&n) || !self.train.batch_size.is_multiple_of(n) {
                return bad(
                    "train.peers_per_device",
                    format!(
                        "{n} must be in 1..=64 and divide train.batch_size ({}), or be \"auto\"",
                        self.train.batch_size
                    ),
                );
            }
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0 && self.train.lr < 1.0) {
            return bad(
                "train.lr",
                format!("{} is not a learning rate in (0, 1)", self.train.lr),
            );
        }
        if self.model.lora_rank == 0 {
            return bad("model.lora_rank", "must be at least 1".into());
        }
        if !self.model.lora_alpha.is_finite() || self.model.lora_alpha <= 0.0 {
            return bad(
                "model.lora_alpha",
                format!("{} must be a finite number > 0", self.model.lora_alpha),
            );
        }
        if self.model.lora_targets.is_empty() {
            return bad("model.lora_targets", "is empty".into());
        }
        if self.consistency.segments == 0
            || self.consistency.segments > self.consistency.solver_steps
        {
            return bad(
                "consistency.segments",
                format!(
                    "must be in 1..={} (the solver grid)",
                    self.consistency.solver_steps
                ),
            );
        }
        if self.method != Method::Multiboundary
            && self.consistency.segments != 1
            && self.consistency.boundaries.is_none()
        {
            return bad(
                "consistency.segments",
                format!(
                    "is {} but method `{}` uses one segment; use method = \"multiboundary\"",
                    self.consistency.segments,
                    self.method.name()
                ),
            );
        }
        if self.consistency.parameterisation == ParameterisationKind::Lcm
            && self.consistency.segments != 1
        {
            return bad(
                "consistency.parameterisation",
                "`lcm` ignores boundaries: use one segment".into(),
            );
        }
        match self.consistency.guidance {
            GuidanceDraw::Fixed(w) if !(w.is_finite() && (0.0..=100.0).contains(&w)) => {
                return bad(
                    "consistency.guidance",
                    format!("{w} is not a guidance scale in [0, 100]"),
                )
            }
            GuidanceDraw::Uniform { min, max }
                if !(min.is_finite()
                    && max.is_finite()
                    && 0.0 <= min
                    && min <= max
                    && max <= 100.0) =>
            {
                return bad(
                    "consistency.guidance",
                    format!("{{ min = {min}, max = {max} }} is not a range in [0, 100]"),
                )
            }
            _ => {}
        }
        if self.method == Method::Ct && !self.consistency.guidance.is_unguided() {
            return bad(
                "consistency.guidance",
                "consistency training has no teacher: use 1.0".into(),
            );
        }
        if !(0.0..1.0).contains(&self.consistency.condition_dropout) {
            return bad(
                "consistency.condition_dropout",
                format!("{} must be in [0, 1)", self.consistency.condition_dropout),
            );
        }
        if let TargetNetwork::Ema { decay } = self.consistency.target {
            if !(0.0..1.0).contains(&decay) {
                return bad(
                    "consistency.target.decay",
                    format!("{decay} must be in [0, 1)"),
                );
            }
        }
        self.consistency
            .loss
            .validate()
            .or_else(|e| bad("consistency.loss", e.to_string()))?;
        let sources = [&self.data.dir, &self.data.coco, &self.data.csv]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources > 1 {
            return bad("data", "give one of `dir`, `coco` or `csv`".into());
        }
        if (self.data.coco.is_some() || self.data.csv.is_some()) && self.data.images.is_none() {
            return bad(
                "data.images",
                "the image folder of `coco` / `csv` is missing".into(),
            );
        }
        if let Some(r) = self.data.resolution {
            if !(8..=4096).contains(&r) {
                return bad("data.resolution", format!("{r} px is outside 8..=4096"));
            }
        }
        if self.output.keep_checkpoints == 0 {
            return bad("output.keep_checkpoints", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Refuses keys of `value` that `known` does not have, recursing into tables that are tables in
/// `known` (tagged enums such as `loss` are left to serde, which names their fields).
fn check_keys(
    value: &toml::Value,
    known: &toml::Value,
    prefix: &str,
) -> std::result::Result<(), String> {
    let (Some(table), Some(known_table)) = (value.as_table(), known.as_table()) else {
        return Ok(());
    };
    for (key, v) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known_table.get(key) {
            Some(k) => {
                let is_struct_table = k.as_table().is_some_and(|t| !t.contains_key("kind"));
                if is_struct_table {
                    check_keys(v, k, &full)?;
                }
            }
            None if optional_key(prefix, key) => {}
            None => {
                let closest = known_table
                    .keys()
                    .map(|k| (strsim::jaro_winkler(k, key), k))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .filter(|(score, _)| *score > 0.7)
                    .map(|(_, k)| {
                        let full = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        format!("; did you mean `{full}`?")
                    })
                    .unwrap_or_default();
                let keys: Vec<&String> = known_table.keys().collect();
                return Err(format!(
                    "unknown key `{full}`{closest} (keys here: {})",
                    keys.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Keys that are valid but absent from a serialised preset (`None` options are not written).
fn optional_key(prefix: &str, key: &str) -> bool {
    matches!(
        (prefix, key),
        ("model", "teacher")
            | (
                "data",
                "dir" | "coco" | "csv" | "images" | "resolution" | "max_items" | "cache_dir"
            )
            | ("consistency", "boundaries")
            | ("train", "max_grad_norm")
    )
}

/// Overlays `top` on `base` (tables merged key by key, anything else replaced).
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing)
                        if existing.is_table()
                            && v.is_table()
                            && !v.as_table().is_some_and(|t| t.contains_key("kind")) =>
                    {
                        merge(existing, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig> {
        RunConfig::from_toml_str(text, Path::new("run.toml"), Method::Cd)
    }

    #[test]
    fn peers_per_device_is_auto_or_a_divisor_of_the_batch() {
        assert_eq!(
            parse("").unwrap().train.peers_per_device,
            PeersPerDevice::AUTO
        );
        let c = parse("[train]\npeers_per_device = \"auto\"\n").unwrap();
        assert_eq!(c.train.peers_per_device, PeersPerDevice::AUTO);
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let c = parse("[train]\npeers_per_device = 4\n").unwrap();
        assert_eq!(c.train.peers_per_device, PeersPerDevice::Count(4));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        for bad in [
            "peers_per_device = 3",
            "peers_per_device = 0",
            "peers_per_device = \"many\"",
        ] {
            let err = parse(&format!("[train]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains("peers_per_device"), "{bad}: {err}");
        }
        // "auto": the largest divisor of the batch up to min(cores, 2).
        let auto = PeersPerDevice::AUTO;
        assert_eq!(auto.auto_for(2, 16), PeersPerDevice::Count(2));
        assert_eq!(auto.auto_for(16, 16), PeersPerDevice::Count(2));
        assert_eq!(auto.auto_for(1, 16), PeersPerDevice::Count(1));
        assert_eq!(auto.auto_for(8, 7), PeersPerDevice::Count(1));
        assert_eq!(auto.count(), 1);
        assert_eq!(
            PeersPerDevice::Count(4).auto_for(2, 16),
            PeersPerDevice::Count(4)
        );
    }

    #[test]
    fn a_file_overrides_only_what_it_sets() {
        let c = parse("method = \"multiboundary\"\n[train]\nlr = 2e-4\n[consistency]\nloss = { kind = \"l2\" }\n").unwrap();
        assert_eq!(c.method, Method::Multiboundary);
        assert_eq!(c.consistency.segments, 4, "the preset of the file's method");
        assert_eq!(c.train.lr, 2e-4);
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.consistency.loss, Loss::L2);
        let c = parse("[consistency]\nguidance = { min = 5.0, max = 15.0 }\ntarget = { kind = \"ema\", decay = 0.95 }\n").unwrap();
        assert_eq!(
            c.consistency.guidance,
            GuidanceDraw::Uniform {
                min: 5.0,
                max: 15.0
            }
        );
        assert_eq!(c.consistency.target, TargetNetwork::Ema { decay: 0.95 });
        // The resolved config round-trips.
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let err = parse("[train]\nlrr = 1e-4\n").unwrap_err().to_string();
        assert!(
            err.contains("train.lrr")
                && err.contains("did you mean `train.lr`")
                && err.contains("run.toml"),
            "{err}"
        );
        let err = parse("[trian]\nlr = 1e-4\n").unwrap_err().to_string();
        assert!(
            err.contains("`trian`") && err.contains("did you mean `train`"),
            "{err}"
        );
        let err = parse("[train]\nsteps = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("steps") || err.contains("integer"), "{err}");
        let err = parse("method = \"dc\"\n").unwrap_err().to_string();
        assert!(err.contains("method"), "{err}");
        let err = parse("[train\n").unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[train]\nlr = 1e30\n", "train.lr"),
            ("[train]\nlr = -1.0\n", "train.lr"),
            ("[model]\nlora_rank = 0\n", "model.lora_rank"),
            ("[consistency]\nsegments = 4\n", "consistency.segments"),
            (
                "method = \"ct\"\n[consistency]\nguidance = 7.5\n",
                "consistency.guidance",
            ),
            (
                "[consistency]\nloss = { kind = \"pseudo_huber\", c = 0.0 }\n",
                "consistency.loss",
            ),
            ("[data]\ncoco = \"c.json\"\n", "data.images"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

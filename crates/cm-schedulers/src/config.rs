//! The `scheduler_config.json` keys shared by diffusers' DDPM / DDIM / PNDM / LCM schedulers.
//!
//! One struct reads any of those classes (`_class_name` is kept). A key the file omits takes the
//! default of the scheduler class that will RUN it, exactly as diffusers'
//! `DDIMScheduler.from_config(pndm_config)` does: a PNDM config without `clip_sample` run as DDIM
//! clips x0 (DDIM's default), run as LCM it does not. [`SchedulerClass`] holds those defaults
//! (diffusers 0.42.1 `__init__` signatures). Values this crate does not implement (thresholding,
//! zero-SNR rescaling) and out-of-range values (betas outside (0, 1)) are rejected with the file
//! and key named.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SchedulerError};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise (SD1.5).
    Epsilon,
    /// `alpha_t * eps - sigma_t * x0`.
    VPrediction,
    /// The clean sample.
    Sample,
}

/// How inference timesteps are spread over the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `0, r, 2r, ...` (+ `steps_offset`), reversed.
    Leading,
    /// `T, T - r, ...` minus one.
    Trailing,
    /// `linspace(0, T - 1, n)` rounded, reversed.
    Linspace,
}

/// The scheduler classes whose defaults fill the keys a config omits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerClass {
    /// `DDIMScheduler` (also the class multi-boundary sampling runs as).
    Ddim,
    /// `LCMScheduler`.
    Lcm,
    /// `PNDMScheduler` (what SD1.5 ships).
    Pndm,
    /// `DDPMScheduler`.
    Ddpm,
}

impl SchedulerClass {
    /// The class of a `_class_name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "DDIMScheduler" => Self::Ddim,
            "LCMScheduler" => Self::Lcm,
            "PNDMScheduler" => Self::Pndm,
            "DDPMScheduler" => Self::Ddpm,
            _ => return None,
        })
    }

    /// The diffusers class name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIMScheduler",
            Self::Lcm => "LCMScheduler",
            Self::Pndm => "PNDMScheduler",
            Self::Ddpm => "DDPMScheduler",
        }
    }

    /// The defaults of the class's `__init__` for the keys [`SchedulerConfig`] reads (diffusers
    /// 0.42.1; a class without the key gets the value that behaves as it does, e.g. PNDM never
    /// clips).
    pub fn defaults(self) -> serde_json::Map<String, serde_json::Value> {
        let common = serde_json::json!({
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "set_alpha_to_one": true,
            "steps_offset": 0,
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "clip_sample": true,
            "clip_sample_range": 1.0,
            "thresholding": false,
            "rescale_betas_zero_snr": false,
            "original_inference_steps": 50,
            "timestep_scaling": 10.0,
        });
        let mut map = common.as_object().expect("object").clone();
        let mut set = |k: &str, v: serde_json::Value| {
            map.insert(k.to_string(), v);
        };
        match self {
            Self::Ddim | Self::Ddpm => {}
            Self::Lcm => {
                set("beta_start", 0.00085.into());
                set("beta_end", 0.012.into());
                set("beta_schedule", "scaled_linear".into());
                set("clip_sample", false.into());
            }
            Self::Pndm => {
                set("set_alpha_to_one", false.into());
                set("clip_sample", false.into());
            }
        }
        map
    }
}

/// A diffusers scheduler config. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Scheduler class that wrote the file (`DDIMScheduler`, `PNDMScheduler`, `LCMScheduler`, ...).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Number of training timesteps `T` (1000).
    #[serde(default = "d::thousand")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "d::beta_start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "d::beta_end")]
    pub beta_end: f64,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    #[serde(default = "d::linear")]
    pub beta_schedule: String,
    /// Explicit betas (overrides the schedule).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Whether the "previous" alpha-bar of the last step is 1 (else `alphas_cumprod[0]`).
    #[serde(default = "d::yes")]
    pub set_alpha_to_one: bool,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// What the model predicts.
    #[serde(default = "d::epsilon")]
    pub prediction_type: PredictionType,
    /// Spacing of inference timesteps.
    #[serde(default = "d::leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Clip predicted x0 to `[-clip_sample_range, clip_sample_range]`.
    #[serde(default)]
    pub clip_sample: bool,
    /// Range of `clip_sample`.
    #[serde(default = "d::one")]
    pub clip_sample_range: f64,
    /// Dynamic thresholding: not implemented, must be false.
    #[serde(default)]
    pub thresholding: bool,
    /// Zero terminal SNR rescaling: not implemented, must be false.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// LCM: the teacher's DDIM step count the student was distilled on (50).
    #[serde(default = "d::fifty")]
    pub original_inference_steps: usize,
    /// LCM: `timestep_scaling` of the boundary-condition scalings (10).
    #[serde(default = "d::ten")]
    pub timestep_scaling: f64,
}

mod d {
    use super::{PredictionType, TimestepSpacing};
    pub fn thousand() -> usize {
        1000
    }
    pub fn beta_start() -> f64 {
        0.0001
    }
    pub fn beta_end() -> f64 {
        0.02
    }
    pub fn linear() -> String {
        "linear".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn epsilon() -> PredictionType {
        PredictionType::Epsilon
    }
    pub fn leading() -> TimestepSpacing {
        TimestepSpacing::Leading
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn fifty() -> usize {
        50
    }
    pub fn ten() -> f64 {
        10.0
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SchedulerError::ConfigParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn unsupported(
    path: &Path,
    key: &str,
    found: impl std::fmt::Display,
    expected: &str,
) -> SchedulerError {
    SchedulerError::Unsupported {
        path: path.to_path_buf(),
        key: key.into(),
        found: found.to_string(),
        expected: expected.into(),
    }
}

impl SchedulerConfig {
    /// The SD1.5 training schedule (scaled_linear 0.00085 -> 0.012, 1000 steps, epsilon), with
    /// DDIM's "trailing" spacing that few-step sampling needs.
    pub fn sd15() -> Self {
        let mut config: Self = serde_json::from_str("{}").expect("defaults");
        config.beta_start = 0.00085;
        config.beta_end = 0.012;
        config.beta_schedule = "scaled_linear".into();
        config.set_alpha_to_one = false;
        config.steps_offset = 1;
        config.timestep_spacing = TimestepSpacing::Trailing;
        config
    }

    /// Reads and validates `scheduler_config.json`; omitted keys take the defaults of the class
    /// the file names (`_class_name`; DDIM's when it names none of ours).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_value_as(&read_json(path)?, path, None)
    }

    /// Reads a config to run as `class`: omitted keys take `class`'s defaults (diffusers'
    /// `Class.from_config(file)`).
    pub fn from_json_file_as(path: impl AsRef<Path>, class: SchedulerClass) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_value_as(&read_json(path)?, path, Some(class))
    }

    /// Parses and validates a JSON string (`origin` names it in messages), with the defaults of
    /// the class it names.
    pub fn from_json_str_at(text: &str, origin: &Path) -> Result<Self> {
        let value = serde_json::from_str(text).map_err(|e| SchedulerError::ConfigParse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json_value_as(&value, origin, None)
    }

    /// Parses and validates a JSON value (e.g. the scheduler config held by a loaded pipeline,
    /// `origin` being its file). Keys it omits take the defaults of `class`, or of the class it
    /// names when `class` is `None`.
    pub fn from_json_value_as(
        value: &serde_json::Value,
        origin: &Path,
        class: Option<SchedulerClass>,
    ) -> Result<Self> {
        let parse_error = |message: String| SchedulerError::ConfigParse {
            path: origin.to_path_buf(),
            message,
        };
        let file = value
            .as_object()
            .ok_or_else(|| parse_error("expected a JSON object".into()))?;
        let class = class
            .or_else(|| {
                file.get("_class_name")
                    .and_then(|c| c.as_str())
                    .and_then(SchedulerClass::from_name)
            })
            .unwrap_or(SchedulerClass::Ddim);
        let mut merged = class.defaults();
        for (key, v) in file {
            // `null` means "not set" in diffusers' files (e.g. `trained_betas: null`).
            if !v.is_null() || !merged.contains_key(key) {
                merged.insert(key.clone(), v.clone());
            }
        }
        let config: Self = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| parse_error(e.to_string()))?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks that every value is implemented and in range.
    pub fn validate(&self, path: &Path) -> Result<()> {
        for (key, value) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(value > 0.0 && value < 1.0) {
                return Err(unsupported(path, key, value, "a number in (0, 1)"));
            }
        }
        if let Some(bad) = self
            .trained_betas
            .iter()
            .flatten()
            .find(|b| !(**b > 0.0 && **b < 1.0))
        {
            return Err(unsupported(path, "trained_betas", bad, "values in (0, 1)"));
        }
        if !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0) {
            return Err(unsupported(
                path,
                "clip_sample_range",
                self.clip_sample_range,
                "a finite number > 0",
            ));
        }
        if !(self.timestep_scaling.is_finite() && self.timestep_scaling > 0.0) {
            return Err(unsupported(
                path,
                "timestep_scaling",
                self.timestep_scaling,
                "a finite number > 0",
            ));
        }
        if !matches!(
            self.beta_schedule.as_str(),
            "linear" | "scaled_linear" | "squaredcos_cap_v2"
        ) {
            return Err(unsupported(
                path,
                "beta_schedule",
                &self.beta_schedule,
                "linear, scaled_linear, squaredcos_cap_v2",
            ));
        }
        if self.num_train_timesteps < 2 {
            return Err(unsupported(
                path,
                "num_train_timesteps",
                self.num_train_timesteps,
                "at least 2",
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(unsupported(
                    path,
                    "trained_betas",
                    format!("{} values", betas.len()),
                    &format!("num_train_timesteps = {} values", self.num_train_timesteps),
                ));
            }
        }
        if self.thresholding {
            return Err(unsupported(path, "thresholding", true, "false"));
        }
        if self.rescale_betas_zero_snr {
            return Err(unsupported(path, "rescale_betas_zero_snr", true, "false"));
        }
        if self.original_inference_steps == 0
            || self.original_inference_steps > self.num_train_timesteps
        {
            return Err(unsupported(
                path,
                "original_inference_steps",
                self.original_inference_steps,
                &format!("1..={}", self.num_train_timesteps),
            ));
        }
        Ok(())
    }
}

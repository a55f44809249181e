//! The `scheduler_config.json` keys shared by diffusers' DDPM / DDIM / PNDM / LCM schedulers.
//!
//! One struct reads any of those classes (`_class_name` is kept); keys a class does not have take
//! diffusers' defaults. Values this crate does not implement (thresholding, zero-SNR rescaling,
//! non-epsilon/v/sample prediction) are rejected with the key named.

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

    /// Reads and validates `scheduler_config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str_at(&text, path)
    }

    /// Parses and validates a JSON string (`origin` names it in messages).
    pub fn from_json_str_at(text: &str, origin: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| SchedulerError::ConfigParse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Parses and validates a JSON value (e.g. the scheduler config held by a loaded pipeline).
    pub fn from_json_value(value: &serde_json::Value) -> Result<Self> {
        Self::from_json_str_at(&value.to_string(), Path::new("<scheduler config>"))
    }

    /// Checks that every value is implemented.
    pub fn validate(&self, path: &Path) -> Result<()> {
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

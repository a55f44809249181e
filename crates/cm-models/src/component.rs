//! A diffusers / transformers component folder: `config.json` plus a weight file
//! (`<stem>.safetensors` or `<stem>.fp16.safetensors`). One trait gives every model the same
//! `load_safetensors` / `from_folder` API, with its own remap table.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use burn_store::ModuleSnapshot;

use crate::config_json::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::{load_safetensors, LoadOptions, LoadReport};

/// Which weight file of a component to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightVariant {
    /// The fp32 file if present, else the `.fp16.` file.
    #[default]
    Auto,
    /// `<stem>.safetensors` (error if absent).
    Full,
    /// `<stem>.fp16.safetensors` (error if absent).
    Fp16,
}

/// Picks `<stem>.safetensors` or `<stem>.fp16.safetensors` in `dir`.
pub fn weight_file(dir: &Path, stem: &str, variant: WeightVariant) -> Result<PathBuf> {
    let full = dir.join(format!("{stem}.safetensors"));
    let half = dir.join(format!("{stem}.fp16.safetensors"));
    let candidates: &[&PathBuf] = match variant {
        WeightVariant::Auto => &[&full, &half],
        WeightVariant::Full => &[&full],
        WeightVariant::Fp16 => &[&half],
    };
    // Something at a candidate's name that is not a readable file (a directory, a dangling
    // symlink) is an error, not a reason to fall back silently to another variant.
    for path in candidates {
        if std::fs::symlink_metadata(path).is_ok() && !path.is_file() {
            let what = if path.is_dir() {
                "is a directory, not a weight file"
            } else {
                "is a dangling symlink or not a regular file"
            };
            return Err(ModelError::io(
                path.as_path(),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
            ));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            let names: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            ModelError::io(
                names.join(" or "),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "weight file not found (only .safetensors is supported)",
                ),
            )
        })
}

/// A model stored as a component folder.
pub trait Component<B: Backend>: Module<B> + ModuleSnapshot<B> + Sized {
    /// Its `config.json` type.
    type Config: JsonConfig;
    /// Stem of the weight file (`model` for transformers, `diffusion_pytorch_model` for diffusers).
    const WEIGHTS_STEM: &'static str;

    /// The remap table, ignored keys and dtype of this component's files.
    fn load_options(dtype: DType) -> LoadOptions;

    /// A randomly initialised model of `config`.
    fn build(config: &Self::Config, device: &B::Device) -> Self;

    /// Reads weights from a safetensors file (fp32, fp16 or bf16; cast to `dtype`).
    fn load_safetensors(self, path: impl AsRef<Path>, dtype: DType) -> Result<(Self, LoadReport)> {
        load_safetensors(self, path, &Self::load_options(dtype))
    }

    /// Builds the model of `dir/config.json` and loads its weight file.
    fn from_folder(
        dir: impl AsRef<Path>,
        variant: WeightVariant,
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Self, Self::Config, LoadReport)> {
        let dir = dir.as_ref();
        let config = Self::Config::from_json_file(dir.join("config.json"))?;
        let (model, report) = Self::build(&config, device)
            .load_safetensors(weight_file(dir, Self::WEIGHTS_STEM, variant)?, dtype)?;
        Ok((model, config, report))
    }
}

//! LoRA safetensors files (peft / diffusers or kohya keys) read into and written from a model.
//!
//! ```no_run
//! # use cm_models::{lora_file, unet::UNet2DConditionModel};
//! # fn demo<B: burn::tensor::backend::Backend>(mut unet: UNet2DConditionModel<B>) -> cm_models::Result<()> {
//! // Any format, any float dtype; every key and shape is checked against the UNet first.
//! let report = lora_file::load_into(&mut unet, "lcm-lora.safetensors", "lcm")?;
//! // Write it back as a diffusers file (`pipe.load_lora_weights(...)` reads it) in fp16.
//! lora_file::save_from(&unet, "lcm", "out.safetensors", cm_lora::LoraFormat::Peft, burn::tensor::DType::F16)?;
//! # Ok(()) }
//! ```

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use cm_lora::{formats, ImportReport, LoraFormat, LoraWeights};

use crate::error::{ModelError, Result};
use cm_io::{read_tensors_and_header, write_tensors};

fn lora_error(path: &Path) -> impl Fn(cm_lora::LoraError) -> ModelError + '_ {
    move |error| ModelError::Lora {
        path: path.to_path_buf(),
        error,
    }
}

/// Reads a LoRA file for `module` (whose adaptable layer paths resolve kohya names), detecting
/// the format from its keys. Returns the factors and the detected format; nothing is checked
/// against the model yet (see [`cm_lora::check_weights`] / [`load_into`]).
pub fn read<B: Backend, M: Module<B>>(
    path: impl AsRef<Path>,
    module: &M,
) -> Result<(LoraWeights, LoraFormat)> {
    let path = path.as_ref();
    let (tensors, header) = read_tensors_and_header(path)?;
    let format = LoraFormat::detect(tensors.keys()).map_err(lora_error(path))?;
    let weights = match format {
        LoraFormat::Peft => formats::from_peft(tensors, &header.metadata),
        LoraFormat::Kohya => {
            let paths: Vec<String> = cm_lora::describe(module)
                .into_iter()
                .map(|l| l.path)
                .collect();
            formats::from_kohya(tensors, &paths)
        }
    }
    .map_err(lora_error(path))?;
    // NaN / Inf factors would turn every image black after the merge: name the layer.
    for (layer, f) in &weights.layers {
        let finite = |d: &burn::tensor::TensorData| {
            d.clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .map(|v| v.iter().all(|x| x.is_finite()))
                .unwrap_or(false)
        };
        if !(finite(&f.down) && finite(&f.up) && f.up_bias.as_ref().is_none_or(finite)) {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                key: f.source.clone().unwrap_or_else(|| layer.clone()),
                message: "a LoRA factor holds NaN or Inf values".into(),
            });
        }
    }
    Ok((weights, format))
}

/// Reads a LoRA file and adds it to `module` as adapter `name` (active; everything else frozen).
/// Every key and shape is checked before the module changes, so a file for another base model is
/// an error naming the file and key, never a half-applied adapter.
pub fn load_into<B: Backend, M: Module<B>>(
    module: &mut M,
    path: impl AsRef<Path>,
    name: &str,
) -> Result<ImportReport> {
    let path = path.as_ref();
    let (weights, _) = read(path, module)?;
    cm_lora::import(module, name, weights).map_err(lora_error(path))
}

/// Writes `weights` as a LoRA file in `format` and `dtype` (F32, F16 or BF16), atomically. The
/// peft layout never carries peft's `base_model.model.` prefix, and records alphas in the
/// `lora_adapter_metadata` entry that diffusers' `load_lora_weights` reads.
pub fn write(
    path: impl AsRef<Path>,
    weights: &LoraWeights,
    format: LoraFormat,
    dtype: DType,
) -> Result<()> {
    let path = path.as_ref();
    let (tensors, mut metadata) = match format {
        LoraFormat::Peft => formats::to_peft(weights, dtype),
        LoraFormat::Kohya => formats::to_kohya(weights, dtype).map(|t| (t, Default::default())),
    }
    .map_err(lora_error(path))?;
    metadata.insert("format".into(), "pt".into());
    metadata.insert("generator".into(), "consistency-models".into());
    Ok(write_tensors(path, &tensors, &metadata)?)
}

/// Exports adapter `name` of `module` and [`write`]s it.
pub fn save_from<B: Backend, M: Module<B>>(
    module: &M,
    name: &str,
    path: impl AsRef<Path>,
    format: LoraFormat,
    dtype: DType,
) -> Result<()> {
    let path = path.as_ref();
    let weights = cm_lora::export(module, name).map_err(lora_error(path))?;
    write(path, &weights, format, dtype)
}

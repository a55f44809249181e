//! Checks a UNet LoRA file against a model and rewrites it in either layout and dtype.
//!
//! ```text
//! cargo run --release --example lora_convert -- --in FILE --out FILE [--model DIR]
//!     [--format peft|kohya] [--dtype f32|f16|bf16]
//! ```
//! `--model` is a diffusers pipeline folder or a `unet/` folder (default: the tiny fixture
//! pipeline). The input (peft / diffusers or kohya keys, any float dtype) is loaded into the UNet,
//! which checks every key and shape, then exported from the UNet: a peft output is what
//! `pipe.load_lora_weights(...)` reads (alphas in the `lora_adapter_metadata` entry, no
//! `base_model.model.` prefix).

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::DType;
use consistency_models::backend::{self, Backend};
use consistency_models::lora::LoraFormat;
use consistency_models::models::lora_file;
use consistency_models::models::unet::UNet2DConditionModel;
use consistency_models::models::{Component, WeightVariant};

/// Checks a UNet LoRA file against a model and rewrites it in either layout and dtype.
#[derive(clap::Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// A diffusers pipeline folder or a `unet/` folder (default: the tiny fixture pipeline).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The LoRA file to read (peft / diffusers or kohya keys, any float dtype).
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The file to write.
    #[arg(long = "out", value_name = "FILE")]
    output: PathBuf,
    /// Output layout: peft or kohya.
    #[arg(long, default_value = "peft", value_parser = ["peft", "kohya"])]
    format: String,
    /// Output dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = <Args as clap::Parser>::parse();
    backend::guard_device(|| run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let device = backend::device();
    let model = args
        .model
        .clone()
        .unwrap_or_else(consistency_models::cli::default_teacher);
    let out_format: LoraFormat = args.format.parse()?;
    let dtype = match args.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let unet_dir = if model.join("unet").is_dir() {
        model.join("unet")
    } else {
        model.clone()
    };
    let (mut unet, _, _) = UNet2DConditionModel::<Backend>::from_folder(
        &unet_dir,
        WeightVariant::Auto,
        DType::F32,
        &device,
    )
    .with_context(|| format!("loading the UNet from {}", unet_dir.display()))?;
    let (weights, format) = lora_file::read(&args.input, &unet)?;
    let report = consistency_models::lora::import(&mut unet, "lora", weights)
        .with_context(|| format!("{} does not fit the UNet", args.input.display()))?;
    println!(
        "{} ({format:?}): {} layers, {} parameters, fits {}",
        args.input.display(),
        report.layers,
        report.params,
        unet_dir.display()
    );
    lora_file::save_from(&unet, "lora", &args.output, out_format, dtype)?;
    println!(
        "wrote {} ({out_format:?}, {dtype:?})",
        args.output.display()
    );
    Ok(())
}

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

use anyhow::{bail, Context};
use burn::tensor::DType;
use consistency_models::backend::{self, Backend};
use consistency_models::lora::LoraFormat;
use consistency_models::models::lora_file;
use consistency_models::models::unet::UNet2DConditionModel;
use consistency_models::models::{Component, WeightVariant};

struct Args {
    model: PathBuf,
    input: PathBuf,
    output: PathBuf,
    format: LoraFormat,
    dtype: DType,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd");
    let (mut input, mut output) = (None, None);
    let mut format = LoraFormat::Peft;
    let mut dtype = DType::F32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "{}",
                include_str!("lora_convert.rs")
                    .lines()
                    .take(11)
                    .map(|l| l.trim_start_matches("//!"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = value.into(),
            "--in" => input = Some(PathBuf::from(value)),
            "--out" => output = Some(PathBuf::from(value)),
            "--format" => format = value.parse()?,
            "--dtype" => {
                dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => bail!("--dtype expects f32, f16 or bf16, got {other:?}"),
                }
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(Args {
        model,
        input: input.context("--in FILE is required")?,
        output: output.context("--out FILE is required")?,
        format,
        dtype,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    backend::guard_device(|| run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let device = backend::device();
    let unet_dir = if args.model.join("unet").is_dir() {
        args.model.join("unet")
    } else {
        args.model.clone()
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
    lora_file::save_from(&unet, "lora", &args.output, args.format, args.dtype)?;
    println!(
        "wrote {} ({:?}, {:?})",
        args.output.display(),
        args.format,
        args.dtype
    );
    Ok(())
}

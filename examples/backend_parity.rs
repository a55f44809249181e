//! Runs LoRA layers (and, with `--unet`, the tiny fixture UNet with a LoRA file) on the selected
//! backend and on the CPU backend (Flex) from the same weights, and prints the relative error of
//! each output. The GPU check for `--features cuda` builds:
//!
//! ```text
//! cargo run --release --features cuda --example backend_parity -- [--unet]
//! ```

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend as BackendTrait;
use burn::tensor::{DType, Tensor, TensorData};
use consistency_models::backend::{self, Backend};
use consistency_models::io as safetensors_io;
use consistency_models::io::compare::relative_error;
use consistency_models::lora::{
    self as cm_lora, LayerFactors, LoraConv2d, LoraLinear, LoraWeights,
};
use consistency_models::models::unet::UNet2DConditionModel;
use consistency_models::models::{lora_file, Component, WeightVariant};

type Cpu = burn::backend::Flex;

#[derive(Module, Debug)]
struct Layers<B: BackendTrait> {
    linear: LoraLinear<B>,
    conv: LoraConv2d<B>,
}

fn data(shape: &[usize], seed: f32) -> TensorData {
    let n: usize = shape.iter().product();
    TensorData::new(
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.731).sin())
            .collect::<Vec<_>>(),
        shape.to_vec(),
    )
}

/// The same layers on backend `B`: base weights from `TensorData`, then a LoRA imported.
fn layers<B: BackendTrait>(device: &B::Device) -> Layers<B> {
    let mut linear = LoraLinear::<B>::new(&LinearConfig::new(24, 16), device);
    linear.base.weight = burn::module::Param::from_data(data(&[24, 16], 1.0), device);
    linear.base.bias = Some(burn::module::Param::from_data(data(&[16], 2.0), device));
    let mut conv = LoraConv2d::<B>::new(
        &Conv2dConfig::new([6, 10], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        device,
    );
    conv.base.weight = burn::module::Param::from_data(data(&[10, 6, 3, 3], 3.0), device);
    conv.base.bias = Some(burn::module::Param::from_data(data(&[10], 4.0), device));
    let mut model = Layers { linear, conv };
    let mut weights = LoraWeights::default();
    let factors = |down: &[usize], up: &[usize], seed| LayerFactors {
        down: data(down, seed),
        up: data(up, seed + 1.0),
        up_bias: None,
        alpha: 8.0,
        source: None,
    };
    weights
        .layers
        .insert("linear".into(), factors(&[4, 24], &[16, 4], 5.0));
    weights
        .layers
        .insert("conv".into(), factors(&[4, 6, 3, 3], &[10, 4, 1, 1], 7.0));
    cm_lora::import(&mut model, "probe", weights).expect("probe LoRA fits");
    model
}

fn outputs<B: BackendTrait>(model: &Layers<B>, device: &B::Device) -> (TensorData, TensorData) {
    let x = Tensor::<B, 2>::from_data(data(&[3, 24], 9.0), device);
    let image = Tensor::<B, 4>::from_data(data(&[2, 6, 5, 5], 11.0), device);
    (
        model.linear.forward(x).into_data(),
        model.conv.forward(image).into_data(),
    )
}

fn report(what: &str, ours: &TensorData, reference: &TensorData) {
    println!("| {what} | {:.2e} |", relative_error(ours, reference));
}

/// The active backend against the CPU on the same weights.
#[derive(clap::Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Also compare the tiny UNet (with and without a LoRA) against diffusers' golden output.
    #[arg(long)]
    unet: bool,
}

pub fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = <Args as clap::Parser>::parse();
    backend::guard_device(|| run(args.unet))
}

fn run(unet: bool) -> anyhow::Result<()> {
    let device = backend::device();
    let cpu = Default::default();
    println!("{} vs CPU (burn-flex), same weights\n", backend::describe());
    println!("| output | relative error |\n|---|---|");
    let mut gpu_layers = layers::<Backend>(&device);
    let mut cpu_layers = layers::<Cpu>(&cpu);
    let (cpu_linear, cpu_conv) = outputs(&cpu_layers, &cpu);
    let (linear, conv) = outputs(&gpu_layers, &device);
    report("LoraLinear, unmerged", &linear, &cpu_linear);
    report("LoraConv2d, unmerged", &conv, &cpu_conv);
    cm_lora::merge(&mut gpu_layers, "probe")?;
    cm_lora::merge(&mut cpu_layers, "probe")?;
    let (linear, conv) = outputs(&gpu_layers, &device);
    report("LoraLinear, merged", &linear, &cpu_linear);
    report("LoraConv2d, merged", &conv, &cpu_conv);
    let (cpu_linear_m, cpu_conv_m) = outputs(&cpu_layers, &cpu);
    report(
        "CPU merged vs CPU unmerged (linear)",
        &cpu_linear_m,
        &cpu_linear,
    );
    report("CPU merged vs CPU unmerged (conv)", &cpu_conv_m, &cpu_conv);
    let merged_weight = gpu_layers.linear.base.weight.val().into_data();
    let cpu_weight = cpu_layers.linear.base.weight.val().into_data();
    report("merged Linear weight", &merged_weight, &cpu_weight);

    if unet {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let golden = safetensors_io::read_tensors(root.join("golden/lora.safetensors"))?;
        let load = |dev: &burn::tensor::Device<Backend>| {
            UNet2DConditionModel::<Backend>::from_folder(
                root.join("tiny-sd/unet"),
                WeightVariant::Full,
                DType::F32,
                dev,
            )
            .map(|(u, _, _)| u)
        };
        let mut unet = load(&device)?;
        let forward = |u: &UNet2DConditionModel<Backend>| -> anyhow::Result<TensorData> {
            let t = |k: &str| golden[k].clone();
            Ok(u.forward(
                Tensor::from_data(t("sample"), &device),
                &t("timestep")
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("timestep: {e:?}"))?,
                Tensor::from_data(t("encoder_hidden_states"), &device),
                None,
            )?
            .into_data())
        };
        report(
            "tiny UNet vs diffusers",
            &forward(&unet)?,
            &golden["out_base"],
        );
        lora_file::load_into(&mut unet, root.join("lora/lcm14_peft.safetensors"), "lcm14")?;
        report(
            "tiny UNet + lcm14 LoRA vs diffusers",
            &forward(&unet)?,
            &golden["out_lcm14"],
        );
        cm_lora::merge(&mut unet, "lcm14")?;
        report(
            "tiny UNet + lcm14 merged vs diffusers",
            &forward(&unet)?,
            &golden["out_lcm14"],
        );
    }
    Ok(())
}

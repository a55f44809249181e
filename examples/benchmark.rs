//! The quality benchmark on the captioned-shapes set: prompt x seed pairs (seeds never used in
//! training) sampled by the teacher (DDIM with CFG at several step counts) and by trained LoRA
//! students; every image read by the analytic judge and compared with real renderings of the
//! same captions by a Fréchet distance (`cm_data::frechet`).
//!
//! ```text
//! cargo run --release --example benchmark -- [--teacher assets/demo-teacher] [--pairs 200]
//!     [--student out/cd/pytorch_lora_weights.safetensors:lcm:4 ...] [--out benchmark.md]
//! ```
//!
//! A student is `FILE:SAMPLER:STEPS` with SAMPLER `lcm` (LCM multistep sampling) or
//! `multiboundary` (deterministic multi-boundary sampling with STEPS boundaries evenly spaced, or
//! the student's own boundaries as STEPS = `0/199/499/799`); FILE is a LoRA
//! (merged into the teacher's UNet) or the `unet/` folder of a whole-UNet run; its row is named
//! after the folder holding FILE.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use clap::Parser;
use consistency_models::backend::{self, Backend};
use consistency_models::data::frechet::image_frechet_distance;
use consistency_models::models::pipeline::{PipelineLoadOptions, StableDiffusion};
use consistency_models::models::unet::UNet2DConditionModel;
use consistency_models::models::{Component, WeightVariant};
use consistency_models::schedulers::config::{SchedulerClass, SchedulerConfig, TimestepSpacing};
use consistency_models::train::eval::{
    eval_labels, evaluate, markdown_row, real_images, vae_reconstruction, EvalRow, MARKDOWN_HEADER,
};
use consistency_models::train::sampling::SamplerKind;

/// Seeds of the two real reference sets (backgrounds of the renderings).
const REFERENCE_SEEDS: [u64; 2] = [0xF1D_0001, 0xF1D_0002];

/// Quality benchmark.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// The teacher pipeline folder (default: assets/demo-teacher).
    #[arg(long, value_name = "DIR")]
    teacher: Option<PathBuf>,
    /// Prompt x seed pairs.
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Teacher guidance scale (3: the guidance the demo's students distil).
    #[arg(long, default_value_t = 3.0)]
    guidance: f32,
    /// Teacher DDIM step counts.
    #[arg(long, value_delimiter = ',', default_value = "50,8,4,2,1")]
    steps: Vec<usize>,
    /// Also evaluate students: FILE:SAMPLER:STEPS (FILE a LoRA or a whole-UNet run's unet/ folder;
    /// SAMPLER lcm or multiboundary).
    #[arg(long, value_name = "FILE:SAMPLER:STEPS")]
    student: Vec<String>,
    /// Images per sampling call.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Threads each UNet call's batch is split over (default: 2 on a multi-core CPU, 1 on a GPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Also write the table (Markdown) here, and a PNG of each row's first 10 images next to it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// A parsed `--student` value.
struct Student {
    file: PathBuf,
    sampler: SamplerKind,
    steps: usize,
    /// A multi-boundary student's explicit boundaries.
    boundaries: Option<Vec<usize>>,
    name: String,
}

fn parse_student(spec: &str) -> anyhow::Result<Student> {
    let mut parts = spec.rsplitn(3, ':');
    let (steps, sampler, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(k), Some(f)) => (s, k, f),
        _ => anyhow::bail!("--student expects FILE:SAMPLER:STEPS, got {spec:?}"),
    };
    let boundaries = if sampler == "multiboundary" && steps.contains('/') {
        let list = steps
            .split('/')
            .map(str::parse::<usize>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "--student {spec:?}: boundaries must be timesteps separated by `/` (0/199/499/799), got {steps:?}"
                )
            })?;
        Some(list)
    } else {
        None
    };
    let steps: usize = match &boundaries {
        Some(list) => list.len(),
        None => steps.parse().map_err(|_| {
            anyhow::anyhow!("--student {spec:?}: STEPS must be a positive integer, got {steps:?}")
        })?,
    };
    anyhow::ensure!(steps > 0, "--student {spec:?}: STEPS must be at least 1");
    let sampler = match sampler {
        "lcm" => SamplerKind::Lcm,
        "multiboundary" => SamplerKind::MultiBoundary { boundaries: steps },
        other => {
            anyhow::bail!("--student {spec:?}: SAMPLER must be lcm or multiboundary, got {other:?}")
        }
    };
    let file = PathBuf::from(file);
    let folder = file
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let kind = if matches!(sampler, SamplerKind::Lcm) {
        "LCM"
    } else {
        "multi-boundary"
    };
    let name = match &boundaries {
        Some(list) => format!("{folder} ({kind}, boundaries {list:?}) {steps} steps"),
        None => format!("{folder} ({kind}) {steps} steps"),
    };
    Ok(Student {
        name,
        file,
        sampler,
        steps,
        boundaries,
    })
}

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = Args::parse();
    let students = args
        .student
        .iter()
        .map(|s| parse_student(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for s in &students {
        anyhow::ensure!(
            s.file.is_file() || s.file.join("config.json").is_file(),
            "--student: {} is neither a LoRA file nor a UNet folder (with config.json)",
            s.file.display()
        );
    }
    if let Some(parent) = args.out.as_ref().and_then(|o| o.parent()) {
        // Checked before minutes of sampling, not after.
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("--out: cannot create the folder {}: {e}", parent.display())
            })?;
        }
    }
    let teacher = args
        .teacher
        .clone()
        .unwrap_or_else(consistency_models::train::teacher::demo_teacher_dir);
    let threads = args
        .threads
        .map_or_else(backend::inference_threads, |n| n as usize);
    backend::guard_device(|| {
        let device = backend::device();
        let sd =
            StableDiffusion::<Backend>::load(&teacher, PipelineLoadOptions::default(), &device)?;
        let side = (sd.unet_config.sample_size.unwrap_or(8) * sd.vae_scale_factor()) as u32;
        let labels = eval_labels(args.pairs);
        let reference = real_images(&labels, side, REFERENCE_SEEDS[0]);
        let floor =
            image_frechet_distance(&real_images(&labels, side, REFERENCE_SEEDS[1]), &reference);
        let mut lines = vec![
            format!(
                "{} prompt x seed pairs at {side} px, teacher {}, UNet batches split over {threads} thread(s); Fréchet floor (two real sets): {floor:.4}\n",
                labels.len(),
                teacher.display()
            ),
            MARKDOWN_HEADER.to_string(),
        ];
        for line in &lines {
            println!("{line}");
        }
        let mut rows: Vec<EvalRow> = Vec::new();
        let mut report = |row: EvalRow, lines: &mut Vec<String>| {
            let line = markdown_row(&row);
            println!("{line}");
            lines.push(line);
            rows.push(row);
        };
        report(
            vae_reconstruction(&sd, &labels, &reference, args.batch, &device)?,
            &mut lines,
        );
        let mut ddim = SchedulerConfig::from_json_value_as(
            &sd.scheduler_config,
            &sd.scheduler_config_path(),
            Some(SchedulerClass::Ddim),
        )?;
        ddim.timestep_spacing = TimestepSpacing::Trailing;
        for &steps in &args.steps {
            let name = format!("teacher DDIM {steps} + CFG {}", args.guidance);
            let row = evaluate(
                &name,
                &sd,
                &sd.unet,
                &ddim,
                SamplerKind::Ddim,
                steps,
                None,
                args.guidance,
                &labels,
                &reference,
                args.batch,
                threads,
                &device,
            )?;
            report(row, &mut lines);
        }
        for student in &students {
            let unet = if student.file.is_dir() {
                // A whole-UNet student (`trainable = "unet"` writes a diffusers UNet folder).
                UNet2DConditionModel::<Backend>::from_folder(
                    &student.file,
                    WeightVariant::Auto,
                    DType::F32,
                    &device,
                )?
                .0
            } else {
                let mut unet = sd.unet.clone();
                consistency_models::models::lora_file::load_into(
                    &mut unet,
                    &student.file,
                    "student",
                )?;
                consistency_models::lora::merge(&mut unet, "student")?;
                unet
            };
            let class = student.sampler.scheduler_class();
            let scheduler = SchedulerConfig::from_json_value_as(
                &sd.scheduler_config,
                &sd.scheduler_config_path(),
                Some(class),
            )?;
            let row = evaluate(
                &student.name,
                &sd,
                &unet,
                &scheduler,
                student.sampler,
                student.steps,
                student.boundaries.as_deref(),
                1.0,
                &labels,
                &reference,
                args.batch,
                threads,
                &device,
            )?;
            report(row, &mut lines);
        }
        if let Some(out) = &args.out {
            let mut text = lines.join("\n");
            text.push('\n');
            consistency_models::io::write_atomically(out, text.as_bytes())?;
            let shown: Vec<image::RgbImage> = rows
                .iter()
                .flat_map(|r| r.images.iter().take(10).cloned())
                .collect();
            let grid = consistency_models::io::images::grid(&shown, 10);
            let png = out.with_extension("png");
            consistency_models::io::images::save_rgb(&grid, &png)?;
            println!(
                "\nwrote {} and {} (rows in table order, 10 images each)",
                out.display(),
                png.display()
            );
        }
        Ok(())
    })
}

//! The command line shared by the three training examples (`consistency_training`,
//! `consistency_distill`, `multiboundary_distill`): the common flags override the fields of the
//! TOML run config (the method's committed `configs/<method>.toml` unless `--config` is given),
//! then `cm_train::run::run` trains.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cm_train::config::{Method, PeersPerDevice, RunConfig, Trainable};

use crate::backend;

/// Train a consistency model from a Stable Diffusion teacher.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct TrainArgs {
    /// TOML run config (default: the method's configs/<method>.toml); the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The teacher: a diffusers Stable Diffusion folder (default: assets/demo-teacher).
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    /// Images with same-stem .txt captions.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["coco", "csv"])]
    pub data: Option<PathBuf>,
    /// A COCO captions_*.json (with --images).
    #[arg(long, value_name = "FILE", requires = "images", conflicts_with = "csv")]
    pub coco: Option<PathBuf>,
    /// The course's CSV subset `index,file_name,caption` (with --images).
    #[arg(long, value_name = "FILE", requires = "images")]
    pub csv: Option<PathBuf>,
    /// The image folder of --coco / --csv.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Examples per micro-batch.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Training resolution in pixels (default: the teacher's native size).
    #[arg(long, value_name = "PX")]
    pub resolution: Option<u32>,
    /// Seed of every random draw.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Peak learning rate.
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// What trains: lora or unet.
    #[arg(long, value_parser = ["lora", "unet"])]
    pub trainable: Option<String>,
    /// Data-parallel devices (GPUs 0..N with --features cuda); --batch is per device.
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,
    /// Peers (threads) per device sharing its batch (default "auto": 2 on a multi-core CPU, 1 on
    /// a GPU); the update is the same, only faster where one peer leaves cores idle.
    #[arg(long, value_name = "N")]
    pub peers_per_device: Option<usize>,
    /// Recompute activations in the backward pass (less memory, more time).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Continue from the newest checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved config and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The committed default config of each method (the presets; a test keeps them equal).
pub fn default_config_text(method: Method) -> &'static str {
    match method {
        Method::Ct => include_str!("../configs/ct.toml"),
        Method::Cd => include_str!("../configs/cd.toml"),
        Method::Multiboundary => include_str!("../configs/multiboundary.toml"),
    }
}

/// The default teacher: the demo teacher trained by `train_teacher` (`assets/demo-teacher`), or
/// the tiny SD1.5-shaped fixture pipeline when the demo teacher is absent.
pub fn default_teacher() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("assets/demo-teacher");
    if demo.join("model_index.json").is_file() {
        demo
    } else {
        root.join("tests/fixtures/tiny-sd")
    }
}

impl TrainArgs {
    /// The run config: the file (or the method's default), then these flags.
    pub fn resolve(&self, method: Method) -> anyhow::Result<RunConfig> {
        let mut config = match &self.config {
            Some(path) => RunConfig::from_toml_file(path, method)?,
            None => RunConfig::from_toml_str(
                default_config_text(method),
                std::path::Path::new(&format!("configs/{}.toml", method.name())),
                method,
            )?,
        };
        if config.method != method {
            anyhow::bail!(
                "the config says method = \"{}\" but this is the {} example",
                config.method.name(),
                method.name()
            );
        }
        let set = |slot: &mut Option<PathBuf>, value: &Option<PathBuf>| {
            if value.is_some() {
                *slot = value.clone();
            }
        };
        set(&mut config.model.teacher, &self.teacher);
        if config.model.teacher.is_none() {
            config.model.teacher = Some(default_teacher());
        }
        if self.data.is_some() || self.coco.is_some() || self.csv.is_some() {
            config.data.dir = self.data.clone();
            config.data.coco = self.coco.clone();
            config.data.csv = self.csv.clone();
        }
        set(&mut config.data.images, &self.images);
        if let Some(out) = &self.out {
            config.output.dir = out.clone();
        }
        if let Some(steps) = self.steps {
            config.train.steps = steps;
        }
        if let Some(batch) = self.batch {
            config.train.batch_size = batch;
        }
        if self.resolution.is_some() {
            config.data.resolution = self.resolution;
        }
        if let Some(seed) = self.seed {
            config.train.seed = seed;
        }
        if let Some(devices) = self.devices {
            config.train.devices = devices;
        }
        if let Some(n) = self.peers_per_device {
            config.train.peers_per_device = PeersPerDevice::Count(n);
        }
        if let Some(lr) = self.lr {
            config.train.lr = lr;
        }
        if let Some(t) = &self.trainable {
            config.model.trainable = if t == "unet" {
                Trainable::Unet
            } else {
                Trainable::Lora
            };
        }
        if self.gradient_checkpointing {
            config.model.gradient_checkpointing = true;
        }
        config
            .validate()
            .context("the resolved config (file + flags)")?;
        Ok(config)
    }
}

/// Parses the flags and runs `method` (the body of each training example).
pub fn train_main(method: Method) -> anyhow::Result<()> {
    let args = TrainArgs::parse();
    let mut config = args.resolve(method)?;
    config.train.peers_per_device =
        backend::peers_per_device(config.train.peers_per_device, config.train.batch_size);
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    println!("{} on {}", method.name(), backend::describe());
    backend::guard_device(|| {
        let devices = backend::devices(config.train.devices);
        let outcome =
            cm_train::run::run_on_devices::<backend::Backend>(&config, args.resume, &devices)?;
        println!("outputs in {}", outcome.out.display());
        Ok(())
    })
}

//! Quality evaluation on the captioned-shapes set: sample a fixed list of prompt x seed pairs
//! (seeds never used in training: they come from [`EVAL_SEED`] streams), read every image with the
//! analytic judge (`cm_data::judge`), and report accuracy, a Fréchet distance to real renderings
//! of the same captions (`cm_data::frechet`) and cost.

use std::time::Instant;

use burn::tensor::backend::Backend;
use cm_data::frechet::image_frechet_distance;
use cm_data::item::SplitMix64;
use cm_data::judge::Accuracy;
use cm_data::synthetic::{render, ShapeLabel, BACKGROUNDS};
use cm_models::pipeline::StableDiffusion;
use cm_models::unet::UNet2DConditionModel;
use cm_schedulers::config::SchedulerConfig;

use crate::error::{Result, TrainError};
use crate::sampling::{sample_with_unet, HostNoise, SampleOptions, SamplerKind};
use crate::teacher::all_labels;

/// The seed family of evaluation noise (training draws mix in step indices, never this).
pub const EVAL_SEED: u64 = 0xE7A1_5EED;

/// `n` evaluation prompts: every caption in turn (the 180 of the grammar), so any `n >= 180`
/// covers all of them.
pub fn eval_labels(n: usize) -> Vec<ShapeLabel> {
    let all = all_labels();
    (0..n).map(|i| all[i % all.len()].clone()).collect()
}

/// Real renderings of `labels` at `side` px, each on a background drawn from `seed` (the two
/// backgrounds are the only freedom a caption leaves): the reference set of the Fréchet distance.
pub fn real_images(labels: &[ShapeLabel], side: u32, seed: u64) -> Vec<image::RgbImage> {
    let mut rng = SplitMix64::new(seed);
    labels
        .iter()
        .map(|l| render(l, side, BACKGROUNDS[rng.below(BACKGROUNDS.len())]))
        .collect()
}

/// One evaluated sampler.
#[derive(Debug, Clone)]
pub struct EvalRow {
    /// What was sampled.
    pub name: String,
    /// Judge accuracy.
    pub accuracy: Accuracy,
    /// Fréchet distance of the images to the reference set given to [`evaluate`].
    pub frechet: f64,
    /// UNet evaluations per image (CFG counts 2).
    pub unet_evals: usize,
    /// Wall time per image, seconds.
    pub seconds_per_image: f64,
    /// The images (for grids and feature statistics).
    pub images: Vec<image::RgbImage>,
}

/// Samples `labels` (batches of `batch`, each UNet call split over `threads` threads) with `unet`,
/// judges the images and measures their Fréchet distance to `reference` (real images of the same
/// captions). `boundaries`: a multi-boundary student's own boundaries
/// ([`SampleOptions::boundaries`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    name: &str,
    sd: &StableDiffusion<B>,
    unet: &UNet2DConditionModel<B>,
    scheduler: &SchedulerConfig,
    sampler: SamplerKind,
    steps: usize,
    boundaries: Option<&[usize]>,
    guidance: f32,
    labels: &[ShapeLabel],
    reference: &[image::RgbImage],
    batch: usize,
    threads: usize,
    device: &B::Device,
) -> Result<EvalRow> {
    let size = sd.unet_config.sample_size.unwrap_or(8) * sd.vae_scale_factor();
    let start = Instant::now();
    let mut images = Vec::with_capacity(labels.len());
    let mut visited = 0;
    for (chunk_index, chunk) in labels.chunks(batch.max(1)).enumerate() {
        let captions: Vec<String> = chunk.iter().map(|l| l.caption()).collect();
        let prompts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let options = SampleOptions {
            sampler,
            steps,
            guidance_scale: guidance,
            height: size,
            width: size,
            images_per_prompt: 1,
            threads,
            boundaries: boundaries.map(<[usize]>::to_vec),
            ..Default::default()
        };
        let mut noise = HostNoise::new(crate::draws::stream_seed(EVAL_SEED, &[chunk_index as u64]));
        let out = sample_with_unet(
            sd,
            unet,
            scheduler,
            &prompts,
            &[],
            &options,
            None,
            &mut noise,
            &mut |_| {},
            device,
        )
        .map_err(|e| TrainError::Invalid(format!("evaluation sampling: {e}")))?;
        visited = out.timesteps.len();
        images.extend(cm_io::images::to_rgb8(out.images)?);
    }
    let cfg = guidance != 1.0 && unet.time_cond_proj_dim == 0;
    Ok(EvalRow {
        name: name.to_string(),
        accuracy: Accuracy::of(&images, labels),
        frechet: image_frechet_distance(&images, reference),
        unet_evals: visited * if cfg { 2 } else { 1 },
        seconds_per_image: start.elapsed().as_secs_f64() / labels.len().max(1) as f64,
        images,
    })
}

/// The ceiling of every sampler of a latent pipeline: `reference` images encoded by the VAE
/// (posterior mean), decoded, and read like generated ones. What the VAE loses (a small shape's
/// corners, say) no sampler can get back.
pub fn vae_reconstruction<B: Backend>(
    sd: &StableDiffusion<B>,
    labels: &[ShapeLabel],
    reference: &[image::RgbImage],
    batch: usize,
    device: &B::Device,
) -> Result<EvalRow> {
    let start = Instant::now();
    let mut images = Vec::with_capacity(reference.len());
    for chunk in reference.chunks(batch.max(1)) {
        let (w, h) = chunk[0].dimensions();
        let pixels: Vec<f32> = chunk
            .iter()
            .flat_map(|img| {
                (0..3).flat_map(move |c| img.pixels().map(move |p| p.0[c] as f32 / 127.5 - 1.0))
            })
            .collect();
        let x = burn::tensor::Tensor::<B, 4>::from_data(
            burn::tensor::TensorData::new(pixels, [chunk.len(), 3, h as usize, w as usize]),
            device,
        );
        let posterior = sd.vae.encode(x)?;
        let decoded = sd.vae.decode(posterior.mean);
        images.extend(cm_io::images::to_rgb8((decoded + 1.0) / 2.0)?);
    }
    Ok(EvalRow {
        name: "VAE reconstruction of real images (ceiling)".into(),
        accuracy: Accuracy::of(&images, labels),
        frechet: image_frechet_distance(&images, reference),
        unet_evals: 0,
        seconds_per_image: start.elapsed().as_secs_f64() / reference.len().max(1) as f64,
        images,
    })
}

/// The Markdown header of [`markdown_row`]'s table.
pub const MARKDOWN_HEADER: &str = "| sampler | all right | shape | colour | size | place | Fréchet | UNet evals | s / image |\n|---|---|---|---|---|---|---|---|---|";

/// The Markdown row of an evaluation.
pub fn markdown_row(row: &EvalRow) -> String {
    let a = &row.accuracy;
    format!(
        "| {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.4} | {} | {:.3} |",
        row.name,
        100.0 * a.all,
        100.0 * a.shape,
        100.0 * a.colour,
        100.0 * a.size,
        100.0 * a.place,
        row.frechet,
        row.unet_evals,
        row.seconds_per_image
    )
}

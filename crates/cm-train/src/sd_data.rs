//! Training data of Stable Diffusion runs: captioned images become (VAE posterior, CLIP
//! embedding) pairs, either encoded once into cm-data's latent cache and held in memory
//! ([`LatentData`], the default) or encoded batch by batch with the frozen encoders
//! ([`OnTheFlySource`]).
//!
//! Example `e` of step `k` (of a whole batch of `G` examples) is item `perm_j[p mod n]` with
//! `p = k G + e` and `j = p / n` the epoch: a seeded permutation per epoch, so the data position of
//! a checkpoint is its step. Its latent is `scaling (mean + std z)` with `z` drawn from
//! `(seed, k, e)`, diffusers' `latent_dist.sample() * scaling_factor`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cm_data::cache::{build_cache, CacheKey, LatentCache};
use cm_data::dataset::{CaptionDataset, DatasetOptions};
use cm_data::item::{CaptionedImage, SplitMix64};
use cm_data::sources::{coco_captions, csv_subset, image_folder, CaptionChoice};
use cm_data::transform::TransformConfig;
use cm_models::pipeline::StableDiffusion;

use crate::config::DataConfig;
use crate::draws::{generator, normals};
use crate::error::{Result, TrainError};
use crate::step::StepBatch;
use crate::trainer::BatchSource;

/// The captioned images of a run: the configured source, or the built-in synthetic shapes set
/// (written once to `<out>/data`) when none is given.
pub fn items(data: &DataConfig, resolution: u32, out: &Path) -> Result<Vec<CaptionedImage>> {
    let items = if let Some(dir) = &data.dir {
        image_folder(dir)?
    } else if let Some(coco) = &data.coco {
        let images = data.images.as_ref().expect("validated: coco needs images");
        coco_captions(coco, images, CaptionChoice::First)?
    } else if let Some(csv) = &data.csv {
        let images = data.images.as_ref().expect("validated: csv needs images");
        csv_subset(csv, images)?
    } else {
        let dir = out.join("data");
        let captions = dir.join("captions.json");
        let wanted = format!("{} images at {resolution} px", data.synthetic_items);
        let marker = dir.join("synthetic.txt");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str())
            || !captions.is_file()
        {
            let _ = std::fs::remove_dir_all(&dir);
            cm_data::synthetic::write_coco(&dir, data.synthetic_items, resolution, 0)?;
            cm_io::write_atomically(&marker, wanted.as_bytes())?;
        }
        coco_captions(&captions, &dir, CaptionChoice::First)?
    };
    if items.is_empty() {
        return Err(TrainError::Invalid(
            "the training data has no captioned images".into(),
        ));
    }
    Ok(items)
}

/// Every cached item in memory.
#[derive(Debug, Clone)]
pub struct LatentData {
    /// Posterior means, `n x latent` values.
    pub means: Vec<f32>,
    /// Posterior standard deviations.
    pub stds: Vec<f32>,
    /// Text embeddings, `n x tokens x width` values.
    pub text: Vec<f32>,
    /// `[channels, h, w]` of one latent.
    pub latent_shape: [usize; 3],
    /// `[tokens, width]` of one embedding.
    pub text_shape: [usize; 2],
    /// The `""` embedding (the unconditional condition).
    pub uncond: Vec<f32>,
    /// The VAE's `scaling_factor`.
    pub scaling: f32,
    /// Items skipped as unreadable while encoding (file and reason).
    pub skipped: Vec<(String, String)>,
}

impl LatentData {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.means.len() / self.latent_shape.iter().product::<usize>()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.means.is_empty()
    }
}

fn host(data: &TensorData) -> Vec<f32> {
    data.clone().convert::<f32>().to_vec().expect("f32")
}

/// Opens the latent cache of `items` under `cache_dir` (building it when it is missing or stale,
/// with the reason printed) and reads it into memory.
pub fn load_latents<B: Backend>(
    sd: &StableDiffusion<B>,
    items: Vec<CaptionedImage>,
    resolution: u32,
    skip_bad: bool,
    cache_dir: &Path,
    device: &B::Device,
) -> Result<LatentData> {
    let transform = TransformConfig::center(resolution);
    let dataset = CaptionDataset::new(
        items,
        transform,
        DatasetOptions {
            skip_bad,
            ..Default::default()
        },
    )?;
    let key = CacheKey::new(&sd.root, &transform, dataset.items())?;
    let cache = match LatentCache::open(cache_dir, &key) {
        Ok(cache) => cache,
        Err(reason) => {
            let why = if cache_dir.join("manifest.json").exists() {
                format!("the cache there is not usable: {reason}")
            } else {
                "no cache there yet".to_string()
            };
            println!(
                "encoding {} images into the latent cache {} ({why})",
                dataset.items().len(),
                cache_dir.display()
            );
            build_cache(&dataset, sd, cache_dir, key.clone(), 64, device)?;
            LatentCache::open(cache_dir, &key)?
        }
    };
    let mut data = LatentData {
        means: Vec::new(),
        stds: Vec::new(),
        text: Vec::new(),
        latent_shape: [0; 3],
        text_shape: [0; 2],
        uncond: Vec::new(),
        scaling: cache.manifest().scaling_factor as f32,
        skipped: dataset.skipped(),
    };
    for i in 0..cache.manifest().shards.len() {
        let shard = cache.shard(i)?;
        let mean = &shard["latent_mean"];
        let text = &shard["text_embeddings"];
        data.latent_shape = [mean.shape[1], mean.shape[2], mean.shape[3]];
        data.text_shape = [text.shape[1], text.shape[2]];
        data.means.extend(host(mean));
        data.stds.extend(host(&shard["latent_std"]));
        data.text.extend(host(text));
    }
    if data.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no image of the training data could be read ({} skipped)",
            data.skipped.len()
        )));
    }
    data.uncond = host(&sd.encode_prompts(&[""], device)?.into_data());
    Ok(data)
}

/// The item of example `e` of step `k` (see the module docs), with per-epoch permutations cached.
#[derive(Debug, Clone)]
pub struct EpochOrder {
    items: usize,
    global_batch: usize,
    seed: u64,
    permutations: HashMap<u64, Vec<usize>>,
}

impl EpochOrder {
    /// The order of `items` items read `global_batch` per step.
    pub fn new(items: usize, global_batch: usize, seed: u64) -> Self {
        Self {
            items,
            global_batch,
            seed,
            permutations: HashMap::new(),
        }
    }

    /// The item index of example `example` of step `step`.
    pub fn item(&mut self, step: u64, example: usize) -> usize {
        let position = step * self.global_batch as u64 + example as u64;
        let epoch = position / self.items as u64;
        let (items, seed) = (self.items, self.seed);
        if self.permutations.len() > 4 {
            self.permutations.retain(|&e, _| e + 2 > epoch);
        }
        let order = self.permutations.entry(epoch).or_insert_with(|| {
            let mut order: Vec<usize> = (0..items).collect();
            SplitMix64::new(crate::draws::stream_seed(seed, &[epoch, 5])).shuffle(&mut order);
            order
        });
        order[(position % items as u64) as usize]
    }
}

/// Batches from [`LatentData`].
pub struct LatentSource {
    data: LatentData,
    order: EpochOrder,
    seed: u64,
}

impl LatentSource {
    /// A source reading `global_batch` examples per step.
    pub fn new(data: LatentData, global_batch: usize, seed: u64) -> Self {
        Self {
            order: EpochOrder::new(data.len(), global_batch, seed),
            data,
            seed,
        }
    }

    /// The data.
    pub fn data(&self) -> &LatentData {
        &self.data
    }
}

impl<B: Backend> BatchSource<B, 3> for LatentSource {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 3>> {
        let n = examples.len();
        let latent: usize = self.data.latent_shape.iter().product();
        let text: usize = self.data.text_shape.iter().product();
        let mut x0 = Vec::with_capacity(n * latent);
        let mut cond = Vec::with_capacity(n * text);
        for e in examples {
            let item = self.order.item(step, e);
            let z = normals(&mut generator(self.seed, &[step, e as u64, 3]), latent);
            let means = &self.data.means[item * latent..(item + 1) * latent];
            let stds = &self.data.stds[item * latent..(item + 1) * latent];
            x0.extend(
                means
                    .iter()
                    .zip(stds)
                    .zip(&z)
                    .map(|((m, s), z)| self.data.scaling * (m + s * z)),
            );
            cond.extend_from_slice(&self.data.text[item * text..(item + 1) * text]);
        }
        let [c, h, w] = self.data.latent_shape;
        let [tokens, width] = self.data.text_shape;
        let uncond: Vec<f32> = (0..n)
            .flat_map(|_| self.data.uncond.iter().copied())
            .collect();
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(x0, [n, c, h, w]), device),
            condition: Tensor::from_data(TensorData::new(cond, [n, tokens, width]), device),
            uncondition: Tensor::from_data(TensorData::new(uncond, [n, tokens, width]), device),
        })
    }
}

/// Batches encoded on the fly by the frozen VAE and text encoder (no cache on disk; slower).
/// An unreadable image is replaced by the next readable item when `skip_bad` is set (and
/// counted), else it stops the run naming the file.
pub struct OnTheFlySource<'a, B: Backend> {
    sd: &'a StableDiffusion<B>,
    dataset: CaptionDataset,
    order: EpochOrder,
    seed: u64,
    uncond: Tensor<B, 3>,
    skip_bad: bool,
    /// Files skipped so far, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl<'a, B: Backend> OnTheFlySource<'a, B> {
    /// A source over `items` at `resolution`.
    pub fn new(
        sd: &'a StableDiffusion<B>,
        items: Vec<CaptionedImage>,
        resolution: u32,
        skip_bad: bool,
        global_batch: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let dataset = CaptionDataset::new(
            items,
            TransformConfig::center(resolution),
            DatasetOptions::default(),
        )?;
        Ok(Self {
            order: EpochOrder::new(dataset.items().len(), global_batch, seed),
            uncond: sd.encode_prompts(&[""], device)?,
            sd,
            dataset,
            seed,
            skip_bad,
            skipped: Vec::new(),
        })
    }
}

impl<B: Backend> BatchSource<B, 3> for OnTheFlySource<'_, B> {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 3>> {
        let n = examples.len();
        let count = self.dataset.items().len();
        let mut loaded = Vec::with_capacity(n);
        for e in examples.clone() {
            let mut item = self.order.item(step, e);
            let mut attempts = 0;
            loop {
                match self.dataset.try_get(item) {
                    Ok(example) => break loaded.push(example),
                    Err(err) if self.skip_bad && attempts < count => {
                        self.skipped
                            .push((self.dataset.items()[item].path.clone(), err.to_string()));
                        item = (item + 1) % count;
                        attempts += 1;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        let r = loaded[0].resolution as usize;
        let pixels: Vec<f32> = loaded
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let images = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, r, r]), device);
        let posterior = self.sd.vae.encode(images)?;
        let [_, c, h, w] = posterior.mean.dims();
        let mut z = Vec::with_capacity(n * c * h * w);
        for e in examples {
            z.extend(normals(
                &mut generator(self.seed, &[step, e as u64, 3]),
                c * h * w,
            ));
        }
        let z = Tensor::from_data(TensorData::new(z, [n, c, h, w]), device);
        let x0 = posterior.sample_with(z) * self.sd.vae_config.scaling_factor;
        let captions: Vec<&str> = loaded.iter().map(|e| e.caption.as_str()).collect();
        let condition = self.sd.encode_prompts(&captions, device)?;
        let [_, tokens, width] = condition.dims();
        Ok(StepBatch {
            x0,
            condition,
            uncondition: self.uncond.clone().expand([n, tokens, width]),
        })
    }
}

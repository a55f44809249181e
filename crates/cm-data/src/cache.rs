//! The latent / text-embedding cache: VAE posteriors (mean and std, so training can still sample)
//! and CLIP text embeddings computed once, stored as safetensors shards with a manifest.
//!
//! The manifest records what the numbers depend on: a content fingerprint of the VAE, text encoder
//! and tokenizer folders, the transform, and a fingerprint of the source's (path, caption) list.
//! [`LatentCache::open`] recomputes them and refuses a stale or mismatched cache with a message
//! that names the differing field. Shards are written atomically and the manifest last, so an
//! interrupted build leaves no manifest (and so no cache that could be opened half-written).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cm_io::{read_tensors, write_atomically, write_tensors};
use cm_models::pipeline::StableDiffusion;
use serde::{Deserialize, Serialize};

use crate::dataset::CaptionDataset;
use crate::error::{DataError, Result};
use crate::item::CaptionedImage;
use crate::transform::TransformConfig;

/// Manifest format version.
pub const CACHE_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";

/// FNV-1a 64-bit, a dependency-free content fingerprint (not a security hash).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of every file (name and bytes, sorted by name) in the frozen components the cache
/// depends on: `vae/`, `text_encoder/`, `tokenizer/`.
pub fn model_fingerprint(pipeline_root: &Path) -> Result<String> {
    let mut hash = Fnv::new();
    for component in ["vae", "text_encoder", "tokenizer"] {
        let dir = pipeline_root.join(component);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| DataError::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            hash.update(file.file_name().unwrap_or_default().as_encoded_bytes());
            hash.update(&std::fs::read(&file).map_err(|e| DataError::io(&file, e))?);
        }
    }
    Ok(hash.hex())
}

/// Fingerprint of a source: its (path, caption) list in order.
pub fn source_fingerprint(items: &[CaptionedImage]) -> String {
    let mut hash = Fnv::new();
    for item in items {
        hash.update(item.path.as_os_str().as_encoded_bytes());
        hash.update(&[0]);
        hash.update(item.caption.as_bytes());
        hash.update(&[0]);
    }
    hash.hex()
}

/// What a cache was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// [`model_fingerprint`] of the pipeline folder.
    pub model: String,
    /// Output side of the transform.
    pub resolution: u32,
    /// `center` or `random` (a random crop is frozen into the cache: prefer `center`).
    pub crop: String,
    /// Flip probability (frozen into the cache as well).
    pub hflip_probability: String,
    /// [`source_fingerprint`] of the items.
    pub source: String,
    /// Number of items.
    pub items: usize,
}

impl CacheKey {
    /// The key of a dataset encoded by the pipeline at `pipeline_root`.
    pub fn new(
        pipeline_root: &Path,
        transform: &TransformConfig,
        items: &[CaptionedImage],
    ) -> Result<Self> {
        Ok(Self {
            model: model_fingerprint(pipeline_root)?,
            resolution: transform.resolution,
            crop: format!("{:?}", transform.crop).to_lowercase(),
            hflip_probability: transform.hflip_probability.to_string(),
            source: source_fingerprint(items),
            items: items.len(),
        })
    }

    /// The first field that differs from `other`, as `field: cached vs current`.
    fn difference(&self, other: &Self) -> Option<String> {
        let fields = [
            (
                "model (VAE / text encoder / tokenizer files)",
                &self.model,
                &other.model,
            ),
            (
                "transform resolution",
                &self.resolution.to_string(),
                &other.resolution.to_string(),
            ),
            ("transform crop", &self.crop, &other.crop),
            (
                "transform flip probability",
                &self.hflip_probability,
                &other.hflip_probability,
            ),
            (
                "source (image paths and captions)",
                &self.source,
                &other.source,
            ),
            (
                "number of items",
                &self.items.to_string(),
                &other.items.to_string(),
            ),
        ];
        fields
            .iter()
            .find(|(_, a, b)| a != b)
            .map(|(name, a, b)| format!("{name}: cached {a}, current {b}"))
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    /// Format version.
    pub version: u32,
    /// What the cache was computed from.
    pub key: CacheKey,
    /// The VAE's latent scale, applied when sampling latents from the cache.
    pub scaling_factor: f64,
    /// Shard files with their first item index and item count.
    pub shards: Vec<(String, usize, usize)>,
}

/// Encodes every item of `dataset` with the pipeline's VAE and text encoder into `dir`.
pub fn build_cache<B: Backend>(
    dataset: &CaptionDataset,
    sd: &StableDiffusion<B>,
    dir: &Path,
    key: CacheKey,
    shard_size: usize,
    device: &B::Device,
) -> Result<CacheManifest> {
    if shard_size == 0 {
        return Err(DataError::InvalidOption(
            "shard size must be positive".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    let model_error =
        |e: cm_models::ModelError| DataError::InvalidOption(format!("encoding the cache: {e}"));
    let mut shards = Vec::new();
    let n = dataset.items().len();
    for (shard, start) in (0..n).step_by(shard_size).enumerate() {
        let indices: Vec<usize> = (start..(start + shard_size).min(n)).collect();
        let examples = dataset.load_many(&indices)?;
        let r = dataset_resolution(&examples)?;
        let count = examples.len();
        let pixels: Vec<f32> = examples
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let images = Tensor::<B, 4>::from_data(TensorData::new(pixels, [count, 3, r, r]), device);
        let posterior = sd.vae.encode(images).map_err(model_error)?;
        let captions: Vec<&str> = examples.iter().map(|e| e.caption.as_str()).collect();
        let text = sd.encode_prompts(&captions, device).map_err(model_error)?;
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert(
            "latent_mean".to_string(),
            posterior.mean.clone().into_data(),
        );
        tensors.insert("latent_std".to_string(), posterior.std().into_data());
        tensors.insert("text_embeddings".to_string(), text.into_data());
        let ids: Vec<i64> = examples.iter().map(|e| e.index as i64).collect();
        tensors.insert("indices".to_string(), TensorData::new(ids, [count]));
        let name = format!("shard-{shard:05}.safetensors");
        write_tensors(dir.join(&name), &tensors, &Default::default())?;
        shards.push((name, start, count));
    }
    let manifest = CacheManifest {
        version: CACHE_VERSION,
        key,
        scaling_factor: sd.vae_config.scaling_factor,
        shards,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("serialisable");
    write_atomically(&dir.join(MANIFEST), &json)?;
    Ok(manifest)
}

fn dataset_resolution(examples: &[crate::dataset::TrainingExample]) -> Result<usize> {
    examples
        .first()
        .map(|e| e.resolution as usize)
        .ok_or_else(|| DataError::InvalidOption("a cache shard has no loadable item".into()))
}

/// An opened, validated cache.
#[derive(Debug, Clone)]
pub struct LatentCache {
    dir: PathBuf,
    manifest: CacheManifest,
}

/// One cached item.
#[derive(Debug, Clone)]
pub struct CachedItem {
    /// Posterior mean `[4, h, w]` (unscaled).
    pub latent_mean: TensorData,
    /// Posterior std `[4, h, w]`.
    pub latent_std: TensorData,
    /// Text embeddings `[77, hidden]`.
    pub text_embeddings: TensorData,
}

impl LatentCache {
    /// Opens `dir` and checks its manifest against `expected`; a mismatch is refused, naming the
    /// field.
    pub fn open(dir: &Path, expected: &CacheKey) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let manifest: CacheManifest = serde_json::from_str(&text).map_err(|e| DataError::Json {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if manifest.version != CACHE_VERSION {
            return Err(DataError::InvalidOption(format!(
                "{}: cache format version {} (this build reads {CACHE_VERSION}); rebuild the cache",
                path.display(),
                manifest.version
            )));
        }
        if let Some(diff) = manifest.key.difference(expected) {
            return Err(DataError::InvalidOption(format!(
                "{}: stale or mismatched latent cache ({diff}); rebuild it",
                path.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    /// Reads shard `i` (all its items): latent means, stds, text embeddings, dataset indices.
    pub fn shard(&self, i: usize) -> Result<std::collections::BTreeMap<String, TensorData>> {
        let (name, _, count) = self.manifest.shards.get(i).ok_or_else(|| {
            DataError::InvalidOption(format!(
                "shard {i} outside 0..{}",
                self.manifest.shards.len()
            ))
        })?;
        let path = self.dir.join(name);
        let tensors = read_tensors(&path).map_err(|e| DataError::InvalidOption(e.to_string()))?;
        for key in ["latent_mean", "latent_std", "text_embeddings", "indices"] {
            match tensors.get(key) {
                Some(t) if t.shape.as_slice().first() == Some(count) => {}
                _ => {
                    return Err(DataError::InvalidOption(format!(
                        "{}: tensor `{key}` missing or not {count} items long (corrupt cache)",
                        path.display()
                    )))
                }
            }
        }
        Ok(tensors)
    }

    /// Samples UNet-space latents `scaling_factor * (mean + std * noise)` for a shard.
    pub fn sample_latents<B: Backend>(
        &self,
        shard: &std::collections::BTreeMap<String, TensorData>,
        noise: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let device = noise.device();
        let mean = Tensor::<B, 4>::from_data(shard["latent_mean"].clone(), &device);
        let std = Tensor::<B, 4>::from_data(shard["latent_std"].clone(), &device);
        (mean + std * noise) * self.manifest.scaling_factor
    }
}

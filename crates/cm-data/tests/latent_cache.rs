//! The latent / text-embedding cache on the tiny fixture pipeline: values equal a direct encode,
//! stale or mismatched caches are refused naming the field, corrupt shards are errors.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cm_data::cache::{build_cache, CacheKey, LatentCache};
use cm_data::dataset::{CaptionDataset, DatasetOptions};
use cm_data::sources::{coco_captions, CaptionChoice};
use cm_data::synthetic::write_coco;
use cm_data::transform::TransformConfig;
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion};

type B = burn::backend::Flex;

fn tiny_sd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-data-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_abs(a: &TensorData, b: &TensorData) -> f64 {
    cm_io::compare::max_abs_error(a, b)
}

#[test]
fn cache_round_trip_and_staleness() {
    let device = Default::default();
    let data_dir = temp("data");
    write_coco(&data_dir, 5, 32, 4).unwrap();
    let items = coco_captions(
        &data_dir.join("captions.json"),
        &data_dir,
        CaptionChoice::First,
    )
    .unwrap();
    let transform = TransformConfig::center(32);
    let dataset = CaptionDataset::new(items.clone(), transform, DatasetOptions::default()).unwrap();
    let sd =
        StableDiffusion::<B>::load(tiny_sd(), PipelineLoadOptions::default(), &device).unwrap();
    let key = CacheKey::new(&tiny_sd(), &transform, &items).unwrap();
    let cache_dir = temp("cache");
    let manifest = build_cache(&dataset, &sd, &cache_dir, key.clone(), 2, &device).unwrap();
    assert_eq!(manifest.shards.len(), 3);

    // Values equal a direct encode of the same item.
    let cache = LatentCache::open(&cache_dir, &key).unwrap();
    let shard = cache.shard(1).unwrap();
    let example = dataset.try_get(2).unwrap();
    let image = Tensor::<B, 4>::from_data(TensorData::new(example.pixels, [1, 3, 32, 32]), &device);
    let direct = sd.vae.encode(image).unwrap();
    let cached_mean = Tensor::<B, 4>::from_data(shard["latent_mean"].clone(), &device)
        .slice(0..1)
        .into_data();
    assert!(max_abs(&cached_mean, &direct.mean.into_data()) < 1e-5);
    let text = sd
        .encode_prompts(&[example.caption.as_str()], &device)
        .unwrap();
    let cached_text = Tensor::<B, 3>::from_data(shard["text_embeddings"].clone(), &device)
        .slice(0..1)
        .into_data();
    assert!(max_abs(&cached_text, &text.into_data()) < 1e-5);
    let latents = cache.sample_latents::<B>(&shard, Tensor::zeros([2, 4, 16, 16], &device));
    assert_eq!(latents.dims(), [2, 4, 16, 16]);

    // A different transform, source or model is refused, naming the field.
    let other = CacheKey::new(&tiny_sd(), &TransformConfig::center(16), &items).unwrap();
    let err = LatentCache::open(&cache_dir, &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("transform resolution") && err.contains("manifest.json"),
        "{err}"
    );
    let mut renamed = items.clone();
    renamed[0].caption.push_str(" (edited)");
    let err = LatentCache::open(
        &cache_dir,
        &CacheKey::new(&tiny_sd(), &transform, &renamed).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("source"), "{err}");
    let mut other_model = key.clone();
    other_model.model = "0000000000000000".into();
    assert!(LatentCache::open(&cache_dir, &other_model)
        .unwrap_err()
        .to_string()
        .contains("model"));

    // A truncated shard is an error naming it; no manifest, no cache.
    let shard_path = cache_dir.join(&manifest.shards[0].0);
    let bytes = std::fs::read(&shard_path).unwrap();
    std::fs::write(&shard_path, &bytes[..bytes.len() / 2]).unwrap();
    let err = cache.shard(0).unwrap_err().to_string();
    assert!(err.contains("shard-00000"), "{err}");
    std::fs::remove_file(cache_dir.join("manifest.json")).unwrap();
    assert!(LatentCache::open(&cache_dir, &key)
        .unwrap_err()
        .to_string()
        .contains("manifest.json"));
}

#[test]
fn model_fingerprint_follows_the_component_files() {
    let copy = temp("model-copy");
    for component in ["vae", "text_encoder", "tokenizer"] {
        std::fs::create_dir_all(copy.join(component)).unwrap();
        for entry in std::fs::read_dir(tiny_sd().join(component)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(component).join(entry.file_name())).unwrap();
        }
    }
    let original = cm_data::cache::model_fingerprint(&tiny_sd()).unwrap();
    assert_eq!(
        cm_data::cache::model_fingerprint(&copy).unwrap(),
        original,
        "content, not location"
    );
    let config = copy.join("vae/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("0.18215", "0.13025")).unwrap();
    assert_ne!(cm_data::cache::model_fingerprint(&copy).unwrap(), original);
}

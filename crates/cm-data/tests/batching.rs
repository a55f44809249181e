//! Batching through Burn's DataLoader: parallel workers, seeded shuffle, tokenised captions, and
//! the bad-image policy per batch.

use burn::data::dataloader::DataLoaderBuilder;
use cm_data::batcher::CaptionBatcher;
use cm_data::dataset::{CaptionDataset, DatasetOptions};
use cm_data::sources::{coco_captions, CaptionChoice};
use cm_data::synthetic::write_coco;
use cm_data::transform::TransformConfig;
use cm_models::clip::ClipTokenizer;

type B = burn::backend::Flex;

fn dataset(name: &str, skip_bad: bool, corrupt: bool) -> CaptionDataset {
    let dir = std::env::temp_dir().join(format!("cm-data-batching-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_coco(&dir, 10, 16, 2).unwrap();
    if corrupt {
        std::fs::write(dir.join("images/000004.png"), b"not a png").unwrap();
    }
    let items = coco_captions(&dir.join("captions.json"), &dir, CaptionChoice::First).unwrap();
    let options = DatasetOptions {
        skip_bad,
        ..Default::default()
    };
    CaptionDataset::new(items, TransformConfig::center(8), options).unwrap()
}

fn loader_batches(seed: u64, workers: usize) -> Vec<Vec<String>> {
    let batcher = CaptionBatcher::new(ClipTokenizer::sd15().unwrap(), false);
    let loader = DataLoaderBuilder::<B, _, _>::new(batcher)
        .batch_size(4)
        .shuffle(seed)
        .num_workers(workers)
        .build(dataset(&format!("order-{seed}-{workers}"), false, false));
    let mut batches = Vec::new();
    for batch in loader.iter() {
        let batch = batch.unwrap();
        let n = batch.captions.len();
        assert_eq!(batch.pixels.dims(), [n, 3, 8, 8]);
        assert_eq!(batch.input_ids.dims(), [n, 77]);
        batches.push(batch.captions);
    }
    batches
}

#[test]
fn loader_yields_every_item_once_in_a_seeded_order() {
    // One worker: the exact order is a function of the seed.
    let a = loader_batches(11, 1);
    assert_eq!(a, loader_batches(11, 1), "same seed, same order");
    assert_ne!(a, loader_batches(12, 1), "another seed, another order");
    assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 10);
    // Two workers (parallel decode): Burn 0.21 gives each worker a partition of the shuffled
    // items and yields batches in completion order, so the batches (not their order) repeat.
    let mut p1 = loader_batches(11, 2);
    let mut p2 = loader_batches(11, 2);
    p1.sort();
    p2.sort();
    assert_eq!(p1, p2);
    let mut all: Vec<String> = p1.concat();
    let mut expected: Vec<String> = a.concat();
    all.sort();
    expected.sort();
    assert_eq!(all, expected, "every item exactly once");
}

#[test]
fn bad_image_stops_or_is_skipped_and_counted() {
    let tokenizer = ClipTokenizer::sd15().unwrap();
    let strict = DataLoaderBuilder::<B, _, _>::new(CaptionBatcher::new(tokenizer.clone(), false))
        .batch_size(5)
        .build(dataset("strict", false, true));
    let errors: Vec<String> = strict.iter().filter_map(|b| b.err()).collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("000004.png"), "{}", errors[0]);

    let lenient = DataLoaderBuilder::<B, _, _>::new(CaptionBatcher::new(tokenizer, true))
        .batch_size(5)
        .build(dataset("lenient", true, true));
    let batches: Vec<_> = lenient.iter().map(|b| b.unwrap()).collect();
    let loaded: usize = batches.iter().map(|b| b.captions.len()).sum();
    let skipped: Vec<&String> = batches.iter().flat_map(|b| &b.skipped).collect();
    assert_eq!(loaded, 9);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("000004.png"));
}

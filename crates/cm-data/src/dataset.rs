//! A Burn `Dataset` of transformed training examples over any caption source, with a row limit,
//! a seeded shuffle, and an explicit policy for unreadable images.
//!
//! Policy: by default the first unreadable image stops the run with an error naming the file
//! ([`CaptionDataset::try_get`]); with `skip_bad = true` it is skipped and counted, and
//! [`CaptionDataset::skipped`] lists every skipped file with the reason. Nothing is skipped
//! silently and nothing panics.

use std::sync::Mutex;

use burn::data::dataset::Dataset;

use crate::error::{DataError, Result};
use crate::item::{CaptionedImage, SplitMix64};
use crate::transform::{load_and_transform, TransformConfig};

/// A decoded, transformed training example.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingExample {
    /// `[3, R, R]` values in [-1, 1], row-major.
    pub pixels: Vec<f32>,
    /// Side `R`.
    pub resolution: u32,
    /// The caption.
    pub caption: String,
    /// Index in the dataset.
    pub index: usize,
}

/// How a dataset is built from a source.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DatasetOptions {
    /// Keep at most this many items (after shuffling).
    pub max_items: Option<usize>,
    /// Shuffle the items with this seed.
    pub shuffle_seed: Option<u64>,
    /// Skip (and count) unreadable images instead of failing.
    pub skip_bad: bool,
    /// Seed of the per-item random crop / flip (item `i` uses `seed + i`).
    pub augment_seed: u64,
}

/// Captioned images with a transform.
#[derive(Debug)]
pub struct CaptionDataset {
    items: Vec<CaptionedImage>,
    transform: TransformConfig,
    options: DatasetOptions,
    skipped: Mutex<Vec<(String, String)>>,
}

impl CaptionDataset {
    /// Builds the dataset (shuffle, then limit).
    pub fn new(
        mut items: Vec<CaptionedImage>,
        transform: TransformConfig,
        options: DatasetOptions,
    ) -> Result<Self> {
        if transform.resolution == 0 {
            return Err(DataError::InvalidOption(
                "resolution must be positive".into(),
            ));
        }
        if let Some(seed) = options.shuffle_seed {
            SplitMix64::new(seed).shuffle(&mut items);
        }
        if let Some(max) = options.max_items {
            items.truncate(max);
        }
        Ok(Self {
            items,
            transform,
            options,
            skipped: Mutex::new(Vec::new()),
        })
    }

    /// The (path, caption) entries.
    pub fn items(&self) -> &[CaptionedImage] {
        &self.items
    }

    /// Loads item `index`, or the error naming its file.
    pub fn try_get(&self, index: usize) -> Result<TrainingExample> {
        let item = self.items.get(index).ok_or_else(|| {
            DataError::InvalidOption(format!("index {index} outside 0..{}", self.items.len()))
        })?;
        let mut rng = SplitMix64::new(self.options.augment_seed.wrapping_add(index as u64));
        let pixels = load_and_transform(&item.path, &self.transform, &mut rng)?;
        Ok(TrainingExample {
            pixels,
            resolution: self.transform.resolution,
            caption: item.caption.clone(),
            index,
        })
    }

    /// Loads several items under the dataset's policy: with `skip_bad`, unreadable items are
    /// recorded in [`Self::skipped`] and left out; otherwise the first error is returned.
    pub fn load_many(&self, indices: &[usize]) -> Result<Vec<TrainingExample>> {
        let mut out = Vec::with_capacity(indices.len());
        for &index in indices {
            match self.try_get(index) {
                Ok(example) => out.push(example),
                Err(err @ DataError::Image { .. }) | Err(err @ DataError::Io { .. })
                    if self.options.skip_bad =>
                {
                    let path = self.items[index].path.display().to_string();
                    self.skipped
                        .lock()
                        .expect("not poisoned")
                        .push((path, err.to_string()));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    /// Every skipped file with the reason (empty unless `skip_bad`).
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().expect("not poisoned").clone()
    }
}

/// As a Burn dataset an item is the loaded example or the error message naming the file, so the
/// training loop decides (stop, or skip and count) instead of a panic deep in a worker.
impl Dataset<std::result::Result<TrainingExample, String>> for CaptionDataset {
    fn get(&self, index: usize) -> Option<std::result::Result<TrainingExample, String>> {
        (index < self.items.len()).then(|| self.try_get(index).map_err(|e| e.to_string()))
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

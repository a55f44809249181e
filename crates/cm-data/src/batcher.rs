//! Batching for Burn's `DataLoader`: stacks transformed images into `[N, 3, R, R]` and tokenises
//! captions to `[N, 77]` CLIP ids. Burn's loader gives parallel decode (`num_workers`), prefetch
//! and a seeded shuffle; this batcher applies the dataset's bad-image policy per batch.
//!
//! A batch is `Ok` unless an item failed and `skip_bad` is off (then the error names the file), or
//! every item of the batch failed. With `skip_bad`, failed items are left out and listed in
//! [`CaptionBatch::skipped`], so the training loop can count and report them.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cm_models::clip::ClipTokenizer;

use crate::dataset::TrainingExample;

/// A batch of images and tokenised captions.
#[derive(Debug, Clone)]
pub struct CaptionBatch<B: Backend> {
    /// `[N, 3, R, R]` in [-1, 1].
    pub pixels: Tensor<B, 4>,
    /// `[N, 77]` CLIP token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// The captions, in batch order.
    pub captions: Vec<String>,
    /// Dataset indices, in batch order.
    pub indices: Vec<usize>,
    /// Errors of the items left out (only with `skip_bad`).
    pub skipped: Vec<String>,
}

/// Builds [`CaptionBatch`]es.
#[derive(Debug, Clone)]
pub struct CaptionBatcher {
    tokenizer: ClipTokenizer,
    skip_bad: bool,
}

impl CaptionBatcher {
    /// A batcher with a tokenizer and the bad-image policy.
    pub fn new(tokenizer: ClipTokenizer, skip_bad: bool) -> Self {
        Self {
            tokenizer,
            skip_bad,
        }
    }
}

impl<B: Backend> Batcher<B, Result<TrainingExample, String>, Result<CaptionBatch<B>, String>>
    for CaptionBatcher
{
    fn batch(
        &self,
        items: Vec<Result<TrainingExample, String>>,
        device: &Device<B>,
    ) -> Result<CaptionBatch<B>, String> {
        let mut good = Vec::with_capacity(items.len());
        let mut skipped = Vec::new();
        for item in items {
            match item {
                Ok(example) => good.push(example),
                Err(message) if self.skip_bad => skipped.push(message),
                Err(message) => return Err(message),
            }
        }
        if good.is_empty() {
            return Err(format!(
                "every item of this batch failed to load: {}",
                skipped.join("; ")
            ));
        }
        let r = good[0].resolution as usize;
        let n = good.len();
        let mut pixels = Vec::with_capacity(n * 3 * r * r);
        for example in &good {
            pixels.extend_from_slice(&example.pixels);
        }
        let captions: Vec<String> = good.iter().map(|e| e.caption.clone()).collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let input_ids = self
            .tokenizer
            .encode_batch::<B>(&refs, device)
            .map_err(|e| e.to_string())?;
        Ok(CaptionBatch {
            pixels: Tensor::from_data(TensorData::new(pixels, [n, 3, r, r]), device),
            input_ids,
            captions,
            indices: good.iter().map(|e| e.index).collect(),
            skipped,
        })
    }
}

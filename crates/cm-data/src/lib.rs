//! Training data: caption sources (COCO captions, the course's CSV subset, image folders with
//! `.txt` captions), image decoding and transforms, a Burn `Dataset` and a `Batcher` for Burn's
//! `DataLoader` (parallel decode, prefetch, tokenised captions), and the synthetic shapes dataset
//! used by the embedded demo.
//!
//! Still to come (see the [data] issue): the latent / text-embedding cache.

pub mod batcher;
pub mod dataset;
pub mod error;
pub mod item;
pub mod sources;
pub mod synthetic;
pub mod transform;

pub use error::{DataError, Result};

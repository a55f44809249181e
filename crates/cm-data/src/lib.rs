//! Training data: caption sources (COCO captions, the course's CSV subset, image folders with
//! `.txt` captions), image decoding and transforms, a Burn `Dataset` and a `Batcher` for Burn's
//! `DataLoader` (parallel decode, prefetch, tokenised captions), and the synthetic shapes dataset
//! used by the embedded demo.
//!
//! The latent / text-embedding cache ([`cache`]) lets training skip the frozen encoders.

pub mod batcher;
pub mod cache;
pub mod dataset;
pub mod error;
pub mod frechet;
pub mod item;
pub mod judge;
pub mod sources;
pub mod synthetic;
pub mod transform;

pub use error::{DataError, Result};

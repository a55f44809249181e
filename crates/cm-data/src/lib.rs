//! Training data: caption sources (COCO captions, the course's CSV subset, image folders with
//! `.txt` captions), image decoding and transforms, a Burn `Dataset`, and the synthetic shapes
//! dataset used by the embedded demo.
//!
//! Still to come (see the [data] issue): the parallel batcher with prefetch, the latent /
//! text-embedding cache, and the throughput benchmark.

pub mod dataset;
pub mod error;
pub mod item;
pub mod sources;
pub mod synthetic;
pub mod transform;

pub use error::{DataError, Result};

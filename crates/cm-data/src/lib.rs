//! COCO-caption and folder datasets, image transforms, batching, latent cache, synthetic demo set.
//!
//! This crate compiles but is still empty: it is filled by a later issue (see the crate map in
//! `docs/architecture.md`).

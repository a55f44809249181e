//! Consistency losses: L2 and pseudo-Huber (tensors only).
//!
//! This crate compiles but is still empty: it is filled by a later issue (see the crate map in
//! `docs/architecture.md`).

//! Consistency training, consistency distillation and multi-boundary distillation in one engine.
//!
//! This crate compiles but is still empty: it is filled by a later issue (see the crate map in
//! `docs/architecture.md`).

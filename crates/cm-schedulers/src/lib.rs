//! Noise schedules, DDIM / LCM / multi-boundary samplers and consistency parameterisations (tensors only).
//!
//! This crate compiles but is still empty: it is filled by a later issue (see the crate map in
//! `docs/architecture.md`).

//! LoRA adapters for Burn Linear and Conv2d modules; injection, merge, peft/kohya file formats.
//!
//! This crate compiles but is still empty: it is filled by a later issue (see the crate map in
//! `docs/architecture.md`).

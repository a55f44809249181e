//! The consistency engine: text-to-image sampling with any of our samplers (this file's
//! [`sampling`] module), and, with the [train] issue, CT / CD / multi-boundary CD training.

pub mod sampling;

//! LoRA (low-rank adaptation) for Burn `Linear` and `Conv2d` layers.
//!
//! `y = base(x) + scale * up(down(x))`, `scale = alpha / rank`; the factors are real `Linear` /
//! `Conv2d` modules (so PyTorch <-> Burn adapters transpose them like any layer), `down` starts
//! random and `up` at zero, so a fresh adapter leaves the model unchanged. Conv factors follow the
//! kohya / peft layout: down `[r, in, kh, kw]` (the base's kernel, stride and padding), up
//! `[out, r, 1, 1]`. Adapters merge into the base weights (and unmerge).
//!
//! Status ([lora] issue): the adapter layers and merge are here; injection by module path into the
//! UNet, several adapters with a switch, and the peft / kohya file formats are still to come.

mod conv;
mod linear;

pub use conv::LoraConv2d;
pub use linear::LoraLinear;

/// Rank, alpha and bias options of an adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

//! Adapter hyper-parameters: rank, alpha, dropout, bias.

use crate::LoraError;

/// Rank, alpha, dropout and bias of an adapter (peft `LoraConfig`'s `r`, `lora_alpha`,
/// `lora_dropout`, `lora_bias`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update `up @ down`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter's input (training only; Burn's dropout is the identity
    /// on backends without autodiff).
    pub dropout: f64,
    /// Give the `up` factor a bias (peft `lora_bias = True`). Off by default: the kohya format
    /// has no place for it.
    pub bias: bool,
}

impl LoraConfig {
    /// `rank` and `alpha`, no dropout, no bias.
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            dropout: 0.0,
            bias: false,
        }
    }

    /// Sets the dropout probability.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets whether `up` has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Rank at least 1, finite alpha, dropout in `[0, 1)`.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::InvalidConfig(
                "rank must be at least 1, got 0".into(),
            ));
        }
        if !self.alpha.is_finite() {
            return Err(LoraError::InvalidConfig(format!(
                "alpha must be finite, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::InvalidConfig(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }
}

//! Consistency losses between the online prediction and the target (tensors only).
//!
//! Both losses are computed per element and averaged over every element of the batch (the
//! reduction of diffusers' LCM distillation scripts, `F.mse_loss(..., reduction="mean")` and
//! `mean(sqrt((a - b)^2 + c^2) - c)`). [`Loss::PseudoHuberPerSample`] is the iCT variant: one norm
//! per example over its dimensions, `sqrt(||a - b||^2 + c^2) - c`, averaged over the batch. The
//! course notebook's single norm over the whole batch tensor (which couples the examples) is not
//! offered.
//!
//! `c` for latents: 0.001 (diffusers' default `huber_c`); the iCT rule is `c = 0.00054 sqrt(d)` with
//! `d` the number of dimensions of one example ([`ict_huber_c`]).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// A consistency loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// `mean((a - b)^2)` over every element.
    L2,
    /// `mean(sqrt((a - b)^2 + c^2) - c)` over every element.
    PseudoHuber {
        /// `c` (0.001 on SD latents).
        c: f64,
    },
    /// `mean_i(sqrt(||a_i - b_i||^2 + c^2) - c)`: one norm per example (iCT).
    PseudoHuberPerSample {
        /// `c` (iCT: `0.00054 sqrt(d)`).
        c: f64,
    },
}

/// Errors of loss configuration.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// A bad `c` or shapes that differ.
    #[error("{0}")]
    Invalid(String),
}

/// iCT's pseudo-Huber constant for examples of `dims` numbers: `0.00054 sqrt(dims)`.
pub fn ict_huber_c(dims: usize) -> f64 {
    0.00054 * (dims as f64).sqrt()
}

impl Loss {
    /// Checks the constant (finite and > 0 for the pseudo-Huber losses).
    pub fn validate(&self) -> Result<(), LossError> {
        match *self {
            Self::L2 => Ok(()),
            Self::PseudoHuber { c } | Self::PseudoHuberPerSample { c } => {
                if c.is_finite() && c > 0.0 {
                    Ok(())
                } else {
                    Err(LossError::Invalid(format!(
                        "pseudo-Huber c must be a finite number > 0, got {c}"
                    )))
                }
            }
        }
    }

    /// The scalar loss between `prediction` and `target` (same shape `[batch, ...]`).
    ///
    /// # Shapes
    /// `prediction`, `target`: `[batch, ...]` -> `[1]`.
    pub fn forward<B: Backend, const D: usize>(
        &self,
        prediction: Tensor<B, D>,
        target: Tensor<B, D>,
    ) -> Tensor<B, 1> {
        let diff = prediction - target;
        match *self {
            Self::L2 => diff.powi_scalar(2).mean(),
            Self::PseudoHuber { c } => {
                let c2 = c * c;
                (diff.powi_scalar(2) + c2).sqrt().sub_scalar(c).mean()
            }
            Self::PseudoHuberPerSample { c } => {
                let batch = diff.dims()[0];
                let per_sample: Tensor<B, 2> = diff.powi_scalar(2).reshape([batch as i32, -1]);
                (per_sample.sum_dim(1) + c * c).sqrt().sub_scalar(c).mean()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn_flex::Flex;

    fn value(loss: Loss, a: &[f32], b: &[f32], shape: [usize; 2]) -> f64 {
        let device = Default::default();
        let a = Tensor::<B, 2>::from_data(TensorData::new(a.to_vec(), shape), &device);
        let b = Tensor::<B, 2>::from_data(TensorData::new(b.to_vec(), shape), &device);
        loss.forward(a, b).into_scalar() as f64
    }

    #[test]
    fn losses_equal_their_formulas() {
        let a = [0.5f32, -1.0, 2.0, 0.0];
        let b = [0.0f32, 1.0, 2.0, 3.0];
        let d: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y) as f64).collect();
        let l2 = d.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!((value(Loss::L2, &a, &b, [2, 2]) - l2).abs() < 1e-6);
        let c = 0.1;
        let huber = d.iter().map(|v| (v * v + c * c).sqrt() - c).sum::<f64>() / 4.0;
        assert!((value(Loss::PseudoHuber { c }, &a, &b, [2, 2]) - huber).abs() < 1e-6);
        // Per sample: rows [0.5, -2] and [0, -3].
        let rows = [d[0] * d[0] + d[1] * d[1], d[2] * d[2] + d[3] * d[3]];
        let per_sample = rows.iter().map(|r| (r + c * c).sqrt() - c).sum::<f64>() / 2.0;
        assert!(
            (value(Loss::PseudoHuberPerSample { c }, &a, &b, [2, 2]) - per_sample).abs() < 1e-6
        );
    }

    #[test]
    fn per_element_huber_does_not_couple_examples() {
        // The notebook's whole-batch norm changes example 0's gradient when example 1 changes; the
        // per-element loss does not (each element's term depends on that element only).
        use burn::backend::Autodiff;
        type A = Autodiff<B>;
        let device = Default::default();
        let grad_of_first = |second: f32| {
            let a =
                Tensor::<A, 2>::from_data(TensorData::new(vec![0.3f32, second], [2, 1]), &device)
                    .require_grad();
            let b = Tensor::<A, 2>::zeros([2, 1], &device);
            let grads = Loss::PseudoHuber { c: 0.01 }
                .forward(a.clone(), b)
                .backward();
            a.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()[0]
        };
        assert_eq!(grad_of_first(1.0), grad_of_first(-7.0));
    }

    #[test]
    fn the_ict_constant_and_validation() {
        assert!((ict_huber_c(4 * 32 * 32) - 0.03456).abs() < 1e-9);
        assert!(Loss::PseudoHuber { c: 0.0 }.validate().is_err());
        assert!(Loss::PseudoHuberPerSample { c: f64::NAN }
            .validate()
            .is_err());
        Loss::L2.validate().unwrap();
    }
}

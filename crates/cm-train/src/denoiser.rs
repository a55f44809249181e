//! What the training engine sees of a network: a [`Denoiser`] maps a noisy batch, its timesteps
//! and a condition to a model output (noise, v or x0 per [`Denoiser::prediction_type`]).
//!
//! The consistency step never knows whether it trains Stable Diffusion or the Gaussian-mixture
//! oracle: the SD UNet (conditioned on CLIP embeddings, `[batch, 77, width]`) and the oracle's MLP
//! and exact mixture denoiser (conditioned on class one-hots, `[batch, classes]`) implement the
//! same trait. Samples are always `[batch, channels, h, w]`; low-dimensional data uses
//! `h = w = 1`. The condition is a tensor of rank `C`, batch first.
//!
//! Classifier-free guidance lives here once ([`guided_output`]): one batched call on
//! `[uncond; cond]`, `u + w (c - u)` with one `w` per example, and no unconditional pass at all when
//! every `w` is 1.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use cm_schedulers::config::PredictionType;

use crate::error::{Result, TrainError};

/// A network (or an exact formula) that denoises.
pub trait Denoiser<B: Backend, const C: usize> {
    /// What the output means.
    fn prediction_type(&self) -> PredictionType;

    /// Whether the network takes the guidance scale as an input (an LCM-style guidance embedding,
    /// `time_cond_proj_dim`); then [`Self::predict`] needs `guidance`.
    fn takes_guidance(&self) -> bool {
        false
    }

    /// The output for `x` at timesteps `t` (one per example, host values, so no device read
    /// happens) under `condition`, with the guidance scales `w` when the network takes them.
    ///
    /// # Shapes
    /// `x`: `[batch, channels, h, w]`, `condition`: `[batch, ...]` -> `[batch, channels, h, w]`.
    fn predict(
        &self,
        x: Tensor<B, 4>,
        t: &[usize],
        condition: Tensor<B, C>,
        guidance: Option<&[f32]>,
    ) -> Result<Tensor<B, 4>>;
}

/// `[batch, 1, ..., 1]` per-example values broadcastable against a rank-`D` batch.
pub fn per_example<B: Backend, const D: usize>(values: &[f32], device: &B::Device) -> Tensor<B, D> {
    cm_schedulers::schedule::per_sample(values, device)
}

/// Rows of `a` where `take_b[i]` is false, rows of `b` where it is true (exact copies).
pub fn select_rows<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    take_b: &[bool],
) -> Tensor<B, D> {
    if !take_b.iter().any(|&x| x) {
        return a;
    }
    if take_b.iter().all(|&x| x) {
        return b;
    }
    let device = a.device();
    let mut shape = [1usize; D];
    shape[0] = take_b.len();
    let mask =
        Tensor::<B, 1, Bool>::from_data(TensorData::new(take_b.to_vec(), [take_b.len()]), &device)
            .reshape(shape)
            .expand(a.dims());
    a.mask_where(mask, b)
}

/// The classifier-free-guided output `u + w_i (c - u)` of `model` at `(x, t)`, where `c` is the
/// output under `condition` and `u` under `uncondition`. Both run in ONE call on the concatenated
/// batch `[uncond; cond]` (as diffusers batches them); when every `w_i` is 1 the unconditional pass
/// is skipped entirely.
///
/// # Shapes
/// `x`: `[batch, ...]`, `condition` / `uncondition`: `[batch, ...]`, `w`: `batch` values.
pub fn guided_output<B: Backend, const C: usize, M: Denoiser<B, C> + ?Sized>(
    model: &M,
    x: Tensor<B, 4>,
    t: &[usize],
    condition: Tensor<B, C>,
    uncondition: Tensor<B, C>,
    w: &[f32],
) -> Result<Tensor<B, 4>> {
    let batch = x.dims()[0];
    if w.len() != batch || t.len() != batch {
        return Err(TrainError::Invalid(format!(
            "guidance needs one timestep and one scale per example: batch {batch}, {} timesteps, {} scales",
            t.len(),
            w.len()
        )));
    }
    if w.iter().all(|&w| w == 1.0) {
        return model.predict(x, t, condition, None);
    }
    let input = Tensor::cat(vec![x.clone(), x], 0);
    let context = Tensor::cat(vec![uncondition, condition], 0);
    let times: Vec<usize> = t.iter().chain(t).copied().collect();
    let out = model.predict(input, &times, context, None)?;
    let u = out.clone().narrow(0, 0, batch);
    let c = out.narrow(0, batch, batch);
    let device = u.device();
    Ok(u.clone() + (c - u) * per_example::<B, 4>(w, &device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    type B = burn_flex::Flex;

    /// Output = condition value broadcast, so guidance is visible; counts its calls.
    struct Echo {
        calls: Cell<usize>,
        batch_seen: Cell<usize>,
    }

    impl Denoiser<B, 2> for Echo {
        fn prediction_type(&self) -> PredictionType {
            PredictionType::Epsilon
        }
        fn predict(
            &self,
            x: Tensor<B, 4>,
            _t: &[usize],
            condition: Tensor<B, 2>,
            _g: Option<&[f32]>,
        ) -> Result<Tensor<B, 4>> {
            self.calls.set(self.calls.get() + 1);
            self.batch_seen.set(x.dims()[0]);
            let [b, c, h, w] = x.dims();
            Ok(condition.reshape([b, 1, 1, 1]).expand([b, c, h, w]))
        }
    }

    #[test]
    fn guidance_is_per_example_batched_once_and_skipped_at_one() {
        let device = Default::default();
        let echo = Echo {
            calls: Cell::new(0),
            batch_seen: Cell::new(0),
        };
        let x = Tensor::<B, 4>::zeros([2, 1, 1, 1], &device);
        let cond = Tensor::<B, 2>::from_floats([[3.0], [3.0]], &device);
        let uncond = Tensor::<B, 2>::from_floats([[1.0], [1.0]], &device);
        let out = guided_output(
            &echo,
            x.clone(),
            &[5, 7],
            cond.clone(),
            uncond.clone(),
            &[2.0, 7.5],
        )
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
        // u + w (c - u) = 1 + w * 2
        assert_eq!(out, vec![5.0, 16.0]);
        assert_eq!((echo.calls.get(), echo.batch_seen.get()), (1, 4));
        let out = guided_output(&echo, x, &[5, 7], cond, uncond, &[1.0, 1.0]).unwrap();
        assert_eq!(out.into_data().to_vec::<f32>().unwrap(), vec![3.0, 3.0]);
        assert_eq!(
            (echo.calls.get(), echo.batch_seen.get()),
            (2, 2),
            "no unconditional pass at w = 1"
        );
    }

    #[test]
    fn rows_are_selected_exactly() {
        let device = Default::default();
        let a = Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &device);
        let b = Tensor::<B, 2>::from_floats([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]], &device);
        let out = select_rows(a, b, &[false, true, false]);
        assert_eq!(
            out.into_data().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, -3.0, -4.0, 5.0, 6.0]
        );
    }
}

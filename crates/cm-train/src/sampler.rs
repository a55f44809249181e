//! Samplers over any [`Denoiser`]: the teacher's DDIM with classifier-free guidance, and
//! consistency sampling of a student (deterministic one-step-per-segment multi-boundary sampling,
//! or LCM-style multistep sampling that re-noises with fresh noise).
//!
//! These are what the Gaussian-mixture oracle measures; the text-to-image path
//! ([`crate::sampling`]) drives the same schedulers through a Stable Diffusion pipeline.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_schedulers::consistency::{
    ddim_coefficients, ConsistencyParameterisation, Linear, Parameterisation,
};
use cm_schedulers::schedule::NoiseSchedule;

use crate::denoiser::{guided_output, Denoiser};
use crate::error::Result;

/// Deterministic DDIM (eta 0) with guidance `w` (per example) over descending `timesteps`; each
/// step goes to the next timestep, the last one to clean data (`alpha_bar = 1`).
///
/// # Shapes
/// `x_start`: `[batch, ...]` at `timesteps[0]`; returns the clean estimate, same shape.
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample<B: Backend, const C: usize, M: Denoiser<B, C> + ?Sized>(
    model: &M,
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    x_start: Tensor<B, 4>,
    condition: Tensor<B, C>,
    uncondition: Tensor<B, C>,
    w: &[f32],
) -> Result<Tensor<B, 4>> {
    let batch = x_start.dims()[0];
    let mut x = x_start;
    for (i, &t) in timesteps.iter().enumerate() {
        let ts = vec![t; batch];
        let out = guided_output(
            model,
            x.clone(),
            &ts,
            condition.clone(),
            uncondition.clone(),
            w,
        )?;
        let alpha_bar_next = match timesteps.get(i + 1) {
            Some(&next) => schedule.alpha_bar(next)? as f64,
            None => 1.0,
        };
        let (p, q) = ddim_coefficients(
            model.prediction_type(),
            schedule.alpha_bar(t)? as f64,
            alpha_bar_next,
        );
        x = Linear::from_fn(batch, |_| (p, q)).apply(x, out);
    }
    Ok(x)
}

/// Consistency sampling: at each `(timesteps[i], boundaries[i])` the student's `f` moves the sample
/// to the boundary. Without `renoise` the result is the next step's input (deterministic
/// multi-boundary sampling: no fresh noise after the first); with it, the output is re-noised to the
/// next timestep with fresh noise (LCM multistep sampling). The last output is the sample.
#[allow(clippy::too_many_arguments)]
pub fn consistency_sample<B: Backend, const C: usize, M: Denoiser<B, C> + ?Sized>(
    model: &M,
    parameterisation: &Parameterisation,
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    boundaries: &[usize],
    x_start: Tensor<B, 4>,
    condition: Tensor<B, C>,
    guidance: Option<&[f32]>,
    mut renoise: Option<&mut dyn FnMut(usize) -> Tensor<B, 4>>,
) -> Result<Tensor<B, 4>> {
    let batch = x_start.dims()[0];
    let mut x = x_start;
    for (i, (&t, &b)) in timesteps.iter().zip(boundaries).enumerate() {
        let ts = vec![t; batch];
        let guidance = if model.takes_guidance() {
            guidance
        } else {
            None
        };
        let out = model.predict(x.clone(), &ts, condition.clone(), guidance)?;
        let f = parameterisation.consistency_output(schedule, out, x, &ts, &vec![b; batch])?;
        x = match (renoise.as_mut(), timesteps.get(i + 1)) {
            (Some(fresh), Some(&next)) => {
                let alpha_bar = schedule.alpha_bar(next)?;
                f * alpha_bar.sqrt() + fresh(i) * (1.0 - alpha_bar).sqrt()
            }
            _ => f,
        };
    }
    Ok(x)
}

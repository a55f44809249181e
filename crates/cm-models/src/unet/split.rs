//! One UNet call with its batch split over threads.
//!
//! Burn-flex (the CPU backend) runs its element-wise kernels, normalisations and small GEMMs on the
//! calling thread; only large GEMMs use its thread pool, so one forward pass keeps about one core
//! busy. Splitting the batch (the CFG batch `[uncond; cond]` too) into parts that run on their own
//! threads, each in its own share of rayon's threads ([`crate::core_share`]), fills the others. Each thread gets a clone of the module (its tensors are shared, not
//! copied). Every example is computed exactly as in [`UNet2DConditionModel::forward`]; only the
//! GEMMs' blocking, and so the float summation order, may differ. A GPU backend gains nothing
//! from it: use one part there.
//!
//! A freshly initialised module's parameters are lazy: each clone would draw its own random
//! values (different weights per thread, and a full re-initialisation per call). So the module's
//! parameters are materialised in place before it is cloned.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::UNet2DConditionModel;
use crate::core_share::pool_for_one_of;
use crate::Result;

impl<B: Backend> UNet2DConditionModel<B> {
    /// [`forward`](Self::forward) with the batch split into `parts` contiguous parts (at most one
    /// per example) run on their own threads, the outputs concatenated in order.
    pub fn forward_split(
        &self,
        parts: usize,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        encoder_hidden_states: Tensor<B, 3>,
        timestep_cond: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 4>> {
        let batch = sample.dims()[0];
        let parts = parts.clamp(1, batch.max(1));
        if parts == 1 {
            return self.forward(sample, timesteps, encoder_hidden_states, timestep_cond);
        }
        self.check_inputs(
            &sample,
            timesteps,
            &encoder_hidden_states,
            timestep_cond.as_ref(),
        )?;
        self.visit(&mut Materialise);
        // Part i holds examples [start_i, start_i + len_i): sizes differ by at most one.
        let ranges: Vec<(usize, usize)> = (0..parts)
            .map(|i| {
                let start = i * batch / parts;
                (start, (i + 1) * batch / parts - start)
            })
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(start, len)| {
                    let unet = self.clone();
                    let sample = sample.clone().narrow(0, start, len);
                    let ts = timesteps[start..start + len].to_vec();
                    let context = encoder_hidden_states.clone().narrow(0, start, len);
                    let cond = timestep_cond.clone().map(|c| c.narrow(0, start, len));
                    scope.spawn(move || {
                        pool_for_one_of(parts)?.install(|| unet.forward(sample, &ts, context, cond))
                    })
                })
                .collect();
            let outputs = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(outputs, 0))
        })
    }
}

/// Initialises every lazy parameter of the visited module in place (a no-op on loaded weights).
struct Materialise;

impl<B: Backend> ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

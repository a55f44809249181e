//! THE consistency step: consistency training (CT), consistency distillation with a guided teacher
//! (CD) and multi-boundary CD are one function; only the neighbour `x_s` differs.
//!
//! Numbered like diffusers' `train_lcm_distill_*` scripts (and `../shared/docs/mission.md`):
//!
//! 1. per example, a solver pair `(t, s = t - skip)` from the draws; `x_t = alpha_t x0 + sigma_t noise`;
//!    the boundary `b = b(s)` (the largest boundary `<= s`; `K = 1` gives `b = 0`);
//! 2. online prediction `f_theta(x_t, t)` towards `b`, with gradients;
//! 3. the neighbour `x_s`:
//!    - CT: analytic, `x_s = alpha_s x0 + sigma_s noise` (the same noise);
//!    - CD: the frozen teacher's guided output `u + w (c - u)` at `(x_t, t)` ("" condition for `u`,
//!      no unconditional pass when `w == 1`), then the DDIM solver step `t -> s`;
//! 4. target `f(x_s, s)` towards the same `b`, without gradients, from the target network (the
//!    student itself, stop-grad, or its EMA copy); where `s = b` it is `x_s` exactly;
//! 5. the loss between them (L2 or pseudo-Huber, see `cm-losses`).
//!
//! The backward pass, optimizer step and EMA update belong to the loop (`trainer`). Every random
//! input is in [`StepDraws`], so a step is a pure function of its inputs and can be checked against
//! the PyTorch reference step on fixed inputs. A network with a guidance embedding gets the
//! per-example `w` as input (student and target); condition dropout replaces the condition of the
//! dropped examples by the unconditional one everywhere (their teacher output is then unguided).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use cm_losses::Loss;
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::PredictionType;
use cm_schedulers::consistency::{
    ConsistencyParameterisation, DdimToBoundary, LcmParameterisation, Linear, Parameterisation,
};
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::solver::DdimSolver;
use serde::{Deserialize, Serialize};

use crate::denoiser::{guided_output, select_rows, Denoiser};
use crate::draws::StepDraws;
use crate::error::{Result, TrainError};

/// Where the neighbour `x_s` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Neighbour {
    /// Consistency training: `x_s` from the same data and noise (no teacher).
    Analytic,
    /// Consistency distillation: one DDIM step of the guided teacher.
    Teacher,
}

/// Which consistency function `f` the student is trained as.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParameterisationKind {
    /// `f = DDIM(t -> b)` with the network's noise estimate (seed, multi-boundary, PCM).
    DdimToBoundary,
    /// `f = c_skip x_t + c_out x0` (diffusers LCM; `timestep_scaling` 10).
    Lcm,
}

impl ParameterisationKind {
    /// The parameterisation for a network of `prediction_type`.
    pub fn build(self, prediction_type: PredictionType, timestep_scaling: f32) -> Parameterisation {
        match self {
            Self::DdimToBoundary => {
                Parameterisation::DdimToBoundary(DdimToBoundary { prediction_type })
            }
            Self::Lcm => Parameterisation::Lcm(LcmParameterisation {
                prediction_type,
                timestep_scaling,
            }),
        }
    }
}

/// One batch of training data, on the inner (non-autodiff) backend.
#[derive(Debug, Clone)]
pub struct StepBatch<B: Backend, const C: usize> {
    /// Clean samples (latents) `[batch, channels, h, w]`.
    pub x0: Tensor<B, 4>,
    /// Their conditions `[batch, ...]`.
    pub condition: Tensor<B, C>,
    /// The unconditional condition (`""` embedding, null class) for each example `[batch, ...]`.
    pub uncondition: Tensor<B, C>,
}

/// Everything a step computed (for the loop, logs and parity tests).
#[derive(Debug, Clone)]
pub struct StepOutput<B: AutodiffBackend> {
    /// The scalar loss (with gradients to the student's trainable parameters).
    pub loss: Tensor<B, 1>,
    /// `f_theta(x_t, t)`.
    pub online: Tensor<B, 4>,
    /// `f(x_s, s)` (no gradients).
    pub target: Tensor<B::InnerBackend, 4>,
    /// The noisy input `x_t`.
    pub x_t: Tensor<B::InnerBackend, 4>,
    /// The neighbour `x_s`.
    pub x_s: Tensor<B::InnerBackend, 4>,
    /// Per-example `t`.
    pub t: Vec<usize>,
    /// Per-example `s`.
    pub s: Vec<usize>,
    /// Per-example boundary `b(s)`.
    pub boundary: Vec<usize>,
}

/// The fixed parts of the step.
#[derive(Debug, Clone)]
pub struct ConsistencyStep {
    /// The training noise schedule.
    pub schedule: NoiseSchedule,
    /// The skipping-step DDIM solver (its grid gives the training pairs).
    pub solver: DdimSolver,
    /// The segment boundaries (`K = 1`: only 0).
    pub boundaries: BoundarySet,
    /// Which consistency function.
    pub parameterisation: ParameterisationKind,
    /// `timestep_scaling` of the LCM parameterisation.
    pub timestep_scaling: f32,
    /// The loss.
    pub loss: Loss,
    /// CT or CD.
    pub neighbour: Neighbour,
}

fn signal_and_noise(solver: &DdimSolver, t: &[usize]) -> Result<Linear> {
    // x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise, with the solver's alpha_bar (1 at s = 0 in the
    // seed variant, so the CT neighbour at s = 0 is the data itself).
    let alpha_bars = t
        .iter()
        .map(|&t| solver.alpha_bar(t).map(f64::from))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Linear::noising(&alpha_bars))
}

impl ConsistencyStep {
    /// Runs steps 1-5 (see the module docs) and returns the loss with everything it came from.
    ///
    /// `student` runs on the autodiff backend; `target` (the student's `valid()` copy or its EMA)
    /// and `teacher` run on the inner backend. `teacher` is required for [`Neighbour::Teacher`].
    pub fn forward<B, S, G, T, const C: usize>(
        &self,
        student: &S,
        target: &G,
        teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, C>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<StepOutput<B>>
    where
        B: AutodiffBackend,
        S: Denoiser<B, C>,
        G: Denoiser<B::InnerBackend, C>,
        T: Denoiser<B::InnerBackend, C>,
    {
        let n = batch.x0.dims()[0];
        if draws.solver_index.len() != n
            || draws.guidance.len() != n
            || draws.drop_condition.len() != n
            || draws.noise.dims() != batch.x0.dims()
        {
            return Err(TrainError::Invalid(format!(
                "step draws do not fit a batch of {n} examples of shape {:?}",
                batch.x0.dims()
            )));
        }
        // 1. Pairs (t, s), boundaries b(s), the noisy input x_t.
        let (t, s) = self.solver.pairs(&draws.solver_index)?;
        let boundary = self.boundaries.boundaries_at_or_below(&s);
        let x_t = signal_and_noise(&self.solver, &t)?.apply(batch.x0.clone(), draws.noise.clone());
        let condition = select_rows(
            batch.condition.clone(),
            batch.uncondition.clone(),
            &draws.drop_condition,
        );
        let guidance = |takes: bool| takes.then_some(draws.guidance.as_slice());

        // 2. Online prediction f_theta(x_t, t) -> b, with gradients.
        let f_online = self
            .parameterisation
            .build(student.prediction_type(), self.timestep_scaling)
            .coefficients(&self.schedule, &t, &boundary)?;
        let out = student.predict(
            Tensor::from_inner(x_t.clone()),
            &t,
            Tensor::from_inner(condition.clone()),
            guidance(student.takes_guidance()),
        )?;
        let online = f_online.apply(Tensor::from_inner(x_t.clone()), out);

        // 3. The neighbour x_s.
        let x_s = match (self.neighbour, teacher) {
            (Neighbour::Analytic, _) => {
                signal_and_noise(&self.solver, &s)?.apply(batch.x0.clone(), draws.noise.clone())
            }
            (Neighbour::Teacher, None) => {
                return Err(TrainError::Invalid(
                    "consistency distillation needs a teacher".into(),
                ))
            }
            (Neighbour::Teacher, Some(teacher)) => {
                // Dropped examples are unguided (their "condition" is the unconditional one).
                let w: Vec<f32> = draws
                    .guidance
                    .iter()
                    .zip(&draws.drop_condition)
                    .map(|(&w, &dropped)| if dropped { 1.0 } else { w })
                    .collect();
                let guided = guided_output(
                    teacher,
                    x_t.clone(),
                    &t,
                    condition.clone(),
                    batch.uncondition.clone(),
                    &w,
                )?;
                self.solver
                    .step(teacher.prediction_type(), guided, x_t.clone(), &t, &s)?
            }
        };

        // 4. Target f(x_s, s) -> b, no gradients.
        let f_target = self
            .parameterisation
            .build(target.prediction_type(), self.timestep_scaling)
            .coefficients(&self.schedule, &s, &boundary)?;
        let target_value = if f_target.output.iter().all(|&q| q == 0.0) {
            // Every example sits on its boundary: f(x_b, b) = x_b, no network call needed.
            f_target.apply(x_s.clone(), x_s.zeros_like())
        } else {
            let target_out = target.predict(
                x_s.clone(),
                &s,
                condition,
                guidance(target.takes_guidance()),
            )?;
            f_target.apply(x_s.clone(), target_out)
        };

        // 5. Loss.
        let loss = self
            .loss
            .forward(online.clone(), Tensor::from_inner(target_value.clone()));
        Ok(StepOutput {
            loss,
            online,
            target: target_value,
            x_t,
            x_s,
            t,
            s,
            boundary,
        })
    }
}

//! The denoising (diffusion) objective: what trains a teacher, and what initialises a student
//! that has no pretrained weights (the oracle's MLP, as SD students start from SD).
//!
//! 1. per example, a timestep `t ~ U{0..T-1}` (the draws' `solver_index` with `grid_points = T`);
//! 2. `x_t = alpha_t x0 + sigma_t noise`;
//! 3. the network's output at `(x_t, t)` under the condition (dropped to the unconditional one with
//!    the draws' condition dropout: this is what makes classifier-free guidance possible later);
//! 4. the loss against the true value of the network's prediction type: `noise` (epsilon), `x0`
//!    (sample) or `alpha_t noise - sigma_t x0` (v).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use cm_losses::Loss;
use cm_schedulers::config::PredictionType;
use cm_schedulers::consistency::Linear;
use cm_schedulers::schedule::NoiseSchedule;

use crate::denoiser::{select_rows, Denoiser};
use crate::draws::StepDraws;
use crate::error::{Result, TrainError};
use crate::step::StepBatch;

/// The denoising objective.
#[derive(Debug, Clone)]
pub struct DiffusionStep {
    /// The training noise schedule.
    pub schedule: NoiseSchedule,
    /// The loss (L2 is the usual choice).
    pub loss: Loss,
}

impl DiffusionStep {
    /// Steps 1-4 (see the module docs): the loss of `student` on `batch`.
    pub fn forward<B: AutodiffBackend, S: Denoiser<B, C>, const C: usize>(
        &self,
        student: &S,
        batch: &StepBatch<B::InnerBackend, C>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>> {
        let n = batch.x0.dims()[0];
        let t = &draws.solver_index;
        if t.len() != n || draws.noise.dims() != batch.x0.dims() {
            return Err(TrainError::Invalid(format!(
                "diffusion draws do not fit a batch of {n}"
            )));
        }
        // 1-2. x_t.
        let alpha_bars = t
            .iter()
            .map(|&t| self.schedule.alpha_bar(t).map(f64::from))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let forward = Linear::noising(&alpha_bars);
        let x_t = forward.apply(batch.x0.clone(), draws.noise.clone());
        // 3. Output under the (possibly dropped) condition.
        let condition = select_rows(
            batch.condition.clone(),
            batch.uncondition.clone(),
            &draws.drop_condition,
        );
        let guidance = student
            .takes_guidance()
            .then_some(draws.guidance.as_slice());
        let out = student.predict(
            Tensor::from_inner(x_t),
            t,
            Tensor::from_inner(condition),
            guidance,
        )?;
        // 4. The true value of what the network predicts.
        let target: Tensor<B::InnerBackend, 4> = match student.prediction_type() {
            PredictionType::Epsilon => draws.noise.clone(),
            PredictionType::Sample => batch.x0.clone(),
            // v = alpha noise - sigma x0
            PredictionType::VPrediction => Linear {
                sample: forward.output.iter().map(|s| -s).collect(),
                output: forward.sample.clone(),
            }
            .apply(batch.x0.clone(), draws.noise.clone()),
        };
        Ok(self.loss.forward(out, Tensor::from_inner(target)))
    }
}

/// What the trainer optimises: the consistency step or the denoising objective.
pub trait Objective<B: AutodiffBackend, S, G, T, const C: usize> {
    /// The loss of one micro-batch.
    fn loss(
        &self,
        student: &S,
        target: &G,
        teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, C>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>>;

    /// Checks the objective's settings.
    fn validate(&self) -> Result<()>;
}

impl<B, S, G, T, const C: usize> Objective<B, S, G, T, C> for DiffusionStep
where
    B: AutodiffBackend,
    S: Denoiser<B, C>,
{
    fn loss(
        &self,
        student: &S,
        _target: &G,
        _teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, C>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>> {
        self.forward(student, batch, draws)
    }

    fn validate(&self) -> Result<()> {
        self.loss
            .validate()
            .map_err(|e| TrainError::Invalid(e.to_string()))
    }
}

impl<B, S, G, T, const C: usize> Objective<B, S, G, T, C> for crate::step::ConsistencyStep
where
    B: AutodiffBackend,
    S: Denoiser<B, C>,
    G: Denoiser<B::InnerBackend, C>,
    T: Denoiser<B::InnerBackend, C>,
{
    fn loss(
        &self,
        student: &S,
        target: &G,
        teacher: Option<&T>,
        batch: &StepBatch<B::InnerBackend, C>,
        draws: &StepDraws<B::InnerBackend>,
    ) -> Result<Tensor<B, 1>> {
        Ok(self.forward(student, target, teacher, batch, draws)?.loss)
    }

    fn validate(&self) -> Result<()> {
        self.loss
            .validate()
            .map_err(|e| TrainError::Invalid(e.to_string()))
    }
}

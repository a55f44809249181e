//! Data-parallel training through Burn's own collective operations (`burn-collective`): every peer
//! (a thread per device, on one machine; or several machines through burn-collective's global
//! orchestrator) holds a replica of the student, trains on its own slice of the batch, and the
//! gradients are averaged with an all-reduce before the optimizer step. No all-reduce is written
//! here: [`Peer::all_reduce_mean`] is `GradientsParams::all_reduce(peer, Mean)`.
//!
//! Every replica must be forked from ONE initialised student (same parameter ids), and every peer
//! must run the same number of steps (burn-collective blocks until all peers call). With equal
//! slices and the mean, the update equals a single process's update on the whole batch (tested on
//! the CPU with two peers in `tests/`).
//!
//! Burn 0.21 also has a `distributed` feature (NCCL gradient synchronisation inside `backward`,
//! CUDA only); this crate does not use it, so the same code runs (and is tested) on the CPU.

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use burn::module::AutodiffModule;

use crate::diffusion::Objective;
use crate::error::{Result, TrainError};
use crate::trainer::{BatchSource, StepRecord, Trainer};

/// This process's (or thread's) place among the data-parallel peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its id, `0..peers`.
    pub id: usize,
    /// Number of peers on this machine.
    pub peers: usize,
}

fn collective_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Invalid(format!("data-parallel {what} failed: {e:?}"))
}

impl Peer {
    /// Registers peer `id` of `peers` on `device` (blocks until every peer has registered).
    /// Register on the INNER backend of an autodiff backend.
    pub fn register<B: Backend>(id: usize, peers: usize, device: &B::Device) -> Result<Self> {
        if id >= peers {
            return Err(TrainError::Invalid(format!(
                "peer id {id} is outside 0..{peers}"
            )));
        }
        let config = CollectiveConfig::default().with_num_devices(peers);
        collective::register::<B>(PeerId::from(id), device.clone(), config)
            .map_err(|e| collective_error("registration", e))?;
        Ok(Self { id, peers })
    }

    /// The gradients averaged over every peer (all peers must call this together).
    pub fn all_reduce_mean<B: AutodiffBackend>(
        &self,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        grads
            .all_reduce::<B::InnerBackend>(PeerId::from(self.id), ReduceOperation::Mean)
            .map_err(|e| collective_error("gradient all-reduce", e))
    }

    /// A host scalar averaged over every peer (the logged loss).
    pub fn mean_scalar<B: Backend>(&self, value: f64, device: &B::Device) -> Result<f64> {
        let tensor = Tensor::<B, 1>::from_floats([value as f32], device);
        let reduced = collective::all_reduce::<B>(
            PeerId::from(self.id),
            tensor.into_primitive().tensor(),
            ReduceOperation::Mean,
        )
        .map_err(|e| collective_error("loss all-reduce", e))?;
        let mean: f32 = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
            .into_scalar()
            .elem();
        Ok(mean as f64)
    }

    /// Leaves the collective (call once per peer at the end).
    pub fn finish<B: Backend>(self) -> Result<()> {
        collective::finish_collective::<B>(PeerId::from(self.id))
            .map_err(|e| collective_error("finish", e))
    }
}

use burn::tensor::ElementConversion;

/// The thread pool one of `peers` data-parallel peers on this machine runs its backend work in
/// (its share of the cores: [`cm_models::core_share`], which says why).
pub fn peer_pool(peers: usize) -> Result<rayon::ThreadPool> {
    Ok(cm_models::core_share::pool_for_one_of(peers)?)
}

/// What [`train_on_peers`] calls after each of the first peer's steps.
pub type OnStep<'a, B, M, O> = dyn FnMut(&Trainer<B, M, O>, StepRecord) -> Result<()> + Send + 'a;

/// Trains `start` for a whole schedule split over `peers` threads on one `device`: each peer
/// builds its own trainer with `new_trainer(replica, batch / peers)` from its own replica of
/// `start` (fresh autodiff leaves, the same parameter ids and `require_grad` flags) and its own data source, trains its share of every step's examples, and
/// the gradients are averaged, so the update is a single trainer's on the whole `batch` (up to
/// float summation order). `on_step` runs after each of the first peer's steps, on that peer's
/// worker thread while the calling thread waits (progress, snapshots); an error there stops every
/// peer after that step. The first
/// peer's trained model is returned. With `peers == 1` the trainer simply runs here; `peers`
/// must divide `batch`.
///
/// Why: the backend's own threads may leave cores idle during a step (Burn-flex runs most of a
/// training step on one core); peers fill them, each in its own [`peer_pool`].
pub fn train_on_peers<B, M, O, S, T, const C: usize>(
    peers: usize,
    batch: usize,
    device: &B::Device,
    start: M,
    new_trainer: &(dyn Fn(M, usize) -> Result<Trainer<B, M, O>> + Sync),
    new_source: &(dyn Fn() -> S + Sync),
    on_step: &mut OnStep<'_, B, M, O>,
) -> Result<M::InnerModule>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Objective<B, M, M::InnerModule, T, C> + Send,
    S: BatchSource<B::InnerBackend, C> + Send,
{
    if peers == 0 || !batch.is_multiple_of(peers) {
        return Err(TrainError::Invalid(format!(
            "{peers} peers cannot share a batch of {batch} (the count must divide it)"
        )));
    }
    if peers == 1 {
        let mut trainer = new_trainer(start, batch)?;
        let mut source = new_source();
        while trainer.step < trainer.settings.steps {
            let record = trainer.train_step::<S, T, C>(&mut source, None, device)?;
            on_step(&trainer, record)?;
        }
        return Ok(trainer.student.valid());
    }
    let per_peer = batch / peers;
    // Initialise every lazy parameter once, here: a clone of a lazy parameter would draw its own
    // values in each peer.
    let start = M::from_inner(start.valid());
    // After every step all peers meet; `stop` (set by the first peer when `on_step` fails) is
    // read after the meeting, so every peer leaves at the same step.
    let meet = Barrier::new(peers);
    let stop = AtomicBool::new(false);
    // A replica through the inner backend: no autodiff node is shared between peers. (Cloning
    // an inner module would not do: Burn 0.21's `Param::clone` takes `require_grad` from the
    // tensor, which an inner tensor never has; an autodiff clone keeps it, and `valid` /
    // `from_inner` carry it over.)
    let run_peer = |id: usize,
                    start: M,
                    on_step: &mut OnStep<'_, B, M, O>|
     -> Result<Option<M::InnerModule>> {
        let mut trainer = new_trainer(M::from_inner(start.valid()), per_peer)?;
        let peer = Peer::register::<B::InnerBackend>(id, peers, device)?;
        trainer.peer = Some(peer);
        let mut source = new_source();
        let mut failure = None;
        while trainer.step < trainer.settings.steps {
            let record = trainer.train_step::<S, T, C>(&mut source, None, device)?;
            if let Err(e) = on_step(&trainer, record) {
                failure = Some(e);
                stop.store(true, Ordering::SeqCst);
            }
            meet.wait();
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        peer.finish::<B::InnerBackend>()?;
        match failure {
            Some(e) => Err(e),
            None if id == 0 => Ok(Some(trainer.student.valid())),
            None => Ok(None),
        }
    };
    // Each peer runs in its own share of the cores (`peer_pool`), the first one too (it blocks
    // the calling thread meanwhile).
    let run = |id: usize,
               start: M,
               on_step: &mut OnStep<'_, B, M, O>|
     -> Result<Option<M::InnerModule>> {
        peer_pool(peers)?.install(|| run_peer(id, start, on_step))
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..peers)
            .map(|id| {
                let start = start.clone();
                let run = &run;
                scope.spawn(move || {
                    let outcome = run(id, start, &mut |_, _| Ok(()));
                    if let Err(e) = &outcome {
                        // Said at once: the first peer may be waiting for this one.
                        eprintln!("data-parallel peer {id} stopped: {e}");
                    }
                    outcome
                })
            })
            .collect();
        let first = run(0, start, on_step);
        let mut failure = None;
        for handle in others {
            let outcome = handle.join().unwrap_or_else(|_| {
                Err(TrainError::Invalid("a data-parallel peer panicked".into()))
            });
            if let Err(e) = outcome {
                failure = failure.or(Some(e));
            }
        }
        match (first, failure) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(model), None) => Ok(model.expect("the first peer returns its model")),
        }
    })
}

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

use crate::error::{Result, TrainError};

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

//! The backend the example binaries run on, chosen by Cargo feature.
//!
//! - default: `Flex`, Burn's CPU backend (multi-threaded with rayon, SIMD kernels);
//! - `--features cuda`: Burn's CUDA backend (kernels compiled at run time by NVRTC; the CUDA driver
//!   is loaded when the first operation runs).
//!
//! Libraries never name a backend: they are generic over `B: Backend` / `B: AutodiffBackend`.

/// The inference backend of the binaries.
#[cfg(not(feature = "cuda"))]
pub type Backend = burn::backend::Flex;
/// The inference backend of the binaries.
#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;

/// The training backend of the binaries (reverse-mode autodiff over [`Backend`]).
pub type AutodiffBackend = burn::backend::Autodiff<Backend>;

/// The device type of [`Backend`].
pub type Device = burn::tensor::Device<Backend>;

/// The default device: the CPU, or CUDA GPU 0.
pub fn device() -> Device {
    Device::default()
}

/// `n` devices for data-parallel training: CUDA GPUs `0..n`, or `n` peers sharing the CPU.
pub fn devices(n: usize) -> Vec<Device> {
    #[cfg(feature = "cuda")]
    {
        (0..n).map(burn::backend::cuda::CudaDevice::new).collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        vec![Device::default(); n]
    }
}

/// What `train.peers_per_device = "auto"` means on the compiled backend: on the CPU one peer per
/// core, at most 2 (Burn-flex runs most of a training step on one core; two peers on this
/// project's 2-core machine train the demo 1.45x faster), a divisor of `batch_size`; on a GPU 1.
/// A count is kept.
pub fn peers_per_device(
    requested: cm_train::config::PeersPerDevice,
    batch_size: usize,
) -> cm_train::config::PeersPerDevice {
    if cfg!(feature = "cuda") {
        requested.auto_for(1, batch_size)
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        requested.auto_for(cores, batch_size)
    }
}

/// Threads a sampling call splits each UNet batch over (`SampleOptions::threads`) on the
/// compiled backend: on the CPU one per core, at most 2 (Burn-flex runs most of a forward pass on
/// one core; see `UNet2DConditionModel::forward_split`); on a GPU 1.
pub fn inference_threads() -> usize {
    if cfg!(feature = "cuda") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 2))
    }
}

/// A one-line description of the compiled backend, for logs.
pub fn describe() -> &'static str {
    if cfg!(feature = "cuda") {
        "CUDA (burn-cuda, GPU 0)"
    } else {
        "CPU (burn-flex)"
    }
}

/// Runs `f`, turning the panic that Burn's CUDA backend raises when no driver can be loaded into
/// an error that tells the user what to do.
pub fn guard_device<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            if message.contains("cuda") || message.contains("CUDA") {
                anyhow::bail!(
                    "the CUDA backend could not start ({message}). This binary was built with \
                     `--features cuda`: run it on a machine with an NVIDIA driver, or rebuild without \
                     the feature to use the CPU"
                )
            }
            anyhow::bail!("internal error: {message}")
        }
    }
}

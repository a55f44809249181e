//! Peak memory of a benchmark row: the process's resident set on the CPU, the GPU's used memory on
//! CUDA.
//!
//! - CPU: Linux's `VmHWM` (peak RSS), reset between rows through `/proc/self/clear_refs`.
//! - CUDA: Burn 0.21 exposes no allocator statistics, so a background `nvidia-smi -lms 50` reads
//!   the device's used memory (this process's pools plus its CUDA context, about 0.5 GiB; the
//!   benchmark is alone on the GPU) and keeps the maximum since the last reset. A reset first
//!   returns Burn's cached pool pages to the driver (`Backend::memory_cleanup`).
//!
//! Nothing here is hand-rolled where a crate would do: no maintained crate reads `VmHWM` with a
//! reset, and NVML bindings would add a build dependency for one number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burn::tensor::backend::Backend;

/// Peak-memory probe for benchmark rows.
pub struct PeakMemory {
    gpu_peak_mib: Option<Arc<AtomicU64>>,
    reader: Option<std::process::Child>,
}

impl PeakMemory {
    /// Starts the probe: `nvidia-smi` polling when built for CUDA (if it can be started),
    /// `VmHWM` otherwise.
    pub fn start() -> Self {
        if cfg!(feature = "cuda") {
            if let Some((child, peak)) = spawn_nvidia_smi() {
                return Self {
                    gpu_peak_mib: Some(peak),
                    reader: Some(child),
                };
            }
        }
        Self {
            gpu_peak_mib: None,
            reader: None,
        }
    }

    /// What [`Self::peak_bytes`] measures, for table headers.
    pub fn describe(&self) -> &'static str {
        if self.gpu_peak_mib.is_some() {
            "GPU memory used (nvidia-smi, includes the CUDA context)"
        } else {
            "peak RSS"
        }
    }

    /// Starts a new row: frees cached device memory and resets the peak to the current level.
    pub fn reset<B: Backend>(&self, device: &B::Device) {
        B::memory_cleanup(device);
        match &self.gpu_peak_mib {
            Some(peak) => {
                // Let the poller see the released pages before the new row starts.
                std::thread::sleep(std::time::Duration::from_millis(150));
                peak.store(0, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None => {
                // "5" resets the high-water mark to the current RSS (proc(5), clear_refs).
                let _ = std::fs::write("/proc/self/clear_refs", "5");
            }
        }
    }

    /// The peak since the last reset, in bytes (`None` where it cannot be read).
    pub fn peak_bytes(&self) -> Option<u64> {
        match &self.gpu_peak_mib {
            Some(peak) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                Some(peak.load(Ordering::SeqCst) * 1024 * 1024)
            }
            None => {
                let status = std::fs::read_to_string("/proc/self/status").ok()?;
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
            }
        }
    }
}

impl Drop for PeakMemory {
    fn drop(&mut self) {
        if let Some(child) = &mut self.reader {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_nvidia_smi() -> Option<(std::process::Child, Arc<AtomicU64>)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
            "-lms",
            "50",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let peak = Arc::new(AtomicU64::new(0));
    let writer = peak.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(mib) = line.trim().parse::<u64>() {
                writer.fetch_max(mib, Ordering::SeqCst);
            }
        }
    });
    Some((child, peak))
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn cpu_peak_sees_an_allocation_and_resets() {
        let memory = PeakMemory::start();
        assert_eq!(memory.describe(), "peak RSS");
        let device = Default::default();
        memory.reset::<burn::backend::Flex>(&device);
        let before = memory.peak_bytes().expect("VmHWM is readable on Linux");
        let block = vec![1u8; 256 << 20];
        std::hint::black_box(&block);
        let during = memory.peak_bytes().unwrap();
        assert!(
            during >= before + (200 << 20),
            "peak {during} did not grow by the 256 MiB touched (before {before})"
        );
        drop(block);
        memory.reset::<burn::backend::Flex>(&device);
        let after = memory.peak_bytes().unwrap();
        assert!(
            after < during,
            "reset left the peak at {after} (was {during})"
        );
    }
}

//! The GPU checks of docs/benchmarks.md in one binary, for machines where nothing can be built:
//! `bench_models`, `bench_train`, `sample` and `backend_parity`, dispatched on the name the binary
//! is called by (busybox style), so one stripped file of ~25 MB is carried instead of four.
//!
//! ```text
//! cargo build --release --features cuda --example gpu_suite      # on the build machine
//! ln -s gpu_suite bench_models && ./bench_models --rows unet64    # on the GPU machine
//! ```
//! `scripts/gpu_checks.sh` makes the links and runs every check with time limits.

#[path = "backend_parity.rs"]
mod backend_parity;
#[path = "bench_models.rs"]
mod bench_models;
#[path = "bench_train.rs"]
mod bench_train;

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let called_as = std::env::args()
        .next()
        .map(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(a)
        })
        .unwrap_or_default();
    match called_as.as_str() {
        "bench_models" => bench_models::main(),
        "bench_train" => bench_train::main(),
        "backend_parity" => backend_parity::main(),
        "sample" => consistency_models::sample_cli::sample_main(),
        other => anyhow::bail!(
            "gpu_suite was called as `{other}`: call it through a link named bench_models, \
             bench_train, backend_parity or sample (scripts/gpu_checks.sh makes them)"
        ),
    }
}

//! The Gaussian-mixture oracle of the training engine, at any budget: trains CD, multi-boundary
//! CD (K = 4) and CT on a 2-D mixture whose exact denoiser is the teacher, and prints how close
//! they come to the teacher's ODE solution (the CI test `cm-train/tests/oracle.rs` runs the small
//! budget). Writes a scatter PNG of every sample set.
//!
//! ```text
//! cargo run --release --example oracle -- [--pretrain 2000] [--cd 1500] [--multiboundary 1000]
//!     [--ct 1500] [--points 2000] [--guidance 3] [--png docs/images/oracle.png]
//! ```

use std::path::PathBuf;

use clap::Parser;
use consistency_models::backend::{self, AutodiffBackend};
use consistency_models::train::oracle::experiment::{evaluate, OracleBudget};

/// Trains and measures the oracle.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Denoising pretraining steps of the MLP.
    #[arg(long, default_value_t = OracleBudget::ci().pretrain_steps)]
    pretrain: u64,
    /// CD steps (K = 1).
    #[arg(long, default_value_t = OracleBudget::ci().cd_steps)]
    cd: u64,
    /// Multi-boundary CD steps (K = 4).
    #[arg(long, default_value_t = OracleBudget::ci().multiboundary_steps)]
    multiboundary: u64,
    /// CT steps.
    #[arg(long, default_value_t = OracleBudget::ci().ct_steps)]
    ct: u64,
    /// Evaluation points per set.
    #[arg(long, default_value_t = OracleBudget::ci().eval_points)]
    points: usize,
    /// Teacher guidance scale w.
    #[arg(long, default_value_t = OracleBudget::ci().guidance)]
    guidance: f32,
    /// Scatter plot of every sample set.
    #[arg(long, default_value = "oracle.png")]
    png: PathBuf,
}

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = Args::parse();
    let budget = OracleBudget {
        pretrain_steps: args.pretrain,
        cd_steps: args.cd,
        multiboundary_steps: args.multiboundary,
        ct_steps: args.ct,
        eval_points: args.points,
        guidance: args.guidance,
    };
    backend::guard_device(|| {
        println!("oracle on {}: {budget:?}", backend::describe());
        let report = evaluate::<AutodiffBackend>(budget, &backend::device())?;
        println!(
            "trained in {:.1} s\n\n{}",
            report.train_seconds,
            report.table()
        );
        report.plot(&args.png)?;
        println!("wrote {}", args.png.display());
        Ok(())
    })
}

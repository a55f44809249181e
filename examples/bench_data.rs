//! Data-loading throughput: decode + resize (shorter side 512, antialiased) + center crop + CHW
//! normalise, in images/s, on 1 thread and on all cores.
//!
//! `cargo run --release --example bench_data -- [--images N] [--dir DIR]`
//!
//! It first writes N COCO-sized (640x480) JPEGs made from the fixture photos into DIR (default
//! `target/bench-data`), so that `scripts/bench_data_reference.py --dir DIR` (PIL + torchvision)
//! reads exactly the same files in the same session.

use std::path::PathBuf;
use std::time::Instant;

use consistency_models::data::item::SplitMix64;
use consistency_models::data::transform::{
    load_and_transform, resize_bilinear_antialias, TransformConfig,
};

/// Data-loading throughput.
#[derive(clap::Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Number of 640x480 JPEGs to write and read.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    images: u32,
    /// Folder of the benchmark images (default: target/bench-data).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = <Args as clap::Parser>::parse();
    let count = args.images as usize;
    let dir = args
        .dir
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    // 1. The benchmark images.
    std::fs::create_dir_all(&dir)?;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let photos = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg"];
    let mut files = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("{i:04}.jpg"));
        if !path.exists() {
            let photo = image::open(fixtures.join(photos[i % photos.len()]))?.to_rgb8();
            let big = resize_bilinear_antialias(&photo, 640, 480);
            big.save(&path)?;
        }
        files.push(path);
    }
    let config = TransformConfig::center(512);
    // 2. One thread.
    let start = Instant::now();
    for f in &files {
        load_and_transform(f, &config, &mut SplitMix64::new(0))?;
    }
    let one = files.len() as f64 / start.elapsed().as_secs_f64();
    // 3. All cores (one worker per core, files split round-robin).
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            let files = &files;
            let config = &config;
            s.spawn(move || {
                for f in files.iter().skip(w).step_by(workers) {
                    load_and_transform(f, config, &mut SplitMix64::new(0))
                        .expect("benchmark image loads");
                }
            });
        }
    });
    let all = files.len() as f64 / start.elapsed().as_secs_f64();
    println!(
        "images: {} x 640x480 JPEG in {}",
        files.len(),
        dir.display()
    );
    println!("| loader | threads | images/s |");
    println!("|---|---|---|");
    println!("| cm-data (decode + resize 512 + crop + normalise) | 1 | {one:.1} |");
    println!("| cm-data | {workers} | {all:.1} |");
    Ok(())
}

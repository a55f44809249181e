//! Exploration (ignored): prints the oracle numbers for a range of settings.
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use cm_train::oracle::experiment::*;
use cm_train::oracle::{sliced_wasserstein, GaussianMixture};

type A = Autodiff<burn_flex::Flex>;

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore]
fn explore() {
    let device = Default::default();
    let mixture = GaussianMixture::ring();
    let steps = env("STEPS", 1000.0) as u64;
    let pre = env("PRE", 1000.0) as u64;
    let lr = env("LR", 2e-3);
    let n = 2000;
    let set = EvalSet::<burn_flex::Flex>::new(&mixture, n, 12345, &device);
    let set2 = EvalSet::<burn_flex::Flex>::new(&mixture, n, 54321, &device);
    let teacher = mixture.denoiser::<burn_flex::Flex>(oracle_schedule(), &device);
    let t0 = std::time::Instant::now();
    let ode = host(teacher_ode(&teacher, &set, 1000, 3.0).unwrap());
    let ode2 = host(teacher_ode(&teacher, &set2, 1000, 3.0).unwrap());
    let one = host(teacher_ode(&teacher, &set, 1, 3.0).unwrap());
    println!(
        "ode in {:.2}s; teacher 1-step error {:.4}; SWD floor {:.4}",
        t0.elapsed().as_secs_f64(),
        mean_distance(&one, &ode, 2),
        sliced_wasserstein(&ode, &ode2, 2, 128, 0)
    );
    let t0 = std::time::Instant::now();
    let init = pretrain::<A>(&mixture, Default::default(), pre, 0, &device).unwrap();
    let pre_sample = host(student_sample(&init.valid(), &set, 1, 3.0).unwrap());
    println!(
        "pretrain {pre} steps in {:.1}s; its 1-step error {:.4}",
        t0.elapsed().as_secs_f64(),
        mean_distance(&pre_sample, &ode, 2)
    );
    for segments in [1usize, 4] {
        let t0 = std::time::Instant::now();
        let mut run = OracleRun::distillation(segments, steps);
        run.lr = lr;
        run.batch = env("BATCH", 256.0) as usize;
        let (student, losses) = train::<A>(&run, &mixture, init.clone(), &device).unwrap();
        let s = host(student_sample(&student, &set, segments, 3.0).unwrap());
        println!(
            "CD K={segments}: {:.1}s, loss {:.5} -> {:.5}, error {:.4}, SWD {:.4}",
            t0.elapsed().as_secs_f64(),
            losses[0],
            losses.iter().rev().take(50).sum::<f64>() / 50.0,
            mean_distance(&s, &ode, 2),
            sliced_wasserstein(&s, &ode2, 2, 128, 0),
        );
    }
}

#[test]
#[ignore]
fn explore_ct() {
    let device = Default::default();
    let mixture = GaussianMixture::ring();
    let steps = env("STEPS", 1000.0) as u64;
    let pre = env("PRE", 1000.0) as u64;
    let n = 2000;
    let set = EvalSet::<burn_flex::Flex>::new(&mixture, n, 12345, &device);
    let data = mixture.sample_classes(&set.labels, 1);
    let data2 = mixture.sample_classes(&set.labels, 2);
    println!(
        "SWD floor {:.4}",
        sliced_wasserstein(&data, &data2, 2, 128, 0)
    );
    let init = pretrain::<A>(&mixture, Default::default(), pre, 0, &device).unwrap();
    let mut run = OracleRun::training(steps);
    run.lr = env("LR", 1e-3);
    run.grid = env("GRID", 50.0) as usize;
    run.batch = env("BATCH", 256.0) as usize;
    let (student, losses) = train::<A>(&run, &mixture, init, &device).unwrap();
    let s = host(student_sample(&student, &set, 1, 1.0).unwrap());
    println!(
        "CT: loss {:.5} -> {:.5}, SWD {:.4}",
        losses[0],
        losses.iter().rev().take(50).sum::<f64>() / 50.0,
        sliced_wasserstein(&s, &data, 2, 128, 0),
    );
}

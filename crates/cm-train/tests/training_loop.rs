//! The training loop on the oracle's small MLP (fast): exact resume, gradient accumulation and
//! data parallelism equal to one big batch, checkpoints of another model refused, and a diverging
//! run stopped with the step, the learning rate and the last good checkpoint named.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cm_losses::Loss;
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::solver::{DdimSolver, SolverVariant};
use cm_train::draws::{DrawSpec, GuidanceDraw};
use cm_train::lr::{LrDecay, LrSchedule};
use cm_train::oracle::experiment::{oracle_schedule, MixtureSource};
use cm_train::oracle::{ExactDenoiser, GaussianMixture, MlpConfig, MlpDenoiser};
use cm_train::params;
use cm_train::session::{self, NoHooks, SessionOptions};
use cm_train::step::{ConsistencyStep, Neighbour, ParameterisationKind, StepBatch};
use cm_train::trainer::{AdamWSettings, BatchSource, LoopSettings, TargetNetwork, Trainer};
use cm_train::TrainError;

type F = burn_flex::Flex;
type A = Autodiff<F>;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-train-loop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One materialised student; every trainer starts from a clone (same values).
fn base(hidden: usize) -> MlpDenoiser<A> {
    // The backend RNG is global: hold a lock from seeding to materialisation so that parallel
    // tests cannot draw in between.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    A::seed(&device, 7);
    let student: MlpDenoiser<A> = MlpConfig {
        hidden,
        layers: 1,
        ..Default::default()
    }
    .init(&device);
    // Materialise the lazy parameters now, so that clones share values.
    let _ = params::trainable_params(&student);
    student
}

fn step() -> ConsistencyStep {
    let schedule = oracle_schedule();
    ConsistencyStep {
        schedule: schedule.clone(),
        solver: DdimSolver::new(schedule, 50, SolverVariant::Seed).unwrap(),
        boundaries: BoundarySet::evenly_spaced(1, 1000, 50).unwrap(),
        parameterisation: ParameterisationKind::DdimToBoundary,
        timestep_scaling: 10.0,
        loss: Loss::PseudoHuber { c: 1e-3 },
        neighbour: Neighbour::Teacher,
    }
}

fn settings(
    steps: u64,
    batch_size: usize,
    accumulation: u64,
    target: TargetNetwork,
) -> LoopSettings {
    LoopSettings {
        steps,
        seed: 3,
        batch_size,
        accumulation,
        lr: LrSchedule {
            lr: 1e-3,
            warmup_steps: 2,
            decay: LrDecay::Cosine,
        },
        adamw: AdamWSettings::default(),
        max_grad_norm: Some(1.0),
        target,
        draws: DrawSpec {
            grid_points: 50,
            guidance: GuidanceDraw::Uniform { min: 1.0, max: 4.0 },
            condition_dropout: 0.2,
        },
    }
}

fn source() -> MixtureSource {
    MixtureSource {
        mixture: GaussianMixture::ring(),
        seed: 11,
    }
}

fn teacher() -> ExactDenoiser<F> {
    GaussianMixture::ring().denoiser(oracle_schedule(), &Default::default())
}

fn options(out: PathBuf, checkpoint_every: u64) -> SessionOptions {
    SessionOptions {
        out,
        log_every: 1,
        checkpoint_every,
        keep_checkpoints: 2,
        validate_every: 0,
        label: "test".into(),
        run: serde_json::json!({"test": true}),
        print: false,
        primary: true,
    }
}

fn values(trainer: &Trainer<A, MlpDenoiser<A>>) -> Vec<f32> {
    params::values_of(&trainer.student, &trainer.params)
        .into_values()
        .flat_map(|v| v.convert::<f32>().to_vec::<f32>().unwrap())
        .collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1e-3 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn a_resumed_run_continues_exactly() {
    let device = Default::default();
    let teacher = teacher();
    for target in [TargetNetwork::StopGrad, TargetNetwork::Ema { decay: 0.9 }] {
        let straight_dir = temp("straight");
        let mut straight = Trainer::new(base(32), settings(6, 8, 1, target), step()).unwrap();
        let all = session::run(
            &mut straight,
            &mut source(),
            Some(&teacher),
            &mut NoHooks,
            &options(straight_dir.clone(), 0),
            &device,
        )
        .unwrap();
        assert_eq!(all.len(), 6);
        assert!(
            straight_dir.join("loss.png").is_file() && straight_dir.join("metrics.jsonl").is_file()
        );

        // Stop after step 3 (a checkpoint), then a fresh process-like trainer resumes.
        let dir = temp("stopped");
        let mut first = Trainer::new(base(32), settings(6, 8, 1, target), step()).unwrap();
        for _ in 0..3 {
            first
                .train_step(&mut source(), Some(&teacher), &device)
                .unwrap();
        }
        let saved = first
            .save_checkpoint(&dir.join("checkpoints"), 2, &serde_json::json!({}))
            .unwrap();
        drop(first);
        let mut resumed = Trainer::new(base(32), settings(6, 8, 1, target), step()).unwrap();
        let used = session::resume(&mut resumed, &options(dir.clone(), 0), None).unwrap();
        assert_eq!(used, Some(saved));
        assert_eq!(resumed.step, 3);
        let rest = session::run(
            &mut resumed,
            &mut source(),
            Some(&teacher),
            &mut NoHooks,
            &options(dir.clone(), 0),
            &device,
        )
        .unwrap();
        let losses =
            |r: &[cm_train::trainer::StepRecord]| r.iter().map(|r| r.loss).collect::<Vec<_>>();
        assert_eq!(
            losses(&rest),
            losses(&all[3..]),
            "{target:?}: same loss sequence"
        );
        assert_eq!(
            values(&resumed),
            values(&straight),
            "{target:?}: same parameters"
        );
    }
}

#[test]
fn accumulation_equals_one_big_batch() {
    let device = Default::default();
    let teacher = teacher();
    let mut big =
        Trainer::new(base(32), settings(3, 8, 1, TargetNetwork::StopGrad), step()).unwrap();
    let mut small =
        Trainer::new(base(32), settings(3, 4, 2, TargetNetwork::StopGrad), step()).unwrap();
    for _ in 0..3 {
        let a = big
            .train_step(&mut source(), Some(&teacher), &device)
            .unwrap();
        let b = small
            .train_step(&mut source(), Some(&teacher), &device)
            .unwrap();
        assert!(
            (a.loss - b.loss).abs() < 1e-6 * a.loss.abs().max(1.0),
            "{} vs {}",
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
            "{} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    let err = max_rel(&values(&small), &values(&big));
    assert!(err < 1e-4, "parameters differ by {err}");
}

#[test]
fn two_data_parallel_peers_equal_one_process_with_the_whole_batch() {
    use cm_train::parallel::Peer;
    let device: burn::tensor::Device<F> = Default::default();
    burn::collective::reset_collective::<F>();
    let mut single =
        Trainer::new(base(32), settings(2, 8, 1, TargetNetwork::StopGrad), step()).unwrap();
    for _ in 0..2 {
        single
            .train_step(&mut source(), Some(&teacher()), &device)
            .unwrap();
    }
    let reference = values(&single);
    let start = base(32);
    let (sender, receiver) = std::sync::mpsc::channel();
    for id in 0..2usize {
        // Each peer gets its own autodiff leaves (as `run_on_devices` and `train_on_peers` do):
        // clones of one autodiff module share leaf nodes, and Burn's autodiff merges the graphs
        // of threads that share a node, so one peer's backward could take the other's gradients
        // (seen as an all-reduce shape mismatch or a hang in ~4% of loaded runs).
        let student = MlpDenoiser::<A>::from_inner(start.valid());
        let sender = sender.clone();
        std::thread::spawn(move || {
            let device = Default::default();
            let result = (|| -> cm_train::Result<Vec<f32>> {
                let mut trainer =
                    Trainer::new(student, settings(2, 4, 1, TargetNetwork::StopGrad), step())?;
                trainer.peer = Some(Peer::register::<F>(id, 2, &device)?);
                let teacher = teacher();
                for _ in 0..2 {
                    trainer.train_step(&mut source(), Some(&teacher), &device)?;
                }
                trainer.peer.take().unwrap().finish::<F>()?;
                Ok(values(&trainer))
            })();
            sender.send(result.map_err(|e| e.to_string())).unwrap();
        });
    }
    for _ in 0..2 {
        let peer = receiver
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a peer hung")
            .unwrap();
        let err = max_rel(&peer, &reference);
        assert!(err < 1e-4, "peer differs from the single process by {err}");
    }
}

#[test]
fn a_checkpoint_of_another_model_is_refused_naming_the_mismatch() {
    let device = Default::default();
    let dir = temp("other");
    let mut wide =
        Trainer::new(base(48), settings(2, 4, 1, TargetNetwork::StopGrad), step()).unwrap();
    wide.train_step(&mut source(), Some(&teacher()), &device)
        .unwrap();
    let saved = wide
        .save_checkpoint(&dir, 2, &serde_json::json!({}))
        .unwrap();
    let mut narrow =
        Trainer::new(base(32), settings(2, 4, 1, TargetNetwork::StopGrad), step()).unwrap();
    let before = values(&narrow);
    let err = narrow.load_checkpoint(&saved).unwrap_err().to_string();
    assert!(
        err.contains("trainable.safetensors")
            && err.contains("shape")
            && err.contains("input.weight"),
        "{err}"
    );
    assert_eq!(values(&narrow), before, "nothing changed");
    assert_eq!(narrow.step, 0);
    // A corrupt optimizer file is named too.
    std::fs::write(saved.join("optimizer.mpk"), b"garbage").unwrap();
    let err = wide.load_checkpoint(&saved).unwrap_err().to_string();
    assert!(err.contains("optimizer.mpk"), "{err}");
}

/// Mixture data until step `bad`, then NaN.
struct Poisoned {
    inner: MixtureSource,
    bad: u64,
}

impl BatchSource<F, 2> for Poisoned {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &burn::tensor::Device<F>,
    ) -> cm_train::Result<StepBatch<F, 2>> {
        let mut batch = self.inner.batch(step, examples, device)?;
        if step >= self.bad {
            let n = batch.x0.dims()[0];
            batch.x0 =
                Tensor::from_data(TensorData::new(vec![f32::NAN; n * 2], [n, 2, 1, 1]), device);
        }
        Ok(batch)
    }
}

#[test]
fn a_nan_loss_stops_naming_step_lr_and_the_last_good_checkpoint() {
    let device = Default::default();
    let dir = temp("nan");
    let mut trainer =
        Trainer::new(base(32), settings(6, 4, 1, TargetNetwork::StopGrad), step()).unwrap();
    let mut source = Poisoned {
        inner: source(),
        bad: 3,
    };
    let err = session::run(
        &mut trainer,
        &mut source,
        Some(&teacher()),
        &mut NoHooks,
        &options(dir.clone(), 2),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Diverged { step: 3, .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("step 3") && message.contains("lr") && message.contains("step-00000002"),
        "{message}"
    );
    // The good checkpoint is intact and loads.
    let mut fresh =
        Trainer::new(base(32), settings(6, 4, 1, TargetNetwork::StopGrad), step()).unwrap();
    fresh
        .load_checkpoint(&dir.join("checkpoints/step-00000002"))
        .unwrap();
    assert_eq!(fresh.step, 2);
}

#[test]
fn only_the_newest_checkpoints_are_kept() {
    let device = Default::default();
    let dir = temp("keep");
    let mut trainer =
        Trainer::new(base(32), settings(5, 4, 1, TargetNetwork::StopGrad), step()).unwrap();
    session::run(
        &mut trainer,
        &mut source(),
        Some(&teacher()),
        &mut NoHooks,
        &options(dir.clone(), 1),
        &device,
    )
    .unwrap();
    let kept: Vec<u64> = cm_train::checkpoint::list(&dir.join("checkpoints"))
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![4, 5]);
}

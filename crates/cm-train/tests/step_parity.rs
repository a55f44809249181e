//! The consistency step and the LoRA gradients against PyTorch: diffusers' UNet with a peft LoRA
//! (the 14 LCM targets, non-zero), the step written in plain torch from the mission's equations
//! (`scripts/gen_training_fixtures.py`). Online prediction, neighbour, target, loss and every LoRA
//! gradient agree to < 1e-4 relative error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor, TensorData};
use cm_io::compare::relative_error;
use cm_losses::Loss;
use cm_models::lora_file;
use cm_models::unet::UNet2DConditionModel;
use cm_models::{Component, WeightVariant};
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::{PredictionType, SchedulerConfig};
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::solver::{DdimSolver, SolverVariant};
use cm_train::draws::StepDraws;
use cm_train::params;
use cm_train::sd::SdUnet;
use cm_train::step::{ConsistencyStep, Neighbour, ParameterisationKind, StepBatch};

type F = burn_flex::Flex;
type A = Autodiff<F>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn golden() -> BTreeMap<String, TensorData> {
    cm_io::read_tensors(fixtures().join("golden/training.safetensors")).unwrap()
}

/// The tiny UNet on the autodiff backend with the peft fixture LoRA as the trainable adapter.
fn student() -> UNet2DConditionModel<A> {
    let device = Default::default();
    let (mut unet, _, _) = UNet2DConditionModel::<A>::from_folder(
        fixtures().join("tiny-sd/unet"),
        WeightVariant::Full,
        DType::F32,
        &device,
    )
    .unwrap();
    lora_file::load_into(
        &mut unet,
        fixtures().join("lora/lcm14_peft.safetensors"),
        "train",
    )
    .unwrap();
    unet
}

/// Our gradient paths in the diffusers file's keys and layout.
fn torch_grads<M: AutodiffModule<A>>(
    module: &M,
    grads: &GradientsParams,
    prefix: &str,
) -> BTreeMap<String, TensorData> {
    let named = params::trainable_params(module);
    let by_path = params::gradients_by_path(module, &named, grads);
    named
        .iter()
        .map(|p| {
            let key = p
                .path
                .strip_prefix(prefix)
                .unwrap()
                .replace(".lora.0.down.weight", ".lora_A.weight")
                .replace(".lora.0.up.weight", ".lora_B.weight");
            let mut data = by_path[&p.path].clone();
            if p.linear_weight {
                let [a, b] = [p.shape[0], p.shape[1]];
                data = Tensor::<F, 2>::from_data(data, &Default::default())
                    .transpose()
                    .into_data();
                assert_eq!(data.shape.to_vec(), vec![b, a]);
            }
            (format!("unet.{key}"), data)
        })
        .collect()
}

fn compare_grads(
    ours: &BTreeMap<String, TensorData>,
    golden: &BTreeMap<String, TensorData>,
    case: &str,
) -> f64 {
    let prefix = format!("{case}.grad.");
    let theirs: BTreeMap<&str, &TensorData> = golden
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k, v)))
        .collect();
    assert_eq!(theirs.len(), ours.len(), "{case}: number of LoRA gradients");
    assert!(
        theirs.len() > 200,
        "{case}: the 14 targets on the tiny UNet"
    );
    let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, 0.0f64);
    for (key, t) in theirs {
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("{case}: no gradient for {key}"));
        let a = o.clone().convert::<f64>().to_vec::<f64>().unwrap();
        let b = t.clone().convert::<f64>().to_vec::<f64>().unwrap();
        assert_eq!(o.shape, t.shape, "{key}");
        diff += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        norm += b.iter().map(|y| y * y).sum::<f64>();
        worst = worst.max(
            relative_error(o, t).min(1.0)
                * (b.iter().map(|y| y * y).sum::<f64>() > 1e-20) as u8 as f64,
        );
    }
    let global = (diff / norm).sqrt();
    println!("{case}: LoRA gradients rel. error {global:.2e} (worst tensor {worst:.2e})");
    assert!(global < 1e-4, "{case}: gradients differ by {global}");
    global
}

#[test]
fn lora_gradients_equal_peft() {
    let g = golden();
    let device = Default::default();
    let unet = student();
    let sample = Tensor::<A, 4>::from_data(g["simple.sample"].clone(), &device);
    let t = g["simple.timestep"].clone().to_vec::<f32>().unwrap();
    let cond = Tensor::<A, 3>::from_data(g["cond"].clone(), &device);
    let loss = unet
        .forward(sample, &t, cond, None)
        .unwrap()
        .powi_scalar(2)
        .mean();
    let loss_error = relative_error(&loss.clone().into_data(), &g["simple.loss"]);
    assert!(loss_error < 1e-5, "loss {loss_error}");
    let grads = GradientsParams::from_grads(loss.backward(), &unet);
    compare_grads(&torch_grads(&unet, &grads, ""), &g, "simple");
}

struct Case {
    name: &'static str,
    neighbour: Neighbour,
    parameterisation: ParameterisationKind,
    segments: usize,
    solver: SolverVariant,
    loss: Loss,
}

#[test]
fn the_consistency_step_equals_the_pytorch_reference() {
    let g = golden();
    let device: burn::tensor::Device<F> = Default::default();
    let schedule = NoiseSchedule::new(
        &SchedulerConfig::from_json_file(
            fixtures().join("tiny-sd/scheduler/scheduler_config.json"),
        )
        .unwrap(),
    );
    let base = student();
    let mut teacher_unet = base.valid();
    cm_lora::remove(&mut teacher_unet, "train").unwrap();
    let teacher = SdUnet {
        unet: teacher_unet,
        prediction_type: PredictionType::Epsilon,
    };
    let tensor = |k: &str| g[k].clone();
    let batch = StepBatch::<F, 3> {
        x0: Tensor::from_data(tensor("x0"), &device),
        condition: Tensor::from_data(tensor("cond"), &device),
        uncondition: Tensor::from_data(tensor("uncond"), &device),
    };
    let huber = Loss::PseudoHuber { c: 0.001 };
    let cases = [
        Case {
            name: "cd_ddim_l2",
            neighbour: Neighbour::Teacher,
            parameterisation: ParameterisationKind::DdimToBoundary,
            segments: 1,
            solver: SolverVariant::Seed,
            loss: Loss::L2,
        },
        Case {
            name: "cd_lcm_huber",
            neighbour: Neighbour::Teacher,
            parameterisation: ParameterisationKind::Lcm,
            segments: 1,
            solver: SolverVariant::Diffusers,
            loss: huber,
        },
        Case {
            name: "mb4_ddim_huber",
            neighbour: Neighbour::Teacher,
            parameterisation: ParameterisationKind::DdimToBoundary,
            segments: 4,
            solver: SolverVariant::Seed,
            loss: huber,
        },
        Case {
            name: "ct_ddim_huber",
            neighbour: Neighbour::Analytic,
            parameterisation: ParameterisationKind::DdimToBoundary,
            segments: 1,
            solver: SolverVariant::Seed,
            loss: huber,
        },
    ];
    for case in cases {
        let step = ConsistencyStep {
            schedule: schedule.clone(),
            solver: DdimSolver::new(schedule.clone(), 50, case.solver).unwrap(),
            boundaries: BoundarySet::evenly_spaced(case.segments, 1000, 50).unwrap(),
            parameterisation: case.parameterisation,
            timestep_scaling: 10.0,
            loss: case.loss,
            neighbour: case.neighbour,
        };
        let key = |k: &str| format!("{}.{k}", case.name);
        let draws = StepDraws::<F> {
            solver_index: g[&key("index")]
                .clone()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            noise: Tensor::from_data(tensor("noise"), &device),
            guidance: g[&key("w")].clone().to_vec::<f32>().unwrap(),
            drop_condition: vec![false, false],
        };
        let student = SdUnet {
            unet: base.clone(),
            prediction_type: PredictionType::Epsilon,
        };
        let target = student.valid();
        let out = step
            .forward(&student, &target, Some(&teacher), &batch, &draws)
            .unwrap();
        let check = |what: &str, ours: TensorData| {
            let err = relative_error(&ours, &g[&key(what)]);
            println!("{}: {what} rel. error {err:.2e}", case.name);
            assert!(err < 1e-4, "{}: {what} differs by {err}", case.name);
        };
        check("x_t", out.x_t.clone().into_data());
        check("x_s", out.x_s.clone().into_data());
        check("online", out.online.clone().into_data());
        check("target", out.target.clone().into_data());
        check("loss", out.loss.clone().into_data());
        let grads = GradientsParams::from_grads(out.loss.backward(), &student);
        compare_grads(&torch_grads(&student, &grads, "unet."), &g, case.name);
    }
}

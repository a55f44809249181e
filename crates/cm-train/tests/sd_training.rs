//! Training runs on the tiny SD1.5-shaped fixture pipeline: three steps of each method (loss
//! finite, LoRA factors moved, frozen weights bit-identical, outputs written and loadable), exact
//! resume, and bad inputs stopped before any weight is loaded.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use cm_lora::{LoraConfig, TargetSelector};
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion};
use cm_models::unet::UNet2DConditionModel;
use cm_models::Component;
use cm_schedulers::config::{PredictionType, SchedulerClass, SchedulerConfig};
use cm_schedulers::schedule::NoiseSchedule;
use cm_train::config::{Method, PeersPerDevice, RunConfig};
use cm_train::run::{consistency_step, loop_settings, run};
use cm_train::sd::SdUnet;
use cm_train::sd_data::{items, load_latents, LatentSource};
use cm_train::trainer::Trainer;

type F = burn_flex::Flex;
type A = Autodiff<F>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-train-sd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(method: Method, out: PathBuf, steps: u64) -> RunConfig {
    let mut c = RunConfig::preset(method);
    c.model.teacher = Some(fixtures().join("tiny-sd"));
    c.model.lora_rank = 4;
    c.model.lora_alpha = 4.0;
    c.data.synthetic_items = 8;
    c.train.steps = steps;
    c.train.batch_size = 2;
    c.output.dir = out;
    c.output.log_every = 1;
    c.output.validation_prompts = vec![];
    c
}

#[test]
fn three_steps_of_each_method_train_only_the_lora_and_write_loadable_outputs() {
    for method in [Method::Ct, Method::Cd, Method::Multiboundary] {
        let out = temp(method.name());
        let mut c = config(method, out.clone(), 3);
        if method == Method::Cd {
            // One run draws the comparison grid.
            c.output.validation_prompts = vec!["a large red circle in the center".into()];
        }
        let outcome = run::<F>(&c, false, &Default::default()).unwrap();
        assert_eq!(outcome.records.len(), 3);
        assert!(outcome
            .records
            .iter()
            .all(|r| r.loss.is_finite() && r.loss > 0.0));
        for file in [
            "config.toml",
            "metrics.jsonl",
            "loss.png",
            "checkpoints/step-00000003/trainable.safetensors",
        ] {
            assert!(out.join(file).is_file(), "{method:?}: {file} missing");
        }
        if method == Method::Cd {
            assert!(out.join("comparison.png").is_file());
        }
        // The saved config reads back as what ran.
        let saved = RunConfig::from_toml_file(&out.join("config.toml"), method).unwrap();
        assert_eq!(saved, c);
        // The checkpoint holds the LoRA factors only.
        let trainable =
            cm_io::read_tensors(out.join("checkpoints/step-00000003/trainable.safetensors"))
                .unwrap();
        assert!(!trainable.is_empty() && trainable.keys().all(|k| k.contains(".lora.0.")));
        // The LoRA file loads into the teacher's UNet as `sample --lora` does, and is not zero.
        let lora = outcome.lora.expect("a LoRA run writes a LoRA file");
        let (mut unet, _, _) = UNet2DConditionModel::<F>::from_folder(
            fixtures().join("tiny-sd/unet"),
            cm_models::WeightVariant::Full,
            DType::F32,
            &Default::default(),
        )
        .unwrap();
        let report = cm_models::lora_file::load_into(&mut unet, &lora, "loaded").unwrap();
        assert!(report.layers > 50, "{report:?}");
        let up_norm: f64 = cm_lora::export(&unet, "loaded")
            .unwrap()
            .layers
            .values()
            .flat_map(|f| f.up.clone().convert::<f32>().to_vec::<f32>().unwrap())
            .map(|v| (v as f64).powi(2))
            .sum();
        assert!(
            up_norm > 0.0,
            "{method:?}: the LoRA up factors moved from zero"
        );
    }
}

#[test]
fn the_frozen_base_is_bit_identical_after_training() {
    let device = Default::default();
    let out = temp("frozen");
    let c = config(Method::Cd, out.clone(), 2);
    let sd = StableDiffusion::<F>::load(
        fixtures().join("tiny-sd"),
        PipelineLoadOptions::default(),
        &device,
    )
    .unwrap();
    let scheduler = SchedulerConfig::from_json_value_as(
        &sd.scheduler_config,
        &sd.scheduler_config_path(),
        Some(SchedulerClass::Ddim),
    )
    .unwrap();
    let schedule = NoiseSchedule::new(&scheduler);
    let data = load_latents(
        &sd,
        items(&c.data, 32, &out).unwrap(),
        32,
        true,
        &out.join("cache"),
        &device,
    )
    .unwrap();
    let mut source = LatentSource::new(data, 2, 0);
    let mut student = UNet2DConditionModel::<A>::from_inner(sd.unet.clone());
    cm_lora::inject(
        &mut student,
        "train",
        &LoraConfig::new(4, 4.0),
        &TargetSelector::names(cm_lora::LCM_LORA_TARGETS),
    )
    .unwrap();
    let student = SdUnet {
        unet: student,
        prediction_type: PredictionType::Epsilon,
    };
    let teacher = SdUnet {
        unet: sd.unet.clone(),
        prediction_type: PredictionType::Epsilon,
    };
    let before = cm_models::weights::export_tensors(&sd.unet).unwrap();
    let mut trainer = Trainer::new(
        student,
        loop_settings(&c),
        consistency_step(&c, &schedule).unwrap(),
    )
    .unwrap();
    for _ in 0..2 {
        trainer
            .train_step(&mut source, Some(&teacher), &device)
            .unwrap();
    }
    let mut after_student = trainer.student.valid().unet;
    cm_lora::remove(&mut after_student, "train").unwrap();
    let after = cm_models::weights::export_tensors(&after_student).unwrap();
    assert_eq!(before.len(), after.len());
    for (key, value) in &before {
        assert_eq!(value, &after[key], "frozen weight {key} changed");
    }
    // The teacher (the same base) is untouched too.
    assert_eq!(
        cm_models::weights::export_tensors(&teacher.unet).unwrap(),
        before
    );
}

#[test]
fn a_stopped_run_resumed_gives_the_same_losses() {
    let straight_dir = temp("straight");
    let straight = run::<F>(
        &config(Method::Cd, straight_dir, 4),
        false,
        &Default::default(),
    )
    .unwrap();
    let dir = temp("resumed");
    run::<F>(
        &config(Method::Cd, dir.clone(), 2),
        false,
        &Default::default(),
    )
    .unwrap();
    // Without --resume an earlier run's checkpoints are not overwritten.
    let err = run::<F>(
        &config(Method::Cd, dir.clone(), 4),
        false,
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let resumed = run::<F>(
        &config(Method::Cd, dir.clone(), 4),
        true,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        resumed.resumed_from,
        Some(dir.join("checkpoints/step-00000002"))
    );
    let losses = |r: &[cm_train::trainer::StepRecord]| r.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&resumed.records), losses(&straight.records[2..]));
    // The metrics log equals the uninterrupted run's.
    let lines = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&dir), 4);
}

#[test]
fn a_wrong_teacher_folder_is_named_before_anything_loads() {
    let out = temp("bad-teacher");
    let mut c = config(Method::Cd, out, 1);
    c.model.teacher = Some(fixtures().join("tiny-sd/unet"));
    let err = run::<F>(&c, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_index.json") && err.contains("tiny-sd/unet"),
        "{err}"
    );
    let mut c = config(Method::Cd, temp("bad-data"), 1);
    c.data.dir = Some(PathBuf::from("/definitely/not/here"));
    let err = run::<F>(&c, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.dir") && err.contains("/definitely/not/here"),
        "{err}"
    );
}

#[test]
fn a_whole_unet_student_with_a_guidance_embedding_writes_a_unet_folder_sample_loads() {
    use cm_models::config_json::JsonConfig;
    let out = temp("whole-unet");
    let mut c = config(Method::Cd, out.clone(), 2);
    c.model.trainable = cm_train::config::Trainable::Unet;
    c.model.guidance_embedding_dim = 256;
    c.train.lr = 1e-5;
    c.consistency.guidance = cm_train::draws::GuidanceDraw::Uniform { min: 2.0, max: 8.0 };
    let outcome = run::<F>(&c, false, &Default::default()).unwrap();
    assert!(outcome.lora.is_none());
    let dir = outcome.unet.expect("a whole-UNet run writes unet/");
    let config = cm_models::unet::UNetConfig::from_json_file(dir.join("config.json")).unwrap();
    assert_eq!(config.time_cond_proj_dim, Some(256));
    // The folder loads strictly (every key, nothing unused) and samples with w as an input.
    let (unet, _, report) = UNet2DConditionModel::<F>::from_folder(
        &dir,
        cm_models::WeightVariant::Full,
        DType::F32,
        &Default::default(),
    )
    .unwrap();
    assert!(
        report.unused.is_empty() && report.fresh.is_empty(),
        "{report}"
    );
    let sd = StableDiffusion::<F>::load(
        fixtures().join("tiny-sd"),
        PipelineLoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let scheduler = SchedulerConfig::from_json_value_as(
        &sd.scheduler_config,
        &sd.scheduler_config_path(),
        Some(SchedulerClass::Lcm),
    )
    .unwrap();
    let options = cm_train::sampling::SampleOptions {
        sampler: cm_train::sampling::SamplerKind::Lcm,
        steps: 2,
        guidance_scale: 5.0,
        height: 32,
        width: 32,
        ..Default::default()
    };
    let out = cm_train::sampling::sample_with_unet(
        &sd,
        &unet,
        &scheduler,
        &["a red circle"],
        &[],
        &options,
        None,
        &mut cm_train::sampling::HostNoise::new(0),
        &mut |_| {},
        &Default::default(),
    )
    .unwrap();
    assert!(out.images.is_finite().all().into_scalar());
    // The checkpoint holds the whole UNet (cond_proj included).
    let trainable =
        cm_io::read_tensors(out_dir(&c).join("checkpoints/step-00000002/trainable.safetensors"))
            .unwrap();
    assert!(trainable.contains_key("unet.time_embedding.cond_proj.weight"));
    assert!(trainable.len() > 300);
}

fn out_dir(c: &RunConfig) -> PathBuf {
    c.output.dir.clone()
}

#[test]
fn a_bf16_frozen_base_trains_f32_factors_with_finite_losses() {
    let out = temp("bf16");
    let mut c = config(Method::Cd, out, 2);
    c.model.frozen_dtype = cm_train::config::FrozenDtype::Bf16;
    let outcome = run::<F>(&c, false, &Default::default()).unwrap();
    assert!(outcome.records.iter().all(|r| r.loss.is_finite()));
    let (tensors, _) = cm_io::read_tensors_and_header(outcome.lora.unwrap()).unwrap();
    assert!(
        tensors.values().all(|t| t.dtype == DType::F32),
        "LoRA factors stay f32"
    );
}

#[test]
fn unreadable_training_images_are_skipped_and_counted_or_named() {
    // A folder of images with captions, one of them corrupt.
    let data = temp("bad-images-data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..4 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, (i * 60) as u8])
        });
        img.save(data.join(format!("{i}.png"))).unwrap();
        std::fs::write(data.join(format!("{i}.txt")), format!("image number {i}")).unwrap();
    }
    std::fs::write(data.join("broken.png"), b"not a png").unwrap();
    std::fs::write(data.join("broken.txt"), "a broken image").unwrap();
    let mut c = config(Method::Cd, temp("bad-images-skip"), 1);
    c.data.dir = Some(data.clone());
    run::<F>(&c, false, &Default::default()).unwrap();
    let mut c = config(Method::Cd, temp("bad-images-stop"), 1);
    c.data.dir = Some(data);
    c.data.skip_bad = false;
    let err = run::<F>(&c, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.png"), "{err}");
}

#[test]
fn two_data_parallel_devices_or_peers_train_like_one_with_the_whole_batch() {
    burn::collective::reset_collective::<F>();
    let mut single = config(Method::Cd, temp("dp-single"), 2);
    single.train.batch_size = 2;
    let single = run::<F>(&single, false, &Default::default()).unwrap();
    let mut two = config(Method::Cd, temp("dp-two"), 2);
    two.train.batch_size = 1;
    two.train.devices = 2;
    let devices = vec![Default::default(); 2];
    let two = cm_train::run::run_on_devices::<F>(&two, false, &devices).unwrap();
    // Two peers on one device, sharing its batch of 2 (and one frozen pipeline).
    burn::collective::reset_collective::<F>();
    let mut split = config(Method::Cd, temp("dp-split"), 2);
    split.train.batch_size = 2;
    split.train.peers_per_device = PeersPerDevice::Count(2);
    let split = run::<F>(&split, false, &Default::default()).unwrap();
    let saved = std::fs::read_to_string(split.out.join("config.toml")).unwrap();
    assert!(
        saved.contains("batch_size = 2") && saved.contains("peers_per_device = 2"),
        "config.toml records the config as given:\n{saved}"
    );
    for (other, what) in [(&two, "two devices"), (&split, "two peers on one device")] {
        assert_eq!(other.records.len(), single.records.len(), "{what}");
        for (a, b) in single.records.iter().zip(&other.records) {
            assert!(
                (a.loss - b.loss).abs() <= 1e-4 * a.loss.abs(),
                "loss {} vs {} ({what})",
                a.loss,
                b.loss
            );
        }
    }
    let read = |p: &PathBuf| cm_io::read_tensors(p).unwrap();
    let (a, b) = (
        read(single.lora.as_ref().unwrap()),
        read(two.lora.as_ref().unwrap()),
    );
    assert_eq!(a.len(), b.len());
    for (key, x) in &a {
        let err = cm_io::compare::relative_error(&b[key], x);
        assert!(
            err < 1e-3
                || x.clone()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .all(|v| v.abs() < 1e-6),
            "{key}: {err}"
        );
    }
}

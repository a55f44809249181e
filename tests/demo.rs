//! The demo path, fast: the three training examples' default configs resolved exactly as the
//! binaries resolve them (no flags but a few steps and a small batch) run on the committed demo
//! teacher and write every promised output; and the teacher recipe itself trains, saves a
//! diffusers folder and loads back (tiny sizes, a few steps).

use std::path::PathBuf;

use burn::tensor::Tensor;
use clap::Parser;
use consistency_models::backend::{AutodiffBackend, Backend};
use consistency_models::cli::{default_teacher, TrainArgs};
use consistency_models::models::pipeline::{PipelineLoadOptions, StableDiffusion};
use consistency_models::train::config::Method;
use consistency_models::train::teacher::{
    demo_teacher_dir, save_pipeline, train_teacher, TeacherRecipe,
};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-demo-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_default_teacher_is_the_committed_demo_teacher() {
    let teacher = default_teacher();
    assert!(
        teacher.ends_with("assets/demo-teacher"),
        "{}",
        teacher.display()
    );
    assert_eq!(
        std::fs::canonicalize(&teacher).unwrap(),
        std::fs::canonicalize(demo_teacher_dir()).unwrap()
    );
    // Loads with the default options, as every command loads it.
    StableDiffusion::<Backend>::load(
        &teacher,
        PipelineLoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
}

#[test]
fn each_training_example_runs_its_defaults_on_the_demo_teacher() {
    for method in [Method::Ct, Method::Cd, Method::Multiboundary] {
        let out = temp(method.name());
        let args = TrainArgs::try_parse_from([
            "demo",
            "--steps",
            "2",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let mut config = args.resolve(method).unwrap();
        assert!(config
            .model
            .teacher
            .as_ref()
            .unwrap()
            .ends_with("assets/demo-teacher"));
        config.data.synthetic_items = 8;
        config.output.validation_prompts.truncate(1);
        let outcome =
            consistency_models::train::run::run::<Backend>(&config, false, &Default::default())
                .unwrap();
        assert_eq!(outcome.records.len(), 2);
        assert!(outcome.records.iter().all(|r| r.loss.is_finite()));
        let lora = outcome.lora.expect("a LoRA run writes its LoRA");
        assert!(lora.is_file(), "{}", lora.display());
        for file in ["comparison.png", "config.toml", "metrics.jsonl", "loss.png"] {
            assert!(
                out.join(file).is_file(),
                "{method:?}: {file} missing in {}",
                out.display()
            );
        }
        let grid = image::open(out.join("comparison.png")).unwrap();
        // One prompt row; CD/CT: teacher 50, teacher 4, student 1, 2, 4 = 5 columns; multi-boundary: 3.
        let columns = if method == Method::Multiboundary {
            3
        } else {
            5
        };
        assert!(
            grid.width() >= columns * 32 && grid.width() < (columns + 1) * 32 + 64,
            "{method:?}: {}",
            grid.width()
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A teacher of the demo's shape at 16 px with a few steps per phase.
fn tiny_recipe() -> TeacherRecipe {
    TeacherRecipe {
        side: 16,
        vae_channels: vec![16, 16],
        unet_channels: vec![32, 32],
        text_width: 32,
        text_layers: 1,
        vae_steps: 2,
        unet_steps: 3,
        batch: 2,
        snapshot_every: 2,
        ..Default::default()
    }
}

#[test]
fn a_tiny_teacher_recipe_trains_saves_and_loads_as_a_pipeline() {
    let recipe = tiny_recipe();
    let out = temp("teacher");
    let tokenizer =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/tokenizer");
    let mut snapshots = 0;
    let mut phases = Vec::new();
    let teacher = train_teacher::<AutodiffBackend>(
        &recipe,
        &Default::default(),
        &mut |phase, step, total, loss| {
            assert!(loss.is_finite());
            phases.push((phase.to_string(), step, total));
        },
        &mut |_| {
            snapshots += 1;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(
        snapshots, 1,
        "a snapshot at UNet step 2 of 3 (not at the end)"
    );
    assert_eq!(phases.first().unwrap(), &("vae".to_string(), 1, 2));
    assert_eq!(phases.last().unwrap(), &("unet".to_string(), 3, 3));
    save_pipeline(&teacher, &out, burn::tensor::DType::F16, &tokenizer).unwrap();
    let sd =
        StableDiffusion::<Backend>::load(&out, PipelineLoadOptions::default(), &Default::default())
            .unwrap();
    assert_eq!(sd.vae_scale_factor(), 2);
    assert!((sd.vae.scaling_factor - teacher.vae.scaling_factor).abs() < 1e-6);
    assert!(out
        .join("unet/diffusion_pytorch_model.fp16.safetensors")
        .is_file());

    // Continuing from the folder: the VAE (and its scaling factor) kept, one more UNet step.
    let resumed = train_teacher::<AutodiffBackend>(
        &TeacherRecipe {
            unet_steps: 1,
            snapshot_every: 0,
            resume_from: Some(out.clone()),
            ..recipe.clone()
        },
        &Default::default(),
        &mut |phase, _, _, _| assert_eq!(phase, "unet", "no VAE phase when resuming"),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(resumed.vae.scaling_factor, sd.vae.scaling_factor);
    assert_eq!(resumed.configs.1, teacher.configs.1);

    // Sharpening the folder's decoder alone: the encoder (so the latent space) and the UNet stay
    // as saved, the decoder moves.
    let mut decoder_phases = Vec::new();
    let sharpened = train_teacher::<AutodiffBackend>(
        &TeacherRecipe {
            unet_steps: 0,
            decoder_steps: 2,
            snapshot_every: 0,
            resume_from: Some(out.clone()),
            ..recipe.clone()
        },
        &Default::default(),
        &mut |phase, step, _, loss| {
            assert!(loss.is_finite());
            decoder_phases.push((phase.to_string(), step));
        },
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(
        decoder_phases,
        [("decoder".to_string(), 1), ("decoder".to_string(), 2)]
    );
    assert!(sharpened.final_losses.decoder > 0.0);
    let image = Tensor::<Backend, 4>::random(
        [2, 3, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    );
    let moved = |a: Tensor<Backend, 4>, b: Tensor<Backend, 4>| (a - b).abs().max().into_scalar();
    let (before, after) = (
        sd.vae.encode(image.clone()).unwrap(),
        sharpened.vae.encode(image).unwrap(),
    );
    assert!(
        moved(before.mean.clone(), after.mean.clone()) < 1e-6,
        "encoder frozen"
    );
    assert!(
        moved(before.logvar, after.logvar) < 1e-6,
        "quant_conv frozen"
    );
    assert!(
        moved(
            sd.vae.decode(before.mean.clone()),
            sharpened.vae.decode(before.mean)
        ) > 1e-4,
        "the decoder trained"
    );
    let probe = Tensor::<Backend, 4>::ones([1, 4, 8, 8], &Default::default());
    let unet_out = |unet: &consistency_models::models::unet::UNet2DConditionModel<Backend>| {
        let context = Tensor::<Backend, 3>::ones([1, 77, 32], &Default::default());
        unet.forward(probe.clone(), &[500.0], context, None)
            .unwrap()
    };
    assert!(
        moved(unet_out(&sd.unet), unet_out(&sharpened.unet)) < 1e-6,
        "UNet kept"
    );

    // A new UNet on the folder's VAE: no VAE phase, the VAE's weights and scaling factor as saved,
    // the UNet of the new recipe (one level deeper here).
    let fresh = train_teacher::<AutodiffBackend>(
        &TeacherRecipe {
            unet_channels: vec![32, 32, 64],
            vae_channels: vec![16],
            unet_steps: 1,
            snapshot_every: 0,
            vae_from: Some(out.clone()),
            ..recipe.clone()
        },
        &Default::default(),
        &mut |phase, _, _, _| assert_eq!(phase, "unet", "no VAE phase with vae_from"),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(fresh.vae.scaling_factor, sd.vae.scaling_factor);
    assert_eq!(
        fresh.configs.0["block_out_channels"],
        serde_json::json!([16, 16])
    );
    assert_eq!(
        fresh.configs.1["block_out_channels"],
        serde_json::json!([32, 32, 64])
    );
    assert_eq!(fresh.configs.1["sample_size"], serde_json::json!(8));
    let probe = Tensor::<Backend, 4>::ones([1, 4, 8, 8], &Default::default());
    let same = fresh.vae.decode(probe.clone()) - sd.vae.decode(probe);
    assert!(
        same.abs().max().into_scalar() < 1e-6,
        "the VAE is the folder's"
    );
    // A VAE whose latents the UNet cannot halve enough is refused, naming the folder.
    let refused = train_teacher::<AutodiffBackend>(
        &TeacherRecipe {
            unet_channels: vec![32, 32, 32, 32, 32],
            vae_channels: vec![16],
            vae_from: Some(out.clone()),
            ..recipe.clone()
        },
        &Default::default(),
        &mut |_, _, _, _| {},
        &mut |_| Ok(()),
    );
    let message = refused
        .err()
        .expect("8x8 latents cannot be halved 4 times")
        .to_string();
    assert!(
        message.contains("--vae-from") && message.contains("halvings"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn teacher_recipes_the_configs_cannot_build_are_named() {
    let bad = [
        TeacherRecipe {
            vae_channels: vec![16, 24],
            ..Default::default()
        },
        TeacherRecipe {
            unet_channels: vec![],
            ..Default::default()
        },
        TeacherRecipe {
            side: 30,
            ..Default::default()
        },
        TeacherRecipe {
            unet_steps: 0,
            ..Default::default()
        },
    ];
    for (recipe, word) in bad
        .iter()
        .zip(["vae_channels", "unet_channels", "side", "unet_steps 0"])
    {
        let message = recipe.check().unwrap_err().to_string();
        assert!(message.contains(word), "{message}");
    }
    TeacherRecipe::default().check().unwrap();
}

#[test]
fn two_peers_train_the_same_teacher_as_one_and_stop_together_on_an_error() {
    let recipe = TeacherRecipe {
        decoder_steps: 2,
        batch: 4,
        ..tiny_recipe()
    };
    let train = |peers: usize| {
        let mut losses = Vec::new();
        let mut snapshots = 0;
        let teacher = train_teacher::<AutodiffBackend>(
            &TeacherRecipe {
                peers,
                ..recipe.clone()
            },
            &Default::default(),
            &mut |phase, step, _, loss| losses.push((phase.to_string(), step, loss)),
            &mut |_| {
                snapshots += 1;
                Ok(())
            },
        )
        .unwrap();
        (teacher, losses, snapshots)
    };
    let (one, one_losses, one_snapshots) = train(1);
    let (two, two_losses, two_snapshots) = train(2);
    assert_eq!(one_losses.len(), 7, "2 VAE + 2 decoder + 3 UNet steps");
    assert_eq!((one_snapshots, two_snapshots), (1, 1));
    for ((phase, step, a), (phase2, step2, b)) in one_losses.iter().zip(&two_losses) {
        assert_eq!((phase, step), (phase2, step2));
        // Every phase compares: the modules start from the recipe's seed (drawn on the host), not
        // from the backend's global RNG that other tests of this binary draw from concurrently.
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "{phase} step {step}: loss {a} with one peer, {b} with two"
        );
    }
    let latents = Tensor::<Backend, 4>::random(
        [2, 4, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let decoded = |t: &consistency_models::train::teacher::TrainedTeacher<Backend>| {
        t.vae.decode(latents.clone())
    };
    let err = (decoded(&one) - decoded(&two)).abs().max().into_scalar();
    assert!(err < 1e-3, "the two VAEs decode differently: {err}");

    // A snapshot that fails stops both peers after that step (nobody is left waiting).
    let outcome = train_teacher::<AutodiffBackend>(
        &TeacherRecipe {
            peers: 2,
            ..recipe.clone()
        },
        &Default::default(),
        &mut |_, _, _, _| {},
        &mut |_| {
            Err(consistency_models::train::TrainError::Invalid(
                "disk full".into(),
            ))
        },
    );
    match outcome {
        Err(err) => assert!(err.to_string().contains("disk full"), "{err}"),
        Ok(_) => panic!("a failing snapshot must stop the training"),
    }
}

#[test]
fn teacher_modules_start_from_the_recipe_seed_whatever_the_backend_rng_holds() {
    use burn::tensor::backend::Backend as _;
    use consistency_models::models::clip::ClipTextConfig;
    use consistency_models::models::config_json::JsonConfig;
    use consistency_models::models::unet::UNetConfig;
    use consistency_models::models::vae::VaeConfig;
    use consistency_models::train::params::{initialize_on_host, trainable_params, values_of};
    use consistency_models::train::teacher::configs;
    use std::collections::BTreeMap;
    use std::path::Path;

    let (vae_json, unet_json, text_json) = configs(&tiny_recipe());
    let at = Path::new("config.json");
    let vae = VaeConfig::from_json_str_at(&vae_json.to_string(), at).unwrap();
    let unet = UNetConfig::from_json_str_at(&unet_json.to_string(), at).unwrap();
    let text = ClipTextConfig::from_json_str_at(&text_json.to_string(), at).unwrap();
    let device = Default::default();
    fn values<M: burn::module::Module<AutodiffBackend>>(
        module: M,
        seed: u64,
    ) -> BTreeMap<String, Vec<f32>> {
        let module = initialize_on_host(module, seed).unwrap();
        values_of(&module, &trainable_params(&module))
            .into_iter()
            .map(|(path, data)| (path, data.convert::<f32>().to_vec().unwrap()))
            .collect()
    }
    let all = |backend_seed: u64, seed: u64| {
        AutodiffBackend::seed(&device, backend_seed);
        [
            values(vae.init::<AutodiffBackend>(&device), seed),
            values(unet.init::<AutodiffBackend>(&device), seed),
            values(text.init::<AutodiffBackend>(&device), seed),
        ]
    };
    let first = all(1, 5);
    assert_eq!(
        first,
        all(2, 5),
        "the backend's seed changed the initial values"
    );
    let other = all(1, 6);
    for (a, b) in first.iter().zip(&other) {
        let same = a.iter().filter(|(k, v)| b[*k] == **v).count();
        // Only the constant parameters (norm scales and shifts) agree between seeds.
        let constant = a
            .values()
            .filter(|v| v.iter().all(|x| x.to_bits() == v[0].to_bits()))
            .count();
        assert_eq!(same, constant, "another seed must draw other values");
    }
    // Burn's (and PyTorch's) default distributions: U(+-1/sqrt(fan_in)) for a conv weight and its
    // bias, N(0, 1) for the token embedding, ones for a norm's scale.
    let unet_values = &first[1];
    let conv = &unet_values["conv_in.weight"];
    let bound = 1.0 / ((4 * 3 * 3) as f32).sqrt();
    let max = conv.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max <= bound && max > 0.9 * bound,
        "conv_in.weight: max |w| {max}, bound {bound}"
    );
    let bias_max = unet_values["conv_in.bias"]
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!(bias_max <= bound, "conv_in.bias: {bias_max} > {bound}");
    let tokens = &first[2]["embeddings.token_embedding.weight"];
    let mean = tokens.iter().sum::<f32>() / tokens.len() as f32;
    let var = tokens.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / tokens.len() as f32;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
        "N(0, 1)? mean {mean}, var {var}"
    );
    assert!(unet_values["conv_norm_out.gamma"].iter().all(|&v| v == 1.0));

    // A randomly initialised parameter of another kind is named, not silently kept.
    let transposed =
        burn::nn::conv::ConvTranspose2dConfig::new([2, 3], [3, 3]).init::<AutodiffBackend>(&device);
    let err = initialize_on_host(transposed, 5).unwrap_err().to_string();
    assert!(
        err.contains("weight") && err.contains("ConvTranspose2d"),
        "{err}"
    );
}

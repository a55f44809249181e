//! The bad-input corpus of `sample` and the loaders it shares with training (issue [robust]): each
//! case is built here from the tiny fixture pipeline, and must end in an error whose message names
//! the file / key / flag and what was expected: no panic, no abort, no destroyed file, no exit 0
//! with a garbage image. docs/testing.md lists the cases.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use clap::Parser;
use consistency_models::sample_cli::{sample_with, SampleArgs};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-bad-input-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the tiny pipeline (components symlinked) in which `component` is a real copy that the
/// case may change.
fn pipeline(name: &str, component: Option<&str>) -> PathBuf {
    let root = temp(name).join("pipe");
    std::fs::create_dir_all(&root).unwrap();
    let source = fixtures().join("tiny-sd");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let target = root.join(&name);
        if Some(name.to_str().unwrap()) == component {
            if entry.path().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                for file in std::fs::read_dir(entry.path()).unwrap() {
                    let file = file.unwrap();
                    std::fs::copy(file.path(), target.join(file.file_name())).unwrap();
                }
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
    root
}

/// `sample` with `extra` flags, on the tiny fixture pipeline unless `extra` names a `--model`
/// (the corpus's files, a kohya LoRA among them, are made for that pipeline).
fn args(extra: &[&str]) -> SampleArgs {
    let tiny = fixtures().join("tiny-sd");
    let mut all = vec!["sample"];
    if !extra.contains(&"--model") {
        all.extend(["--model", tiny.to_str().unwrap()]);
    }
    all.extend_from_slice(extra);
    SampleArgs::try_parse_from(all).unwrap()
}

/// Runs `sample`, which must fail without panicking; returns the message.
fn fails(args: &SampleArgs) -> String {
    let result = std::panic::catch_unwind(|| sample_with(args));
    match result {
        Ok(Ok(())) => panic!("expected an error for {args:?}"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("panicked instead of an error for {args:?}"),
    }
}

fn assert_names(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "`{w}` missing from: {message}");
    }
}

/// Rewrites one tensor of a safetensors file.
fn edit_tensor(path: &Path, key: &str, f: impl FnOnce(&TensorData) -> TensorData) {
    let mut tensors = cm_io_read(path);
    let new = f(&tensors[key]);
    tensors.insert(key.to_string(), new);
    consistency_models::io::write_tensors(path, &tensors, &BTreeMap::new()).unwrap();
}

fn cm_io_read(path: &Path) -> BTreeMap<String, TensorData> {
    consistency_models::io::read_tensors(path).unwrap()
}

fn with_nan(t: &TensorData) -> TensorData {
    let mut v = t.clone().convert::<f32>().to_vec::<f32>().unwrap();
    v[0] = f32::NAN;
    TensorData::new(v, t.shape.clone())
}

fn out_in(dir: &Path) -> String {
    dir.join("out.png").to_str().unwrap().to_string()
}

#[test]
fn integer_weights_are_refused_not_a_crash() {
    for (component, file, key) in [
        (
            "unet",
            "diffusion_pytorch_model.safetensors",
            "conv_in.weight",
        ),
        (
            "text_encoder",
            "model.safetensors",
            "final_layer_norm.weight",
        ),
    ] {
        let pipe = pipeline(&format!("int-{component}"), Some(component));
        let path = pipe.join(component).join(file);
        edit_tensor(&path, key, |t| {
            TensorData::new(vec![1i32; t.shape.iter().product()], t.shape.clone())
        });
        let out = out_in(pipe.parent().unwrap());
        let message = fails(&args(&["--model", pipe.to_str().unwrap(), "--out", &out]));
        assert_names(&message, &["I32", "float", file]);
        assert!(!Path::new(&out).exists(), "nothing written");
    }
}

#[test]
fn special_output_files_are_written_through_not_replaced() {
    sample_with(&args(&["--steps", "1", "--out", "/dev/null"])).unwrap();
    assert!(
        !std::fs::symlink_metadata("/dev/null").unwrap().is_file(),
        "/dev/null stays a device"
    );
    let dir = temp("symlink-out");
    let real = dir.join("real.png");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.join("link.png");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    sample_with(&args(&["--steps", "1", "--out", link.to_str().unwrap()])).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(&std::fs::read(&real).unwrap()[1..4], b"PNG");
    // A .jpg name gets JPEG bytes; an unknown extension is refused before any load.
    let jpg = dir.join("image.jpg");
    sample_with(&args(&["--steps", "1", "--out", jpg.to_str().unwrap()])).unwrap();
    assert_eq!(&std::fs::read(&jpg).unwrap()[..2], &[0xFF, 0xD8]);
    let message = fails(&args(&["--out", dir.join("image.bmp").to_str().unwrap()]));
    assert_names(&message, &[".bmp", ".png"]);
    let message = fails(&args(&["--out", dir.to_str().unwrap()]));
    assert_names(&message, &["--out", "directory"]);
}

#[test]
fn huge_requests_are_refused_before_allocating() {
    let message = fails(&args(&["--height", "4611686018427387904"]));
    assert_names(&message, &["--height"]);
    let message = fails(&args(&["--height", "65536", "--width", "65536"]));
    assert_names(&message, &["--height", "--width", "--batch", "available"]);
    let message = fails(&args(&[
        "--batch", "256", "--height", "4096", "--width", "4096",
    ]));
    assert_names(&message, &["--batch"]);
    let pipe = pipeline("huge-sample-size", Some("unet"));
    let config = pipe.join("unet/config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"sample_size\": 16", "\"sample_size\": 100000000");
    std::fs::write(&config, text).unwrap();
    let message = fails(&args(&["--model", pipe.to_str().unwrap()]));
    assert_names(&message, &["sample_size", "config.json", "1..="]);
}

#[test]
fn zero_widths_in_configs_name_the_key() {
    for (component, from, to, key) in [
        (
            "unet",
            "\"block_out_channels\": [\n    32,",
            "\"block_out_channels\": [\n    0,",
            "block_out_channels",
        ),
        (
            "unet",
            "\"in_channels\": 4",
            "\"in_channels\": 0",
            "in_channels",
        ),
        (
            "vae",
            "\"latent_channels\": 4",
            "\"latent_channels\": 0",
            "latent_channels",
        ),
    ] {
        let pipe = pipeline(&format!("zero-{key}"), Some(component));
        let config = pipe.join(component).join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(from), "fixture changed: {from}");
        std::fs::write(&config, text.replace(from, to)).unwrap();
        let message = fails(&args(&["--model", pipe.to_str().unwrap()]));
        assert_names(&message, &[key, "config.json"]);
    }
}

#[test]
fn arguments_that_are_not_utf8_are_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'a', 0xFF, b'b']);
    let err =
        SampleArgs::try_parse_from([OsString::from("sample"), OsString::from("--prompt"), bad])
            .unwrap_err();
    assert!(
        err.to_string().contains("UTF-8") || err.to_string().contains("utf"),
        "{err}"
    );
    // A flag missing its value does not swallow the next flag.
    let err = SampleArgs::try_parse_from(["sample", "--prompt", "--steps", "4"]).unwrap_err();
    assert!(err.to_string().contains("--prompt"), "{err}");
}

#[test]
fn non_finite_inputs_are_named_instead_of_a_black_image() {
    // NaN in the UNet or the VAE weights.
    for (component, file, key) in [
        (
            "unet",
            "diffusion_pytorch_model.safetensors",
            "conv_out.weight",
        ),
        (
            "vae",
            "diffusion_pytorch_model.safetensors",
            "decoder.conv_out.weight",
        ),
    ] {
        let pipe = pipeline(&format!("nan-{component}"), Some(component));
        edit_tensor(&pipe.join(component).join(file), key, with_nan);
        let message = fails(&args(&[
            "--model",
            pipe.to_str().unwrap(),
            "--out",
            &out_in(pipe.parent().unwrap()),
        ]));
        assert_names(&message, &[key, "NaN", file]);
    }
    // NaN in a LoRA file.
    let dir = temp("nan-lora");
    let lora = dir.join("lora.safetensors");
    std::fs::copy(fixtures().join("lora/lcm14_peft.safetensors"), &lora).unwrap();
    let (tensors, header) = consistency_models::io::read_tensors_and_header(&lora).unwrap();
    let key = tensors
        .keys()
        .find(|k| k.ends_with("lora_B.weight"))
        .unwrap()
        .clone();
    let mut tensors = tensors;
    let bad = with_nan(&tensors[&key]);
    tensors.insert(key.clone(), bad);
    consistency_models::io::write_tensors(&lora, &tensors, &header.metadata).unwrap();
    let message = fails(&args(&[
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        &out_in(&dir),
    ]));
    assert_names(
        &message,
        &[
            "lora.safetensors",
            "NaN",
            key.trim_end_matches(".lora_B.weight"),
        ],
    );
    // NaN initial latents.
    let latents = dir.join("latents.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "latents".to_string(),
        TensorData::new(vec![f32::NAN; 4 * 16 * 16], [1, 4, 16, 16]),
    );
    consistency_models::io::write_tensors(&latents, &t, &BTreeMap::new()).unwrap();
    let message = fails(&args(&[
        "--init-latents",
        latents.to_str().unwrap(),
        "--out",
        &out_in(&dir),
    ]));
    assert_names(&message, &["latents.safetensors", "NaN"]);
    // An absurd guidance scale.
    let message = fails(&args(&["--guidance", "3e38"]));
    assert_names(&message, &["--guidance", "3e38", "[0, 100]"]);
    // A kohya alpha of -1e30.
    let kohya = dir.join("kohya.safetensors");
    let mut tensors = cm_io_read(&fixtures().join("lora/lcm14_kohya.safetensors"));
    let alpha_key = tensors
        .keys()
        .find(|k| k.ends_with(".alpha"))
        .unwrap()
        .clone();
    tensors.insert(
        alpha_key.clone(),
        TensorData::new(vec![-1e30f32], [0usize; 0]),
    );
    consistency_models::io::write_tensors(&kohya, &tensors, &BTreeMap::new()).unwrap();
    let message = fails(&args(&[
        "--lora",
        kohya.to_str().unwrap(),
        "--out",
        &out_in(&dir),
    ]));
    assert_names(&message, &[&alpha_key, "alpha"]);
    // Betas outside (0, 1).
    let pipe = pipeline("betas", Some("scheduler"));
    let config = pipe.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"beta_end\": 0.012", "\"beta_end\": 1.5");
    std::fs::write(&config, text).unwrap();
    let message = fails(&args(&["--model", pipe.to_str().unwrap()]));
    assert_names(&message, &["beta_end", "scheduler_config.json", "(0, 1)"]);
}

#[test]
fn quiet_acceptance_is_gone() {
    // An empty merges.txt.
    let pipe = pipeline("merges", Some("tokenizer"));
    std::fs::write(pipe.join("tokenizer/merges.txt"), "#version: 0.2\n").unwrap();
    let message = fails(&args(&[
        "--model",
        pipe.to_str().unwrap(),
        "--out",
        &out_in(pipe.parent().unwrap()),
    ]));
    assert_names(&message, &["merges.txt", "no merges"]);
    // A weight path that is a directory, or a dangling symlink, does not fall back to fp16.
    let pipe = pipeline("weights-dir", Some("unet"));
    let full = pipe.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&full).unwrap();
    std::fs::create_dir(&full).unwrap();
    let message = fails(&args(&[
        "--model",
        pipe.to_str().unwrap(),
        "--out",
        &out_in(pipe.parent().unwrap()),
    ]));
    assert_names(
        &message,
        &["diffusion_pytorch_model.safetensors", "directory"],
    );
    std::fs::remove_dir(&full).unwrap();
    std::os::unix::fs::symlink(pipe.join("nowhere"), &full).unwrap();
    let message = fails(&args(&[
        "--model",
        pipe.to_str().unwrap(),
        "--out",
        &out_in(pipe.parent().unwrap()),
    ]));
    assert_names(
        &message,
        &["diffusion_pytorch_model.safetensors", "dangling"],
    );
    // A LoRA whose metadata declares another rank than its tensors.
    let dir = temp("rank");
    let lora = dir.join("rank.safetensors");
    let (tensors, mut header) = consistency_models::io::read_tensors_and_header(
        fixtures().join("lora/attn_peft.safetensors"),
    )
    .unwrap();
    let meta = header.metadata.get_mut("lora_adapter_metadata").unwrap();
    let mut json: serde_json::Value = serde_json::from_str(meta).unwrap();
    json["unet.r"] = serde_json::json!(16);
    *meta = json.to_string();
    consistency_models::io::write_tensors(&lora, &tensors, &header.metadata).unwrap();
    let message = fails(&args(&[
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        &out_in(&dir),
    ]));
    assert_names(&message, &["rank.safetensors", "rank 16", "r"]);
    // model_index.json of another pipeline class.
    let pipe = pipeline("class", Some("model_index.json"));
    let index = pipe.join("model_index.json");
    let text = std::fs::read_to_string(&index)
        .unwrap()
        .replace("StableDiffusionPipeline", "StableDiffusionXLPipeline");
    std::fs::write(&index, text).unwrap();
    let message = fails(&args(&[
        "--model",
        pipe.to_str().unwrap(),
        "--out",
        &out_in(pipe.parent().unwrap()),
    ]));
    assert_names(
        &message,
        &[
            "model_index.json",
            "_class_name",
            "StableDiffusionXLPipeline",
        ],
    );
}

#[test]
fn messages_name_files_and_flags() {
    // The scheduler error names the scheduler file, and nothing is loaded first.
    let pipe = pipeline("sched", Some("scheduler"));
    let config = pipe.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\"beta_schedule\": \"scaled_linear\"",
        "\"beta_schedule\": \"cosine\"",
    );
    std::fs::write(&config, text).unwrap();
    let message = fails(&args(&["--model", pipe.to_str().unwrap()]));
    assert_names(&message, &["scheduler_config.json", "beta_schedule"]);
    // The boundaries error speaks of the flag.
    let err = SampleArgs::try_parse_from(["sample", "--boundaries", "60"]).unwrap_err();
    assert!(err.to_string().contains("--boundaries"), "{err}");
    // A missing LoRA file or output folder is named before any load.
    let message = fails(&args(&["--lora", "/no/such/lora.safetensors"]));
    assert_names(&message, &["--lora", "/no/such/lora.safetensors"]);
    let message = fails(&args(&["--out", "/no/such/folder/out.png"]));
    assert_names(&message, &["--out", "/no/such/folder"]);
}

#[test]
fn long_prompts_report_the_part_that_is_cut() {
    let tokenizer = consistency_models::models::clip::ClipTokenizer::sd15().unwrap();
    let long = format!(
        "{} the very end of the prompt",
        "a red fox in the snow ".repeat(20)
    );
    let cut = tokenizer.truncated_part(&long).unwrap().expect("too long");
    assert!(cut.ends_with("the very end of the prompt"), "{cut}");
    assert!(tokenizer.truncated_part("a red fox").unwrap().is_none());
}

//! `CLIPTextModel` against transformers on the tiny fixture encoder (golden tensors from
//! `scripts/gen_fixtures.py`), weight-file variants, and the errors of bad weight files.

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, TensorData};
use cm_io::{read_tensors, write_tensors};
use cm_models::clip::{ClipTextConfig, ClipTextModel};
use cm_models::config_json::JsonConfig;
use cm_models::{Component, ModelError};
use common::{device, fixtures, golden, relative_error, TestBackend};

fn encoder_dir() -> std::path::PathBuf {
    fixtures().join("tiny-sd/text_encoder")
}

fn load(file: &str) -> ClipTextModel<TestBackend> {
    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let (model, report) = config
        .init::<TestBackend>(&device())
        .load_safetensors(file, DType::F32)
        .unwrap();
    assert!(report.unused.is_empty(), "{report}");
    model
}

fn run(model: &ClipTextModel<TestBackend>) -> (TensorData, TensorData) {
    let g = golden("text_encoder.safetensors");
    let ids = Tensor::<TestBackend, 2, Int>::from_data(g["input_ids"].clone(), &device());
    let out = model.forward(ids).unwrap();
    (
        out.last_hidden_state.into_data(),
        out.pooler_output.into_data(),
    )
}

#[test]
fn fp32_weights_match_transformers() {
    let model = load(encoder_dir().join("model.safetensors").to_str().unwrap());
    let g = golden("text_encoder.safetensors");
    let (hidden, pooled) = run(&model);
    let e_hidden = relative_error(&hidden, &g["last_hidden_state"]);
    let e_pooled = relative_error(&pooled, &g["pooler_output"]);
    println!("text encoder rel. error: hidden {e_hidden:e}, pooled {e_pooled:e}");
    assert!(e_hidden < 1e-4, "last_hidden_state rel. error {e_hidden}");
    assert!(e_pooled < 1e-4, "pooler_output rel. error {e_pooled}");
}

#[test]
fn fp16_weights_load_into_f32_modules() {
    // The fp16 file is derived from the reference weights (the fixture keeps only fp32 for size).
    let path = common::fp16_copy(&encoder_dir().join("model.safetensors"), "te-fp16");
    let model = load(path.to_str().unwrap());
    let weight = model.embeddings.token_embedding.weight.val();
    assert_eq!(
        weight.dtype(),
        DType::F32,
        "fp16 weights must be cast on load"
    );
    let g = golden("text_encoder.safetensors");
    let (hidden, _) = run(&model);
    let error = relative_error(&hidden, &g["last_hidden_state"]);
    // fp16 rounding of the weights only (compute stays f32).
    assert!(error < 1e-2, "fp16 weights rel. error {error}");
}

#[test]
fn keys_with_and_without_text_model_prefix_load_the_same() {
    // The fixture file (transformers 5) has no prefix; the SD1.5 repository's file has
    // `text_model.` and the `position_ids` buffer. Both must give the same model.
    let base_path = encoder_dir().join("model.safetensors");
    let tensors = read_tensors(&base_path).unwrap();
    let had_prefix = tensors.keys().all(|k| k.starts_with("text_model."));
    let mut other: BTreeMap<String, TensorData> = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = if had_prefix {
                k["text_model.".len()..].to_string()
            } else {
                format!("text_model.{k}")
            };
            (k, v)
        })
        .collect();
    let position_ids = if had_prefix {
        "embeddings.position_ids"
    } else {
        "text_model.embeddings.position_ids"
    };
    other.insert(
        position_ids.into(),
        TensorData::new((0..77i64).collect::<Vec<_>>(), [1, 77]),
    );
    let path = common::temp_dir("te-prefix").join("model.safetensors");
    write_tensors(&path, &other, &BTreeMap::new()).unwrap();

    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let (variant, report) = config
        .init::<TestBackend>(&device())
        .load_safetensors(&path, DType::F32)
        .unwrap();
    assert_eq!(
        report.ignored,
        vec![position_ids.to_string()],
        "position_ids is reported as ignored"
    );
    let (a, _) = run(&load(base_path.to_str().unwrap()));
    let (b, _) = run(&variant);
    assert_eq!(a, b, "both key namings must give the same model");
}

#[test]
fn sd15_preset_equals_published_config() {
    let path = fixtures().join("../../assets/sd15/text_encoder/config.json");
    let parsed = ClipTextConfig::from_json_file(path).unwrap();
    assert_eq!(parsed, ClipTextConfig::sd15());
}

#[test]
#[ignore = "builds the full 123M-parameter SD1.5 text encoder (about 0.5 GB); run with --ignored"]
fn sd15_text_encoder_parameter_count() {
    let model = ClipTextConfig::sd15().init::<TestBackend>(&device());
    assert_eq!(model.num_params(), 123_060_480);
}

#[test]
fn tiny_parameter_count_matches_file() {
    let model = load(encoder_dir().join("model.safetensors").to_str().unwrap());
    let file = read_tensors(encoder_dir().join("model.safetensors")).unwrap();
    let in_file: usize = file
        .iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(_, t)| t.num_elements())
        .sum();
    assert_eq!(model.num_params(), in_file);
}

#[test]
fn unsupported_config_values_are_rejected_with_the_key() {
    let err = ClipTextConfig::from_json_str(r#"{"hidden_act": "relu"}"#).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedConfig { ref key, .. } if key == "hidden_act"),
        "{err}"
    );
    let err = ClipTextConfig::from_json_str(r#"{"hidden_size": 30, "num_attention_heads": 4}"#)
        .unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
    let err = ClipTextConfig::from_json_str(r#"{"hidden_size": "big"}"#).unwrap_err();
    assert!(matches!(err, ModelError::ConfigParse { .. }), "{err}");
}

#[test]
fn out_of_range_token_ids_are_an_error() {
    // The range is checked on the host (the forward pass never reads ids back from the device).
    let model = load(encoder_dir().join("model.safetensors").to_str().unwrap());
    let err = model.check_ids(&[49406, 50000]).unwrap_err();
    assert!(
        err.to_string().contains("50000") && err.to_string().contains("0..49408"),
        "{err}"
    );
    assert!(model.check_ids(&[-1]).is_err());
    model.check_ids(&[49406, 320, 49407]).unwrap();
}

#[test]
fn truncated_weights_file_is_a_clear_error() {
    let dir = common::temp_dir("te-truncated");
    let bytes = std::fs::read(encoder_dir().join("model.safetensors")).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(&path, DType::F32)
        .unwrap_err();
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("model.safetensors") && message.contains("truncated"),
        "{message}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(&garbage, DType::F32)
        .unwrap_err();
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err}");
    assert!(err.to_string().contains("garbage.safetensors"), "{err}");

    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(dir.join("absent.safetensors"), DType::F32)
        .unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

/// Rewrites the fixture with one tensor changed by `edit`.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, TensorData>),
) -> std::path::PathBuf {
    let mut tensors = read_tensors(encoder_dir().join("model.safetensors")).unwrap();
    edit(&mut tensors);
    let path = common::temp_dir(name).join("model.safetensors");
    write_tensors(&path, &tensors, &BTreeMap::new()).unwrap();
    path
}

fn fc1_key(tensors: &BTreeMap<String, TensorData>) -> String {
    tensors
        .keys()
        .find(|k| k.ends_with("layers.1.mlp.fc1.weight"))
        .unwrap()
        .clone()
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let mut key = String::new();
    let path = edited_copy("te-shape", |t| {
        key = fc1_key(t);
        t.insert(
            key.clone(),
            TensorData::new(vec![0.5f32; 36 * 32], [36, 32]),
        );
    });
    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(&path, DType::F32)
        .unwrap_err();
    match &err {
        ModelError::ShapeMismatch {
            key: k,
            expected,
            found,
            path: p,
        } => {
            assert_eq!(k, &key);
            assert_eq!(
                expected,
                &vec![37, 32],
                "expected shape in the file's (PyTorch) layout"
            );
            assert_eq!(found, &vec![36, 32]);
            assert!(p.ends_with("model.safetensors"));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&key) && message.contains("[36, 32]") && message.contains("[37, 32]"),
        "{message}"
    );
}

#[test]
fn missing_key_is_named() {
    let mut key = String::new();
    let path = edited_copy("te-missing", |t| {
        key = fc1_key(t);
        t.remove(&key);
    });
    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(&path, DType::F32)
        .unwrap_err();
    assert!(matches!(err, ModelError::MissingKey { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("encoder.layers.1.mlp.fc1.weight"),
        "{message}"
    );
    assert!(message.contains("[37, 32]"), "{message}");
}

#[test]
fn unexpected_extra_key_is_an_error() {
    let path = edited_copy("te-extra", |t| {
        t.insert(
            "text_model.something_else.weight".into(),
            TensorData::new(vec![1.0f32; 4], [4]),
        );
    });
    let config = ClipTextConfig::from_json_file(encoder_dir().join("config.json")).unwrap();
    let err = config
        .init::<TestBackend>(&device())
        .load_safetensors(&path, DType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("something_else"), "{err}");
}

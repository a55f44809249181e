//! peft / diffusers and kohya key layouts: round trips, alphas from metadata, malformed files.

use std::collections::BTreeMap;

use burn::tensor::{DType, TensorData};
use cm_lora::formats::{from_kohya, from_peft, to_kohya, to_peft, ADAPTER_METADATA_KEY};
use cm_lora::{LayerFactors, LoraError, LoraFormat, LoraWeights};

fn data(shape: &[usize], seed: f32) -> TensorData {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    TensorData::new(values, shape.to_vec())
}

fn weights() -> LoraWeights {
    let mut w = LoraWeights::default();
    let layer = |down: &[usize], up: &[usize], alpha: f64, seed: f32| LayerFactors {
        down: data(down, seed),
        up: data(up, seed + 1.0),
        up_bias: None,
        alpha,
        source: None,
    };
    w.layers.insert(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q".into(),
        layer(&[4, 32], &[32, 4], 8.0, 0.0),
    );
    w.layers.insert(
        "down_blocks.0.resnets.0.conv1".into(),
        layer(&[4, 32, 3, 3], &[32, 4, 1, 1], 2.0, 5.0),
    );
    w.layers.insert(
        "down_blocks.0.resnets.0.time_emb_proj".into(),
        layer(&[2, 128], &[32, 2], 8.0, 9.0),
    );
    w
}

fn same_numbers(a: &LoraWeights, b: &LoraWeights) -> bool {
    a.layers.len() == b.layers.len()
        && a.layers.iter().zip(&b.layers).all(|((ka, x), (kb, y))| {
            ka == kb && x.down == y.down && x.up == y.up && x.alpha == y.alpha
        })
}

#[test]
fn peft_round_trip_keeps_factors_and_per_layer_alphas() {
    let w = weights();
    let (tensors, metadata) = to_peft(&w, DType::F32).unwrap();
    assert!(tensors.contains_key(
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    ));
    assert!(tensors.keys().all(|k| k.starts_with("unet.")));
    let config: serde_json::Value = serde_json::from_str(&metadata[ADAPTER_METADATA_KEY]).unwrap();
    assert_eq!(config["unet.r"], 4);
    assert_eq!(config["unet.lora_alpha"], 8);
    assert_eq!(
        config["unet.alpha_pattern"]["down_blocks.0.resnets.0.conv1"],
        2
    );
    assert_eq!(
        config["unet.rank_pattern"]["down_blocks.0.resnets.0.time_emb_proj"],
        2
    );
    let back = from_peft(tensors, &metadata).unwrap();
    assert!(same_numbers(&back, &w));
    assert_eq!(
        back.layers["down_blocks.0.resnets.0.conv1"]
            .source
            .as_deref(),
        Some("unet.down_blocks.0.resnets.0.conv1")
    );
}

#[test]
fn peft_without_metadata_uses_alpha_equal_rank_and_reads_rslora() {
    let (tensors, metadata) = to_peft(&weights(), DType::F32).unwrap();
    let bare = from_peft(tensors.clone(), &BTreeMap::new()).unwrap();
    assert!(bare.layers.values().all(|f| f.alpha == f.rank() as f64));
    let mut config: serde_json::Value =
        serde_json::from_str(&metadata[ADAPTER_METADATA_KEY]).unwrap();
    config["unet.use_rslora"] = true.into();
    let rs = BTreeMap::from([(ADAPTER_METADATA_KEY.to_string(), config.to_string())]);
    let w = from_peft(tensors, &rs).unwrap();
    let q = &w.layers["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"];
    assert_eq!(q.alpha / 4.0, 8.0 / 2.0, "rsLoRA scale alpha / sqrt(r)");
}

#[test]
fn fp16_export_reads_back_to_the_same_fp16_values() {
    let (tensors, metadata) = to_peft(&weights(), DType::F16).unwrap();
    assert!(tensors.values().all(|t| t.dtype == DType::F16));
    let back = from_peft(tensors.clone(), &metadata).unwrap();
    let (again, _) = to_peft(&back, DType::F16).unwrap();
    assert_eq!(tensors, again);
}

#[test]
fn kohya_round_trip_resolves_underscores_with_the_model_paths() {
    let w = weights();
    let tensors = to_kohya(&w, DType::F32).unwrap();
    assert!(tensors.contains_key(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    ));
    assert_eq!(
        tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]
            .shape
            .to_vec(),
        Vec::<usize>::new()
    );
    let paths: Vec<String> = w.layers.keys().cloned().collect();
    assert!(same_numbers(
        &from_kohya(tensors.clone(), &paths).unwrap(),
        &w
    ));
    let error = from_kohya(tensors, &paths[..2]).unwrap_err();
    assert!(
        matches!(&error, LoraError::KeyMismatch { key, .. } if key.contains("time_emb_proj")),
        "{error}"
    );
}

#[test]
fn malformed_files_name_the_key() {
    let (mut tensors, metadata) = to_peft(&weights(), DType::F32).unwrap();
    let b = "unet.down_blocks.0.resnets.0.conv1.lora_B.weight";
    tensors.remove(b);
    let error = from_peft(tensors.clone(), &metadata).unwrap_err();
    assert!(error.to_string().contains(b), "{error}");
    tensors.insert(
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight".into(),
        data(&[4, 32], 0.0),
    );
    let error = from_peft(tensors, &metadata).unwrap_err();
    assert!(error.to_string().contains("text_encoder"), "{error}");
    let bad_meta = BTreeMap::from([(ADAPTER_METADATA_KEY.to_string(), "{".to_string())]);
    let (tensors, _) = to_peft(&weights(), DType::F32).unwrap();
    let error = from_peft(tensors, &bad_meta).unwrap_err();
    assert!(error.to_string().contains(ADAPTER_METADATA_KEY), "{error}");
    let mut biased = weights();
    biased.layers.values_mut().next().unwrap().up_bias = Some(data(&[32], 0.0));
    assert!(to_kohya(&biased, DType::F32).is_err(), "kohya has no bias");
    assert!(to_peft(&biased, DType::I64).is_err());
}

#[test]
fn format_is_detected_from_keys() {
    let (peft, _) = to_peft(&weights(), DType::F32).unwrap();
    let kohya = to_kohya(&weights(), DType::F32).unwrap();
    assert_eq!(LoraFormat::detect(peft.keys()).unwrap(), LoraFormat::Peft);
    assert_eq!(LoraFormat::detect(kohya.keys()).unwrap(), LoraFormat::Kohya);
    let other = ["model.diffusion_model.out.2.weight".to_string()];
    assert!(LoraFormat::detect(other.iter()).is_err());
}

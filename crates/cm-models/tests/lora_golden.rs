//! LoRA files made by peft / diffusers (`scripts/gen_lora_fixtures.py`) on the tiny UNet: loading
//! both formats gives diffusers' output, our exports have the diffusers key sets and round-trip
//! exactly, default targets equal peft's, merge is exact, bad files are named and change nothing.

mod common;

use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor, TensorData};
use cm_io::{read_tensors, write_tensors, SafetensorsHeader};
use cm_lora::{LoraConfig, LoraFormat, TargetSelector, ATTENTION_TARGETS, LCM_LORA_TARGETS};
use cm_models::unet::{UNet2DConditionModel, UNetConfig};
use cm_models::{lora_file, Component, ModelError, WeightVariant};
use common::{device, fixtures, golden, relative_error, temp_dir, TestBackend};

type B = TestBackend;

fn tiny_unet() -> UNet2DConditionModel<B> {
    UNet2DConditionModel::<B>::from_folder(
        fixtures().join("tiny-sd/unet"),
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap()
    .0
}

fn lora(name: &str) -> std::path::PathBuf {
    fixtures().join("lora").join(name)
}

fn forward(unet: &UNet2DConditionModel<B>) -> TensorData {
    let g = golden("lora.safetensors");
    let t = |k: &str| g[k].clone();
    unet.forward(
        Tensor::from_data(t("sample"), &device()),
        &t("timestep").convert::<f32>().to_vec::<f32>().unwrap(),
        Tensor::from_data(t("encoder_hidden_states"), &device()),
        None,
    )
    .unwrap()
    .into_data()
}

fn shapes(path: &std::path::Path) -> BTreeMap<String, Vec<usize>> {
    SafetensorsHeader::read(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, e)| (k, e.shape))
        .collect()
}

#[test]
fn peft_and_kohya_files_give_the_diffusers_output() {
    let g = golden("lora.safetensors");
    let cases = [
        ("attn_peft.safetensors", "out_attn"),
        ("attn_kohya.safetensors", "out_attn"),
        ("lcm14_peft.safetensors", "out_lcm14"),
        ("lcm14_kohya.safetensors", "out_lcm14"),
        ("lcm14_peft_fp16.safetensors", "out_lcm14_fp16"),
    ];
    let base = forward(&tiny_unet());
    assert!(relative_error(&base, &g["out_base"]) < 1e-4);
    for (file, out) in cases {
        let mut unet = tiny_unet();
        let report = lora_file::load_into(&mut unet, lora(file), "test").unwrap();
        let ours = forward(&unet);
        let error = relative_error(&ours, &g[out]);
        println!(
            "{file}: {} layers, rel. error vs diffusers {error:e}",
            report.layers
        );
        assert!(error < 1e-4, "{file}: rel. error {error}");
        assert!(
            relative_error(&ours, &base) > 0.05,
            "{file} changes the output"
        );
    }
}

#[test]
fn default_targets_select_exactly_the_layers_peft_selects() {
    let unet = tiny_unet();
    for (targets, file) in [
        (&LCM_LORA_TARGETS[..], "lcm14_peft.safetensors"),
        (&ATTENTION_TARGETS[..], "attn_peft.safetensors"),
    ] {
        let ours = cm_lora::plan(
            &unet,
            "x",
            &LoraConfig::new(4, 4.0),
            &TargetSelector::names(targets.iter().copied()),
        )
        .unwrap()
        .layers;
        let mut peft: Vec<String> = shapes(&lora(file))
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight"))
            .map(|k| k.trim_start_matches("unet.").to_string())
            .collect();
        peft.sort();
        let mut ours = ours;
        ours.sort();
        assert_eq!(ours, peft, "{file}");
    }
}

#[test]
fn sd15_rank64_trainable_parameters_equal_peft() {
    // From `scripts/gen_lora_fixtures.py` (peft 0.21.2 on the SD1.5 UNet config, meta device):
    // {"lcm14": 67252224, "lcm14_layers": 278, "attn": 12754944, "attn_layers": 128}.
    // Burn initialises parameters lazily, so this builds the SD1.5 structure without its weights.
    let unet = UNetConfig::sd15().init::<B>(&device());
    let count = |targets: &[&str]| {
        let report = cm_lora::plan(
            &unet,
            "sd15",
            &LoraConfig::new(64, 64.0),
            &TargetSelector::names(targets.iter().copied()),
        )
        .unwrap();
        (report.trainable_params, report.layers.len())
    };
    assert_eq!(count(&LCM_LORA_TARGETS), (67_252_224, 278));
    assert_eq!(count(&ATTENTION_TARGETS), (12_754_944, 128));
}

#[test]
fn exports_have_the_diffusers_key_sets_and_round_trip_exactly() {
    let dir = temp_dir("lora-export");
    for (set, fp16) in [("attn", false), ("lcm14", false), ("lcm14", true)] {
        let dtype = if fp16 { DType::F16 } else { DType::F32 };
        let suffix = if fp16 { "_fp16" } else { "" };
        for (format, kind) in [(LoraFormat::Peft, "peft"), (LoraFormat::Kohya, "kohya")] {
            if fp16 && format == LoraFormat::Kohya {
                continue;
            }
            let reference = lora(&format!("{set}_{kind}{suffix}.safetensors"));
            let mut unet = tiny_unet();
            lora_file::load_into(&mut unet, &reference, "a").unwrap();
            let out = dir.join(format!("{set}_{kind}{suffix}.safetensors"));
            lora_file::save_from(&unet, "a", &out, format, dtype).unwrap();
            assert_eq!(shapes(&out), shapes(&reference), "{}", out.display());
            // Same tensors bit for bit (fp32 -> fp32, fp16 -> f32 model -> fp16).
            let (ours, theirs) = (
                read_tensors(&out).unwrap(),
                read_tensors(&reference).unwrap(),
            );
            for (key, tensor) in &theirs {
                assert_eq!(&ours[key], tensor, "{key} of {}", out.display());
            }
            // Import -> export -> import -> export is exact.
            let mut again = tiny_unet();
            lora_file::load_into(&mut again, &out, "b").unwrap();
            let first = cm_lora::export(&unet, "a").unwrap();
            assert!(cm_lora::export(&again, "b").unwrap().bit_equal(&first));
        }
    }
    // peft metadata carries the per-layer alphas diffusers needs.
    let header = SafetensorsHeader::read(dir.join("lcm14_peft.safetensors")).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&header.metadata[cm_lora::formats::ADAPTER_METADATA_KEY]).unwrap();
    assert_eq!(config["unet.lora_alpha"], 4);
    assert!(header
        .tensors
        .keys()
        .all(|k| !k.contains("base_model.model")));
}

#[test]
fn merged_unet_matches_the_unmerged_one_and_unmerge_restores_it() {
    let mut unet = tiny_unet();
    lora_file::load_into(&mut unet, lora("lcm14_peft.safetensors"), "lcm").unwrap();
    let unmerged = forward(&unet);
    cm_lora::merge(&mut unet, "lcm").unwrap();
    let error = relative_error(&forward(&unet), &unmerged);
    println!("merged vs unmerged rel. error {error:e}");
    assert!(error < 1e-5, "merged vs unmerged rel. error {error}");
    cm_lora::unmerge(&mut unet, "lcm").unwrap();
    cm_lora::set_active(&mut unet, &[]).unwrap();
    let error = relative_error(&forward(&unet), &golden("lora.safetensors")["out_base"]);
    assert!(error < 1e-4, "base restored: rel. error {error}");
}

#[test]
fn two_adapters_on_one_unet_switch() {
    let g = golden("lora.safetensors");
    let mut unet = tiny_unet();
    lora_file::load_into(&mut unet, lora("attn_peft.safetensors"), "attn").unwrap();
    lora_file::load_into(&mut unet, lora("lcm14_kohya.safetensors"), "lcm14").unwrap();
    for (active, out) in [
        ("attn", "out_attn"),
        ("lcm14", "out_lcm14"),
        ("attn", "out_attn"),
    ] {
        cm_lora::set_active(&mut unet, &[active]).unwrap();
        let error = relative_error(&forward(&unet), &g[out]);
        assert!(error < 1e-4, "{active}: rel. error {error}");
    }
}

#[test]
fn files_for_another_model_are_named_errors_that_change_nothing() {
    let dir = temp_dir("lora-bad");
    let mut unet = tiny_unet();
    let before = forward(&unet);

    // A key for a layer the model does not have.
    let mut tensors = read_tensors(lora("lcm14_kohya.safetensors")).unwrap();
    let key = "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight";
    let moved = tensors.remove(key).unwrap();
    tensors.insert(
        "lora_unet_down_blocks_5_resnets_0_conv1.lora_down.weight".into(),
        moved,
    );
    let file = dir.join("stray.safetensors");
    write_tensors(&file, &tensors, &BTreeMap::new()).unwrap();
    let error = lora_file::load_into(&mut unet, &file, "x").unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("stray.safetensors")
            && text.contains("lora_unet_down_blocks_5_resnets_0_conv1"),
        "{text}"
    );

    // The same file shapes on a wider UNet (another base model): shape error naming the key.
    let config = std::fs::read_to_string(fixtures().join("tiny-sd/unet/config.json"))
        .unwrap()
        .replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    let wide_config: UNetConfig =
        cm_models::config_json::JsonConfig::from_json_str(&config).unwrap();
    let mut wide = wide_config.init::<B>(&device());
    let error = lora_file::load_into(&mut wide, lora("attn_peft.safetensors"), "x").unwrap_err();
    assert!(
        matches!(&error, ModelError::Lora { error: cm_lora::LoraError::Shape { key, .. }, .. } if key.contains("attn2.to_k")),
        "{error}"
    );

    // Rank of lora_A and lora_B disagree.
    let mut tensors = read_tensors(lora("attn_peft.safetensors")).unwrap();
    let b = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight";
    tensors.insert(b.into(), TensorData::new(vec![0f32; 32 * 3], [32, 3]));
    let header = SafetensorsHeader::read(lora("attn_peft.safetensors")).unwrap();
    let file = dir.join("rank.safetensors");
    write_tensors(&file, &tensors, &header.metadata).unwrap();
    let error = lora_file::load_into(&mut unet, &file, "x").unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&b[..b.len() - ".lora_B.weight".len()]),
        "{error}"
    );

    // A truncated file.
    let bytes = std::fs::read(lora("attn_peft.safetensors")).unwrap();
    let file = dir.join("truncated.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let error = lora_file::load_into(&mut unet, &file, "x").unwrap_err();
    assert!(
        matches!(error, ModelError::CorruptWeights { .. }),
        "{error}"
    );

    assert!(
        cm_lora::adapter_names(&unet).is_empty(),
        "nothing half-applied"
    );
    assert_eq!(relative_error(&forward(&unet), &before), 0.0);

    // Writing into a folder that does not exist names the file.
    let (weights, _) = lora_file::read(lora("attn_peft.safetensors"), &unet).unwrap();
    let out = dir.join("missing-folder").join("out.safetensors");
    let error = lora_file::write(&out, &weights, LoraFormat::Peft, DType::F32).unwrap_err();
    assert!(
        matches!(&error, ModelError::Write { path, .. } if path == &out),
        "{error}"
    );
}

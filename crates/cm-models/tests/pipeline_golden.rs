//! Loading a whole diffusers Stable Diffusion folder: prompt encoding and latent decoding against
//! the diffusers pipeline run of the fixture script, fp16 variants, and broken folders.

mod common;

use burn::tensor::{DType, Tensor};
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion, WeightVariant};
use cm_models::ModelError;
use common::{device, fixtures, golden, relative_error, TestBackend};

type B = TestBackend;

fn tiny() -> StableDiffusion<B> {
    StableDiffusion::<B>::load(
        fixtures().join("tiny-sd"),
        PipelineLoadOptions::default(),
        &device(),
    )
    .unwrap()
}

#[test]
fn prompt_embeddings_match_diffusers_encode_prompt() {
    let sd = tiny();
    let g = golden("pipeline_ddim.safetensors");
    let (cond, uncond) = sd
        .encode_prompts_with_negative(
            &["a photograph of an astronaut riding a horse"],
            &[],
            &device(),
        )
        .unwrap();
    let e_cond = relative_error(&cond.into_data(), &g["prompt_embeds"]);
    let e_uncond = relative_error(&uncond.into_data(), &g["negative_prompt_embeds"]);
    assert!(
        e_cond < 1e-4 && e_uncond < 1e-4,
        "cond {e_cond}, uncond {e_uncond}"
    );
}

#[test]
fn decoding_final_latents_matches_the_pipeline_image() {
    let sd = tiny();
    let g = golden("pipeline_ddim.safetensors");
    let image = sd.decode_latents(Tensor::from_data(g["final_latents"].clone(), &device()));
    let error = relative_error(&image.into_data(), &g["image"]);
    println!("decoded image rel. error {error:e}");
    assert!(error < 1e-4, "decoded image rel. error {error}");
}

#[test]
fn folder_reports_what_it_loaded_and_skipped() {
    let sd = tiny();
    assert_eq!(sd.reports.len(), 3);
    assert!(sd
        .reports
        .iter()
        .all(|r| r.applied > 0 && r.unused.is_empty()));
    assert_eq!(sd.vae_scale_factor(), 2);
    assert!(sd.scheduler_config.get("_class_name").is_some());
    let skipped: Vec<&str> = sd
        .skipped_components
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(!skipped.contains(&"unet"));
}

#[test]
fn fp16_variant_loads_and_casts() {
    let options = PipelineLoadOptions {
        variant: WeightVariant::Fp16,
        ..Default::default()
    };
    // The fixture has fp16 copies of the UNet and VAE; derive the text encoder's.
    let dir = common::temp_dir("pipeline-fp16").join("tiny-sd");
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    let te = common::fp16_copy(
        &dir.join("text_encoder/model.safetensors"),
        "pipeline-fp16-te",
    );
    std::fs::copy(te, dir.join("text_encoder/model.fp16.safetensors")).unwrap();
    let sd = StableDiffusion::<B>::load(&dir, options, &device()).unwrap();
    assert!(sd.reports.iter().all(|r| r.file_dtypes.contains_key("F16")));
    assert_eq!(sd.unet.conv_in.base.weight.val().dtype(), DType::F32);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn missing_weight_file_is_named() {
    let dir = common::temp_dir("pipeline-missing").join("tiny-sd");
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    for name in [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
    ] {
        let _ = std::fs::remove_file(dir.join("unet").join(name));
    }
    let err =
        StableDiffusion::<B>::load(&dir, PipelineLoadOptions::default(), &device()).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("unet/diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}

#[test]
fn missing_model_index_and_wrong_class_are_named() {
    let err = StableDiffusion::<B>::load(
        common::temp_dir("pipeline-empty"),
        PipelineLoadOptions::default(),
        &device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("model_index.json"), "{err}");

    let dir = common::temp_dir("pipeline-class").join("tiny-sd");
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    let index = std::fs::read_to_string(dir.join("model_index.json")).unwrap();
    std::fs::write(
        dir.join("model_index.json"),
        index.replace("UNet2DConditionModel", "UNet2DModel"),
    )
    .unwrap();
    let err =
        StableDiffusion::<B>::load(&dir, PipelineLoadOptions::default(), &device()).unwrap_err();
    assert!(err.to_string().contains("UNet2DModel"), "{err}");
}

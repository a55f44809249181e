//! `AutoencoderKL` against diffusers on the tiny fixture VAE, the legacy attention namings, and
//! the SD1.5 preset.

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};
use cm_io::{read_tensors, write_tensors};
use cm_models::config_json::JsonConfig;
use cm_models::vae::{AutoencoderKL, VaeConfig};
use cm_models::Component;
use common::{device, fixtures, golden, relative_error, TestBackend};

type B = TestBackend;

fn vae_dir() -> std::path::PathBuf {
    fixtures().join("tiny-sd/vae")
}

fn load(path: &std::path::Path) -> AutoencoderKL<B> {
    let config = VaeConfig::from_json_file(vae_dir().join("config.json")).unwrap();
    config
        .init::<B>(&device())
        .load_safetensors(path, DType::F32)
        .unwrap()
        .0
}

fn encode_decode(vae: &AutoencoderKL<B>) -> (TensorData, TensorData, TensorData) {
    let g = golden("vae.safetensors");
    let posterior = vae
        .encode(Tensor::from_data(g["image"].clone(), &device()))
        .unwrap();
    let decoded = vae.decode(Tensor::from_data(g["latents"].clone(), &device()));
    (
        posterior.mean.into_data(),
        posterior.logvar.into_data(),
        decoded.into_data(),
    )
}

#[test]
fn tiny_vae_matches_diffusers() {
    let vae = load(&vae_dir().join("diffusion_pytorch_model.safetensors"));
    let g = golden("vae.safetensors");
    let (mean, logvar, decoded) = encode_decode(&vae);
    for (name, ours, reference) in [
        ("posterior mean", &mean, &g["posterior_mean"]),
        ("posterior logvar", &logvar, &g["posterior_logvar"]),
        ("decode", &decoded, &g["decoded"]),
    ] {
        let error = relative_error(ours, reference);
        println!("{name} rel. error {error:e}");
        assert!(error < 1e-4, "{name} rel. error {error}");
    }
}

#[test]
fn legacy_attention_names_and_conv_shaped_projections_load() {
    // Rewrite the fixture the way old diffusers / converted LDM checkpoints store the mid-block
    // attention: query/key/value/proj_attn, q/k/v as 1x1 convolutions.
    let mut tensors: BTreeMap<String, TensorData> = BTreeMap::new();
    for (key, value) in read_tensors(vae_dir().join("diffusion_pytorch_model.safetensors")).unwrap()
    {
        let renamed = key
            .replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn.");
        let value =
            if renamed != key && renamed.ends_with("weight") && !renamed.contains("proj_attn") {
                let dims = value.shape.to_vec();
                TensorData::new(value.to_vec::<f32>().unwrap(), [dims[0], dims[1], 1, 1])
            } else {
                value
            };
        tensors.insert(renamed, value);
    }
    assert!(
        tensors.keys().any(|k| k.contains(".query.")),
        "fixture must have a mid-block attention"
    );
    let path = common::temp_dir("vae-legacy").join("diffusion_pytorch_model.safetensors");
    write_tensors(&path, &tensors, &BTreeMap::new()).unwrap();

    let modern = encode_decode(&load(
        &vae_dir().join("diffusion_pytorch_model.safetensors"),
    ));
    let legacy = encode_decode(&load(&path));
    assert_eq!(modern.0, legacy.0);
    assert_eq!(modern.2, legacy.2);
}

#[test]
fn image_size_must_be_a_multiple_of_the_downsampling_factor() {
    let vae = load(&vae_dir().join("diffusion_pytorch_model.safetensors"));
    assert_eq!(vae.downsampling_factor(), 2);
    let err = vae
        .encode(Tensor::zeros([1, 3, 31, 32], &device()))
        .unwrap_err();
    assert!(err.to_string().contains("31x32"), "{err}");
}

#[test]
fn posterior_sampling_uses_the_given_noise() {
    let vae = load(&vae_dir().join("diffusion_pytorch_model.safetensors"));
    let g = golden("vae.safetensors");
    let posterior = vae
        .encode(Tensor::from_data(g["image"].clone(), &device()))
        .unwrap();
    let zero = posterior.sample_with(posterior.mean.zeros_like());
    assert_eq!(zero.into_data(), posterior.mean.clone().into_data());
    let one = posterior.sample_with(posterior.mean.ones_like());
    let expected = posterior.mean.clone() + (posterior.logvar.clone() * 0.5).exp();
    assert_eq!(one.into_data(), expected.into_data());
}

#[test]
fn sd15_preset_equals_published_config() {
    let parsed =
        VaeConfig::from_json_file(fixtures().join("../../assets/sd15/vae/config.json")).unwrap();
    assert_eq!(parsed, VaeConfig::sd15());
    assert_eq!(parsed.downsampling_factor(), 8);
}

#[test]
#[ignore = "allocates the 84M-parameter SD1.5 VAE; run with --ignored"]
fn sd15_vae_parameter_count() {
    assert_eq!(
        VaeConfig::sd15().init::<B>(&device()).num_params(),
        83_653_863
    );
}

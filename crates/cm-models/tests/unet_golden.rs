//! `UNet2DConditionModel` against diffusers on the tiny fixture UNets (golden tensors from
//! `scripts/gen_fixtures.py`), presets against the published SD1.5 configs, and bad input.

mod common;

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};
use cm_models::config_json::JsonConfig;
use cm_models::unet::{UNet2DConditionModel, UNetConfig};
use cm_models::{Component, ModelError, WeightVariant};
use common::{device, fixtures, golden, relative_error, TestBackend};

type B = TestBackend;

fn tensor<const D: usize>(data: &TensorData) -> Tensor<B, D> {
    Tensor::from_data(data.clone(), &device())
}

fn run(unet: &UNet2DConditionModel<B>, file: &str, with_cond: bool) -> (TensorData, TensorData) {
    let g = golden(file);
    let cond = with_cond.then(|| tensor::<2>(&g["timestep_cond"]));
    let out = unet
        .forward(
            tensor(&g["sample"]),
            &g["timestep"]
                .clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap(),
            tensor(&g["encoder_hidden_states"]),
            cond,
        )
        .unwrap();
    (out.into_data(), g["out"].clone())
}

#[test]
fn tiny_unet_matches_diffusers() {
    let (unet, _, report) = UNet2DConditionModel::<B>::from_folder(
        fixtures().join("tiny-sd/unet"),
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap();
    assert!(
        report.unused.is_empty() && report.ignored.is_empty(),
        "{report}"
    );
    let (ours, reference) = run(&unet, "unet.safetensors", false);
    let error = relative_error(&ours, &reference);
    println!("UNet rel. error {error:e}");
    assert!(error < 1e-4, "UNet rel. error {error}");
}

#[test]
fn tiny_unet_with_guidance_condition_matches_diffusers() {
    let dir = fixtures().join("tiny-unet-cond-proj");
    let (unet, _, _) =
        UNet2DConditionModel::<B>::from_folder(&dir, WeightVariant::Full, DType::F32, &device())
            .unwrap();
    assert_eq!(unet.time_cond_proj_dim, 256);
    let (ours, reference) = run(&unet, "unet_cond_proj.safetensors", true);
    let error = relative_error(&ours, &reference);
    println!("UNet (cond_proj) rel. error {error:e}");
    assert!(error < 1e-4, "UNet (cond_proj) rel. error {error}");
}

#[test]
fn fp16_unet_file_loads_into_f32_module() {
    let (unet, _, report) = UNet2DConditionModel::<B>::from_folder(
        fixtures().join("tiny-sd/unet"),
        WeightVariant::Fp16,
        DType::F32,
        &device(),
    )
    .unwrap();
    assert!(report.file_dtypes.contains_key("F16"), "{report}");
    assert_eq!(unet.conv_in.base.weight.val().dtype(), DType::F32);
    let (ours, reference) = run(&unet, "unet.safetensors", false);
    let error = relative_error(&ours, &reference);
    assert!(error < 2e-2, "fp16-weight UNet rel. error {error}");
}

#[test]
fn missing_or_unexpected_guidance_condition_is_an_error() {
    let (unet, _, _) = UNet2DConditionModel::<B>::from_folder(
        fixtures().join("tiny-unet-cond-proj"),
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap();
    let g = golden("unet_cond_proj.safetensors");
    let err = unet
        .forward(
            tensor(&g["sample"]),
            &g["timestep"]
                .clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap(),
            tensor(&g["encoder_hidden_states"]),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("time_cond_proj_dim"), "{err}");
}

#[test]
fn wrong_input_channels_is_an_error() {
    let config = UNetConfig::from_json_file(fixtures().join("tiny-sd/unet/config.json")).unwrap();
    let unet = config.init::<B>(&device());
    let err = unet
        .forward(
            Tensor::zeros([1, 3, 16, 16], &device()),
            &[0.0],
            Tensor::zeros([1, 77, 32], &device()),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("3 channels"), "{err}");
}

#[test]
fn odd_latent_sizes_follow_the_skip_connections() {
    // diffusers forwards the upsample size when the latent is not a multiple of 2^levels.
    let config = UNetConfig::from_json_file(fixtures().join("tiny-sd/unet/config.json")).unwrap();
    let unet = config.init::<B>(&device());
    let out = unet
        .forward(
            Tensor::zeros([1, 4, 9, 7], &device()),
            &[500.0],
            Tensor::zeros([1, 77, 32], &device()),
            None,
        )
        .unwrap();
    assert_eq!(out.dims(), [1, 4, 9, 7]);
}

#[test]
fn sd15_preset_equals_published_config() {
    let parsed =
        UNetConfig::from_json_file(fixtures().join("../../assets/sd15/unet/config.json")).unwrap();
    assert_eq!(parsed, UNetConfig::sd15());
}

#[test]
#[ignore = "allocates the 860M-parameter SD1.5 UNet (3.4 GB); run with --ignored"]
fn sd15_unet_parameter_count() {
    assert_eq!(
        UNetConfig::sd15().init::<B>(&device()).num_params(),
        859_520_964
    );
}

#[test]
fn unsupported_block_type_is_rejected_with_the_key() {
    let text = std::fs::read_to_string(fixtures().join("tiny-sd/unet/config.json")).unwrap();
    let text = text.replace("\"DownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"");
    let err = UNetConfig::from_json_str(&text).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedConfig { key, .. } if key == "down_block_types"),
        "{err}"
    );
    assert!(
        err.to_string().contains("SimpleCrossAttnDownBlock2D"),
        "{err}"
    );

    let err = UNetConfig::from_json_str(r#"{"class_embed_type": "timestep"}"#).unwrap_err();
    assert!(err.to_string().contains("class_embed_type"), "{err}");
}

#[test]
fn weights_of_another_config_fail_naming_a_key() {
    let mut config =
        UNetConfig::from_json_file(fixtures().join("tiny-sd/unet/config.json")).unwrap();
    config.block_out_channels = vec![32, 48];
    let err = config
        .init::<B>(&device())
        .load_safetensors(
            fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
            DType::F32,
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("diffusion_pytorch_model.safetensors"),
        "{message}"
    );
    assert!(
        message.contains("down_blocks.1.") && message.contains("48"),
        "{message}"
    );
}

#[test]
fn integer_weights_are_refused_by_name_before_anything_is_read() {
    // An int32 tensor where a float weight belongs used to reach Burn's `from_data` and crash the
    // process; the loader refuses it, naming the key and the dtype.
    let dir = fixtures().join("tiny-sd/unet");
    let mut tensors = cm_io::read_tensors(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let key = "conv_in.weight";
    let shape = tensors[key].shape.clone();
    let count: usize = shape.iter().product();
    tensors.insert(
        key.to_string(),
        TensorData::new(vec![1i32; count], shape.to_vec()),
    );
    let out = common::temp_dir("unet-int32");
    std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
    cm_io::write_tensors(
        out.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        &Default::default(),
    )
    .unwrap();
    let err =
        UNet2DConditionModel::<B>::from_folder(&out, WeightVariant::Full, DType::F32, &device())
            .unwrap_err()
            .to_string();
    assert!(
        err.contains(key) && err.contains("I32") && err.contains("float"),
        "{err}"
    );
}

#[test]
fn a_student_with_a_guidance_embedding_is_made_from_a_teacher_folder() {
    // diffusers' LCM script: UNet2DConditionModel(**teacher.config, time_cond_proj_dim=256) then
    // load_state_dict(teacher, strict=False): every teacher weight loads, cond_proj stays fresh.
    let teacher_dir = fixtures().join("tiny-sd/unet");
    let (teacher, _, _) = UNet2DConditionModel::<B>::from_folder(
        &teacher_dir,
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap();
    let (student, config, report) = UNet2DConditionModel::<B>::student_from_teacher(
        &teacher_dir,
        256,
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap();
    assert_eq!(config.time_cond_proj_dim, Some(256));
    assert_eq!(
        report.fresh,
        vec!["time_embedding.cond_proj.weight".to_string()]
    );
    assert!(report
        .to_string()
        .contains("freshly initialised: time_embedding.cond_proj.weight"));
    assert_eq!(report.applied, teacher.num_params_tensors());
    assert_eq!(
        student.conv_in.base.weight.val().into_data(),
        teacher.conv_in.base.weight.val().into_data()
    );
    let cond = student.time_embedding.cond_proj.as_ref().unwrap();
    assert_eq!(cond.base.weight.dims(), [256, 32]);
    // A teacher that already has the same embedding loads as it is; another width is refused.
    let lcm_dir = fixtures().join("tiny-unet-cond-proj");
    let (_, _, report) = UNet2DConditionModel::<B>::student_from_teacher(
        &lcm_dir,
        256,
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap();
    assert!(report.fresh.is_empty());
    let err = UNet2DConditionModel::<B>::student_from_teacher(
        &lcm_dir,
        128,
        WeightVariant::Full,
        DType::F32,
        &device(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("time_cond_proj_dim") && err.contains("128"),
        "{err}"
    );
}

trait TensorCount {
    fn num_params_tensors(&self) -> usize;
}

impl TensorCount for UNet2DConditionModel<B> {
    fn num_params_tensors(&self) -> usize {
        struct Count(usize);
        impl burn::module::ModuleVisitor<B> for Count {
            fn visit_float<const D: usize>(&mut self, _: &burn::module::Param<Tensor<B, D>>) {
                self.0 += 1;
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }
}

#[test]
fn a_batch_split_over_threads_gives_the_same_output_and_the_same_errors() {
    let dir = fixtures().join("tiny-unet-cond-proj");
    let (loaded, _, _) =
        UNet2DConditionModel::<B>::from_folder(&dir, WeightVariant::Full, DType::F32, &device())
            .unwrap();
    // And a freshly initialised one, whose lazy parameters must not be drawn once per thread.
    let fresh = UNetConfig::from_json_file(dir.join("config.json"))
        .unwrap()
        .init::<B>(&device());
    for unet in [loaded, fresh] {
        split_matches_whole(&unet);
    }
}

fn split_matches_whole(unet: &UNet2DConditionModel<B>) {
    use burn::tensor::Distribution;
    let d = device();
    let sample = Tensor::<B, 4>::random([3, 4, 16, 16], Distribution::Normal(0.0, 1.0), &d);
    let context = Tensor::<B, 3>::random([3, 7, 32], Distribution::Normal(0.0, 1.0), &d);
    let cond = Tensor::<B, 2>::random([3, 256], Distribution::Normal(0.0, 1.0), &d);
    let ts = [10.0, 500.0, 999.0];
    // The split calls first: on a fresh module they are the first to touch its parameters.
    // Two parts (2 + 1 examples), and more parts than examples (one per example).
    let split: Vec<TensorData> = [2, 5]
        .into_iter()
        .map(|parts| {
            unet.forward_split(
                parts,
                sample.clone(),
                &ts,
                context.clone(),
                Some(cond.clone()),
            )
            .unwrap()
            .into_data()
        })
        .collect();
    let whole = unet
        .forward(sample.clone(), &ts, context.clone(), Some(cond.clone()))
        .unwrap()
        .into_data();
    for (parts, split) in [2, 5].into_iter().zip(&split) {
        assert_eq!(split.shape, whole.shape);
        let error = relative_error(split, &whole);
        assert!(error < 1e-5, "{parts} parts: rel. error {error}");
    }
    // Bad input is refused before any thread starts, with forward's message.
    let expected = unet
        .forward(
            sample.clone(),
            &ts[..2],
            context.clone(),
            Some(cond.clone()),
        )
        .unwrap_err()
        .to_string();
    let err = unet
        .forward_split(2, sample, &ts[..2], context, Some(cond))
        .unwrap_err()
        .to_string();
    assert_eq!(err, expected);
}

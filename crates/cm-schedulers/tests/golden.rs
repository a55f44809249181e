//! Parity with diffusers' schedulers (golden values from `scripts/gen_scheduler_fixtures.py`):
//! absolute error < 1e-6 in f32 on schedules, timesteps, steps, scalings and embeddings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cm_io::read_tensors;
use cm_schedulers::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use cm_schedulers::ddim::{ddim_timesteps, DdimScheduler};
use cm_schedulers::guidance::guidance_scale_embedding;
use cm_schedulers::lcm::{lcm_boundary_scalings, lcm_timesteps, LcmScheduler};
use cm_schedulers::schedule::NoiseSchedule;

type B = burn::backend::Flex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> BTreeMap<String, TensorData> {
    read_tensors(root().join("tests/fixtures/golden/schedulers.safetensors")).unwrap()
}

fn config(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_json_file(
        root()
            .join("assets/sd15")
            .join(name)
            .join("scheduler_config.json"),
    )
    .unwrap()
}

fn tensor(data: &TensorData) -> Tensor<B, 4> {
    Tensor::from_data(data.clone(), &Default::default())
}

fn max_abs(a: &TensorData, b: &TensorData) -> f32 {
    cm_io::compare::max_abs_error(a, b) as f32
}

#[test]
fn alphas_cumprod_match_for_every_beta_schedule() {
    let g = golden();
    for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
        let mut c = config("scheduler_ddim");
        c.beta_schedule = schedule.into();
        let ours = NoiseSchedule::new(&c);
        let data = TensorData::new(ours.alphas_cumprod().to_vec(), [1000]);
        let err = max_abs(&data, &g[&format!("alphas_cumprod_{schedule}")]);
        assert!(err < 1e-6, "{schedule}: {err}");
    }
}

#[test]
fn ddim_and_lcm_timesteps_match() {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/golden/schedulers.json")).unwrap();
    let expected: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    for (spacing_name, spacing) in [
        ("leading", TimestepSpacing::Leading),
        ("trailing", TimestepSpacing::Trailing),
        ("linspace", TimestepSpacing::Linspace),
    ] {
        let mut c = config("scheduler_ddim");
        c.timestep_spacing = spacing;
        for n in [1, 2, 4, 8, 50] {
            assert_eq!(
                ddim_timesteps(&c, n).unwrap(),
                expected[&format!("ddim_{spacing_name}_{n}")],
                "{spacing_name} {n}"
            );
        }
    }
    for n in [1, 2, 4, 8] {
        assert_eq!(
            lcm_timesteps(&config("scheduler_lcm"), n).unwrap(),
            expected[&format!("lcm_{n}")]
        );
    }
}

#[test]
fn add_noise_matches() {
    let g = golden();
    let s = NoiseSchedule::new(&config("scheduler_ddim"));
    let ts: Vec<usize> = g["add_noise_t"]
        .clone()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&t| t as usize)
        .collect();
    let out = s
        .add_noise(
            tensor(&g["add_noise_x0"]),
            tensor(&g["add_noise_noise"]),
            &ts,
        )
        .unwrap();
    assert!(max_abs(&out.into_data(), &g["add_noise_out"]) < 1e-6);
}

#[test]
fn ddim_step_matches_for_each_prediction_type() {
    let g = golden();
    for (name, prediction) in [
        ("epsilon", PredictionType::Epsilon),
        ("v_prediction", PredictionType::VPrediction),
        ("sample", PredictionType::Sample),
    ] {
        let mut c = config("scheduler_ddim");
        c.timestep_spacing = TimestepSpacing::Trailing;
        c.prediction_type = prediction;
        let mut s = DdimScheduler::new(c);
        s.set_timesteps(4).unwrap();
        let out = s
            .step(
                tensor(&g["step_model_output"]),
                749,
                tensor(&g["step_sample"]),
            )
            .unwrap();
        let e_prev = max_abs(
            &out.prev_sample.into_data(),
            &g[&format!("ddim_step_{name}_prev")],
        );
        let e_x0 = max_abs(
            &out.pred_original_sample.into_data(),
            &g[&format!("ddim_step_{name}_x0")],
        );
        assert!(
            e_prev < 1e-5 && e_x0 < 1e-5,
            "{name}: prev {e_prev}, x0 {e_x0}"
        );
    }
    // Last step of 50 leading steps: the previous timestep is negative -> final alpha-bar.
    let mut s = DdimScheduler::new(config("scheduler_ddim"));
    let last = *s.set_timesteps(50).unwrap().last().unwrap();
    let out = s
        .step(
            tensor(&g["step_model_output"]),
            last,
            tensor(&g["step_sample"]),
        )
        .unwrap();
    assert!(max_abs(&out.prev_sample.into_data(), &g["ddim_step_last_prev"]) < 1e-5);
}

#[test]
fn lcm_scalings_and_step_match() {
    let g = golden();
    let ts = g["lcm_scalings_t"]
        .clone()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    let skip = g["lcm_c_skip"].clone().to_vec::<f32>().unwrap();
    let out = g["lcm_c_out"].clone().to_vec::<f32>().unwrap();
    for (i, &t) in ts.iter().enumerate() {
        let (c_skip, c_out) = lcm_boundary_scalings(t as f32, 10.0);
        assert!(
            (c_skip - skip[i]).abs() < 1e-6 && (c_out - out[i]).abs() < 1e-6,
            "t = {t}"
        );
    }
    let mut s = LcmScheduler::new(config("scheduler_lcm"));
    s.set_timesteps(4).unwrap();
    let step = s
        .step(
            tensor(&g["step_model_output"]),
            1,
            tensor(&g["step_sample"]),
            Some(tensor(&g["lcm_step_noise"])),
        )
        .unwrap();
    assert!(max_abs(&step.denoised.into_data(), &g["lcm_step1_denoised"]) < 1e-5);
    assert!(max_abs(&step.prev_sample.into_data(), &g["lcm_step1_prev"]) < 1e-5);
}

#[test]
fn guidance_embedding_matches() {
    // The sinusoid's arguments are `1000 w f_i`: one f32 ulp of a frequency (torch's vectorised
    // exp is not always correctly rounded) moves the argument by up to `1000 w 2^-23`, so the
    // tolerance is that sensitivity (w = 0: exact, 1e-6 floor).
    let g = golden();
    let scales = g["guidance_w"].clone().to_vec::<f32>().unwrap();
    let ours = guidance_scale_embedding::<B>(&scales, 256, &Default::default())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let theirs = g["guidance_embedding_256"].clone().to_vec::<f32>().unwrap();
    for (row, scale) in scales.iter().enumerate() {
        let err = (0..256)
            .map(|j| (ours[row * 256 + j] - theirs[row * 256 + j]).abs())
            .fold(0.0, f32::max);
        let tolerance = 1e-6 + 1000.0 * scale * f32::EPSILON;
        assert!(
            err <= tolerance,
            "w = {scale}: max abs error {err} > {tolerance}"
        );
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let c = config("scheduler_ddim");
    assert!(ddim_timesteps(&c, 0)
        .unwrap_err()
        .to_string()
        .contains("1..=1000"));
    assert!(lcm_timesteps(&config("scheduler_lcm"), 51).is_err());
    let err = SchedulerConfig::from_json_str_at(
        r#"{"beta_schedule": "cosine"}"#,
        std::path::Path::new("x.json"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("beta_schedule") && err.to_string().contains("x.json"));
    let err = SchedulerConfig::from_json_str_at(
        r#"{"thresholding": true}"#,
        std::path::Path::new("x.json"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("thresholding"));
}

#[test]
fn omitted_keys_take_the_defaults_of_the_class_that_runs_the_config() {
    // diffusers' `Class.from_config(file).config` for files that omit keys (the SD1.5 PNDM config
    // without `clip_sample`, and `{}`): a DDIM run of the former clips x0, an LCM run does not.
    use cm_schedulers::config::SchedulerClass;
    let path = root().join("tests/fixtures/golden/scheduler_class_defaults.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut checked = 0;
    for (source, entry) in golden.as_object().unwrap() {
        let file = &entry["config"];
        for class in [
            SchedulerClass::Ddim,
            SchedulerClass::Lcm,
            SchedulerClass::Pndm,
            SchedulerClass::Ddpm,
        ] {
            let ours = SchedulerConfig::from_json_value_as(file, &path, Some(class)).unwrap();
            let ours = serde_json::to_value(&ours).unwrap();
            for (key, expected) in entry[class.name()].as_object().unwrap() {
                let found = &ours[key];
                let same = match (found.as_f64(), expected.as_f64()) {
                    (Some(a), Some(b)) => (a - b).abs() < 1e-12,
                    _ => found == expected,
                };
                assert!(
                    same,
                    "{source} as {}: `{key}` is {found}, diffusers {expected}",
                    class.name()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} values compared");
}

#[test]
fn out_of_range_schedule_values_are_refused_naming_file_and_key() {
    for (text, key) in [
        (r#"{"beta_start": 0.0}"#, "beta_start"),
        (r#"{"beta_end": 1.5}"#, "beta_end"),
        (r#"{"trained_betas": [0.5, -0.1]}"#, "trained_betas"),
        (r#"{"timestep_scaling": -1}"#, "timestep_scaling"),
    ] {
        let err = SchedulerConfig::from_json_str_at(text, std::path::Path::new("sched.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("sched.json"),
            "{text}: {err}"
        );
    }
}

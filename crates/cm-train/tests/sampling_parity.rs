//! End-to-end sampling parity with diffusers' `StableDiffusionPipeline` on the tiny fixture
//! pipeline, from the same initial noise (golden runs of `scripts/gen_fixtures.py`), plus the
//! determinism of multi-boundary sampling and the errors of bad options.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cm_io::compare::relative_error;
use cm_io::read_tensors;
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion};
use cm_schedulers::config::SchedulerConfig;
use cm_train::sampling::{
    sample, HostNoise, ReplayNoise, SampleOptions, SampleOutput, SamplerKind, SeededNoise,
};

type B = burn::backend::Flex;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn golden(name: &str) -> BTreeMap<String, TensorData> {
    read_tensors(fixtures().join("golden").join(name)).unwrap()
}

fn tiny() -> StableDiffusion<B> {
    StableDiffusion::load(
        fixtures().join("tiny-sd"),
        PipelineLoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
}

fn scheduler(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_json_file(
        fixtures()
            .join("schedulers")
            .join(name)
            .join("scheduler_config.json"),
    )
    .unwrap()
}

fn options(sampler: SamplerKind, guidance: f32) -> SampleOptions {
    SampleOptions {
        sampler,
        steps: 4,
        guidance_scale: guidance,
        height: 32,
        width: 32,
        ..Default::default()
    }
}

fn run(
    sd: &StableDiffusion<B>,
    config: &SchedulerConfig,
    options: &SampleOptions,
    init: Option<Tensor<B, 4>>,
    noise: &mut dyn cm_train::sampling::NoiseSource<B>,
) -> SampleOutput<B> {
    let prompt = "a photograph of an astronaut riding a horse";
    sample(
        sd,
        config,
        &[prompt],
        &[],
        options,
        init,
        noise,
        &mut |_| {},
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn ddim_4_steps_cfg_7_5_matches_diffusers() {
    let sd = tiny();
    let g = golden("pipeline_ddim.safetensors");
    // One thread, and the CFG batch [uncond; cond] split over two.
    for threads in [1, 2] {
        let init = Tensor::from_data(g["init_latents"].clone(), &Default::default());
        let out = run(
            &sd,
            &scheduler("ddim"),
            &SampleOptions {
                threads,
                ..options(SamplerKind::Ddim, 7.5)
            },
            Some(init),
            &mut SeededNoise,
        );
        let timesteps: Vec<i64> = g["timesteps"].clone().convert::<i64>().to_vec().unwrap();
        assert_eq!(
            out.timesteps.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            timesteps
        );
        let e_latents = relative_error(&out.latents.into_data(), &g["final_latents"]);
        let e_image = relative_error(&out.images.into_data(), &g["image"]);
        println!("DDIM parity ({threads} thread(s)): latents {e_latents:e}, image {e_image:e}");
        assert!(
            e_latents < 1e-3 && e_image < 1e-3,
            "{threads} thread(s): latents {e_latents}, image {e_image}"
        );
    }
}

#[test]
fn lcm_4_steps_matches_diffusers_with_the_same_noise() {
    let sd = tiny();
    let g = golden("pipeline_lcm.safetensors");
    let device = Default::default();
    let init = Tensor::from_data(g["init_latents"].clone(), &device);
    let noise: Tensor<B, 5> = Tensor::from_data(g["step_noise"].clone(), &device);
    let [k, ..] = noise.dims();
    let queue: VecDeque<Tensor<B, 4>> = (0..k)
        .map(|i| noise.clone().slice(i..i + 1).squeeze_dim(0))
        .collect();
    let mut replay = ReplayNoise { queue };
    let out = run(
        &sd,
        &scheduler("lcm"),
        &options(SamplerKind::Lcm, 1.0),
        Some(init),
        &mut replay,
    );
    assert!(
        replay.queue.is_empty(),
        "every recorded noise tensor is used"
    );
    let e_latents = relative_error(&out.latents.into_data(), &g["final_latents"]);
    let e_image = relative_error(&out.images.into_data(), &g["image"]);
    println!("LCM parity: latents {e_latents:e}, image {e_image:e}");
    assert!(
        e_latents < 1e-3 && e_image < 1e-3,
        "latents {e_latents}, image {e_image}"
    );
}

#[test]
fn multiboundary_sampling_is_deterministic_bit_for_bit() {
    // Host-drawn noise: the backend RNG is global and the other tests of this file draw from it
    // in parallel threads.
    let sd = tiny();
    let config = scheduler("ddim");
    let opts = options(SamplerKind::MultiBoundary { boundaries: 4 }, 2.0);
    let mut images = Vec::new();
    for _ in 0..2 {
        let out = run(&sd, &config, &opts, None, &mut HostNoise::new(42));
        assert_eq!(
            out.timesteps,
            vec![999, 759, 499, 259],
            "one step per segment"
        );
        images.push(out.images.into_data());
    }
    assert_eq!(images[0], images[1]);
}

#[test]
fn multiboundary_sampling_visits_a_students_own_boundaries() {
    let sd = tiny();
    let config = scheduler("ddim");
    let mut opts = options(SamplerKind::MultiBoundary { boundaries: 4 }, 2.0);
    opts.boundaries = Some(vec![0, 199, 499, 799]);
    let out = run(&sd, &config, &opts, None, &mut HostNoise::new(5));
    assert_eq!(out.timesteps, vec![999, 799, 499, 199]);
    let even = run(
        &sd,
        &config,
        &options(SamplerKind::MultiBoundary { boundaries: 4 }, 2.0),
        None,
        &mut HostNoise::new(5),
    );
    assert_ne!(out.images.into_data(), even.images.into_data());
}

#[test]
fn bad_options_are_clear_errors() {
    let sd = tiny();
    let config = scheduler("ddim");
    let prompt = ["a cat"];
    let device = Default::default();
    let try_run = |opts: SampleOptions, init: Option<Tensor<B, 4>>| {
        sample(
            &sd,
            &config,
            &prompt,
            &[],
            &opts,
            init,
            &mut SeededNoise,
            &mut |_| {},
            &device,
        )
        .unwrap_err()
        .to_string()
    };
    let mut o = options(SamplerKind::Ddim, 7.5);
    o.steps = 0;
    assert!(try_run(o, None).contains("inference steps"));
    let o = options(SamplerKind::MultiBoundary { boundaries: 60 }, 1.0);
    assert!(try_run(o, None).contains("K must be in 1..=50"));
    let mut o = options(SamplerKind::MultiBoundary { boundaries: 4 }, 1.0);
    o.boundaries = Some(vec![0, 499, 799]);
    let e = try_run(o, None);
    assert!(
        e.contains("4 segments got 3 boundaries [0, 499, 799]"),
        "{e}"
    );
    let mut o = options(SamplerKind::MultiBoundary { boundaries: 2 }, 1.0);
    o.boundaries = Some(vec![0, 999]);
    assert!(try_run(o, None).contains("empty top segment"));
    let mut o = options(SamplerKind::Ddim, 7.5);
    o.height = 33;
    assert!(try_run(o, None).contains("multiples of the VAE down-sampling factor 2"));
    let wrong = Tensor::<B, 4>::zeros([1, 4, 8, 8], &device);
    assert!(try_run(options(SamplerKind::Ddim, 7.5), Some(wrong)).contains("[1, 4, 16, 16]"));
    assert!("euler"
        .parse::<SamplerKind>()
        .unwrap_err()
        .to_string()
        .contains("ddim, lcm or multiboundary"));
}

//! Adapters on a toy module tree (structs, `Option`, `Vec`, an enum): paths, injection, switching,
//! merge / unmerge, export / import, freezing, gradients and an optimizer step.

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use cm_lora::{
    describe, export, import, inject, merge, plan, remove, set_active, unmerge, LoraConfig,
    LoraConv2d, LoraError, LoraLinear, TargetSelector,
};

type B = burn::backend::Flex;

#[derive(Module, Debug)]
enum Projection<B: Backend> {
    Linear(LoraLinear<B>),
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    to_q: LoraLinear<B>,
    conv1: LoraConv2d<B>,
    shortcut: Option<LoraConv2d<B>>,
}

#[derive(Module, Debug)]
struct Toy<B: Backend> {
    block: Block<B>,
    to_out: Vec<LoraLinear<B>>,
    proj: Projection<B>,
}

fn toy(device: &burn::tensor::Device<B>) -> Toy<B> {
    let conv = |i, o, k, s| {
        LoraConv2d::new(
            &Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2)),
            device,
        )
    };
    let toy = Toy {
        block: Block {
            to_q: LoraLinear::new(&LinearConfig::new(8, 8), device),
            conv1: conv(3, 8, 3, 2),
            shortcut: Some(conv(3, 8, 1, 2)),
        },
        to_out: vec![LoraLinear::new(&LinearConfig::new(8, 6), device)],
        proj: Projection::Linear(LoraLinear::new(
            &LinearConfig::new(6, 5).with_bias(false),
            device,
        )),
    };
    // Burn initialises parameters lazily; materialise them so that clones share values.
    toy.map(&mut Materialise)
}

struct Materialise;
impl<B: Backend> burn::module::ModuleMapper<B> for Materialise {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let _ = p.val();
        p
    }
}

impl<B: Backend> Toy<B> {
    fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 2> {
        let h = self.block.conv1.forward(image.clone())
            + self.block.shortcut.as_ref().unwrap().forward(image);
        let h = h.mean_dim(3).mean_dim(2).flatten::<2>(1, 3); // [n, 8]
        let h = self.block.to_q.forward(h);
        let h = self.to_out[0].forward(h);
        let Projection::Linear(proj) = &self.proj;
        proj.forward(h)
    }
}

fn input() -> Tensor<B, 4> {
    Tensor::random(
        [2, 3, 9, 9],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    )
}

fn rel(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
    let diff: f32 = (a - b.clone()).powi_scalar(2).sum().sqrt().into_scalar();
    let norm: f32 = b.powi_scalar(2).sum().sqrt().into_scalar();
    diff / norm
}

/// Gives every `up` factor random values (a fresh adapter adds exactly zero).
fn randomise_up(model: &mut Toy<B>, name: &str) {
    let mut weights = export(model, name).unwrap();
    for f in weights.layers.values_mut() {
        let shape = f.up.shape.clone();
        f.up = Tensor::<B, 1>::random(
            [shape.iter().product::<usize>()],
            Distribution::Normal(0.0, 0.5),
            &Default::default(),
        )
        .into_data();
        f.up.shape = shape;
    }
    remove(model, name).unwrap();
    import(model, name, weights).unwrap();
}

#[test]
fn paths_follow_fields_vec_indices_and_skip_option_and_enum_variants() {
    let paths: Vec<String> = describe(&toy(&Default::default()))
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(
        paths,
        [
            "block.to_q",
            "block.conv1",
            "block.shortcut",
            "to_out.0",
            "proj"
        ]
    );
}

#[test]
fn selector_uses_peft_suffix_rule_and_anchored_regexes() {
    let names = TargetSelector::names(["to_q", "0"]);
    assert!(names.matches("block.to_q"));
    assert!(names.matches("to_q"));
    assert!(names.matches("to_out.0"));
    assert!(!names.matches("block.xto_q"), "suffix must start at a `.`");
    let regex = TargetSelector::names::<&str>([])
        .include(r"block\..*")
        .unwrap()
        .exclude(".*shortcut")
        .unwrap();
    assert!(regex.matches("block.conv1"));
    assert!(!regex.matches("block.shortcut"));
    assert!(!regex.matches("xblock.conv1"), "regexes are anchored");
    assert!(matches!(
        TargetSelector::names::<&str>([]).include("("),
        Err(LoraError::InvalidConfig(_))
    ));
}

#[test]
fn injection_keeps_output_counts_parameters_and_freezes_the_base() {
    let device = Default::default();
    let mut model = toy(&device);
    let x = input();
    let before = model.forward(x.clone());
    let base_params = model.num_params();
    let config = LoraConfig::new(2, 4.0);
    let selector = TargetSelector::names(["to_q", "conv1", "shortcut", "to_out.0"]);
    let planned = plan(&model, "a", &config, &selector).unwrap();
    let report = inject(&mut model, "a", &config, &selector).unwrap();
    assert_eq!(planned, report);
    assert_eq!(
        report.layers,
        ["block.to_q", "block.conv1", "block.shortcut", "to_out.0"]
    );
    // r * (in + out) for Linear; r * in * kh * kw + out * r for Conv2d.
    let expected = 2 * (8 + 8) + (2 * 3 * 3 * 3 + 8 * 2) + (2 * 3 + 8 * 2) + 2 * (8 + 6);
    assert_eq!(report.trainable_params, expected);
    assert_eq!(report.frozen_params, base_params);
    assert_eq!(model.num_params(), base_params + expected);
    assert_eq!(
        rel(model.forward(x), before),
        0.0,
        "up starts at zero, so the model is unchanged"
    );
    let block = &model.block;
    assert_eq!(block.conv1.adapters[0].down.weight.dims(), [2, 3, 3, 3]);
    assert_eq!(block.conv1.adapters[0].down.stride, [2, 2]);
    assert_eq!(block.conv1.adapters[0].up.weight.dims(), [8, 2, 1, 1]);
    let Projection::Linear(proj) = &model.proj;
    assert!(proj.adapters.is_empty());
}

#[test]
fn bad_injections_are_errors_that_change_nothing() {
    let mut model = toy(&Default::default());
    let config = LoraConfig::new(2, 2.0);
    let none = inject(&mut model, "a", &config, &TargetSelector::names(["to_k"])).unwrap_err();
    assert!(
        matches!(none, LoraError::NoMatch { layers: 5, .. }),
        "{none}"
    );
    assert!(
        none.to_string().contains("block.to_q"),
        "names an existing path: {none}"
    );
    let zero = inject(
        &mut model,
        "a",
        &LoraConfig::new(0, 1.0),
        &TargetSelector::default(),
    );
    assert!(matches!(zero, Err(LoraError::InvalidConfig(_))));
    inject(&mut model, "a", &config, &TargetSelector::names(["to_q"])).unwrap();
    let twice = inject(&mut model, "a", &config, &TargetSelector::names(["to_q"])).unwrap_err();
    assert!(
        matches!(&twice, LoraError::DuplicateAdapter { path, .. } if path == "block.to_q"),
        "{twice}"
    );
    assert_eq!(model.block.to_q.adapters.len(), 1);
}

#[test]
fn merge_and_unmerge_match_the_unmerged_model() {
    let mut model = toy(&Default::default());
    let x = input();
    let base = model.forward(x.clone());
    let selector = TargetSelector::names(["to_q", "conv1", "shortcut", "to_out.0", "proj"]);
    inject(&mut model, "a", &LoraConfig::new(3, 6.0), &selector).unwrap();
    randomise_up(&mut model, "a");
    let unmerged = model.forward(x.clone());
    assert!(
        rel(unmerged.clone(), base.clone()) > 0.01,
        "the adapter matters"
    );
    merge(&mut model, "a").unwrap();
    assert!(model.block.conv1.adapter_metas()[0].merged);
    let merged = model.forward(x.clone());
    let error = rel(merged, unmerged.clone());
    assert!(error < 1e-5, "merged vs unmerged rel. error {error}");
    let off = set_active(&mut model, &[]).unwrap_err();
    assert!(matches!(off, LoraError::Merged { .. }), "{off}");
    unmerge(&mut model, "a").unwrap();
    let error = rel(model.forward(x.clone()), unmerged);
    assert!(error < 1e-5, "unmerged again rel. error {error}");
    set_active(&mut model, &[]).unwrap();
    let error = rel(model.forward(x), base);
    assert!(error < 1e-5, "base weights restored by unmerge: {error}");
}

#[test]
fn several_adapters_switch_and_add_up() {
    let mut model = toy(&Default::default());
    let x = input();
    let base = model.forward(x.clone());
    let all = TargetSelector::names(["to_q", "conv1", "to_out.0"]);
    inject(&mut model, "ct", &LoraConfig::new(2, 2.0), &all).unwrap();
    randomise_up(&mut model, "ct");
    inject(&mut model, "cd", &LoraConfig::new(4, 2.0), &all).unwrap();
    randomise_up(&mut model, "cd");
    assert_eq!(cm_lora::adapter_names(&model), ["cd", "ct"]);
    set_active(&mut model, &["ct"]).unwrap();
    let ct = model.forward(x.clone());
    set_active(&mut model, &["cd"]).unwrap();
    let cd = model.forward(x.clone());
    assert!(rel(ct.clone(), cd.clone()) > 0.01);
    set_active(&mut model, &[]).unwrap();
    assert_eq!(rel(model.forward(x.clone()), base.clone()), 0.0);
    // Only to_q sees each adapter's update linearly in the final output if nothing else is
    // adapted; here every adapted layer feeds the next, so check the switch round-trips instead.
    set_active(&mut model, &["ct"]).unwrap();
    assert_eq!(rel(model.forward(x.clone()), ct), 0.0);
    let unknown = set_active(&mut model, &["mb"]).unwrap_err();
    assert!(
        matches!(&unknown, LoraError::UnknownAdapter { present, .. } if present == &["cd", "ct"]),
        "{unknown}"
    );
    remove(&mut model, "ct").unwrap();
    assert_eq!(cm_lora::adapter_names(&model), ["cd"]);
}

#[test]
fn export_import_round_trip_is_exact_and_bad_factors_are_named() {
    let mut model = toy(&Default::default());
    inject(
        &mut model,
        "a",
        &LoraConfig::new(2, 3.0),
        &TargetSelector::names(["to_q", "conv1"]),
    )
    .unwrap();
    randomise_up(&mut model, "a");
    let weights = export(&model, "a").unwrap();
    assert_eq!(
        weights.layers["block.conv1"].down.shape.to_vec(),
        [2, 3, 3, 3]
    );
    assert_eq!(weights.layers["block.to_q"].up.shape.to_vec(), [8, 2]);
    let mut fresh = toy(&Default::default());
    let report = import(&mut fresh, "b", weights.clone()).unwrap();
    assert_eq!((report.layers, report.params), (2, 2 * 16 + 2 * 27 + 16));
    assert!(export(&fresh, "b").unwrap().bit_equal(&weights));

    let mut bad = weights.clone();
    let factors = bad.layers.get_mut("block.to_q").unwrap();
    factors.up.shape = vec![4, 4].into();
    factors.source = Some("unet.block.to_q".into());
    let mut target = toy(&Default::default());
    let error = import(&mut target, "b", bad).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("unet.block.to_q") && text.contains("[4, 4]") && text.contains("[8, 2]"),
        "{text}"
    );
    let mut stray = weights.clone();
    let moved = stray.layers.remove("block.to_q").unwrap();
    stray.layers.insert("block.to_k".into(), moved);
    let error = import(&mut target, "b", stray).unwrap_err();
    assert!(
        matches!(&error, LoraError::KeyMismatch { key, .. } if key == "block.to_k"),
        "{error}"
    );
    assert!(
        describe(&target).iter().all(|l| l.adapters.is_empty()),
        "failed imports add nothing"
    );
}

#[test]
fn only_adapter_factors_receive_gradients() {
    type AD = Autodiff<B>;
    let device = Default::default();
    let mut model: Toy<AD> = Toy {
        block: Block {
            to_q: LoraLinear::new(&LinearConfig::new(8, 8), &device),
            conv1: LoraConv2d::new(&Conv2dConfig::new([3, 8], [3, 3]), &device),
            shortcut: None,
        },
        to_out: vec![LoraLinear::new(&LinearConfig::new(8, 6), &device)],
        proj: Projection::Linear(LoraLinear::new(&LinearConfig::new(6, 5), &device)),
    };
    inject(
        &mut model,
        "a",
        &LoraConfig::new(2, 2.0).with_dropout(0.1),
        &TargetSelector::names(["to_q", "conv1"]),
    )
    .unwrap();
    let image = Tensor::<AD, 4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
    let h = model
        .block
        .conv1
        .forward(image)
        .mean_dim(3)
        .mean_dim(2)
        .flatten::<2>(1, 3);
    let loss = model.to_out[0]
        .forward(model.block.to_q.forward(h))
        .powi_scalar(2)
        .mean();
    let grads = loss.backward();
    let block = &model.block;
    assert!(!block.to_q.base.weight.is_require_grad());
    assert!(block.conv1.adapters[0].down.weight.is_require_grad());
    assert!(block.to_q.adapters[0].up.weight.grad(&grads).is_some());
    assert!(block.conv1.adapters[0].up.weight.grad(&grads).is_some());
    assert!(block.to_q.base.weight.grad(&grads).is_none(), "base frozen");
    assert!(
        block.conv1.base.weight.grad(&grads).is_none(),
        "base frozen"
    );
    assert!(
        model.to_out[0].base.weight.grad(&grads).is_none(),
        "non-target frozen"
    );

    // One Adam step moves the factors and nothing else.
    let base_before = model.block.to_q.base.weight.val().into_data();
    let up_before = model.block.to_q.adapters[0].up.weight.val().into_data();
    let grads = GradientsParams::from_grads(grads, &model);
    let mut optimizer = AdamConfig::new().init::<AD, Toy<AD>>();
    let model = optimizer.step(1e-2, model, grads);
    assert_eq!(model.block.to_q.base.weight.val().into_data(), base_before);
    assert_ne!(
        model.block.to_q.adapters[0].up.weight.val().into_data(),
        up_before
    );
}

#[test]
fn adapters_with_a_bias_merge_into_the_base_bias() {
    let mut model = toy(&Default::default());
    let x = input();
    let selector = TargetSelector::names(["to_q", "conv1"]);
    inject(
        &mut model,
        "b",
        &LoraConfig::new(2, 2.0).with_bias(true),
        &selector,
    )
    .unwrap();
    let mut weights = export(&model, "b").unwrap();
    for (i, f) in weights.layers.values_mut().enumerate() {
        let bias = f.up_bias.as_mut().expect("biased adapter exports its bias");
        let n = bias.shape.num_elements();
        *bias = TensorData::new(
            (0..n).map(|j| 0.1 * (j + i) as f32).collect::<Vec<_>>(),
            [n],
        );
    }
    remove(&mut model, "b").unwrap();
    import(&mut model, "b", weights).unwrap();
    let unmerged = model.forward(x.clone());
    merge(&mut model, "b").unwrap();
    let error = rel(model.forward(x), unmerged);
    assert!(error < 1e-5, "merged vs unmerged rel. error {error}");
    // A biased adapter cannot merge into a layer without a bias.
    let mut model = toy(&Default::default());
    let proj = TargetSelector::names(["proj"]);
    inject(
        &mut model,
        "b",
        &LoraConfig::new(2, 2.0).with_bias(true),
        &proj,
    )
    .unwrap();
    let error = merge(&mut model, "b").unwrap_err();
    assert!(
        matches!(&error, LoraError::UnsupportedLayer { path, .. } if path == "proj"),
        "{error}"
    );
}

/// Casts every float parameter to `dtype` (a half-precision frozen base).
struct CastAll(burn::tensor::DType);
impl<B: Backend> burn::module::ModuleMapper<B> for CastAll {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        p.map(|t| t.cast(dtype))
    }
}

#[test]
fn factors_stay_f32_on_a_half_precision_base() {
    use burn::tensor::DType;
    type AD = Autodiff<B>;
    let device = Default::default();
    for dtype in [DType::BF16, DType::F16] {
        let base: Toy<AD> = Toy {
            block: Block {
                to_q: LoraLinear::new(&LinearConfig::new(8, 8), &device),
                conv1: LoraConv2d::new(&Conv2dConfig::new([3, 8], [3, 3]), &device),
                shortcut: None,
            },
            to_out: vec![LoraLinear::new(&LinearConfig::new(8, 6), &device)],
            proj: Projection::Linear(LoraLinear::new(&LinearConfig::new(6, 5), &device)),
        };
        let mut model = base.map(&mut CastAll(dtype));
        inject(
            &mut model,
            "a",
            &LoraConfig::new(2, 2.0),
            &TargetSelector::names(["to_q", "conv1"]),
        )
        .unwrap();
        let block = &model.block;
        assert_eq!(block.to_q.base.weight.val().dtype(), dtype);
        assert_eq!(block.to_q.adapters[0].down.weight.val().dtype(), DType::F32);
        assert_eq!(block.conv1.adapters[0].up.weight.val().dtype(), DType::F32);
        // The forward pass runs in the base dtype, the update in f32 cast back.
        let image = Tensor::<AD, 4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device)
            .cast(dtype);
        let h = block
            .conv1
            .forward(image)
            .mean_dim(3)
            .mean_dim(2)
            .flatten::<2>(1, 3);
        let out = block.to_q.forward(h);
        assert_eq!(out.dtype(), dtype);
        let grads = out.cast(DType::F32).powi_scalar(2).mean().backward();
        let g = block.to_q.adapters[0]
            .up
            .weight
            .grad(&grads)
            .expect("a gradient");
        assert_eq!(g.dtype(), DType::F32, "f32 gradients for f32 factors");
        assert!(block.to_q.base.weight.grad(&grads).is_none());
    }
}

#[test]
fn a_linear_on_a_4d_input_equals_burns_with_its_gradients() {
    type A = Autodiff<B>;
    let device = Default::default();
    let layer = LoraLinear::<A>::new(&LinearConfig::new(5, 3), &device);
    let x = Tensor::<A, 4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();
    let probe = Tensor::<A, 4>::random([2, 3, 4, 3], Distribution::Normal(0.0, 1.0), &device);
    let ours = layer.forward(x.clone());
    let burns = layer.base.forward(x.clone());
    assert_eq!(ours.dims(), [2, 3, 4, 3]);
    let grad = |y: Tensor<A, 4>| {
        let grads = (y * probe.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();
        let dw = layer.base.weight.grad(&grads).unwrap();
        (dx, dw)
    };
    let close = |a: Tensor<B, 4>, b: Tensor<B, 4>| (a - b).abs().max().into_scalar() < 1e-5;
    assert!(close(ours.clone().inner(), burns.clone().inner()));
    let ((dx, dw), (dx_burn, dw_burn)) = (grad(ours), grad(burns));
    assert!(close(dx, dx_burn), "input gradient");
    assert!(
        (dw - dw_burn).abs().max().into_scalar() < 1e-5,
        "weight gradient"
    );
}

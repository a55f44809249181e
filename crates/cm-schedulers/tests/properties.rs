//! Property tests of the consistency math (no reference values needed: each asserts an identity
//! that a wrong implementation breaks).

use burn::tensor::{Distribution, Tensor};
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::{PredictionType, SchedulerConfig};
use cm_schedulers::consistency::{
    ConsistencyParameterisation, DdimToBoundary, LcmParameterisation, Parameterisation,
};
use cm_schedulers::ddim::{ddim_move, predict_x0_and_eps};
use cm_schedulers::lcm::lcm_timesteps;
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::solver::{DdimSolver, SolverVariant};

type B = burn::backend::Flex;

fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(&SchedulerConfig::sd15())
}

fn randn(seed: u64) -> Tensor<B, 4> {
    use burn::tensor::backend::Backend;
    B::seed(&Default::default(), seed);
    Tensor::random(
        [2, 4, 8, 8],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    )
}

fn max_abs_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn ddim_to_boundary_is_exactly_the_identity_at_the_boundary() {
    let f = DdimToBoundary {
        prediction_type: PredictionType::Epsilon,
    };
    let x = randn(1);
    for b in [0, 259, 499] {
        let out = f
            .consistency_output(&schedule(), randn(2), x.clone(), &[b, b], &[b, b])
            .unwrap();
        assert_eq!(
            out.into_data(),
            x.clone().into_data(),
            "f(x_b, b) != x_b at b = {b}"
        );
    }
}

#[test]
fn ddim_step_from_t_to_t_is_the_identity() {
    let s = schedule();
    let (x, eps) = (randn(3), randn(4));
    for t in [19, 500, 999] {
        let a = s.alpha_bar(t).unwrap();
        let (x0, e) = predict_x0_and_eps(PredictionType::Epsilon, eps.clone(), x.clone(), a);
        let back = ddim_move(x0, e, a);
        assert!(max_abs_diff(back, x.clone()) < 1e-4, "t = {t}");
    }
}

#[test]
fn solver_with_the_true_noise_lands_on_the_forward_process() {
    let s = schedule();
    for variant in [SolverVariant::Diffusers, SolverVariant::Seed] {
        let solver = DdimSolver::new(s.clone(), 50, variant).unwrap();
        assert_eq!(solver.timesteps().len(), 50);
        assert_eq!((solver.timesteps()[0], solver.timesteps()[49]), (19, 999));
        let (x0, noise) = (randn(5), randn(6));
        for index in [0, 10, 49] {
            let (t, sx) = solver.pair(index).unwrap();
            assert_eq!(sx, t.saturating_sub(20));
            let x_t = s.add_noise(x0.clone(), noise.clone(), &[t, t]).unwrap();
            // A perfect teacher: its eps is the true noise.
            let x_s = solver
                .step(
                    PredictionType::Epsilon,
                    noise.clone(),
                    x_t,
                    &[t, t],
                    &[sx, sx],
                )
                .unwrap();
            let a = solver.alpha_bar(sx).unwrap();
            let expected = x0.clone() * a.sqrt() + noise.clone() * (1.0 - a).sqrt();
            assert!(
                max_abs_diff(x_s, expected) < 1e-4,
                "{variant:?} index {index}"
            );
        }
    }
    // The seed variant treats timestep 0 as clean data.
    let seed = DdimSolver::new(s.clone(), 50, SolverVariant::Seed).unwrap();
    assert_eq!(seed.alpha_bar(0).unwrap(), 1.0);
    let diffusers = DdimSolver::new(s.clone(), 50, SolverVariant::Diffusers).unwrap();
    assert_eq!(diffusers.alpha_bar(0).unwrap(), s.alphas_cumprod()[0]);
}

#[test]
fn per_example_values_equal_one_example_at_a_time() {
    // A batch with a different (t, b) per example gives, row by row, what each example gives alone:
    // the per-example path of the step (diffusers' `extract_into_tensor`).
    let s = schedule();
    let (x, out) = (randn(11), randn(12));
    let ts = [999, 279];
    let bs = [759, 259];
    for f in [
        Parameterisation::DdimToBoundary(DdimToBoundary {
            prediction_type: PredictionType::Epsilon,
        }),
        Parameterisation::Lcm(LcmParameterisation {
            prediction_type: PredictionType::VPrediction,
            timestep_scaling: 10.0,
        }),
    ] {
        let batched = f
            .consistency_output(&s, out.clone(), x.clone(), &ts, &bs)
            .unwrap();
        for i in 0..2 {
            let row = |t: Tensor<B, 4>| t.narrow(0, i, 1);
            let single = f
                .consistency_output(&s, row(out.clone()), row(x.clone()), &ts[i..=i], &bs[i..=i])
                .unwrap();
            assert!(
                max_abs_diff(row(batched.clone()), single) < 1e-6,
                "{f:?} row {i}"
            );
        }
    }
    // The linear form equals the explicit x0 / eps route of the scalar samplers.
    let f = DdimToBoundary {
        prediction_type: PredictionType::Epsilon,
    };
    let ours = f
        .consistency_output(&s, out.clone(), x.clone(), &[499, 499], &[259, 259])
        .unwrap();
    let (x0, e) = predict_x0_and_eps(PredictionType::Epsilon, out, x, s.alpha_bar(499).unwrap());
    let explicit = ddim_move(x0, e, s.alpha_bar(259).unwrap());
    assert!(max_abs_diff(ours, explicit) < 1e-5);
    // Mismatched lengths are errors, not panics.
    assert!(f.coefficients(&s, &[10, 20], &[0]).is_err());
    assert_eq!(
        BoundarySet::evenly_spaced(4, 1000, 50)
            .unwrap()
            .boundaries_at_or_below(&[999, 259, 258, 0]),
        vec![759, 259, 0, 0]
    );
}

#[test]
fn k_segments_means_k_segments() {
    for k in 1..=8 {
        let set = BoundarySet::evenly_spaced(k, 1000, 50).unwrap();
        assert_eq!(set.num_segments(), k);
        assert_eq!(set.boundaries()[0], 0);
        assert_eq!(
            set.sampling_timesteps().len(),
            k,
            "one sampling step per segment"
        );
        assert!(set.boundaries().windows(2).all(|w| w[0] < w[1]));
    }
    let four = BoundarySet::evenly_spaced(4, 1000, 50).unwrap();
    assert_eq!(four.boundaries(), &[0, 259, 499, 759]);
    assert_eq!(four.sampling_timesteps(), vec![999, 759, 499, 259]);
    // Sampling visits diffusers' LCM timesteps.
    let lcm = lcm_timesteps(&SchedulerConfig::sd15(), 4).unwrap();
    assert_eq!(four.sampling_timesteps(), lcm);
    assert_eq!(four.boundary_at_or_below(499), 499);
    assert_eq!(four.boundary_at_or_below(498), 259);
    assert_eq!(four.boundary_below(499), 259);
    assert!(BoundarySet::evenly_spaced(51, 1000, 50).is_err());
    assert!(BoundarySet::evenly_spaced(0, 1000, 50).is_err());
    assert!(BoundarySet::explicit(&[0, 300, 200], 1000).is_err());
    assert!(BoundarySet::explicit(&[10, 300], 1000).is_err());
}

#[test]
fn lcm_parameterisation_tends_to_the_sample_at_t_zero() {
    let f = LcmParameterisation {
        prediction_type: PredictionType::Epsilon,
        timestep_scaling: 10.0,
    };
    let x = randn(7);
    let out = f
        .consistency_output(&schedule(), randn(8), x.clone(), &[0, 0], &[0, 0])
        .unwrap();
    // c_skip(0) = 1, c_out(0) = 0.
    assert_eq!(out.into_data(), x.into_data());
}

#[test]
fn lcm_custom_timesteps_are_validated_and_used() {
    use cm_schedulers::lcm::LcmScheduler;
    let mut s = LcmScheduler::new(SchedulerConfig::sd15());
    assert_eq!(
        s.set_custom_timesteps(&[999, 500, 100]).unwrap(),
        &[999, 500, 100]
    );
    assert!(s.set_custom_timesteps(&[]).is_err());
    assert!(s
        .set_custom_timesteps(&[1000])
        .unwrap_err()
        .to_string()
        .contains("1000"));
    assert!(s
        .set_custom_timesteps(&[500, 700])
        .unwrap_err()
        .to_string()
        .contains("descending"));
    // The last step returns the denoised sample without re-noising.
    s.set_custom_timesteps(&[999, 499]).unwrap();
    let x = randn(9);
    let last = s.step(randn(10), 1, x.clone(), None).unwrap();
    assert_eq!(last.prev_sample.into_data(), last.denoised.into_data());
    assert!(s
        .step(randn(10), 0, x, None)
        .unwrap_err()
        .to_string()
        .contains("fresh noise"));
}

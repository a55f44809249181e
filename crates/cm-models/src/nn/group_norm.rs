//! GroupNorm on `[batch, channels, h, w]` maps, the same function as `burn::nn::GroupNorm::forward`
//! (and torch's `nn.GroupNorm`), arranged so that every full-size element-wise operation is one
//! the CPU backend runs on its SIMD paths.
//!
//! Why not Burn's own forward: it ends with `x * gamma[1, C, 1, 1] + beta[1, C, 1, 1]`, a broadcast
//! over the batch *and* the spatial axes that Burn-flex 0.21 can only walk element by element
//! (`StridedIter`), forward and backward: 10-12% of a CPU LoRA-distillation step was spent there
//! (`perf`, 2026-11-28, docs/benchmarks.md). Here the per-channel affine is folded into one
//! per-`(sample, channel)` scale and shift (`[batch * channels, 1]`, a few hundred numbers), so the
//! full-size work is `x - mean` (per-row scalar), `* scale` and `+ shift` (per-row scalars): the
//! patterns Burn-flex vectorises. The module (`GroupNorm`, its `gamma`/`beta` parameters and
//! their checkpoint keys) stays Burn's; only the forward is ours.

use burn::nn::GroupNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `norm(x)` for a `[batch, channels, h, w]` map; equal to `norm.forward(x)` up to rounding.
///
/// # Panics
/// When `x` does not have `norm.num_channels` channels (as Burn's forward does).
pub fn group_norm<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, channels, height, width] = x.dims();
    assert_eq!(
        channels, norm.num_channels,
        "GroupNorm: the input has {channels} channels, the module expects {}",
        norm.num_channels
    );
    let groups = norm.num_groups;
    let per_group = channels / groups;
    // 1. Statistics per (sample, group), two-pass (centred) variance as torch computes it.
    let grouped = x.reshape([batch, groups, per_group * height * width]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped - mean;
    let var = centered.clone().square().mean_dim(2);
    // 1 / std: [batch, groups, 1].
    let inv_std = var.add_scalar(norm.epsilon).sqrt().recip();
    // 2. Per-(sample, channel) scale gamma / std and shift beta: [batch * channels, 1].
    let rows = batch * channels;
    let centered = centered.reshape([rows, height * width]);
    let (scale, shift) = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => {
            let gamma = gamma.val().reshape([1, groups, per_group]);
            let scale = (inv_std * gamma).reshape([rows, 1]);
            let beta = beta.val().reshape([1, channels]);
            let shift = Tensor::cat(vec![beta; batch], 0).reshape([rows, 1]);
            (scale, Some(shift))
        }
        _ => {
            let scale = inv_std.expand([batch, groups, per_group]);
            (scale.reshape([rows, 1]), None)
        }
    };
    // 3. The only full-size passes: (x - mean) * scale (+ shift).
    let out = centered * scale;
    let out = match shift {
        Some(shift) => out + shift,
        None => out,
    };
    out.reshape([batch, channels, height, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Distribution, TensorData};
    use cm_io::compare::max_abs_error;

    type B = Autodiff<Flex>;

    fn random_norm(groups: usize, channels: usize, affine: bool) -> GroupNorm<B> {
        let device = Default::default();
        let mut norm: GroupNorm<B> = GroupNormConfig::new(groups, channels)
            .with_epsilon(1e-6)
            .with_affine(affine)
            .init(&device);
        if affine {
            let random = |shift: f64| {
                Param::from_tensor(
                    Tensor::<B, 1>::random([channels], Distribution::Normal(shift, 0.5), &device)
                        .require_grad(),
                )
            };
            norm.gamma = Some(random(1.0));
            norm.beta = Some(random(0.0));
        }
        norm
    }

    /// Output and every gradient (input, gamma, beta) equal Burn's GroupNorm on a batch of 3
    /// with an uneven loss, so that a wrong broadcast or reduction axis shows.
    fn check(groups: usize, channels: usize, affine: bool) {
        let device = Default::default();
        let norm = random_norm(groups, channels, affine);
        let x =
            Tensor::<B, 4>::random([3, channels, 5, 4], Distribution::Normal(0.3, 2.0), &device)
                .require_grad();
        let weights = Tensor::<B, 4>::random([3, channels, 5, 4], Distribution::Default, &device);
        let ours = group_norm(&norm, x.clone());
        let burns = norm.forward(x.clone());
        let forward_error = max_abs_error(&ours.to_data(), &burns.to_data());
        assert!(forward_error < 1e-5, "forward differs by {forward_error}");
        let grads_ours = (ours * weights.clone()).sum().backward();
        let grads_burn = (burns * weights).sum().backward();
        let grad =
            |g: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| -> Vec<TensorData> {
                let mut out = vec![x.grad(g).expect("input grad").into_data()];
                if affine {
                    for p in [&norm.gamma, &norm.beta] {
                        out.push(
                            p.as_ref()
                                .unwrap()
                                .val()
                                .grad(g)
                                .expect("param grad")
                                .into_data(),
                        );
                    }
                }
                out
            };
        let names = ["input", "gamma", "beta"];
        for ((a, b), name) in grad(&grads_ours).iter().zip(&grad(&grads_burn)).zip(names) {
            let error = max_abs_error(a, b);
            assert!(error < 1e-4, "gradient of {name} differs by {error}");
        }
    }

    #[test]
    fn matches_burn_group_norm_with_affine() {
        check(4, 12, true);
    }

    #[test]
    fn matches_burn_group_norm_without_affine() {
        check(2, 6, false);
    }

    #[test]
    #[should_panic(expected = "the input has 5 channels, the module expects 6")]
    fn refuses_a_wrong_channel_count() {
        let norm = random_norm(2, 6, true);
        group_norm(
            &norm,
            Tensor::<B, 4>::zeros([1, 5, 2, 2], &Default::default()),
        );
    }
}

//! GEGLU's activation (diffusers `GEGLU.forward` after its projection): the projection's output
//! `[.., 2 * inner]` split into `hidden` and `gate` on the last axis, `hidden * gelu(gate)`,
//! fused on Burn-flex.
//!
//! Burn 0.21 runs it as a split (two strided views), the exact GELU (a scalar `erff` pass), and a
//! product, and autodiff backward a GELU backward (scalar `erff` and `expf` again), two products
//! and the halves' gradients written back into a zero tensor. Here the kernel reads both halves
//! of each row in place and writes the output in one vectorised pass, and the backward writes
//! both halves' gradients in one more ([`super::vector_math::geglu_rows`],
//! [`super::vector_math::geglu_backward_rows`], through [`super::flex_kernel`]); other backends
//! keep Burn's composition.

use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};

use super::flex_kernel::{apply, FusedKernel};
use super::vector_math::{geglu_backward_rows, geglu_rows};

/// `hidden * gelu(gate)` where `[hidden, gate] = projected.chunk(2, -1)`.
///
/// # Shapes
/// `projected`: `[batch, tokens, 2 * inner]` -> `[batch, tokens, inner]`.
///
/// # Panics
/// If the last axis is odd.
pub fn geglu<B: Backend>(projected: Tensor<B, 3>) -> Tensor<B, 3> {
    let [_, _, width] = projected.dims();
    assert!(
        width % 2 == 0,
        "GEGLU: the projection's width {width} is odd"
    );
    apply::<Geglu, B, 3, 3>(projected, |projected| {
        let [hidden, gate] = projected.chunk(2, 2).try_into().expect("two halves");
        // Each half is a strided view (rows of `inner` values, `2 * inner` apart).
        super::contiguous(hidden) * gelu(super::contiguous(gate))
    })
}

#[derive(Debug)]
struct Geglu;

impl Geglu {
    fn inner(input: &Shape) -> usize {
        input.as_slice()[input.num_dims() - 1] / 2
    }
}

impl FusedKernel for Geglu {
    fn output_shape(input: &Shape) -> Shape {
        let mut output = input.clone();
        let last = output.num_dims() - 1;
        output.as_mut_slice()[last] /= 2;
        output
    }

    fn forward(x: &[f32], input: &Shape, out: &mut [f32]) {
        geglu_rows(x, Self::inner(input), out)
    }

    fn backward(x: &[f32], grad: &[f32], input: &Shape, dx: &mut [f32]) {
        geglu_backward_rows(x, grad, Self::inner(input), dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::Distribution;
    use cm_io::compare::max_abs_error;

    fn burns<B: Backend>(projected: Tensor<B, 3>) -> Tensor<B, 3> {
        let [hidden, gate] = projected.chunk(2, 2).try_into().unwrap();
        hidden * gelu(gate)
    }

    /// Output and the projection's gradient equal Burn's composition, with an uneven loss.
    fn matches_burn<B: AutodiffBackend>() {
        let device = Default::default();
        let projected =
            Tensor::<B, 3>::random([2, 9, 2 * 24], Distribution::Normal(0.0, 2.0), &device)
                .require_grad();
        let weights = Tensor::<B, 3>::random([2, 9, 24], Distribution::Default, &device);
        let ours = geglu(projected.clone());
        let theirs = burns(projected.clone());
        let forward = max_abs_error(&ours.to_data(), &theirs.to_data());
        assert!(forward < 1e-5, "forward differs by {forward}");
        let grad_ours = projected
            .grad(&(ours * weights.clone()).sum().backward())
            .unwrap();
        let grad_theirs = projected
            .grad(&(theirs * weights).sum().backward())
            .unwrap();
        let backward = max_abs_error(&grad_ours.into_data(), &grad_theirs.into_data());
        assert!(backward < 1e-5, "gradient differs by {backward}");
    }

    #[test]
    fn matches_burns_geglu_under_autodiff() {
        matches_burn::<Autodiff<Flex>>();
    }

    #[test]
    fn matches_burns_geglu_under_checkpointed_autodiff() {
        matches_burn::<Autodiff<Flex, BalancedCheckpointing>>();
    }

    #[test]
    fn matches_burns_geglu_on_a_strided_input_without_autodiff() {
        let device = Default::default();
        let x = Tensor::<Flex, 3>::random([3, 16, 5], Distribution::Normal(0.0, 3.0), &device);
        let strided = x.swap_dims(1, 2);
        let error = max_abs_error(
            &geglu(strided.clone()).into_data(),
            &burns(strided).into_data(),
        );
        assert!(error < 1e-5, "forward differs by {error}");
    }

    #[test]
    #[should_panic(expected = "the projection's width 7 is odd")]
    fn refuses_an_odd_width() {
        geglu(Tensor::<Flex, 3>::zeros([1, 2, 7], &Default::default()));
    }
}

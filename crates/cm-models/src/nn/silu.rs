//! SiLU (`x * sigmoid(x)`, diffusers' `act_fn = "silu"`), fused on Burn-flex.
//!
//! Burn 0.21 builds `silu(x)` as `x * sigmoid(x)`, two tracked operations: on Burn-flex a
//! scalar-`expf` pass and a product forward; backward, autodiff recomputes the sigmoid (another
//! scalar `expf` pass), then runs the sigmoid's backward, two products and a sum, and SiLU follows
//! every GroupNorm of the UNet and the VAE. Here it is one vectorised pass each way
//! ([`super::vector_math::silu_slice`], [`super::vector_math::silu_backward_slice`]) through
//! [`super::flex_kernel`], and Burn's composition on other backends.

use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor};

use super::flex_kernel::{apply, FusedKernel};
use super::vector_math::{silu_backward_slice, silu_slice};

/// `silu(x) = x * sigmoid(x)`, element-wise; equal to `burn::tensor::activation::silu` up to
/// rounding (module docs).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    apply::<Silu, B, D, D>(x, burn::tensor::activation::silu)
}

#[derive(Debug)]
struct Silu;

impl FusedKernel for Silu {
    fn output_shape(input: &Shape) -> Shape {
        input.clone()
    }

    fn forward(x: &[f32], _: &Shape, out: &mut [f32]) {
        silu_slice(x, out)
    }

    fn backward(x: &[f32], grad: &[f32], _: &Shape, dx: &mut [f32]) {
        silu_backward_slice(x, grad, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{DType, Distribution};
    use cm_io::compare::max_abs_error;

    /// Forward values and the input gradient equal Burn's composition, on a strided (transposed)
    /// input and with an uneven loss, under autodiff with strategy `C`.
    fn matches_burn<B: AutodiffBackend>() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 7, 33], Distribution::Normal(0.0, 4.0), &device)
            .require_grad();
        let weights = Tensor::<B, 3>::random([2, 33, 7], Distribution::Default, &device);
        let ours = silu(x.clone().swap_dims(1, 2));
        let burns = burn::tensor::activation::silu(x.clone().swap_dims(1, 2));
        let forward = max_abs_error(&ours.to_data(), &burns.to_data());
        assert!(forward < 1e-5, "forward differs by {forward}");
        let grad_ours = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
        let grad_burn = x.grad(&(burns * weights).sum().backward()).unwrap();
        let backward = max_abs_error(&grad_ours.into_data(), &grad_burn.into_data());
        assert!(backward < 1e-5, "gradient differs by {backward}");
    }

    #[test]
    fn matches_burns_silu_under_autodiff() {
        matches_burn::<Autodiff<Flex>>();
    }

    #[test]
    fn matches_burns_silu_under_checkpointed_autodiff() {
        matches_burn::<Autodiff<Flex, BalancedCheckpointing>>();
    }

    #[test]
    fn matches_burns_silu_without_autodiff_and_keeps_other_dtypes_on_burns_path() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([5, 300], Distribution::Normal(0.0, 6.0), &device);
        let error = max_abs_error(
            &silu(x.clone()).into_data(),
            &burn::tensor::activation::silu(x.clone()).into_data(),
        );
        assert!(error < 1e-5, "forward differs by {error}");
        let half = x.cast(DType::F16);
        let ours = silu(half.clone());
        assert_eq!(ours.dtype(), DType::F16);
        assert_eq!(
            ours.into_data(),
            burn::tensor::activation::silu(half).into_data()
        );
    }

    #[test]
    fn an_input_that_needs_no_gradient_gives_none_and_the_graph_still_runs() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let frozen = Tensor::<B, 1>::from_floats([-1.0, 0.5, 2.0], &device);
        let leaf = Tensor::<B, 1>::from_floats([1.0, 1.0, 1.0], &device).require_grad();
        let grads = (silu(frozen.clone()) * leaf.clone()).sum().backward();
        assert!(frozen.grad(&grads).is_none());
        let expected = burn::tensor::activation::silu(frozen.inner()).into_data();
        let error = max_abs_error(&leaf.grad(&grads).unwrap().into_data(), &expected);
        assert!(error < 1e-6, "the leaf's gradient differs by {error}");
    }
}

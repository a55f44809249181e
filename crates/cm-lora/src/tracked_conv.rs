//! A stride-1 `Conv2d` under `Autodiff<Flex>` with its own backward: both gradients as GEMMs over
//! shifted windows, instead of Burn's generic convolution backward.
//!
//! Why: Burn 0.21 differentiates a convolution with two generic rules that are slow on Burn-flex.
//! The input's gradient is a transposed convolution, whose Burn-flex kernel scatters its GEMM's
//! columns back into the image with a scalar seven-deep loop; the weight's gradient swaps the
//! batch and channel axes of the input and of the output gradient (copies that Burn-flex walks one
//! element at a time, `StridedIter`) and runs a convolution whose kernel is the whole image. A
//! `perf` profile of the demo teacher's decoder training spent 11.6% in that scatter, 18% in those
//! strided copies and 13% in the large-kernel im2col (2026-12-03, `docs/benchmarks.md`).
//!
//! Here, for stride 1, dilation 1, one group and padding `p <= k - 1` (every 3x3 and 1x1
//! convolution of the UNet and the VAE but their stride-2 downsamplers):
//! 1. forward: [`flex_conv2d`] (GEMMs over row tiles, `crate::tiled_conv`; Burn-flex's own for
//!    1x1 kernels);
//! 2. input gradient: the convolution of the output gradient with the kernel transposed and
//!    flipped (one contiguous copy, built in parallel), padding `k - 1 - p`, by the same
//!    [`flex_conv2d`];
//! 3. weight gradient: the input's shifted-window columns `[batch, in * kh * kw, h_out * wp]`
//!    (the forward's im2col on the padded width) times the output gradient padded to that width,
//!    one batched GEMM `[batch, out, h_out * wp] x [batch, h_out * wp, in * kh * kw]` summed over
//!    the batch; the columns' row order is the kernel's own, so no re-ordering;
//! 4. bias gradient: the output gradient summed over batch and space.
//!
//! Other backends, dtypes and geometries keep Burn's `Conv2d::forward` (see
//! [`crate::shifted_conv::conv2d_forward`], which picks this path). The forward ran on Burn-flex's
//! own convolution and the input gradient on one GEMM over the full shifted-window columns until
//! the row tiles measured faster (2026-12-04, `docs/benchmarks.md`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use crate::flex::{cast, is_tracked_flex, kernels_disabled, FlexAutodiffTensor};
use crate::shifted_conv::{shifted_columns, ShiftedColumns};
use crate::tiled_conv::{flex_conv2d, stride_one_f32};

/// Whether [`conv2d_tracked`] applies: `Autodiff<Flex>` in `f32`, stride 1, dilation 1, one group,
/// a padding `p <= k - 1` on each axis, and the kernels not turned off (`CM_FUSED=burn`).
pub fn tracked_conv_applies<B: Backend>(
    dtypes: &[DType],
    kernel: [usize; 2],
    padding: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    is_tracked_flex::<B>()
        && stride_one_f32(dtypes, kernel, padding, stride, dilation, groups)
        && !kernels_disabled()
}

/// `conv2d(x, weight, bias)` with stride 1 and `padding` zero pixels on each side, differentiated
/// by this module's backward (module docs).
///
/// # Panics
/// Unless [`tracked_conv_applies`] holds for these tensors, or if the channel counts disagree.
pub fn conv2d_tracked<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    padding: [usize; 2],
) -> Tensor<B, 4> {
    assert!(
        is_tracked_flex::<B>(),
        "conv2d_tracked: only for Autodiff<Flex>"
    );
    let tracked = |t: TensorPrimitive<B>| -> FlexAutodiffTensor { cast(t.tensor()) };
    let x = tracked(x.into_primitive());
    let weight = tracked(weight.into_primitive());
    let bias = bias.map(|b| tracked(b.into_primitive()));
    // 1. The forward: GEMMs over row tiles (Burn-flex's own for 1x1 kernels).
    let output = flex_conv2d(
        x.primitive.clone(),
        weight.primitive.clone(),
        bias.as_ref().map(|b| b.primitive.clone()),
        padding,
    );
    let state = ConvState {
        x: x.primitive.clone(),
        weight: weight.primitive.clone(),
        padding,
    };
    let result = match bias {
        Some(bias) => {
            match <ConvBackward as Backward<Flex, 3>>::prepare::<NoCheckpointing>(
                ConvBackward,
                [x.node.clone(), weight.node.clone(), bias.node.clone()],
            )
            .compute_bound()
            .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
        None => {
            match <ConvBackward as Backward<Flex, 2>>::prepare::<NoCheckpointing>(
                ConvBackward,
                [x.node.clone(), weight.node.clone()],
            )
            .compute_bound()
            .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(cast(result)))
}

/// What the backward needs: the input and the kernel (shared buffers, not copies).
#[derive(Debug, Clone)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    padding: [usize; 2],
}

/// The tracked convolution, with (`N = 3`) or without (`N = 2`) a bias.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = bias_node {
            grads.register::<Flex>(node.id, bias_gradient(grad.clone()));
        }
        let (dx, dw) = conv_gradients(ops.state, grad, x_node.is_some(), weight_node.is_some());
        if let (Some(node), Some(dw)) = (weight_node, dw) {
            grads.register::<Flex>(node.id, dw);
        }
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, dx);
        }
    }
}

impl Backward<Flex, 2> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, weight_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (dx, dw) = conv_gradients(ops.state, grad, x_node.is_some(), weight_node.is_some());
        if let (Some(node), Some(dw)) = (weight_node, dw) {
            grads.register::<Flex>(node.id, dw);
        }
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, dx);
        }
    }
}

fn flex<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// The input's and the kernel's gradients, each only when asked for.
fn conv_gradients(
    state: ConvState,
    grad: FlexTensor,
    want_x: bool,
    want_weight: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let ConvState { x, weight, padding } = state;
    let (x, weight, grad) = (flex::<4>(x), flex::<4>(weight), flex::<4>(grad));
    let dw =
        want_weight.then(|| primitive(weight_gradient(x, grad.clone(), weight.dims(), padding)));
    let dx = want_x.then(|| primitive(input_gradient(grad, weight, padding)));
    (dx, dw)
}

/// Step 2: `dx = conv2d(dy, flip(W)^T, padding k - 1 - p)`.
fn input_gradient(
    grad: Tensor<Flex, 4>,
    weight: Tensor<Flex, 4>,
    padding: [usize; 2],
) -> Tensor<Flex, 4> {
    let [_, _, kh, kw] = weight.dims();
    let transposed = flipped_transposed(&primitive(weight));
    flex(flex_conv2d(
        primitive(grad),
        transposed,
        None,
        [kh - 1 - padding[0], kw - 1 - padding[1]],
    ))
}

/// `flip(W)^T`: the kernel `[out, in, kh, kw]` as `[in, out, kh, kw]` with each `kh x kw` block
/// of taps reversed, as a new contiguous tensor in one pass. (As a `swap_dims` + `flip` view, the
/// next reshape copied it element by element: 5% of an SD1.5 LoRA training step's `perf`
/// samples, 2026-12-04.)
fn flipped_transposed(weight: &FlexTensor) -> FlexTensor {
    let [c_out, c_in, kh, kw] = weight.layout().shape().dims();
    let taps = kh * kw;
    let w = crate::flex::values(weight);
    let mut out = vec![0.0f32; w.len()];
    // Output block `i` (all `c_out` kernels of input channel `i`) per task.
    out.par_chunks_mut(c_out * taps)
        .enumerate()
        .for_each(|(i, per_in)| {
            for (o, dst) in per_in.chunks_exact_mut(taps).enumerate() {
                let block = &w[(o * c_in + i) * taps..][..taps];
                for (d, &src) in dst.iter_mut().zip(block.iter().rev()) {
                    *d = src;
                }
            }
        });
    FlexTensor::from_data(burn::tensor::TensorData::new(out, [c_in, c_out, kh, kw]))
}

/// Step 3: `dW[o, (i, ky, kx)] = sum_b dy_padded[b] columns[b]^T`.
fn weight_gradient(
    x: Tensor<Flex, 4>,
    grad: Tensor<Flex, 4>,
    weight_dims: [usize; 4],
    padding: [usize; 2],
) -> Tensor<Flex, 4> {
    let [c_out, c_in, kh, kw] = weight_dims;
    let ShiftedColumns {
        columns,
        h_out,
        w_out,
        wp,
    } = shifted_columns(x, c_in, [kh, kw], padding);
    let [batch, _, _, _] = grad.dims();
    // The output gradient on the padded width: zeros where the columns run past the image.
    let grad = grad
        .pad(
            [(0, 0), (0, 0), (0, 0), (0, wp - w_out)],
            PadMode::Constant(0.0),
        )
        .reshape([batch, c_out, h_out * wp]);
    grad.matmul(columns.swap_dims(1, 2))
        .sum_dim(0)
        .reshape([c_out, c_in, kh, kw])
}

/// Step 4: `db[o] = sum over batch and space of dy[., o, ., .]`.
fn bias_gradient(grad: FlexTensor) -> FlexTensor {
    let grad = flex::<4>(grad);
    let [batch, c_out, h, w] = grad.dims();
    primitive(
        grad.reshape([batch, c_out, h * w])
            .sum_dim(2)
            .sum_dim(0)
            .reshape([c_out]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn the_flipped_transposed_kernel_equals_burns_view() {
        // kh != kw and in != out, so that a swapped axis or a one-axis flip cannot pass.
        let w = Tensor::<Flex, 4>::random(
            [4, 3, 2, 3],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let ours = flex::<4>(flipped_transposed(&primitive(w.clone())));
        assert_eq!(ours.into_data(), w.swap_dims(0, 1).flip([2, 3]).into_data());
    }

    /// Output and every gradient equal Burn's convolution, with an uneven loss.
    fn matches_burn<A: AutodiffBackend>(
        batch: usize,
        c_in: usize,
        c_out: usize,
        hw: [usize; 2],
        kernel: [usize; 2],
        padding: [usize; 2],
        with_bias: bool,
    ) {
        let device = Default::default();
        let leaf = |shape: [usize; 4]| {
            Tensor::<A, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
        };
        let x = leaf([batch, c_in, hw[0], hw[1]]);
        let weight = leaf([c_out, c_in, kernel[0], kernel[1]]);
        let bias = with_bias.then(|| {
            Tensor::<A, 1>::random([c_out], Distribution::Normal(0.0, 1.0), &device).require_grad()
        });
        let ours = conv2d_tracked(x.clone(), weight.clone(), bias.clone(), padding);
        let burns = conv2d(
            x.clone(),
            weight.clone(),
            bias.clone(),
            ConvOptions::new([1, 1], padding, [1, 1], 1),
        );
        assert_eq!(ours.dims(), burns.dims());
        let tol = Tolerance::absolute(1e-4);
        ours.to_data()
            .assert_approx_eq::<f32>(&burns.to_data(), tol);
        let probe = Tensor::<A, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_burn = (burns * probe).sum().backward();
        let check = |name: &str,
                     a: Option<Tensor<A::InnerBackend, 4>>,
                     b: Option<Tensor<A::InnerBackend, 4>>| {
            let (a, b) = (a.expect(name), b.expect(name));
            a.into_data().assert_approx_eq::<f32>(&b.into_data(), tol);
        };
        check("x", x.grad(&grads_ours), x.grad(&grads_burn));
        check("weight", weight.grad(&grads_ours), weight.grad(&grads_burn));
        if let Some(bias) = bias {
            bias.grad(&grads_ours)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&bias.grad(&grads_burn).unwrap().into_data(), tol);
        }
    }

    #[test]
    fn equals_burns_convolution_and_gradients_3x3_same_padding() {
        matches_burn::<Autodiff<Flex>>(3, 4, 5, [6, 7], [3, 3], [1, 1], true);
    }

    #[test]
    fn equals_burns_convolution_and_gradients_1x1_without_bias() {
        matches_burn::<Autodiff<Flex>>(2, 6, 3, [5, 4], [1, 1], [0, 0], false);
    }

    #[test]
    fn equals_burns_convolution_and_gradients_valid_and_uneven_kernels() {
        matches_burn::<Autodiff<Flex>>(2, 3, 4, [7, 6], [3, 2], [0, 1], true);
    }

    #[test]
    fn equals_burns_convolution_and_gradients_under_checkpointing() {
        matches_burn::<Autodiff<Flex, BalancedCheckpointing>>(
            2,
            4,
            4,
            [5, 5],
            [3, 3],
            [1, 1],
            true,
        );
    }

    #[test]
    fn a_frozen_kernel_gets_no_gradient_and_the_input_still_does() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let x = Tensor::<A, 4>::random([2, 3, 4, 4], Distribution::Default, &device).require_grad();
        let weight = Tensor::<A, 4>::random([2, 3, 3, 3], Distribution::Default, &device);
        let grads = conv2d_tracked(x.clone(), weight.clone(), None, [1, 1])
            .sum()
            .backward();
        assert!(weight.grad(&grads).is_none());
        assert_eq!(x.grad(&grads).unwrap().dims(), [2, 3, 4, 4]);
    }

    #[test]
    fn applies_only_to_stride_one_ungrouped_f32_convolutions_under_autodiff_on_flex() {
        type A = Autodiff<Flex>;
        let ok = |k, p, s, d, g| tracked_conv_applies::<A>(&[DType::F32], k, p, s, d, g);
        assert!(ok([3, 3], [1, 1], [1, 1], [1, 1], 1));
        assert!(ok([1, 1], [0, 0], [1, 1], [1, 1], 1));
        assert!(!ok([3, 3], [1, 1], [2, 2], [1, 1], 1), "stride 2");
        assert!(!ok([3, 3], [1, 1], [1, 1], [2, 2], 1), "dilation 2");
        assert!(!ok([3, 3], [1, 1], [1, 1], [1, 1], 2), "groups");
        assert!(
            !ok([3, 3], [3, 3], [1, 1], [1, 1], 1),
            "padding beyond k - 1"
        );
        assert!(!tracked_conv_applies::<A>(
            &[DType::F16],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1
        ));
        assert!(!tracked_conv_applies::<Flex>(
            &[DType::F32],
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            1
        ));
    }
}

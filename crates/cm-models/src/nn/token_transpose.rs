//! `[batch, rows, cols] -> [batch, cols, rows]` materialised contiguous by a cache-blocked copy,
//! with its own backward (the inverse transpose of the gradient) on Burn-flex: the
//! `[batch, channels, h * w] <-> [batch, h * w, channels]` swaps around every `Transformer2DModel`
//! and the VAE's spatial attention.
//!
//! Why: `swap_dims(1, 2)` is a strided view; the next operation that needs contiguous values
//! (a linear layer, a convolution, LayerNorm) copies it, and Burn-flex copies a view that does not
//! collapse to two dimensions element by element through its strided iterator (`StridedIter` and
//! `to_contiguous` were 9.1% of the demo training step's `perf` samples, 2026-12-04). Here every
//! `(batch, block of TILE output rows)` is one rayon task that copies TILE x TILE tiles, so both
//! sides of a tile stay in the core's cache.
//!
//! Every other backend or dtype (and `CM_FUSED=burn`) takes `swap_dims(1, 2)`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use cm_lora::flex::{cast, is_flex, is_tracked_flex, kernels_disabled, values, FlexAutodiffTensor};
use rayon::prelude::*;

/// Side of the square tiles copied at once (32 x 32 floats: 4 KiB read, 4 KiB written).
const TILE: usize = 32;

/// `x` with its last two dimensions swapped, as a contiguous tensor (module docs).
///
/// # Shapes
/// `x` `[batch, rows, cols]` -> `[batch, cols, rows]`.
pub fn transpose_tokens<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let dims = x.dims();
    if x.dtype() != DType::F32 || kernels_disabled() {
        return x.swap_dims(1, 2);
    }
    if is_flex::<B>() {
        let out = transposed(&cast(x.into_primitive().tensor()), dims);
        return Tensor::from_primitive(TensorPrimitive::Float(cast(out)));
    }
    if !is_tracked_flex::<B>() {
        return x.swap_dims(1, 2);
    }
    let x: FlexAutodiffTensor = cast(x.into_primitive().tensor());
    let out = transposed(&x.primitive, dims);
    let result = match TransposeBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(dims, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(cast(result)))
}

/// The gradient of `[batch, rows, cols] -> [batch, cols, rows]` is the transpose back; the state
/// is the input's dims.
#[derive(Debug)]
struct TransposeBackward;

impl Backward<Flex, 1> for TransposeBackward {
    type State = [usize; 3];

    fn backward(self, ops: Ops<[usize; 3], 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [batch, rows, cols] = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            transposed(&grad, [batch, cols, rows])
        });
    }
}

/// `x` (`dims`, any layout) transposed into a new contiguous `[batch, cols, rows]` tensor.
fn transposed(x: &FlexTensor, dims: [usize; 3]) -> FlexTensor {
    let [batch, rows, cols] = dims;
    let input = values(x);
    let mut out = vec![0.0f32; input.len()];
    transpose_planes(&input, dims, &mut out);
    FlexTensor::from_data(TensorData::new(out, [batch, cols, rows]))
}

/// `out[b][j][i] = x[b][i][j]` on row-major values.
fn transpose_planes(x: &[f32], [batch, rows, cols]: [usize; 3], out: &mut [f32]) {
    let plane = rows * cols;
    assert!(
        x.len() == batch * plane && out.len() == x.len(),
        "transpose_tokens: {} values for [{batch}, {rows}, {cols}]",
        x.len()
    );
    if plane == 0 {
        return;
    }
    // One task per (batch, block of TILE output rows = TILE input columns).
    out.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .for_each(|(out, x)| {
            out.par_chunks_mut(TILE * rows)
                .enumerate()
                .for_each(|(block, out)| {
                    let j0 = block * TILE;
                    for i0 in (0..rows).step_by(TILE) {
                        let i1 = (i0 + TILE).min(rows);
                        for (dj, out_row) in out.chunks_exact_mut(rows).enumerate() {
                            let j = j0 + dj;
                            for (i, slot) in (i0..i1).zip(&mut out_row[i0..i1]) {
                                *slot = x[i * cols + j];
                            }
                        }
                    }
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::Distribution;

    fn random<B: Backend>(dims: [usize; 3]) -> Tensor<B, 3> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn equals_swap_dims_across_partial_tiles() {
        // Neither side a multiple of TILE, one side under it, one plane and several.
        for dims in [[1, 70, 45], [3, 33, 7], [2, 1, 100], [2, TILE, TILE]] {
            let x = random::<Flex>(dims);
            let ours = transpose_tokens(x.clone());
            assert_eq!(ours.dims(), [dims[0], dims[2], dims[1]]);
            assert_eq!(ours.into_data(), x.swap_dims(1, 2).into_data(), "{dims:?}");
        }
    }

    #[test]
    fn reads_a_strided_input_by_its_values() {
        let x = random::<Flex>([2, 9, 40]).swap_dims(1, 2);
        let ours = transpose_tokens(x.clone());
        assert_eq!(ours.into_data(), x.swap_dims(1, 2).into_data());
    }

    fn gradient_is_the_transpose_back<A: AutodiffBackend>() {
        let x = random::<A>([2, 37, 50]).require_grad();
        let probe = random::<A>([2, 50, 37]);
        let ours = transpose_tokens(x.clone());
        assert_eq!(
            ours.to_data(),
            x.clone().swap_dims(1, 2).to_data(),
            "forward"
        );
        // An uneven loss, so that a wrong gradient layout cannot pass.
        let grads = (ours * probe.clone()).sum().backward();
        let expected = probe.swap_dims(1, 2).into_data();
        assert_eq!(x.grad(&grads).unwrap().into_data(), expected);
    }

    #[test]
    fn gradient_is_the_transpose_back_under_autodiff() {
        gradient_is_the_transpose_back::<Autodiff<Flex>>();
    }

    #[test]
    fn gradient_is_the_transpose_back_under_checkpointing() {
        gradient_is_the_transpose_back::<Autodiff<Flex, BalancedCheckpointing>>();
    }

    #[test]
    fn a_constant_input_gets_no_gradient_and_no_graph() {
        type A = Autodiff<Flex>;
        let x = random::<A>([1, 4, 6]);
        let leaf = random::<A>([1, 6, 4]).require_grad();
        let grads = (transpose_tokens(x.clone()) * leaf.clone())
            .sum()
            .backward();
        assert!(x.grad(&grads).is_none());
        assert_eq!(
            leaf.grad(&grads).unwrap().into_data(),
            x.swap_dims(1, 2).into_data()
        );
    }
}

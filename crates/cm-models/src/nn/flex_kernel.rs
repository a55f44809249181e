//! Fused element-wise operations with their own backward on Burn-flex, Burn's composition on
//! every other backend: the plumbing shared by [`super::silu`] and [`super::geglu`].
//!
//! Why: Burn 0.21 builds an activation such as SiLU or GELU from several tracked operations; on
//! Burn-flex each is a separate full-size pass with a scalar `expf`/`erff`, and autodiff keeps and
//! recomputes intermediates (`docs/benchmarks.md`: scalar `expf` 6.2% of the demo training step).
//! A [`FusedKernel`] is one pass forward and one pass backward over the saved input.
//!
//! The backend is recognised at run time (`cm_lora::flex`): Burn-flex and `Autodiff<Flex, C>`
//! (any checkpointing strategy) take the kernel; anything else (CUDA, a quantised tensor, a dtype
//! other than `f32`, or `CM_FUSED=burn` in the environment) takes the caller's fallback, Burn's
//! own composition.

use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use cm_lora::flex::{cast, is_flex, is_tracked_flex, kernels_disabled, values, FlexAutodiffTensor};

/// An element-wise operation of one `f32` input, forward and backward, on row-major values.
pub(crate) trait FusedKernel: std::fmt::Debug + Send + Sync + 'static {
    /// The output's shape for an input of `input` shape.
    fn output_shape(input: &Shape) -> Shape;
    /// `out = f(x)`; `out` has `output_shape(x)`'s length.
    fn forward(x: &[f32], input: &Shape, out: &mut [f32]);
    /// `dx = grad * f'(x)` (the vector-Jacobian product); `dx` has `x`'s length.
    fn backward(x: &[f32], grad: &[f32], input: &Shape, dx: &mut [f32]);
}

/// `K` applied to `x` (module docs); `fallback` computes the same on any other backend or dtype.
pub(crate) fn apply<K: FusedKernel, B: Backend, const DI: usize, const DO: usize>(
    x: Tensor<B, DI>,
    fallback: impl FnOnce(Tensor<B, DI>) -> Tensor<B, DO>,
) -> Tensor<B, DO> {
    let flex = is_flex::<B>();
    if x.dtype() != DType::F32 || kernels_disabled() || !(flex || is_tracked_flex::<B>()) {
        return fallback(x);
    }
    let primitive = match x.into_primitive() {
        TensorPrimitive::Float(primitive) => primitive,
        quantized => return fallback(Tensor::from_primitive(quantized)),
    };
    let result: B::FloatTensorPrimitive = if flex {
        cast(forward::<K>(&cast::<_, FlexTensor>(primitive)))
    } else {
        cast(tracked_forward::<K>(cast(primitive)))
    };
    Tensor::from_primitive(TensorPrimitive::Float(result))
}

/// A new contiguous tensor of `shape`, filled by one pass of `fill`.
fn new_tensor(shape: Shape, fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut out = vec![0.0f32; shape.num_elements()];
    fill(&mut out);
    FlexTensor::from_data(TensorData::new(out, shape))
}

fn forward<K: FusedKernel>(x: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let input = values(x);
    new_tensor(K::output_shape(&shape), |out| {
        K::forward(&input, &shape, out)
    })
}

fn backward<K: FusedKernel>(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    assert_eq!(
        grad.layout().shape(),
        &K::output_shape(&shape),
        "fused kernel backward: the gradient's shape"
    );
    let (input, grad) = (values(x), values(grad));
    new_tensor(shape.clone(), |dx| K::backward(&input, &grad, &shape, dx))
}

/// The tracked operation: its state is the input's node, whose value the backward reads back.
#[derive(Debug)]
struct KernelBackward<K>(PhantomData<K>);

impl<K: FusedKernel> Backward<Flex, 1> for KernelBackward<K> {
    type State = NodeId;

    fn backward(self, ops: Ops<NodeId, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let input: FlexTensor = checkpointer.retrieve_node_output(ops.state);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            backward::<K>(&input, &grad)
        });
    }
}

/// `K` under `Autodiff<Flex, C>`. The strategy `C` only matters for memory-bound operations that
/// may be recomputed; this one is declared compute-bound (its output kept, its input saved), so the
/// preparation is the same for every strategy.
fn tracked_forward<K: FusedKernel>(x: FlexAutodiffTensor) -> FlexAutodiffTensor {
    match KernelBackward::<K>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            let output = forward::<K>(&x.primitive);
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<K>(&x.primitive)),
    }
}

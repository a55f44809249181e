//! Scaled dot-product attention under `Autodiff<Flex>` with its own backward, which recomputes the
//! attention matrix instead of keeping it.
//!
//! Why: under autodiff Burn 0.21 runs `burn::tensor::module::attention` as its generic
//! decomposition (a product, a five-operation softmax with scalar `expf`, a product) and keeps the
//! scores and the softmax of every attention layer until the backward pass; a `perf` profile of
//! the demo LoRA-distillation step spent 7% in the strided copies and 4.5% in the scalar `expf`
//! around it (2026-12-03, `docs/benchmarks.md`), and at 512 px those matrices are what fills the
//! memory ([perf] item 4).
//!
//! Here, for `f32` on `Autodiff<Flex, C>` (any checkpointing strategy):
//! 1. forward: Burn-flex's fused attention on the inner tensors; only `q`, `k`, `v` are kept;
//! 2. backward, per call, with `s = 1 / sqrt(head_dim)`: `P = softmax(q k^T s)` again (one GEMM
//!    and one vectorised row pass), `dv = P^T do`, `dP = do v^T`,
//!    `dS = s P (dP - rowsum(P dP))` (one row pass), `dq = dS k`, `dk = dS^T q`.
//!
//! So the `[batch, heads, queries, keys]` matrices exist only inside one layer's backward, one
//! layer at a time. Every other backend or dtype (and `CM_FUSED=burn`) takes Burn's operation.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use cm_lora::flex::{cast, is_tracked_flex, kernels_disabled, values, FlexAutodiffTensor};

use super::vector_math::{softmax_backward_rows, softmax_rows};

/// `softmax(q k^T / sqrt(head_dim)) v`, no mask.
///
/// # Shapes
/// `q` `[batch, heads, queries, head_dim]`, `k` and `v` `[batch, heads, keys, head_dim]` ->
/// `[batch, heads, queries, head_dim]`.
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let tracked = is_tracked_flex::<B>()
        && [q.dtype(), k.dtype(), v.dtype()]
            .iter()
            .all(|&d| d == DType::F32)
        && !kernels_disabled();
    if !tracked {
        return burn_attention(q, k, v, None, None, options());
    }
    let primitive = |t: Tensor<B, 4>| -> FlexAutodiffTensor { cast(t.into_primitive().tensor()) };
    let (q, k, v) = (primitive(q), primitive(k), primitive(v));
    // 1. Forward: Burn-flex's attention.
    let output = burn_attention(
        flex(q.primitive.clone()),
        flex(k.primitive.clone()),
        flex(v.primitive.clone()),
        None,
        None,
        options(),
    )
    .into_primitive()
    .tensor();
    let state = AttentionState {
        q: q.primitive.clone(),
        k: k.primitive.clone(),
        v: v.primitive.clone(),
    };
    let result = match AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(cast(result)))
}

fn options() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    }
}

fn flex(t: FlexTensor) -> Tensor<Flex, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The inputs, shared with the forward (no copies).
#[derive(Debug, Clone)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node] = ops.parents;
        let d_out = flex(grads.consume::<Flex>(&ops.node));
        let AttentionState { q, k, v } = ops.state;
        let (q, k, v) = (flex(q), flex(k), flex(v));
        let [_, _, _, head_dim] = q.dims();
        let scale = 1.0 / (head_dim as f32).sqrt();
        // 2. The attention matrix again, then the gradients.
        let p = row_kernel(
            q.clone().matmul(k.clone().swap_dims(2, 3)),
            |s, width, out| softmax_rows(s, width, scale, out),
        );
        if let Some(node) = v_node {
            let dv = p.clone().swap_dims(2, 3).matmul(d_out.clone());
            grads.register::<Flex>(node.id, dv.into_primitive().tensor());
        }
        if q_node.is_none() && k_node.is_none() {
            return;
        }
        let dp = d_out.matmul(v.swap_dims(2, 3));
        let ds = {
            let p = p.into_primitive().tensor();
            let p_values = values(&p);
            row_kernel(dp, |dp, width, out| {
                softmax_backward_rows(&p_values, dp, width, scale, out)
            })
        };
        if let Some(node) = q_node {
            grads.register::<Flex>(node.id, ds.clone().matmul(k).into_primitive().tensor());
        }
        if let Some(node) = k_node {
            grads.register::<Flex>(
                node.id,
                ds.swap_dims(2, 3).matmul(q).into_primitive().tensor(),
            );
        }
    }
}

/// `kernel(values, last_dim, out)` into a new tensor of `x`'s shape.
fn row_kernel(
    x: Tensor<Flex, 4>,
    kernel: impl FnOnce(&[f32], usize, &mut [f32]),
) -> Tensor<Flex, 4> {
    let dims = x.dims();
    let primitive = x.into_primitive().tensor();
    let input = values(&primitive);
    let mut out = vec![0.0f32; input.len()];
    kernel(&input, dims[3], &mut out);
    flex(FlexTensor::from_data(TensorData::new(out, dims)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, Tolerance};

    /// Output and the three gradients equal Burn's attention, with an uneven loss and as many
    /// queries as keys or not (cross-attention).
    fn matches_burn<A: AutodiffBackend>(queries: usize, keys: usize) {
        let device = Default::default();
        let leaf = |n: usize| {
            Tensor::<A, 4>::random([2, 3, n, 8], Distribution::Normal(0.0, 1.5), &device)
                .require_grad()
        };
        let (q, k, v) = (leaf(queries), leaf(keys), leaf(keys));
        let ours = attention(q.clone(), k.clone(), v.clone());
        let burns = burn_attention(q.clone(), k.clone(), v.clone(), None, None, options());
        let tol = Tolerance::absolute(1e-5);
        ours.to_data()
            .assert_approx_eq::<f32>(&burns.to_data(), tol);
        let probe = Tensor::<A, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_burn = (burns * probe).sum().backward();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let a = t.grad(&grads_ours).expect(name).into_data();
            a.assert_approx_eq::<f32>(&t.grad(&grads_burn).expect(name).into_data(), tol);
        }
    }

    #[test]
    fn equals_burns_self_attention_and_its_gradients() {
        matches_burn::<Autodiff<Flex>>(10, 10);
    }

    #[test]
    fn equals_burns_cross_attention_and_its_gradients_under_checkpointing() {
        matches_burn::<Autodiff<Flex, BalancedCheckpointing>>(12, 5);
    }

    #[test]
    fn frozen_keys_and_values_get_no_gradient() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let q = Tensor::<A, 4>::random([1, 2, 4, 8], Distribution::Default, &device).require_grad();
        let kv = Tensor::<A, 4>::random([1, 2, 3, 8], Distribution::Default, &device);
        let grads = attention(q.clone(), kv.clone(), kv.clone())
            .sum()
            .backward();
        assert!(kv.grad(&grads).is_none());
        assert_eq!(q.grad(&grads).unwrap().dims(), [1, 2, 4, 8]);
    }
}

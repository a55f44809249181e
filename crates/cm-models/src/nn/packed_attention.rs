//! Multi-head scaled dot-product attention (unmasked, or causal for CLIP) on packed heads
//! (`[batch, tokens, heads * head_dim]`, the layout the `to_q` / `to_k` / `to_v` projections
//! produce), with its own kernel and its own backward on Burn-flex.
//!
//! Why: the generic form splits the heads out (`[batch, heads, tokens, head_dim]`, a strided view
//! that Burn-flex's attention copies contiguous, element by element), runs Burn-flex's attention
//! (scalar `expf` in the softmax) and merges the heads back (another strided copy); under autodiff
//! Burn keeps every layer's score and softmax matrices until the backward pass, and the head
//! split / merge is copied again there. A `perf` profile of the demo LoRA-distillation step spent
//! 14% of its samples in strided copies and 10% in attention and its scalar `expf` (2026-12-03).
//!
//! Here, for `f32` on `Flex` and on `Autodiff<Flex, C>` (any checkpointing strategy), every
//! product reads and writes the packed layout in place (`gemm`'s row and column strides), per
//! `(batch, head)` and block of [`QUERY_BLOCK`] queries, so no `[batch, heads, queries, keys]`
//! matrix exists at all, only one block per worker thread:
//! 1. forward: `S = Q_blk K^T` (GEMM), `P = softmax(S / sqrt(head_dim))` (vectorised row pass),
//!    `O_blk = P V` (GEMM, written straight into the packed output);
//! 2. backward (autodiff; only `q`, `k`, `v` are kept), per `(batch, head)` and query block, with
//!    `s = 1 / sqrt(head_dim)`: `P` again, `dV += P^T dO_blk`, `dP = dO_blk V^T`,
//!    `dS = s P (dP - rowsum(P dP))` (one row pass), `dQ_blk = dS K`, `dK += dS^T Q_blk`.
//!
//! Every other backend or dtype (and `CM_FUSED=burn`) takes Burn's attention on split heads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use cm_lora::flex::{
    cast, is_flex, is_tracked_flex, kernels_disabled, values, FlexAutodiffTensor, SharedOut,
};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::vector_math::{softmax_backward_rows, softmax_rows};

/// Queries per block: the block's score rows (`QUERY_BLOCK x keys` floats, 64 KiB at 256 keys)
/// stay in the core's cache between the two products.
pub const QUERY_BLOCK: usize = 64;

/// `softmax(q k^T / sqrt(head_dim)) v` per head, no mask, heads packed in the last dimension
/// (head `h` is columns `h * head_dim .. (h + 1) * head_dim`).
///
/// # Shapes
/// `q` `[batch, queries, heads * head_dim]`, `k` and `v` `[batch, keys, heads * head_dim]` ->
/// `[batch, queries, heads * head_dim]`.
///
/// # Panics
/// If the widths differ or are not a multiple of `heads`, or the batches differ.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
) -> Tensor<B, 3> {
    attend(q, k, v, heads, false)
}

/// [`attention`] with a causal mask: query `i` attends to keys `0..=i` (CLIP's text encoder).
///
/// # Panics
/// As [`attention`], and if there are not as many keys as queries.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
) -> Tensor<B, 3> {
    attend(q, k, v, heads, true)
}

fn attend<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let shape = Shape::of(q.dims(), k.dims(), v.dims(), heads, causal);
    let all_f32 = [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|&d| d == DType::F32);
    if !all_f32 || kernels_disabled() {
        return split_heads_attention(q, k, v, heads, causal);
    }
    if is_flex::<B>() {
        let flex = |t: Tensor<B, 3>| -> FlexTensor { cast(t.into_primitive().tensor()) };
        let out = forward(&shape, &flex(q), &flex(k), &flex(v));
        return Tensor::from_primitive(TensorPrimitive::Float(cast(out)));
    }
    if !is_tracked_flex::<B>() {
        return split_heads_attention(q, k, v, heads, causal);
    }
    let tracked = |t: Tensor<B, 3>| -> FlexAutodiffTensor { cast(t.into_primitive().tensor()) };
    let (q, k, v) = (tracked(q), tracked(k), tracked(v));
    let output = forward(&shape, &q.primitive, &k.primitive, &v.primitive);
    let state = AttentionState {
        shape,
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

/// Burn's attention on split heads (`[batch, heads, tokens, head_dim]` views), merged back.
fn split_heads_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
) -> Tensor<B, 3> {
    let [batch, queries, inner] = q.dims();
    let split = |t: Tensor<B, 3>| {
        let n = t.dims()[1];
        t.reshape([batch, n, heads, inner / heads]).swap_dims(1, 2)
    };
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    burn_attention(split(q), split(k), split(v), None, None, options)
        .swap_dims(1, 2)
        .reshape([batch, queries, inner])
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    head_dim: usize,
    /// Query `i` attends to keys `0..=i` only.
    causal: bool,
}

impl Shape {
    fn of(q: [usize; 3], k: [usize; 3], v: [usize; 3], heads: usize, causal: bool) -> Self {
        assert!(
            heads > 0 && q[2].is_multiple_of(heads),
            "attention: width {} is not a multiple of {heads} heads",
            q[2]
        );
        assert!(
            q[0] == k[0] && k == v && q[2] == k[2],
            "attention: q {q:?}, k {k:?} and v {v:?} must share batch and width, k and v their shape"
        );
        assert!(
            !causal || q[1] == k[1],
            "causal attention: {} queries but {} keys",
            q[1],
            k[1]
        );
        Shape {
            batch: q[0],
            queries: q[1],
            keys: k[1],
            heads,
            head_dim: q[2] / heads,
            causal,
        }
    }

    fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Offset of head `h`'s first value in token `token` of sample `b` of a tensor of `tokens`.
    fn at(&self, b: usize, h: usize, tokens: usize, token: usize) -> usize {
        (b * tokens + token) * self.inner() + h * self.head_dim
    }

    fn query_blocks(&self) -> usize {
        self.queries.div_ceil(QUERY_BLOCK)
    }
}

/// `dst (rows x cols, strides dst_rs / 1) = [dst +] lhs (rows x depth) rhs (depth x cols)`, with
/// each matrix given as (pointer, row stride, column stride).
///
/// # Safety
/// Every pointer with its strides must address valid memory for the whole matrix, and `dst` must
/// not overlap `lhs` or `rhs` nor be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [rows, cols, depth]: [usize; 3],
    dst: (*mut f32, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    parallelism: Parallelism,
) {
    gemm(
        rows,
        cols,
        depth,
        dst.0,
        1,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Within-task GEMM parallelism: none when the tasks alone fill the threads.
fn inner_parallelism(tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if tasks >= threads {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `P = softmax(Q_blk K^T s)` for the `rows` queries from `first` of `(b, h)`, into `p`
/// (`scores` is scratch of the same length).
#[allow(clippy::too_many_arguments)]
fn block_softmax(
    shape: &Shape,
    q: &[f32],
    k: &[f32],
    (b, h, first, rows): (usize, usize, usize, usize),
    scores: &mut [f32],
    p: &mut [f32],
    parallelism: Parallelism,
) {
    let (keys, inner) = (shape.keys, shape.inner());
    let n = rows * keys;
    // SAFETY: the Q block is `rows` rows of `head_dim` values `inner` apart inside `q`, K^T reads
    // `keys` rows of `k` the same way, and `scores` holds `rows x keys` values.
    unsafe {
        product(
            [rows, keys, shape.head_dim],
            (scores.as_mut_ptr(), keys),
            false,
            (q[shape.at(b, h, shape.queries, first)..].as_ptr(), inner, 1),
            (k[shape.at(b, h, keys, 0)..].as_ptr(), 1, inner),
            parallelism,
        );
    }
    if !shape.causal {
        softmax_rows(&scores[..n], keys, shape.scale(), &mut p[..n]);
        return;
    }
    // Causal: row r (query first + r) over its keys 0..=first + r; the masked rest of P is 0, so
    // the backward's dS = s P (dP - rowsum(P dP)) is 0 there too.
    for r in 0..rows {
        let (row, valid) = (r * keys, (first + r + 1).min(keys));
        let (scores, p) = (&scores[row..row + keys], &mut p[row..row + keys]);
        softmax_rows(&scores[..valid], valid, shape.scale(), &mut p[..valid]);
        p[valid..].fill(0.0);
    }
}

/// The packed attention output (a new contiguous tensor).
fn forward(shape: &Shape, q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> FlexTensor {
    let (q, k, v) = (values(q), values(k), values(v));
    let (keys, inner) = (shape.keys, shape.inner());
    let mut out = vec![0.0f32; shape.batch * shape.queries * inner];
    let target = SharedOut(out.as_mut_ptr());
    let blocks = shape.query_blocks();
    let tasks = shape.batch * shape.heads * blocks;
    let parallelism = inner_parallelism(tasks);
    (0..tasks).into_par_iter().for_each_init(
        || vec![0.0f32; 2 * QUERY_BLOCK * keys],
        |scratch, task| {
            let (bh, block) = (task / blocks, task % blocks);
            let (b, h) = (bh / shape.heads, bh % shape.heads);
            let first = block * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(shape.queries - first);
            let (scores, p) = scratch.split_at_mut(QUERY_BLOCK * keys);
            // 1. P = softmax(Q_blk K^T / sqrt(head_dim)).
            block_softmax(shape, &q, &k, (b, h, first, rows), scores, p, parallelism);
            // 2. O_blk = P V, into head h's columns of the block's rows.
            // SAFETY: this task alone writes head h's columns of rows `first..first + rows` of
            // sample b; `out` outlives the loop; V is read in place like K.
            unsafe {
                product(
                    [rows, shape.head_dim, keys],
                    (target.at(shape.at(b, h, shape.queries, first)), inner),
                    false,
                    (p.as_ptr(), keys, 1),
                    (v[shape.at(b, h, keys, 0)..].as_ptr(), inner, 1),
                    parallelism,
                );
            }
        },
    );
    FlexTensor::from_data(TensorData::new(out, [shape.batch, shape.queries, inner]))
}

/// The inputs, shared with the forward (no copies), and the sizes.
#[derive(Debug, Clone)]
struct AttentionState {
    shape: Shape,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} x {} queries x {} keys, {} heads of {}{}]",
            self.batch,
            self.queries,
            self.keys,
            self.heads,
            self.head_dim,
            if self.causal { ", causal" } else { "" }
        )
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<burn_flex::Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node] = ops.parents;
        let d_out = grads.consume::<burn_flex::Flex>(&ops.node);
        let AttentionState { shape, q, k, v } = ops.state;
        let wanted = [q_node.is_some(), k_node.is_some(), v_node.is_some()];
        let [dq, dk, dv] = gradients(&shape, &q, &k, &v, &d_out, wanted);
        let dims = |tokens| [shape.batch, tokens, shape.inner()];
        for (node, grad, tokens) in [
            (q_node, dq, shape.queries),
            (k_node, dk, shape.keys),
            (v_node, dv, shape.keys),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                let grad = FlexTensor::from_data(TensorData::new(grad, dims(tokens)));
                grads.register::<burn_flex::Flex>(node.id, grad);
            }
        }
    }
}

/// `[dq, dk, dv]`, each computed only when `wanted` (packed, row-major).
fn gradients(
    shape: &Shape,
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    d_out: &FlexTensor,
    wanted: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let (q, k, v, d_out) = (values(q), values(k), values(v), values(d_out));
    let (keys, inner) = (shape.keys, shape.inner());
    let [want_dq, want_dk, want_dv] = wanted;
    let buffer =
        |want: bool, tokens: usize| want.then(|| vec![0.0f32; shape.batch * tokens * inner]);
    let mut dq = buffer(want_dq, shape.queries);
    let mut dk = buffer(want_dk, keys);
    let mut dv = buffer(want_dv, keys);
    let pointer = |g: &mut Option<Vec<f32>>| g.as_mut().map(|g| SharedOut(g.as_mut_ptr()));
    let (dq_out, dk_out, dv_out) = (pointer(&mut dq), pointer(&mut dk), pointer(&mut dv));
    let need_ds = want_dq || want_dk;
    let tasks = shape.batch * shape.heads;
    let parallelism = inner_parallelism(tasks);
    (0..tasks).into_par_iter().for_each_init(
        || vec![0.0f32; 4 * QUERY_BLOCK * keys],
        |scratch, task| {
            let (b, h) = (task / shape.heads, task % shape.heads);
            let (scores, rest) = scratch.split_at_mut(QUERY_BLOCK * keys);
            let (p, rest) = rest.split_at_mut(QUERY_BLOCK * keys);
            let (dp, ds) = rest.split_at_mut(QUERY_BLOCK * keys);
            // Sample b, head h: K, V and their gradients are read and written in place.
            let kv_at = shape.at(b, h, keys, 0);
            for block in 0..shape.query_blocks() {
                let first = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(shape.queries - first);
                let n = rows * keys;
                let q_at = shape.at(b, h, shape.queries, first);
                let d_out_block = (d_out[q_at..].as_ptr(), inner, 1);
                let accumulate = block > 0;
                // 1. P = softmax(Q_blk K^T s), recomputed.
                block_softmax(shape, &q, &k, (b, h, first, rows), scores, p, parallelism);
                // SAFETY (every product below): blocks are `rows` rows of `head_dim` values
                // `inner` apart inside their packed buffers, `P`, `dP`, `dS` are `rows x keys`
                // scratch; this task alone writes head h's columns of sample b in dQ, dK, dV,
                // which outlive the loop.
                // 2. dV += P^T dO_blk.
                if let Some(dv) = dv_out {
                    unsafe {
                        product(
                            [keys, shape.head_dim, rows],
                            (dv.at(kv_at), inner),
                            accumulate,
                            (p.as_ptr(), 1, keys),
                            d_out_block,
                            parallelism,
                        );
                    }
                }
                if !need_ds {
                    continue;
                }
                // 3. dP = dO_blk V^T; dS = s P (dP - rowsum(P dP)).
                unsafe {
                    product(
                        [rows, keys, shape.head_dim],
                        (dp.as_mut_ptr(), keys),
                        false,
                        d_out_block,
                        (v[kv_at..].as_ptr(), 1, inner),
                        parallelism,
                    );
                }
                softmax_backward_rows(&p[..n], &dp[..n], keys, shape.scale(), &mut ds[..n]);
                // 4. dQ_blk = dS K.
                if let Some(dq) = dq_out {
                    unsafe {
                        product(
                            [rows, shape.head_dim, keys],
                            (dq.at(q_at), inner),
                            false,
                            (ds.as_ptr(), keys, 1),
                            (k[kv_at..].as_ptr(), inner, 1),
                            parallelism,
                        );
                    }
                }
                // 5. dK += dS^T Q_blk.
                if let Some(dk) = dk_out {
                    unsafe {
                        product(
                            [keys, shape.head_dim, rows],
                            (dk.at(kv_at), inner),
                            accumulate,
                            (ds.as_ptr(), 1, keys),
                            (q[q_at..].as_ptr(), inner, 1),
                            parallelism,
                        );
                    }
                }
            }
        },
    );
    [dq, dk, dv]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, Tolerance};
    use burn_flex::Flex;

    fn random<B: Backend>(dims: [usize; 3]) -> Tensor<B, 3> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.5), &Default::default())
    }

    /// Output and the three gradients equal Burn's attention on split heads, with an uneven loss,
    /// several query blocks (a partial last one) or one, as many queries as keys or not.
    fn matches_burn<A: AutodiffBackend>(queries: usize, keys: usize, heads: usize, causal: bool) {
        let width = heads * 8;
        let leaf = |n: usize| random::<A>([2, n, width]).require_grad();
        let (q, k, v) = (leaf(queries), leaf(keys), leaf(keys));
        let ours = attend(q.clone(), k.clone(), v.clone(), heads, causal);
        let burns = split_heads_attention(q.clone(), k.clone(), v.clone(), heads, causal);
        let tol = Tolerance::absolute(1e-5);
        ours.to_data()
            .assert_approx_eq::<f32>(&burns.to_data(), tol);
        let probe = random::<A>(ours.dims());
        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_burn = (burns * probe).sum().backward();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let a = t.grad(&grads_ours).expect(name).into_data();
            a.assert_approx_eq::<f32>(&t.grad(&grads_burn).expect(name).into_data(), tol);
        }
    }

    #[test]
    fn equals_burns_self_attention_and_its_gradients_over_several_query_blocks() {
        matches_burn::<Autodiff<Flex>>(QUERY_BLOCK * 2 + 7, QUERY_BLOCK * 2 + 7, 3, false);
    }

    #[test]
    fn equals_burns_cross_attention_and_its_gradients_under_checkpointing() {
        matches_burn::<Autodiff<Flex, BalancedCheckpointing>>(12, 5, 2, false);
    }

    #[test]
    fn equals_burns_causal_attention_and_its_gradients_over_several_query_blocks() {
        // CLIP's shape class: as many keys as queries, the mask crossing block boundaries.
        matches_burn::<Autodiff<Flex>>(QUERY_BLOCK + 13, QUERY_BLOCK + 13, 2, true);
    }

    #[test]
    #[should_panic(expected = "causal attention: 5 queries but 7 keys")]
    fn refuses_causal_attention_with_more_keys_than_queries() {
        let (q, kv) = (random::<Flex>([1, 5, 8]), random::<Flex>([1, 7, 8]));
        causal_attention(q, kv.clone(), kv, 2);
    }

    #[test]
    fn equals_burns_attention_without_autodiff() {
        let (q, k, v) = (
            random::<Flex>([3, 70, 32]),
            random::<Flex>([3, 9, 32]),
            random::<Flex>([3, 9, 32]),
        );
        let ours = attention(q.clone(), k.clone(), v.clone(), 4);
        let burns = split_heads_attention(q, k, v, 4, false);
        ours.into_data()
            .assert_approx_eq::<f32>(&burns.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn strided_inputs_are_read_by_their_values() {
        // A transposed view (what the VAE's spatial attention projects from) reads the same.
        let q = random::<Flex>([2, 16, 6]).swap_dims(1, 2);
        let kv = random::<Flex>([2, 6, 16]);
        let ours = attention(q.clone(), kv.clone(), kv.clone(), 2);
        let burns = split_heads_attention(q, kv.clone(), kv, 2, false);
        ours.into_data()
            .assert_approx_eq::<f32>(&burns.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn frozen_keys_and_values_get_no_gradient() {
        type A = Autodiff<Flex>;
        let q = random::<A>([1, 4, 8]).require_grad();
        let kv = random::<A>([1, 3, 8]);
        let grads = attention(q.clone(), kv.clone(), kv.clone(), 2)
            .sum()
            .backward();
        assert!(kv.grad(&grads).is_none());
        assert_eq!(q.grad(&grads).unwrap().dims(), [1, 4, 8]);
    }

    #[test]
    #[should_panic(expected = "not a multiple of 3 heads")]
    fn refuses_a_width_that_the_heads_do_not_divide() {
        let t = random::<Flex>([1, 2, 8]);
        attention(t.clone(), t.clone(), t, 3);
    }
}

//! A stride-1 `Conv2d` forward on Burn-flex in `f32`: one GEMM per tile of output rows, with the
//! tile's im2col columns built from row copies and the product written straight into the output.
//!
//! Why: Burn-flex (Burn 0.21's CPU backend) runs a convolution as im2col + GEMM with three scalar
//! passes around the GEMM on every call: the kernel re-ordered to `[out, kh, kw, in]` (as many
//! moves as the layer has weights: 14.7 M for a 1280-channel 3x3 kernel), the input converted to
//! NHWC, and each tile's result scattered back to NCHW one element at a time; its im2col tiles are
//! `[pixels, in * kh * kw]`, which the GEMM then packs with strided reads. A `perf` profile of the
//! SD1.5 VAE decode at 512 px spent 57% of its samples in the GEMM microkernel and about 30% in
//! those passes and the packing (2026-12-04, `docs/benchmarks.md`).
//!
//! Here, per image and tile of `rows` output rows (about 512 output pixels, like Burn-flex's tiles):
//! 1. the columns `[in * kh * kw, rows * w_out]`, row `(i, ky, kx)` (the kernel's own order, so the
//!    kernel is used as stored, `[out, in * kh * kw]`) holding input channel `i` shifted by
//!    `(ky - p, kx - p)`: each output row's piece is one contiguous copy of an input row, with
//!    zeros where it falls in the padding;
//! 2. `output[b, :, rows] = bias + kernel x columns`, written in place: output rows `r0..r1` of
//!    every channel are one contiguous run of the NCHW output, so the GEMM's destination is the
//!    output itself with the channel stride as its row stride.
//!
//! Tiles run in parallel (each GEMM on one thread) when there are at least as many as threads,
//! otherwise one after the other with each GEMM spread over the threads. The sums are the same as
//! Burn's, in another order (equal to rounding; tested below and in `tracked_conv`).

use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::flex::{cast, is_flex, kernels_disabled, values, SharedOut};

/// Output pixels per tile (rounded up to whole rows): Burn-flex's tile size, large enough that
/// packing the kernel once per GEMM costs little against the product.
const TILE_PIXELS: usize = 512;

/// Whether [`conv2d_tiled`] applies: Burn-flex without autodiff (under autodiff
/// [`crate::tracked_conv`] uses [`flex_conv2d`] itself), `f32`, stride 1, dilation 1, one group,
/// a kernel larger than 1x1 (Burn-flex runs 1x1 kernels as one plain GEMM already) and a padding
/// smaller than the kernel; not when `CM_CONV=burn` or `CM_FUSED=burn` is set.
pub fn tiled_conv_applies<B: Backend>(
    dtypes: &[DType],
    kernel: [usize; 2],
    padding: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    is_flex::<B>()
        && stride_one_f32(dtypes, kernel, padding, stride, dilation, groups)
        && kernel != [1, 1]
        && !burns_convolution_forced()
}

/// What [`conv2d_row_tiles`] and [`crate::tracked_conv`] compute: `f32`, stride 1, dilation 1,
/// one group and a padding smaller than the kernel on each axis.
pub(crate) fn stride_one_f32(
    dtypes: &[DType],
    kernel: [usize; 2],
    padding: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    dtypes.iter().all(|&d| d == DType::F32)
        && stride == [1, 1]
        && dilation == [1, 1]
        && groups == 1
        && padding[0] < kernel[0]
        && padding[1] < kernel[1]
}

/// [`conv2d_row_tiles`] on backend-generic tensors.
///
/// # Panics
/// Unless [`tiled_conv_applies`] holds for these tensors.
pub fn conv2d_tiled<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    padding: [usize; 2],
) -> Tensor<B, 4> {
    assert!(is_flex::<B>(), "conv2d_tiled: only for Flex");
    let flex = |t: TensorPrimitive<B>| -> FlexTensor { cast(t.tensor()) };
    let bias = bias.map(|b| flex(b.into_primitive()));
    let out = conv2d_row_tiles(
        &flex(x.into_primitive()),
        &flex(weight.into_primitive()),
        bias.as_ref(),
        padding,
    );
    Tensor::from_primitive(TensorPrimitive::Float(cast(out)))
}

/// A stride-1 convolution of `f32` Burn-flex tensors: [`conv2d_row_tiles`] for kernels larger than
/// 1x1, Burn-flex's own for 1x1 kernels and when `CM_CONV=burn` (or `CM_FUSED=burn`) is set.
pub fn flex_conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    padding: [usize; 2],
) -> FlexTensor {
    let [_, _, kh, kw] = weight.layout().shape().dims();
    if [kh, kw] == [1, 1] || burns_convolution_forced() {
        let options = ConvOptions::new([1, 1], padding, [1, 1], 1);
        return <Flex as ModuleOps<Flex>>::conv2d(x, weight, bias, options);
    }
    conv2d_row_tiles(&x, &weight, bias.as_ref(), padding)
}

/// `CM_CONV=burn` (or `CM_FUSED=burn`) in the environment: Burn-flex's convolution forward
/// everywhere (read once), to measure this module against it.
pub fn burns_convolution_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED
        .get_or_init(|| kernels_disabled() || std::env::var("CM_CONV").is_ok_and(|v| v == "burn"))
}

/// `conv2d(x, weight, bias)` with stride 1, dilation 1, one group and `padding` zero pixels on each
/// side, on `f32` Burn-flex tensors (module docs).
///
/// # Shapes
/// `x` `[batch, in, h, w]`, `weight` `[out, in, kh, kw]`, `bias` `[out]` -> `[batch, out,
/// h + 2 padding - kh + 1, w + 2 padding - kw + 1]`.
///
/// # Panics
/// If a tensor is not `f32`, the channel counts disagree, the padding is not smaller than the
/// kernel, or the kernel is larger than the padded input.
pub fn conv2d_row_tiles(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    padding: [usize; 2],
) -> FlexTensor {
    let geometry = Geometry::of(x, weight, padding);
    let Geometry {
        batch,
        c_in,
        c_out,
        h_out,
        w_out,
        depth,
        ..
    } = geometry;
    let (input, kernel) = (values(x), values(weight));
    let plane = h_out * w_out;
    // The GEMMs add to the bias (one pass over the output), or overwrite zeros without one.
    let mut output = match bias {
        Some(bias) => {
            let bias = values(bias);
            assert_eq!(
                bias.len(),
                c_out,
                "conv2d_row_tiles: bias of {} for {c_out} channels",
                bias.len()
            );
            let mut output = Vec::with_capacity(batch * c_out * plane);
            for &b in bias.iter().cycle().take(batch * c_out) {
                output.extend(std::iter::repeat_n(b, plane));
            }
            output
        }
        None => vec![0.0f32; batch * c_out * plane],
    };
    let rows = TILE_PIXELS.div_ceil(w_out).min(h_out);
    let tiles: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..h_out).step_by(rows).map(move |r0| (b, r0)))
        .collect();
    let out = SharedOut(output.as_mut_ptr());
    let run = |columns: &mut Vec<f32>, (b, r0): (usize, usize), parallelism| {
        let r1 = (r0 + rows).min(h_out);
        let n = (r1 - r0) * w_out;
        columns.resize(depth * n, 0.0);
        let image = &input[b * c_in * geometry.h * geometry.w..][..c_in * geometry.h * geometry.w];
        // 1. The tile's columns.
        geometry.fill_columns(&mut columns[..depth * n], image, r0..r1);
        // 2. The product, into output rows `r0..r1` of image `b`'s channels.
        // SAFETY: the destination is `c_out` rows of `n` values, `plane` apart, from
        // `(b * c_out) * plane + r0 * w_out`: inside `output`, and disjoint from every other
        // tile's (other images or other rows). `kernel` is `c_out x depth` row-major and
        // `columns` `depth x n` row-major, both alive for the call.
        unsafe {
            gemm(
                c_out,
                n,
                depth,
                out.at((b * c_out) * plane + r0 * w_out),
                1,
                plane as isize,
                bias.is_some(),
                kernel.as_ptr(),
                1,
                depth as isize,
                columns.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let threads = rayon::current_num_threads();
    if tiles.len() >= threads && threads > 1 {
        tiles
            .into_par_iter()
            .for_each_init(Vec::new, |columns, tile| {
                run(columns, tile, Parallelism::None)
            });
    } else {
        let mut columns = Vec::new();
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        for tile in tiles {
            run(&mut columns, tile, parallelism);
        }
    }
    FlexTensor::from_data(TensorData::new(output, [batch, c_out, h_out, w_out]))
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
    h_out: usize,
    w_out: usize,
    /// `c_in * kh * kw`: the GEMM's depth.
    depth: usize,
}

impl Geometry {
    fn of(x: &FlexTensor, weight: &FlexTensor, padding: [usize; 2]) -> Self {
        let [batch, c_in, h, w] = x.layout().shape().dims();
        let [c_out, c_in_w, kh, kw] = weight.layout().shape().dims();
        let [ph, pw] = padding;
        assert_eq!(
            c_in, c_in_w,
            "conv2d_row_tiles: input of {c_in} channels, kernel for {c_in_w}"
        );
        assert!(
            ph < kh && pw < kw,
            "conv2d_row_tiles: padding {padding:?} for a {kh}x{kw} kernel (must be smaller)"
        );
        assert!(
            kh <= h + 2 * ph && kw <= w + 2 * pw,
            "conv2d_row_tiles: a {kh}x{kw} kernel on a {h}x{w} input padded by {padding:?}"
        );
        Self {
            batch,
            c_in,
            c_out,
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            h_out: h + 2 * ph - kh + 1,
            w_out: w + 2 * pw - kw + 1,
            depth: c_in * kh * kw,
        }
    }

    /// Step 1: `columns[(i, ky, kx), (r - r0) * w_out + ox] = image[i, r + ky - ph, ox + kx - pw]`
    /// (0 outside the image) for the output rows `r` in `rows`.
    fn fill_columns(&self, columns: &mut [f32], image: &[f32], rows: std::ops::Range<usize>) {
        let n = rows.len() * self.w_out;
        for (k, column_row) in columns.chunks_exact_mut(n).enumerate() {
            if self.w_out == self.w && self.pw <= self.w {
                self.fill_column_row_as_block(column_row, k, image, rows.clone());
                continue;
            }
            for (piece, r) in column_row.chunks_exact_mut(self.w_out).zip(rows.clone()) {
                self.fill_piece(piece, k, image, r);
            }
        }
    }

    /// [`Self::fill_columns`] for one column row `k = (i, ky, kx)` when the output is as wide as
    /// the input ("same" padding): the rows inside the image read consecutive input rows shifted
    /// by `kx - pw`, so they are one block copy, then the `|kx - pw|` values per row that fell
    /// into the padding are zeroed (one copy instead of one per row: on 8-pixel-wide images the
    /// per-row copies were 8-9% of a training step).
    fn fill_column_row_as_block(
        &self,
        column_row: &mut [f32],
        k: usize,
        image: &[f32],
        rows: std::ops::Range<usize>,
    ) {
        let Self {
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            ..
        } = *self;
        let (channel, ky, kx) = (k / (kh * kw), k / kw % kh, k % kw);
        let r0 = rows.start;
        // Output rows `inside` read input rows `r + ky - ph` inside the image; the rest are zero.
        let first = rows.start.max(ph.saturating_sub(ky));
        let last = rows.end.min((h + ph).saturating_sub(ky)).max(first);
        column_row[..(first - r0) * w].fill(0.0);
        column_row[(last - r0) * w..].fill(0.0);
        if first == last {
            return;
        }
        let block = &mut column_row[(first - r0) * w..(last - r0) * w];
        let len = block.len();
        let base = (channel * h + first + ky - ph) * w;
        let plane = &image[base..base + len];
        if kx >= pw {
            // block[i] = plane[i + s]; the last `s` values of each row are padding.
            let s = kx - pw;
            block[..len - s].copy_from_slice(&plane[s..]);
            for row in block.chunks_exact_mut(w) {
                row[w - s..].fill(0.0);
            }
        } else {
            // block[i] = plane[i - s]; the first `s` values of each row are padding.
            let s = pw - kx;
            block[s..].copy_from_slice(&plane[..len - s]);
            for row in block.chunks_exact_mut(w) {
                row[..s].fill(0.0);
            }
        }
    }

    /// `piece[ox] = image[i, r + ky - ph, ox + kx - pw]` (0 outside the image) for column row
    /// `k = (i, ky, kx)` and output row `r`.
    fn fill_piece(&self, piece: &mut [f32], k: usize, image: &[f32], r: usize) {
        let Self {
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            w_out,
            ..
        } = *self;
        let (channel, ky, kx) = (k / (kh * kw), k / kw % kh, k % kw);
        let y = r + ky;
        if y < ph || y >= ph + h {
            piece.fill(0.0);
            return;
        }
        // Output columns `lo..hi` read inside the image, from input column `lo + kx - pw`.
        // (A padding wider than the row can leave none.)
        let lo = pw.saturating_sub(kx).min(w_out);
        let hi = (w + pw).saturating_sub(kx).min(w_out).max(lo);
        piece[..lo].fill(0.0);
        piece[hi..].fill(0.0);
        if hi > lo {
            let source = &image[(channel * h + y - ph) * w..][..w];
            let start = lo + kx - pw;
            piece[lo..hi].copy_from_slice(&source[start..start + hi - lo]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tensor, TensorPrimitive};

    type B = Flex;

    fn check(input: [usize; 4], kernel: [usize; 4], padding: [usize; 2], with_bias: bool) {
        let device = Default::default();
        let x = Tensor::<B, 4>::random(input, Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<B, 4>::random(kernel, Distribution::Normal(0.0, 1.0), &device);
        let bias = with_bias
            .then(|| Tensor::<B, 1>::random([kernel[0]], Distribution::Normal(0.0, 1.0), &device));
        let expected = conv2d(
            x.clone(),
            weight.clone(),
            bias.clone(),
            ConvOptions::new([1, 1], padding, [1, 1], 1),
        );
        let primitive = |t: Tensor<B, 4>| t.into_primitive().tensor();
        let bias = bias.map(|b| b.into_primitive().tensor());
        let got: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(conv2d_row_tiles(
            &primitive(x),
            &primitive(weight),
            bias.as_ref(),
            padding,
        )));
        assert_eq!(got.dims(), expected.dims(), "{input:?} * {kernel:?}");
        let scale = expected.clone().abs().max().into_scalar();
        let error = (got - expected).abs().max().into_scalar();
        assert!(
            error <= 1e-5 * scale,
            "{input:?} * {kernel:?} pad {padding:?}: max error {error} (scale {scale})"
        );
    }

    #[test]
    fn equals_burns_convolution_for_same_valid_and_uneven_geometries() {
        // Same padding, several images, several tiles per image (512 / 40 -> 13 rows) with a
        // partial last one.
        check([3, 5, 30, 40], [7, 5, 3, 3], [1, 1], true);
        // Valid (no padding), no bias, one tile.
        check([1, 4, 9, 11], [6, 4, 3, 3], [0, 0], false);
        // An uneven kernel with uneven padding, rows narrower than the kernel's reach.
        check([2, 3, 6, 2], [4, 3, 3, 2], [2, 1], true);
        // A 1x1 kernel and a kernel as wide as the padded input.
        check([2, 3, 5, 5], [4, 3, 1, 1], [0, 0], true);
        check([1, 2, 4, 3], [3, 2, 3, 5], [1, 2], false);
        // "Same" padding wider than the image (the per-row path), and rows partly outside the
        // image at both ends of a tile (a tall kernel).
        check([1, 2, 4, 1], [3, 2, 3, 5], [1, 2], true);
        check([2, 3, 7, 6], [2, 3, 5, 3], [2, 1], true);
    }

    #[test]
    fn equals_burns_convolution_with_more_tiles_than_threads_and_fewer() {
        // 2 images x 4 tiles (one GEMM per thread) and one image of one tile (the GEMM spread).
        check([2, 8, 64, 32], [16, 8, 3, 3], [1, 1], true);
        check([1, 64, 4, 4], [32, 64, 3, 3], [1, 1], true);
    }

    #[test]
    fn reads_a_strided_input_view() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 6, 5, 3], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<B, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let view = x.swap_dims(1, 3); // [2, 3, 5, 6], not contiguous
        let expected = conv2d(
            view.clone(),
            weight.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        let got: Tensor<B, 4> = Tensor::from_primitive(TensorPrimitive::Float(conv2d_row_tiles(
            &view.into_primitive().tensor(),
            &weight.into_primitive().tensor(),
            None,
            [1, 1],
        )));
        let error = (got - expected).abs().max().into_scalar();
        assert!(error < 1e-4, "max error {error}");
    }

    #[test]
    #[should_panic(expected = "must be smaller")]
    fn refuses_padding_as_large_as_the_kernel() {
        let device = Default::default();
        let x = Tensor::<B, 4>::zeros([1, 1, 4, 4], &device)
            .into_primitive()
            .tensor();
        let w = Tensor::<B, 4>::zeros([1, 1, 3, 3], &device)
            .into_primitive()
            .tensor();
        conv2d_row_tiles(&x, &w, None, [3, 0]);
    }
}

//! The convolution forward of `LoraConv2d` (which path runs where) and the shifted-window im2col
//! of [`crate::tracked_conv`]'s kernel gradient.
//!
//! [`conv2d_forward`] picks, for a stride-1, dilation-1, ungrouped convolution in `f32` on Burn-flex
//! (the CPU backend): [`crate::tiled_conv`] without autodiff (kernels larger than 1x1),
//! [`crate::tracked_conv`] (that forward, and its own backward) under `Autodiff<Flex>`; Burn's
//! `Conv2d` everywhere else (other backends and dtypes, strided downsamplers, 1x1 kernels without
//! autodiff, `CM_CONV=burn` / `CM_FUSED=burn`).
//!
//! [`shifted_columns`]: the input zero-padded once (one extra row at the bottom) and flattened to
//! `[batch, in, 1, Hp * Wp]`; tap `k = (ky, kx)` of the kernel reads the window of `h_out * Wp`
//! values starting at `ky * Wp + kx`. Concatenating the windows gives columns `[batch, in * kh *
//! kw, h_out * Wp]` whose row order `(in, ky, kx)` is the kernel's own, so the kernel gradient is
//! one batched GEMM with no re-ordering (the columns run on the padded width; the output gradient
//! is padded to match). On Burn-flex in `f32` the columns are written directly, one contiguous
//! copy per window (`flex_columns`).
//!
//! History (`docs/benchmarks.md`): until 2026-12-04 this module also ran the forward of one small
//! image as one GEMM over these columns, and the input gradient likewise; the row-tiled GEMMs of
//! `tiled_conv` replaced both (measured faster everywhere, and no full column matrix). Measured
//! and dropped: nine GEMMs, one per tap, summed without the concatenation (a ninth of the depth per
//! GEMM); the kernel gradient from `tiled_conv`'s row tiles (no gain on the SD1.5 step, slower on
//! the demo teacher's 8 x 8 latents, whose rows are too short for row copies).

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use crate::flex::values;
use crate::tiled_conv::{conv2d_tiled, tiled_conv_applies};
use crate::tracked_conv::{conv2d_tracked, tracked_conv_applies};

/// The im2col matrix of a stride-1 convolution, laid out on the padded width (module docs).
pub(crate) struct ShiftedColumns {
    /// `[batch, in * kh * kw, h_out * wp]`, rows in the kernel's own `(in, ky, kx)` order.
    pub columns: Tensor<Flex, 3>,
    /// Output height and width.
    pub h_out: usize,
    pub w_out: usize,
    /// The padded width: each output row is `wp` columns long, the last `wp - w_out` of them
    /// outside the image.
    pub wp: usize,
}

/// The columns of an `f32` Burn-flex `x` for a `kernel`-sized, stride-1 convolution with `padding`
/// zero pixels on each side (module docs; only `tracked_conv` needs them, on Burn-flex).
///
/// # Panics
/// If `x` does not have `c_in` channels, is not `f32`, or the kernel is larger than the padded
/// input.
pub(crate) fn shifted_columns(
    x: Tensor<Flex, 4>,
    c_in: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> ShiftedColumns {
    let [_, x_in, h, w] = x.dims();
    assert_eq!(
        x_in, c_in,
        "conv2d: the input has {x_in} channels, the kernel expects {c_in}"
    );
    let [kh, kw] = kernel;
    let [ph, pw] = padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    assert!(
        kh <= hp && kw <= wp,
        "conv2d: a {kh}x{kw} kernel does not fit a padded {hp}x{wp} input"
    );
    let columns = flex_columns(&x.into_primitive().tensor(), kernel, padding);
    ShiftedColumns {
        columns: Tensor::from_primitive(TensorPrimitive::Float(columns)),
        h_out: hp - kh + 1,
        w_out: wp - kw + 1,
        wp,
    }
}

/// The columns of [`shifted_columns`], written directly: each `(sample, channel)` plane is
/// zero-padded once into a scratch buffer, then each tap's window of `h_out * wp` values is one
/// contiguous copy into the columns (a `pad` + strided slices + `cat` formulation costs two copies
/// per window on Burn-flex: 19% of a decoder training step, `perf`).
fn flex_columns(x: &FlexTensor, kernel: [usize; 2], padding: [usize; 2]) -> FlexTensor {
    let [batch, c_in, h, w] = x.layout().shape().dims();
    let ([kh, kw], [ph, pw]) = (kernel, padding);
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let len = (hp - kh + 1) * wp;
    let input = values(x);
    // One extra bottom row, so that every window of `len` values fits.
    let mut padded = vec![0.0f32; (hp + 1) * wp];
    let mut columns = Vec::with_capacity(batch * c_in * kh * kw * len);
    for plane in input.chunks_exact(h * w) {
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let start = (y + ph) * wp + pw;
            padded[start..start + w].copy_from_slice(row);
        }
        for tap in 0..kh * kw {
            let start = (tap / kw) * wp + tap % kw;
            columns.extend_from_slice(&padded[start..start + len]);
        }
    }
    FlexTensor::from_data(TensorData::new(columns, [batch, c_in * kh * kw, len]))
}

/// A path's rule: dtypes, kernel, padding, stride, dilation, groups -> whether it applies.
type ApplyRule = fn(&[DType], [usize; 2], [usize; 2], [usize; 2], [usize; 2], usize) -> bool;

/// `conv.forward(x)`, through [`conv2d_tiled`] where [`tiled_conv_applies`] (Burn-flex without
/// autodiff), through [`conv2d_tracked`] (its own backward) under `Autodiff<Flex>` where
/// [`tracked_conv_applies`], Burn's `Conv2d` otherwise (module docs). Paddings must be
/// symmetric for the first two.
pub fn conv2d_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let bias = conv.bias.as_ref().map(|b| b.val());
    let Some(padding) = padding else {
        return conv.forward(x);
    };
    let dtypes = [x.dtype(), conv.weight.val().dtype()];
    let same_bias_dtype = bias.as_ref().is_none_or(|b| b.dtype() == x.dtype());
    let applies = |rule: ApplyRule| {
        same_bias_dtype
            && rule(
                &dtypes,
                conv.kernel_size,
                padding,
                conv.stride,
                conv.dilation,
                conv.groups,
            )
    };
    if applies(tiled_conv_applies::<B>) {
        conv2d_tiled(x, conv.weight.val(), bias, padding)
    } else if applies(tracked_conv_applies::<B>) {
        conv2d_tracked(x, conv.weight.val(), bias, padding)
    } else {
        conv.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::ops::PadMode;
    use burn::tensor::Distribution;

    type B = burn_flex::Flex;

    #[test]
    fn every_path_equals_burns_conv2d() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 4, 9, 7], Distribution::Normal(0.0, 1.0), &device);
        let configs = [
            Conv2dConfig::new([4, 6], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            Conv2dConfig::new([4, 6], [3, 3]),
            Conv2dConfig::new([4, 6], [1, 1]),
            Conv2dConfig::new([4, 6], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            Conv2dConfig::new([4, 6], [3, 3]).with_padding(PaddingConfig2d::Explicit(0, 1, 1, 1)),
        ];
        for config in configs {
            let conv = config.init::<B>(&device);
            let expected = conv.forward(x.clone());
            let got = conv2d_forward(&conv, x.clone());
            assert_eq!(got.dims(), expected.dims(), "{config:?}");
            let error = (got - expected).abs().max().into_scalar();
            assert!(error < 1e-4, "{config:?}: max error {error}");
        }
    }

    #[test]
    fn the_columns_hold_each_taps_shifted_window() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
        let ShiftedColumns {
            columns,
            h_out,
            w_out,
            wp,
        } = shifted_columns(x.clone(), 3, [3, 3], [1, 1]);
        assert_eq!((h_out, w_out, wp), (4, 5, 7));
        assert_eq!(columns.dims(), [2, 27, 4 * 7]);
        let padded = x.pad([(0, 0), (0, 0), (1, 1), (1, 1)], PadMode::Constant(0.0));
        // Channel 2, tap (2, 1): column (y, x) reads padded (y + 2, x + 1).
        let row = columns
            .slice([0..2, 2 * 9 + 2 * 3 + 1..2 * 9 + 2 * 3 + 2, 0..28])
            .reshape([2, 4, 7])
            .slice([0..2, 0..4, 0..5]);
        let expected = padded.slice([0..2, 2..3, 2..6, 1..6]).reshape([2, 4, 5]);
        let error = (row - expected).abs().max().into_scalar();
        assert_eq!(error, 0.0);
    }
}

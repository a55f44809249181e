//! A stride-1 `Conv2d` forward as one GEMM over shifted windows of the input, for Burn-flex.
//!
//! Burn-flex (Burn 0.21's CPU backend) runs a convolution as im2col + GEMM, and builds its inputs
//! with scalar loops on every call: the kernel re-ordered to `[out, kh, kw, in]` (9 * out * in
//! scattered moves for a 3x3 kernel, as many as the layer has weights), the input to NHWC, then the
//! im2col tiles. A `perf` profile of the SD1.5 UNet forward (batch 1, 32 x 32 latents) spent 17%
//! of its time in those loops, next to 47% in the GEMM itself.
//!
//! Here the input is zero-padded once (one extra row at the bottom) and flattened to
//! `[batch, in, 1, Hp * Wp]`; tap `k = (ky, kx)` of the kernel reads the window of `h_out * Wp`
//! values starting at `ky * Wp + kx` (a strided view). Concatenating the windows along the third
//! axis gives columns `[batch, in * kh * kw, h_out * Wp]` whose row order `(in, ky, kx)` is the
//! kernel's own, so one GEMM with the kernel as stored (`[out, in * kh * kw]`, no re-order)
//! computes the output on the padded width, which is then cropped. The copies left are the
//! padding, the concatenation (row-wise, vectorised) and the crop; on Burn-flex in `f32` the
//! columns are written directly, one contiguous copy per window (`flex_columns`; Burn-flex's
//! `cat` of the strided windows copies each twice). `tracked_conv` reuses the columns for the
//! convolution's gradients under autodiff.
//!
//! It is exact (the same sums, in another order) and used only where it measured faster (see
//! [`conv2d_forward`] and [`prefer_shifted_windows`]); elsewhere Burn's own convolution runs.
//! Measured and dropped: nine GEMMs, one per tap, summed without the concatenation (slower: a
//! ninth of the depth per GEMM).

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use crate::flex::{cast, is_flex, kernels_disabled, values};
use crate::tracked_conv::{conv2d_tracked, tracked_conv_applies};

/// `conv2d(x, weight, bias)` with stride 1, dilation 1, one group and `padding` zero pixels on each
/// side, as one GEMM over the concatenated shifted windows of the padded input (module docs).
///
/// # Shapes
/// `x` `[batch, in, h, w]`, `weight` `[out, in, kh, kw]`, `bias` `[out]` -> `[batch, out,
/// h + 2 padding - kh + 1, w + 2 padding - kw + 1]`.
///
/// # Panics
/// If the channel counts disagree or the kernel is larger than the padded input.
pub fn conv2d_shifted_windows<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    padding: [usize; 2],
) -> Tensor<B, 4> {
    let [batch, _, _, _] = x.dims();
    let [c_out, w_in, kh, kw] = weight.dims();
    let ShiftedColumns {
        columns,
        h_out,
        w_out,
        wp,
    } = shifted_columns(x, w_in, [kh, kw], padding);
    // 3. One product with the kernel as it is stored (`[out, in * kh * kw]`, no re-ordering).
    let mut out = weight.reshape([1, c_out, w_in * kh * kw]).matmul(columns);
    if let Some(bias) = bias {
        out = out + bias.reshape([1, c_out, 1]);
    }
    // 4. Crop the padded width (the reshape to 3-D copies the view into a contiguous tensor).
    out.reshape([batch, c_out, h_out, wp])
        .slice([0..batch, 0..c_out, 0..h_out, 0..w_out])
        .reshape([batch, c_out, h_out * w_out])
        .reshape([batch, c_out, h_out, w_out])
}

/// The im2col matrix of a stride-1 convolution, laid out on the padded width (module docs).
pub(crate) struct ShiftedColumns<B: Backend> {
    /// `[batch, in * kh * kw, h_out * wp]`, rows in the kernel's own `(in, ky, kx)` order.
    pub columns: Tensor<B, 3>,
    /// Output height and width.
    pub h_out: usize,
    pub w_out: usize,
    /// The padded width: each output row is `wp` columns long, the last `wp - w_out` of them
    /// outside the image.
    pub wp: usize,
}

/// The columns of `x` for a `kernel`-sized, stride-1 convolution with `padding` zero pixels on
/// each side (steps 1-2 of [`conv2d_shifted_windows`]).
///
/// # Panics
/// If `x` does not have `c_in` channels or the kernel is larger than the padded input.
pub(crate) fn shifted_columns<B: Backend>(
    x: Tensor<B, 4>,
    c_in: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> ShiftedColumns<B> {
    let [batch, x_in, h, w] = x.dims();
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
    let (h_out, w_out) = (hp - kh + 1, wp - kw + 1);

    if is_flex::<B>() && x.dtype() == DType::F32 && !kernels_disabled() {
        let flex: FlexTensor = cast(x.into_primitive().tensor());
        let columns = flex_columns(&flex, [kh, kw], padding);
        return ShiftedColumns {
            columns: Tensor::from_primitive(TensorPrimitive::Float(cast(columns))),
            h_out,
            w_out,
            wp,
        };
    }
    // 1. Zero-pad (one extra bottom row, so every tap's window of `h_out * wp` fits) and flatten.
    let rows = hp + 1;
    let flat = x
        .pad(
            [(0, 0), (0, 0), (ph, ph + 1), (pw, pw)],
            PadMode::Constant(0.0),
        )
        .reshape([batch, c_in, 1, rows * wp]);
    // 2. The columns `[batch, in, kh * kw, h_out * wp]`: tap `(ky, kx)` is the window of the
    //    flattened input starting at `ky * wp + kx` (strided views, copied once by the concat).
    let len = h_out * wp;
    let windows = (0..kh * kw)
        .map(|k| {
            let start = (k / kw) * wp + k % kw;
            flat.clone()
                .slice([0..batch, 0..c_in, 0..1, start..start + len])
        })
        .collect();
    ShiftedColumns {
        columns: Tensor::cat(windows, 2).reshape([batch, c_in * kh * kw, len]),
        h_out,
        w_out,
        wp,
    }
}

/// [`shifted_columns`] on a Burn-flex tensor, written directly: each `(sample, channel)` plane is
/// zero-padded once into a scratch buffer, then each tap's window of `h_out * wp` values is one
/// contiguous copy into the columns (the generic path's slices are strided views that Burn-flex's
/// `cat` first copies contiguous, then copies again: 19% of a decoder training step, `perf`).
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

/// `conv.forward(x)`, through [`conv2d_shifted_windows`] where [`prefer_shifted_windows`] says so
/// and the padding is symmetric, through [`conv2d_tracked`] (its own backward) under
/// `Autodiff<Flex>` where [`tracked_conv_applies`], Burn's `Conv2d` otherwise.
/// Batch 1 only: Burn-flex re-orders the kernel once per call, so its cost per image falls with
/// the batch, and at batch 2 (an SD1.5 CFG pair) both paths measured the same, at batch 16 (the
/// demo teacher) Burn's faster. Small images only (`h * w <= 8 * out channels`): the kernel
/// re-order this path saves grows with the channels, while its columns (`9 * in * h * (w + 2)`
/// values, not tiled like Burn's im2col) grow with the image; the SD1.5 VAE decoder at 512 px
/// (128-512 channels at up to 512 x 512) took 39.2 s and 5.9 GiB this way against 19.2 s and
/// 1.4 GiB with Burn's.
pub fn conv2d_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let bias = || conv.bias.as_ref().map(|b| b.val());
    match padding {
        Some(padding) if prefer_shifted_windows(conv, x.dims(), &x.device()) => {
            conv2d_shifted_windows(x, conv.weight.val(), bias(), padding)
        }
        Some(padding)
            if tracked_conv_applies::<B>(
                &[x.dtype(), conv.weight.val().dtype()],
                conv.kernel_size,
                padding,
                conv.stride,
                conv.dilation,
                conv.groups,
            ) && bias().is_none_or(|b| b.dtype() == x.dtype()) =>
        {
            conv2d_tracked(x, conv.weight.val(), bias(), padding)
        }
        _ => conv.forward(x),
    }
}

/// Whether [`conv2d_shifted_windows`] should replace `conv` on an input of shape `input`: on
/// Burn-flex (the CPU backend) without autodiff (under autodiff the backward of the concat and
/// the larger saved columns measured slower than Burn's convolution backward), for a batch of
/// one small image (`h * w <= 8 * out channels`; see [`conv2d_forward`]) and a stride-1,
/// dilation-1, ungrouped kernel larger than 1x1 (Burn-flex runs 1x1 kernels as a plain GEMM
/// already), unless the environment variable `CM_CONV` is `burn`.
pub fn prefer_shifted_windows<B: Backend>(
    conv: &Conv2d<B>,
    input: [usize; 4],
    device: &B::Device,
) -> bool {
    let [batch, _, h, w] = input;
    let c_out = conv.weight.lazy_shape().dims::<4>()[0];
    batch == 1
        && h * w <= 8 * c_out
        && conv.kernel_size != [1, 1]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && !B::ad_enabled(device)
        && B::name(device).contains("flex")
        && !burns_convolution_forced()
}

/// `CM_CONV=burn` in the environment keeps Burn's convolution everywhere (read once).
fn burns_convolution_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("CM_CONV").is_ok_and(|v| v == "burn"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tolerance};

    type B = burn_flex::Flex;

    fn check(
        batch: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        k: [usize; 2],
        pad: [usize; 2],
    ) {
        let device = Default::default();
        let x =
            Tensor::<B, 4>::random([batch, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<B, 4>::random(
            [c_out, c_in, k[0], k[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let bias = Tensor::<B, 1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
        let expected = conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], pad, [1, 1], 1),
        );
        let got = conv2d_shifted_windows(x, weight, Some(bias), pad);
        assert_eq!(got.dims(), expected.dims());
        got.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
    }

    #[test]
    fn gradients_equal_burns_convolution() {
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        let input = |shape: [usize; 4]| {
            Tensor::<A, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
        };
        let (x, weight) = (input([2, 3, 5, 6]), input([4, 3, 3, 3]));
        let bias =
            Tensor::<A, 1>::random([4], Distribution::Normal(0.0, 1.0), &device).require_grad();
        // An uneven loss, so that every output element gets its own weight.
        let probe = Tensor::<A, 4>::random([2, 4, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        let loss = |y: Tensor<A, 4>| (y * probe.clone()).sum();
        let ours = loss(conv2d_shifted_windows(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            [1, 1],
        ))
        .backward();
        let burns = loss(conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        ))
        .backward();
        let tol = Tolerance::absolute(1e-4);
        x.grad(&ours)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x.grad(&burns).unwrap().into_data(), tol);
        weight
            .grad(&ours)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&weight.grad(&burns).unwrap().into_data(), tol);
        bias.grad(&ours)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&bias.grad(&burns).unwrap().into_data(), tol);
    }

    #[test]
    fn picked_on_flex_without_autodiff_for_one_small_image_and_stride_one_kernels_above_1x1() {
        use burn::nn::conv::Conv2dConfig;
        let device = Default::default();
        let conv = |k: usize, stride: usize, groups: usize| {
            Conv2dConfig::new([8, 8], [k, k])
                .with_stride([stride, stride])
                .with_groups(groups)
                .init::<B>(&device)
        };
        let pick = |conv: &Conv2d<B>, input| prefer_shifted_windows(conv, input, &device);
        assert!(pick(&conv(3, 1, 1), [1, 8, 8, 8]));
        assert!(!pick(&conv(3, 1, 1), [2, 8, 8, 8]), "batch 2");
        assert!(
            !pick(&conv(3, 1, 1), [1, 8, 8, 9]),
            "72 pixels > 8 * 8 channels"
        );
        assert!(!pick(&conv(1, 1, 1), [1, 8, 8, 8]), "1x1");
        assert!(!pick(&conv(3, 2, 1), [1, 8, 8, 8]), "stride 2");
        assert!(!pick(&conv(3, 1, 2), [1, 8, 8, 8]), "groups");
        let autodiff =
            Conv2dConfig::new([8, 8], [3, 3]).init::<burn::backend::Autodiff<B>>(&device);
        assert!(
            !prefer_shifted_windows(&autodiff, [1, 8, 8, 8], &device),
            "autodiff"
        );
    }

    #[test]
    fn equals_burns_convolution() {
        check(2, 5, 7, 6, 9, [3, 3], [1, 1]);
        check(1, 3, 4, 4, 4, [3, 3], [0, 0]);
        check(3, 2, 3, 5, 7, [3, 1], [1, 0]);
        check(1, 4, 2, 1, 1, [3, 3], [1, 1]);
    }
}

//! Element-wise kernels on `f32` slices that the compiler vectorises: `exp` as a branch-free
//! polynomial, and SiLU forward / backward built on it.
//!
//! Why hand-written: Burn-flex 0.21 computes sigmoid (and so SiLU) with the scalar `expf` of the C
//! library behind a sign branch, one element at a time (`perf`: scalar `expf` was 6.2% of the demo
//! LoRA-distillation step, `docs/benchmarks.md`), and no maintained crate offers a vectorised
//! `exp` over slices for stable Rust. The approximation is the classic Cephes `expf` one (range
//! reduction by `ln 2`, a degree-6 polynomial on `[-ln 2 / 2, ln 2 / 2]`, the power of two put in
//! the exponent bits), written without branches so that LLVM turns each loop into SIMD code;
//! each public kernel is compiled three times (AVX-512, AVX2 + FMA, the baseline) and picks the
//! widest the CPU has at run time. Accuracy: within 2 ulp of `f32::exp` over the whole range
//! (tested below).

/// Inputs are clamped to this range before the exponential, so that `2^n` below stays a normal
/// `f32` (`e^88` = 1.65e38; the true `e^x` beyond it overflows at 88.72 anyway).
const EXP_MIN: f32 = -87.33;
const EXP_MAX: f32 = 88.0;
/// `1.5 * 2^23`: adding and subtracting it rounds an `f32` of magnitude `< 2^22` to the nearest
/// integer without a branch or a library call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x`, branch-free (the scalar body of every kernel).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // 1. x = n ln2 + r with |r| <= ln2 / 2 (ln 2 split in two parts for an exact product).
    let n = (x * std::f32::consts::LOG2_E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    // 2. e^r by the Cephes minimax polynomial.
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 3. times 2^n through the exponent bits (the clamp keeps n in [-126, 127]: a normal power).
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * scale
}

/// `x * sigmoid(x) = x / (1 + e^-x)`.
#[inline(always)]
fn silu_one(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

/// `d silu / dx * g = g * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_grad_one(x: f32, g: f32) -> f32 {
    let s = 1.0 / (1.0 + exp_approx(-x));
    g * s * (1.0 + x * (1.0 - s))
}

/// Defines `pub fn $name(args) body` compiled three times (AVX-512, AVX2 + FMA, the baseline)
/// and dispatched on the CPU at run time; `body` should be plain loops over slices, which LLVM
/// vectorises for the enabled features.
macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn kernel($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            kernel($($arg),*)
        }
    };
}

/// Panics naming `kernel` unless every length equals `expected`.
#[inline(always)]
fn check_lengths(kernel: &str, expected: usize, lengths: &[usize]) {
    assert!(
        lengths.iter().all(|&n| n == expected),
        "{kernel}: length mismatch ({lengths:?}, expected {expected})"
    );
}

multiversion! {
    /// `out[i] = e^x[i]` (within 2 ulp of `f32::exp`; inputs beyond `[-87.33, 88]` clamped).
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn exp_slice(x: &[f32], out: &mut [f32]) {
        check_lengths("exp_slice", out.len(), &[x.len()]);
        for (o, &x) in out.iter_mut().zip(x) {
            *o = exp_approx(x);
        }
    }
}

multiversion! {
    /// `out[i] = silu(x[i]) = x[i] * sigmoid(x[i])`.
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn silu_slice(x: &[f32], out: &mut [f32]) {
        check_lengths("silu_slice", out.len(), &[x.len()]);
        for (o, &x) in out.iter_mut().zip(x) {
            *o = silu_one(x);
        }
    }
}

multiversion! {
    /// `dx[i] = grad[i] * silu'(x[i])`: the gradient of SiLU at `x` times the incoming gradient.
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn silu_backward_slice(x: &[f32], grad: &[f32], dx: &mut [f32]) {
        check_lengths("silu_backward_slice", dx.len(), &[x.len(), grad.len()]);
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(grad) {
            *d = silu_grad_one(x, g);
        }
    }
}

/// `erf(x)`, branch-free: a rational minimax approximation in `x^2` on `[-4, 4]` (erf is +-1 in
/// f32 beyond), the one Eigen and XLA use for `float`; within 5e-7 of the exact value (tested; that is 8 ulp next to +-1, 1e-7 relative in GELU).
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `gelu(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))` (the exact GELU, Burn's and torch's).
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu'(x) = Phi(x) + x phi(x)`.
#[inline(always)]
fn gelu_grad_one(x: f32) -> f32 {
    /// `1 / sqrt(2 pi)`.
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp_approx(-0.5 * x * x)
}

multiversion! {
    /// `out[i] = erf(x[i])` (within 5e-7 of the exact value).
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn erf_slice(x: &[f32], out: &mut [f32]) {
        check_lengths("erf_slice", out.len(), &[x.len()]);
        for (o, &x) in out.iter_mut().zip(x) {
            *o = erf_approx(x);
        }
    }
}

multiversion! {
    /// GEGLU over rows: each row of `x` is `[hidden (inner values), gate (inner values)]` and
    /// `out`'s row is `hidden * gelu(gate)` (`inner` values).
    ///
    /// # Panics
    /// If `x` is not `2 * inner` values per row of `out`.
    pub fn geglu_rows(x: &[f32], inner: usize, out: &mut [f32]) {
        check_lengths("geglu_rows", 2 * out.len(), &[x.len()]);
        for (row, o) in x.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
            let (hidden, gate) = row.split_at(inner);
            for ((o, &h), &g) in o.iter_mut().zip(hidden).zip(gate) {
                *o = h * gelu_one(g);
            }
        }
    }
}

multiversion! {
    /// The backward of [`geglu_rows`]: for each row, `d hidden = grad * gelu(gate)` and
    /// `d gate = grad * hidden * gelu'(gate)`, written as `dx`'s row `[d hidden, d gate]`.
    ///
    /// # Panics
    /// If the lengths do not match `x`'s (`dx`) and `out`'s (`grad`) of the forward.
    pub fn geglu_backward_rows(x: &[f32], grad: &[f32], inner: usize, dx: &mut [f32]) {
        check_lengths("geglu_backward_rows", x.len(), &[dx.len(), 2 * grad.len()]);
        let rows = x.chunks_exact(2 * inner).zip(grad.chunks_exact(inner));
        for ((row, grad), d) in rows.zip(dx.chunks_exact_mut(2 * inner)) {
            let (hidden, gate) = row.split_at(inner);
            let (d_hidden, d_gate) = d.split_at_mut(inner);
            let pairs = hidden.iter().zip(gate).zip(grad);
            for (((&h, &g), &dy), (dh, dg)) in pairs.zip(d_hidden.iter_mut().zip(d_gate)) {
                *dh = dy * gelu_one(g);
                *dg = dy * h * gelu_grad_one(g);
            }
        }
    }
}

/// Lanes of the partial sums below: enough independent accumulators for LLVM to vectorise a
/// reduction without reordering a strict floating-point sum.
const LANES: usize = 16;

/// `max(x)` (`-inf` for an empty slice), by [`LANES`] partial maxima.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `sum_i x[i]`, by [`LANES`] partial sums.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &v) in acc.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i a[i] * b[i]`, by [`LANES`] partial sums.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

multiversion! {
    /// Softmax of each row of `width` values of `scale * x` (`scale > 0`):
    /// `out = exp(scale (x - max)) / sum exp(scale (x - max))`.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of `width`.
    pub fn softmax_rows(x: &[f32], width: usize, scale: f32, out: &mut [f32]) {
        check_lengths("softmax_rows", out.len(), &[x.len()]);
        assert!(width > 0 && x.len().is_multiple_of(width), "softmax_rows: rows of {width} values");
        for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let max = max_lanes(row);
            for (o, &v) in o.iter_mut().zip(row) {
                *o = exp_approx(scale * (v - max));
            }
            let inv = 1.0 / sum_lanes(o);
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    }
}

multiversion! {
    /// The backward of a softmax over rows of `width` values, times `scale`: with `p` the
    /// softmax and `dp` the gradient of its output, `ds = scale * p * (dp - sum(p * dp))`.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of `width`.
    pub fn softmax_backward_rows(p: &[f32], dp: &[f32], width: usize, scale: f32, ds: &mut [f32]) {
        check_lengths("softmax_backward_rows", ds.len(), &[p.len(), dp.len()]);
        assert!(width > 0 && p.len().is_multiple_of(width), "softmax_backward_rows: rows of {width} values");
        let rows = p.chunks_exact(width).zip(dp.chunks_exact(width));
        for ((p, dp), ds) in rows.zip(ds.chunks_exact_mut(width)) {
            let s = dot_lanes(p, dp);
            for ((d, &p), &g) in ds.iter_mut().zip(p).zip(dp) {
                *d = scale * p * (g - s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_distance(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp_over_the_whole_range() {
        let xs: Vec<f32> = (0..200_001)
            .map(|i| EXP_MIN + (EXP_MAX - EXP_MIN) * i as f32 / 200_000.0)
            .collect();
        let mut out = vec![0.0; xs.len()];
        exp_slice(&xs, &mut out);
        let worst = xs
            .iter()
            .zip(&out)
            .map(|(&x, &y)| (ulp_distance(y, x.exp()), x))
            .fold((0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        // Far outside the range: clamped, finite, with the right limit.
        let mut ends = [0.0; 2];
        exp_slice(&[-1e4, 1e4], &mut ends);
        assert!(ends[0] < 1e-37 && ends[0] >= 0.0, "{}", ends[0]);
        assert!(ends[1] > 1e38 && ends[1].is_finite(), "{}", ends[1]);
    }

    #[test]
    fn silu_and_its_gradient_match_the_definitions() {
        let xs: Vec<f32> = (-3000..=3000)
            .map(|i| i as f32 * 0.01)
            .chain([-95.0, 95.0, 0.0])
            .collect();
        let gs: Vec<f32> = xs.iter().map(|x| 0.5 + (x * 7.0).sin()).collect();
        let (mut y, mut dy) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        silu_slice(&xs, &mut y);
        silu_backward_slice(&xs, &gs, &mut dy);
        for ((&x, &g), (&y, &dy)) in xs.iter().zip(&gs).zip(y.iter().zip(&dy)) {
            let (x64, g64) = (x as f64, g as f64);
            let s = 1.0 / (1.0 + (-x64).exp());
            let (want, want_grad) = (x64 * s, g64 * (s + x64 * s * (1.0 - s)));
            assert!(
                (y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({x}) = {y}, want {want}"
            );
            assert!(
                (dy as f64 - want_grad).abs() <= 1e-6 * (1.0 + want_grad.abs()),
                "silu'({x}) * {g} = {dy}, want {want_grad}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "silu_backward_slice: length mismatch")]
    fn refuses_slices_of_different_lengths() {
        silu_backward_slice(&[1.0, 2.0], &[1.0], &mut [0.0, 0.0]);
    }

    #[test]
    fn erf_is_within_5e_7_of_the_exact_value() {
        let xs: Vec<f32> = (-60_000..=60_000)
            .map(|i| i as f32 * 1e-4)
            .chain([-30.0, 30.0])
            .collect();
        let mut out = vec![0.0; xs.len()];
        erf_slice(&xs, &mut out);
        let worst = xs
            .iter()
            .zip(&out)
            .map(|(&x, &y)| ((y as f64 - erf_exact(x as f64)).abs(), x))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst.0 <= 5e-7, "erf off by {} at x = {}", worst.0, worst.1);
    }

    /// erf to ~1e-15 by its Taylor series (|x| <= 3) or its continued fraction (beyond).
    fn erf_exact(x: f64) -> f64 {
        let a = x.abs();
        let value = if a <= 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = exp(-a^2) / sqrt(pi) * 1 / (a + 1/2 / (a + 1 / (a + 3/2 / (a + ...))))
            let mut fraction = a;
            for k in (1..60).rev() {
                fraction = a + (k as f64 / 2.0) / fraction;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / fraction
        };
        value.copysign(x)
    }

    #[test]
    fn geglu_rows_and_their_backward_match_the_definitions() {
        let inner = 37;
        let rows = 5;
        let x: Vec<f32> = (0..rows * 2 * inner)
            .map(|i| ((i * 7919) % 1000) as f32 / 125.0 - 4.0)
            .collect();
        let grad: Vec<f32> = (0..rows * inner)
            .map(|i| ((i * 104_729) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let (mut out, mut dx) = (vec![0.0; rows * inner], vec![0.0; rows * 2 * inner]);
        geglu_rows(&x, inner, &mut out);
        geglu_backward_rows(&x, &grad, inner, &mut dx);
        let phi = |g: f64| (-g * g / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let cdf = |g: f64| 0.5 * (1.0 + erf_exact(g / std::f64::consts::SQRT_2));
        for r in 0..rows {
            for j in 0..inner {
                let h = x[r * 2 * inner + j] as f64;
                let g = x[r * 2 * inner + inner + j] as f64;
                let dy = grad[r * inner + j] as f64;
                let checks = [
                    (out[r * inner + j], h * g * cdf(g), "out"),
                    (dx[r * 2 * inner + j], dy * g * cdf(g), "d hidden"),
                    (
                        dx[r * 2 * inner + inner + j],
                        dy * h * (cdf(g) + g * phi(g)),
                        "d gate",
                    ),
                ];
                for (got, want, what) in checks {
                    let error = (got as f64 - want).abs();
                    assert!(
                        error <= 2e-6 * (1.0 + want.abs()),
                        "{what} at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_rows_and_their_backward_match_the_definitions() {
        let width = 37;
        let x: Vec<f32> = (0..3 * width)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        let dp: Vec<f32> = (0..3 * width)
            .map(|i| ((i * 104_729) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let (mut p, mut ds) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        softmax_rows(&x, width, 1.0, &mut p);
        softmax_backward_rows(&p, &dp, width, 0.5, &mut ds);
        for r in 0..3 {
            let row = &x[r * width..(r + 1) * width];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let z: f64 = e.iter().sum();
            let want: Vec<f64> = e.iter().map(|e| e / z).collect();
            let dot: f64 = (0..width).map(|j| want[j] * dp[r * width + j] as f64).sum();
            for j in 0..width {
                let (got_p, got_ds) = (p[r * width + j] as f64, ds[r * width + j] as f64);
                let want_ds = 0.5 * want[j] * (dp[r * width + j] as f64 - dot);
                assert!(
                    (got_p - want[j]).abs() <= 1e-6,
                    "p at ({r}, {j}): {got_p} vs {}",
                    want[j]
                );
                assert!(
                    (got_ds - want_ds).abs() <= 1e-6,
                    "ds at ({r}, {j}): {got_ds} vs {want_ds}"
                );
            }
        }
    }
}

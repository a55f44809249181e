//! A Fréchet distance between two sets of captioned-shapes images, on features this project
//! defines (no learned network: an Inception-based FID needs weights we cannot download, and
//! would mean little on 32 px synthetic shapes).
//!
//! Features of one image ([`features`], [`FEATURES`] = 56 numbers). The background (dark or
//! light) is the one thing a caption leaves free, so the features are taken relative to it (the
//! judge's background estimate, `judge::background`):
//! 1. Layout and colour: the foreground (pixels farther than the judge's
//!    `FOREGROUND_DISTANCE` from the background, RGB / 255; background pixels 0) average-pooled
//!    to a 4 x 4 grid (48 numbers in [0, 1]).
//! 2. Shape and sharpness: a histogram of gradient orientations (8 bins over [0, pi); central
//!    differences, the gradient of each RGB channel added, each pixel contributing its gradient
//!    magnitude, divided by the number of pixels): a square puts its edges at 0 and pi/2, a circle
//!    spreads evenly, the triangle adds +-pi/3, and a blurred edge adds less than a sharp one.
//!
//! The distance ([`frechet_distance`]) is the one of FID: for Gaussians fitted to the two feature
//! sets, `|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))`, with the
//! matrix square roots from symmetric eigendecompositions (`nalgebra`); covariances are unbiased
//! (n - 1). Like FID it has a finite-sample floor: compare against the distance between two real
//! sets of the same size.

use image::RgbImage;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Number of features per image.
pub const FEATURES: usize = 4 * 4 * 3 + ORIENTATION_BINS;

const ORIENTATION_BINS: usize = 8;

/// The feature vector of one image (see the module docs).
pub fn features(image: &RgbImage) -> Vec<f64> {
    let (w, h) = image.dimensions();
    let background = crate::judge::background(image);
    let value =
        |x: u32, y: u32, c: usize| (image.get_pixel(x, y).0[c] as f64 - background[c]) / 255.0;
    let foreground = |x: u32, y: u32, c: usize| {
        let p = image.get_pixel(x, y).0;
        let distance = (0..3)
            .map(|c| (p[c] as f64 - background[c]).powi(2))
            .sum::<f64>()
            .sqrt();
        if distance > crate::judge::FOREGROUND_DISTANCE {
            p[c] as f64 / 255.0
        } else {
            0.0
        }
    };
    let mut out = vec![0.0; FEATURES];
    // 1. 4 x 4 average pooling of the foreground.
    let mut counts = [0.0f64; 16];
    for y in 0..h {
        for x in 0..w {
            let cell = ((y * 4 / h) * 4 + x * 4 / w) as usize;
            counts[cell] += 1.0;
            for c in 0..3 {
                out[cell * 3 + c] += foreground(x, y, c);
            }
        }
    }
    for (cell, count) in counts.iter().enumerate() {
        for c in 0..3 {
            out[cell * 3 + c] /= count.max(1.0);
        }
    }
    // 2. Magnitude-weighted orientation histogram of the RGB gradient.
    let histogram = &mut out[48..];
    let pixels = (w as f64 * h as f64).max(1.0);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let (mut gx, mut gy) = (0.0, 0.0);
            for c in 0..3 {
                gx += value(x + 1, y, c) - value(x - 1, y, c);
                gy += value(x, y + 1, c) - value(x, y - 1, c);
            }
            let magnitude = (gx * gx + gy * gy).sqrt();
            if magnitude == 0.0 {
                continue;
            }
            let angle = gy.atan2(gx).rem_euclid(std::f64::consts::PI);
            let bin = ((angle / std::f64::consts::PI * ORIENTATION_BINS as f64) as usize)
                .min(ORIENTATION_BINS - 1);
            histogram[bin] += magnitude / pixels;
        }
    }
    out
}

/// Mean and unbiased covariance of a feature set.
fn moments(set: &[Vec<f64>]) -> (DVector<f64>, DMatrix<f64>) {
    let n = set.len();
    let d = set[0].len();
    let data = DMatrix::from_fn(n, d, |i, j| set[i][j]);
    let mean = DVector::from_fn(d, |j, _| data.column(j).mean());
    let centred = DMatrix::from_fn(n, d, |i, j| data[(i, j)] - mean[j]);
    let covariance = centred.transpose() * &centred / (n as f64 - 1.0).max(1.0);
    (mean, covariance)
}

/// The square root of a symmetric positive semi-definite matrix (negative rounding noise in the
/// eigenvalues is clipped to 0).
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(m);
    let roots = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

/// The Fréchet distance between Gaussians fitted to two feature sets (each at least 2 vectors of
/// the same length).
pub fn frechet_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert!(
        a.len() >= 2 && b.len() >= 2,
        "a Fréchet distance needs at least 2 images per set"
    );
    let (mean_a, cov_a) = moments(a);
    let (mean_b, cov_b) = moments(b);
    let root_a = sqrt_psd(cov_a.clone());
    let middle = &root_a * &cov_b * &root_a;
    let middle = (&middle + middle.transpose()) * 0.5;
    let cross = SymmetricEigen::new(middle)
        .eigenvalues
        .map(|v| v.max(0.0).sqrt())
        .sum();
    ((mean_a - mean_b).norm_squared() + cov_a.trace() + cov_b.trace() - 2.0 * cross).max(0.0)
}

/// The Fréchet distance between two image sets on [`features`].
pub fn image_frechet_distance(a: &[RgbImage], b: &[RgbImage]) -> f64 {
    let fa: Vec<Vec<f64>> = a.iter().map(features).collect();
    let fb: Vec<Vec<f64>> = b.iter().map(features).collect();
    frechet_distance(&fa, &fb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussians with known moments: for 1-D sets the distance is (m_a - m_b)^2 + (s_a - s_b)^2.
    #[test]
    fn one_dimensional_distance_matches_the_closed_form() {
        let a: Vec<Vec<f64>> = [1.0, 3.0].iter().map(|v| vec![*v]).collect(); // mean 2, var 2
        let b: Vec<Vec<f64>> = [5.0, 9.0].iter().map(|v| vec![*v]).collect(); // mean 7, var 8
        let expected = (2.0f64 - 7.0).powi(2) + (2f64.sqrt() - 8f64.sqrt()).powi(2); // 27
        assert!((frechet_distance(&a, &b) - expected).abs() < 1e-9);
    }

    /// Identical sets are at distance 0; a shifted copy at the squared shift (covariances equal).
    #[test]
    fn shift_and_identity() {
        let a: Vec<Vec<f64>> = (0..20)
            .map(|i| {
                vec![
                    (i as f64 * 0.37).sin(),
                    (i as f64 * 0.91).cos(),
                    i as f64 / 20.0,
                ]
            })
            .collect();
        assert!(frechet_distance(&a, &a) < 1e-9);
        let shifted: Vec<Vec<f64>> = a
            .iter()
            .map(|v| vec![v[0] + 1.0, v[1] - 2.0, v[2]])
            .collect();
        assert!((frechet_distance(&a, &shifted) - 5.0).abs() < 1e-6);
    }
}

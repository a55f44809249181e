//! Sliced Wasserstein distance between two equally sized point sets: the mean over random unit
//! directions of the 1-D Wasserstein-1 distance of the projections (sort both, average `|a - b|`).

use rand::rngs::Xoshiro256PlusPlus;

use crate::draws::{generator, normals};

/// `SWD_1` of two sets of `n` points in `dim` dimensions (row-major `[n * dim]`), over `directions`
/// random directions drawn with `seed`.
pub fn sliced_wasserstein(a: &[f32], b: &[f32], dim: usize, directions: usize, seed: u64) -> f64 {
    assert_eq!(a.len(), b.len(), "SWD needs sets of the same size");
    let n = a.len() / dim;
    let mut rng: Xoshiro256PlusPlus = generator(seed, &[0x5_3D]);
    let mut total = 0.0;
    for _ in 0..directions {
        let mut u: Vec<f64> = normals(&mut rng, dim).into_iter().map(f64::from).collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        u.iter_mut().for_each(|v| *v /= norm);
        let project = |set: &[f32]| {
            let mut p: Vec<f64> = (0..n)
                .map(|i| (0..dim).map(|j| set[i * dim + j] as f64 * u[j]).sum())
                .collect();
            p.sort_by(|x, y| x.total_cmp(y));
            p
        };
        let (pa, pb) = (project(a), project(b));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64;
    }
    total / directions as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_is_measured_and_identical_sets_are_at_zero() {
        let a: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(sliced_wasserstein(&a, &a, 2, 16, 0), 0.0);
        // Shifting every point by (0.5, 0) moves each projection by 0.5 |u_x|: mean ~ 0.5 * 2/pi.
        let b: Vec<f32> = a.chunks(2).flat_map(|p| [p[0] + 0.5, p[1]]).collect();
        let d = sliced_wasserstein(&a, &b, 2, 2000, 0);
        assert!((d - 0.5 * 2.0 / std::f64::consts::PI).abs() < 0.02, "{d}");
    }
}

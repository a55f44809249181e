//! Comparing tensors against reference values (golden tests, parity checks, benchmarks): the one
//! definition of "relative error" the whole workspace quotes.

use burn::tensor::TensorData;

fn as_f64(data: &TensorData) -> Option<Vec<f64>> {
    data.clone().convert::<f64>().to_vec::<f64>().ok()
}

/// `||ours - reference|| / ||reference||` over all elements, in f64. Infinite when the shapes
/// differ or the reference is all zeros (a comparison that could not detect anything).
pub fn relative_error(ours: &TensorData, reference: &TensorData) -> f64 {
    if ours.shape != reference.shape {
        return f64::INFINITY;
    }
    let (Some(a), Some(b)) = (as_f64(ours), as_f64(reference)) else {
        return f64::INFINITY;
    };
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        f64::INFINITY
    } else {
        diff / norm
    }
}

/// `max |ours - reference|`, in f64. Infinite when the shapes differ.
pub fn max_abs_error(ours: &TensorData, reference: &TensorData) -> f64 {
    if ours.shape != reference.shape {
        return f64::INFINITY;
    }
    let (Some(a), Some(b)) = (as_f64(ours), as_f64(reference)) else {
        return f64::INFINITY;
    };
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

//! The guidance-scale embedding of LCM-style students (`time_cond_proj_dim`), equal to diffusers'
//! `LatentConsistencyModelPipeline.get_guidance_scale_embedding`: `w * 1000` through a sinusoid of
//! `dim` channels, `[sin, cos]`, frequencies `exp(-ln(10000) i / (dim/2 - 1))`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Embeds guidance scales (the pipeline passes `w - 1`), given as host values so that no
/// device-to-host read is needed.
///
/// # Shapes
/// `w`: `batch` values -> `[batch, dim]`.
pub fn guidance_scale_embedding<B: Backend>(
    w: &[f32],
    dim: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let batch = w.len();
    // Computed on the host: the arguments reach 1e4 (w = 10 -> 10000), where a backend's fast
    // vectorised sine loses ~1e-3; here each f32 argument (the same f32 products torch forms) gets
    // a correctly rounded sine and cosine.
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((i as f32 * -step) as f64).exp() as f32)
        .collect();
    let mut values = Vec::with_capacity(batch * dim);
    for &scale in w {
        let args: Vec<f64> = freqs.iter().map(|&f| (scale * 1000.0 * f) as f64).collect();
        values.extend(args.iter().map(|a| a.sin() as f32));
        values.extend(args.iter().map(|a| a.cos() as f32));
        if dim % 2 == 1 {
            values.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, dim]), device)
}

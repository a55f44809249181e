//! The guidance-scale embedding of LCM-style students (`time_cond_proj_dim`), equal to diffusers'
//! `LatentConsistencyModelPipeline.get_guidance_scale_embedding`: `w * 1000` through a sinusoid of
//! `dim` channels, `[sin, cos]`, frequencies `exp(-ln(10000) i / (dim/2 - 1))`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Embeds guidance scales (the pipeline passes `w - 1`).
///
/// # Shapes
/// `w`: `[batch]` -> `[batch, dim]`.
pub fn guidance_scale_embedding<B: Backend>(w: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let device = w.device();
    let [batch] = w.dims();
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &device).reshape([1, half]);
    let args = (w * 1000.0).reshape([batch, 1]) * freqs;
    let emb = Tensor::cat(vec![args.clone().sin(), args.cos()], 1);
    if dim % 2 == 1 {
        Tensor::cat(vec![emb, Tensor::zeros([batch, 1], &device)], 1)
    } else {
        emb
    }
}

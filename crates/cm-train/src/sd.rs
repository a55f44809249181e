//! Stable Diffusion as the engine sees it: the UNet as a [`Denoiser`] conditioned on CLIP text
//! embeddings (`[batch, 77, width]`).
//!
//! [`SdUnet`] pairs the UNet with the prediction type of its scheduler config. Timesteps reach the
//! UNet as host values (no device read); a student with a guidance embedding (`time_cond_proj_dim`)
//! gets `w - 1` embedded, as diffusers' LCM pipeline does. A half-precision UNet (a frozen f16 /
//! bf16 base) receives its inputs cast to its dtype and returns f32, so the step's arithmetic and
//! the loss stay in f32 while LoRA factors train in f32 (see `cm-lora`).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use cm_models::unet::UNet2DConditionModel;
use cm_schedulers::config::PredictionType;
use cm_schedulers::guidance::guidance_scale_embedding;

use crate::denoiser::Denoiser;
use crate::error::{Result, TrainError};

/// A UNet and what its output means.
#[derive(Module, Debug)]
pub struct SdUnet<B: Backend> {
    /// The network (with its LoRA adapters, if any).
    pub unet: UNet2DConditionModel<B>,
    /// What it predicts (the scheduler config's `prediction_type`).
    pub prediction_type: PredictionType,
}

fn cast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

impl<B: Backend> SdUnet<B> {
    /// The dtype of the UNet's weights.
    pub fn dtype(&self) -> DType {
        self.unet.conv_in.base.weight.val().dtype()
    }
}

impl<B: Backend> Denoiser<B, 3> for SdUnet<B> {
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn takes_guidance(&self) -> bool {
        self.unet.time_cond_proj_dim > 0
    }

    fn predict(
        &self,
        x: Tensor<B, 4>,
        t: &[usize],
        condition: Tensor<B, 3>,
        guidance: Option<&[f32]>,
    ) -> Result<Tensor<B, 4>> {
        let dtype = self.dtype();
        let device = x.device();
        let times: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        let timestep_cond = match self.unet.time_cond_proj_dim {
            0 => None,
            dim => {
                let w = guidance.ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "this UNet has a guidance embedding (time_cond_proj_dim = {dim}): pass w"
                    ))
                })?;
                let shifted: Vec<f32> = w.iter().map(|w| w - 1.0).collect();
                Some(cast(
                    guidance_scale_embedding(&shifted, dim, &device),
                    dtype,
                ))
            }
        };
        let out = self.unet.forward(
            cast(x, dtype),
            &times,
            cast(condition, dtype),
            timestep_cond,
        )?;
        Ok(cast(out, DType::F32))
    }
}

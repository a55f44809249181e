//! Tensor helpers shared by the adaptable layers: factors from file data, f32 factors, folding an
//! update into a frozen parameter.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// A factor read from a file (any float dtype, already shape-checked) as a tensor on `device`.
pub(crate) fn factor_tensor<B: Backend, const D: usize>(
    data: &TensorData,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(data.clone().convert::<f32>(), device)
}

/// `param + update`, keeping the parameter's id and its `require_grad` flag.
pub(crate) fn add_to_param<B: Backend, const D: usize>(
    param: Param<Tensor<B, D>>,
    update: Tensor<B, D>,
) -> Param<Tensor<B, D>> {
    let require_grad = param.is_require_grad();
    param
        .map(|w| {
            let dtype = w.dtype();
            (w.detach() + update.cast(dtype)).detach()
        })
        .set_require_grad(require_grad)
}

/// Puts a new adapter's factors (and `up`'s optional bias) in f32, whatever the base's dtype:
/// as diffusers / peft keep them, so that an f16 / bf16 frozen base trains f32 factors (the
/// forward pass casts at the adapter's boundary, see `adapter::add_updates`).
pub(crate) fn keep_f32<B: Backend, const D: usize>(
    down: &mut Param<Tensor<B, D>>,
    up: &mut Param<Tensor<B, D>>,
    up_bias: &mut Option<Param<Tensor<B, 1>>>,
) {
    fn f32_param<B: Backend, const D: usize>(p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if p.val().dtype() == DType::F32 {
            p
        } else {
            let require_grad = p.val().is_require_grad();
            p.map(|t| t.cast(DType::F32).detach().set_require_grad(require_grad))
        }
    }
    *down = f32_param(down.clone());
    *up = f32_param(up.clone());
    *up_bias = up_bias.take().map(f32_param);
}

/// `weight += delta` and `bias += scale * up_bias` (merge with a positive scale, unmerge with a
/// negative one); `delta` is already scaled.
pub(crate) fn fold_into<B: Backend, const D: usize>(
    weight: &mut Param<Tensor<B, D>>,
    bias: &mut Option<Param<Tensor<B, 1>>>,
    delta: Tensor<B, D>,
    up_bias: Option<&Param<Tensor<B, 1>>>,
    scale: f64,
) {
    *weight = add_to_param(weight.clone(), delta);
    if let Some(update) = up_bias {
        // An adapter with a bias only merges into a layer with one (checked by `merge`).
        if let Some(b) = bias.take() {
            *bias = Some(add_to_param(b, update.val().detach() * scale));
        }
    }
}

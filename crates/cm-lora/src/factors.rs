//! Tensor helpers shared by the adaptable layers: factors from file data, dtype matching, folding
//! an update into a frozen parameter.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A factor read from a file (any float dtype, already shape-checked) as a tensor on `device`.
pub(crate) fn factor_tensor<B: Backend, const D: usize>(
    data: &TensorData,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(data.clone().convert::<f32>(), device)
}

/// `factor` in the dtype of `base` (an fp16 UNet gets fp16 adapters) when the base is materialised;
/// untouched while the base is still lazily uninitialised.
pub(crate) fn like_base<B: Backend, const D: usize, const E: usize>(
    factor: Param<Tensor<B, D>>,
    base: &Param<Tensor<B, E>>,
) -> Param<Tensor<B, D>> {
    if !base.is_initialized() {
        return factor;
    }
    let dtype = base.val().dtype();
    if factor.val().dtype() == dtype {
        factor
    } else {
        Param::from_tensor(factor.val().cast(dtype))
    }
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

/// Puts a new adapter's factors (and `up`'s optional bias) in the dtype of the base weight.
pub(crate) fn match_base_dtype<B: Backend, const D: usize, const E: usize>(
    down: &mut Param<Tensor<B, D>>,
    up: &mut Param<Tensor<B, D>>,
    up_bias: &mut Option<Param<Tensor<B, 1>>>,
    base: &Param<Tensor<B, E>>,
) {
    *down = like_base(down.clone(), base);
    *up = like_base(up.clone(), base);
    *up_bias = up_bias.take().map(|b| like_base(b, base));
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

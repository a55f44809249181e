//! Recognising Burn-flex tensors inside backend-generic code, for the operations this workspace
//! runs with its own kernels or its own backward on the CPU backend (`tracked_conv` here,
//! `cm_models::nn::{silu, geglu}`).
//!
//! Burn 0.21 offers backend extensions only through new trait bounds on the backend type, which
//! would have to be added to every generic model, trainer and example. Instead the tensor
//! primitive is recognised at run time by its type (`std::any::TypeId`, then a `Box<dyn Any>`
//! downcast, so no `unsafe`): a `FlexTensor` (Burn-flex) or the primitive of `Autodiff<Flex, C>`,
//! which is one type whatever the checkpointing strategy `C`. On any other backend nothing
//! changes. `CM_FUSED=burn` in the environment turns every such kernel off (to measure them).

use std::any::{Any, TypeId};
use std::borrow::Cow;

use burn::backend::Autodiff;
use burn::tensor::backend::{Backend, BackendTypes};
use burn_flex::{Flex, FlexTensor};

/// The float primitive of `Autodiff<Flex, C>` (one type for every checkpointing strategy `C`).
pub type FlexAutodiffTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// Whether `B`'s float tensors are Burn-flex tensors (no autodiff).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

/// Whether `B` is `Autodiff<Flex, C>` for some checkpointing strategy `C`.
pub fn is_tracked_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexAutodiffTensor>()
}

/// `value` as type `To`, which must be its own type (checked by [`is_flex`] or
/// [`is_tracked_flex`] first).
///
/// # Panics
/// If `To` is not `From`.
pub fn cast<From: 'static, To: 'static>(value: From) -> To {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed
        .downcast::<To>()
        .unwrap_or_else(|_| panic!("flex::cast: the types differ"))
}

/// `CM_FUSED=burn` in the environment: Burn's own operations everywhere (read once).
pub fn kernels_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("CM_FUSED").is_ok_and(|v| v == "burn"))
}

/// The values of an `f32` Burn-flex tensor in row-major order (copied only when it is a strided
/// view).
///
/// # Panics
/// If the tensor is not `f32`.
pub fn values(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(
            tensor
                .to_contiguous()
                .as_slice::<f32>()
                .expect("an f32 tensor")
                .to_vec(),
        ),
    }
}

/// A pointer into an `f32` buffer that parallel tasks write disjoint parts of (`tiled_conv`'s
/// output rows, `cm_models::nn::packed_attention`'s head columns). Whoever creates one guarantees
/// that the tasks write disjoint elements and that the buffer outlives them.
#[derive(Debug, Clone, Copy)]
pub struct SharedOut(pub *mut f32);

// SAFETY: see the type's contract: disjoint writes into a buffer that outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The address `offset` values into the buffer (a method, so that closures capture the whole
    /// `Send + Sync` wrapper rather than its raw-pointer field).
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;

    #[test]
    fn recognises_flex_with_and_without_autodiff_whatever_the_strategy() {
        assert!(is_flex::<Flex>() && !is_tracked_flex::<Flex>());
        assert!(is_tracked_flex::<Autodiff<Flex>>() && !is_flex::<Autodiff<Flex>>());
        assert!(is_tracked_flex::<Autodiff<Flex, BalancedCheckpointing>>());
    }

    #[test]
    #[should_panic(expected = "flex::cast: the types differ")]
    fn cast_refuses_another_type() {
        let _: u32 = cast(1u64);
    }
}

//! The traversal that reaches every adaptable layer of any Burn module tree.
//!
//! Burn modules are statically typed, so a generic function cannot find "the `Linear` at path
//! `x.y`" and replace it. Instead, [`crate::LoraLinear`] and [`crate::LoraConv2d`] implement
//! `Module` by hand (`module_impl.rs`) and, after visiting / mapping their children, call
//! [`observe`] / [`transform`]. Those hooks do nothing unless a session is open on this thread:
//! [`run_visit`] / [`run_map`] open one holding the operation, walk the module with a visitor /
//! mapper that keeps the current dotted path (skipping enum variant names, as checkpoint paths
//! do), and close it, even on panic. Read-only operations (describe, export) use `visit`;
//! changes (inject, import, switch, merge, unmerge, remove) use `map` and are validated first by
//! the caller, so a change never stops half-way.

use std::cell::RefCell;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::{AdaptableLayer, AdapterMeta, LayerInfo};
use crate::{LoraConfig, LoraWeights, TargetSelector};

/// What a session does at each adaptable layer.
pub(crate) enum Op {
    /// Collect every layer's [`LayerInfo`].
    Describe(Vec<LayerInfo>),
    /// Collect one adapter's factors.
    Export { name: String, weights: LoraWeights },
    /// Add a fresh adapter to the selected layers; freeze everything else.
    Inject {
        name: String,
        config: LoraConfig,
        selector: TargetSelector,
    },
    /// Add an adapter with the given factors to the layers they name; freeze everything else.
    Import {
        name: String,
        config: LoraConfig,
        weights: LoraWeights,
    },
    /// Activate exactly these adapters.
    SetActive(Vec<String>),
    /// Fold an adapter into the base weights.
    Merge(String),
    /// Take a merged adapter back out of the base weights.
    Unmerge(String),
    /// Delete an adapter (unmerging it first if needed).
    Remove(String),
}

impl Op {
    fn freezes(&self) -> bool {
        matches!(self, Op::Inject { .. } | Op::Import { .. })
    }
}

struct Session {
    path: Vec<String>,
    op: Op,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Closes the session when dropped (also when the walk panics).
struct Guard;

impl Guard {
    fn open(op: Op) -> Self {
        SESSION.with(|s| {
            let mut s = s.borrow_mut();
            assert!(s.is_none(), "LoRA operations cannot be nested");
            *s = Some(Session {
                path: Vec::new(),
                op,
            });
        });
        Guard
    }

    fn close(self) -> Op {
        let op = SESSION.with(|s| s.borrow_mut().take().expect("open session").op);
        std::mem::forget(self);
        op
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        SESSION.with(|s| s.borrow_mut().take());
    }
}

fn enter(name: &str, container_type: &str) {
    if !container_type.starts_with("Enum:") {
        SESSION.with(|s| {
            if let Some(s) = s.borrow_mut().as_mut() {
                s.path.push(name.to_string());
            }
        });
    }
}

fn exit(container_type: &str) {
    if !container_type.starts_with("Enum:") {
        SESSION.with(|s| {
            if let Some(s) = s.borrow_mut().as_mut() {
                s.path.pop();
            }
        });
    }
}

struct PathVisitor;

impl<B: Backend> ModuleVisitor<B> for PathVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        exit(container_type);
    }
}

struct PathMapper {
    freeze: bool,
}

impl<B: Backend> ModuleMapper<B> for PathMapper {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        exit(container_type);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.freeze {
            param.set_require_grad(false)
        } else {
            param
        }
    }
}

/// Walks `module` read-only with `op` and returns the op with what it collected.
pub(crate) fn run_visit<B: Backend, M: Module<B>>(module: &M, op: Op) -> Op {
    let guard = Guard::open(op);
    module.visit(&mut PathVisitor);
    guard.close()
}

/// Walks `module` with `op`, changing the layers it applies to.
pub(crate) fn run_map<B: Backend, M: Module<B>>(module: M, op: Op) -> M {
    let freeze = op.freezes();
    let guard = Guard::open(op);
    let module = module.map(&mut PathMapper { freeze });
    guard.close();
    module
}

/// Visit hook of an adaptable layer.
pub(crate) fn observe<B: Backend, L: AdaptableLayer<B>>(layer: &L) {
    SESSION.with(|s| {
        let mut s = s.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        let path = session.path.join(".");
        match &mut session.op {
            Op::Describe(layers) => layers.push(layer.info(path)),
            Op::Export { name, weights } => {
                if let Some(index) = layer.index_of(name) {
                    weights.layers.insert(path, layer.factors(index));
                }
            }
            _ => {}
        }
    });
}

/// Map hook of an adaptable layer.
pub(crate) fn transform<B: Backend, L: AdaptableLayer<B>>(mut layer: L) -> L {
    SESSION.with(|s| {
        let mut s = s.borrow_mut();
        let Some(session) = s.as_mut() else { return };
        let path = session.path.join(".");
        match &session.op {
            Op::Inject {
                name,
                config,
                selector,
            } => {
                if selector.matches(&path) {
                    layer.push_adapter(AdapterMeta::new(name, config), config, None);
                }
            }
            Op::Import {
                name,
                config,
                weights,
            } => {
                if let Some(factors) = weights.layers.get(&path) {
                    let meta = AdapterMeta {
                        rank: factors.rank(),
                        alpha: factors.alpha,
                        bias: factors.up_bias.is_some(),
                        ..AdapterMeta::new(name, config)
                    };
                    layer.push_adapter(meta, config, Some(factors));
                }
            }
            Op::SetActive(names) => {
                for meta in layer.metas_mut() {
                    meta.active = names.contains(&meta.name);
                }
            }
            Op::Merge(name) => {
                if let Some(index) = layer.index_of(name) {
                    if !layer.metas()[index].merged {
                        layer.fold(index, 1.0);
                        layer.metas_mut()[index].merged = true;
                    }
                }
            }
            Op::Unmerge(name) => {
                if let Some(index) = layer.index_of(name) {
                    if layer.metas()[index].merged {
                        layer.fold(index, -1.0);
                        layer.metas_mut()[index].merged = false;
                    }
                }
            }
            Op::Remove(name) => {
                if let Some(index) = layer.index_of(name) {
                    if layer.metas()[index].merged {
                        layer.fold(index, -1.0);
                    }
                    layer.remove_adapter(index);
                }
            }
            Op::Describe(_) | Op::Export { .. } => {}
        }
    });
    layer
}

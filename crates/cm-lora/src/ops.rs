//! The public adapter operations on any Burn module built from adaptable layers: describe,
//! inject, switch, merge / unmerge, remove, export and import.
//!
//! Every changing operation takes `&mut M`, checks everything first (on a read-only walk) and only
//! then changes the module, so an error leaves the module exactly as it was.

use std::collections::BTreeSet;

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::adapter::LayerInfo;
use crate::session::{run_map, run_visit, Op};
use crate::{Factor, LoraConfig, LoraError, LoraWeights, TargetSelector};

/// Every adaptable layer of `module`, in traversal order, with its adapters.
pub fn describe<B: Backend, M: Module<B>>(module: &M) -> Vec<LayerInfo> {
    match run_visit(module, Op::Describe(Vec::new())) {
        Op::Describe(layers) => layers,
        _ => unreachable!("describe returns its layers"),
    }
}

/// The names of all adapters on `module`, sorted.
pub fn adapter_names<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    names_of(&describe(module))
}

fn names_of(layers: &[LayerInfo]) -> Vec<String> {
    let names: BTreeSet<String> = layers
        .iter()
        .flat_map(|l| l.adapters.iter().map(|a| a.name.clone()))
        .collect();
    names.into_iter().collect()
}

/// What an injection did (or, from [`plan`], would do).
#[derive(Debug, Clone, PartialEq)]
pub struct InjectReport {
    /// The adapter name.
    pub adapter: String,
    /// Paths of the layers that received the adapter.
    pub layers: Vec<String>,
    /// Parameters of the new adapter (the only trainable ones after injection).
    pub trainable_params: usize,
    /// Parameters of the model before injection (all frozen after it).
    pub frozen_params: usize,
}

impl std::fmt::Display for InjectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "adapter `{}`: {} layers wrapped, {} trainable parameters ({} frozen)",
            self.adapter,
            self.layers.len(),
            self.trainable_params,
            self.frozen_params
        )
    }
}

fn check_new_name(layers: &[LayerInfo], name: &str) -> Result<(), LoraError> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(LoraError::InvalidConfig(format!(
            "adapter name `{name}` must be non-empty and without spaces"
        )));
    }
    if let Some(layer) = layers
        .iter()
        .find(|l| l.adapters.iter().any(|a| a.name == name))
    {
        return Err(LoraError::DuplicateAdapter {
            name: name.to_string(),
            path: layer.path.clone(),
        });
    }
    Ok(())
}

/// Checks an injection and reports what it would do, without changing (or allocating) anything:
/// works on lazily initialised models, e.g. to count the trainable parameters of an SD1.5 LoRA.
pub fn plan<B: Backend, M: Module<B>>(
    module: &M,
    name: &str,
    config: &LoraConfig,
    selector: &TargetSelector,
) -> Result<InjectReport, LoraError> {
    config.validate()?;
    let layers = describe(module);
    check_new_name(&layers, name)?;
    let selected: Vec<&LayerInfo> = layers
        .iter()
        .filter(|l| selector.matches(&l.path))
        .collect();
    if selected.is_empty() {
        return Err(LoraError::NoMatch {
            selector: selector.to_string(),
            layers: layers.len(),
            example: layers
                .first()
                .map(|l| l.path.clone())
                .unwrap_or_else(|| "(none)".into()),
        });
    }
    if let Some(bad) = selected.iter().find(|l| l.unsupported.is_some()) {
        return Err(LoraError::UnsupportedLayer {
            path: bad.path.clone(),
            reason: bad.unsupported.clone().unwrap_or_default(),
        });
    }
    Ok(InjectReport {
        adapter: name.to_string(),
        layers: selected.iter().map(|l| l.path.clone()).collect(),
        trainable_params: selected
            .iter()
            .map(|l| l.geometry.adapter_params(config.rank, config.bias))
            .sum(),
        frozen_params: module.num_params(),
    })
}

/// Adds a fresh adapter `name` (random `down`, zero `up`: the model's output is unchanged) to
/// every selected layer, activates it, and freezes every other parameter of the module (no
/// gradients, hence no optimizer state), including older adapters.
pub fn inject<B: Backend, M: Module<B>>(
    module: &mut M,
    name: &str,
    config: &LoraConfig,
    selector: &TargetSelector,
) -> Result<InjectReport, LoraError> {
    let report = plan(module, name, config, selector)?;
    change(
        module,
        Op::Inject {
            name: name.to_string(),
            config: *config,
            selector: selector.clone(),
        },
    );
    Ok(report)
}

/// Applies a checked change. Cloning a Burn module is cheap (tensors are shared handles), and it
/// lets the operations take `&mut M`: on error the caller's module is untouched.
fn change<B: Backend, M: Module<B>>(module: &mut M, op: Op) {
    *module = run_map(module.clone(), op);
}

fn check_known(layers: &[LayerInfo], name: &str) -> Result<(), LoraError> {
    let present = names_of(layers);
    if present.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(LoraError::UnknownAdapter {
            name: name.to_string(),
            present,
        })
    }
}

/// Makes exactly `names` active (peft `set_adapter`); the others stay loaded but add nothing.
/// An empty list gives the base model. A merged adapter cannot be switched off: unmerge it first.
pub fn set_active<B: Backend, M: Module<B>>(
    module: &mut M,
    names: &[&str],
) -> Result<(), LoraError> {
    let layers = describe(module);
    for name in names {
        check_known(&layers, name)?;
    }
    let merged_off = layers
        .iter()
        .flat_map(|l| &l.adapters)
        .find(|a| a.merged && !names.contains(&a.name.as_str()));
    if let Some(adapter) = merged_off {
        return Err(LoraError::Merged {
            name: adapter.name.clone(),
            message: "it cannot be deactivated; unmerge it first".into(),
        });
    }
    change(
        module,
        Op::SetActive(names.iter().map(|s| s.to_string()).collect()),
    );
    Ok(())
}

/// Folds adapter `name` into the base weights (`W += scale * up @ down`); the adapter then adds
/// nothing itself, so the output is unchanged up to rounding and the forward pass is as cheap as
/// the base model's. The adapter must be active.
pub fn merge<B: Backend, M: Module<B>>(module: &mut M, name: &str) -> Result<(), LoraError> {
    let layers = describe(module);
    check_known(&layers, name)?;
    for layer in &layers {
        if let Some(adapter) = layer.adapters.iter().find(|a| a.name == name) {
            if !adapter.active {
                return Err(LoraError::InvalidConfig(format!(
                    "adapter `{name}` is inactive; activate it before merging"
                )));
            }
            if adapter.bias && !layer.base_bias {
                return Err(LoraError::UnsupportedLayer {
                    path: layer.path.clone(),
                    reason: format!("adapter `{name}` has a bias but the base layer has none, so it cannot merge"),
                });
            }
        }
    }
    change(module, Op::Merge(name.to_string()));
    Ok(())
}

/// Takes a merged adapter back out of the base weights (`W -= scale * up @ down`).
pub fn unmerge<B: Backend, M: Module<B>>(module: &mut M, name: &str) -> Result<(), LoraError> {
    check_known(&describe(module), name)?;
    change(module, Op::Unmerge(name.to_string()));
    Ok(())
}

/// Deletes adapter `name` from every layer (unmerging it first where merged).
pub fn remove<B: Backend, M: Module<B>>(module: &mut M, name: &str) -> Result<(), LoraError> {
    check_known(&describe(module), name)?;
    change(module, Op::Remove(name.to_string()));
    Ok(())
}

/// Adapter `name`'s factors for every layer it touches, in PyTorch layout.
pub fn export<B: Backend, M: Module<B>>(module: &M, name: &str) -> Result<LoraWeights, LoraError> {
    check_known(&describe(module), name)?;
    match run_visit(
        module,
        Op::Export {
            name: name.to_string(),
            weights: LoraWeights::default(),
        },
    ) {
        Op::Export { weights, .. } => Ok(weights),
        _ => unreachable!("export returns its weights"),
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// The adapter name.
    pub adapter: String,
    /// Layers that received factors.
    pub layers: usize,
    /// Parameters of the adapter.
    pub params: usize,
}

/// Checks `weights` against the model: every layer exists and can take an adapter, every factor
/// has the shape its layer needs, ranks agree, alphas are finite. Errors name the file key.
pub fn check_weights<B: Backend, M: Module<B>>(
    module: &M,
    weights: &LoraWeights,
) -> Result<usize, LoraError> {
    check_weights_against(&describe(module), weights)
}

/// [`check_weights`] against an already collected layer list; returns the adapter's parameters.
fn check_weights_against(layers: &[LayerInfo], weights: &LoraWeights) -> Result<usize, LoraError> {
    if weights.layers.is_empty() {
        return Err(LoraError::Format {
            key: "(file)".into(),
            message: "no LoRA factors found".into(),
        });
    }
    let mut params = 0;
    for (path, factors) in &weights.layers {
        let key = factors.key_or(path);
        let Some(layer) = layers.iter().find(|l| &l.path == path) else {
            let hint = layers
                .iter()
                .find(|l| l.path.ends_with(path.rsplit('.').next().unwrap_or(path)))
                .map(|l| format!(" (a layer of this model: `{}`)", l.path))
                .unwrap_or_default();
            return Err(LoraError::KeyMismatch {
                key: key.to_string(),
                reason: format!(
                    "the model has no adaptable layer `{path}`; is the file for another base model?{hint}"
                ),
            });
        };
        if let Some(reason) = &layer.unsupported {
            return Err(LoraError::UnsupportedLayer {
                path: path.clone(),
                reason: reason.clone(),
            });
        }
        let rank = factors.rank();
        let name = |factor| factors.factor_key(path, factor);
        let expect = |found: &[usize], wanted: Vec<usize>, factor| {
            if found == wanted.as_slice() {
                Ok(())
            } else {
                Err(LoraError::Shape {
                    key: name(factor),
                    found: found.to_vec(),
                    expected: format!(
                        "{wanted:?} for layer `{path}` ({:?}) at rank {rank}",
                        layer.geometry
                    ),
                })
            }
        };
        if rank == 0 {
            return Err(LoraError::Shape {
                key: name(Factor::Down),
                found: factors.down.shape.to_vec(),
                expected: "a rank of at least 1".into(),
            });
        }
        expect(
            &factors.down.shape,
            layer.geometry.down_shape(rank),
            Factor::Down,
        )?;
        expect(&factors.up.shape, layer.geometry.up_shape(rank), Factor::Up)?;
        if let Some(bias) = &factors.up_bias {
            expect(
                &bias.shape,
                vec![layer.geometry.out_features()],
                Factor::UpBias,
            )?;
        }
        let tensors = [
            (Factor::Down, Some(&factors.down)),
            (Factor::Up, Some(&factors.up)),
            (Factor::UpBias, factors.up_bias.as_ref()),
        ];
        for (factor, data) in tensors {
            if let Some(data) = data.filter(|d| !d.dtype.is_float()) {
                return Err(LoraError::Format {
                    key: name(factor),
                    message: format!("expected a float tensor, found {:?}", data.dtype),
                });
            }
        }
        if !factors.alpha.is_finite() {
            return Err(LoraError::Format {
                key: name(Factor::Alpha),
                message: format!("alpha must be finite, found {}", factors.alpha),
            });
        }
        params += layer
            .geometry
            .adapter_params(rank, factors.up_bias.is_some());
    }
    Ok(params)
}

/// Adds adapter `name` with the given factors (from a file) to the layers they name, active, and
/// freezes everything else. Nothing changes unless every key and shape matches the model.
pub fn import<B: Backend, M: Module<B>>(
    module: &mut M,
    name: &str,
    weights: LoraWeights,
) -> Result<ImportReport, LoraError> {
    let layers = describe(module);
    check_new_name(&layers, name)?;
    let params = check_weights_against(&layers, &weights)?;
    let report = ImportReport {
        adapter: name.to_string(),
        layers: weights.layers.len(),
        params,
    };
    change(
        module,
        Op::Import {
            name: name.to_string(),
            config: LoraConfig::new(1, 1.0),
            weights,
        },
    );
    Ok(report)
}

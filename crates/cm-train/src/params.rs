//! Named access to a module's trainable parameters (those that require gradients): their dotted
//! paths, deterministic ids, values, gradients, gradient norms, and the EMA update.
//!
//! Paths are the module paths (`down_blocks.0.attentions.0....to_q.lora.0.down.weight`), built with
//! the visitor's `enter_module` / `exit_module` hooks (enum variant names skipped, as in
//! checkpoint keys). Values are in Burn's layout (`Linear` weights `[in, out]`);
//! [`NamedParam::linear_weight`] says which ones PyTorch stores transposed.
//!
//! Burn's optimizer keys its state by `ParamId`, which is random per process. [`deterministic_ids`]
//! gives every trainable parameter the id `hash(path)`, so a resumed process (same model, same
//! trainable set) finds its optimizer state without any remapping.

use std::collections::{BTreeMap, HashMap};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, TrainError};

/// The current dotted path during a traversal.
#[derive(Debug, Default)]
struct PathStack {
    names: Vec<String>,
    containers: Vec<String>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    fn path(&self, leaf_hint: &str) -> String {
        let parts: Vec<&str> = self
            .names
            .iter()
            .zip(&self.containers)
            .filter(|(_, c)| !c.starts_with("Enum:"))
            .map(|(n, _)| n.as_str())
            .collect();
        if parts.is_empty() {
            leaf_hint.to_string()
        } else {
            parts.join(".")
        }
    }

    /// Whether this is the `weight` field of a `Linear` (the container type passed with the field
    /// is the type that owns it).
    fn is_linear_weight(&self) -> bool {
        self.names.last().is_some_and(|n| n == "weight")
            && self.containers.last().is_some_and(|c| c == "Struct:Linear")
    }
}

/// One trainable parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedParam {
    /// Dotted module path.
    pub path: String,
    /// Its id (what the optimizer and gradients are keyed by).
    pub id: ParamId,
    /// Shape in Burn's layout.
    pub shape: Vec<usize>,
    /// A `Linear` weight (PyTorch stores it transposed).
    pub linear_weight: bool,
}

struct Collect {
    stack: PathStack,
    out: Vec<NamedParam>,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.out.push(NamedParam {
                path: self.stack.path("param"),
                id: param.id,
                shape: value.dims().to_vec(),
                linear_weight: self.stack.is_linear_weight(),
            });
        }
    }
}

/// The trainable parameters of `module`, in traversal order.
pub fn trainable_params<B: AutodiffBackend, M: Module<B>>(module: &M) -> Vec<NamedParam> {
    let mut visitor = Collect {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

/// FNV-1a of a path: the deterministic id of the parameter at that path.
pub fn path_id(path: &str) -> ParamId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ParamId::from(hash)
}

struct AssignIds {
    stack: PathStack,
}

impl<B: Backend> ModuleMapper<B> for AssignIds {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        let id = if value.is_require_grad() {
            path_id(&self.stack.path("param"))
        } else {
            id
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Gives every trainable parameter the id `hash(path)` (see the module docs).
pub fn deterministic_ids<B: AutodiffBackend, M: Module<B>>(module: M) -> M {
    module.map(&mut AssignIds {
        stack: PathStack::default(),
    })
}

/// A parameter of `like`'s shape, device, dtype and `require_grad`, drawn on the host (`draw`
/// per element, from a generator keyed by `(seed, path)`).
fn host_drawn<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    seed: u64,
    path: &str,
    draw: impl Fn(&mut rand::rngs::Xoshiro256PlusPlus) -> f32,
) -> Tensor<B, D> {
    let dims = like.dims();
    let mut rng = crate::draws::generator(seed, &[path_id(path).val()]);
    let values: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| draw(&mut rng))
        .collect();
    Tensor::<B, D>::from_data(TensorData::new(values, dims), &like.device())
        .cast(like.dtype())
        .set_require_grad(like.is_require_grad())
}

/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
fn uniform_fan_in(fan_in: usize) -> impl Fn(&mut rand::rngs::Xoshiro256PlusPlus) -> f32 {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    move |rng| ((rand::RngExt::random::<f64>(rng) * 2.0 - 1.0) * bound) as f32
}

struct UniformInit<'a> {
    stack: PathStack,
    select: &'a dyn Fn(&str) -> bool,
    seed: u64,
    count: usize,
}

impl<B: Backend> ModuleMapper<B> for UniformInit<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.path("param");
        if !(self.select)(&path) {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let dims = value.dims();
        // fan_in: Burn's Linear weight is [in, out]; a conv weight is [out, in, kh, kw].
        let fan_in = if self.stack.is_linear_weight() {
            dims[0]
        } else {
            dims[1..].iter().product()
        };
        let fresh = host_drawn(&value, self.seed, &path, uniform_fan_in(fan_in));
        self.count += 1;
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Re-initialises the parameters whose path `select` accepts with `U(-1/sqrt(fan_in),
/// 1/sqrt(fan_in))` drawn on the host from `(seed, path)`: PyTorch's default `Linear` / `Conv2d`
/// init and peft's `lora_A` init (`kaiming_uniform(a = sqrt(5))`), made independent of the
/// backend's global RNG (which other threads may draw from), so that a run's initial values are a
/// function of its seed. Returns the module and the number of parameters re-initialised.
pub fn reinitialize_uniform<B: Backend, M: Module<B>>(
    module: M,
    select: &dyn Fn(&str) -> bool,
    seed: u64,
) -> (M, usize) {
    let mut mapper = UniformInit {
        stack: PathStack::default(),
        select,
        seed,
        count: 0,
    };
    let module = module.map(&mut mapper);
    let count = mapper.count;
    (module, count)
}

struct HostInit {
    stack: PathStack,
    seed: u64,
    /// `(owner path, fan_in)` of the last `Linear` / `Conv2d` weight (its bias comes next).
    weight_fan_in: Option<(String, usize)>,
    errors: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for HostInit {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.path("param");
        let owner = path.rsplit_once('.').map_or("", |(o, _)| o).to_string();
        let field = self.stack.names.last().cloned().unwrap_or_default();
        let container = self.stack.containers.last().cloned().unwrap_or_default();
        let (id, value, mapper) = param.consume();
        let dims = value.dims();
        let fresh = match (container.as_str(), field.as_str()) {
            ("Struct:Linear" | "Struct:Conv2d", "weight") => {
                // Burn's Linear weight is [in, out]; a conv weight is [out, in / groups, kh, kw].
                let fan_in = if container == "Struct:Linear" {
                    dims[0]
                } else {
                    dims[1..].iter().product()
                };
                self.weight_fan_in = Some((owner, fan_in));
                host_drawn(&value, self.seed, &path, uniform_fan_in(fan_in))
            }
            ("Struct:Linear" | "Struct:Conv2d", "bias") => match &self.weight_fan_in {
                Some((weight_owner, fan_in)) if *weight_owner == owner => {
                    host_drawn(&value, self.seed, &path, uniform_fan_in(*fan_in))
                }
                _ => {
                    self.errors
                        .push(format!("{path}: a bias met before its layer's weight"));
                    value
                }
            },
            ("Struct:Embedding", "weight") => host_drawn(&value, self.seed, &path, |rng| {
                rand_distr::Distribution::<f32>::sample(&rand_distr::StandardNormal, rng)
            }),
            _ => {
                let values: Vec<f32> = value
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32 values");
                if values.iter().any(|v| v.to_bits() != values[0].to_bits()) {
                    self.errors.push(format!(
                        "{path} ({container}): randomly initialised, but not a Linear, Conv2d or \
                         Embedding parameter, so its distribution is unknown"
                    ));
                }
                value
            }
        };
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Draws every randomly initialised parameter of a freshly built module again, on the host, from
/// `(seed, path)`, with the distribution of Burn's default initialiser for it: `Linear` and
/// `Conv2d` weights and biases `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (Burn's `KaimingUniform` with
/// gain `1/sqrt(3)`, which is also PyTorch's default), `Embedding` weights `N(0, 1)`. Every other
/// parameter must hold a constant (norm scales and shifts) and is kept. So a model trained from
/// scratch starts from a function of its seed, whatever else draws from the backend's global RNG
/// meanwhile (other threads, other tests of one binary). A randomly initialised parameter of any
/// other kind is an error naming it.
pub fn initialize_on_host<B: Backend, M: Module<B>>(module: M, seed: u64) -> Result<M> {
    let mut mapper = HostInit {
        stack: PathStack::default(),
        seed,
        weight_fan_in: None,
        errors: Vec::new(),
    };
    let module = module.map(&mut mapper);
    if mapper.errors.is_empty() {
        Ok(module)
    } else {
        Err(TrainError::Invalid(format!(
            "cannot initialise on the host: {}",
            mapper.errors.join("; ")
        )))
    }
}

struct Values<'a> {
    stack: PathStack,
    wanted: &'a HashMap<ParamId, String>,
    out: BTreeMap<String, TensorData>,
}

impl<B: Backend> ModuleVisitor<B> for Values<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(path) = self.wanted.get(&param.id) {
            self.out.insert(path.clone(), param.val().into_data());
        }
    }
}

/// The values (Burn layout, the parameter's dtype) of the parameters `params` in `module` (which
/// may be the student or a copy with the same ids, e.g. its EMA on the inner backend).
pub fn values_of<B: Backend, M: Module<B>>(
    module: &M,
    params: &[NamedParam],
) -> BTreeMap<String, TensorData> {
    let wanted = params.iter().map(|p| (p.id, p.path.clone())).collect();
    let mut visitor = Values {
        stack: PathStack::default(),
        wanted: &wanted,
        out: BTreeMap::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct Load<'a> {
    by_id: &'a HashMap<ParamId, (String, TensorData)>,
    errors: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Load<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((path, data)) = self.by_id.get(&param.id) else {
            return param;
        };
        let (id, value, mapper) = param.consume();
        if data.shape.to_vec() != value.dims().to_vec() {
            self.errors.push(format!(
                "`{path}` has shape {:?} in the file, the model has {:?}",
                data.shape.to_vec(),
                value.dims()
            ));
            return Param::from_mapped_value(id, value, mapper);
        }
        let require_grad = value.is_require_grad();
        let loaded = Tensor::<B, D>::from_data(data.clone(), &value.device())
            .cast(value.dtype())
            .set_require_grad(require_grad);
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Writes `values` (by path) into the parameters `params` of `module`. Every parameter must have a
/// value of its shape and every value a parameter: otherwise nothing changes and the error lists
/// each mismatch (a checkpoint of another model or LoRA rank). `origin` names the file.
pub fn load_values<B: Backend, M: Module<B>>(
    module: M,
    params: &[NamedParam],
    values: &BTreeMap<String, TensorData>,
    origin: &std::path::Path,
) -> Result<M> {
    let mut problems = Vec::new();
    let known: HashMap<&str, &NamedParam> = params.iter().map(|p| (p.path.as_str(), p)).collect();
    for p in params {
        match values.get(&p.path) {
            None => problems.push(format!("`{}` (shape {:?}) is missing", p.path, p.shape)),
            Some(v) if v.shape.to_vec() != p.shape => problems.push(format!(
                "`{}` has shape {:?}, the model has {:?}",
                p.path,
                v.shape.to_vec(),
                p.shape
            )),
            _ => {}
        }
    }
    for key in values.keys() {
        if !known.contains_key(key.as_str()) {
            problems.push(format!(
                "`{key}` is not a trainable parameter of this model"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(TrainError::Checkpoint {
            path: origin.to_path_buf(),
            message: format!(
                "does not fit this model ({} problem(s)): {}",
                problems.len(),
                problems.join("; ")
            ),
        });
    }
    let by_id: HashMap<ParamId, (String, TensorData)> = params
        .iter()
        .map(|p| (p.id, (p.path.clone(), values[&p.path].clone())))
        .collect();
    let mut mapper = Load {
        by_id: &by_id,
        errors: Vec::new(),
    };
    let module = module.map(&mut mapper);
    if !mapper.errors.is_empty() {
        return Err(TrainError::Checkpoint {
            path: origin.to_path_buf(),
            message: mapper.errors.join("; "),
        });
    }
    Ok(module)
}

struct GradVisitor<'a, B: AutodiffBackend, F: FnMut(&ParamId, Tensor<B::InnerBackend, 1>, &[usize])>
{
    grads: &'a GradientsParams,
    f: F,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, F: FnMut(&ParamId, Tensor<B::InnerBackend, 1>, &[usize])> ModuleVisitor<B>
    for GradVisitor<'_, B, F>
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let dims = g.dims();
            (self.f)(&param.id, g.reshape([-1]), &dims);
        }
    }
}

fn each_grad<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    f: impl FnMut(&ParamId, Tensor<B::InnerBackend, 1>, &[usize]),
) {
    module.visit(&mut GradVisitor::<B, _> {
        grads,
        f,
        _b: std::marker::PhantomData,
    });
}

/// The gradients of the trainable parameters, by path (Burn layout).
pub fn gradients_by_path<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    params: &[NamedParam],
    grads: &GradientsParams,
) -> BTreeMap<String, TensorData> {
    let paths: HashMap<ParamId, &str> = params.iter().map(|p| (p.id, p.path.as_str())).collect();
    let mut out = BTreeMap::new();
    each_grad(module, grads, |id, g, dims| {
        if let Some(path) = paths.get(id) {
            let mut data = g.into_data();
            data.shape = dims.to_vec().into();
            out.insert(path.to_string(), data);
        }
    });
    out
}

/// The global L2 norm of all gradients (one device scalar; read it with `into_scalar`).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
    each_grad(module, grads, |_, g, _| {
        let sq = g.powi_scalar(2).sum();
        total = Some(match total.take() {
            Some(t) => t + sq,
            None => sq,
        });
    });
    total.map(|t| t.sqrt())
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Multiplies every gradient by `factor` (averaging accumulated micro-batches, global-norm
/// clipping).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    });
}

struct EmaVisitor<'a, B: AutodiffBackend> {
    wanted: &'a HashMap<ParamId, ()>,
    out: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for EmaVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.wanted.contains_key(&param.id) {
            self.out.insert(param.id, param.val().inner().reshape([-1]));
        }
    }
}

struct EmaMapper<B: Backend> {
    online: HashMap<ParamId, Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for EmaMapper<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(online) = self.online.remove(&param.id) else {
            return param;
        };
        let (id, ema, mapper) = param.consume();
        let online = online.reshape(ema.dims()).cast(ema.dtype());
        let updated = ema * self.decay + online * (1.0 - self.decay);
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// `ema = decay * ema + (1 - decay) * online` for the trainable parameters (matched by id; the
/// EMA copy is the student's `valid()` module, so ids agree).
pub fn ema_update<B: AutodiffBackend, M: AutodiffModule<B>>(
    ema: M::InnerModule,
    online: &M,
    params: &[NamedParam],
    decay: f64,
) -> M::InnerModule {
    let wanted = params.iter().map(|p| (p.id, ())).collect();
    let mut visitor = EmaVisitor::<B> {
        wanted: &wanted,
        out: HashMap::new(),
    };
    online.visit(&mut visitor);
    ema.map(&mut EmaMapper {
        online: visitor.out,
        decay,
    })
}

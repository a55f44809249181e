//! Loading diffusers / transformers safetensors files into Burn modules, through `burn-store`.
//!
//! Our module field names equal the PyTorch attribute names, so a file key and a Burn parameter
//! path differ only by (a) a per-component prefix or a few renamed keys, handled by the regex remap
//! table that each component's loader passes in, and (b) Burn's own conventions, handled by
//! `burn-store`'s `PyTorchToBurnAdapter` (Linear weights transposed `[out, in] -> [in, out]`, norm
//! `weight`/`bias` -> `gamma`/`beta`). Every float tensor is cast on load to the requested dtype,
//! so fp16 / bf16 files load into f32 modules (or the reverse).
//!
//! A load is all-or-nothing: a missing tensor, a mis-shaped tensor, or (unless allowed) a tensor of
//! the file that no parameter takes is an error naming the file, the key and both shapes, and the
//! partially written module is dropped. Successful loads return a [`LoadReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore, SafetensorsStoreError, TensorSnapshot,
};
use regex::Regex;

use crate::error::{ModelError, Result};
use cm_io::SafetensorsHeader;

/// How to read one safetensors file into one module.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `(regex, replacement)` pairs applied in order to every file key before matching it to a
    /// Burn parameter path (e.g. `("^text_model\\.", "")`).
    pub remap: Vec<(String, String)>,
    /// Regexes of file keys that are expected and deliberately not loaded (e.g. `position_ids`).
    pub ignore: Vec<String>,
    /// Float dtype the parameters get, whatever the file stores.
    pub dtype: DType,
    /// Accept file tensors that no parameter takes (listed in the report) instead of failing.
    pub allow_unused: bool,
    /// Regexes of parameter keys (file naming) that may be absent from the file: they keep their
    /// fresh initialisation and are listed in [`LoadReport::fresh`] (diffusers' `strict=False`
    /// for exactly those modules, e.g. a student's new `cond_proj`).
    pub fresh: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            remap: Vec::new(),
            ignore: Vec::new(),
            dtype: DType::F32,
            allow_unused: false,
            fresh: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// Adds a key remapping rule.
    pub fn remap(mut self, from: &str, to: &str) -> Self {
        self.remap.push((from.to_string(), to.to_string()));
        self
    }

    /// Adds a pattern of file keys to ignore.
    pub fn ignore(mut self, pattern: &str) -> Self {
        self.ignore.push(pattern.to_string());
        self
    }

    /// Sets the float dtype the parameters get.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Lets parameters matching `pattern` be absent (freshly initialised, reported).
    pub fn fresh(mut self, pattern: &str) -> Self {
        self.fresh.push(pattern.to_string());
        self
    }

    /// Accepts (and reports) unused tensors.
    pub fn allow_unused(mut self, allow: bool) -> Self {
        self.allow_unused = allow;
        self
    }
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The file that was read.
    pub path: PathBuf,
    /// Number of parameters written.
    pub applied: usize,
    /// Dtypes found in the file, with tensor counts.
    pub file_dtypes: BTreeMap<String, usize>,
    /// The dtype every float parameter now has.
    pub dtype: DType,
    /// File keys matched by an `ignore` pattern.
    pub ignored: Vec<String>,
    /// File keys that no parameter took (only non-empty with `allow_unused`).
    pub unused: Vec<String>,
    /// Parameters the file does not have that kept their fresh initialisation (see
    /// [`LoadOptions::fresh`]).
    pub fresh: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dtypes: Vec<String> = self
            .file_dtypes
            .iter()
            .map(|(d, n)| format!("{n} {d}"))
            .collect();
        write!(
            f,
            "{}: {} tensors loaded (file: {}; as {:?}), {} ignored, {} unused",
            self.path.display(),
            self.applied,
            dtypes.join(", "),
            self.dtype,
            self.ignored.len(),
            self.unused.len()
        )?;
        if !self.fresh.is_empty() {
            write!(f, ", freshly initialised: {}", self.fresh.join(", "))?;
        }
        Ok(())
    }
}

/// Casts every float tensor to one dtype as it is read.
#[derive(Debug, Clone)]
pub struct CastFloatsAdapter {
    dtype: DType,
}

impl CastFloatsAdapter {
    /// An adapter casting float tensors to `dtype`.
    pub fn new(dtype: DType) -> Self {
        Self { dtype }
    }
}

impl ModuleAdapter for CastFloatsAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if !snapshot.dtype.is_float() || snapshot.dtype == self.dtype {
            return snapshot.clone();
        }
        let read = snapshot.clone_data_fn();
        let dtype = self.dtype;
        TensorSnapshot::from_closure(
            Rc::new(move || Ok(read()?.convert_dtype(dtype))),
            dtype,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Reshapes 1x1-convolution weights `[out, in, 1, 1]` aimed at a `Linear` to `[out, in]` (old
/// checkpoints store attention projections as 1x1 convolutions). Runs before the PyTorch adapter,
/// which then transposes them like any Linear weight.
#[derive(Debug, Clone, Default)]
pub struct Conv1x1ToLinearAdapter;

impl ModuleAdapter for Conv1x1ToLinearAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let dims = snapshot.shape.to_vec();
        let is_linear_weight = snapshot.container_type() == "Struct:Linear"
            && snapshot
                .path_stack
                .as_ref()
                .and_then(|p| p.last())
                .is_some_and(|n| n == "weight");
        if !is_linear_weight || dims.len() != 4 || dims[2] != 1 || dims[3] != 1 {
            return snapshot.clone();
        }
        let read = snapshot.clone_data_fn();
        let shape = [dims[0], dims[1]];
        TensorSnapshot::from_closure(
            Rc::new(move || {
                let mut data = read()?;
                data.shape = shape.into();
                Ok(data)
            }),
            snapshot.dtype,
            shape.into(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// One parameter of a module as seen before loading: its shape in Burn and in PyTorch layout.
struct ParamInfo {
    is_linear_weight: bool,
    burn_shape: Vec<usize>,
    torch_shape: Vec<usize>,
    torch_key: String,
}

/// The parameters of `module`, keyed by Burn path, with their PyTorch names and shapes.
fn parameter_table<B: Backend, M: Module<B> + ModuleSnapshot<B>>(
    module: &M,
) -> BTreeMap<String, ParamInfo> {
    let mut table = BTreeMap::new();
    // Enum variant names (e.g. `FeedForwardLayer::Linear`) are not part of checkpoint keys.
    for snapshot in module.collect(None, None, true) {
        let path = snapshot.full_path();
        let container = snapshot.container_type();
        let burn_shape = snapshot.shape.to_vec();
        let is_linear_weight = container == "Struct:Linear" && path.ends_with(".weight");
        let torch_shape = if is_linear_weight && burn_shape.len() == 2 {
            vec![burn_shape[1], burn_shape[0]]
        } else {
            burn_shape.clone()
        };
        let is_norm = container.ends_with("Norm");
        let torch_key = if is_norm {
            rename_suffix(&path, ".gamma", ".weight")
                .or_else(|| rename_suffix(&path, ".beta", ".bias"))
                .unwrap_or_else(|| path.clone())
        } else {
            path.clone()
        };
        table.insert(
            path,
            ParamInfo {
                is_linear_weight,
                burn_shape,
                torch_shape,
                torch_key,
            },
        );
    }
    table
}

fn rename_suffix(path: &str, from: &str, to: &str) -> Option<String> {
    path.strip_suffix(from).map(|stem| format!("{stem}{to}"))
}

fn compile(patterns: &[String], what: &str) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p)
                .map_err(|e| ModelError::InvalidInput(format!("invalid {what} regex `{p}`: {e}")))
        })
        .collect()
}

fn store_error(path: &Path, err: SafetensorsStoreError) -> ModelError {
    match err {
        SafetensorsStoreError::Io(e) => ModelError::io(path, e),
        other => ModelError::CorruptWeights {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// The file's tensors under their remapped keys: mapped key -> (original key, shape, dtype).
fn file_table(
    header: &SafetensorsHeader,
    remap: &[Regex],
    replacements: &[String],
) -> BTreeMap<String, (String, Vec<usize>, String)> {
    let mut table = BTreeMap::new();
    for (key, entry) in &header.tensors {
        let mut mapped = key.clone();
        for (re, to) in remap.iter().zip(replacements) {
            mapped = re.replace(&mapped, to.as_str()).into_owned();
        }
        table.insert(
            mapped,
            (key.clone(), entry.shape.clone(), entry.dtype.clone()),
        );
    }
    table
}

/// Loads `path` into `module`. See the module docs for the rules.
pub fn load_safetensors<B, M>(
    mut module: M,
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<(M, LoadReport)>
where
    B: Backend,
    M: Module<B> + ModuleSnapshot<B>,
{
    let path = path.as_ref();
    let remap = compile(
        &options
            .remap
            .iter()
            .map(|(f, _)| f.clone())
            .collect::<Vec<_>>(),
        "remap",
    )?;
    let replacements: Vec<String> = options.remap.iter().map(|(_, t)| t.clone()).collect();
    let ignore = compile(&options.ignore, "ignore")?;
    let fresh_patterns = compile(&options.fresh, "fresh")?;
    let mut fresh = Vec::new();

    // 1. Read the file's header: a missing, truncated or corrupt file fails here, before any write.
    let header = SafetensorsHeader::read(path)?;
    let file = file_table(&header, &remap, &replacements);
    let params = parameter_table::<B, M>(&module);

    // 2. Check names and shapes ourselves, in PyTorch layout, so messages show the file's view.
    let mut errors = Vec::new();
    let mut ignored = Vec::new();
    let mut taken = BTreeSet::new();
    for (burn_path, info) in &params {
        match file.get(&info.torch_key) {
            Some((original_key, shape, dtype)) => {
                taken.insert(info.torch_key.clone());
                // Integer or boolean data where a float weight belongs would be reinterpreted
                // by the tensor library (and has crashed it): refuse it by name.
                if !matches!(dtype.as_str(), "F16" | "BF16" | "F32" | "F64") {
                    errors.push(ModelError::BadTensor {
                        path: path.to_path_buf(),
                        key: original_key.clone(),
                        message: format!(
                            "dtype {dtype}, but model parameter `{burn_path}` is a float weight (F32, F16, BF16 or F64 expected)"
                        ),
                    });
                    continue;
                }
                let conv_1x1_for_linear = info.is_linear_weight
                    && shape.len() == 4
                    && shape[2..] == [1, 1]
                    && shape[..2] == info.torch_shape[..];
                if *shape != info.torch_shape && !conv_1x1_for_linear {
                    errors.push(ModelError::ShapeMismatch {
                        path: path.to_path_buf(),
                        key: original_key.clone(),
                        expected: info.torch_shape.clone(),
                        found: shape.clone(),
                    });
                }
            }
            None if fresh_patterns.iter().any(|re| re.is_match(&info.torch_key)) => {
                fresh.push(info.torch_key.clone())
            }
            None => errors.push(ModelError::MissingKey {
                path: path.to_path_buf(),
                key: info.torch_key.clone(),
                param: burn_path.clone(),
                expected: info.torch_shape.clone(),
                hint: did_you_mean(&info.torch_key, file.keys()),
            }),
        }
    }
    let mut unused = Vec::new();
    for (mapped, (original, _, _)) in &file {
        if taken.contains(mapped) {
            continue;
        }
        if ignore
            .iter()
            .any(|re| re.is_match(original) || re.is_match(mapped))
        {
            ignored.push(original.clone());
        } else {
            unused.push(original.clone());
        }
    }
    if !options.allow_unused {
        for key in &unused {
            errors.push(ModelError::InvalidInput(format!(
                "{}: tensor `{key}` is not a parameter of this model (wrong model or wrong config?)",
                path.display()
            )));
        }
    }
    if !errors.is_empty() {
        return Err(if errors.len() == 1 {
            errors.remove(0)
        } else {
            ModelError::Load {
                path: path.to_path_buf(),
                count: errors.len(),
                errors,
            }
        });
    }

    // 3. Apply through burn-store (transpose Linear, rename norm params, cast floats).
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(
            Conv1x1ToLinearAdapter
                .chain(PyTorchToBurnAdapter)
                .chain(CastFloatsAdapter::new(options.dtype)),
        )
        .validate(false)
        .allow_partial(true)
        .skip_enum_variants(true);
    for (from, to) in &options.remap {
        store = store.with_key_remapping(from, to.clone());
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| store_error(path, e))?;

    // 4. Whatever burn-store still reports is a bug in the checks above or a data error: fail.
    let mut late = Vec::new();
    for err in &result.errors {
        late.push(match err {
            ApplyError::ShapeMismatch {
                path: p,
                expected,
                found,
            } => ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                key: p.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => ModelError::BadTensor {
                path: path.to_path_buf(),
                key: other.to_string(),
                message: "could not be read".into(),
            },
        });
    }
    for (missing, _) in &result.missing {
        let fresh_param = params
            .get(missing)
            .is_some_and(|p| fresh.contains(&p.torch_key));
        if fresh_param {
            continue;
        }
        let expected = params
            .get(missing)
            .map(|p| p.burn_shape.clone())
            .unwrap_or_default();
        late.push(ModelError::MissingKey {
            path: path.to_path_buf(),
            key: missing.clone(),
            param: missing.clone(),
            expected,
            hint: String::new(),
        });
    }
    if !late.is_empty() {
        return Err(ModelError::Load {
            path: path.to_path_buf(),
            count: late.len(),
            errors: late,
        });
    }

    // 5. NaN / Inf weights would only show as a black image much later: name the first one.
    if let Some(param) = first_non_finite(&module) {
        let key = params
            .get(&param)
            .map(|p| p.torch_key.clone())
            .unwrap_or(param);
        return Err(ModelError::BadTensor {
            path: path.to_path_buf(),
            key,
            message: "holds NaN or Inf values".into(),
        });
    }

    let mut file_dtypes = BTreeMap::new();
    for (_, _, dtype) in file.values() {
        *file_dtypes.entry(dtype.clone()).or_insert(0) += 1;
    }
    let report = LoadReport {
        path: path.to_path_buf(),
        applied: result.applied.len(),
        file_dtypes,
        dtype: options.dtype,
        ignored,
        unused,
        fresh,
    };
    Ok((module, report))
}

/// A "did you mean" hint: the file key sharing the longest suffix of path segments with `key`.
fn did_you_mean<'a>(key: &str, candidates: impl Iterator<Item = &'a String>) -> String {
    let wanted: Vec<&str> = key.split('.').rev().collect();
    let mut best: Option<(&str, usize)> = None;
    for candidate in candidates {
        let common = candidate
            .split('.')
            .rev()
            .zip(&wanted)
            .take_while(|(a, b)| a == *b)
            .count();
        if common >= 2 && best.is_none_or(|(_, n)| common > n) {
            best = Some((candidate, common));
        }
    }
    match best {
        Some((candidate, _)) => {
            format!("; the file has `{candidate}`: is a key prefix or remap rule missing?")
        }
        None => String::new(),
    }
}

/// Every parameter of `module` in PyTorch's keys and layout (the inverse of [`load_safetensors`]
/// without a remap table): `Linear` weights transposed to `[out, in]`, norm `gamma` / `beta` named
/// `weight` / `bias`, enum variants left out of the keys. Write it with `cm_io::write_tensors`.
pub fn export_tensors<B, M>(module: &M) -> Result<BTreeMap<String, burn::tensor::TensorData>>
where
    B: Backend,
    M: Module<B> + ModuleSnapshot<B>,
{
    let mut out = BTreeMap::new();
    for snapshot in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let key = snapshot.full_path();
        let data = snapshot.to_data().map_err(|e| ModelError::BadTensor {
            path: PathBuf::from("<export>"),
            key: key.clone(),
            message: format!("{e:?}"),
        })?;
        out.insert(key, data);
    }
    Ok(out)
}

struct NonFinite<B: Backend> {
    stack: Vec<(String, String)>,
    count: Option<burn::tensor::Tensor<B, 1, burn::tensor::Int>>,
    find: bool,
    found: Option<String>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for NonFinite<B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.push((name.to_string(), container.to_string()));
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) {
        use burn::tensor::ElementConversion;
        if self.found.is_some() {
            return;
        }
        let bad = param.val().is_finite().bool_not().int().sum();
        if self.find {
            if bad.into_scalar().elem::<i64>() > 0 {
                let path: Vec<&str> = self
                    .stack
                    .iter()
                    .filter(|(_, c)| !c.starts_with("Enum:"))
                    .map(|(n, _)| n.as_str())
                    .collect();
                self.found = Some(path.join("."));
            }
        } else {
            self.count = Some(match self.count.take() {
                Some(c) => c + bad,
                None => bad,
            });
        }
    }
}

/// The path of the first parameter of `module` holding NaN or Inf (Burn path), if any. Costs one
/// pass over the weights and one device read (a second pass only when something is found).
pub fn first_non_finite<B: Backend, M: Module<B>>(module: &M) -> Option<String> {
    use burn::tensor::ElementConversion;
    let mut visitor = NonFinite::<B> {
        stack: Vec::new(),
        count: None,
        find: false,
        found: None,
    };
    module.visit(&mut visitor);
    let total: i64 = visitor.count?.into_scalar().elem();
    if total == 0 {
        return None;
    }
    let mut visitor = NonFinite::<B> {
        stack: Vec::new(),
        count: None,
        find: true,
        found: None,
    };
    module.visit(&mut visitor);
    visitor.found.or_else(|| Some("(unknown parameter)".into()))
}

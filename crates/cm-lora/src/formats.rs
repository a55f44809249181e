//! The two LoRA file layouts diffusers reads, as key mappings over [`LoraWeights`] (the
//! safetensors reading and writing is `cm_models::lora_file`).
//!
//! * **peft / diffusers** (`pipe.save_lora_weights`): `unet.<module path>.lora_A.weight`
//!   (down), `.lora_B.weight` (up), `.lora_B.bias` (optional). Alphas are not in the tensors:
//!   diffusers reads them from the safetensors metadata entry `lora_adapter_metadata`, a JSON
//!   object of peft `LoraConfig` fields prefixed with `unet.` (`unet.r`, `unet.lora_alpha`,
//!   `unet.rank_pattern`, `unet.alpha_pattern`, `unet.target_modules`); without it, alpha = rank.
//!   We never write peft's `base_model.model.` prefix (diffusers' SD1.5 loader rejects it), but
//!   read it.
//! * **kohya** (sd-scripts): `lora_unet_<module path with '.' -> '_'>.lora_down.weight`,
//!   `.lora_up.weight` and a scalar `.alpha` (missing alpha = rank). Underscores are ambiguous
//!   (`to_q` vs `to.q`), so reading needs the model's layer paths.

use std::collections::BTreeMap;

use burn::tensor::{DType, TensorData};
use serde_json::{json, Map, Value};

use crate::{LayerFactors, LoraError, LoraWeights};

/// Safetensors metadata entry that holds the adapter config (diffusers' `LORA_ADAPTER_METADATA_KEY`).
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// Prefix of UNet keys in diffusers LoRA files.
pub const UNET_PREFIX: &str = "unet.";

/// Prefix that peft's own `save_pretrained` writes and diffusers' SD1.5 loader rejects.
pub const PEFT_MODEL_PREFIX: &str = "base_model.model.";

/// Prefix of UNet keys in kohya files.
pub const KOHYA_UNET_PREFIX: &str = "lora_unet_";

/// A LoRA file layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// peft / diffusers keys, alpha in the metadata.
    Peft,
    /// kohya sd-scripts keys, alpha as tensors.
    Kohya,
}

impl std::str::FromStr for LoraFormat {
    type Err = LoraError;
    fn from_str(s: &str) -> Result<Self, LoraError> {
        match s {
            "peft" | "diffusers" => Ok(Self::Peft),
            "kohya" => Ok(Self::Kohya),
            other => Err(LoraError::InvalidConfig(format!(
                "unknown LoRA format `{other}`; expected `peft` (alias `diffusers`) or `kohya`"
            ))),
        }
    }
}

impl LoraFormat {
    /// Recognises the layout from the keys of a file.
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<Self, LoraError> {
        let mut first = None;
        for key in keys {
            if key.starts_with("lora_unet_") || key.starts_with("lora_te") {
                return Ok(Self::Kohya);
            }
            if key.contains(".lora_A.") || key.contains(".lora_B.") {
                return Ok(Self::Peft);
            }
            first.get_or_insert_with(|| key.clone());
        }
        Err(LoraError::Format {
            key: first.unwrap_or_else(|| "(no tensors)".into()),
            message: "neither peft/diffusers (`*.lora_A.weight`) nor kohya (`lora_unet_*.lora_down.weight`) keys".into(),
        })
    }
}

/// The float dtypes a LoRA file can be written in.
fn check_float_dtype(dtype: DType) -> Result<(), LoraError> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(LoraError::InvalidConfig(format!(
            "LoRA files are written as F32, F16 or BF16, not {other:?}"
        ))),
    }
}

fn cast(data: &TensorData, dtype: DType) -> TensorData {
    if data.dtype == dtype {
        data.clone()
    } else {
        data.clone().convert_dtype(dtype)
    }
}

fn common_value<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map(|(v, _)| v)
}

fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Tensors by file key.
pub type Tensors = BTreeMap<String, TensorData>;

/// The safetensors `__metadata__` map.
pub type Metadata = BTreeMap<String, String>;

/// peft / diffusers tensors and metadata for `weights`, in `dtype`.
pub fn to_peft(weights: &LoraWeights, dtype: DType) -> Result<(Tensors, Metadata), LoraError> {
    check_float_dtype(dtype)?;
    let mut tensors = BTreeMap::new();
    for (path, f) in &weights.layers {
        tensors.insert(
            format!("{UNET_PREFIX}{path}.lora_A.weight"),
            cast(&f.down, dtype),
        );
        tensors.insert(
            format!("{UNET_PREFIX}{path}.lora_B.weight"),
            cast(&f.up, dtype),
        );
        if let Some(bias) = &f.up_bias {
            tensors.insert(
                format!("{UNET_PREFIX}{path}.lora_B.bias"),
                cast(bias, dtype),
            );
        }
    }
    let rank = common_value(weights.layers.values().map(|f| f.rank())).unwrap_or(1);
    let alpha = common_value(weights.layers.values().map(|f| f.alpha)).unwrap_or(rank as f64);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (path, f) in &weights.layers {
        if f.rank() != rank {
            rank_pattern.insert(path.clone(), json!(f.rank()));
        }
        if f.alpha != alpha {
            alpha_pattern.insert(path.clone(), json_number(f.alpha));
        }
    }
    let config = json!({
        "unet.r": rank,
        "unet.lora_alpha": json_number(alpha),
        "unet.rank_pattern": rank_pattern,
        "unet.alpha_pattern": alpha_pattern,
        "unet.target_modules": weights.layers.keys().collect::<Vec<_>>(),
        "unet.lora_bias": weights.layers.values().any(|f| f.up_bias.is_some()),
    });
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert(
        ADAPTER_METADATA_KEY.to_string(),
        serde_json::to_string_pretty(&config).expect("serialisable metadata"),
    );
    Ok((tensors, metadata))
}

/// The alpha peft would use for `path`: the first `alpha_pattern` key whose regex matches the end
/// of the path at a `.` boundary (peft's `(.*\.)?key$` rule), else `lora_alpha`, else the rank.
fn peft_alpha(
    path: &str,
    rank: usize,
    lora_alpha: Option<f64>,
    alpha_pattern: &[(regex::Regex, f64)],
) -> f64 {
    alpha_pattern
        .iter()
        .find(|(re, _)| re.is_match(path))
        .map(|(_, a)| *a)
        .or(lora_alpha)
        .unwrap_or(rank as f64)
}

fn metadata_config(
    metadata: &BTreeMap<String, String>,
) -> Result<Option<Map<String, Value>>, LoraError> {
    let Some(raw) = metadata.get(ADAPTER_METADATA_KEY) else {
        return Ok(None);
    };
    let bad = |message: String| LoraError::Format {
        key: format!("__metadata__.{ADAPTER_METADATA_KEY}"),
        message,
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(bad(format!("expected a JSON object, found {other}"))),
        Err(e) => Err(bad(format!("not valid JSON: {e}"))),
    }
}

/// [`LoraWeights`] from peft / diffusers tensors (UNet keys only) and the file's metadata.
pub fn from_peft(
    tensors: BTreeMap<String, TensorData>,
    metadata: &BTreeMap<String, String>,
) -> Result<LoraWeights, LoraError> {
    // 1. Alphas from the adapter metadata, as diffusers reads them.
    let config = metadata_config(metadata)?;
    let field = |name: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(&format!("{UNET_PREFIX}{name}")))
    };
    let lora_alpha = match field("lora_alpha") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| LoraError::Format {
            key: format!("__metadata__.{ADAPTER_METADATA_KEY}.unet.lora_alpha"),
            message: format!("expected a number, found {v}"),
        })?),
    };
    let flag = |name: &str| matches!(field(name), Some(Value::Bool(true)));
    if flag("use_dora") {
        return Err(LoraError::Format {
            key: format!("__metadata__.{ADAPTER_METADATA_KEY}.unet.use_dora"),
            message: "DoRA adapters are not supported".into(),
        });
    }
    // rsLoRA scales by alpha / sqrt(r); we scale by alpha / r, so alpha becomes alpha * sqrt(r).
    let rslora = flag("use_rslora");
    let mut alpha_pattern = Vec::new();
    if let Some(Value::Object(patterns)) = field("alpha_pattern") {
        for (key, value) in patterns {
            let bad = |message: String| LoraError::Format {
                key: format!("__metadata__.{ADAPTER_METADATA_KEY}.unet.alpha_pattern.{key}"),
                message,
            };
            let alpha = value
                .as_f64()
                .ok_or_else(|| bad(format!("expected a number, found {value}")))?;
            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| bad(format!("bad pattern: {e}")))?;
            alpha_pattern.push((re, alpha));
        }
    }

    // 2. Group the factor tensors by module path.
    let mut groups = BTreeMap::new();
    for (key, data) in tensors {
        let rest = if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
            rest
        } else if let Some(rest) = key.strip_prefix(PEFT_MODEL_PREFIX) {
            rest
        } else if key.starts_with("text_encoder") {
            return Err(LoraError::KeyMismatch {
                key,
                reason: "text-encoder LoRA is not supported (UNet only)".into(),
            });
        } else {
            return Err(LoraError::KeyMismatch {
                key,
                reason: format!("expected a `{UNET_PREFIX}` (or `{PEFT_MODEL_PREFIX}`) prefix"),
            });
        };
        let Some((path, slot)) = PEFT_KEYS.split(rest) else {
            return Err(LoraError::KeyMismatch {
                reason: "expected `.lora_A.weight`, `.lora_B.weight` or `.lora_B.bias` (DoRA, LoHa and attention-processor LoRAs are not supported)".into(),
                key,
            });
        };
        let prefix = key[..key.len() - (rest.len() - path.len())].to_string();
        PEFT_KEYS.insert(&mut groups, path.to_string(), prefix, slot, data);
    }

    // 3. Pair them; the third tensor is `lora_B.bias`. A rank the metadata declares (`r`,
    //    `rank_pattern`) must be the tensors' rank.
    let declared_rank = field("r").and_then(|v| v.as_u64());
    let mut rank_pattern = Vec::new();
    if let Some(Value::Object(patterns)) = field("rank_pattern") {
        for (key, value) in patterns {
            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
                LoraError::Format {
                    key: format!("__metadata__.{ADAPTER_METADATA_KEY}.unet.rank_pattern.{key}"),
                    message: format!("bad pattern: {e}"),
                }
            })?;
            rank_pattern.push((re, value.as_u64(), key.clone()));
        }
    }
    PEFT_KEYS.pair(groups, |path, down, up_bias| {
        let rank = down.shape.first().copied().unwrap_or(0);
        let declared = rank_pattern
            .iter()
            .find(|(re, _, _)| re.is_match(path))
            .map(|(_, r, key)| (*r, format!("rank_pattern.{key}")))
            .or_else(|| declared_rank.map(|r| (Some(r), "r".to_string())));
        if let Some((Some(r), key)) = declared {
            if r as usize != rank {
                return Err(LoraError::Format {
                    key: format!("__metadata__.{ADAPTER_METADATA_KEY}.unet.{key}"),
                    message: format!(
                        "declares rank {r}, but the tensors of `{path}` have rank {rank}"
                    ),
                });
            }
        }
        let mut alpha = peft_alpha(path, rank, lora_alpha, &alpha_pattern);
        if rslora {
            alpha *= (rank as f64).sqrt();
        }
        Ok((alpha, up_bias))
    })
}

/// The largest `|alpha / rank|` a file may declare (peft's scales are ~0.1-4).
const MAX_SCALE: f64 = 1e4;

/// The three tensor suffixes of one layer in a file layout: down, up, and a third (peft's
/// `lora_B.bias`, kohya's `alpha`).
struct KeyLayout {
    suffixes: [&'static str; 3],
}

const PEFT_KEYS: KeyLayout = KeyLayout {
    suffixes: ["lora_A.weight", "lora_B.weight", "lora_B.bias"],
};

const KOHYA_KEYS: KeyLayout = KeyLayout {
    suffixes: ["lora_down.weight", "lora_up.weight", "alpha"],
};

/// One layer's tensors as found in a file: the key prefix and the three slots.
#[derive(Default)]
struct KeyGroup {
    prefix: String,
    tensors: [Option<TensorData>; 3],
}

impl KeyLayout {
    /// `<prefix>.<suffix>` -> (`prefix`, slot index).
    fn split<'a>(&self, key: &'a str) -> Option<(&'a str, usize)> {
        self.suffixes.iter().enumerate().find_map(|(slot, suffix)| {
            key.strip_suffix(suffix)
                .and_then(|p| p.strip_suffix('.'))
                .map(|p| (p, slot))
        })
    }

    fn insert(
        &self,
        groups: &mut BTreeMap<String, KeyGroup>,
        path: String,
        prefix: String,
        slot: usize,
        data: TensorData,
    ) {
        let group = groups.entry(path).or_default();
        group.prefix = prefix;
        group.tensors[slot] = Some(data);
    }

    /// Builds [`LoraWeights`] from the groups; `finish(path, down, third)` gives the alpha and
    /// the up bias. A layer without its down or up factor is an error naming both keys.
    fn pair(
        &self,
        groups: BTreeMap<String, KeyGroup>,
        mut finish: impl FnMut(
            &str,
            &TensorData,
            Option<TensorData>,
        ) -> Result<(f64, Option<TensorData>), LoraError>,
    ) -> Result<LoraWeights, LoraError> {
        let [down_suffix, up_suffix, third_suffix] = self.suffixes;
        let mut weights = LoraWeights::default();
        for (path, group) in groups {
            let KeyGroup { prefix, tensors } = group;
            let [down, up, third] = tensors;
            let (down, up) = match (down, up) {
                (Some(down), Some(up)) => (down, up),
                (Some(_), None) => {
                    return Err(LoraError::Format {
                        key: format!("{prefix}.{down_suffix}"),
                        message: format!("no matching `{prefix}.{up_suffix}`"),
                    })
                }
                (None, present) => {
                    let have = if present.is_some() {
                        up_suffix
                    } else {
                        third_suffix
                    };
                    return Err(LoraError::Format {
                        key: format!("{prefix}.{have}"),
                        message: format!("no matching `{prefix}.{down_suffix}`"),
                    });
                }
            };
            let (alpha, up_bias) = finish(&path, &down, third)?;
            // A scale that is not a number (or absurd) makes every output NaN / Inf: refuse it.
            let rank = down.shape.first().copied().unwrap_or(1).max(1);
            if !alpha.is_finite() || (alpha / rank as f64).abs() > MAX_SCALE {
                return Err(LoraError::Format {
                    key: format!("{prefix}.{third_suffix}"),
                    message: format!(
                        "alpha {alpha} gives the scale alpha / rank = {:e}; expected a finite scale within +-{MAX_SCALE:e}",
                        alpha / rank as f64
                    ),
                });
            }
            weights.layers.insert(
                path,
                LayerFactors {
                    down,
                    up,
                    up_bias,
                    alpha,
                    source: Some(prefix),
                },
            );
        }
        Ok(weights)
    }
}

fn kohya_name(path: &str) -> String {
    format!("{KOHYA_UNET_PREFIX}{}", path.replace('.', "_"))
}

/// kohya tensors for `weights`, factors in `dtype`, alphas as F32 scalars.
pub fn to_kohya(
    weights: &LoraWeights,
    dtype: DType,
) -> Result<BTreeMap<String, TensorData>, LoraError> {
    check_float_dtype(dtype)?;
    let mut tensors = BTreeMap::new();
    for (path, f) in &weights.layers {
        let name = kohya_name(path);
        if f.up_bias.is_some() {
            return Err(LoraError::Format {
                key: name,
                message: "the kohya format has no LoRA bias; export this adapter as peft".into(),
            });
        }
        tensors.insert(format!("{name}.lora_down.weight"), cast(&f.down, dtype));
        tensors.insert(format!("{name}.lora_up.weight"), cast(&f.up, dtype));
        tensors.insert(
            format!("{name}.alpha"),
            TensorData::new(vec![f.alpha as f32], Vec::<usize>::new()),
        );
    }
    Ok(tensors)
}

/// [`LoraWeights`] from kohya tensors; `layer_paths` are the model's adaptable layers (see
/// [`crate::describe`]), needed to undo the `.` -> `_` of the key names.
pub fn from_kohya(
    tensors: BTreeMap<String, TensorData>,
    layer_paths: &[String],
) -> Result<LoraWeights, LoraError> {
    let by_name: BTreeMap<String, &String> =
        layer_paths.iter().map(|p| (kohya_name(p), p)).collect();
    let mut groups = BTreeMap::new();
    for (key, data) in tensors {
        if key.starts_with("lora_te") {
            return Err(LoraError::KeyMismatch {
                key,
                reason: "text-encoder LoRA is not supported (UNet only)".into(),
            });
        }
        let Some((name, slot)) = KOHYA_KEYS.split(&key) else {
            return Err(LoraError::KeyMismatch {
                reason: "expected `.lora_down.weight`, `.lora_up.weight` or `.alpha` (DoRA, LoHa and LoKr are not supported)".into(),
                key,
            });
        };
        let Some(path) = by_name.get(name) else {
            return Err(LoraError::KeyMismatch {
                reason: if name.starts_with(KOHYA_UNET_PREFIX) {
                    format!("`{name}` is not an adaptable layer of this model (is the file for another base model, or in LDM `input_blocks` naming?)")
                } else {
                    format!("expected a `{KOHYA_UNET_PREFIX}` prefix")
                },
                key,
            });
        };
        let name = name.to_string();
        KOHYA_KEYS.insert(&mut groups, (*path).clone(), name, slot, data);
    }
    // The third tensor is the scalar `alpha` (missing: alpha = rank).
    KOHYA_KEYS.pair(groups, |path, down, alpha| {
        let rank = down.shape.first().copied().unwrap_or(0);
        let Some(alpha) = alpha else {
            return Ok((rank as f64, None));
        };
        match alpha
            .clone()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default()[..]
        {
            [value] => Ok((value, None)),
            _ => Err(LoraError::Shape {
                key: format!("{}.alpha", kohya_name(path)),
                found: alpha.shape.to_vec(),
                expected: "a scalar".into(),
            }),
        }
    })
}

//! Safetensors files: checking a header without reading the data, reading plain tensor files, and
//! writing them atomically.
//!
//! Format (huggingface/safetensors): 8 bytes little-endian header length `n`, `n` bytes of JSON
//! `{key: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the data.
//! Checking the header against the file size catches truncated downloads and non-safetensors files
//! with a precise message, before any module is touched.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Largest header accepted (the reference reader's limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Dtype name as written in the file (`F32`, `F16`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub data_offsets: (u64, u64),
}

/// The parsed header of a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    /// The file.
    pub path: PathBuf,
    /// Tensors by key.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The free-form `__metadata__` map (LoRA alphas, format markers, ...).
    pub metadata: BTreeMap<String, String>,
}

fn corrupt(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::CorruptWeights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Bytes per element of a safetensors dtype name, or `None` for unknown names.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsHeader {
    /// Reads and checks the header of `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if file_len < 8 {
            return Err(corrupt(
                path,
                format!("file is {file_len} bytes, too short for a safetensors header"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|e| ModelError::io(path, e))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(corrupt(
                path,
                format!("declared header length {header_len} does not fit in the file ({file_len} bytes): not safetensors, or truncated"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| ModelError::io(path, e))?;
        let value: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| corrupt(path, format!("header is not valid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| corrupt(path, "header is not a JSON object"))?;

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        let mut data_end = 0u64;
        for (key, entry) in object {
            if key == "__metadata__" {
                if let Some(map) = entry.as_object() {
                    for (k, v) in map {
                        let text = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        metadata.insert(k.clone(), text);
                    }
                }
                continue;
            }
            let bad = |what: &str| corrupt(path, format!("tensor `{key}`: {what}"));
            let dtype = entry
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("no dtype"))?
                .to_string();
            let shape: Vec<usize> = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of integers"))?;
            let offsets = entry
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
            let size = dtype_size(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
            let expected = shape.iter().product::<usize>() as u64 * size;
            if offsets.1 < offsets.0 || offsets.1 - offsets.0 != expected {
                return Err(bad(&format!(
                    "data_offsets {offsets:?} hold {} bytes, but {dtype} {shape:?} needs {expected}",
                    offsets.1.saturating_sub(offsets.0)
                )));
            }
            data_end = data_end.max(offsets.1);
            tensors.insert(
                key.clone(),
                TensorEntry {
                    dtype,
                    shape,
                    data_offsets: offsets,
                },
            );
        }
        let needed = 8 + header_len + data_end;
        if needed != file_len {
            return Err(corrupt(
                path,
                format!("the header describes {needed} bytes but the file has {file_len} (truncated or corrupt download?)"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }
}

/// Reads every tensor of a safetensors file as Burn [`TensorData`](burn::tensor::TensorData), in
/// the file's dtype (F32, F16, BF16, F64, I64, I32, U8, BOOL).
///
/// For model weights use [`crate::weights::load_safetensors`]; this is for plain tensor files:
/// golden fixtures, initial latents, saved samples.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, burn::tensor::TensorData>> {
    read_tensors_and_header(path).map(|(tensors, _)| tensors)
}

/// [`read_tensors`], also returning the parsed header (for its `__metadata__`).
pub fn read_tensors_and_header(
    path: impl AsRef<Path>,
) -> Result<(
    BTreeMap<String, burn::tensor::TensorData>,
    SafetensorsHeader,
)> {
    use burn::tensor::TensorData;
    let path = path.as_ref();
    let header = SafetensorsHeader::read(path)?;
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let data = &bytes[8 + header_len..];
    let mut out = BTreeMap::new();
    for (key, entry) in &header.tensors {
        let (begin, end) = (entry.data_offsets.0 as usize, entry.data_offsets.1 as usize);
        let raw = &data[begin..end];
        let shape = entry.shape.clone();
        let chunks = |n: usize| raw.chunks_exact(n);
        let tensor = match entry.dtype.as_str() {
            "F32" => TensorData::new(
                chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "F64" => TensorData::new(
                chunks(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "F16" => TensorData::new(
                chunks(2)
                    .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "BF16" => TensorData::new(
                chunks(2)
                    .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "I64" => TensorData::new(
                chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "I32" => TensorData::new(
                chunks(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>(),
                shape,
            ),
            "U8" => TensorData::new(raw.to_vec(), shape),
            "BOOL" => TensorData::new(raw.iter().map(|&b| b != 0).collect::<Vec<_>>(), shape),
            other => {
                return Err(ModelError::BadTensor {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    message: format!("dtype {other} is not supported here"),
                })
            }
        };
        out.insert(key.clone(), tensor);
    }
    Ok((out, header))
}

/// Writes tensors (and optional `__metadata__`) as a safetensors file, atomically: the bytes go
/// to `<path>.tmp-<pid>` first, which is then renamed over `path`, so a crash never leaves a
/// half-written file under the final name.
pub fn write_tensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, burn::tensor::TensorData>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    use burn::tensor::DType;
    let path = path.as_ref();
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut data: Vec<u8> = Vec::new();
    for (key, tensor) in tensors {
        let name = match tensor.dtype {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::U8 => "U8",
            DType::Bool(_) => "BOOL",
            other => {
                return Err(ModelError::BadTensor {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    message: format!("cannot write dtype {other:?}"),
                })
            }
        };
        let begin = data.len();
        if name == "BOOL" {
            let values: Vec<bool> = tensor.to_vec().map_err(|e| ModelError::BadTensor {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("{e:?}"),
            })?;
            data.extend(values.iter().map(|&b| b as u8));
        } else {
            data.extend_from_slice(tensor.as_bytes());
        }
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": name, "shape": tensor.shape.to_vec(), "data_offsets": [begin, data.len()]}),
        );
    }
    let mut header_bytes =
        serde_json::to_vec(&serde_json::Value::Object(header)).expect("serialisable header");
    // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !(8 + header_bytes.len()).is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + header_bytes.len() + data.len());
    bytes.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header_bytes);
    bytes.extend_from_slice(&data);
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let file_name = path.file_name().ok_or_else(|| {
        ModelError::InvalidInput(format!("{} is not a file path", path.display()))
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::Write {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

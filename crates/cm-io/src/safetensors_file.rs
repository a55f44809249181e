//! Safetensors files through the `safetensors` crate: checking a header without reading the data,
//! reading every tensor as Burn [`TensorData`], writing tensors atomically.
//!
//! Files are memory-mapped, so checking the header of a multi-GB UNet file costs no reads of its
//! data. The crate validates the format (header length, JSON, offsets covering the data exactly);
//! when it refuses a file, [`describe_problem`] looks at the header once more to name the tensor
//! at fault and the byte counts, so a message says `tensor `x`: data_offsets (0, 12) hold 12 bytes,
//! but F32 [2, 2] needs 16` or `the header describes 1032 bytes but the file has 1000 (truncated
//! or corrupt download?)` rather than only "invalid offset".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorInfo, View};

use crate::atomic::write_atomically;
use crate::error::{IoError, Result};

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

impl TensorEntry {
    /// Whether the entry holds floating-point numbers (what model weights must be).
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype.as_str(),
            "F16" | "BF16" | "F32" | "F64" | "F8_E4M3" | "F8_E5M2"
        )
    }
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

fn corrupt(path: &Path, message: impl Into<String>) -> IoError {
    IoError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A read-only memory map of `path` (an empty file maps to an empty slice).
fn map_file(path: &Path) -> Result<(memmap2::Mmap, u64)> {
    let file = std::fs::File::open(path).map_err(|e| IoError::read(path, e))?;
    let metadata = file.metadata().map_err(|e| IoError::read(path, e))?;
    if metadata.is_dir() {
        return Err(IoError::read(
            path,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory, not a safetensors file",
            ),
        ));
    }
    // SAFETY: the map is read-only and lives no longer than this process's use of the bytes; a
    // concurrent truncation by another process is the one hazard, as with every mmap reader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IoError::read(path, e))?;
    Ok((map, metadata.len()))
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

/// The most precise description of why the crate refused `bytes`: the tensor at fault and the
/// byte counts where the header can still be read as JSON, else the crate's own message.
fn describe_problem(bytes: &[u8], error: &SafeTensorError) -> String {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return format!("file is {file_len} bytes, too short for a safetensors header");
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > 100_000_000 || header_len.saturating_add(8) > file_len {
        return format!(
            "declared header length {header_len} does not fit in the file ({file_len} bytes): not safetensors, or truncated"
        );
    }
    let header = &bytes[8..8 + header_len as usize];
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return format!("header is not valid JSON: {error}");
    };
    let mut data_end = 0u64;
    for (key, entry) in &entries {
        if key == "__metadata__" {
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let Some(size) = dtype_size(dtype) else {
            return format!("tensor `{key}`: unknown dtype {dtype}");
        };
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<(u64, u64)> = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)));
        let (Some(shape), Some((begin, end))) = (shape, offsets) else {
            return format!("tensor `{key}`: shape or data_offsets is malformed");
        };
        let needed = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        if end < begin || end - begin != needed {
            return format!(
                "tensor `{key}`: data_offsets ({begin}, {end}) hold {} bytes, but {dtype} {shape:?} needs {needed}",
                end.saturating_sub(begin)
            );
        }
        data_end = data_end.max(end);
    }
    let described = 8 + header_len + data_end;
    if described != file_len {
        return format!(
            "the header describes {described} bytes but the file has {file_len} (truncated or corrupt download?)"
        );
    }
    error.to_string()
}

fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

fn entries_of(info: HashMap<String, &TensorInfo>) -> BTreeMap<String, TensorEntry> {
    info.into_iter()
        .map(|(key, info)| {
            (
                key,
                TensorEntry {
                    dtype: dtype_name(info.dtype),
                    shape: info.shape.clone(),
                    data_offsets: (info.data_offsets.0 as u64, info.data_offsets.1 as u64),
                },
            )
        })
        .collect()
}

impl SafetensorsHeader {
    /// Reads and checks the header of `path` (tensor data is mapped, not read).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (map, _) = map_file(path)?;
        let (_, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| corrupt(path, describe_problem(&map, &e)))?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors: entries_of(metadata.tensors()),
            metadata: metadata
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }
}

/// The Burn dtype of a safetensors dtype, for the dtypes Burn stores.
fn burn_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::U16 => DType::U16,
        Dtype::U32 => DType::U32,
        Dtype::U64 => DType::U64,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file as Burn [`TensorData`] in the file's dtype.
///
/// For model weights use `cm_models::weights::load_safetensors`; this is for plain tensor files:
/// golden fixtures, initial latents, LoRA files, checkpoints, caches.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, TensorData>> {
    read_tensors_and_header(path).map(|(tensors, _)| tensors)
}

/// [`read_tensors`], also returning the parsed header (for its `__metadata__`).
pub fn read_tensors_and_header(
    path: impl AsRef<Path>,
) -> Result<(BTreeMap<String, TensorData>, SafetensorsHeader)> {
    let path = path.as_ref();
    let (map, _) = map_file(path)?;
    let file =
        SafeTensors::deserialize(&map).map_err(|e| corrupt(path, describe_problem(&map, &e)))?;
    let mut tensors = BTreeMap::new();
    for (key, view) in file.iter() {
        let shape = view.shape().to_vec();
        let data = match view.dtype() {
            Dtype::BOOL => TensorData::new(
                view.data().iter().map(|&b| b != 0).collect::<Vec<bool>>(),
                shape,
            ),
            other => {
                let dtype = burn_dtype(other).ok_or_else(|| IoError::BadTensor {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    message: format!("dtype {other:?} is not supported here"),
                })?;
                TensorData::from_bytes_vec(view.data().to_vec(), shape, dtype)
            }
        };
        tensors.insert(key.to_string(), data);
    }
    let (_, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| corrupt(path, e.to_string()))?;
    let header = SafetensorsHeader {
        path: path.to_path_buf(),
        tensors: entries_of(metadata.tensors()),
        metadata: metadata
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    Ok((tensors, header))
}

/// A Burn tensor as a safetensors view.
struct DataView<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl View for &DataView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn view_of<'a>(path: &Path, key: &str, tensor: &'a TensorData) -> Result<DataView<'a>> {
    let dtype = match tensor.dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::U16 => Dtype::U16,
        DType::U32 => Dtype::U32,
        DType::U64 => Dtype::U64,
        DType::Bool(_) => Dtype::BOOL,
        other => {
            return Err(IoError::BadTensor {
                path: path.to_path_buf(),
                key: key.to_string(),
                message: format!("cannot write dtype {other:?}"),
            })
        }
    };
    let bytes = if dtype == Dtype::BOOL {
        let values: Vec<bool> = tensor.to_vec().map_err(|e| IoError::BadTensor {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: format!("{e:?}"),
        })?;
        std::borrow::Cow::Owned(values.iter().map(|&b| b as u8).collect())
    } else {
        std::borrow::Cow::Borrowed(tensor.as_bytes())
    };
    Ok(DataView {
        dtype,
        shape: tensor.shape.to_vec(),
        bytes,
    })
}

/// Serialises tensors (and optional `__metadata__`) to safetensors bytes.
pub fn to_bytes(
    path_for_messages: &Path,
    tensors: &BTreeMap<String, TensorData>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, DataView)> = tensors
        .iter()
        .map(|(key, tensor)| Ok((key.clone(), view_of(path_for_messages, key, tensor)?)))
        .collect::<Result<_>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    safetensors::serialize(views.iter().map(|(k, v)| (k.as_str(), v)), metadata).map_err(|e| {
        IoError::InvalidInput(format!(
            "cannot serialise {}: {e}",
            path_for_messages.display()
        ))
    })
}

/// Writes tensors (and optional `__metadata__`) as a safetensors file, atomically (see
/// [`crate::atomic`]): a crash never leaves a half-written file under the final name.
pub fn write_tensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, TensorData>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    write_atomically(path, &to_bytes(path, tensors, metadata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cm-io-st-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> BTreeMap<String, TensorData> {
        let mut t = BTreeMap::new();
        t.insert(
            "a".into(),
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
        );
        t.insert("b".into(), TensorData::new(vec![5i64, 6], [2]));
        t.insert(
            "c".into(),
            TensorData::new(vec![1.5f32, -2.0], [2]).convert_dtype(DType::BF16),
        );
        t
    }

    #[test]
    fn round_trip_keeps_values_dtypes_and_metadata() {
        let path = temp("rt").join("x.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_tensors(&path, &sample(), &meta).unwrap();
        let (back, header) = read_tensors_and_header(&path).unwrap();
        assert_eq!(back, sample());
        assert_eq!(header.metadata, meta);
        assert_eq!(header.tensors["b"].dtype, "I64");
        assert_eq!(header.tensors["a"].shape, vec![2, 2]);
        // Python's reader needs the data 8-byte aligned: the header length is a multiple of 8.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
    }

    #[test]
    fn truncated_and_garbage_files_are_named_errors() {
        let dir = temp("bad");
        let good = dir.join("good.safetensors");
        write_tensors(&good, &sample(), &BTreeMap::new()).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let err = SafetensorsHeader::read(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated"),
            "{err}"
        );

        let garbage = dir.join("garbage.safetensors");
        std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
        let err = read_tensors(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.safetensors") && err.contains("header length"),
            "{err}"
        );

        let tiny = dir.join("tiny.safetensors");
        std::fs::write(&tiny, b"abc").unwrap();
        let err = read_tensors(&tiny).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn a_wrong_byte_count_names_the_tensor() {
        let dir = temp("offsets");
        let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 12]);
        let path = dir.join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let err = SafetensorsHeader::read(&path).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("needs 16"), "{err}");
    }

    #[test]
    fn a_directory_is_not_reported_as_missing() {
        let dir = temp("isdir");
        let err = read_tensors(&dir).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
    }
}

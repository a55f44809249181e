//! Shared helpers of the golden tests: the test backend, fixture paths, tensor comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::TensorData;

/// The CPU backend every test runs on.
pub type TestBackend = burn::backend::Flex;

/// The device of [`TestBackend`].
pub fn device() -> burn::tensor::Device<TestBackend> {
    Default::default()
}

/// `tests/fixtures/` at the workspace root (made by `scripts/gen_fixtures.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Reads a golden tensor file.
pub fn golden(name: &str) -> BTreeMap<String, TensorData> {
    let path = fixtures().join("golden").join(name);
    cm_io::read_tensors(&path).unwrap_or_else(|e| panic!("cannot read fixture: {e}"))
}

/// `||ours - reference|| / ||reference||` (infinite on a shape mismatch or an all-zero reference).
#[allow(unused_imports)]
pub use cm_io::compare::relative_error;

/// A fresh, empty folder under the system temp dir for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-models-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An fp16 copy of a safetensors file (float tensors converted), in a temp folder.
pub fn fp16_copy(path: &std::path::Path, name: &str) -> PathBuf {
    let tensors: BTreeMap<String, TensorData> = cm_io::read_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype.is_float() {
                v.convert_dtype(burn::tensor::DType::F16)
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let out = temp_dir(name).join(path.file_name().unwrap());
    cm_io::write_tensors(&out, &tensors, &BTreeMap::new()).unwrap();
    out
}

//! File I/O shared by every crate of the workspace (a leaf: it depends on Burn's tensor types and
//! on well-kept format crates only, never on the models).
//!
//! - [`safetensors_file`]: reading and checking safetensors files through the `safetensors` crate
//!   (memory-mapped: checking a multi-GB header reads no tensor data), writing them atomically.
//! - [`atomic`]: writes that never leave a half-written file under the final name, and that
//!   write *through* device nodes, FIFOs and symlinks instead of replacing them.
//! - [`images`]: image tensors in `[0, 1]` to 8-bit RGB, grids, PNG / JPEG files by extension.
//! - [`compare`]: the relative / max-abs error every golden test and parity check uses.

pub mod atomic;
pub mod compare;
pub mod error;
pub mod images;
pub mod safetensors_file;

pub use atomic::{write_atomically, write_dir_atomically};
pub use error::{IoError, Result};
pub use safetensors_file::{
    read_tensors, read_tensors_and_header, write_tensors, SafetensorsHeader, TensorEntry,
};

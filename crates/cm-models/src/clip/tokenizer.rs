//! The CLIP byte-level BPE tokenizer of Stable Diffusion 1.5 (openai/clip-vit-large-patch14).
//!
//! Behaviour equals transformers' `CLIPTokenizer` (v5, tokenizers-backed, `tokenization_clip.py`):
//! NFC, whitespace runs -> one space, lowercase; CLIP's split regex; byte-level BPE with the `</w>`
//! end-of-word suffix. [`ClipTokenizer::encode`] then does what diffusers' pipelines ask for with
//! `padding="max_length", max_length=77, truncation=True`: `<|startoftext|>`, at most 75 content
//! tokens, `<|endoftext|>`, then padding with the pad token (`<|endoftext|>` = 49407 for SD1.5).
//!
//! Three sources give the same tokenizer: a `tokenizer.json` (what `scripts/build_tokenizer.py`
//! writes to `assets/tokenizer/`, and what newer tools save), the `vocab.json` + `merges.txt` pair of
//! the SD1.5 repository, or [`ClipTokenizer::sd15`], which embeds the asset in the binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// The SD1.5 tokenizer, built by `scripts/build_tokenizer.py` from open_clip's BPE merges (MIT).
const SD15_TOKENIZER_JSON: &[u8] = include_bytes!("../../../../assets/tokenizer/tokenizer.json");

/// Sequence length of CLIP text encoders.
pub const CLIP_MAX_LENGTH: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Normaliser, pre-tokeniser, post-processor and decoder of transformers' `CLIPTokenizer`, as
/// `tokenizer.json` records them. The BPE model (vocab + merges) is filled in at load.
const CLIP_PIPELINE_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Sequence", "normalizers": [
    {"type": "NFC"},
    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
    {"type": "Lowercase"}]},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
     "behavior": "Removed", "invert": true},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": null
}"#;

/// A CLIP tokenizer that pads and truncates to a fixed length.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn tokenizer_error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl ClipTokenizer {
    /// The Stable Diffusion 1.5 tokenizer embedded in the library (`assets/tokenizer/tokenizer.json`).
    pub fn sd15() -> Result<Self> {
        let origin = Path::new("<embedded assets/tokenizer/tokenizer.json>");
        let inner =
            Tokenizer::from_bytes(SD15_TOKENIZER_JSON).map_err(|e| tokenizer_error(origin, e))?;
        Self::from_tokenizer(inner, origin, None, CLIP_MAX_LENGTH)
    }

    /// Loads a `tokenizer.json` (pad token `<|endoftext|>`, length 77).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| tokenizer_error(path, e))?;
        Self::from_tokenizer(inner, path, None, CLIP_MAX_LENGTH)
    }

    /// Builds the tokenizer from the `vocab.json` + `merges.txt` pair of the SD1.5 repository.
    pub fn from_vocab_and_merges(
        vocab_json: impl AsRef<Path>,
        merges_txt: impl AsRef<Path>,
    ) -> Result<Self> {
        let (vocab_path, merges_path) = (vocab_json.as_ref(), merges_txt.as_ref());
        let inner = build_from_vocab_and_merges(vocab_path, merges_path)?;
        Self::from_tokenizer(inner, vocab_path, None, CLIP_MAX_LENGTH)
    }

    /// Loads the `tokenizer/` folder of a diffusers pipeline: `tokenizer.json` if present, else
    /// `vocab.json` + `merges.txt`; `pad_token` and `model_max_length` come from
    /// `tokenizer_config.json` when it has them.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let (inner, origin) = if json.is_file() {
            let bytes = std::fs::read(&json).map_err(|e| ModelError::io(&json, e))?;
            (
                Tokenizer::from_bytes(bytes).map_err(|e| tokenizer_error(&json, e))?,
                json,
            )
        } else if vocab.is_file() && merges.is_file() {
            (build_from_vocab_and_merges(&vocab, &merges)?, vocab)
        } else {
            return Err(tokenizer_error(
                dir,
                "expected tokenizer.json, or vocab.json and merges.txt, in this folder",
            ));
        };
        let (pad, max_length) = read_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        Self::from_tokenizer(
            inner,
            &origin,
            pad.as_deref(),
            max_length.unwrap_or(CLIP_MAX_LENGTH),
        )
    }

    fn from_tokenizer(
        inner: Tokenizer,
        origin: &Path,
        pad: Option<&str>,
        max_length: usize,
    ) -> Result<Self> {
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                tokenizer_error(origin, format!("the vocabulary has no `{token}` token"))
            })
        };
        if max_length < 2 {
            return Err(tokenizer_error(
                origin,
                format!("model_max_length {max_length} leaves no room for text"),
            ));
        }
        Ok(Self {
            bos_id: id(BOS)?,
            eos_id: id(EOS)?,
            pad_id: id(pad.unwrap_or(EOS))?,
            max_length,
            inner,
        })
    }

    /// Number of tokens (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Padded length of every sequence (77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `<|startoftext|>` id (49406).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// `<|endoftext|>` id (49407).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Padding id (49407 for SD1.5).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// BPE ids of `text` without start/end tokens, padding or truncation.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| {
            tokenizer_error(
                Path::new("<tokenizer>"),
                format!("cannot encode {text:?}: {e}"),
            )
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `max_length` ids: start token, at most `max_length - 2` content tokens, end token, padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let content = self.encode_raw(text)?;
        let keep = content.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&content[..keep]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }

    /// Whether `text` is longer than fits (the caller may warn, as diffusers does).
    pub fn is_truncated(&self, text: &str) -> Result<bool> {
        Ok(self.encode_raw(text)?.len() > self.max_length - 2)
    }

    /// The part of `text` that truncation drops, as text (diffusers warns with it), or `None`
    /// when everything fits.
    pub fn truncated_part(&self, text: &str) -> Result<Option<String>> {
        let ids = self.encode_raw(text)?;
        let keep = self.max_length - 2;
        if ids.len() <= keep {
            return Ok(None);
        }
        Ok(Some(self.decode(&ids[keep..])?))
    }

    /// Encodes a batch into an id tensor.
    ///
    /// # Shapes
    /// Returns `[texts.len(), max_length]`.
    pub fn encode_batch<B: Backend>(
        &self,
        texts: &[&str],
        device: &B::Device,
    ) -> Result<Tensor<B, 2, Int>> {
        let mut flat = Vec::with_capacity(texts.len() * self.max_length);
        for text in texts {
            flat.extend(self.encode(text)?.into_iter().map(i64::from));
        }
        let data = TensorData::new(flat, [texts.len(), self.max_length]);
        Ok(Tensor::from_data(data, device))
    }

    /// Text back from ids (special tokens dropped, `</w>` turned into spaces).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| tokenizer_error(Path::new("<tokenizer>"), e))?;
        Ok(text.replace("</w>", " ").trim().to_string())
    }
}

/// Reads `pad_token` and `model_max_length` from a `tokenizer_config.json`, if the file exists.
fn read_tokenizer_config(path: &Path) -> Result<(Option<String>, Option<usize>)> {
    if !path.is_file() {
        return Ok((None, None));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    // `pad_token` is a string, or an AddedToken object {"content": ...} in older files.
    let pad = match value.get("pad_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    };
    // Some tools write a huge sentinel (1e30) for "no limit": only accept sane lengths.
    let max_length = value
        .get("model_max_length")
        .and_then(|m| m.as_u64())
        .filter(|&m| (2..=4096).contains(&m))
        .map(|m| m as usize);
    Ok((pad, max_length))
}

/// Builds transformers' CLIP tokenizer pipeline around a vocab.json + merges.txt pair.
fn build_from_vocab_and_merges(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
    let vocab_text =
        std::fs::read_to_string(vocab_path).map_err(|e| ModelError::io(vocab_path, e))?;
    let vocab: HashMap<String, u32> =
        serde_json::from_str(&vocab_text).map_err(|e| ModelError::ConfigParse {
            path: vocab_path.to_path_buf(),
            message: format!("vocab.json must map tokens to ids: {e}"),
        })?;
    let merges_text =
        std::fs::read_to_string(merges_path).map_err(|e| ModelError::io(merges_path, e))?;
    let mut merges = Vec::new();
    for (line_no, line) in merges_text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push(format!("{a} {b}"))
            }
            _ => {
                return Err(tokenizer_error(
                    merges_path,
                    format!(
                        "line {}: expected two symbols separated by one space, found {line:?}",
                        line_no + 1
                    ),
                ))
            }
        }
    }
    if merges.is_empty() {
        // A BPE tokenizer without merges splits every word into single characters: garbage
        // prompts, silently. The SD1.5 file has 48894 merges.
        return Err(tokenizer_error(
            merges_path,
            "has no merges (expected one `a b` pair per line, as in the SD1.5 tokenizer)",
        ));
    }
    for token in [BOS, EOS] {
        if !vocab.contains_key(token) {
            return Err(tokenizer_error(
                vocab_path,
                format!("the vocabulary has no `{token}` token"),
            ));
        }
    }
    let mut pipeline: serde_json::Value =
        serde_json::from_str(CLIP_PIPELINE_JSON).expect("the built-in CLIP pipeline JSON is valid");
    pipeline["added_tokens"] =
        serde_json::json!([BOS, EOS].iter().map(|t| serde_json::json!({
        "id": vocab[*t], "content": t, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": true
    })).collect::<Vec<_>>());
    pipeline["model"] = serde_json::json!({
        "type": "BPE", "dropout": null, "unk_token": EOS, "continuing_subword_prefix": "",
        "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
        "vocab": vocab, "merges": merges,
    });
    let bytes = serde_json::to_vec(&pipeline).expect("serialisable");
    Tokenizer::from_bytes(bytes).map_err(|e| tokenizer_error(&PathBuf::from(merges_path), e))
}

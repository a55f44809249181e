//! CLIP text side of Stable Diffusion 1.5: the BPE tokenizer and the `CLIPTextModel` encoder.

mod config;
mod loading;
mod text_encoder;
mod tokenizer;

pub use config::{ClipActivation, ClipTextConfig};
pub use text_encoder::{
    quick_gelu, ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, ClipTextEmbeddings,
    ClipTextModel, ClipTextOutput,
};
pub use tokenizer::{ClipTokenizer, CLIP_MAX_LENGTH};

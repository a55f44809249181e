//! Which layers receive an adapter: peft-style target names plus include / exclude regexes.

use regex::Regex;

use crate::LoraError;

/// The 14 module names LCM-LoRA trains in the SD1.5 UNet (attention projections, transformer
/// feed-forward and projections, resnet convolutions and time projections, down/up-samplers).
pub const LCM_LORA_TARGETS: [&str; 14] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
];

/// The attention projections only (the classic "attention LoRA").
pub const ATTENTION_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// Selects adaptable layers by dotted module path (`down_blocks.0.attentions.0.proj_in`).
///
/// A layer is selected when (a) its path equals a target name or ends with `.` + name (peft's
/// `target_modules` rule for a list of names), or (b) it matches an include regex; and it matches
/// no exclude regex. Regexes must match the whole path (they are anchored).
#[derive(Debug, Clone)]
pub struct TargetSelector {
    names: Vec<String>,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl Default for TargetSelector {
    /// [`LCM_LORA_TARGETS`].
    fn default() -> Self {
        Self::names(LCM_LORA_TARGETS)
    }
}

fn anchored(pattern: &str) -> Result<Regex, LoraError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| LoraError::InvalidConfig(format!("bad regex `{pattern}`: {e}")))
}

impl TargetSelector {
    /// Layers whose path ends with one of `names` (peft `target_modules=[...]`).
    pub fn names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            names: names.into_iter().map(|s| s.as_ref().to_string()).collect(),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// Also selects layers whose whole path matches `pattern`.
    pub fn include(mut self, pattern: &str) -> Result<Self, LoraError> {
        self.include.push(anchored(pattern)?);
        Ok(self)
    }

    /// Never selects layers whose whole path matches `pattern`.
    pub fn exclude(mut self, pattern: &str) -> Result<Self, LoraError> {
        self.exclude.push(anchored(pattern)?);
        Ok(self)
    }

    /// Whether the layer at `path` is selected.
    pub fn matches(&self, path: &str) -> bool {
        let by_name = self.names.iter().any(|name| {
            path == name
                || (path.len() > name.len()
                    && path.ends_with(name.as_str())
                    && path.as_bytes()[path.len() - name.len() - 1] == b'.')
        });
        let included = by_name || self.include.iter().any(|re| re.is_match(path));
        included && !self.exclude.iter().any(|re| re.is_match(path))
    }
}

impl std::fmt::Display for TargetSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "targets {:?}", self.names)?;
        let strip = |re: &Regex| {
            let s = re.as_str();
            s[4..s.len() - 2].to_string()
        };
        if !self.include.is_empty() {
            write!(
                f,
                ", include {:?}",
                self.include.iter().map(strip).collect::<Vec<_>>()
            )?;
        }
        if !self.exclude.is_empty() {
            write!(
                f,
                ", exclude {:?}",
                self.exclude.iter().map(strip).collect::<Vec<_>>()
            )?;
        }
        Ok(())
    }
}

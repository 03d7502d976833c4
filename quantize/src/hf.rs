//! Reading a Hugging Face checkpoint folder: `config.json`, the safetensors weights,
//! `generation_config.json`, and the tokenizer files (`tokenizer.json`, `tokenizer_config.json`,
//! `chat_template.jinja`). Nothing here knows an architecture; [`crate::arch`] does.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::safetensors::{Checkpoint, StTensor};
use serde_json::Value as Json;

/// An opened checkpoint folder.
#[derive(Debug)]
pub struct HfDir {
    pub dir: PathBuf,
    pub config: Json,
    pub weights: Checkpoint,
    pub generation_config: Option<Json>,
    pub tokenizer_json: Option<String>,
    pub tokenizer_config: Option<Json>,
    /// The chat template, from `chat_template.jinja` or `tokenizer_config.json`.
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(json))
}

impl HfDir {
    /// Opens the folder and validates the weight files' headers.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "{} is not a directory (expected a Hugging Face checkpoint folder)",
                dir.display()
            );
        }
        let config = read_json(&dir.join("config.json"))?
            .ok_or_else(|| anyhow!("{}: no config.json", dir.display()))?;
        if !config.is_object() {
            bail!("{}/config.json is not a JSON object", dir.display());
        }
        let weights = Checkpoint::open(dir)?;
        let generation_config = read_json(&dir.join("generation_config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer_json = if tok_path.exists() {
            Some(
                std::fs::read_to_string(&tok_path)
                    .with_context(|| format!("read {}", tok_path.display()))?,
            )
        } else {
            None
        };
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("read {}", jinja.display()))?,
            )
        } else {
            tokenizer_config.as_ref().and_then(template_from_config)
        };
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            weights,
            generation_config,
            tokenizer_json,
            tokenizer_config,
            chat_template,
        })
    }

    /// A tensor that must exist, with the expected row-major shape.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<&StTensor> {
        let (_, t) = self
            .weights
            .get(name)
            .ok_or_else(|| anyhow!("checkpoint has no tensor `{name}`"))?;
        if t.shape != shape {
            bail!(
                "tensor `{name}` has shape {:?}, expected {:?} from config.json",
                t.shape,
                shape
            );
        }
        Ok(t)
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.weights.get(name).is_some()
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.weights.get(name).map(|(_, t)| t.shape.as_slice())
    }

    /// The folder's name, used as the model name.
    pub fn name(&self) -> String {
        self.dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string())
    }
}

fn template_from_config(cfg: &Json) -> Option<String> {
    match cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        // A list of named templates: take the one named "default", else the first.
        Json::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| list.first())?;
            pick.get("template")
                .and_then(Json::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

/// Typed access to `config.json` with errors naming the key.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a>(pub &'a Json);

impl<'a> Config<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| anyhow!("config.json has no `{key}`"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    anyhow!("config.json `{key}` is {v}, expected a non-negative integer")
                }),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| anyhow!("config.json `{key}` is {v}, expected a number")),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| anyhow!("config.json `{key}` is {v}, expected true or false")),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Json::as_str)
    }

    /// A token id: an integer, or the first of a list (HF allows `eos_token_id: [1, 2]`).
    pub fn opt_token_id(&self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let v = match v {
            Json::Array(a) => a.first()?,
            v => v,
        };
        v.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// All token ids of a key that may be an integer or a list.
    pub fn token_ids(&self, key: &str) -> Vec<u32> {
        match self.get(key) {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect(),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }
}

//! Per-architecture mappings from a Hugging Face checkpoint to a model file: which config keys
//! become which metadata keys, which checkpoint tensors become which file tensors (names, shapes,
//! transforms). One file per architecture; `doge.rs` also builds `cheems`, whose DMA and FFN
//! parts are Doge's and whose SSD parts are Mamba-2's (`mamba2.rs`).

mod doge;
mod llama;
mod mamba2;

use anyhow::{bail, Result};
use cheems_formats::gguf::Metadata;
use cheems_formats::GgmlType;
use serde_json::Value as Json;

use crate::hf::{Config, HfDir};
use crate::plan::{Class, Plan, PlannedTensor, Source, Transform};

/// The architectures `cheems quantize` converts.
pub const SUPPORTED: &str = "LlamaForCausalLM, Mamba2ForCausalLM (HF or mamba_ssm names), DogeForCausalLM, CheemsForCausalLM";

/// Recognises the checkpoint's architecture and builds its plan (types not yet assigned).
pub fn plan(hf: &HfDir, opts: &crate::plan::Options) -> Result<Plan> {
    let cfg = Config(&hf.config);
    let declared = cfg
        .get("architectures")
        .and_then(Json::as_array)
        .and_then(|a| a.first())
        .and_then(Json::as_str)
        .map(str::to_string);
    let model_type = cfg.opt_str("model_type").unwrap_or("");
    let is_mamba_ssm = cfg.get("ssm_cfg").is_some() && cfg.get("d_model").is_some();
    let kind = match (declared.as_deref(), model_type) {
        (Some("LlamaForCausalLM"), _) | (None, "llama") => "llama",
        (Some("Mamba2ForCausalLM"), _) | (None, "mamba2") => "mamba2",
        (Some("DogeForCausalLM"), _) | (None, "doge") => "doge",
        (Some("CheemsForCausalLM"), _) | (None, "cheems") => "cheems",
        (None, _) if is_mamba_ssm => "mamba2",
        (Some(other), _) => {
            bail!("unsupported architecture `{other}` in config.json (supported: {SUPPORTED})")
        }
        (None, other) => bail!(
            "config.json names no architecture (model_type `{other}`); supported: {SUPPORTED}"
        ),
    };
    let mut b = Builder::new(hf);
    b.md.set("general.architecture", kind);
    b.md.set("general.type", "model");
    b.md.set("general.name", hf.name());
    match kind {
        "llama" => llama::build(&mut b)?,
        "mamba2" => mamba2::build(&mut b)?,
        "doge" => doge::build(&mut b, false, opts.expert_layout)?,
        _ => doge::build(&mut b, true, opts.expert_layout)?,
    }
    crate::vocab::write_tokenizer(hf, b.n_vocab, &mut b.md)?;
    Ok(Plan {
        arch: kind,
        metadata: b.md,
        tensors: b.tensors,
    })
}

/// Collects metadata and planned tensors while checking shapes against the config.
pub(crate) struct Builder<'a> {
    pub hf: &'a HfDir,
    pub md: Metadata,
    pub tensors: Vec<PlannedTensor>,
    /// Rows of the token embedding (the vocabulary size the file declares).
    pub n_vocab: usize,
}

impl<'a> Builder<'a> {
    fn new(hf: &'a HfDir) -> Self {
        Builder {
            hf,
            md: Metadata::new(),
            tensors: Vec::new(),
            n_vocab: 0,
        }
    }

    pub fn cfg(&self) -> Config<'a> {
        Config(&self.hf.config)
    }

    /// Adds `gguf` from checkpoint tensor `hf` of row-major shape `shape`, stored with ggml dims
    /// reversed from `shape` (or `dims` when given, for reshapes that keep the data order).
    pub fn add(&mut self, gguf: String, hf: &str, shape: &[usize], class: Class) -> Result<()> {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.add_as(gguf, hf, shape, dims, class, Transform::None)
    }

    /// Like [`Builder::add`], with explicit ggml dims and a transform.
    pub fn add_as(
        &mut self,
        gguf: String,
        hf: &str,
        shape: &[usize],
        dims: Vec<u64>,
        class: Class,
        transform: Transform,
    ) -> Result<()> {
        self.hf.tensor(hf, shape)?;
        debug_assert_eq!(
            dims.iter().product::<u64>(),
            shape.iter().map(|&d| d as u64).product::<u64>()
        );
        self.tensors.push(PlannedTensor {
            name: gguf,
            dims,
            class,
            source: Source::Tensor {
                name: hf.to_string(),
                transform,
            },
            ty: GgmlType::F32,
        });
        Ok(())
    }

    /// Adds an optional tensor (a bias) if the checkpoint has it.
    pub fn add_if_present(
        &mut self,
        gguf: String,
        hf: &str,
        shape: &[usize],
        class: Class,
    ) -> Result<()> {
        if self.hf.has(hf) {
            self.add(gguf, hf, shape, class)?;
        }
        Ok(())
    }

    /// Adds a tensor of computed values.
    pub fn add_values(&mut self, gguf: &str, values: Vec<f32>) {
        self.tensors.push(PlannedTensor {
            name: gguf.to_string(),
            dims: vec![values.len() as u64],
            class: Class::Vector,
            source: Source::Values(values),
            ty: GgmlType::F32,
        });
    }

    /// Token embedding, final norm and output head. `tied` is what the config says; a checkpoint
    /// that says untied must have the head.
    pub fn embeddings(
        &mut self,
        embed: &str,
        norm: &str,
        head: &str,
        d_model: usize,
        tied: bool,
    ) -> Result<()> {
        let shape = self
            .hf
            .shape(embed)
            .ok_or_else(|| anyhow::anyhow!("checkpoint has no tensor `{embed}`"))?
            .to_vec();
        let [n_vocab, h] = shape[..] else {
            bail!("`{embed}` has shape {shape:?}, expected [vocab, {d_model}]");
        };
        if h != d_model {
            bail!("`{embed}` has shape {shape:?}, expected [vocab, {d_model}]");
        }
        self.n_vocab = n_vocab;
        let has_head = self.hf.has(head) && !tied;
        if !tied && !self.hf.has(head) {
            bail!(
                "config.json says the embeddings are not tied, but the checkpoint has no `{head}`"
            );
        }
        let embed_class = if has_head {
            Class::Embedding
        } else {
            Class::Output
        };
        self.add(
            "token_embd.weight".into(),
            embed,
            &[n_vocab, d_model],
            embed_class,
        )?;
        self.add("output_norm.weight".into(), norm, &[d_model], Class::Vector)?;
        if has_head {
            self.add(
                "output.weight".into(),
                head,
                &[n_vocab, d_model],
                Class::Output,
            )?;
        }
        Ok(())
    }
}

/// RoPE settings of a config (`rope_theta`, `rope_scaling`, or HF 5.x `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rope {
    pub theta: f64,
    /// `default`, `linear`, `dynamic`, `llama3`, ...
    pub kind: String,
    pub factor: f64,
    pub original_context: Option<usize>,
    pub params: Json,
}

impl Rope {
    pub fn from_config(cfg: Config<'_>) -> Result<Self> {
        let params = cfg
            .get("rope_parameters")
            .or_else(|| cfg.get("rope_scaling"))
            .cloned()
            .unwrap_or(Json::Null);
        let theta = params
            .get("rope_theta")
            .and_then(Json::as_f64)
            .map_or_else(|| cfg.f64_or("rope_theta", 10000.0), Ok)?;
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Json::as_str)
            .unwrap_or("default")
            .to_string();
        let factor = params.get("factor").and_then(Json::as_f64).unwrap_or(1.0);
        let original_context = params
            .get("original_max_position_embeddings")
            .and_then(Json::as_u64)
            .map(|v| v as usize);
        Ok(Rope {
            theta,
            kind,
            factor,
            original_context,
            params,
        })
    }

    /// Writes `<arch>.rope.*` for the kinds llama.cpp names (`none`, `linear`) and the ones cheems
    /// adds (`dynamic`, Doge's NTK scaling).
    pub fn write(
        &self,
        md: &mut Metadata,
        arch: &str,
        max_pos: usize,
        allowed: &[&str],
    ) -> Result<()> {
        md.set(format!("{arch}.rope.freq_base"), self.theta as f32);
        if !allowed.contains(&self.kind.as_str()) {
            bail!(
                "RoPE type `{}` is not supported for {arch} (supported: {})",
                self.kind,
                allowed.join(", ")
            );
        }
        match self.kind.as_str() {
            "default" => {}
            "linear" | "dynamic" => {
                md.set(format!("{arch}.rope.scaling.type"), self.kind.as_str());
                md.set(format!("{arch}.rope.scaling.factor"), self.factor as f32);
                md.set(
                    format!("{arch}.rope.scaling.original_context_length"),
                    self.original_context.unwrap_or(max_pos) as u32,
                );
            }
            // llama3 travels as the `rope_freqs` tensor (see llama.rs).
            _ => {}
        }
        Ok(())
    }
}

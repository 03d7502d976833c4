//! `cheems info <FILE> [--tensors]`: what a model file holds, for people and scripts.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cheems_formats::gguf::{Array, GgufFile, Metadata, Value};
use cheems_formats::GgmlType;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    pub file: PathBuf,
    /// List every tensor (name, type, dims, bytes, offset).
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(a: Args) -> Result<()> {
    let f = GgufFile::open(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    print!("{}", describe(&f, a.tensors));
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// A short rendering of a metadata value (arrays and long strings summarised).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 60 || s.contains('\n') => {
            format!("<text, {} bytes>", s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) if a.len() <= 8 => array_items(a).map_or_else(
            || format!("<{} x {:?}>", a.len(), a.element_type()),
            |items| format!("[{}]", items.join(", ")),
        ),
        Value::Array(a) => format!("<{} x {:?}>", a.len(), a.element_type()),
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
        Value::Bool(b) => format!("{b}"),
        other => other
            .as_i64()
            .map_or_else(|| format!("{other:?}"), |i| i.to_string()),
    }
}

/// The elements of a flat array as strings (`None` for nested arrays).
fn array_items(a: &Array) -> Option<Vec<String>> {
    fn strs<T: std::fmt::Debug>(v: &[T]) -> Vec<String> {
        v.iter().map(|x| format!("{x:?}")).collect()
    }
    Some(match a {
        Array::U8(v) => strs(v),
        Array::I8(v) => strs(v),
        Array::U16(v) => strs(v),
        Array::I16(v) => strs(v),
        Array::U32(v) => strs(v),
        Array::I32(v) => strs(v),
        Array::F32(v) => strs(v),
        Array::Bool(v) => strs(v),
        Array::String(v) => strs(v),
        Array::U64(v) => strs(v),
        Array::I64(v) => strs(v),
        Array::F64(v) => strs(v),
        Array::Array(_) => return None,
    })
}

fn describe(f: &GgufFile, list_tensors: bool) -> String {
    let md = f.metadata();
    let arch = md.get_str("general.architecture").unwrap_or("(none)");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "file:          {} ({}, GGUF v{}, alignment {})",
        f.path()
            .map_or_else(|| "-".into(), |p| p.display().to_string()),
        mib(f.file_size() as u64),
        f.version(),
        f.alignment()
    );
    let _ = writeln!(s, "architecture:  {arch}");
    for key in [
        "general.name",
        "general.file_type",
        "general.quantization_version",
    ] {
        if let Some(v) = md.get(key) {
            let _ = writeln!(
                s,
                "{:<15}{}",
                format!(
                    "{}:",
                    key.trim_start_matches("general.")
                        .replace("quantization_version", "quant version")
                ),
                show(v)
            );
        }
    }
    let _ = writeln!(s, "hyper-parameters:");
    let prefix = format!("{arch}.");
    for (k, v) in md.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let _ = writeln!(s, "  {:<40} {}", &k[prefix.len()..], show(v));
    }
    let _ = writeln!(s, "tokenizer:     {}", tokenizer_line(md));
    let _ = writeln!(
        s,
        "chat template: {}",
        md.get_str("tokenizer.chat_template").map_or_else(
            |_| "none".to_string(),
            |t| format!("yes ({} bytes)", t.len())
        )
    );
    let others: Vec<&str> = md
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !k.starts_with(&prefix) && !k.starts_with("general.") && !k.starts_with("tokenizer.")
        })
        .collect();
    if !others.is_empty() {
        let _ = writeln!(s, "other keys:    {}", others.join(", "));
    }

    // Tensor summary by type.
    let mut rows: Vec<(GgmlType, usize, u64, u64)> = Vec::new();
    for t in f.tensors() {
        let n = t.n_elements();
        match rows.iter_mut().find(|r| r.0 == t.ggml_type) {
            Some(r) => {
                r.1 += 1;
                r.2 += n;
                r.3 += t.size as u64;
            }
            None => rows.push((t.ggml_type, 1, n, t.size as u64)),
        }
    }
    let total: u64 = rows.iter().map(|r| r.3).sum();
    let params: u64 = rows.iter().map(|r| r.2).sum();
    let _ = writeln!(
        s,
        "tensors:       {} tensors, {} parameters, {}",
        f.tensors().len(),
        params,
        mib(total)
    );
    let _ = writeln!(
        s,
        "  {:<8} {:>8} {:>14} {:>12} {:>7}",
        "type", "tensors", "params", "MiB", "bpw"
    );
    for (ty, n, e, b) in rows {
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>14} {:>12.2} {:>7.3}",
            ty.to_string(),
            n,
            e,
            b as f64 / (1u64 << 20) as f64,
            b as f64 * 8.0 / e.max(1) as f64
        );
    }
    if list_tensors {
        let _ = writeln!(
            s,
            "  {:<40} {:<7} {:<22} {:>12} {:>12}",
            "name", "type", "dims", "bytes", "offset"
        );
        for t in f.tensors() {
            let dims = format!("{:?}", t.dims);
            let _ = writeln!(
                s,
                "  {:<40} {:<7} {:<22} {:>12} {:>12}",
                t.name,
                t.ggml_type.to_string(),
                dims,
                t.size,
                f.data_offset() as u64 + t.offset
            );
        }
    }
    s
}

fn tokenizer_line(md: &Metadata) -> String {
    let model = md.get_str("tokenizer.ggml.model").unwrap_or("(none)");
    let mut parts = vec![format!("model {model}")];
    if let Ok(pre) = md.get_str("tokenizer.ggml.pre") {
        parts.push(format!("pre {pre}"));
    }
    if let Ok(Array::String(tokens)) = md.get_array("tokenizer.ggml.tokens") {
        parts.push(format!("{} tokens", tokens.len()));
    }
    if let Ok(Array::String(merges)) = md.get_array("tokenizer.ggml.merges") {
        parts.push(format!("{} merges", merges.len()));
    }
    for (name, key) in [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("eot", "tokenizer.ggml.eot_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Ok(id) = md.get_u32(key) {
            parts.push(format!("{name} {id}"));
        }
    }
    parts.push(format!(
        "HF tokenizer.json {}",
        if md.contains("tokenizer.huggingface.json") {
            "yes"
        } else {
            "no"
        }
    ));
    parts.join(", ")
}

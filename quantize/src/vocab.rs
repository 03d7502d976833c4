//! The tokenizer's travel into the model file.
//!
//! Always: the whole `tokenizer.json` under `tokenizer.huggingface.json` and the chat template
//! under `tokenizer.chat_template`. For byte-level BPE tokenizers also the `tokenizer.ggml.*` keys
//! llama.cpp reads (tokens, token types, merges, special ids, `pre`), filled the way llama.cpp's
//! converter fills them, so the file tokenizes the same in llama.cpp. Other tokenizer kinds get
//! `tokenizer.ggml.model = "none"` (the HF JSON still carries them for cheems).

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::gguf::{Metadata, Value};
use serde_json::Value as Json;

use crate::hf::{Config, HfDir};

/// llama.cpp's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// The Llama-3 pre-tokenizer regex (`llama-bpe` in llama.cpp).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Writes the tokenizer keys for a model whose embedding has `n_vocab` rows.
pub fn write_tokenizer(hf: &HfDir, n_vocab: usize, md: &mut Metadata) -> Result<()> {
    if let Some(t) = &hf.chat_template {
        md.set("tokenizer.chat_template", t.as_str());
    }
    let Some(text) = &hf.tokenizer_json else {
        md.set("tokenizer.ggml.model", "none");
        return Ok(());
    };
    let tok: Json = serde_json::from_str(text).context("tokenizer.json is not valid JSON")?;
    md.set("tokenizer.huggingface.json", text.as_str());

    let model = tok
        .get("model")
        .ok_or_else(|| anyhow!("tokenizer.json has no `model`"))?;
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| anyhow!("tokenizer.json model has no `vocab` table"))?;
    let is_byte_level_bpe =
        model.get("type").and_then(Json::as_str) == Some("BPE") && uses_byte_level(&tok);

    // Token strings by id: the model vocabulary, then added tokens, then padding.
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TOKEN_UNUSED; n_vocab];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let i = usize::try_from(id).ok().filter(|&i| i < n_vocab).ok_or_else(|| {
            anyhow!("tokenizer.json has token id {id} (`{text}`), but the model's embedding has only {n_vocab} rows")
        })?;
        tokens[i] = Some(text.to_string());
        types[i] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| anyhow!("tokenizer.json vocab entry `{text}` has a non-integer id"))?;
        place(id, text, TOKEN_NORMAL)?;
    }
    let mut added = Vec::new();
    if let Some(list) = tok.get("added_tokens").and_then(Json::as_array) {
        for a in list {
            let (Some(id), Some(content)) = (
                a.get("id").and_then(Json::as_u64),
                a.get("content").and_then(Json::as_str),
            ) else {
                bail!("tokenizer.json: an added token lacks `id` or `content`");
            };
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            place(
                id,
                content,
                if special {
                    TOKEN_CONTROL
                } else {
                    TOKEN_USER_DEFINED
                },
            )?;
            added.push((content.to_string(), id as u32));
        }
    }
    let find_id = |content: &str| -> Option<u32> {
        added
            .iter()
            .find(|(c, _)| c == content)
            .map(|&(_, id)| id)
            .or_else(|| vocab.get(content).and_then(Json::as_u64).map(|v| v as u32))
    };

    // Special ids: tokenizer_config.json names them by content; config.json by id.
    let tcfg = hf.tokenizer_config.as_ref();
    let cfg = Config(&hf.config);
    let special = |key: &str, id_key: &str| -> Option<u32> {
        tcfg.and_then(|c| c.get(key))
            .and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(Json::as_str))
            })
            .and_then(find_id)
            .or_else(|| cfg.opt_token_id(id_key))
            .filter(|&id| (id as usize) < n_vocab)
    };
    let bos = special("bos_token", "bos_token_id");
    let eos = special("eos_token", "eos_token_id");
    if let Some(id) = bos {
        md.set("tokenizer.ggml.bos_token_id", id);
    }
    if let Some(id) = eos {
        md.set("tokenizer.ggml.eos_token_id", id);
    }
    if let Some(id) = special("pad_token", "pad_token_id") {
        md.set("tokenizer.ggml.padding_token_id", id);
    }
    if let Some(id) = special("unk_token", "unk_token_id") {
        md.set("tokenizer.ggml.unknown_token_id", id);
    }
    // An end-of-turn token other than eos (e.g. ChatML's <|im_end|>), from generation_config.json.
    if let Some(gen) = &hf.generation_config {
        let eot = Config(gen)
            .token_ids("eos_token_id")
            .into_iter()
            .find(|&id| Some(id) != eos && (id as usize) < n_vocab);
        if let Some(id) = eot {
            md.set("tokenizer.ggml.eot_token_id", id);
        }
    }
    let (add_bos, add_eos) = post_processor_adds(&tok);
    let flag = |key: &str| tcfg.and_then(|c| c.get(key)).and_then(Json::as_bool);
    md.set(
        "tokenizer.ggml.add_bos_token",
        flag("add_bos_token").unwrap_or(add_bos),
    );
    md.set(
        "tokenizer.ggml.add_eos_token",
        flag("add_eos_token").unwrap_or(add_eos),
    );

    if !is_byte_level_bpe {
        md.set("tokenizer.ggml.model", "none");
        return Ok(());
    }
    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Some(s.clone()),
                Json::Array(pair) if pair.len() == 2 => {
                    Some(format!("{} {}", pair[0].as_str()?, pair[1].as_str()?))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow!("tokenizer.json merges are neither strings nor pairs"))?,
        None => Vec::new(),
    };
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    md.set("tokenizer.ggml.model", "gpt2");
    md.set("tokenizer.ggml.pre", pre_tokenizer_name(&tok));
    md.set("tokenizer.ggml.tokens", tokens);
    md.set("tokenizer.ggml.token_type", Value::from(types));
    md.set("tokenizer.ggml.merges", merges);
    Ok(())
}

fn uses_byte_level(tok: &Json) -> bool {
    let is_bl = |v: &Json| v.get("type").and_then(Json::as_str) == Some("ByteLevel");
    let in_seq = |v: Option<&Json>| match v {
        Some(v) if is_bl(v) => true,
        Some(v) => v
            .get("pretokenizers")
            .or_else(|| v.get("decoders"))
            .and_then(Json::as_array)
            .is_some_and(|l| l.iter().any(is_bl)),
        None => false,
    };
    in_seq(tok.get("pre_tokenizer")) || in_seq(tok.get("decoder"))
}

/// llama.cpp's name for the pre-tokenizer, recognised from its definition (llama.cpp itself
/// hashes the tokenizer's output on a test text; these are the definitions behind the names
/// cheems supports).
fn pre_tokenizer_name(tok: &Json) -> &'static str {
    let Some(pre) = tok.get("pre_tokenizer") else {
        return "default";
    };
    fn ty(v: &Json) -> &str {
        v.get("type").and_then(Json::as_str).unwrap_or("")
    }
    if ty(pre) == "ByteLevel" && pre.get("use_regex").and_then(Json::as_bool) != Some(false) {
        return "gpt-2";
    }
    let Some(list) = pre.get("pretokenizers").and_then(Json::as_array) else {
        return "default";
    };
    let regex = |v: &Json| {
        v.get("pattern")
            .and_then(|p| p.get("Regex"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    match list.as_slice() {
        [split, bl]
            if ty(split) == "Split"
                && ty(bl) == "ByteLevel"
                && regex(split).as_deref() == Some(LLAMA3_REGEX) =>
        {
            "llama-bpe"
        }
        [digits, bl]
            if ty(digits) == "Digits"
                && digits.get("individual_digits").and_then(Json::as_bool) == Some(true)
                && ty(bl) == "ByteLevel" =>
        {
            "smollm"
        }
        _ => "default",
    }
}

/// Whether the post-processor adds a special token before / after a single sequence.
fn post_processor_adds(tok: &Json) -> (bool, bool) {
    let Some(pp) = tok.get("post_processor") else {
        return (false, false);
    };
    let single = pp.get("single").and_then(Json::as_array).or_else(|| {
        pp.get("processors")
            .and_then(Json::as_array)?
            .iter()
            .find_map(|p| p.get("single").and_then(Json::as_array))
    });
    let Some(single) = single else {
        return (false, false);
    };
    let is_special = |v: Option<&Json>| v.is_some_and(|v| v.get("SpecialToken").is_some());
    (is_special(single.first()), is_special(single.last()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recognises_pre_tokenizers() {
        let gpt2: Json = serde_json::json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}});
        assert_eq!(pre_tokenizer_name(&gpt2), "gpt-2");
        let llama3: Json = serde_json::json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}});
        assert_eq!(pre_tokenizer_name(&llama3), "llama-bpe");
        let smollm: Json = serde_json::json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]}});
        assert_eq!(pre_tokenizer_name(&smollm), "smollm");
        assert!(uses_byte_level(&smollm));
    }

    #[test]
    fn detects_added_bos() {
        let tok: Json = serde_json::json!({"post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}});
        assert_eq!(post_processor_adds(&tok), (true, false));
    }
}

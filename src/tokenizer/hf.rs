//! The Hugging Face path: `tokenizer.huggingface.json` loaded by the `tokenizers` crate (built
//! with `fancy-regex` instead of Oniguruma, so no C code), which encodes. What `mod.rs` needs
//! besides — the text and kind of every id, and the bytes each token stands for — is read from
//! the loaded tokenizer here.
//!
//! Token bytes follow the tokenizer's decoder, token by token: with a `ByteLevel` decoder a token
//! is spelled in GPT-2's byte alphabet and stands for those bytes (a token with a character
//! outside the alphabet, such as an added token with a space, stands for its UTF-8 text, as the
//! `ByteLevel` decoder does). Otherwise `<0xAB>` is the byte 0xAB under `ByteFallback`, `▁` is a
//! space under `Metaspace` or `Replace("▁", " ")`, and any other token stands for its text.
//! Decoder steps that look at the whole sequence (`Strip`, Metaspace's dropping of the first
//! space, WordPiece's `##` joins, `clean_up_tokenization_spaces`) are not applied.

use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use serde_json::Value as Json;

use super::{bytes, TokenKind};

/// How a token's text becomes bytes, from the decoder of `tokenizer.json`.
#[derive(Clone, Copy, Debug, Default)]
struct PieceRule {
    byte_level: bool,
    metaspace: bool,
    byte_fallback: bool,
}

impl PieceRule {
    fn of(decoder: Option<&Json>) -> Self {
        let mut rule = PieceRule::default();
        fn visit(d: &Json, rule: &mut PieceRule) {
            match d.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => rule.byte_level = true,
                Some("Metaspace") => rule.metaspace = true,
                Some("ByteFallback") => rule.byte_fallback = true,
                Some("Replace") => {
                    let pattern = d
                        .get("pattern")
                        .and_then(|p| p.get("String"))
                        .and_then(Json::as_str);
                    let content = d.get("content").and_then(Json::as_str);
                    if pattern == Some("▁") && content == Some(" ") {
                        rule.metaspace = true;
                    }
                }
                Some("Sequence") => {
                    for d in d
                        .get("decoders")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        visit(d, rule);
                    }
                }
                _ => {}
            }
        }
        if let Some(d) = decoder {
            visit(d, &mut rule);
        }
        rule
    }

    fn bytes(self, text: &str, out: &mut Vec<u8>) {
        if self.byte_level {
            match bytes::decode(text) {
                Some(b) => out.extend_from_slice(&b),
                None => out.extend_from_slice(text.as_bytes()),
            }
            return;
        }
        if self.byte_fallback {
            if let Some(b) = byte_fallback(text) {
                out.push(b);
                return;
            }
        }
        if self.metaspace {
            out.extend_from_slice(text.replace('▁', " ").as_bytes());
        } else {
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// The byte of a `<0xAB>` token.
fn byte_fallback(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A loaded `tokenizer.json` and what `mod.rs` keeps of it.
pub(crate) struct Loaded {
    pub(crate) tokenizer: tokenizers::Tokenizer,
    /// Number of ids: one past the largest id of the vocabulary and the added tokens.
    pub(crate) n_ids: usize,
    /// The kind of each id below `n_ids`.
    pub(crate) kinds: Vec<TokenKind>,
    /// The bytes of each id below `n_ids`, back to back, and where each starts (`n_ids + 1`).
    pub(crate) bytes: Vec<u8>,
    pub(crate) offsets: Vec<usize>,
}

/// Loads `tokenizer.json` text.
pub(crate) fn load(json: &str) -> Result<Loaded> {
    let tokenizer = tokenizers::Tokenizer::from_str(json).map_err(|e| {
        anyhow!("tokenizer.huggingface.json cannot be loaded by the tokenizers crate: {e}")
    })?;
    // The decoder's own JSON (small) rather than the whole document again.
    let decoder = tokenizer
        .get_decoder()
        .map(serde_json::to_value)
        .transpose()
        .context("serializing the tokenizer's decoder")?;
    let rule = PieceRule::of(decoder.as_ref());

    let vocab = tokenizer.get_vocab(false);
    let added = tokenizer.get_added_tokens_decoder();
    let n_ids = vocab
        .values()
        .chain(added.keys())
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    let mut texts: Vec<Option<&str>> = vec![None; n_ids];
    let mut kinds = vec![TokenKind::Unused; n_ids];
    for (text, &id) in &vocab {
        texts[id as usize] = Some(text);
        kinds[id as usize] = TokenKind::Normal;
    }
    // An added token wins over a vocabulary entry of the same id, as in `Tokenizer::decode`.
    for (&id, token) in &added {
        texts[id as usize] = Some(&token.content);
        kinds[id as usize] = if token.special {
            TokenKind::Control
        } else {
            TokenKind::UserDefined
        };
    }
    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity(n_ids + 1);
    offsets.push(0);
    for text in &texts {
        if let Some(text) = text {
            rule.bytes(text, &mut bytes);
        }
        offsets.push(bytes.len());
    }
    Ok(Loaded {
        tokenizer,
        n_ids,
        kinds,
        bytes,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_style_pieces() {
        let decoder = serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
        let rule = PieceRule::of(Some(&decoder));
        let mut out = Vec::new();
        rule.bytes("▁Hello", &mut out);
        rule.bytes("<0xE4>", &mut out);
        rule.bytes("<0x4>", &mut out);
        assert_eq!(out, b" Hello\xE4<0x4>");
    }

    #[test]
    fn byte_level_pieces_fall_back_to_text() {
        let rule = PieceRule::of(Some(&serde_json::json!({"type": "ByteLevel"})));
        let mut out = Vec::new();
        rule.bytes("ĠhiĊ", &mut out);
        rule.bytes("two words", &mut out);
        assert_eq!(out, b" hi\ntwo words");
    }
}

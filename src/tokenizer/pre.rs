//! Pre-tokenizers of the ggml byte-level BPE: the text between special tokens is cut into pieces
//! by a list of regexes before BPE runs on each piece, as llama.cpp's `unicode_regex_split` does.
//! Each regex cuts every piece of the previous one; both its matches and the text between them
//! become pieces, so no text is lost.
//!
//! The regexes are llama.cpp's (`llama-vocab.cpp`, `llm_tokenizer_bpe`) for the names that
//! `tokenizer.ggml.pre` carries. Lookahead (`\s+(?!\S)`) needs a backtracking engine:
//! `fancy-regex`, the engine the `tokenizers` crate uses without Oniguruma, so the Hugging Face
//! path and this one read the regexes alike. Only the splitting lives here; BPE is in `bpe.rs`.

use anyhow::{anyhow, Result};
use fancy_regex::Regex;

/// GPT-2's pre-tokenizer regex (also the one of the Hugging Face `ByteLevel` pre-tokenizer).
/// llama.cpp drops the final `|\s+`; without it the unmatched whitespace becomes a piece of its
/// own anyway, so the pieces are the same.
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama-3's pre-tokenizer regex, as written in its `tokenizer.json`.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer named by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pre {
    /// `gpt-2`: GPT-2's regex.
    Gpt2,
    /// `llama-bpe` (also `llama3`, `llama-v3`): Llama-3's regex. BPE skips merging a piece that
    /// is a token as a whole (llama.cpp's `ignore_merges`, the `tokenizer.json` flag of Llama 3).
    Llama3,
    /// `smollm`: every digit (`\p{N}`) a piece of its own, then GPT-2's regex; the Hugging Face
    /// pre-tokenizer `Sequence[Digits(individual_digits), ByteLevel(use_regex)]`.
    SmolLm,
    /// `default` (or an empty name): llama.cpp's fallback list: runs of punctuation and
    /// `$+<=>^~|`, GPT-2's regex, runs of digits, then groups of three ASCII digits.
    Default,
}

impl Pre {
    /// The pre-tokenizer of a `tokenizer.ggml.pre` value, if cheems knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt-2" => Pre::Gpt2,
            "llama-bpe" | "llama3" | "llama-v3" => Pre::Llama3,
            "smollm" => Pre::SmolLm,
            "default" | "" => Pre::Default,
            _ => return None,
        })
    }

    /// The name llama.cpp gives it.
    pub fn name(self) -> &'static str {
        match self {
            Pre::Gpt2 => "gpt-2",
            Pre::Llama3 => "llama-bpe",
            Pre::SmolLm => "smollm",
            Pre::Default => "default",
        }
    }

    /// Whether BPE emits a piece that is a token as a whole without merging (llama.cpp sets
    /// `ignore_merges` for Llama 3 only, among these).
    pub fn ignore_merges(self) -> bool {
        self == Pre::Llama3
    }

    /// llama.cpp's `add_bos` when the file has no `tokenizer.ggml.add_bos_token`.
    pub fn adds_bos_by_default(self) -> bool {
        self == Pre::Llama3
    }

    fn regexes(self) -> &'static [&'static str] {
        match self {
            Pre::Gpt2 => &[GPT2_REGEX],
            Pre::Llama3 => &[LLAMA3_REGEX],
            Pre::SmolLm => &[r"\p{N}", GPT2_REGEX],
            Pre::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
        }
    }
}

/// A compiled pre-tokenizer.
#[derive(Debug)]
pub struct PreTokenizer {
    pre: Pre,
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// Compiles the regexes of `pre`.
    pub fn new(pre: Pre) -> Result<Self> {
        let regexes = pre
            .regexes()
            .iter()
            .map(|r| {
                Regex::new(r)
                    .map_err(|e| anyhow!("pre-tokenizer `{}`: regex {r:?}: {e}", pre.name()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { pre, regexes })
    }

    /// Which pre-tokenizer this is.
    pub fn pre(&self) -> Pre {
        self.pre
    }

    /// Cuts `text` into pieces (non-empty, in order, together exactly `text`).
    pub fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut pieces = Vec::new();
        self.split_into(text, &mut pieces)?;
        Ok(pieces)
    }

    /// [`split`](Self::split), appending to `out` (which it uses as scratch: pieces already in
    /// `out` are kept).
    pub fn split_into<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let first = out.len();
        out.push(text);
        let mut next = Vec::new();
        for re in &self.regexes {
            next.clear();
            for &piece in &out[first..] {
                let mut at = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| {
                        anyhow!(
                            "pre-tokenizer `{}`: regex failed on a piece of {} bytes: {e}",
                            self.pre.name(),
                            piece.len()
                        )
                    })?;
                    if m.start() > at {
                        next.push(&piece[at..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    at = m.end();
                }
                if at < piece.len() {
                    next.push(&piece[at..]);
                }
            }
            out.truncate(first);
            out.extend_from_slice(&next);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(pre: Pre, text: &str) -> Vec<&str> {
        PreTokenizer::new(pre).unwrap().split(text).unwrap()
    }

    #[test]
    fn gpt2_keeps_one_space_for_the_next_word() {
        assert_eq!(split(Pre::Gpt2, "a   b  "), ["a", "  ", " b", "  "]);
        assert_eq!(split(Pre::Gpt2, "it's 12345!"), ["it", "'s", " 12345", "!"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(
            split(Pre::Llama3, "x12345 IT'S"),
            ["x", "123", "45", " IT", "'S"]
        );
        assert_eq!(split(Pre::Llama3, "a\n\n b"), ["a", "\n\n", " b"]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(split(Pre::SmolLm, "a 123b"), ["a", " ", "1", "2", "3", "b"]);
    }

    #[test]
    fn default_isolates_punctuation_and_digit_triples() {
        assert_eq!(
            split(Pre::Default, "a, 12345"),
            ["a", ",", " ", "123", "45"]
        );
    }

    #[test]
    fn pieces_cover_the_text() {
        for pre in [Pre::Gpt2, Pre::Llama3, Pre::SmolLm, Pre::Default] {
            let text = "  Hi!! 42\t\n\n  ünï 中文 🐶 's\r\n";
            assert_eq!(split(pre, text).concat(), text, "{pre:?}");
            assert!(split(pre, "").is_empty());
        }
    }
}

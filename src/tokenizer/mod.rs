//! Text to token ids and back, with the tokenizer the model file carries.
//!
//! [`Tokenizer::from_metadata`] prefers `tokenizer.huggingface.json` (the whole `tokenizer.json`
//! that `cheems quantize` stores), run by the Hugging Face `tokenizers` crate. Files made by
//! llama.cpp's converter lack it; for them cheems builds the byte-level BPE (`tokenizer.ggml.model
//! = "gpt2"`) from `tokenizer.ggml.tokens`, `token_type` and `merges`, with the pre-tokenizer
//! that `tokenizer.ggml.pre` names (`gpt-2`, `llama-bpe`, `smollm`, `default`; see [`Pre`]).
//! Both paths share what comes after encoding: the bytes of each token, decoding, streaming
//! ([`StreamDecoder`]) and the special ids, which always come from the `tokenizer.ggml.*` keys.
//!
//! Submodules: `bytes` (GPT-2's byte alphabet), `pre` (pre-tokenizer regexes), `bpe` (the ggml
//! BPE encoder), `hf` (the `tokenizers` crate path), `stream` (incremental UTF-8). Chat templates
//! and sampling live elsewhere.

mod bpe;
mod bytes;
mod hf;
mod pre;
mod stream;

use std::borrow::Cow;
use std::fmt;

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::gguf::Metadata;

pub use pre::{Pre, PreTokenizer, GPT2_REGEX, LLAMA3_REGEX};
pub use stream::StreamDecoder;

/// Key of the whole `tokenizer.json`.
pub const HF_JSON_KEY: &str = "tokenizer.huggingface.json";

/// What a token id is, as llama.cpp's token types (`tokenizer.ggml.token_type`) say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A vocabulary token (type 1; also types 2 "unknown" and 6 "byte").
    Normal,
    /// A special token such as `<|im_start|>` or `<|endoftext|>` (type 3; a Hugging Face added
    /// token with `special: true`).
    Control,
    /// A non-special added token (type 4).
    UserDefined,
    /// An id the tokenizer does not use, such as the padding rows of an embedding (type 5,
    /// `[PAD<id>]`); it stands for no bytes.
    Unused,
}

/// Where a [`Tokenizer`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `tokenizer.huggingface.json`, through the `tokenizers` crate.
    HuggingFace,
    /// `tokenizer.ggml.*` byte-level BPE with this pre-tokenizer.
    GgmlBpe(Pre),
}

enum Encoder {
    Hf(Box<tokenizers::Tokenizer>),
    Bpe(Box<bpe::Bpe>),
}

/// A model's tokenizer. Immutable once loaded; share it between threads.
///
/// Ids run from 0 to [`n_vocab`](Self::n_vocab); every id has bytes (maybe none) and a kind.
pub struct Tokenizer {
    encoder: Encoder,
    /// Bytes of all tokens back to back; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    /// `n_vocab + 1` offsets into `bytes`.
    offsets: Vec<usize>,
    /// `[n_vocab]`
    kinds: Vec<TokenKind>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    /// eos, eot, eom: those present, without repeats.
    stop: Vec<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    add_bos: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source())
            .field("n_vocab", &self.n_vocab())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop", &self.stop)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// The ids and flags that come from `tokenizer.ggml.*` whatever the path.
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_bos: bool,
}

impl Specials {
    fn read(md: &Metadata, n_vocab: usize) -> Result<Self> {
        let id = |key: &str| -> Result<Option<u32>> {
            let Some(id) = md.opt_u32(key)? else {
                return Ok(None);
            };
            if id as usize >= n_vocab {
                bail!("{key} = {id}, but the vocabulary has {n_vocab} tokens");
            }
            Ok(Some(id))
        };
        // llama.cpp's default when the key is absent: only Llama 3's pre-tokenizer adds BOS.
        let pre = md.opt_str("tokenizer.ggml.pre")?.and_then(Pre::from_name);
        let add_bos = match md.opt_bool("tokenizer.ggml.add_bos_token")? {
            Some(flag) => flag,
            None => pre.is_some_and(Pre::adds_bos_by_default),
        };
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            add_bos,
        })
    }
}

impl Tokenizer {
    /// The tokenizer of a model file: `tokenizer.huggingface.json` when the file has it, else
    /// the byte-level BPE of `tokenizer.ggml.*` (`tokenizer.ggml.model = "gpt2"`).
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        if let Some(json) = md.opt_str(HF_JSON_KEY)? {
            return Self::from_hf_json(json, md);
        }
        match md.opt_str("tokenizer.ggml.model")? {
            Some("gpt2") => Self::from_ggml(md),
            Some(other) => bail!(
                "tokenizer.ggml.model = {other:?} is not supported without {HF_JSON_KEY}: \
                 cheems builds only byte-level BPE (\"gpt2\") from tokenizer.ggml.*"
            ),
            None => bail!(
                "the model file has no tokenizer: neither {HF_JSON_KEY} nor tokenizer.ggml.model"
            ),
        }
    }

    /// The Hugging Face path: `json` is a `tokenizer.json`; special ids and `add_bos_token` come
    /// from `md`. The vocabulary is as large as the JSON's largest id or `tokenizer.ggml.tokens`,
    /// whichever is larger (an embedding may have padding rows past the tokenizer's ids).
    pub fn from_hf_json(json: &str, md: &Metadata) -> Result<Self> {
        let loaded = hf::load(json)?;
        let n_ggml = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len());
        let n_vocab = loaded.n_ids.max(n_ggml);
        let mut kinds = loaded.kinds;
        kinds.resize(n_vocab, TokenKind::Unused);
        let mut offsets = loaded.offsets;
        offsets.resize(n_vocab + 1, loaded.bytes.len());
        let specials = Specials::read(md, n_vocab)?;
        Ok(Self::assemble(
            Encoder::Hf(Box::new(loaded.tokenizer)),
            loaded.bytes,
            offsets,
            kinds,
            specials,
        ))
    }

    /// The ggml path: byte-level BPE from `tokenizer.ggml.tokens`, `token_type` (optional: all
    /// normal), `merges` and `pre`, whatever else the file carries.
    pub fn from_ggml(md: &Metadata) -> Result<Self> {
        let model = md.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!(
                "tokenizer.ggml.model = {model:?}: cheems builds only byte-level BPE (\"gpt2\") \
                 from tokenizer.ggml.*"
            );
        }
        let pre_name = md.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre = Pre::from_name(pre_name).ok_or_else(|| {
            anyhow!(
                "tokenizer.ggml.pre = {pre_name:?} is not supported \
                 (cheems knows gpt-2, llama-bpe, smollm, default)"
            )
        })?;
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
        let n_vocab = tokens.len();
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => {
                let types = md.get_i32_array("tokenizer.ggml.token_type")?;
                if types.len() != n_vocab {
                    bail!(
                        "tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens {n_vocab}",
                        types.len()
                    );
                }
                types.to_vec()
            }
            None => vec![1; n_vocab],
        };
        let merges = match md.get("tokenizer.ggml.merges") {
            Some(_) => md.get_str_array("tokenizer.ggml.merges")?,
            None => &[],
        };
        let kinds: Vec<TokenKind> = types
            .iter()
            .map(|&t| match t {
                3 => TokenKind::Control,
                4 => TokenKind::UserDefined,
                5 => TokenKind::Unused,
                _ => TokenKind::Normal,
            })
            .collect();
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n_vocab + 1);
        offsets.push(0);
        for (text, kind) in tokens.iter().zip(&kinds) {
            match kind {
                // As llama.cpp's token_to_piece: byte-level spelling for vocabulary tokens (UTF-8
                // text for one outside the alphabet, as the Hugging Face ByteLevel decoder does),
                // the text itself for special and added tokens, nothing for unused ids.
                TokenKind::Normal => match bytes::decode(text) {
                    Some(b) => bytes.extend_from_slice(&b),
                    None => bytes.extend_from_slice(text.as_bytes()),
                },
                TokenKind::Control | TokenKind::UserDefined => {
                    bytes.extend_from_slice(text.as_bytes())
                }
                TokenKind::Unused => {}
            }
            offsets.push(bytes.len());
        }
        let special_ids: Vec<u32> = kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| matches!(k, TokenKind::Control | TokenKind::UserDefined))
            .map(|(id, _)| id as u32)
            .collect();
        let bpe = bpe::Bpe::new(tokens, merges, &special_ids, pre)
            .context("building the ggml BPE tokenizer")?;
        let specials = Specials::read(md, n_vocab)?;
        Ok(Self::assemble(
            Encoder::Bpe(Box::new(bpe)),
            bytes,
            offsets,
            kinds,
            specials,
        ))
    }

    fn assemble(
        encoder: Encoder,
        bytes: Vec<u8>,
        offsets: Vec<usize>,
        kinds: Vec<TokenKind>,
        s: Specials,
    ) -> Self {
        let mut stop = Vec::new();
        for id in [s.eos, s.eot, s.eom].into_iter().flatten() {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        Self {
            encoder,
            bytes,
            offsets,
            kinds,
            bos: s.bos,
            eos: s.eos,
            eot: s.eot,
            eom: s.eom,
            stop,
            add_bos: s.add_bos,
        }
    }

    /// Which path this tokenizer takes.
    pub fn source(&self) -> Source {
        match &self.encoder {
            Encoder::Hf(_) => Source::HuggingFace,
            Encoder::Bpe(b) => Source::GgmlBpe(b.pre()),
        }
    }

    /// The token ids of `text`.
    ///
    /// Special and added tokens written in the text (`<|im_start|>`, `<|eot_id|>`) are single
    /// ids, as for a rendered chat template (llama.cpp's `parse_special = true`; Hugging Face's
    /// default). With `add_bos`, BOS goes first if and only if the model file says
    /// `tokenizer.ggml.add_bos_token = true` (when the key is absent: llama.cpp's default, true
    /// for the `llama-bpe` pre-tokenizer only), the file has a BOS id, and the text's own first
    /// token is not already BOS (a template that writes `<|begin_of_text|>` gets one BOS, not
    /// two). EOS is never appended: `add_eos_token` is for training-style inputs, not prompts.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        let start = ids.len();
        match &self.encoder {
            Encoder::Hf(t) => {
                let enc = t
                    .encode_fast(text, false)
                    .map_err(|e| anyhow!("tokenizing {} bytes of text: {e}", text.len()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Encoder::Bpe(b) => b
                .encode(text, &mut ids)
                .with_context(|| format!("tokenizing {} bytes of text", text.len()))?,
        }
        if start == 1 && ids.get(1) == self.bos.as_ref() {
            ids.remove(0);
        }
        Ok(ids)
    }

    /// The text of `ids`: their bytes joined, with byte sequences that are not UTF-8 replaced by
    /// U+FFFD (`String::from_utf8_lossy`). Nothing is skipped: control tokens are their text
    /// (`<|im_end|>`), unused ids are empty. Errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.piece(id)?);
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn piece(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes_slice(id).ok_or_else(|| {
            anyhow!(
                "token id {id} is out of range: the vocabulary has {} tokens",
                self.n_vocab()
            )
        })
    }

    fn token_bytes_slice(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (&start, &end) = (self.offsets.get(i)?, self.offsets.get(i + 1)?);
        self.bytes.get(start..end)
    }

    /// The bytes token `id` stands for (after byte-level decoding; the text of a control token;
    /// empty for an unused id), or `None` outside the vocabulary. A token may hold part of a
    /// UTF-8 character: use [`StreamDecoder`] to print tokens as they come.
    pub fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        self.token_bytes_slice(id).map(Cow::Borrowed)
    }

    /// The id of a token string as the vocabulary spells it (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.encoder {
            Encoder::Hf(t) => t.token_to_id(token),
            Encoder::Bpe(b) => b.token_id(token),
        }
    }

    /// Number of ids.
    pub fn n_vocab(&self) -> usize {
        self.kinds.len()
    }

    /// What `id` is, or `None` outside the vocabulary.
    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Whether `id` is a control (special) token.
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == Some(TokenKind::Control)
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// `tokenizer.ggml.eot_token_id`: an end of turn other than eos (ChatML's `<|im_end|>`).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// `tokenizer.ggml.eom_token_id`: end of message (Llama 3.1's `<|eom_id|>`).
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    /// Whether [`encode`](Self::encode) with `add_bos` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The ids that end generation: eos, eot and eom, those the file names, in that order.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.contains(&id)
    }
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Tokenizer>();
};

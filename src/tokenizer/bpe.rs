//! The byte-level BPE of files that carry only `tokenizer.ggml.*` (llama.cpp's `gpt2` tokenizer
//! model), written to tokenize as llama.cpp's `llm_tokenizer_bpe` and the Hugging Face `BPE`
//! model with a `ByteLevel` pre-tokenizer do:
//!
//! 1. control and user-defined tokens written in the text are cut out first and become their
//!    own ids (leftmost, then longest match, as Hugging Face's added-token matcher);
//! 2. the text between them is cut into pieces by the pre-tokenizer (`pre.rs`);
//! 3. each piece is spelled in GPT-2's byte alphabet (`bytes.rs`), one symbol per byte;
//! 4. with `ignore_merges` (Llama 3), a piece that is a token as a whole is that token;
//! 5. otherwise adjacent symbols are merged, always the pair of lowest merge rank first (the
//!    leftmost of equal pairs), until no pair of the merge list is left.
//!
//! A byte whose character is not in the vocabulary cannot merge and is dropped from the output,
//! as llama.cpp drops it (a byte-level vocabulary has all 256, so this does not happen in
//! practice). A merge whose parts or result are not tokens is ignored.
//!
//! Loading the vocabulary from metadata and decoding are in `mod.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{anyhow, Context, Result};

use super::bytes;
use super::pre::{Pre, PreTokenizer};

/// Marks a byte whose character is not a token.
const NO_TOKEN: u32 = u32::MAX;
/// No neighbour.
const NONE: usize = usize::MAX;

/// The encoder half of a ggml byte-level BPE tokenizer.
#[derive(Debug)]
pub(crate) struct Bpe {
    pre: PreTokenizer,
    /// The id of each token string (the first id, if a string repeats).
    vocab: HashMap<String, u32>,
    /// `(left, right)` → `(rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each byte's character, or [`NO_TOKEN`].
    byte_tokens: [u32; 256],
    /// Matcher of the special tokens, with their ids by pattern index.
    specials: Option<(AhoCorasick, Vec<u32>)>,
}

/// A symbol of the word being merged: a token, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

/// Reused buffers of one `encode` call.
#[derive(Default)]
struct Scratch<'a> {
    pieces: Vec<&'a str>,
    spelled: String,
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
}

impl Bpe {
    /// Builds the encoder from the token strings (index = id), the merges (`"left right"`, in
    /// rank order) and the ids of the tokens to cut out of the text before BPE.
    pub(crate) fn new(
        tokens: &[String],
        merges: &[String],
        specials: &[u32],
        pre: Pre,
    ) -> Result<Self> {
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            let id = u32::try_from(id).context("more than 2^32 tokens")?;
            vocab.entry(text.clone()).or_insert(id);
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let rank = u32::try_from(rank).context("more than 2^32 merges")?;
            // The parts are split at the first space after the first byte, as llama.cpp does.
            let space = merge.bytes().skip(1).position(|b| b == b' ');
            let Some(at) = space.map(|i| i + 1) else {
                return Err(anyhow!(
                    "tokenizer.ggml.merges[{rank}] = {merge:?} is not two tokens separated by a \
                     space"
                ));
            };
            let (left, right) = (&merge[..at], &merge[at + 1..]);
            let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) else {
                continue;
            };
            let Some(&merged) = vocab.get(&format!("{left}{right}")) else {
                continue;
            };
            table.entry((l, r)).or_insert((rank, merged));
        }
        let mut byte_tokens = [NO_TOKEN; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let c = bytes::byte_char(b as u8);
            if let Some(&id) = vocab.get(c.encode_utf8(&mut [0; 4]) as &str) {
                *slot = id;
            }
        }
        let specials = specials
            .iter()
            .filter_map(|&id| {
                tokens
                    .get(id as usize)
                    .filter(|t| !t.is_empty())
                    .map(|t| (t.as_str(), id))
            })
            .collect::<Vec<_>>();
        let specials = if specials.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(specials.iter().map(|&(t, _)| t))
                .context("building the special-token matcher")?;
            Some((matcher, specials.iter().map(|&(_, id)| id).collect()))
        };
        Ok(Self {
            pre: PreTokenizer::new(pre)?,
            vocab,
            merges: table,
            byte_tokens,
            specials,
        })
    }

    /// The pre-tokenizer.
    pub(crate) fn pre(&self) -> Pre {
        self.pre.pre()
    }

    /// The id of a token string (as the vocabulary spells it).
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// Appends the tokens of `text` to `out`, special tokens written in it included.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut scratch = Scratch::default();
        let Some((matcher, ids)) = &self.specials else {
            return self.encode_plain(text, out, &mut scratch);
        };
        let mut at = 0;
        for m in matcher.find_iter(text) {
            self.encode_plain(&text[at..m.start()], out, &mut scratch)?;
            out.push(ids[m.pattern().as_usize()]);
            at = m.end();
        }
        self.encode_plain(&text[at..], out, &mut scratch)
    }

    /// Appends the tokens of text without special tokens.
    fn encode_plain<'a>(
        &self,
        text: &'a str,
        out: &mut Vec<u32>,
        s: &mut Scratch<'a>,
    ) -> Result<()> {
        s.pieces.clear();
        self.pre.split_into(text, &mut s.pieces)?;
        for i in 0..s.pieces.len() {
            let piece = s.pieces[i];
            self.encode_piece(
                piece.as_bytes(),
                out,
                &mut s.spelled,
                &mut s.symbols,
                &mut s.heap,
            );
        }
        Ok(())
    }

    /// BPE on one piece.
    fn encode_piece(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        spelled: &mut String,
        symbols: &mut Vec<Symbol>,
        heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
    ) {
        if self.pre.pre().ignore_merges() {
            spelled.clear();
            bytes::encode_into(piece, spelled);
            if let Some(&id) = self.vocab.get(spelled.as_str()) {
                out.push(id);
                return;
            }
        }
        symbols.clear();
        symbols.extend(piece.iter().enumerate().map(|(i, &b)| Symbol {
            id: self.byte_tokens[b as usize],
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == piece.len() { NONE } else { i + 1 },
            alive: true,
        }));
        heap.clear();
        for left in 0..symbols.len() {
            self.push_pair(symbols, left, heap);
        }
        while let Some(Reverse((_, left, left_id, right_id))) = heap.pop() {
            let l = symbols[left];
            // Skip pairs that an earlier merge changed.
            if !l.alive || l.id != left_id || l.next == NONE {
                continue;
            }
            let right = l.next;
            let r = symbols[right];
            if r.id != right_id {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(left_id, right_id)) else {
                continue;
            };
            symbols[left].id = merged;
            symbols[left].next = r.next;
            symbols[right].alive = false;
            if r.next != NONE {
                symbols[r.next].prev = left;
            }
            if l.prev != NONE {
                self.push_pair(symbols, l.prev, heap);
            }
            self.push_pair(symbols, left, heap);
        }
        out.extend(
            symbols
                .iter()
                .filter(|s| s.alive && s.id != NO_TOKEN)
                .map(|s| s.id),
        );
    }

    /// Queues the pair that starts at `left`, if it has a merge.
    fn push_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
    ) {
        let l = symbols[left];
        if l.next == NONE {
            return;
        }
        let r = symbols[l.next];
        if let Some(&(rank, _)) = self.merges.get(&(l.id, r.id)) {
            heap.push(Reverse((rank, left, l.id, r.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A byte alphabet plus a few merges: `Ġ t`, `h e`, `t he`... as in GPT-2.
    fn toy(pre: Pre) -> (Bpe, Vec<String>) {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| bytes::byte_char(b).to_string())
            .collect();
        let merges = ["Ġ t", "h e", "t he", "Ġt he", "a a", "aa aa", "<| x"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|im_end|>".into());
        let merges: Vec<String> = merges.iter().map(|m| m.to_string()).collect();
        let special = tokens.len() as u32 - 1;
        (Bpe::new(&tokens, &merges, &[special], pre).unwrap(), tokens)
    }

    fn encode(bpe: &Bpe, tokens: &[String], text: &str) -> Vec<String> {
        let mut ids = Vec::new();
        bpe.encode(text, &mut ids).unwrap();
        ids.iter().map(|&i| tokens[i as usize].clone()).collect()
    }

    #[test]
    fn merges_by_rank() {
        let (bpe, tokens) = toy(Pre::Gpt2);
        assert_eq!(encode(&bpe, &tokens, "the the"), ["the", "Ġthe"]);
        // "aaaaa": a a (rank 4) merges leftmost pairs first, then aa aa.
        assert_eq!(encode(&bpe, &tokens, "aaaaa"), ["aaaa", "a"]);
        assert_eq!(
            encode(&bpe, &tokens, "x<|im_end|>y"),
            ["x", "<|im_end|>", "y"]
        );
        // `<| x` is ignored: `<|` is no token. And `<|` and `x` are different pieces anyway.
        assert_eq!(encode(&bpe, &tokens, "<|x"), ["<", "|", "x"]);
    }
}

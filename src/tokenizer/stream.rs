//! [`StreamDecoder`]: generated ids to UTF-8 text as they come. A token may end inside a
//! character (byte-level vocabularies split rare characters, emoji and most CJK into byte
//! tokens), so the bytes of an unfinished character wait for the next token.

use super::Tokenizer;

/// Turns a stream of token ids into text pieces.
///
/// Everything `push` and `flush` return, joined, equals [`Tokenizer::decode`] of all the ids
/// (`String::from_utf8_lossy` of their bytes): a character split over tokens comes out whole
/// once its last byte arrives, and a byte sequence that cannot become a character becomes one
/// U+FFFD as soon as that is certain (or at `flush`, for an unfinished character at the end).
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    /// Bytes of an unfinished character (at most 3), kept for the next token.
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the bytes of token `id`; returns the text completed by them, if any. An id outside
    /// the vocabulary counts as an invalid byte (U+FFFD).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        match tok.token_bytes(id) {
            Some(bytes) => self.push_bytes(&bytes),
            None => self.push_bytes(&[0xFF]),
        }
    }

    /// Adds raw bytes; returns the text completed by them, if any.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Option<String> {
        if self.pending.is_empty() {
            // Fast path: most tokens are whole characters.
            if let Ok(text) = std::str::from_utf8(bytes) {
                return (!text.is_empty()).then(|| text.to_string());
            }
        }
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            at += valid + bad;
                        }
                        // An unfinished character at the end: wait for more bytes.
                        None => {
                            at += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        (!out.is_empty()).then_some(out)
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(out)
    }

    /// The bytes waiting for the rest of their character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Forgets pending bytes (a new stream).
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> String {
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for c in chunks {
            out.extend(d.push_bytes(c));
        }
        out.extend(d.flush());
        out
    }

    #[test]
    fn joins_characters_split_over_chunks() {
        let dog = "🐶".as_bytes();
        let mut d = StreamDecoder::new();
        assert_eq!(d.push_bytes(&dog[..1]), None);
        assert_eq!(d.push_bytes(&dog[1..3]), None);
        assert_eq!(d.pending().len(), 3);
        assert_eq!(d.push_bytes(&[dog[3], b'!']).as_deref(), Some("🐶!"));
        assert_eq!(d.flush(), None);
    }

    #[test]
    fn invalid_bytes_match_from_utf8_lossy() {
        let cases: &[&[&[u8]]] = &[
            &[b"\xE4\xB8", b"a"],
            &[b"\xE4", b"\xB8", b"\xAD\xFF", b"\x80x"],
            &[b"ok\xF0\x9F", b"\x90"],
            &[b"\xC3"],
            &[b"\xED\xA0", b"\x80"],
            &[b"\xF4\x90\x80\x80"],
        ];
        for chunks in cases {
            let all: Vec<u8> = chunks.concat();
            assert_eq!(stream(chunks), String::from_utf8_lossy(&all), "{chunks:?}");
        }
    }
}

//! GPT-2's byte-level alphabet: every byte stands for one printable Unicode character, so a
//! byte-level BPE vocabulary is a set of strings over 256 characters. Printable Latin-1 bytes
//! (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes (controls,
//! space, DEL, NBSP, soft hyphen) get U+0100.. in byte order, so a space is `Ġ` (U+0120) and
//! `\n` is `Ċ`.
//!
//! Only the mapping lives here; the BPE that uses it is in `bpe.rs`.

/// Whether byte `b` stands for itself.
const fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character of each byte.
const BYTE_CHARS: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    let mut b = 0usize;
    while b < 256 {
        let code = if is_printable(b as u8) {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b] = match char::from_u32(code) {
            Some(c) => c,
            None => panic!("byte-level characters are below U+0144"),
        };
        b += 1;
    }
    table
};

/// Code points of the alphabet end below this.
const N_CODES: usize = 0x144;

/// The byte of each code point below [`N_CODES`], or `u16::MAX` for one outside the alphabet.
const CHAR_BYTES: [u16; N_CODES] = {
    let mut table = [u16::MAX; N_CODES];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_CHARS[b] as usize] = b as u16;
        b += 1;
    }
    table
};

/// The character that byte `b` stands for.
pub(crate) fn byte_char(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

/// The byte that `c` stands for, if it is one of the 256 characters.
pub(crate) fn char_byte(c: char) -> Option<u8> {
    let b = *CHAR_BYTES.get(c as usize)?;
    u8::try_from(b).ok()
}

/// Appends the byte-level spelling of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.extend(bytes.iter().map(|&b| byte_char(b)));
}

/// The bytes a byte-level token string stands for; `None` if a character is outside the alphabet.
pub(crate) fn decode(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        for b in 0..=255u8 {
            assert_eq!(char_byte(byte_char(b)), Some(b));
        }
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(0xAD), 'Ń');
        assert_eq!(char_byte('Ń'), Some(0xAD));
        assert_eq!(char_byte('Ņ'), None);
        assert_eq!(char_byte(' '), None);
    }
}

//! Text an outsider controls (a task's `comm`, names read from the kernel, a client's request)
//! made safe for a terminal and a log: control characters (C0, DEL, C1), bidirectional
//! overrides and invalid UTF-8 become visible escapes (`\x1b`, `\u{202e}`), a backslash
//! becomes `\\`, so the escaped form is unambiguous and never moves a cursor, recolours a
//! terminal or reorders what follows it. Everything else, non-ASCII letters included, stays.
use std::{borrow::Cow, fmt::Write as _};

/// `bytes` escaped; borrowed when nothing needed escaping (the common case: no allocation).
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !s.chars().any(needs_escape) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// `text` escaped (see [`escape`]).
pub fn escape_str(text: &str) -> Cow<'_, str> {
    escape(text.as_bytes())
}

fn push_char(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
    } else if c == '\\' {
        out.push_str("\\\\");
    } else if c.is_ascii() {
        let _ = write!(out, "\\x{:02x}", u32::from(c));
    } else {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_bidi_control(c)
}

/// Characters that change the display order of the text around them (Trojan Source,
/// CVE-2021-42574): the embeddings and overrides, the isolates and the invisible marks.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_borrowed_unchanged() {
        assert!(matches!(escape(b"curl"), Cow::Borrowed("curl")));
        assert!(matches!(escape("né ok".as_bytes()), Cow::Borrowed("né ok")));
    }

    #[test]
    fn controls_escapes_and_invalid_utf8_become_visible() {
        assert_eq!(escape(b"\x1b[31mevil"), "\\x1b[31mevil");
        assert_eq!(escape(b"a\nb\tc\x7f"), "a\\x0ab\\x09c\\x7f");
        // C1 CSI as a character and as a lone byte (8-bit terminals take both).
        assert_eq!(escape("x\u{9b}2J".as_bytes()), "x\\u{9b}2J");
        assert_eq!(escape(b"x\x9b2J"), "x\\x9b2J");
        // A multi-byte character cut by the kernel's 15-byte comm.
        assert_eq!(escape(&[b'n', 0xc3]), "n\\xc3");
        assert_eq!(
            escape(b"a\\x1b"),
            "a\\\\x1b",
            "a literal backslash cannot fake an escape"
        );
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(escape_str("ab\u{202e}cd"), "ab\\u{202e}cd");
        for c in ['\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{200f}'] {
            let s = format!("x{c}");
            assert!(!escape_str(&s).contains(c), "{c:?} kept");
        }
    }

    #[test]
    fn no_escaped_output_holds_a_control_byte() {
        for b in 0u8..=255 {
            let bytes = [b'a', b, b'z'];
            let e = escape(&bytes);
            assert!(
                !e.chars().any(|c| c.is_control() || is_bidi_control(c)),
                "{b:#x} → {e:?}"
            );
        }
    }
}

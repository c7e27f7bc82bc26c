//! Reading Rust source as text, just enough for the import graph: comments, strings and test
//! modules blanked out, then every path the code spells.
/// Blanks comments, string and char literals (keeping line structure irrelevant here).
pub fn strip_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && matches!(b.get(i + 1), Some(b'#' | b'"')) {
            // Raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    i = e + 1;
                    out.push_str("' '");
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `head` past a leading `pub`, `pub(crate)`, `pub(super)` or `pub(in …)`.
fn without_visibility(head: &str) -> &str {
    let Some(rest) = head.strip_prefix("pub") else {
        return head;
    };
    if let Some(inner) = rest.trim_start().strip_prefix('(') {
        return inner
            .find(')')
            .map_or(head, |close| inner[close + 1..].trim_start());
    }
    if rest.starts_with(char::is_whitespace) {
        rest.trim_start()
    } else {
        head
    }
}

/// Drops inline `#[cfg(test)] mod … { … }` bodies, `pub` or not (their `use super::*` is the
/// test's, not the module's).
pub fn without_test_modules(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let head = without_visibility(after.trim_start());
        let inline_mod = head.starts_with("mod ")
            && head
                .find(['{', ';'])
                .is_some_and(|i| head.as_bytes()[i] == b'{');
        if !inline_mod {
            out.push_str(MARK);
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap_or(after.len());
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

fn tokens(code: &str) -> Vec<Tok> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(code[s..i].to_string()));
            continue;
        }
        if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Tok::PathSep);
            i += 2;
            continue;
        }
        match c {
            b'{' => out.push(Tok::Open),
            b'}' => out.push(Tok::Close),
            b',' => out.push(Tok::Comma),
            b' ' | b'\n' | b'\t' | b'\r' => {}
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// Every path the code spells: `use` trees expanded (`use a::{b, c::d}` → `a::b`, `a::c::d`),
/// and every other `x::y::…` sequence. Inside an inline `mod m { … }`, a leading `super` names
/// the file's own module first, so it is rewritten relative to the file.
pub fn paths(code: &str) -> Vec<Vec<String>> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // Brace depths at which the inline modules we are in opened.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let before = out.len();
        match &toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(Tok::Ident(_)), Some(Tok::Open)) = (toks.get(i + 1), toks.get(i + 2)) {
                    inline.push(depth + 1);
                }
            }
            _ => {}
        }
        if toks[i] == Tok::Ident("use".into()) {
            i += 1;
            let mut prefix = Vec::new();
            use_tree(&toks, &mut i, &mut prefix, &mut out);
        } else if let Some(p) = path_at(&toks, &mut i) {
            out.push(p);
        } else {
            i += 1;
        }
        for p in &mut out[before..] {
            relative_to_file(p, inline.len());
        }
    }
    out
}

/// The `x::y::…` sequence starting at `i` (not in the middle of one), advancing past it.
fn path_at(toks: &[Tok], i: &mut usize) -> Option<Vec<String>> {
    let Tok::Ident(first) = &toks[*i] else {
        return None;
    };
    let prev_sep = *i > 0 && toks[*i - 1] == Tok::PathSep;
    if prev_sep || toks.get(*i + 1) != Some(&Tok::PathSep) {
        return None;
    }
    let mut p = vec![first.clone()];
    let mut j = *i + 1;
    while toks.get(j) == Some(&Tok::PathSep) {
        match toks.get(j + 1) {
            Some(Tok::Ident(s)) => {
                p.push(s.clone());
                j += 2;
            }
            _ => break,
        }
    }
    *i = j;
    Some(p)
}

/// Drops the leading `super`s that only leave inline modules (`inline` deep).
fn relative_to_file(p: &mut Vec<String>, inline: usize) {
    let supers = p.iter().take_while(|s| *s == "super").count();
    let drop = supers.min(inline);
    if drop > 0 {
        p.drain(..drop);
        if drop == supers {
            p.insert(0, "self".to_owned());
        }
    }
}

fn use_tree(toks: &[Tok], i: &mut usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let depth = prefix.len();
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(s)) if s == "as" => {
                *i += 2;
            }
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                *i += 1;
            }
            Some(Tok::PathSep) => *i += 1,
            Some(Tok::Open) => {
                *i += 1;
                loop {
                    let mut inner = prefix.clone();
                    use_tree(toks, i, &mut inner, out);
                    match toks.get(*i) {
                        Some(Tok::Comma) => *i += 1,
                        Some(Tok::Close) => {
                            *i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if toks.get(*i) == Some(&Tok::Close) {
                        *i += 1;
                        break;
                    }
                }
                prefix.truncate(depth);
                return;
            }
            _ => {
                if prefix.len() > depth || !prefix.is_empty() {
                    out.push(prefix.clone());
                }
                prefix.truncate(depth);
                return;
            }
        }
    }
}

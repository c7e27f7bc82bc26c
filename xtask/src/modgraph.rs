//! `cargo xtask modgraph`: the import graph of a crate's modules and its circles.
//!
//! One node per source file (`a/b.rs` and `a/b/mod.rs` are `a::b`). An edge A → B means A names
//! an item of B: a path (`crate::…`, `super::…`, `self::…`, or a child module's name) resolved
//! to the longest module it reaches, so `crate::bench::plan::Workload` is an edge to
//! `bench::plan`, and `crate::bench::out_dir` one to `bench`. Declaring `mod child;` is not an
//! edge; a test module (`tests.rs`, `tests_*.rs`) is left out, since testing a parent's items
//! from a child is no layering problem. Circles are the strongly connected components with
//! more than one module (Tarjan), each printed with one cycle through it.
//!
//! It reads text, not the compiler's resolution: glob imports and macros are not followed, so
//! it can miss an edge, never invent one that a path does not spell.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The crates `cargo xtask modgraph` checks by default (relative to the workspace root).
pub const WORKSPACE_SRCS: [&str; 4] = [
    "probe-user/src",
    "probe-common/src",
    "testkit/src",
    "xtask/src",
];

/// Module path (`a::b`, the crate root is "") → the modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` (a crate's `src/`) into the graph.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let mut modules: BTreeMap<String, PathBuf> = BTreeMap::new();
    let has_lib = files.iter().any(|f| f == &src.join("lib.rs"));
    for f in &files {
        let rel = f.strip_prefix(src).unwrap_or(f);
        if has_lib && rel == Path::new("main.rs") {
            // The binary is a crate of its own that uses the library from outside.
            continue;
        }
        let Some(name) = module_name(rel) else {
            continue;
        };
        modules.insert(name, f.clone());
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut g = Graph::new();
    for (name, file) in &modules {
        let text = fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let code = without_test_modules(&strip_comments_and_strings(&text));
        let mut edges = BTreeSet::new();
        for path in paths(&code) {
            if let Some(target) = resolve(name, &path, &known) {
                if &target != name && !is_test_module(&target) {
                    edges.insert(target);
                }
            }
        }
        g.insert(name.clone(), edges);
    }
    Ok(g)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `a/b.rs` → `a::b`, `a/mod.rs` → `a`, `lib.rs`/`main.rs` → "" (the root); test modules and
/// a binary's `main.rs` next to `lib.rs` are not part of the library graph (None).
fn module_name(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return Some(String::new());
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    let name = parts.join("::");
    (!is_test_module(&name)).then_some(name)
}

fn is_test_module(name: &str) -> bool {
    let last = name.rsplit("::").next().unwrap_or(name);
    last == "tests" || last.starts_with("tests_") || last.ends_with("_tests")
}

/// Resolves a path written in module `from` to the longest known module it names.
fn resolve(from: &str, path: &[String], known: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_string).collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A bare path is relative only when it starts with a child module of `from`.
            let mut child = base.clone();
            child.push(first.to_string());
            if !known.contains(&child.join("::")) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = None;
    let mut cur = base;
    if known.contains(&cur.join("::")) {
        best = Some(cur.join("::"));
    }
    for seg in rest {
        cur.push(seg.clone());
        let name = cur.join("::");
        if known.contains(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    // `crate` alone (the root) is an edge only when an item of the root is named.
    best
}

/// Blanks comments, string and char literals (keeping line structure irrelevant here).
fn strip_comments_and_strings(src: &str) -> String {
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
fn without_test_modules(code: &str) -> String {
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
/// and every other `x::y::…` sequence.
fn paths(code: &str) -> Vec<Vec<String>> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == Tok::Ident("use".into()) {
            i += 1;
            let mut prefix = Vec::new();
            use_tree(&toks, &mut i, &mut prefix, &mut out);
            continue;
        }
        if let Tok::Ident(first) = &toks[i] {
            let prev_sep = i > 0 && toks[i - 1] == Tok::PathSep;
            if !prev_sep && toks.get(i + 1) == Some(&Tok::PathSep) {
                let mut p = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::PathSep) {
                    match toks.get(j + 1) {
                        Some(Tok::Ident(s)) => {
                            p.push(s.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                out.push(p);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
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

/// The graph with each module folded into its ancestor `depth` segments deep (`depth` 1: one
/// node per top-level module or folder), edges inside a node dropped.
pub fn collapse(g: &Graph, depth: usize) -> Graph {
    let fold = |name: &str| name.split("::").take(depth).collect::<Vec<_>>().join("::");
    let mut out = Graph::new();
    for (from, to) in g {
        let f = fold(from);
        let entry = out.entry(f.clone()).or_default();
        for t in to {
            let t = fold(t);
            if t != f {
                entry.insert(t);
            }
        }
    }
    out
}

/// Strongly connected components with more than one module, each sorted, largest first.
pub fn circles(g: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.g.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    t.out
}

/// One shortest cycle through `start` inside its component (breadth-first), for the report.
pub fn cycle_through(g: &Graph, comp: &[String], start: &str) -> Vec<String> {
    let inside: BTreeSet<&str> = comp.iter().map(String::as_str).collect();
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v.to_string()];
                let mut cur = v;
                while cur != start {
                    cur = prev[cur];
                    path.push(cur.to_string());
                }
                path.reverse();
                path.push(start.to_string());
                return path;
            }
            if !prev.contains_key(w) && w != start {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![start.to_string()]
}

fn shown(name: &str) -> &str {
    if name.is_empty() {
        "(crate root)"
    } else {
        name
    }
}

/// Prints each crate's circles; returns how many there are in all. `depth` folds modules into
/// their ancestors first (see [`collapse`]); None: one node per file.
pub fn report(srcs: &[PathBuf], depth: Option<usize>, edges: bool) -> Result<usize> {
    let mut total = 0;
    for src in srcs {
        let g = graph(src)?;
        let g = match depth {
            Some(d) => collapse(&g, d),
            None => g,
        };
        let edge_count: usize = g.values().map(BTreeSet::len).sum();
        let found = circles(&g);
        println!(
            "{}: {} modules, {} import edges, {} circle(s)",
            src.display(),
            g.len(),
            edge_count,
            found.len()
        );
        if edges {
            for (from, to) in &g {
                let to: Vec<&str> = to.iter().map(|s| shown(s)).collect();
                println!("  {} → {}", shown(from), to.join(", "));
            }
        }
        for comp in &found {
            let names: Vec<&str> = comp.iter().map(|s| shown(s)).collect();
            let cycle = cycle_through(&g, comp, &comp[0]);
            let cycle: Vec<&str> = cycle.iter().map(|s| shown(s)).collect();
            println!(
                "  circle of {}: {}\n    e.g. {}",
                comp.len(),
                names.join(", "),
                cycle.join(" → ")
            );
        }
        total += found.len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn p(s: &str) -> Vec<String> {
        s.split("::").map(str::to_string).collect()
    }

    #[test]
    fn use_trees_expand_and_comments_strings_do_not_count() {
        let code = strip_comments_and_strings(
            "use crate::{a::{b, c::D}, e as f};\n// crate::zzz::x\nlet s = \"crate::yyy::z\";\nlet c = '\\'';\nfn g<'a>() { crate::h::i(); }",
        );
        let got = paths(&code);
        assert!(got.contains(&p("crate::a::b")), "{got:?}");
        assert!(got.contains(&p("crate::a::c::D")), "{got:?}");
        assert!(got.contains(&p("crate::e")), "{got:?}");
        assert!(got.contains(&p("crate::h::i")), "{got:?}");
        assert!(!got.iter().flatten().any(|s| s == "zzz" || s == "yyy"));
    }

    #[test]
    fn inline_test_modules_are_left_out() {
        let code = "use crate::a::X;\n#[cfg(test)]\nmod tests {\n use super::*;\n fn f() { crate::b::y(); }\n}\nfn g() { crate::c::z(); }";
        let got = paths(&without_test_modules(code));
        assert_eq!(got, vec![p("crate::a::X"), p("crate::c::z")]);
        // A test module other tests' modules use (`pub`, `pub(crate)`) is one too.
        for vis in ["pub ", "pub(crate) ", "pub(super) "] {
            let code = format!(
                "#[cfg(test)]\n{vis}mod tests {{ use super::*; }}\nfn g() {{ crate::c::z(); }}"
            );
            let got = paths(&without_test_modules(&code));
            assert_eq!(got, vec![p("crate::c::z")], "{vis}");
        }
    }

    #[test]
    fn paths_resolve_to_the_longest_module() {
        let k = known(&["", "bench", "bench::plan", "bench::scrape", "cmd"]);
        assert_eq!(
            resolve("bench::scrape", &p("crate::bench::plan::Workload"), &k).as_deref(),
            Some("bench::plan")
        );
        assert_eq!(
            resolve("bench::scrape", &p("super::out_dir"), &k).as_deref(),
            Some("bench")
        );
        assert_eq!(
            resolve("bench", &p("scrape::run"), &k).as_deref(),
            Some("bench::scrape")
        );
        assert_eq!(resolve("bench", &p("std::fs::read"), &k), None);
        assert_eq!(resolve("cmd", &p("self::x"), &k).as_deref(), Some("cmd"));
    }

    #[test]
    fn circles_are_components_of_two_or_more() {
        let mut g = Graph::new();
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        g.insert("a".into(), e(&["b"]));
        g.insert("b".into(), e(&["c"]));
        g.insert("c".into(), e(&["a", "d"]));
        g.insert("d".into(), e(&[]));
        let found = circles(&g);
        assert_eq!(found, vec![vec!["a".to_string(), "b".into(), "c".into()]]);
        assert_eq!(cycle_through(&g, &found[0], "a"), ["a", "b", "c", "a"]);
    }

    /// xtask and the harness stay free of import circles (`cargo xtask modgraph` prints them).
    #[test]
    fn xtask_and_testkit_have_no_import_circles() {
        for src in ["xtask/src", "testkit/src"] {
            let dir = crate::cmd::workspace_root().join(src);
            let g = graph(&dir).unwrap();
            assert!(g.len() > 5, "{src}: only {} modules read", g.len());
            let found = circles(&g);
            assert!(found.is_empty(), "{src} has import circles: {found:?}");
        }
    }
}

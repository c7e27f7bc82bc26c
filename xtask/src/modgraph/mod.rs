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
mod parse;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use parse::{paths, strip_comments_and_strings, without_test_modules};

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
mod tests;

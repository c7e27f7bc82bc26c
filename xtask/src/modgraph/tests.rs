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
fn super_inside_an_inline_module_names_the_file_first() {
    let code = "mod pod { impl X for super::Y {} fn f() { super::super::z::g(); } }\nfn h() { super::w::k(); }";
    let got = paths(code);
    assert!(got.contains(&p("self::Y")), "{got:?}");
    assert!(got.contains(&p("super::z::g")), "{got:?}");
    assert!(got.contains(&p("super::w::k")), "{got:?}");
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

/// Every crate of the workspace stays free of import circles, file by file (`cargo xtask
/// modgraph` prints them), and probe-user's stages import one way.
#[test]
fn the_workspace_has_no_import_circles() {
    for src in WORKSPACE_SRCS.iter().chain(&["probe-ebpf/src"]) {
        let dir = crate::cmd::workspace_root().join(src);
        let g = graph(&dir).unwrap();
        assert!(g.len() > 2, "{src}: only {} modules read", g.len());
        let found = circles(&g);
        assert!(found.is_empty(), "{src} has import circles: {found:?}");
    }
    let user = graph(&crate::cmd::workspace_root().join("probe-user/src")).unwrap();
    for depth in [1, 2] {
        let found = circles(&collapse(&user, depth));
        assert!(found.is_empty(), "probe-user at depth {depth}: {found:?}");
    }
}

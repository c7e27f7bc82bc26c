//! Per-test results from libtest's human output (`test a::b ... ok`), as printed by a test
//! binary inside the VM or by the host's `cargo test` (several binaries one after another).
//! Child processes of the tests write to the same console, so a result line may be split
//! (`test x ... ` + their output + `ok`) and foreign lines are skipped.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
}

/// What one test binary reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub tests: Vec<TestResult>,
    /// Whether libtest's closing `test result:` line was seen (false: the binary crashed or was
    /// killed, and tests without a result line are missing).
    pub finished: bool,
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

fn outcome(word: &str) -> Option<Outcome> {
    match word {
        "ok" => Some(Outcome::Ok),
        "FAILED" => Some(Outcome::Failed),
        // `ignored` and `ignored, <reason>`.
        w if w.starts_with("ignored") => Some(Outcome::Ignored),
        _ => None,
    }
}

/// Parses libtest's output; the counts come from the result lines, the closing line only says
/// whether the run finished.
pub fn parse(text: &str) -> Summary {
    let mut s = Summary::default();
    // A `test x ... ` line whose outcome is still to come.
    let mut pending: Option<String> = None;
    let mut reporting = true;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim_end();
        if line.starts_with("test result: ") {
            s.finished = true;
            continue;
        }
        // The next binary's results (`cargo test` runs several in one output).
        if line.starts_with("running ") && (line.ends_with(" tests") || line.ends_with(" test")) {
            pending = None;
            reporting = true;
            continue;
        }
        // The captured output of failed tests follows; no result line comes after it.
        if line == "failures:" {
            pending = None;
            reporting = false;
        }
        if !reporting {
            continue;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, result)) = rest.split_once(" ... ") {
                match outcome(result.trim()) {
                    Some(o) => push(&mut s, name, o),
                    None => pending = Some(name.to_owned()),
                }
                continue;
            }
            if let Some(name) = rest.strip_suffix(" ...") {
                pending = Some(name.to_owned());
                continue;
            }
        }
        if let Some(name) = &pending {
            // The outcome ends the first line that carries one after the split.
            let last = line.rsplit(' ').next().unwrap_or("");
            if let Some(o) = outcome(last) {
                let name = name.clone();
                push(&mut s, &name, o);
                pending = None;
            }
        }
    }
    s
}

/// Lines kept per failed test: the panic and what follows it (the assertion's message).
const EXCERPT_LINES: usize = 8;

/// The panic message of each failed test, from libtest's `---- name stdout ----` blocks: CI
/// keeps only the tail of the output, so `cargo xtask test` repeats these at its end.
pub fn failure_excerpts(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim_end();
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            out.push((name.to_owned(), Vec::new()));
        } else if line == "failures:" || line.starts_with("test result: ") {
            out.push((String::new(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out.into_iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, lines)| {
            let start = lines
                .iter()
                .position(|l| l.starts_with("thread '") && l.contains("panicked at"))
                .unwrap_or_else(|| lines.len().saturating_sub(EXCERPT_LINES));
            // The message, not the backtrace (RUST_BACKTRACE is set in the tests' environment).
            let kept: Vec<&str> = lines[start..]
                .iter()
                .copied()
                .take_while(|l| !l.starts_with("stack backtrace:"))
                .filter(|l| !l.is_empty())
                .take(EXCERPT_LINES)
                .collect();
            (name, kept.join("\n"))
        })
        .collect()
}

fn push(s: &mut Summary, name: &str, outcome: Outcome) {
    match outcome {
        Outcome::Ok => s.passed += 1,
        Outcome::Failed => s.failed += 1,
        Outcome::Ignored => s.ignored += 1,
    }
    s.tests.push(TestResult {
        name: name.to_owned(),
        outcome,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
running 5 tests\r
test cli::a ... ok\r
test cli::b ... FAILED\r
test slow ... ignored, needs a real NIC\r
test interleaved ... linkprobe: ready (7 of 7 probes attached)\r
  12.345678 rst_sent    cookie=-\r
ok\r
test detach has been running for over 60 seconds\r
test detach ... ok\r
\r
failures:\r
\r
---- cli::b stdout ----\r
thread 'cli::b' panicked at probe-user/tests/kernel/cli.rs:10:5:\r
test assertion ... failed\r
stack backtrace:\r
   0: __rustc::rust_begin_unwind\r
\r
failures:\r
    cli::b\r
\r
test result: FAILED. 3 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.01s\r
";

    fn failed_names(s: &Summary) -> Vec<&str> {
        s.tests
            .iter()
            .filter(|t| t.outcome == Outcome::Failed)
            .map(|t| t.name.as_str())
            .collect()
    }

    #[test]
    fn parses_results_split_by_child_output() {
        let s = parse(RUN);
        assert!(s.finished);
        assert_eq!((s.passed, s.failed, s.ignored), (3, 1, 1));
        let failed = failed_names(&s);
        assert_eq!(failed, ["cli::b"]);
        let names: Vec<&str> = s.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cli::a", "cli::b", "slow", "interleaved", "detach"]);
    }

    #[test]
    fn binaries_one_after_another_are_all_read() {
        let two = format!(
            "{RUN}{}",
            RUN.replace("cli::b ... FAILED", "cli::c ... FAILED")
        );
        let s = parse(&two);
        let failed = failed_names(&s);
        assert_eq!(failed, ["cli::b", "cli::c"]);
        assert_eq!((s.passed, s.failed, s.ignored), (6, 2, 2));
    }

    #[test]
    fn failure_excerpts_keep_each_failed_tests_panic() {
        let got = failure_excerpts(RUN);
        assert_eq!(
            got,
            [(
                "cli::b".to_owned(),
                "thread 'cli::b' panicked at probe-user/tests/kernel/cli.rs:10:5:\n\
                 test assertion ... failed"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn a_crashed_binary_is_not_finished() {
        let s = parse("running 2 tests\ntest a ... ok\n");
        assert!(!s.finished);
        assert_eq!(s.passed, 1);
    }
}

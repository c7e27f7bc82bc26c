//! One kernel's results: the VM's results stream cut into sections, the per-test outcomes, the
//! probe table the VM's `linkprobe probes -o json` printed, timings; saved as
//! `target/vm/results/<release>.json` and printed as a short report.
use serde::{Deserialize, Serialize};

use super::{initramfs::MARK, known};
use crate::libtest::{self, Outcome, Summary};

/// One `begin … end` block of the stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    pub name: String,
    pub text: String,
    /// None when the section never ended (VM killed or crashed inside it).
    pub rc: Option<i32>,
    pub seconds: Option<f64>,
}

/// The stream cut into sections (lines outside them are dropped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    pub sections: Vec<Section>,
    /// `/init` reached its end.
    pub done: bool,
}

pub fn parse_stream(text: &str) -> Stream {
    let mut out = Stream::default();
    let mut current: Option<(Section, f64)> = None;
    for line in text.lines() {
        let Some(mark) = line.strip_prefix(MARK).map(str::trim) else {
            if let Some((s, _)) = current.as_mut() {
                s.text.push_str(line);
                s.text.push('\n');
            }
            continue;
        };
        let words: Vec<&str> = mark.split_whitespace().collect();
        match words.as_slice() {
            ["begin", name, t, ..] => {
                let section = Section {
                    name: (*name).to_owned(),
                    ..Section::default()
                };
                current = Some((section, t.parse().unwrap_or(0.0)));
            }
            ["end", _, rc, t, ..] => {
                if let Some((mut s, begin)) = current.take() {
                    s.rc = rc.strip_prefix("rc=").and_then(|r| r.parse().ok());
                    s.seconds = t.parse::<f64>().ok().map(|end| end - begin);
                    out.sections.push(s);
                }
            }
            ["done", ..] => out.done = true,
            _ => {}
        }
    }
    if let Some((s, _)) = current {
        out.sections.push(s);
    }
    out
}

/// One test binary's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResult {
    pub name: String,
    pub rc: Option<i32>,
    pub seconds: Option<f64>,
    pub finished: bool,
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
    pub failures: Vec<String>,
    /// Failures listed in `known` for this kernel, with why.
    #[serde(default)]
    pub known_failures: Vec<KnownFailure>,
    /// Tests listed in `known` for this kernel that passed (the list can shrink).
    #[serde(default)]
    pub known_but_passed: Vec<String>,
    /// Under TCG, failures that passed when run again alone in a second boot (see
    /// `retry_under_tcg`): timing under emulation, not the kernel. Listed, never hidden.
    #[serde(default)]
    pub passed_on_retry: Vec<String>,
    pub tests: Vec<libtest::TestResult>,
    /// Each failed test's panic message (libtest's captured output).
    #[serde(default)]
    pub excerpts: Vec<FailureExcerpt>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailureExcerpt {
    pub test: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownFailure {
    pub test: String,
    pub why: String,
}

impl SuiteResult {
    fn from_section(s: &Section, run: known::Run<'_>) -> SuiteResult {
        let Summary {
            tests,
            finished,
            passed,
            failed,
            ignored,
        } = libtest::parse(&s.text);
        let mut r = SuiteResult {
            name: s.name.clone(),
            rc: s.rc,
            seconds: s.seconds,
            finished,
            passed,
            failed,
            ignored,
            failures: Vec::new(),
            known_failures: Vec::new(),
            known_but_passed: Vec::new(),
            passed_on_retry: Vec::new(),
            tests,
            excerpts: libtest::failure_excerpts(&s.text)
                .into_iter()
                .map(|(test, text)| FailureExcerpt { test, text })
                .collect(),
        };
        r.classify(run);
        r
    }

    /// Fills the failure lists from the per-test outcomes and today's known list (also for
    /// results saved before the list changed).
    pub fn classify(&mut self, run: known::Run<'_>) {
        let suite = self.name.as_str();
        let named = |o: Outcome| self.tests.iter().filter(move |t| t.outcome == o);
        self.failures = named(Outcome::Failed).map(|t| t.name.clone()).collect();
        self.known_failures = named(Outcome::Failed)
            .filter_map(|t| {
                known::why(run, suite, &t.name).map(|why| KnownFailure {
                    test: t.name.clone(),
                    why: why.to_owned(),
                })
            })
            .collect();
        self.known_but_passed = named(Outcome::Ok)
            .filter(|t| known::listed_by_name(run, suite, &t.name))
            .map(|t| t.name.clone())
            .collect();
    }

    /// Failures not known for this kernel and not passed on a retry.
    pub fn unexpected(&self) -> Vec<&str> {
        self.failures
            .iter()
            .filter(|f| !self.known_failures.iter().any(|k| &k.test == *f))
            .filter(|f| !self.passed_on_retry.contains(f))
            .map(String::as_str)
            .collect()
    }

    /// Takes a retry's outcomes: each listed failure that passed there.
    pub fn merge_retry(&mut self, retry: &SuiteResult) {
        for t in &retry.tests {
            if t.outcome == Outcome::Ok && self.failures.contains(&t.name) {
                self.passed_on_retry.push(t.name.clone());
            }
        }
    }

    /// Passed: every test ran to a result and none failed but known ones (whose failures make
    /// the binary exit 101).
    pub fn ok(&self) -> bool {
        let rc_ok = self.rc == Some(0) || (self.rc == Some(101) && self.failed > 0);
        self.finished && rc_ok && self.unexpected().is_empty()
    }
}

/// What the VM's results stream says.
pub struct Findings {
    pub probes: Option<serde_json::Value>,
    pub probes_rc: Option<i32>,
    pub probes_table: String,
    /// One per expected test binary, in that order (an empty, unfinished one when missing).
    pub suites: Vec<SuiteResult>,
}

impl Findings {
    pub fn from_stream(stream: &Stream, suite_names: &[&str], run: known::Run<'_>) -> Findings {
        let section = |n: &str| stream.sections.iter().find(|s| s.name == n);
        let probes = section("probes").and_then(|s| {
            s.text
                .lines()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        });
        let suites = suite_names
            .iter()
            .map(|n| match section(n) {
                Some(s) => SuiteResult::from_section(s, run),
                None => SuiteResult::from_section(
                    &Section {
                        name: (*n).to_owned(),
                        ..Section::default()
                    },
                    run,
                ),
            })
            .collect();
        Findings {
            probes,
            probes_rc: section("probes").and_then(|s| s.rc),
            probes_table: section("probes-table")
                .map(|s| s.text.clone())
                .unwrap_or_default(),
            suites,
        }
    }
}

/// Everything saved per kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelResult {
    pub kernel: String,
    pub package: String,
    pub version: String,
    pub suite: String,
    /// `kvm` or `tcg` (software emulation: timings are not comparable with KVM's).
    pub accel: String,
    /// `git describe` of the tested tree.
    pub tree: String,
    /// Seconds since the epoch when the run ended.
    pub when: u64,
    /// qemu start → /init running.
    pub boot_s: Option<f64>,
    /// /init running → qemu gone.
    pub run_s: f64,
    pub timed_out: bool,
    /// /init reached its end.
    pub completed: bool,
    /// `linkprobe probes -o json` inside the VM (None when it printed no JSON).
    pub probes: Option<serde_json::Value>,
    /// Its exit code: 0 linkprobe can run, 1 it cannot.
    pub probes_rc: Option<i32>,
    pub probes_table: String,
    pub suites: Vec<SuiteResult>,
    /// Under software emulation, the kernel died in an earlier boot of this run before the
    /// tests finished (its console's panic line); these results are the boot after it.
    #[serde(default)]
    pub died_before: Option<String>,
}

impl KernelResult {
    /// The kernel died mid-run under software emulation: no test verdict, only an emulator's
    /// (multi-threaded TCG has torn a text-poked tracepoint site once, on 7.2). Worth one more
    /// boot; KVM runs and timeouts are not.
    pub fn died_under_tcg(&self) -> bool {
        self.accel == "tcg" && self.boot_s.is_some() && !self.completed && !self.timed_out
    }

    pub fn passed(&self) -> usize {
        self.suites.iter().map(|s| s.passed).sum()
    }

    pub fn failed(&self) -> usize {
        self.suites.iter().map(|s| s.failed).sum()
    }

    /// Whether the kernel passes: the run completed, every suite finished without failures.
    pub fn ok(&self) -> bool {
        self.completed && !self.timed_out && self.suites.iter().all(SuiteResult::ok)
    }

    /// Why this kernel did not pass, a line each (the panic messages of unexpected failures
    /// indented under them), for the summary at the end of the matrix: CI keeps only the tail.
    pub fn why_failed(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(line) = &self.died_before {
            out.push(format!("the kernel died in a first boot: {line}"));
        }
        if self.timed_out {
            out.push("the run timed out".to_owned());
        } else if !self.completed {
            out.push("/init did not finish (the kernel died or qemu ended)".to_owned());
        }
        for s in self.suites.iter().filter(|s| !s.ok()) {
            if !s.finished {
                out.push(format!("{}: did not finish (no closing line)", s.name));
            }
            let unexpected = s.unexpected();
            if unexpected.is_empty() && s.finished {
                out.push(format!("{}: exit code {:?}", s.name, s.rc));
            }
            for t in unexpected {
                out.push(format!("{}: FAILED {t}", s.name));
                if let Some(e) = s.excerpts.iter().find(|e| e.test == t) {
                    out.extend(e.text.lines().map(|l| format!("    {l}")));
                }
            }
        }
        out
    }

    /// The report printed after each kernel.
    pub fn render(&self) -> String {
        let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"));
        let mut out = format!(
            "== kernel {} ({} {} from {}, {})\n   boot {}  run {:.1}s{}{}\n",
            self.kernel,
            self.package,
            self.version,
            self.suite,
            self.accel,
            secs(self.boot_s),
            self.run_s,
            if self.timed_out { "  TIMED OUT" } else { "" },
            if self.completed {
                ""
            } else {
                "  (init did not finish)"
            },
        );
        if let Some(line) = &self.died_before {
            out.push_str(&format!(
                "   the kernel died in the first boot (software emulation), results are from a \
                 second: {line}\n"
            ));
        }
        for s in &self.suites {
            out.push_str(&format!(
                "   {:<13} {:>3} passed {:>3} failed {:>3} ignored  in {}{}{}\n",
                s.name,
                s.passed,
                s.failed,
                s.ignored,
                secs(s.seconds),
                match s.rc {
                    Some(0) => String::new(),
                    Some(rc) => format!("  rc={rc}"),
                    None => "  (did not end)".to_owned(),
                },
                if s.finished {
                    ""
                } else {
                    "  (no closing line)"
                },
            ));
            for f in s.unexpected() {
                out.push_str(&format!("      FAILED {f}\n"));
            }
            for k in &s.known_failures {
                out.push_str(&format!("      failed (known: {}) {}\n", k.why, k.test));
            }
            for t in &s.passed_on_retry {
                out.push_str(&format!(
                    "      failed, then passed when run again alone (flaky under {}): {t}\n",
                    self.accel
                ));
            }
            for t in &s.known_but_passed {
                out.push_str(&format!(
                    "      passed although listed as known to fail here (xtask/src/vm/known.rs): {t}\n"
                ));
            }
        }
        for line in self.probes_table.lines() {
            out.push_str("   | ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(if self.ok() {
            "   => ok\n"
        } else {
            "   => FAILED\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "\
@@lp-vm init 0.91 6.1.0-50-cloud-amd64
@@lp-vm begin probes 100.0
{\"type\":\"probes\",\"ok\":true}
@@lp-vm end probes rc=0 100.5
@@lp-vm begin kernel-tests 101.0
running 2 tests
test a ... ok
test b ... FAILED
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
@@lp-vm end kernel-tests rc=101 131.25
@@lp-vm begin unit-tests 132.0
running 1 test
";

    #[test]
    fn cuts_sections_and_reads_their_results() {
        let s = parse_stream(STREAM);
        assert!(!s.done);
        let names: Vec<&str> = s.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["probes", "kernel-tests", "unit-tests"]);
        assert_eq!(s.sections[1].rc, Some(101));
        assert_eq!(s.sections[1].seconds, Some(30.25));
        assert_eq!(s.sections[2].rc, None, "the VM died inside it");

        let run = known::Run {
            release: "6.12.1",
            accel: "kvm",
        };
        let f = Findings::from_stream(&s, &["kernel-tests", "unit-tests", "missing"], run);
        assert_eq!(f.probes.unwrap()["ok"], true);
        assert_eq!(f.probes_rc, Some(0));
        let suites = f.suites;
        assert_eq!(suites[0].failures, ["b"]);
        assert!(!suites[0].ok());
        assert!(!suites[1].finished);
        assert_eq!(suites[2].passed, 0);
        assert!(!suites[2].ok());
    }

    fn suite(outcomes: &[(&str, Outcome)]) -> SuiteResult {
        let tests: Vec<libtest::TestResult> = outcomes
            .iter()
            .map(|(n, o)| libtest::TestResult {
                name: (*n).to_owned(),
                outcome: *o,
            })
            .collect();
        let failed = tests
            .iter()
            .filter(|t| t.outcome == Outcome::Failed)
            .count();
        let mut s = SuiteResult {
            name: "kernel-tests".into(),
            rc: Some(if failed == 0 { 0 } else { 101 }),
            seconds: Some(1.0),
            finished: true,
            passed: tests.len() - failed,
            failed,
            ignored: 0,
            failures: Vec::new(),
            known_failures: Vec::new(),
            known_but_passed: Vec::new(),
            passed_on_retry: Vec::new(),
            tests,
            excerpts: vec![FailureExcerpt {
                test: "c".into(),
                text: "thread 'c' panicked at x.rs:1:1:\nc broke".into(),
            }],
        };
        s.classify(known::Run {
            release: "7.2.13+deb14-cloud-amd64",
            accel: "tcg",
        });
        s
    }

    #[test]
    fn a_retry_clears_only_the_failures_that_pass_there() {
        let mut first = suite(&[
            ("a", Outcome::Ok),
            ("b", Outcome::Failed),
            ("c", Outcome::Failed),
        ]);
        assert_eq!(first.unexpected(), ["b", "c"]);
        first.merge_retry(&suite(&[("b", Outcome::Ok), ("c", Outcome::Failed)]));
        assert_eq!(first.passed_on_retry, ["b"]);
        assert_eq!(first.unexpected(), ["c"]);
        assert!(!first.ok());
        let kernel = KernelResult {
            kernel: "7.2".into(),
            package: String::new(),
            version: String::new(),
            suite: String::new(),
            accel: "tcg".into(),
            tree: String::new(),
            when: 0,
            boot_s: Some(1.0),
            run_s: 1.0,
            timed_out: false,
            completed: true,
            probes: None,
            probes_rc: None,
            probes_table: String::new(),
            suites: vec![first.clone()],
            died_before: None,
        };
        assert_eq!(
            kernel.why_failed(),
            [
                "kernel-tests: FAILED c",
                "    thread 'c' panicked at x.rs:1:1:",
                "    c broke"
            ]
        );
        first.merge_retry(&suite(&[("c", Outcome::Ok)]));
        assert!(first.ok());
        // What failed stays counted as failed in the run itself.
        assert_eq!(first.failed, 2);
    }
}

//! The connection loops `bench` runs inside its network namespace (`xtask bench-worker`), and
//! the parent's side: the command line and the JSON line the worker prints.
//!
//! Every loop is bounded twice: by its count and by [`MAX_SECS`], after which it stops and
//! reports how many connections it made (`done`), so a stuck machine cannot hang the bench.
use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use testkit::{
    netns::Netns,
    workload::{connect_refused, exchange, Close, Schedule},
};

use super::{plan::Workload, session::check_interrupted};
use crate::cmd::run_stdout;

/// A worker stops after this long whatever its count.
pub const MAX_SECS: u64 = 120;
/// `refused` connects here: nothing listens on it inside the bench namespace.
const CLOSED_PORT: u16 = 9;

/// What one worker run printed.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerResult {
    /// Connections (or refused attempts) made.
    pub done: u32,
    pub secs: f64,
    /// Outcomes the workload did not expect (a refused connect that connected, …).
    pub unexpected: u32,
    pub first_unexpected: Option<String>,
}

impl WorkerResult {
    pub fn rate(&self) -> f64 {
        f64::from(self.done) / self.secs.max(f64::MIN_POSITIVE)
    }

    fn to_json(&self, workload: Workload, count: u32) -> serde_json::Value {
        serde_json::json!({
            "workload": workload.name(),
            "count": count,
            "done": self.done,
            "secs": self.secs,
            "conns_per_sec": self.rate(),
            "unexpected": self.unexpected,
            "first_unexpected": self.first_unexpected,
        })
    }

    /// Parses the worker's JSON line.
    pub fn parse(out: &str) -> Result<WorkerResult> {
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).with_context(|| format!("worker printed {out:?}"))?;
        let field = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("worker printed no `{k}`: {out:?}"))
        };
        Ok(WorkerResult {
            done: field("done")? as u32,
            secs: field("secs")?,
            unexpected: field("unexpected")? as u32,
            first_unexpected: v["first_unexpected"].as_str().map(str::to_owned),
        })
    }
}

/// `ip netns exec NS xtask bench-worker --workload W --count N`.
pub fn worker_command(ns: &Netns, workload: Workload, count: u32) -> Result<Command> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut c = ns.command(exe);
    c.args([
        "bench-worker",
        "--workload",
        workload.name(),
        "--count",
        &count.to_string(),
    ]);
    Ok(c)
}

/// Runs one worker in the namespace and returns what it printed.
pub fn run_worker(ns: &Netns, workload: Workload, count: u32) -> Result<WorkerResult> {
    let out = run_stdout(&mut worker_command(ns, workload, count)?);
    check_interrupted()?;
    let r = WorkerResult::parse(&out?)?;
    if r.done < count {
        println!(
            "[bench] WARNING: the {} worker stopped after {MAX_SECS} s with {} of {count} \
             connections",
            workload.name(),
            r.done
        );
    }
    if let Some(first) = &r.first_unexpected {
        println!(
            "[bench] WARNING: {} unexpected outcomes in {}, first: {first}",
            r.unexpected,
            workload.name()
        );
    }
    Ok(r)
}

/// `bench-worker`: runs the workload and prints one JSON line on stdout.
pub fn worker(workload: Workload, count: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(MAX_SECS);
    let start = Instant::now();
    let (done, unexpected, first_unexpected) = match workload {
        Workload::Conn => (churn(count, Close::Fin, deadline)?, 0, None),
        Workload::Abort => (churn(count, Close::Reset, deadline)?, 0, None),
        Workload::Refused => refused(count, deadline),
        Workload::Parallel => {
            let half = count / 2;
            let (a, b) = thread::scope(|s| {
                let fin = s.spawn(|| churn(count - half, Close::Fin, deadline));
                let rst = churn(half, Close::Reset, deadline);
                let fin = fin
                    .join()
                    .map_err(|_| anyhow!("the conn worker thread panicked"))?;
                Ok::<_, anyhow::Error>((fin?, rst?))
            })?;
            (a + b, 0, None)
        }
    };
    let result = WorkerResult {
        done,
        secs: start.elapsed().as_secs_f64(),
        unexpected,
        first_unexpected,
    };
    println!("{}", result.to_json(workload, count));
    Ok(())
}

/// Sequential loopback connections ([`exchange`]: connect, accept, one byte each way, close).
/// Its own listener, so two of these run side by side without sharing anything.
fn churn(count: u32, close: Close, deadline: Instant) -> Result<u32> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the churn listener")?;
    let done = Schedule::count(count.into(), deadline)
        .run(|i| exchange(&listener, close).with_context(|| format!("connection {i}")))?;
    Ok(u32::try_from(done)?)
}

/// connect() to [`CLOSED_PORT`]: each attempt is answered by an RST. Returns the attempts
/// made, how many were not refused and the first of those.
fn refused(count: u32, deadline: Instant) -> (u32, u32, Option<String>) {
    let dst = SocketAddr::from(([127, 0, 0, 1], CLOSED_PORT));
    let (mut unexpected, mut first) = (0, None);
    let Ok(done) = Schedule::count(count.into(), deadline).run(|_| {
        if let Err(e) = connect_refused(dst) {
            unexpected += 1;
            first.get_or_insert_with(|| e.to_string());
        }
        Ok::<_, std::convert::Infallible>(())
    });
    (u32::try_from(done).unwrap_or(count), unexpected, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_json_round_trips() {
        let r = WorkerResult {
            done: 10,
            secs: 0.5,
            unexpected: 1,
            first_unexpected: Some("127.0.0.1:9: connected".into()),
        };
        let line = r.to_json(Workload::Refused, 10).to_string();
        assert!(line.contains("\"conns_per_sec\":20.0"), "{line}");
        assert_eq!(WorkerResult::parse(&line).unwrap(), r);
    }

    #[test]
    fn worker_json_without_a_field_is_an_error() {
        let e = WorkerResult::parse(r#"{"done": 3}"#).unwrap_err();
        assert!(format!("{e:#}").contains("secs"), "{e:#}");
    }
}

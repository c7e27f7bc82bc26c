//! The on-call CLI commands (`status`, `flows`, `flow`, `anomalies`, `watch`, `top`): ask the
//! daemon over its API socket and render the answer as a table, a wide table or JSON.
mod anomalies;
mod conn;
mod output;
mod views;

use std::{os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use crate::{
    api::proto::{Filter, Query, Reply},
    cli::{Command, FilterArgs, View},
    clock::monotonic_ns,
    render::{event, flow, table::Paint},
};
use conn::Conn;
pub use output::CtlError;
use output::{check, json, out, overflow, reply_name};

/// Why `path` is not a cgroup v2 directory (`None` when it is): any other directory's inode
/// number would filter on nothing, silently.
fn not_cgroup2_dir(path: &Path, meta: &std::fs::Metadata) -> Option<&'static str> {
    /// `CGROUP2_SUPER_MAGIC` (linux/magic.h).
    const CGROUP2_MAGIC: i64 = 0x6367_7270;
    if !meta.is_dir() {
        return Some("not a directory");
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs we own, both alive for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // `f_type` is an i64 (`__fsword_t`) on the 64-bit targets linkprobe is built for; the
    // conversion keeps the comparison right where libc declares it narrower.
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 here, narrower on some libc targets"
    )]
    let magic = i64::from(st.f_type);
    (magic != CGROUP2_MAGIC).then_some("not on a cgroup2 filesystem")
}

/// The API filter from the command-line flags (a `--cgroup` directory becomes its id).
pub fn filter(a: &FilterArgs) -> Result<Filter, CtlError> {
    let cgroup = match &a.cgroup {
        None => None,
        Some(s) => Some(match s.parse::<u64>() {
            Ok(id) => id,
            // A cgroup v2 id is its directory's inode number.
            Err(_) => {
                let meta = std::fs::metadata(s).map_err(|source| CtlError::Cgroup {
                    path: s.clone(),
                    source,
                })?;
                if let Some(why) = not_cgroup2_dir(std::path::Path::new(s), &meta) {
                    return Err(CtlError::NotCgroup {
                        path: s.clone(),
                        why,
                    });
                }
                meta.ino()
            }
        }),
    };
    Ok(Filter {
        peer: a.peer.clone(),
        port: a.port,
        state: a.state.clone(),
        pid: a.pid,
        comm: a.comm.clone(),
        cgroup,
        netns: a.netns.clone(),
        with_rst: a.with_rst,
        with_retrans: a.with_retrans,
        failed: a.failed,
        since_ms: a.since,
        namespace: None,
        pod: None,
        envoy_flag: None,
        status: None,
    })
}

/// Runs one CLI command against the daemon at `socket`.
pub fn run(socket: &Path, cmd: Command) -> Result<(), CtlError> {
    let paint = Paint::detect();
    match cmd {
        Command::Status(a) => {
            let Reply::Status(s) = check(Conn::ask(socket, Query::Status)?)? else {
                return Err(CtlError::Unexpected("not status"));
            };
            match a.output {
                View::Json => json(&s),
                _ => out(&views::status_text(&s, paint)),
            }
        }
        Command::Flows(a) => {
            let q = Query::Flows {
                filter: Filter {
                    namespace: a.namespace.clone(),
                    pod: a.pod.clone(),
                    envoy_flag: a.envoy_flag.clone(),
                    status: a.status,
                    ..filter(&a.filter)?
                },
                sort: a.sort,
                limit: a.limit,
            };
            let r = check(Conn::ask(socket, q)?)?;
            let Reply::Flows {
                flows,
                matched,
                total,
                truncated,
            } = r
            else {
                return Err(CtlError::Unexpected(reply_name(&r)));
            };
            match a.output {
                View::Json => {
                    // stdout stays the bare array consumers parse; the cut is said on stderr.
                    if truncated || matched > flows.len() {
                        eprintln!(
                            "linkprobe: truncated: {} of {matched} matching flows shown (--limit; \
                             the daemon returns at most 2000); {total} in the table",
                            flows.len()
                        );
                    }
                    json(&flows)
                }
                v => {
                    let mut text = flow::table(&flows, monotonic_ns(), v == View::Wide, paint);
                    if matched > flows.len() {
                        text.push_str(&format!(
                            "({} of {matched} matching flows shown; --limit to see more; {total} in the table)\n",
                            flows.len()
                        ));
                    } else if matched == 0 {
                        // Not a bare header: say that nothing matched, out of how many.
                        text.push_str(&format!("(0 of {total} flows match)\n"));
                    }
                    out(&text)
                }
            }
        }
        Command::Flow(a) => {
            let r = check(Conn::ask(socket, Query::Flow { cookie: a.cookie })?)?;
            let Reply::Flow {
                flow,
                anomalies,
                hint,
            } = r
            else {
                return Err(CtlError::Unexpected(reply_name(&r)));
            };
            match a.output {
                View::Json => json(&serde_json::json!({
                    "flow": flow, "anomalies": anomalies, "hint": hint
                })),
                _ => out(&flow::story(
                    &flow,
                    &anomalies,
                    &hint,
                    monotonic_ns(),
                    paint,
                )),
            }
        }
        Command::Anomalies(a) => anomalies::run(socket, &a, paint),
        Command::Watch(a) => watch(socket, &a.filter, a.count, a.output, paint),
        Command::Top(a) => loop {
            let q = Query::Top {
                by: a.by,
                limit: a.limit,
                pods: a.pods,
                netns: a.netns.clone(),
            };
            let r = check(Conn::ask(socket, q)?)?;
            let Reply::Top(report) = r else {
                return Err(CtlError::Unexpected(reply_name(&r)));
            };
            match a.output {
                View::Json if a.once => json(&report)?,
                // Refreshing: one compact object per line, like the other streams.
                View::Json => out(&format!(
                    "{}\n",
                    serde_json::to_string(&report).unwrap_or_default()
                ))?,
                v => {
                    // Refresh in place on a terminal; a pipe gets one block per interval.
                    let clear = if paint.on && !a.once {
                        "\x1b[H\x1b[2J"
                    } else {
                        ""
                    };
                    out(&format!(
                        "{clear}{}",
                        views::top_table(&report, a.by, v == View::Wide, paint)
                    ))?;
                }
            }
            if a.once {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(a.interval));
        },
        Command::Daemon(_) => Err(CtlError::NotCli("daemon")),
        Command::Trace(_) => Err(CtlError::NotCli("trace")),
        Command::Completions { .. } => Err(CtlError::NotCli("completions")),
        Command::Probes(_) => Err(CtlError::NotCli("probes")),
    }
}

fn watch(
    socket: &Path,
    f: &FilterArgs,
    count: Option<u64>,
    view: View,
    paint: Paint,
) -> Result<(), CtlError> {
    if f.since.is_some() {
        // Not silently ignored: a live stream has no past to filter.
        return Err(CtlError::WatchSince);
    }
    let mut conn = Conn::open(socket)?;
    conn.send(Query::Watch { filter: filter(f)? })?;
    let mut seen = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    loop {
        match check(conn.reply()?)? {
            // On stderr, so piped JSON stays clean; scripts can wait for it.
            Reply::Subscribed => eprintln!("linkprobe: watching live events (Ctrl-C to stop)"),
            Reply::Event { event: e } => {
                match view {
                    View::Json => out(&format!(
                        "{}\n",
                        serde_json::to_string(&e).unwrap_or_default()
                    ))?,
                    _ => out(&format!("{}\n", event::line(&e, paint)))?,
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            Reply::Overflow { lost } => overflow(lost, view)?,
            other => return Err(CtlError::Unexpected(reply_name(&other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--cgroup` names a cgroup v2 directory or it is refused (any other path's inode number
    /// would match nothing, silently); `watch --since` is refused rather than ignored.
    #[test]
    fn cgroup_paths_must_be_cgroup2_directories_and_watch_takes_no_since() {
        let args = |path: &str| FilterArgs {
            cgroup: Some(path.to_owned()),
            ..FilterArgs::default()
        };
        let Err(e) = filter(&args("/tmp")) else {
            panic!("/tmp accepted as a cgroup")
        };
        assert!(e.to_string().contains("not on a cgroup2 filesystem"), "{e}");
        let Err(e) = filter(&args("/etc/hostname")) else {
            panic!("a file accepted as a cgroup")
        };
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(filter(&args("42")).map(|f| f.cgroup).ok(), Some(Some(42)));
        let cgroup2 = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(2) == Some("cgroup2"))
            .and_then(|l| l.split(' ').nth(1).map(str::to_owned));
        if let Some(root) = cgroup2 {
            assert!(
                filter(&args(&root)).is_ok(),
                "{root} is a cgroup2 directory"
            );
        }
        let since = FilterArgs {
            since: Some(1000),
            ..FilterArgs::default()
        };
        let err = watch(
            Path::new("/nonexistent"),
            &since,
            None,
            View::Table,
            Paint::OFF,
        );
        assert!(matches!(err, Err(CtlError::WatchSince)), "{err:?}");
    }
}

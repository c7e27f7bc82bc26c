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

/// The API filter from the command-line flags (a `--cgroup` directory becomes its id).
pub fn filter(a: &FilterArgs) -> Result<Filter, CtlError> {
    let cgroup = match &a.cgroup {
        None => None,
        Some(s) => Some(match s.parse::<u64>() {
            Ok(id) => id,
            // A cgroup v2 id is its directory's inode number.
            Err(_) => std::fs::metadata(s)
                .map_err(|source| CtlError::Cgroup {
                    path: s.clone(),
                    source,
                })?
                .ino(),
        }),
    };
    Ok(Filter {
        peer: a.peer.clone(),
        port: a.port,
        state: a.state.clone(),
        pid: a.pid,
        comm: a.comm.clone(),
        cgroup,
        with_rst: a.with_rst,
        with_retrans: a.with_retrans,
        failed: a.failed,
        since_ms: a.since,
        namespace: None,
        pod: None,
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
            } = r
            else {
                return Err(CtlError::Unexpected(reply_name(&r)));
            };
            match a.output {
                View::Json => json(&flows),
                v => {
                    let mut text = flow::table(&flows, monotonic_ns(), v == View::Wide, paint);
                    if matched > flows.len() {
                        text.push_str(&format!(
                            "({} of {matched} matching flows shown; --limit to see more; {total} in the table)\n",
                            flows.len()
                        ));
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
                        views::top_table(&report, v == View::Wide, paint)
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

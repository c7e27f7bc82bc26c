//! The one entry the binary calls: each command of [`Cli`] wired to the stages that serve it.
//! Only this module knows both the command line and the stages' own arguments.
use clap::CommandFactory as _;

use crate::{
    api::{self, socket::SocketError, ApiLoop},
    cli::{Cli, Command, DaemonArgs, FlowStore, ProbesArgs, ProbesView},
    ctl::{self, CtlError},
    daemon::{
        self,
        exporter::{Exporter, ExporterError},
        RunError,
    },
    event::rst_reason::ReasonNames,
    host::{
        lock::{self, LockError},
        run_dir::{RunDir, RunDirError},
    },
    kernel::{
        detail::DetailSpec,
        probes_check::{self, ProbesError},
    },
};

/// Why a command failed; each names what was wrong in its own words.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Exporter(#[from] ExporterError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Api(#[from] SocketError),
    #[error(transparent)]
    Probes(#[from] ProbesError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error("no probe can run on this kernel (see above)")]
    NoProbeRuns,
    #[error("--strict: {off} of {total} probes are off on this kernel")]
    ProbesOff { off: usize, total: usize },
}

/// Runs one command to its end.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    match cli.command {
        Command::Daemon(args) => {
            let gid = api_group(&args)?;
            let run_dir = RunDir::prepare(&args.run_dir, gid)?;
            let _lock = lock::acquire(&run_dir)?;
            // Bind first: a taken port is reported before any probe is loaded.
            let exporter = args.metrics_addr.0.map(Exporter::start).transpose()?;
            let mut started = daemon::start(&args.probe)?;
            started.exporter = exporter;
            let api = api_for_daemon(&args, &run_dir, gid, &started.loaded.reason_names)?;
            daemon::announce_ready(&args.probe, &started);
            runtime.block_on(daemon::run(&args.probe, started, api))?;
        }
        Command::Trace(mut args) => {
            // A private look at one host or namespace: every hook hit unless asked otherwise.
            args.detail.get_or_insert(DetailSpec::All);
            let started = daemon::start(&args)?;
            daemon::announce_ready(&args, &started);
            runtime.block_on(daemon::run(&args, started, None))?;
        }
        Command::Probes(args) => probes(&args)?,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "linkprobe",
                &mut std::io::stdout(),
            );
        }
        other => ctl::run(&cli.socket, other)?,
    }
    Ok(())
}

/// The daemon's API server as its flags ask: `<run dir>/api.sock`, root only or with
/// `--api-group`; none with `--no-api`.
fn api_for_daemon(
    args: &DaemonArgs,
    run_dir: &RunDir,
    gid: Option<u32>,
    reasons: &ReasonNames,
) -> Result<Option<ApiLoop>, SocketError> {
    if args.no_api {
        return Ok(None);
    }
    api::spawn(run_dir, gid, reasons.clone()).map(Some)
}

/// `--api-group` as a gid, resolved before the run directory is made (it decides its mode).
fn api_group(args: &DaemonArgs) -> Result<Option<u32>, SocketError> {
    if args.no_api {
        return Ok(None);
    }
    args.api_group
        .as_deref()
        .map(api::socket::group_id)
        .transpose()
}

/// `linkprobe probes`: prints the report; an error when linkprobe cannot run here (or, with
/// --strict, when a probe is off), so the exit code answers the question.
fn probes(args: &ProbesArgs) -> Result<(), CommandError> {
    let report = probes_check::check(
        args.cgroup_root.clone(),
        args.flow_store == FlowStore::Lru,
        !args.no_preflight,
    )?;
    match args.output {
        ProbesView::Table => print!("{}", probes_check::render_text(&report)),
        ProbesView::Json => println!("{}", probes_check::render_json(&report)),
    }
    if !report.ok {
        return Err(CommandError::NoProbeRuns);
    }
    if args.strict && report.attached < report.total {
        return Err(CommandError::ProbesOff {
            off: report.total - report.attached,
            total: report.total,
        });
    }
    Ok(())
}

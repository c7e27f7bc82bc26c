use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use probe_user::{
    api,
    cli::{Cli, Command, ProbesArgs, ProbesView},
    ctl, daemon,
    detail::DetailSpec,
    exporter::Exporter,
    lock, probes_check,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // Usage errors exit 2 (clap), runtime errors 1.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linkprobe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Daemon(args) => {
            let _lock = lock::acquire(&args.run_dir)?;
            // Bind first: a taken port is reported before any probe is loaded.
            let exporter = args.metrics_addr.0.map(Exporter::start).transpose()?;
            let mut started = daemon::start(&args.probe)?;
            started.exporter = exporter;
            let api = api::for_daemon(&args, &started.loaded.reason_names)?;
            runtime.block_on(daemon::run(&args.probe, started, api))?;
        }
        Command::Trace(mut args) => {
            // A private look at one host or namespace: every hook hit unless asked otherwise.
            args.detail.get_or_insert(DetailSpec::All);
            let started = daemon::start(&args)?;
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

/// `linkprobe probes`: prints the report; an error when linkprobe cannot run here (or, with
/// --strict, when a probe is off), so the exit code answers the question.
fn probes(args: &ProbesArgs) -> anyhow::Result<()> {
    let report = probes_check::check(args.cgroup_root.clone())?;
    match args.output {
        ProbesView::Table => print!("{}", probes_check::render_text(&report)),
        ProbesView::Json => println!("{}", probes_check::render_json(&report)),
    }
    if !report.ok {
        anyhow::bail!("no probe can run on this kernel (see above)");
    }
    if args.strict && report.attached < report.total {
        anyhow::bail!(
            "--strict: {} of {} probes are off on this kernel",
            report.total - report.attached,
            report.total
        );
    }
    Ok(())
}

use std::process::ExitCode;

use clap::Parser as _;
use probe_user::cli::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // Usage errors exit 2 (clap), runtime errors 1.
    let cli = Cli::parse();
    match probe_user::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line.
            eprintln!("linkprobe: error: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

//! Entry point of platformctl: parse, load the configuration, run, print; exit 0 when the command
//! succeeded, 1 when it found a problem, 2 when it could not run (bad arguments or configuration).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use platformctl::{Cli, Settings, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let report = match Settings::load() {
        Ok(settings) => run(&settings, &cli.command).await,
        Err(error) => Err(error),
    };
    match report {
        Ok(report) => {
            // The report is the program's output: written, not logged.
            let mut out = std::io::stdout().lock();
            let written = if cli.json {
                writeln!(out, "{}", report.json)
            } else {
                write!(out, "{}", report.text)
            };
            match (written, report.ok) {
                (Ok(()), true) => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        Err(error) => {
            let message = platform_service::error::error_chain(error.as_ref());
            let _ = writeln!(std::io::stderr().lock(), "platformctl: {message}");
            ExitCode::from(2)
        }
    }
}

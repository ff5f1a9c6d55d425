//! The `nodeportd` binary.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use nodeportd::cli::{Cli, Command, LogFormat};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            init_logs(args.log_format);
            nodeportd::cli::run::run(args)
        }
        Command::Conntrack(args) => nodeportd::cli::conntrack::run(args),
        Command::Plugin(args) => {
            init_logs(LogFormat::Text);
            nodeportd::cli::plugin::run(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeportd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

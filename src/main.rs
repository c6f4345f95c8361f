//! k8s-alog: parse the command line, run it, map the error chain to an exit code.

use std::process::ExitCode;

use clap::Parser;
use k8s_alog::capture::CaptureError;
use k8s_alog::cli::{Cli, Command};

fn main() -> ExitCode {
    k8s_alog::tune_allocator();
    let cli = Cli::parse();
    k8s_alog::init_logging(&cli.log_level, matches!(cli.command, Command::Top(_)));
    let res = match &cli.command {
        Command::Record(a) => k8s_alog::cmd::record::run(a),
        Command::Top(a) => k8s_alog::cmd::top::run(a),
        Command::Push(a) => k8s_alog::cmd::push::run(a),
        Command::Doctor(a) => k8s_alog::cmd::doctor::run(a),
        Command::Generate(a) => k8s_alog::cmd::generate::run(a),
        Command::Resolve(a) => k8s_alog::cmd::generate::resolve(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k8s-alog: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<CaptureError>() {
        Some(CaptureError::NotPermitted) => 3,
        Some(CaptureError::NoBtf) => 4,
        Some(CaptureError::Refused { .. } | CaptureError::NoHook(_)) => 5,
        Some(CaptureError::Config(_)) => 2,
        None => 1,
    }
}

//! k8s-alog: parse the command line, run it, map the error chain to an exit code.

use std::process::ExitCode;

use clap::Parser;
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
            ExitCode::from(k8s_alog::exit::code_of(&e))
        }
    }
}

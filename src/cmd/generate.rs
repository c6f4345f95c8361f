//! Hidden packaging helpers: `k8s-alog generate` writes shell completions and man pages
//! from the CLI definition itself (`make generate` commits them under completions/ and
//! man/); `k8s-alog resolve` shows what the built-in resolver makes of host:port.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, ResolveArgs};

/// The files `generate` writes, relative to its output directory.
pub fn outputs() -> Vec<String> {
    let mut v = vec![
        "completions/k8s-alog.bash".to_string(),
        "completions/_k8s-alog".to_string(),
        "completions/k8s-alog.fish".to_string(),
        "man/k8s-alog.1".to_string(),
    ];
    for sub in visible_subcommands() {
        v.push(format!("man/k8s-alog-{sub}.1"));
    }
    v
}

fn command() -> clap::Command {
    // Environment values never go into generated files (they would differ per machine).
    fn hide_env(c: clap::Command) -> clap::Command {
        c.mut_args(|a| a.hide_env_values(true))
            .mut_subcommands(hide_env)
    }
    let mut c = hide_env(Cli::command());
    c.build();
    c
}

fn visible_subcommands() -> Vec<String> {
    command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name().to_string())
        .collect()
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    write_all(&args.out_dir)?;
    for f in outputs() {
        eprintln!("wrote {}", args.out_dir.join(f).display());
    }
    Ok(())
}

/// Write every completion file and man page below `dir`.
pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    let comp = dir.join("completions");
    let man = dir.join("man");
    for d in [&comp, &man] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for (shell, file) in [
        (Shell::Bash, "k8s-alog.bash"),
        (Shell::Zsh, "_k8s-alog"),
        (Shell::Fish, "k8s-alog.fish"),
    ] {
        let mut buf = Vec::new();
        let mut c = command();
        clap_complete::generate(shell, &mut c, "k8s-alog", &mut buf);
        write(&comp.join(file), &buf)?;
    }
    let top = command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(top.clone())
        .render(&mut buf)
        .context("rendering the man page")?;
    write(&man.join("k8s-alog.1"), &buf)?;
    for sub in top
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // clap wants 'static names; this command runs once and exits.
        let name: &'static str = Box::leak(format!("k8s-alog-{}", sub.get_name()).into_boxed_str());
        let page = sub
            .clone()
            .name(name)
            .bin_name(format!("k8s-alog {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .with_context(|| format!("rendering {name}(1)"))?;
        write(&man.join(format!("{name}.1")), &buf)?;
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

pub fn resolve(args: &ResolveArgs) -> anyhow::Result<()> {
    let addrs = crate::netaddr::resolve(&args.host_port)?;
    for a in addrs {
        println!("{a}");
    }
    Ok(())
}

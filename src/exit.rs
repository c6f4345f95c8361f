//! Exit codes: the one list every subcommand, `doctor` and the help texts use, and the
//! mapping from an error chain to its code. Pure.

use crate::capture::CaptureError;

/// Done (for `doctor`: capture runs fully here).
pub const DONE: u8 = 0;
/// Any other failure (for `doctor`: doctor itself failed).
pub const ERROR: u8 = 1;
/// The command line cannot be run as given.
pub const USAGE: u8 = 2;
/// Not permitted to load BPF programs.
pub const NOT_PERMITTED: u8 = 3;
/// The kernel has no BTF.
pub const NO_BTF: u8 = 4;
/// The kernel refused the capture programs.
pub const REFUSED: u8 = 5;
/// `doctor`: capture runs, with something missing (the verdict says what).
pub const DEGRADED: u8 = 6;
/// `doctor`: capture runs, but the `--oap` address does not resolve or does not answer.
pub const OAP_UNREACHABLE: u8 = 7;

/// A command line that cannot be run as given: exit code `USAGE`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand: `Err(usage("--flag ..."))?`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The exit code for an error chain.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return USAGE;
    }
    match e.downcast_ref::<CaptureError>() {
        Some(CaptureError::NotPermitted) => NOT_PERMITTED,
        Some(CaptureError::NoBtf) => NO_BTF,
        Some(CaptureError::Refused { .. } | CaptureError::NoHook(_)) => REFUSED,
        Some(CaptureError::Config(_)) => USAGE,
        None => ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_map_to_their_codes() {
        assert_eq!(code_of(&usage("--oap x")), USAGE);
        assert_eq!(
            code_of(&usage("--oap x").context("starting push")),
            USAGE,
            "context on top keeps the code"
        );
        assert_eq!(code_of(&CaptureError::NotPermitted.into()), NOT_PERMITTED);
        assert_eq!(code_of(&CaptureError::NoBtf.into()), NO_BTF);
        assert_eq!(code_of(&CaptureError::Config("x".into()).into()), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("disk full")), ERROR);
    }

    /// Every help text that lists exit codes gives each code the number it has here.
    #[test]
    fn help_texts_name_the_codes_as_they_are() {
        let named = [
            (NOT_PERMITTED, "not permitted"),
            (NO_BTF, "kernel without BTF"),
            (USAGE, "bad usage"),
            (DEGRADED, "capture runs degraded"),
        ];
        let mut cmd = crate::cli::Cli::command();
        let mut texts = vec![cmd.render_long_help().to_string()];
        for sub in ["record", "top", "push", "doctor"] {
            let s = cmd.find_subcommand_mut(sub).expect(sub);
            texts.push(s.render_long_help().to_string());
        }
        let mut seen = 0;
        for t in &texts {
            let Some(i) = t.find("Exit codes:") else {
                continue;
            };
            let para: String = t[i..].split("\n\n").next().unwrap().replace('\n', " ");
            for (code, words) in named {
                if let Some(j) = para.find(words) {
                    let before = para[..j].trim_end();
                    assert!(
                        before.ends_with(&code.to_string()),
                        "{words:?} is exit code {code}: {para}"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 10, "exit codes found in the help texts: {seen}");
    }
}

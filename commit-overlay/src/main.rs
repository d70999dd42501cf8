//! `xorbang-commit-overlay`: on a dev-mode machine, turns what was written over the base into
//! verified extension images: changes under /usr and /opt into a system extension, under /etc
//! into a configuration extension, both named `--name`, with release files matching the booted
//! base. What an extension cannot carry (deleted files, replaced directories, anything else
//! under /) is listed, never dropped silently.
//!
//! ```text
//! xorbang-commit-overlay --name NAME [-o DIR] [--dry-run]
//! xorbang-commit-overlay --discard
//! ```
//!
//! Under `xorbang.dev=persist` the images go to the state partition (`lib/extensions/`,
//! `lib/confexts/`: /var/lib/extensions and /var/lib/confexts once it is /var), dev-mode boots
//! of this base merge them from then on, and the upper is set aside at the next boot, so the
//! changes live in the extension and nowhere else. `-o DIR` writes `DIR/extensions/` and
//! `DIR/confexts/` instead and leaves the upper alone.

mod commit;
mod stage;
mod upper;

use std::path::PathBuf;
use std::process::ExitCode;

use commit::{Command, Machine};

const USAGE: &str = "usage: xorbang-commit-overlay --name NAME [-o DIR] [--dry-run]
       xorbang-commit-overlay --discard
options for tests: --boot-report FILE (/run/xorbang/boot.json), --base DIR (/run/xorbang/base),
                   --root DIR (/), --mksquashfs PATH (mksquashfs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, machine) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("xorbang-commit-overlay: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match commit::run(&command, &machine) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "xorbang-commit-overlay: {}",
                xorbang_formats::error_chain::error_chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<(Command, Machine), String> {
    let mut machine = Machine::default();
    let mut name = None;
    let mut output = None;
    let (mut dry_run, mut discard) = (false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "-o" | "--output" => output = Some(PathBuf::from(value()?)),
            "--dry-run" => dry_run = true,
            "--discard" => discard = true,
            "--boot-report" => machine.boot_report = PathBuf::from(value()?),
            "--base" => machine.base = PathBuf::from(value()?),
            "--root" => machine.root = PathBuf::from(value()?),
            "--mksquashfs" => machine.mksquashfs = PathBuf::from(value()?),
            "-h" | "--help" => return Err("help".to_owned()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let command = match (discard, name) {
        (true, None) if output.is_none() && !dry_run => Command::Discard,
        (true, _) => return Err("--discard takes no other option".to_owned()),
        (false, Some(name)) => Command::Commit {
            name,
            output,
            dry_run,
        },
        (false, None) => return Err("--name NAME is needed".to_owned()),
    };
    Ok((command, machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(Command, Machine), String> {
        parse_args(&args.iter().map(|arg| arg.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn commit_and_discard_are_told_apart() {
        let (command, machine) =
            parse(&["--name", "tools", "--dry-run", "--root", "/x"]).expect("valid");
        assert_eq!(
            command,
            Command::Commit {
                name: "tools".into(),
                output: None,
                dry_run: true
            }
        );
        assert_eq!(machine.root, PathBuf::from("/x"));
        assert_eq!(parse(&["--discard"]).expect("valid").0, Command::Discard);
        for bad in [
            &["--discard", "--name", "x"][..],
            &["--dry-run"],
            &["--name"],
            &["--frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

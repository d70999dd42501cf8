//! `xorbang-installer`: installs the image this machine runs (netbooted, or from any disk)
//! onto a disk in the A/B layout of `xorbang-build os`, so the disk then boots alone under
//! UEFI with Secure Boot: the image and its hash tree in slot A, an empty slot B, an ESP with
//! systemd-boot, the UKI and the host config, an empty /var.
//!
//! ```text
//! xorbang-installer --disk /dev/X [--tree URL] [--uki FILE|URL]
//!                   [--host NAME | --host-config FILE] [--wipe] [--dry-run]
//! ```
//!
//! The UKI is `--uki`, else `install.efi` of the netboot tree: `--tree`, else the
//! `xorbang.netboot=` URL the machine booted with. `--host NAME` installs the tree's
//! `hosts/NAME.toml`. Nothing is written until every check has passed; `--dry-run` stops
//! there and prints the plan. Every input the machine provides can be replaced for tests.

mod block;
mod checks;
mod esp;
mod host;
mod install;
mod plan;
mod running;
mod source;
mod sys;
mod target;
mod uki;
mod units;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use host::HostChoice;
use install::Request;

const USAGE: &str = "usage: xorbang-installer --disk /dev/X [--tree URL] [--uki FILE|URL] \
                     [--host NAME | --host-config FILE] [--wipe] [--dry-run]
options for tests: --boot-report FILE (/run/xorbang/boot.json), --cmdline TEXT (/proc/cmdline),
                   --sys DIR (/sys), --proc DIR (/proc), --boot-loader FILE (systemd-boot),
                   --keys DIR (/usr/lib/xorbang/keys)";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let request = match parse_arguments(&arguments) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("xorbang-installer: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match install::run(&request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "xorbang-installer: {}",
                xorbang_formats::error_chain::error_chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}

fn parse_arguments(arguments: &[String]) -> Result<Request, String> {
    let mut disk = None;
    let mut request = Request {
        disk: PathBuf::new(),
        tree: None,
        uki: None,
        host: None,
        wipe: false,
        dry_run: false,
        boot_report: PathBuf::from(running::BOOT_REPORT),
        cmdline: None,
        sys: PathBuf::from("/sys"),
        proc_dir: PathBuf::from("/proc"),
        boot_loader: None,
        keys: PathBuf::from(host::KEYS_DIR),
        scratch: scratch_base(),
    };
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{word} needs a value"))
        };
        match word.as_str() {
            "--disk" => disk = Some(PathBuf::from(value()?)),
            "--tree" => request.tree = Some(value()?),
            "--uki" => request.uki = Some(value()?),
            "--host" | "--host-config" if request.host.is_some() => {
                return Err("give one of --host and --host-config".to_owned())
            }
            "--host" => request.host = Some(HostChoice::Name(value()?)),
            "--host-config" => request.host = Some(HostChoice::File(PathBuf::from(value()?))),
            "--wipe" => request.wipe = true,
            "--dry-run" => request.dry_run = true,
            "--boot-report" => request.boot_report = PathBuf::from(value()?),
            "--cmdline" => request.cmdline = Some(value()?),
            "--sys" => request.sys = PathBuf::from(value()?),
            "--proc" => request.proc_dir = PathBuf::from(value()?),
            "--boot-loader" => request.boot_loader = Some(PathBuf::from(value()?)),
            "--keys" => request.keys = PathBuf::from(value()?),
            "-h" | "--help" => return Err("help".to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    request.disk = disk.ok_or("--disk /dev/X is needed")?;
    Ok(request)
}

/// `$TMPDIR`, else /run: memory on a netbooted machine, where /tmp may be too.
fn scratch_base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/run"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, String> {
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        parse_arguments(&words)
    }

    #[test]
    fn arguments_parse_and_mistakes_are_named() {
        let request = parse("--disk /dev/vdb --host web --wipe --dry-run --tree http://h/t/")
            .expect("parses");
        assert_eq!(request.disk, PathBuf::from("/dev/vdb"));
        assert_eq!(request.host, Some(HostChoice::Name("web".into())));
        assert!(request.wipe && request.dry_run);
        assert_eq!(request.boot_report, PathBuf::from("/run/xorbang/boot.json"));
        for (bad, expected) in [
            ("", "--disk /dev/X is needed"),
            ("--disk", "--disk needs a value"),
            (
                "--disk /dev/vdb --frobnicate",
                "unknown argument \"--frobnicate\"",
            ),
            (
                "--disk /dev/vdb --host a --host-config b",
                "give one of --host and --host-config",
            ),
        ] {
            assert_eq!(parse(bad).expect_err(bad), expected, "{bad}");
        }
    }
}

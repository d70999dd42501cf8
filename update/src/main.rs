//! `xorbang-update`: moves a xorbang machine to another version of its image, A/B style.
//!
//! ```text
//! xorbang-update [--channel URL|DIR] check            newest version offered vs the booted one
//! xorbang-update [--channel URL|DIR] apply [VERSION]  install it into the other slot (--tries N)
//! xorbang-update status                               slots, boot entries, tries, what booted
//! ```
//! The channel is `--channel`, else the first line of `/etc/xorbang/update-channel`, else of
//! `/usr/lib/xorbang/update-channel`. Every input path can be replaced (`--boot-report`,
//! `--keys`, `--esp`, `--efivars`) so it runs against a test tree.

mod apply;
mod channel;
mod machine;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xorbang_formats::error_chain::error_chain;
use xorbang_formats::signature::{self, PinnedKey};

use apply::{say, slot_name, Request};
use channel::Channel;
use machine::Machine;

const CHANNEL_FILES: &[&str] = &[
    "/etc/xorbang/update-channel",
    "/usr/lib/xorbang/update-channel",
];
/// How many boots a new version gets before systemd-boot falls back (kernel-install's default).
const DEFAULT_TRIES: u32 = 3;
const USAGE: &str = "usage: xorbang-update [--channel URL|DIR] [--boot-report PATH] [--keys DIR] \
                     [--esp DIR] [--efivars DIR] check | apply [VERSION] [--tries N] | status";

#[derive(Debug, Default)]
struct Options {
    command: String,
    version: Option<String>,
    channel: Option<String>,
    boot_report: Option<PathBuf>,
    keys: Option<PathBuf>,
    esp: Option<PathBuf>,
    efivars: Option<PathBuf>,
    tries: Option<u32>,
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match parse_options(&arguments).and_then(|options| run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xorbang-update: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(arguments: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        let mut value = |name: &str| {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match word.as_str() {
            "--channel" => options.channel = Some(value(word)?),
            "--boot-report" => options.boot_report = Some(value(word)?.into()),
            "--keys" => options.keys = Some(value(word)?.into()),
            "--esp" => options.esp = Some(value(word)?.into()),
            "--efivars" => options.efivars = Some(value(word)?.into()),
            "--tries" => {
                let text = value(word)?;
                let tries = text
                    .parse()
                    .ok()
                    .filter(|tries| (1..=9).contains(tries))
                    .ok_or_else(|| format!("--tries {text}: not a number from 1 to 9"))?;
                options.tries = Some(tries);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}; {USAGE}")),
            command if options.command.is_empty() => options.command = command.to_owned(),
            version if options.command == "apply" && options.version.is_none() => {
                options.version = Some(version.to_owned())
            }
            extra => return Err(format!("unexpected {extra:?}; {USAGE}")),
        }
    }
    match options.command.as_str() {
        "check" | "apply" | "status" => Ok(options),
        "" => Err(USAGE.to_owned()),
        other => Err(format!("unknown command {other:?}; {USAGE}")),
    }
}

fn run(options: &Options) -> Result<(), String> {
    let report = options
        .boot_report
        .clone()
        .unwrap_or_else(|| PathBuf::from(machine::BOOT_REPORT));
    let machine = Machine::read(&report).map_err(|error| error_chain(&error))?;
    match options.command.as_str() {
        "status" => {
            let esp = machine::find_esp(options.esp.as_deref()).ok();
            let efivars = options
                .efivars
                .clone()
                .unwrap_or_else(|| PathBuf::from(status::EFIVARS));
            print!("{}", status::render(&machine, esp.as_deref(), &efivars));
            Ok(())
        }
        "check" => {
            let channel = channel(options)?;
            let newest = apply::newest(&machine, &channel).map_err(|error| error_chain(&error))?;
            let verdict =
                match xorbang_formats::version::compare_versions(&newest, &machine.version) {
                    std::cmp::Ordering::Greater => "an update is available",
                    _ => "up to date",
                };
            say(&format!(
                "running {} {}, {channel} offers {newest}: {verdict}",
                machine.image_id, machine.version
            ));
            Ok(())
        }
        _ => {
            let channel = channel(options)?;
            let keys = pinned_keys(
                options
                    .keys
                    .as_deref()
                    .unwrap_or(Path::new("/usr/lib/xorbang/keys")),
            )?;
            let esp =
                machine::find_esp(options.esp.as_deref()).map_err(|error| error_chain(&error))?;
            let request = Request {
                channel: &channel,
                keys: &keys,
                esp: &esp,
                version: options.version.as_deref(),
                tries: options.tries.unwrap_or(DEFAULT_TRIES),
            };
            let outcome = apply::apply(&machine, &request).map_err(|error| error_chain(&error))?;
            let installed = match outcome {
                apply::Outcome::Installed(installed) => installed,
                apply::Outcome::UpToDate { newest } => {
                    say(&format!(
                        "running {} {}, the channel's newest is {newest}: nothing to install \
                         (name a version to install an older one)",
                        machine.image_id, machine.version
                    ));
                    return Ok(());
                }
            };
            say(&format!(
                "installed {} {} into slot {} as {}: {} bytes in {:.1} s; reboot to boot it",
                machine.image_id,
                installed.version,
                slot_name(installed.slot),
                installed.entry,
                installed.bytes,
                installed.seconds
            ));
            Ok(())
        }
    }
}

fn channel(options: &Options) -> Result<Channel, String> {
    let text = match &options.channel {
        Some(text) => text.clone(),
        None => CHANNEL_FILES
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| text.lines().next().map(|line| line.trim().to_owned()))
            .ok_or_else(|| {
                format!(
                    "no channel: pass --channel or write one into {}",
                    CHANNEL_FILES.join(" or ")
                )
            })?,
    };
    Channel::parse(&text).map_err(|error| error_chain(&error))
}

/// The keys the running (verified) image pins, the ones host configs are checked with.
fn pinned_keys(dir: &Path) -> Result<Vec<PinnedKey>, String> {
    let listing = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut keys = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".pub") {
            continue;
        }
        let path = entry.path();
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        keys.push(PinnedKey::parse(&name, &text).map_err(|error| error_chain(&error))?);
    }
    signature::self_test().map_err(|error| error_chain(&error))?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_and_options_parse() {
        let options =
            parse_options(&words("--channel http://h/c apply 2 --tries 1")).expect("parses");
        assert_eq!(options.command, "apply");
        assert_eq!(options.version.as_deref(), Some("2"));
        assert_eq!(options.tries, Some(1));
        assert_eq!(options.channel.as_deref(), Some("http://h/c"));
        for (bad, expected) in [
            ("", "usage:"),
            ("frobnicate", "unknown command \"frobnicate\""),
            ("status extra", "unexpected \"extra\""),
            ("apply --tries 0", "--tries 0: not a number from 1 to 9"),
            ("--channel", "--channel needs a value"),
            ("--bogus status", "unknown option --bogus"),
        ] {
            let error = parse_options(&words(bad)).expect_err(bad);
            assert!(error.starts_with(expected), "{bad}: {error}");
        }
    }
}

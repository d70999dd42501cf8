//! What the init was asked to do, as typed values read from the kernel command line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmdline::Cmdline;
use crate::devspec::{DeviceSpec, DeviceSpecError};

/// Keys of our own namespace this build understands; any other `xorbang.*` key is warned
/// about (a typo must not silently change nothing) but does not stop the boot.
const KNOWN_KEYS: &[&str] = &["xorbang.dev", "xorbang.timeout", "xorbang.failure"];

const DEFAULT_INIT: &str = "/sbin/init";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-only root, nothing writable survives or leaks in.
    Production,
    /// OverlayFS with a tmpfs upper over the verified base: writable, gone at reboot.
    Dev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Reboot,
    Poweroff,
    Halt,
    Shell,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reboot => "reboot",
            Self::Poweroff => "poweroff",
            Self::Halt => "halt",
            Self::Shell => "shell",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("{key}={value}: {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{key} needs a value")]
    MissingValue { key: &'static str },
    #[error("no root= on the kernel command line: nothing to boot")]
    NoRoot,
    #[error(transparent)]
    Root(#[from] DeviceSpecError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub root: DeviceSpec,
    /// `rootfstype=`; when absent the device must hold SquashFS.
    pub rootfstype: Option<String>,
    pub rootflags: Option<String>,
    pub mode: Mode,
    pub timeout: Duration,
    pub failure: FailurePolicy,
    pub init: PathBuf,
    pub init_args: Vec<String>,
    /// The kernel's own `debug` flag: systemd logs verbosely with it, and so do we.
    pub debug: bool,
}

impl BootOptions {
    /// Reads every option; returns the options and the warnings to log.
    pub fn from_cmdline(cmdline: &Cmdline) -> Result<(Self, Vec<String>), OptionError> {
        let root = match cmdline.last("root") {
            Some(Some(value)) => DeviceSpec::parse(value)?,
            Some(None) => return Err(OptionError::MissingValue { key: "root" }),
            None => return Err(OptionError::NoRoot),
        };
        let options = Self {
            root,
            rootfstype: value_of(cmdline, "rootfstype")?.map(str::to_owned),
            rootflags: value_of(cmdline, "rootflags")?.map(str::to_owned),
            mode: mode(cmdline)?,
            timeout: timeout(cmdline)?,
            failure: failure_policy(cmdline)?,
            init: init_path(cmdline)?,
            init_args: cmdline.init_args.clone(),
            debug: cmdline.last("debug").is_some(),
        };
        Ok((options, unknown_key_warnings(cmdline)))
    }
}

/// The failure policy alone, for when the rest of the command line could not be read: a bad
/// value anywhere must still end in the policy the user asked for.
pub fn failure_policy_or_default(cmdline: &Cmdline) -> FailurePolicy {
    failure_policy(cmdline).unwrap_or(FailurePolicy::Reboot)
}

fn value_of<'a>(cmdline: &'a Cmdline, key: &'static str) -> Result<Option<&'a str>, OptionError> {
    match cmdline.last(key) {
        Some(Some(value)) => Ok(Some(value)),
        Some(None) => Err(OptionError::MissingValue { key }),
        None => Ok(None),
    }
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> OptionError {
    OptionError::BadValue {
        key,
        value: value.to_owned(),
        expected,
    }
}

fn mode(cmdline: &Cmdline) -> Result<Mode, OptionError> {
    const KEY: &str = "xorbang.dev";
    match cmdline.last(KEY) {
        None => Ok(Mode::Production),
        // A bare `xorbang.dev` reads as "on", like systemd's boolean switches.
        Some(None) => Ok(Mode::Dev),
        Some(Some("1" | "yes" | "true" | "on")) => Ok(Mode::Dev),
        Some(Some("0" | "no" | "false" | "off")) => Ok(Mode::Production),
        Some(Some(value @ "persist")) => Err(bad(
            KEY,
            value,
            "persistent dev mode needs a state partition, which this build does not support yet",
        )),
        Some(Some(value)) => Err(bad(KEY, value, "expected 1 or 0")),
    }
}

fn timeout(cmdline: &Cmdline) -> Result<Duration, OptionError> {
    const KEY: &str = "xorbang.timeout";
    let Some(value) = value_of(cmdline, KEY)? else {
        return Ok(DEFAULT_TIMEOUT);
    };
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| bad(KEY, value, "expected a number of seconds, like 30 or 2.5"))
}

fn failure_policy(cmdline: &Cmdline) -> Result<FailurePolicy, OptionError> {
    const KEY: &str = "xorbang.failure";
    match value_of(cmdline, KEY)? {
        None | Some("reboot") => Ok(FailurePolicy::Reboot),
        Some("poweroff") => Ok(FailurePolicy::Poweroff),
        Some("halt") => Ok(FailurePolicy::Halt),
        Some("shell") => Ok(FailurePolicy::Shell),
        Some(value) => Err(bad(KEY, value, "expected reboot, poweroff, halt or shell")),
    }
}

fn init_path(cmdline: &Cmdline) -> Result<PathBuf, OptionError> {
    match value_of(cmdline, "init")? {
        None => Ok(PathBuf::from(DEFAULT_INIT)),
        Some(value) if value.starts_with('/') => Ok(PathBuf::from(value)),
        Some(value) => Err(bad("init", value, "expected an absolute path")),
    }
}

fn unknown_key_warnings(cmdline: &Cmdline) -> Vec<String> {
    cmdline
        .params
        .iter()
        .filter(|param| param.key.starts_with("xorbang.") && !KNOWN_KEYS.contains(&&*param.key))
        .map(|param| format!("ignoring unknown kernel parameter {param}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(BootOptions, Vec<String>), OptionError> {
        BootOptions::from_cmdline(&Cmdline::parse(text))
    }

    #[test]
    fn defaults_are_production_reboot_sbin_init() {
        let (options, warnings) = parse("root=/dev/vda console=ttyS0").expect("valid");
        assert_eq!(options.mode, Mode::Production);
        assert_eq!(options.failure, FailurePolicy::Reboot);
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert_eq!(options.init, PathBuf::from("/sbin/init"));
        assert!(warnings.is_empty());
    }

    #[test]
    fn reads_every_key() {
        let (options, _) = parse(
            "root=LABEL=x rootfstype=ext4 rootflags=noatime xorbang.dev=1 \
             xorbang.timeout=2.5 xorbang.failure=poweroff init=/bin/sh -- -x",
        )
        .expect("valid");
        assert_eq!(options.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(options.rootflags.as_deref(), Some("noatime"));
        assert_eq!(options.mode, Mode::Dev);
        assert_eq!(options.timeout, Duration::from_millis(2500));
        assert_eq!(options.failure, FailurePolicy::Poweroff);
        assert_eq!(options.init, PathBuf::from("/bin/sh"));
        assert_eq!(options.init_args, ["-x"]);
    }

    #[test]
    fn unknown_xorbang_keys_warn_but_do_not_fail() {
        let (_, warnings) = parse("root=/dev/vda xorbang.colour=blue other.key=1").expect("ok");
        assert_eq!(
            warnings,
            ["ignoring unknown kernel parameter xorbang.colour=blue"]
        );
    }

    #[test]
    fn malformed_values_name_the_key_and_value() {
        let cases = [
            ("root=/dev/vda xorbang.timeout=soon", "xorbang.timeout=soon"),
            ("root=/dev/vda xorbang.timeout=-1", "xorbang.timeout=-1"),
            ("root=/dev/vda xorbang.dev=maybe", "xorbang.dev=maybe"),
            (
                "root=/dev/vda xorbang.failure=explode",
                "xorbang.failure=explode",
            ),
            ("root=/dev/vda init=sbin/init", "init=sbin/init"),
        ];
        for (text, named) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(
                error.starts_with(named),
                "{error:?} should start with {named}"
            );
        }
        assert_eq!(parse("quiet"), Err(OptionError::NoRoot));
        assert_eq!(
            parse("root"),
            Err(OptionError::MissingValue { key: "root" })
        );
    }

    #[test]
    fn failure_policy_survives_other_bad_values() {
        let cmdline = Cmdline::parse("xorbang.timeout=x xorbang.failure=halt");
        assert_eq!(failure_policy_or_default(&cmdline), FailurePolicy::Halt);
        let cmdline = Cmdline::parse("xorbang.failure=bogus");
        assert_eq!(failure_policy_or_default(&cmdline), FailurePolicy::Reboot);
    }
}

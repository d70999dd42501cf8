//! What the init was asked to do, as typed values read from the kernel command line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use xorbang_formats::boot_report::{ConfigTrust, Mode};
use xorbang_formats::cmdline::Cmdline;
use xorbang_formats::devspec::{DeviceSpec, DeviceSpecError};
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::meminfo::Kib;
use xorbang_formats::verity::{RootHash, RootHashError, VerityOption};

/// Keys of our own namespace this build understands; any other `xorbang.*` key is warned
/// about (a typo must not silently change nothing) but does not stop the boot.
const KNOWN_KEYS: &[&str] = &[
    "xorbang.dev",
    "xorbang.timeout",
    "xorbang.failure",
    "xorbang.verity",
    "xorbang.sysext",
    "xorbang.confext",
    "xorbang.config",
    "xorbang.config.trust",
    "xorbang.root_readahead_kb",
    // Not the init's: the netboot tree's URL, which xorbang-installer reads.
    xorbang_formats::netboot::TREE_KEY,
];

const DEFAULT_INIT: &str = "/sbin/init";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("no roothash= or root= on the kernel command line: nothing to boot")]
    NoRoot,
    #[error("{key}={value}")]
    Device {
        key: &'static str,
        value: String,
        source: DeviceSpecError,
    },
    #[error("roothash={value}")]
    RootHash {
        value: String,
        source: RootHashError,
    },
    #[error(
        "root={spec} without roothash=: production boots only a verified root \
         (xorbang.verity=optional allows an unverified one)"
    )]
    Unverified { spec: DeviceSpec },
    #[error("{key}={value}: {reason}")]
    Extension {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// One entry of `xorbang.sysext=` or `xorbang.confext=`: an extension's name, pinned to a
/// root hash when written `NAME:ROOTHASH` (the signed command line is trusted like the
/// base image's manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRequest {
    pub name: String,
    pub pin: Option<RootHash>,
}

/// `xorbang.config=`: where host config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The default search: fw_cfg, then the file in the initramfs.
    Search,
    /// `none`: boot without host config.
    Nothing,
    /// `fw_cfg`: only QEMU's `opt/org.xorbang/host-config`.
    FwCfg,
    /// `esp`: only `xorbang/host-config.toml` on the EFI System Partition of the root's disk.
    Esp,
    /// `PARTLABEL=…`, `LABEL=…` and the other device forms: `host-config.toml` at the root
    /// of that partition's file system.
    Partition(DeviceSpec),
    /// An absolute path: a file inside the initramfs (PXE servers append it as a cpio).
    File(PathBuf),
}

/// The root to boot: a dm-verity protected image, or a plain device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootChoice {
    Verity(VerityRoot),
    Plain(DeviceSpec),
}

/// `roothash=` and what goes with it, following systemd's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityRoot {
    pub root_hash: RootHash,
    /// `systemd.verity_root_data=`, else the DPS partition whose PARTUUID is the hash's
    /// first 16 bytes.
    pub data: DeviceSpec,
    /// `systemd.verity_root_hash=`, else the DPS partition of the hash's last 16 bytes.
    pub hash: DeviceSpec,
    /// From `systemd.verity_root_options=`; `restart_on_corruption` unless it names a
    /// corruption policy.
    pub options: Vec<VerityOption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub root: RootChoice,
    /// `rootfstype=`; when absent the device must hold SquashFS.
    pub rootfstype: Option<String>,
    pub rootflags: Option<String>,
    pub mode: Mode,
    /// Where dev mode keeps its upper (meaningless in production).
    pub dev_storage: DevStorage,
    pub timeout: Duration,
    pub failure: FailurePolicy,
    pub init: PathBuf,
    pub init_args: Vec<String>,
    /// The kernel's own `debug` flag: systemd logs verbosely with it, and so do we.
    pub debug: bool,
    /// `xorbang.sysext=`; `None` when absent (host config decides), empty for `=` alone.
    pub sysext: Option<Vec<ExtensionRequest>>,
    pub confext: Option<Vec<ExtensionRequest>>,
    pub config: ConfigSource,
    /// `xorbang.config.trust=`: the least-trusted host-config source production accepts.
    pub config_trust: ConfigTrust,
    /// `xorbang.root_readahead_kb=`: the read-ahead of the device the root is mounted from;
    /// `None` keeps the kernel's.
    pub root_readahead: Option<Kib>,
}

impl BootOptions {
    /// Reads every option; returns the options and the warnings to log.
    pub fn from_cmdline(cmdline: &Cmdline) -> Result<(Self, Vec<String>), OptionError> {
        let (mode, dev_storage) = mode(cmdline)?;
        let timeout = timeout(cmdline)?;
        let failure = failure_policy(cmdline)?;
        let init = init_path(cmdline)?;
        let root_readahead = root_readahead(cmdline)?;
        let mut warnings = unknown_key_warnings(cmdline);
        let options = Self {
            root: root_choice(cmdline, mode, &mut warnings)?,
            rootfstype: value_of(cmdline, "rootfstype")?.map(str::to_owned),
            rootflags: value_of(cmdline, "rootflags")?.map(str::to_owned),
            mode,
            dev_storage,
            timeout,
            failure,
            init,
            init_args: cmdline.init_args.clone(),
            debug: cmdline.last("debug").is_some(),
            sysext: extension_requests(cmdline, "xorbang.sysext")?,
            confext: extension_requests(cmdline, "xorbang.confext")?,
            config: config_source(cmdline)?,
            config_trust: config_trust(cmdline)?,
            root_readahead,
        };
        Ok((options, warnings))
    }
}

fn root_choice(
    cmdline: &Cmdline,
    mode: Mode,
    warnings: &mut Vec<String>,
) -> Result<RootChoice, OptionError> {
    let root = device(cmdline, "root")?;
    if let Some(value) = value_of(cmdline, "roothash")? {
        let root_hash = RootHash::parse_hex(value).map_err(|source| OptionError::RootHash {
            value: value.to_owned(),
            source,
        })?;
        if let Some(spec) = root {
            warnings.push(format!(
                "ignoring root={spec}: roothash= selects the verified root"
            ));
        }
        let (data_uuid, hash_uuid) = root_hash.partition_uuids();
        return Ok(RootChoice::Verity(VerityRoot {
            data: device(cmdline, "systemd.verity_root_data")?
                .unwrap_or(DeviceSpec::PartUuid(data_uuid)),
            hash: device(cmdline, "systemd.verity_root_hash")?
                .unwrap_or(DeviceSpec::PartUuid(hash_uuid)),
            options: verity_options(cmdline)?,
            root_hash,
        }));
    }
    let spec = root.ok_or(OptionError::NoRoot)?;
    match (mode, verity_optional(cmdline)?) {
        (Mode::Production, false) => Err(OptionError::Unverified { spec }),
        (Mode::Dev, false) => {
            warnings.push(format!("root={spec} is not verified (allowed in dev mode)"));
            Ok(RootChoice::Plain(spec))
        }
        (Mode::Production, true) => {
            warnings.push(format!(
                "root={spec} is not verified (xorbang.verity=optional): its extension pins and \
                 keys are not trusted"
            ));
            Ok(RootChoice::Plain(spec))
        }
        (Mode::Dev, true) => Ok(RootChoice::Plain(spec)),
    }
}

fn device(cmdline: &Cmdline, key: &'static str) -> Result<Option<DeviceSpec>, OptionError> {
    value_of(cmdline, key)?
        .map(|value| {
            DeviceSpec::parse(value).map_err(|source| OptionError::Device {
                key,
                value: value.to_owned(),
                source,
            })
        })
        .transpose()
}

fn verity_optional(cmdline: &Cmdline) -> Result<bool, OptionError> {
    const KEY: &str = "xorbang.verity";
    match value_of(cmdline, KEY)? {
        None | Some("required") => Ok(false),
        Some("optional") => Ok(true),
        Some(value) => Err(bad(KEY, value, "expected required or optional")),
    }
}

/// The part of systemd's verity option list that makes sense for a root the boot depends
/// on; the default corruption policy is to restart, so the boot loader can fall back.
fn verity_options(cmdline: &Cmdline) -> Result<Vec<VerityOption>, OptionError> {
    const KEY: &str = "systemd.verity_root_options";
    let mut options = Vec::new();
    for word in value_of(cmdline, KEY)?
        .unwrap_or("")
        .split(',')
        .filter(|w| !w.is_empty())
    {
        options.push(match word {
            "restart-on-corruption" => VerityOption::RestartOnCorruption,
            "panic-on-corruption" => VerityOption::PanicOnCorruption,
            "ignore-zero-blocks" => VerityOption::IgnoreZeroBlocks,
            _ => {
                return Err(bad(
                    KEY,
                    word,
                    "expected restart-on-corruption, panic-on-corruption or ignore-zero-blocks",
                ))
            }
        });
    }
    let policy_given = options.iter().any(|option| {
        matches!(
            option,
            VerityOption::RestartOnCorruption | VerityOption::PanicOnCorruption
        )
    });
    if !policy_given {
        options.insert(0, VerityOption::RestartOnCorruption);
    }
    Ok(options)
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

/// Where dev mode keeps what is written over the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevStorage {
    /// A tmpfs: gone at the next boot (`xorbang.dev=1`).
    Transient,
    /// The state partition, under a directory keyed by the root hash (`xorbang.dev=persist`).
    Persistent,
}

fn mode(cmdline: &Cmdline) -> Result<(Mode, DevStorage), OptionError> {
    const KEY: &str = "xorbang.dev";
    let transient = |mode| Ok((mode, DevStorage::Transient));
    match cmdline.last(KEY) {
        None => transient(Mode::Production),
        // A bare `xorbang.dev` reads as "on", like systemd's boolean switches.
        Some(None) => transient(Mode::Dev),
        Some(Some("1" | "yes" | "true" | "on")) => transient(Mode::Dev),
        Some(Some("0" | "no" | "false" | "off")) => transient(Mode::Production),
        Some(Some("persist")) => Ok((Mode::Dev, DevStorage::Persistent)),
        Some(Some(value)) => Err(bad(KEY, value, "expected 1, persist or 0")),
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

fn root_readahead(cmdline: &Cmdline) -> Result<Option<Kib>, OptionError> {
    const KEY: &str = "xorbang.root_readahead_kb";
    value_of(cmdline, KEY)?
        .map(|value| {
            value
                .parse()
                .map(Kib)
                .map_err(|_| bad(KEY, value, "expected a number of KiB, like 0 or 128"))
        })
        .transpose()
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

/// `a,b:ROOTHASH,c`; an empty value selects nothing (and overrides host config).
fn extension_requests(
    cmdline: &Cmdline,
    key: &'static str,
) -> Result<Option<Vec<ExtensionRequest>>, OptionError> {
    let Some(value) = cmdline.last(key) else {
        return Ok(None);
    };
    let value = value.unwrap_or("");
    let reject = |reason: String| OptionError::Extension {
        key,
        value: value.to_owned(),
        reason,
    };
    let mut requests: Vec<ExtensionRequest> = Vec::new();
    for entry in value.split(',').filter(|entry| !entry.is_empty()) {
        let (name, pin) = match entry.split_once(':') {
            Some((name, hash)) => {
                let hash = RootHash::parse_hex(hash)
                    .map_err(|error| reject(format!("pin of {name}: {}", error_chain(&error))))?;
                (name, Some(hash))
            }
            None => (entry, None),
        };
        if !xorbang_formats::extension_pins::valid_name(name) {
            return Err(reject(format!(
                "{name:?} is not an extension name (A-Z a-z 0-9 _ . -, not starting with '.')"
            )));
        }
        if requests.iter().any(|request| request.name == name) {
            return Err(reject(format!("{name} is named twice")));
        }
        requests.push(ExtensionRequest {
            name: name.to_owned(),
            pin,
        });
    }
    Ok(Some(requests))
}

fn config_source(cmdline: &Cmdline) -> Result<ConfigSource, OptionError> {
    const KEY: &str = "xorbang.config";
    match value_of(cmdline, KEY)? {
        None | Some("auto") => Ok(ConfigSource::Search),
        Some("none") => Ok(ConfigSource::Nothing),
        Some("fw_cfg") => Ok(ConfigSource::FwCfg),
        Some("esp") => Ok(ConfigSource::Esp),
        Some(path) if path.starts_with('/') && !path.starts_with("/dev/") => {
            Ok(ConfigSource::File(PathBuf::from(path)))
        }
        Some(value) => match DeviceSpec::parse(value) {
            Ok(spec) => Ok(ConfigSource::Partition(spec)),
            Err(_) => Err(bad(
                KEY,
                value,
                "expected auto, none, fw_cfg, esp, a partition (PARTLABEL=…, LABEL=…, /dev/…) \
                 or the absolute path of a file in the initramfs",
            )),
        },
    }
}

/// Default `local`: every source, a local one restricted to hostname, timezone and network.
fn config_trust(cmdline: &Cmdline) -> Result<ConfigTrust, OptionError> {
    const KEY: &str = "xorbang.config.trust";
    match value_of(cmdline, KEY)? {
        None => Ok(ConfigTrust::Local),
        Some(value) => ConfigTrust::parse(value)
            .ok_or_else(|| bad(KEY, value, "expected signed, platform or local")),
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
        let (options, warnings) =
            parse("root=/dev/vda console=ttyS0 xorbang.verity=optional").expect("valid");
        assert_eq!(options.mode, Mode::Production);
        assert_eq!(options.failure, FailurePolicy::Reboot);
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert_eq!(options.root_readahead, None);
        assert_eq!(options.init, PathBuf::from("/sbin/init"));
        assert_eq!(
            warnings,
            [
                "root=/dev/vda is not verified (xorbang.verity=optional): its extension pins and \
              keys are not trusted"
            ]
        );
    }

    #[test]
    fn reads_every_key() {
        let (options, _) = parse(
            "root=LABEL=x rootfstype=ext4 rootflags=noatime xorbang.dev=1 \
             xorbang.timeout=2.5 xorbang.failure=poweroff xorbang.root_readahead_kb=16 \
             init=/bin/sh -- -x",
        )
        .expect("valid");
        assert_eq!(options.root_readahead, Some(Kib(16)));
        assert_eq!(options.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(options.rootflags.as_deref(), Some("noatime"));
        assert_eq!(options.mode, Mode::Dev);
        assert_eq!(options.dev_storage, DevStorage::Transient);
        assert_eq!(options.timeout, Duration::from_millis(2500));
        assert_eq!(options.failure, FailurePolicy::Poweroff);
        assert_eq!(options.init, PathBuf::from("/bin/sh"));
        assert_eq!(options.init_args, ["-x"]);
    }

    #[test]
    fn persist_is_dev_mode_on_the_state_partition() {
        let (options, _) = parse("roothash=954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93 xorbang.dev=persist").expect("valid");
        assert_eq!(
            (options.mode, options.dev_storage),
            (Mode::Dev, DevStorage::Persistent)
        );
        let (options, _) =
            parse("root=/dev/vda xorbang.verity=optional xorbang.dev=0").expect("valid");
        assert_eq!(options.mode, Mode::Production);
    }

    #[test]
    fn unknown_xorbang_keys_warn_but_do_not_fail() {
        let (_, warnings) =
            parse("root=/dev/vda xorbang.dev=1 xorbang.colour=blue other.key=1").expect("ok");
        assert_eq!(
            warnings,
            [
                "ignoring unknown kernel parameter xorbang.colour=blue",
                "root=/dev/vda is not verified (allowed in dev mode)",
            ]
        );
    }

    #[test]
    fn malformed_values_name_the_key_and_value() {
        let cases = [
            ("root=/dev/vda xorbang.timeout=soon", "xorbang.timeout=soon"),
            ("root=/dev/vda xorbang.timeout=-1", "xorbang.timeout=-1"),
            ("root=/dev/vda xorbang.dev=maybe", "xorbang.dev=maybe"),
            (
                "root=/dev/vda xorbang.root_readahead_kb=-4",
                "xorbang.root_readahead_kb=-4",
            ),
            (
                "root=/dev/vda xorbang.failure=explode",
                "xorbang.failure=explode",
            ),
            ("root=/dev/vda init=sbin/init", "init=sbin/init"),
            ("root=/dev/vda xorbang.verity=maybe", "xorbang.verity=maybe"),
            ("roothash=xyz", "roothash=xyz: root hash \"xyz\" is not hex"),
            ("roothash=abcd", "roothash=abcd: root hash is 2 bytes"),
            (
                "roothash=954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93 \
                 systemd.verity_root_options=ignore-corruption",
                "systemd.verity_root_options=ignore-corruption",
            ),
            (
                "roothash=954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93 \
                 systemd.verity_root_data=sda1",
                "systemd.verity_root_data=sda1: expected PARTUUID=",
            ),
            (
                "root=/dev/vda",
                "root=/dev/vda without roothash=: production boots only a verified root",
            ),
        ];
        for (text, named) in cases {
            let error = error_chain(&parse(text).expect_err(text));
            assert!(
                error.starts_with(named),
                "{error:?} should start with {named}"
            );
        }
        assert_eq!(parse("quiet"), Err(OptionError::NoRoot));
        assert!(parse("root=/dev/vda xorbang.dev=1 xorbang.verity=optional").is_ok());
        assert_eq!(
            parse("root"),
            Err(OptionError::MissingValue { key: "root" })
        );
    }

    const HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn verity(text: &str) -> VerityRoot {
        match parse(text).expect("valid").0.root {
            RootChoice::Verity(root) => root,
            RootChoice::Plain(spec) => panic!("expected a verity root, got {spec}"),
        }
    }

    #[test]
    fn roothash_alone_finds_both_partitions_by_dps_uuids() {
        let root = verity(&format!("roothash={HASH}"));
        assert_eq!(root.root_hash.to_string(), HASH);
        assert_eq!(
            root.data.to_string(),
            "PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5"
        );
        assert_eq!(
            root.hash.to_string(),
            "PARTUUID=a6a77ede-951f-ad19-f0f9-4df0d7266a93"
        );
        assert_eq!(root.options, [VerityOption::RestartOnCorruption]);
    }

    #[test]
    fn explicit_verity_devices_and_options_win() {
        let root = verity(&format!(
            "root=/dev/mapper/root roothash={HASH} systemd.verity_root_data=/dev/vda1 \
             systemd.verity_root_hash=PARTLABEL=hash \
             systemd.verity_root_options=panic-on-corruption,ignore-zero-blocks"
        ));
        assert_eq!(root.data.to_string(), "/dev/vda1");
        assert_eq!(root.hash.to_string(), "PARTLABEL=hash");
        assert_eq!(
            root.options,
            [
                VerityOption::PanicOnCorruption,
                VerityOption::IgnoreZeroBlocks
            ]
        );
    }

    #[test]
    fn unverified_roots_need_dev_mode_or_optional_verity() {
        assert!(matches!(
            parse("root=/dev/vda"),
            Err(OptionError::Unverified { .. })
        ));
        for allowed in [
            "root=/dev/vda xorbang.dev=1",
            "root=/dev/vda xorbang.verity=optional",
        ] {
            let (options, _) = parse(allowed).expect(allowed);
            assert_eq!(
                options.root,
                RootChoice::Plain(DeviceSpec::parse("/dev/vda").expect("spec"))
            );
        }
    }

    #[test]
    fn extension_selections_and_pins() {
        let (options, _) = parse(&format!(
            "roothash={HASH} xorbang.sysext=gui,monitoring:{HASH} xorbang.confext="
        ))
        .expect("valid");
        let sysext = options.sysext.expect("given");
        assert_eq!(sysext.len(), 2);
        assert_eq!(
            (sysext[0].name.as_str(), sysext[0].pin.is_none()),
            ("gui", true)
        );
        assert_eq!(
            sysext[1].pin.as_ref().map(ToString::to_string),
            Some(HASH.to_owned())
        );
        assert_eq!(options.confext, Some(Vec::new()));
        assert_eq!(options.config, ConfigSource::Search);
        assert_eq!(options.config_trust, ConfigTrust::Local);
        let (options, _) = parse(&format!("roothash={HASH}")).expect("valid");
        assert_eq!(options.sysext, None);
        for (text, named) in [
            (
                "xorbang.sysext=../x",
                "xorbang.sysext=../x: \"../x\" is not an extension name",
            ),
            ("xorbang.sysext=a,a", "xorbang.sysext=a,a: a is named twice"),
            ("xorbang.confext=a:zz", "xorbang.confext=a:zz: pin of a: "),
            (
                "xorbang.config=tftp",
                "xorbang.config=tftp: expected auto, none",
            ),
            (
                "xorbang.config.trust=any",
                "xorbang.config.trust=any: expected signed, platform or local",
            ),
        ] {
            let error = error_chain(&parse(&format!("roothash={HASH} {text}")).expect_err(text));
            assert!(
                error.starts_with(named),
                "{error:?} should start with {named}"
            );
        }
        let (options, _) =
            parse(&format!("roothash={HASH} xorbang.config=/etc/host.toml")).expect("valid");
        assert_eq!(options.config, ConfigSource::File("/etc/host.toml".into()));
        let (options, _) =
            parse(&format!("roothash={HASH} xorbang.config.trust=signed")).expect("valid");
        assert_eq!(options.config_trust, ConfigTrust::Signed);
        for (value, expected) in [
            ("esp", ConfigSource::Esp),
            (
                "PARTLABEL=cfg",
                ConfigSource::Partition(DeviceSpec::PartLabel("cfg".into())),
            ),
            (
                "/dev/vdb1",
                ConfigSource::Partition(DeviceSpec::parse("/dev/vdb1").expect("spec")),
            ),
        ] {
            let (options, _) =
                parse(&format!("roothash={HASH} xorbang.config={value}")).expect(value);
            assert_eq!(options.config, expected, "{value}");
        }
    }

    #[test]
    fn failure_policy_survives_other_bad_values() {
        let cmdline = Cmdline::parse("xorbang.timeout=x xorbang.failure=halt");
        assert_eq!(failure_policy_or_default(&cmdline), FailurePolicy::Halt);
        let cmdline = Cmdline::parse("xorbang.failure=bogus");
        assert_eq!(failure_policy_or_default(&cmdline), FailurePolicy::Reboot);
    }
}

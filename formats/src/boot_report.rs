//! The boot report: what the init did and how long each stage took, for
//! /run/xorbang/boot.json and the `xorbang: boot-report {…}` console line.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::meminfo::Kib;

/// How the root was mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-only root, nothing writable survives or leaks in.
    Production,
    /// OverlayFS over the verified base: writable, with the upper in memory (gone at reboot)
    /// or on the state partition (`xorbang.dev=persist`); see [`DevReport`].
    Dev,
}

/// Where a dev-mode boot keeps what is written over the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevReport {
    /// On the state partition (`xorbang.dev=persist`), else in memory.
    pub persistent: bool,
    /// The directory holding each overlay's `upper/` and `work/` (`root`, `usr`, `opt`,
    /// `etc`), as the booted system sees it.
    pub dir: String,
    /// Whether this boot started with an empty upper, and why.
    pub fresh: Option<String>,
    /// Uppers kept on the state partition and not in use (another base's, or set aside by a
    /// commit).
    #[serde(default)]
    pub kept: Vec<String>,
}

/// How an extension came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Its root hash is in the base image's extensions.toml.
    BaseManifest,
    /// Its root hash is on the (signed) kernel command line.
    Cmdline,
    /// Nothing pins it: merged only in dev mode.
    Unpinned,
}

/// How far a host config's source is trusted, least first (PRODUCT.md's trust model).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConfigTrust {
    /// An unsigned file on storage anyone with the disk, the ESP or a USB stick can write.
    Local,
    /// QEMU's fw_cfg: the hypervisor controls the machine anyway.
    Platform,
    /// Inside the signed initramfs, or carrying a valid signature by a pinned key.
    Signed,
}

impl ConfigTrust {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Platform => "platform",
            Self::Signed => "signed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Local, Self::Platform, Self::Signed]
            .into_iter()
            .find(|trust| trust.name() == text)
    }
}

impl fmt::Display for ConfigTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Microseconds, the unit of every duration and uptime in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub u64);

impl From<Duration> for Micros {
    fn from(duration: Duration) -> Self {
        Self(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
    }
}

/// The stages of a boot that reaches switch_root, in order (verity is 0 µs for an
/// unverified root). `host-config` finds the config and decides whether to trust it (with the
/// keys of the mounted base); `layers` verifies and stacks the extensions and writes the
/// host-config layer.
pub const STAGES: [&str; 8] = [
    "setup",
    "modules",
    "root-device",
    "verity",
    "mount-root",
    "host-config",
    "layers",
    "switch-root",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub us: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootReport {
    /// `root=` as given.
    pub spec: String,
    /// The device node it resolved to.
    pub device: String,
    pub fstype: String,
    /// Whether dm-verity checks every block of it (false for `root=` without `roothash=`).
    #[serde(default)]
    pub verified: bool,
    /// IMAGE_ID= and IMAGE_VERSION= of its os-release: which build booted (absent when the
    /// root does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
}

/// The dm-verity mapping under a verified root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerityReport {
    pub root_hash: String,
    pub data_device: String,
    pub hash_device: String,
    /// The target's status right after activation: `V` (verified).
    pub status: String,
}

/// An extension image merged into the booted system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionReport {
    /// `sysext` or `confext`.
    pub kind: String,
    pub name: String,
    pub image: String,
    pub root_hash: String,
    pub trust: Trust,
}

/// The host config this boot found: applied, or refused with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfigReport {
    pub origin: String,
    /// How far its source is trusted (a signature lifts any source to `signed`).
    #[serde(default)]
    pub trust: Option<ConfigTrust>,
    /// The pinned key that signed it.
    #[serde(default)]
    pub signed_by: Option<String>,
    pub applied: bool,
    /// Why it was not applied (one line, with line and column for a bad file).
    pub error: Option<String>,
    /// The files of the generated /etc layer, relative to /etc.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    pub version: u32,
    pub mode: Mode,
    /// Dev mode's upper; absent in production.
    #[serde(default)]
    pub dev: Option<DevReport>,
    pub root: RootReport,
    /// Absent for an unverified root (dev mode, or `xorbang.verity=optional`).
    pub verity: Option<VerityReport>,
    pub modules_loaded: usize,
    /// Merged extensions, bottom layer first per kind (sysexts, then confexts).
    #[serde(default)]
    pub extensions: Vec<ExtensionReport>,
    #[serde(default)]
    pub host_config: Option<HostConfigReport>,
    pub init: String,
    /// Consecutive stages from the init's start to the hand-off; they add up to
    /// `uptime_handoff_us - uptime_start_us`.
    pub stages: Vec<Stage>,
    pub uptime_start_us: Micros,
    pub uptime_handoff_us: Micros,
    /// The guest's memory at switch_root; absent when /proc/meminfo could not be read.
    #[serde(default)]
    pub memory: Option<MemoryReport>,
}

/// Memory in use (`MemTotal - MemAvailable`) just before switch_root, the initramfs still
/// in it: the most the boot needed before the target init took over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub total_kib: Kib,
    pub used_kib: Kib,
}

impl BootReport {
    pub fn total(&self) -> Micros {
        Micros(
            self.uptime_handoff_us
                .0
                .saturating_sub(self.uptime_start_us.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips() {
        let report = BootReport {
            version: 1,
            mode: Mode::Dev,
            dev: Some(DevReport {
                persistent: true,
                dir: "/run/xorbang/state/xorbang/dev/ab".into(),
                fresh: Some("first boot of this base".into()),
                kept: vec!["/run/xorbang/state/xorbang/dev/cd".into()],
            }),
            root: RootReport {
                spec: "PARTLABEL=root".into(),
                device: "/dev/vda2".into(),
                fstype: "squashfs".into(),
                verified: false,
                image_id: Some("xorbang-demo".into()),
                image_version: Some("7".into()),
            },
            verity: None,
            modules_loaded: 3,
            extensions: vec![ExtensionReport {
                kind: "sysext".into(),
                name: "gui".into(),
                image: "/usr/lib/extensions/gui.raw".into(),
                root_hash: "ab".into(),
                trust: Trust::BaseManifest,
            }],
            host_config: Some(HostConfigReport {
                origin: "fw_cfg opt/org.xorbang/host-config".into(),
                trust: Some(ConfigTrust::Platform),
                signed_by: None,
                applied: false,
                error: Some("line 1, column 1: bad".into()),
                files: Vec::new(),
            }),
            init: "/sbin/init".into(),
            stages: vec![Stage {
                name: "modules".into(),
                us: Micros(1200),
            }],
            uptime_start_us: Micros(1_000_000),
            uptime_handoff_us: Micros(1_001_200),
            memory: Some(MemoryReport {
                total_kib: Kib(479_640),
                used_kib: Kib(31_000),
            }),
        };
        let json = serde_json::to_string(&report).expect("serializes");
        assert!(json.contains(r#""mode":"dev""#), "{json}");
        assert!(json.contains(r#""trust":"base-manifest""#), "{json}");
        assert_eq!(
            serde_json::from_str::<BootReport>(&json).expect("parses"),
            report
        );
        assert_eq!(report.total(), Micros(1200));
    }
}

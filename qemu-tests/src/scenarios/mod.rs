//! The VM scenarios, grouped by area, and the one table of their names the runner and
//! `--list` read. Each boots one or more VMs and passes only on exact console lines: the guest
//! agent's `XORBANG-TEST: PASS <name>`, or the init's own error and failure-policy lines for
//! the scenarios where the boot must be refused.

mod ab;
mod boot;
mod dev;
mod extensions;
mod host_config;
mod netboot;
mod os_profile;
mod secureboot;
mod verity;

use crate::context::Context;
pub use netboot::netboot_bench;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Host files the scenario cannot run without; when one is missing it is skipped, and
    /// the runner counts it as skipped, never as passed.
    pub requires: &'static [&'static str],
    pub run: fn(&Context) -> Result<(), String>,
}

impl Scenario {
    /// The first required host file that is missing here.
    pub fn missing_requirement(&self) -> Option<&'static str> {
        self.requires
            .iter()
            .copied()
            .find(|path| !std::path::Path::new(path).exists())
    }

    /// Whether the scenario boots the kernel `kernel-config/` builds.
    pub fn boots_custom_kernel(&self) -> bool {
        self.requires.contains(&LINUX_SOURCE)
    }
}

/// The source tree `kernel-config/build-kernel` builds the custom kernel from.
const LINUX_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot-busybox",
        about: "the init switches into a tiny busybox root (fast smoke test)",
        requires: &[],
        run: boot::boot_busybox,
    },
    Scenario {
        name: "boot-prod",
        about: "production boot reaches real systemd; /usr is read-only (EROFS)",
        requires: &[],
        run: boot::boot_prod,
    },
    Scenario {
        name: "boot-dev",
        about: "xorbang.dev=1: /etc and /usr/local are writable over the read-only image",
        requires: &[],
        run: boot::boot_dev,
    },
    Scenario {
        name: "dev-discard",
        about: "a file written in dev mode is gone after the next boot",
        requires: &[],
        run: boot::dev_discard,
    },
    Scenario {
        name: "dev-persist",
        about: "xorbang.dev=persist: a file in /etc and a dpkg -i'd package survive a reboot on the state partition; xorbang.dev=1 and production boots of the disk see neither, production's / is read-only",
        requires: &[],
        run: dev::dev_persist,
    },
    Scenario {
        name: "dev-persist-new-base",
        about: "persist with another root hash on the same disk starts with an empty upper and reports the first base's as kept; the first base finds its upper again",
        requires: &[],
        run: dev::dev_persist_new_base,
    },
    Scenario {
        name: "dev-persist-no-state",
        about: "persist on a disk without a state partition: one line naming it, then the failure policy",
        requires: &[],
        run: dev::dev_persist_no_state,
    },
    Scenario {
        name: "dev-persist-hostile-state",
        about: "persist on a state partition whose upper is a planted symlink: refused with one line, then the failure policy",
        requires: &[],
        run: dev::dev_persist_hostile_state,
    },
    Scenario {
        name: "commit-overlay",
        about: "dev changes committed as sysext + confext local-tools: a dev boot merges them over an empty upper; production refuses them unpinned, and with the printed pins has them read-only, the deleted file (reported) back",
        requires: &[],
        run: dev::commit_overlay,
    },
    Scenario {
        name: "commit-overlay-dry-run",
        about: "--dry-run lists every change, committed or not with the reason, and writes nothing; --discard empties the upper at the next boot",
        requires: &[],
        run: dev::commit_overlay_dry_run,
    },
    Scenario {
        name: "missing-root",
        about: "a root= device that never appears: one clear line within the budget, then reboot",
        requires: &[],
        run: boot::missing_root,
    },
    Scenario {
        name: "bad-init",
        about: "init= names a missing file: refused before switch_root",
        requires: &[],
        run: boot::bad_init,
    },
    Scenario {
        name: "boot-report",
        about: "/run/xorbang/boot.json is in the booted system and its stages add up",
        requires: &[],
        run: boot::boot_report,
    },
    Scenario {
        name: "custom-kernel-boot",
        about: "the kernel built from kernel-config/ boots the image with an initramfs without modules",
        requires: &[LINUX_SOURCE],
        run: boot::custom_kernel_boot,
    },
    Scenario {
        name: "reproducible-build",
        about: "the initramfs and the UKI built twice from the same inputs are byte-identical",
        requires: &[],
        run: boot::reproducible_build,
    },
    Scenario {
        name: "verity-boot",
        about: "roothash= + explicit devices: systemd on /dev/mapper/root, reported verified",
        requires: &[],
        run: verity::verity_boot,
    },
    Scenario {
        name: "verity-dps",
        about: "only roothash=: both partitions found by the UUIDs derived from it",
        requires: &[],
        run: verity::verity_dps,
    },
    Scenario {
        name: "verity-wrong-hash",
        about: "a wrong root hash is refused before anything is mounted",
        requires: &[],
        run: verity::verity_wrong_hash,
    },
    Scenario {
        name: "verity-tamper-data",
        about:
            "a flipped byte in a file's data: the corruption policy restarts the machine on read",
        requires: &[],
        run: verity::verity_tamper_data,
    },
    Scenario {
        name: "verity-tamper-hash",
        about: "a flipped byte in the hash tree: detected on read likewise",
        requires: &[],
        run: verity::verity_tamper_hash,
    },
    Scenario {
        name: "verity-truncated",
        about: "a hash device shorter than its superblock claims: refused, naming the sizes",
        requires: &[],
        run: verity::verity_truncated,
    },
    Scenario {
        name: "verity-initramfs-file",
        about: "PXE: the root image and tree are files in the initramfs, attached to loop devices",
        requires: &[],
        run: verity::verity_initramfs_file,
    },
    Scenario {
        name: "verity-unverified-refused",
        about: "production refuses root= without roothash=, unless xorbang.verity=optional",
        requires: &[],
        run: verity::verity_unverified_refused,
    },
    Scenario {
        name: "uki-boot",
        about: "OVMF without Secure Boot boots the disk's ESP UKI into systemd on the verified root",
        requires: &[],
        run: secureboot::uki_boot,
    },
    Scenario {
        name: "secureboot-signed",
        about: "OVMF with Secure Boot enforced boots the snakeoil-signed UKI; the guest reads SecureBoot=1",
        requires: &[],
        run: secureboot::secureboot_signed,
    },
    Scenario {
        name: "secureboot-unsigned",
        about: "an unsigned UKI and a signed one with a byte changed are refused by the firmware",
        requires: &[],
        run: secureboot::secureboot_unsigned,
    },
    Scenario {
        name: "secureboot-cmdline-locked",
        about: "under Secure Boot a command line from the loader cannot replace the signed one",
        requires: &[],
        run: secureboot::secureboot_cmdline_locked,
    },
    Scenario {
        name: "sysext-merge",
        about: "two selected pinned sysexts show under /usr and /opt; an unselected one does not",
        requires: &[],
        run: extensions::sysext_merge,
    },
    Scenario {
        name: "sysext-mismatch",
        about: "extensions whose ID= or VERSION_ID= differ from the base are refused, naming the field",
        requires: &[],
        run: extensions::sysext_mismatch,
    },
    Scenario {
        name: "sysext-esp",
        about: "OVMF + UKI: a sysext in the UKI's .extra.d on the ESP reaches the init through systemd-stub and is merged",
        requires: &[],
        run: extensions::sysext_esp,
    },
    Scenario {
        name: "sysext-state",
        about: "a pinned sysext on the disk's /var partition (ext4, lib/extensions/) is found and merged",
        requires: &[],
        run: extensions::sysext_state,
    },
    Scenario {
        name: "sysext-state-var-rw",
        about: "after merging a sysext from the /var partition, the booted system mounts that partition read-write",
        requires: &[],
        run: extensions::sysext_state_var_rw,
    },
    Scenario {
        name: "boot-report-kmsg",
        about: "a layered boot's report, longer than one kmsg record, is whole in dmesg and equal to boot.json",
        requires: &[],
        run: extensions::boot_report_kmsg,
    },
    Scenario {
        name: "sysext-tamper",
        about: "a sysext with one flipped byte is refused before merging; production reboots",
        requires: &[],
        run: extensions::sysext_tamper,
    },
    Scenario {
        name: "sysext-unpinned",
        about: "an extension no root hash pins: refused in production, merged with a warning in dev, merged when the command line pins it",
        requires: &[],
        run: extensions::sysext_unpinned,
    },
    Scenario {
        name: "confext-merge",
        about: "an /etc file from a selected confext is in the booted system",
        requires: &[],
        run: extensions::confext_merge,
    },
    Scenario {
        name: "hostconfig-fwcfg",
        about: "host config via QEMU fw_cfg: kernel hostname and networkd file in effect",
        requires: &[],
        run: host_config::hostconfig_fwcfg,
    },
    Scenario {
        name: "hostconfig-initrd",
        about: "host config from a cpio appended to the initramfs (the PXE way) is in effect",
        requires: &[],
        run: host_config::hostconfig_initrd,
    },
    Scenario {
        name: "hostconfig-partition",
        about: "host config from a partition labelled xorbang-config, and from the ESP of the root's disk",
        requires: &[],
        run: host_config::hostconfig_partition,
    },
    Scenario {
        name: "hostconfig-invalid",
        about: "malformed TOML, an unknown key, a bad hostname: one line with line:column, nothing applied",
        requires: &[],
        run: host_config::hostconfig_invalid,
    },
    Scenario {
        name: "hostconfig-local-restricted",
        about: "an unsigned config partition may set only hostname, timezone and network in production: [users] and [[files]] refuse the config, the restricted one applies",
        requires: &[],
        run: host_config::hostconfig_local_restricted,
    },
    Scenario {
        name: "hostconfig-signed",
        about: "the full config with a minisign signature by a key the image pins is applied as signed; with a flipped byte it is refused",
        requires: &[],
        run: host_config::hostconfig_signed,
    },
    Scenario {
        name: "hostconfig-fifo",
        about: "a FIFO as the config file on an ext4 config partition: one line, no hang, the boot goes on",
        requires: &[],
        run: host_config::hostconfig_fifo,
    },
    Scenario {
        name: "hostconfig-layer-immutable",
        about: "the host-config layer is a read-only mount in the booted system; writes fail and /etc is unchanged",
        requires: &[],
        run: host_config::hostconfig_layer_immutable,
    },
    Scenario {
        name: "hostconfig-extension-missing",
        about: "a config asking for an absent sysext is refused as a whole; production boots on",
        requires: &[],
        run: host_config::hostconfig_extension_missing,
    },
    Scenario {
        name: "hostconfig-usb-clone",
        about: "a stick with a copy of the root and a config partition, attached first: the root comes from the disk of the ESP the firmware booted from, the stick's config is never read",
        requires: &[],
        run: host_config::hostconfig_usb_clone,
    },
    Scenario {
        name: "os-profile-demo",
        about: "profiles/demo.toml booted as ./tools/demo boots it: the report names the verified root xorbang-demo 1, the demo user is logged in and greeted by the profile's motd",
        requires: &[],
        run: os_profile::os_profile_demo,
    },
    Scenario {
        name: "os-profile-boot",
        about: "profiles/server.toml built by xorbang-build os boots under OVMF: its pinned sysext merged, networkd and ssh active, strace from the sysext runs",
        requires: &[],
        run: os_profile::os_profile_boot,
    },
    Scenario {
        name: "os-profile-reproducible",
        about: "profiles/demo.toml built twice (separate caches sharing only the Debian root): same root hash, byte-identical artifacts",
        requires: &[],
        run: os_profile::os_profile_reproducible,
    },
    Scenario {
        name: "os-profile-invalid",
        about: "an unknown profile key is refused with file:line:column; a sysext changing /etc/passwd is refused naming it; no output left",
        requires: &[],
        run: os_profile::os_profile_invalid,
    },
    Scenario {
        name: "ab-update",
        about: "OVMF + systemd-boot: v1 installs v2 from the runner's HTTP channel with xorbang-update apply; the next boot is v2, blessed (no counter left) after boot-complete.target",
        requires: &[],
        run: ab::ab_update,
    },
    Scenario {
        name: "ab-bad-bundle",
        about: "bundles signed by an unpinned key, with a wrong UKI hash, or with a UKI for another root: each refused with one line, slot B untouched",
        requires: &[],
        run: ab::ab_bad_bundle,
    },
    Scenario {
        name: "ab-rollback-init",
        about: "v2 installed with one try and its hash tree damaged: the init refuses it, the next boot is v1 by itself and status shows v2 bad",
        requires: &[],
        run: ab::ab_rollback_init,
    },
    Scenario {
        name: "ab-rollback-health",
        about: "v3's health check fails: FailureAction reboots before boot-complete.target, and with its try spent v1 boots by itself, v3 reported bad",
        requires: &[],
        run: ab::ab_rollback_health,
    },
    Scenario {
        name: "ab-secureboot",
        about: "ab-update under enforced Secure Boot: signed systemd-boot, signed UKIs from the bundle",
        requires: &[],
        run: ab::ab_secureboot,
    },
    Scenario {
        name: "ab-interrupted",
        about: "QEMU killed while apply writes slot B: the next boot is v1, a second apply completes, then v2 boots",
        requires: &[],
        run: ab::ab_interrupted,
    },
    Scenario {
        name: "pxe-fleet",
        about: "three machines and an unknown fourth netboot one tree (iPXE, dnsmasq, HTTP in a \
                private namespace); each becomes the host its MAC names, the fourth keeps the \
                image's defaults",
        requires: &[],
        run: netboot::pxe_fleet,
    },
    Scenario {
        name: "pxe-uefi",
        about: "OVMF with Secure Boot network-boots the signed UKI, whose init fetches the root \
                its signed command line names and picks its host by MAC; a swapped root image \
                in the tree is refused by the root hash",
        requires: &[],
        run: netboot::pxe_uefi,
    },
    Scenario {
        name: "install-disk",
        about: "a netbooted machine runs xorbang-installer --disk /dev/vdb --host web-01; the \
                disk then boots alone under OVMF with Secure Boot and comes up as web-01",
        requires: &[],
        run: netboot::install_disk,
    },
    Scenario {
        name: "install-refusals",
        about: "the boot disk, a partition, a mounted disk, a partitioned disk, a small disk and \
                another image's UKI are each refused with one line; no target changes",
        requires: &[],
        run: netboot::install_refusals,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

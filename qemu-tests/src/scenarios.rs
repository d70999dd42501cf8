//! The VM scenarios. Each boots one or more VMs and passes only on exact console lines: the
//! guest agent's `XORBANG-TEST: PASS <name>`, or the init's own error and failure-policy
//! lines for the scenarios where the boot must be refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xorbang_formats::boot_report::BootReport;

use crate::boot_chain::{self, uki_cmdline, BootChain};
use crate::config::Config;
use crate::fixtures::{self, Binaries, BusyboxImage, Kernel, SystemImage, ROOT_PARTLABEL};
use crate::layer_scenarios;
use crate::qemu::{Boot, Console, Firmware, LineMatch, Vm};

/// A systemd boot under TCG takes 30-45 s on a quiet machine; leave room for a noisy one.
pub const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(300);
pub const INITRAMFS_TIMEOUT: Duration = Duration::from_secs(120);
const MEMORY_MIB: u32 = 512;
/// A PARTUUID no disk has.
const ABSENT_PARTUUID: &str = "00000000-0000-4000-8000-00000000dead";

/// What the scenarios boot.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Config,
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub system: SystemImage,
    pub busybox: BusyboxImage,
    /// The initramfs that also carries the busybox image and its tree (a PXE boot).
    pub pxe_initrd: PathBuf,
    pub chain: BootChain,
    pub binaries: Binaries,
    /// The fixture cache, for what only some scenarios need (the custom kernel).
    pub cache: PathBuf,
    /// Console logs go here.
    pub work: PathBuf,
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Context) -> Result<(), String>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot-busybox",
        about: "the init switches into a tiny busybox root (fast smoke test)",
        run: boot_busybox,
    },
    Scenario {
        name: "boot-prod",
        about: "production boot reaches real systemd; /usr is read-only (EROFS)",
        run: boot_prod,
    },
    Scenario {
        name: "boot-dev",
        about: "xorbang.dev=1: /etc and /usr/local are writable over the read-only image",
        run: boot_dev,
    },
    Scenario {
        name: "dev-discard",
        about: "a file written in dev mode is gone after the next boot",
        run: dev_discard,
    },
    Scenario {
        name: "missing-root",
        about: "a root= device that never appears: one clear line within the budget, then reboot",
        run: missing_root,
    },
    Scenario {
        name: "bad-init",
        about: "init= names a missing file: refused before switch_root",
        run: bad_init,
    },
    Scenario {
        name: "boot-report",
        about: "/run/xorbang/boot.json is in the booted system and its stages add up",
        run: boot_report,
    },
    Scenario {
        name: "verity-boot",
        about: "roothash= + explicit devices: systemd on /dev/mapper/root, reported verified",
        run: verity_boot,
    },
    Scenario {
        name: "verity-dps",
        about: "only roothash=: both partitions found by the UUIDs derived from it",
        run: verity_dps,
    },
    Scenario {
        name: "verity-wrong-hash",
        about: "a wrong root hash is refused before anything is mounted",
        run: verity_wrong_hash,
    },
    Scenario {
        name: "verity-tamper-data",
        about:
            "a flipped byte in a file's data: the corruption policy restarts the machine on read",
        run: verity_tamper_data,
    },
    Scenario {
        name: "verity-tamper-hash",
        about: "a flipped byte in the hash tree: detected on read likewise",
        run: verity_tamper_hash,
    },
    Scenario {
        name: "verity-truncated",
        about: "a hash device shorter than its superblock claims: refused, naming the sizes",
        run: verity_truncated,
    },
    Scenario {
        name: "verity-initramfs-file",
        about: "PXE: the root image and tree are files in the initramfs, attached to loop devices",
        run: verity_initramfs_file,
    },
    Scenario {
        name: "uki-boot",
        about: "OVMF without Secure Boot boots the disk's ESP UKI into systemd on the verified root",
        run: uki_boot,
    },
    Scenario {
        name: "secureboot-signed",
        about: "OVMF with Secure Boot enforced boots the snakeoil-signed UKI; the guest reads SecureBoot=1",
        run: secureboot_signed,
    },
    Scenario {
        name: "secureboot-unsigned",
        about: "an unsigned UKI and a signed one with a byte changed are refused by the firmware",
        run: secureboot_unsigned,
    },
    Scenario {
        name: "secureboot-cmdline-locked",
        about: "under Secure Boot a command line from the loader cannot replace the signed one",
        run: secureboot_cmdline_locked,
    },
    Scenario {
        name: "custom-kernel-boot",
        about: "the kernel built from kernel-config/ boots the image with an initramfs without modules",
        run: custom_kernel_boot,
    },
    Scenario {
        name: "reproducible-build",
        about: "the initramfs and the UKI built twice from the same inputs are byte-identical",
        run: reproducible_build,
    },
    Scenario {
        name: "verity-unverified-refused",
        about: "production refuses root= without roothash=, unless xorbang.verity=optional",
        run: verity_unverified_refused,
    },
    Scenario {
        name: "sysext-merge",
        about: "two selected pinned sysexts show under /usr and /opt; an unselected one does not",
        run: layer_scenarios::sysext_merge,
    },
    Scenario {
        name: "sysext-mismatch",
        about: "extensions whose ID= or VERSION_ID= differ from the base are refused, naming the field",
        run: layer_scenarios::sysext_mismatch,
    },
    Scenario {
        name: "sysext-esp",
        about: "OVMF + UKI: a sysext in the UKI's .extra.d on the ESP reaches the init through systemd-stub and is merged",
        run: layer_scenarios::sysext_esp,
    },
    Scenario {
        name: "sysext-state",
        about: "a pinned sysext on the disk's /var partition (ext4, lib/extensions/) is found and merged",
        run: layer_scenarios::sysext_state,
    },
    Scenario {
        name: "sysext-tamper",
        about: "a sysext with one flipped byte is refused before merging; production reboots",
        run: layer_scenarios::sysext_tamper,
    },
    Scenario {
        name: "sysext-unpinned",
        about: "an extension no root hash pins: refused in production, merged with a warning in dev, merged when the command line pins it",
        run: layer_scenarios::sysext_unpinned,
    },
    Scenario {
        name: "confext-merge",
        about: "an /etc file from a selected confext is in the booted system",
        run: layer_scenarios::confext_merge,
    },
    Scenario {
        name: "hostconfig-fwcfg",
        about: "host config via QEMU fw_cfg: kernel hostname and networkd file in effect",
        run: layer_scenarios::hostconfig_fwcfg,
    },
    Scenario {
        name: "hostconfig-initrd",
        about: "host config from a cpio appended to the initramfs (the PXE way) is in effect",
        run: layer_scenarios::hostconfig_initrd,
    },
    Scenario {
        name: "hostconfig-partition",
        about: "host config from a partition labelled xorbang-config, and from the ESP of the root's disk",
        run: layer_scenarios::hostconfig_partition,
    },
    Scenario {
        name: "hostconfig-invalid",
        about: "malformed TOML, an unknown key, a bad hostname: one line with line:column, nothing applied",
        run: layer_scenarios::hostconfig_invalid,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

impl Context {
    /// The kernel command line every scenario starts from: serial console, no timestamps
    /// (so markers are whole lines), and a kernel panic turns into QEMU exiting.
    fn append(&self, extra: &str) -> String {
        format!("console=ttyS0 printk.time=0 panic=-1 {extra}")
    }

    pub fn vm(&self, disks: Vec<PathBuf>, append: &str, timeout: Duration) -> Vm {
        Vm {
            boot: Boot::Direct {
                kernel: self.kernel.vmlinuz.clone(),
                initrd: self.initrd.clone(),
                append: self.append(append),
            },
            disks,
            fw_cfg: Vec::new(),
            memory_mib: MEMORY_MIB,
            timeout,
            stop_at_markers: false,
        }
    }

    /// Boots the systemd image with `append` and expects the agent's PASS line for `check`.
    pub fn boot_system(
        &self,
        check: &str,
        append: &str,
        extra: &[LineMatch],
    ) -> Result<Console, String> {
        let mut expect = extra.to_vec();
        expect.push(pass_line(check));
        self.boot_disks(vec![self.system.disk.clone()], check, append, &expect)
    }

    /// Boots `disks` with `append` and the agent's scenario `check`, expecting `expect`.
    pub fn boot_disks(
        &self,
        disks: Vec<PathBuf>,
        check: &str,
        append: &str,
        expect: &[LineMatch],
    ) -> Result<Console, String> {
        let vm = self.vm(
            disks,
            &format!("{append} xtest.scenario={check}"),
            SYSTEMD_TIMEOUT,
        );
        self.boot(&vm, check, expect)
    }

    /// The production command line: only the root hash.
    pub fn production_root(&self) -> String {
        format!("roothash={}", self.system.root_hash)
    }

    /// The root hash with the devices named explicitly, as systemd's keys allow.
    fn explicit_verity(&self, root_hash: &str, hash_device: &str) -> String {
        format!(
            "roothash={root_hash} systemd.verity_root_data=/dev/vda1 \
             systemd.verity_root_hash={hash_device}"
        )
    }

    pub fn boot(&self, vm: &Vm, log_name: &str, expect: &[LineMatch]) -> Result<Console, String> {
        let log = self.work.join(format!("{log_name}.log"));
        vm.run(&self.config, expect, &log)
            .map_err(|error| error.to_string())
    }
}

pub fn pass_line(check: &str) -> LineMatch {
    LineMatch::Exact(format!("XORBANG-TEST: PASS {check}"))
}

fn boot_busybox(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        vec![context.busybox.image.clone()],
        "root=/dev/vda xorbang.verity=optional xtest.scenario=boot-busybox",
        INITRAMFS_TIMEOUT,
    );
    context.boot(&vm, "boot-busybox", &[pass_line("boot-busybox")])?;
    Ok(())
}

fn boot_prod(context: &Context) -> Result<(), String> {
    context.boot_system("boot-prod", &context.production_root(), &[])?;
    Ok(())
}

fn boot_dev(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.dev=1", context.production_root());
    context.boot_system("boot-dev", &append, &[])?;
    Ok(())
}

fn dev_discard(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.dev=1", context.production_root());
    context
        .boot_system("dev-discard-write", &append, &[])
        .map_err(|error| format!("first boot: {error}"))?;
    context
        .boot_system("dev-discard-check", &append, &[])
        .map_err(|error| format!("second boot: {error}"))?;
    Ok(())
}

/// The init's last two lines of a refused boot.
pub fn refused(cause_prefix: String) -> [LineMatch; 2] {
    [
        LineMatch::Prefix(format!("xorbang: {cause_prefix}")),
        LineMatch::Exact("xorbang: failure policy: reboot".to_owned()),
    ]
}

fn missing_root(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        Vec::new(),
        &format!("root=PARTUUID={ABSENT_PARTUUID} xorbang.verity=optional xorbang.timeout=3"),
        INITRAMFS_TIMEOUT,
    );
    let expect = refused(format!(
        "root device PARTUUID={ABSENT_PARTUUID} did not appear within 3 s"
    ));
    context.boot(&vm, "missing-root", &expect)?;
    Ok(())
}

fn bad_init(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        vec![context.busybox.image.clone()],
        "root=/dev/vda xorbang.verity=optional init=/sbin/nope",
        INITRAMFS_TIMEOUT,
    );
    let expect = refused("init /sbin/nope does not exist in the new root".to_owned());
    context.boot(&vm, "bad-init", &expect)?;
    Ok(())
}

pub const REPORT_PREFIX: &str = "xorbang: boot-report ";
const FILE_PREFIX: &str = "XORBANG-TEST: FILE boot.json ";

fn boot_report(context: &Context) -> Result<(), String> {
    let console = context.boot_system(
        "boot-report",
        &context.production_root(),
        &[LineMatch::Prefix(REPORT_PREFIX.to_owned())],
    )?;
    let printed = parse_report(&console, REPORT_PREFIX)?;
    let stored = parse_report(&console, FILE_PREFIX)?;
    if printed != stored {
        return Err(format!(
            "boot.json differs from the boot-report line:\n  file: {stored:?}\n  line: {printed:?}"
        ));
    }
    check_report(&stored)
}

pub fn parse_report(console: &Console, prefix: &str) -> Result<BootReport, String> {
    let json = console
        .find(prefix)
        .ok_or_else(|| format!("no console line starts with {prefix:?}"))?;
    serde_json::from_str(json)
        .map_err(|error| format!("{prefix:?} line is not a boot report: {error}: {json}"))
}

/// The stages are consecutive, so they add up to the time between start and hand-off (each
/// rounded down to whole microseconds on its own).
fn check_report(report: &BootReport) -> Result<(), String> {
    let names: Vec<&str> = report
        .stages
        .iter()
        .map(|stage| stage.name.as_str())
        .collect();
    let expected = xorbang_formats::boot_report::STAGES;
    if names != expected {
        return Err(format!("stages {names:?}, expected {expected:?}"));
    }
    let sum: u64 = report.stages.iter().map(|stage| stage.us.0).sum();
    let total = report.total().0;
    if total < sum || total - sum > report.stages.len() as u64 {
        return Err(format!(
            "stages add up to {sum} µs but start to hand-off is {total} µs"
        ));
    }
    let verified = report
        .verity
        .as_ref()
        .is_some_and(|verity| verity.status == "V" && verity.data_device == "/dev/vda1");
    if report.root.device != "/dev/mapper/root"
        || report.root.fstype != "squashfs"
        || report.modules_loaded == 0
        || !verified
    {
        return Err(format!("unexpected root, verity or modules in {report:?}"));
    }
    Ok(())
}

fn verity_boot(context: &Context) -> Result<(), String> {
    let append = context.explicit_verity(&context.system.root_hash, "/dev/vda2");
    context.boot_system("verity-boot", &append, &[])?;
    Ok(())
}

fn verity_dps(context: &Context) -> Result<(), String> {
    context.boot_system("verity-dps", &context.production_root(), &[])?;
    Ok(())
}

/// The root hash with its last hex digit changed.
fn wrong_hash(root_hash: &str) -> String {
    let mut wrong = root_hash.to_owned();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    wrong
}

fn verity_wrong_hash(context: &Context) -> Result<(), String> {
    let wrong = wrong_hash(&context.system.root_hash);
    let append = context.explicit_verity(&wrong, "/dev/vda2");
    let expect = refused(format!(
        "verity: root hash mismatch: roothash={wrong} but the hash tree on /dev/vda2 gives {}",
        context.system.root_hash
    ));
    let disks = vec![context.system.disk.clone()];
    context.boot_disks(disks, "verity-wrong-hash", &append, &expect)?;
    Ok(())
}

const DM_VERITY: &str = "device-mapper: verity: ";

/// dm-verity's own report of a bad block, then the restart that `restart_on_corruption`
/// orders; the agent's line would come only if the read got through.
fn corruption_detected() -> [LineMatch; 2] {
    [
        LineMatch::Between(DM_VERITY.to_owned(), "is corrupted".to_owned()),
        LineMatch::Prefix("reboot: Restarting system".to_owned()),
    ]
}

fn verity_tamper_data(context: &Context) -> Result<(), String> {
    let disks = vec![context.system.tampered_data.clone()];
    let append = context.production_root();
    let console =
        context.boot_disks(disks, "verity-tamper-data", &append, &corruption_detected())?;
    expect_corrupted_block(&console, "data block")
}

fn verity_tamper_hash(context: &Context) -> Result<(), String> {
    let disks = vec![context.system.tampered_hash.clone()];
    let append = context.production_root();
    let console =
        context.boot_disks(disks, "verity-tamper-hash", &append, &corruption_detected())?;
    expect_corrupted_block(&console, "metadata block")
}

/// Which kind of block dm-verity named proves where the tampering was caught.
fn expect_corrupted_block(console: &Console, kind: &str) -> Result<(), String> {
    let line = console
        .lines
        .iter()
        .find(|line| line.starts_with(DM_VERITY) && line.ends_with("is corrupted"))
        .ok_or("no dm-verity corruption line")?;
    if line.contains(kind) && line.contains("is corrupted") {
        Ok(())
    } else {
        Err(format!(
            "dm-verity reported {line:?}, expected a corrupted {kind}"
        ))
    }
}

fn verity_truncated(context: &Context) -> Result<(), String> {
    let disks = vec![
        context.system.disk.clone(),
        context.system.truncated_tree.clone(),
    ];
    let append = context.explicit_verity(&context.system.root_hash, "/dev/vdb");
    let expect = refused("verity: hash device /dev/vdb is ".to_owned());
    let console = context.boot_disks(disks, "verity-truncated", &append, &expect)?;
    let line = console
        .find("xorbang: verity: hash device /dev/vdb is ")
        .unwrap_or("");
    if line.contains("shorter than the") && line.contains("its verity superblock needs") {
        Ok(())
    } else {
        Err(format!("unexpected truncation message {line:?}"))
    }
}

fn verity_initramfs_file(context: &Context) -> Result<(), String> {
    let append = format!(
        "roothash={} systemd.verity_root_data=/root.squashfs \
         systemd.verity_root_hash=/root.verity xtest.scenario=verity-initramfs-file",
        context.busybox.root_hash
    );
    let vm = Vm {
        boot: Boot::Direct {
            kernel: context.kernel.vmlinuz.clone(),
            initrd: context.pxe_initrd.clone(),
            append: context.append(&append),
        },
        disks: Vec::new(),
        fw_cfg: Vec::new(),
        memory_mib: MEMORY_MIB,
        timeout: INITRAMFS_TIMEOUT,
        stop_at_markers: false,
    };
    context.boot(
        &vm,
        "verity-initramfs-file",
        &[pass_line("verity-initramfs-file")],
    )?;
    Ok(())
}

/// OVMF under TCG plus a systemd boot: as slow as it gets.
const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(400);

impl Context {
    pub fn firmware_vm(
        &self,
        name: &str,
        secure_boot: bool,
        disks: Vec<PathBuf>,
    ) -> Result<(Vm, Firmware), String> {
        let firmware = boot_chain::firmware(&self.work, name, secure_boot)
            .map_err(|error| error.to_string())?;
        let vm = Vm {
            boot: Boot::Firmware(firmware.clone()),
            disks,
            fw_cfg: Vec::new(),
            memory_mib: MEMORY_MIB,
            timeout: FIRMWARE_TIMEOUT,
            stop_at_markers: false,
        };
        Ok((vm, firmware))
    }
}

fn uki_boot(context: &Context) -> Result<(), String> {
    boot_uki(context)?;
    Ok(())
}

/// Firmware, UKI from the ESP, init, systemd: the `uki-boot` check.
pub fn boot_uki(context: &Context) -> Result<Console, String> {
    boot_uki_disk(context, &context.chain.unsigned_disk)
}

/// The `uki-boot` check on a machine disk with a UKI on its ESP.
pub fn boot_uki_disk(context: &Context, disk: &Path) -> Result<Console, String> {
    let (vm, _) = context.firmware_vm("uki-boot", false, vec![disk.to_owned()])?;
    context.boot(&vm, "uki-boot", &[pass_line("uki-boot")])
}

fn secureboot_signed(context: &Context) -> Result<(), String> {
    let disks = vec![context.chain.signed_disk.clone()];
    let (vm, _) = context.firmware_vm("secureboot-signed", true, disks)?;
    let expect = [
        LineMatch::Exact("secureboot: Secure boot enabled".to_owned()),
        pass_line("secureboot-signed"),
    ];
    context.boot(&vm, "secureboot-signed", &expect)?;
    Ok(())
}

fn secureboot_unsigned(context: &Context) -> Result<(), String> {
    let cases = [
        ("secureboot-unsigned", &context.chain.unsigned_disk),
        ("secureboot-tampered", &context.chain.tampered_disk),
    ];
    for (name, disk) in cases {
        let (mut vm, _) = context.firmware_vm(name, true, vec![disk.clone()])?;
        vm.stop_at_markers = true;
        vm.timeout = INITRAMFS_TIMEOUT;
        let denied = LineMatch::Between(
            "BdsDxe: failed to load".to_owned(),
            "Access Denied".to_owned(),
        );
        let console = context
            .boot(&vm, name, &[denied])
            .map_err(|error| format!("{name}: {error}"))?;
        if let Some(line) = console
            .lines
            .iter()
            .find(|line| line.starts_with("Linux version") || line.starts_with("xorbang:"))
        {
            return Err(format!("{name}: the kernel ran anyway: {line:?}"));
        }
    }
    Ok(())
}

fn secureboot_cmdline_locked(context: &Context) -> Result<(), String> {
    let wrong = wrong_hash(&context.system.root_hash);
    let injected = uki_cmdline(&wrong, "injected");
    let (mut vm, mut firmware) = context.firmware_vm(
        "secureboot-cmdline-locked",
        true,
        vec![context.system.disk.clone()],
    )?;
    firmware.loader_image = Some((context.chain.signed_uki.clone(), injected));
    vm.boot = Boot::Firmware(firmware);
    let console = context.boot(
        &vm,
        "secureboot-cmdline-locked",
        &[pass_line("secureboot-signed")],
    )?;
    let cmdline = console
        .find("Kernel command line: ")
        .ok_or("no kernel command line on the console")?;
    if cmdline.contains(&wrong) || !cmdline.contains(&context.system.root_hash) {
        return Err(format!("the kernel ran with {cmdline:?}"));
    }
    Ok(())
}

fn custom_kernel_boot(context: &Context) -> Result<(), String> {
    let bzimage = fixtures::custom_kernel(&context.cache).map_err(|error| error.to_string())?;
    let initrd = fixtures::initrd(
        &context.work,
        "initrd-no-modules.img",
        &context.binaries,
        None,
        &[],
    )
    .map_err(|error| error.to_string())?;
    let check = "custom-kernel-boot";
    let vm = Vm {
        boot: Boot::Direct {
            kernel: bzimage,
            initrd,
            append: context.append(&format!(
                "{} xtest.scenario={check}",
                context.production_root()
            )),
        },
        disks: vec![context.system.disk.clone()],
        fw_cfg: Vec::new(),
        memory_mib: MEMORY_MIB,
        timeout: SYSTEMD_TIMEOUT,
        stop_at_markers: false,
    };
    let console = context.boot(&vm, check, &[pass_line(check)])?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    if report.modules_loaded != 0 {
        return Err(format!("the init loaded {} modules", report.modules_loaded));
    }
    Ok(())
}

fn reproducible_build(context: &Context) -> Result<(), String> {
    let build_twice = |name: &str,
                       build: &dyn Fn(&Path) -> Result<(), String>|
     -> Result<(), String> {
        let first = context.work.join(format!("repro-1-{name}"));
        let second = context.work.join(format!("repro-2-{name}"));
        build(&first)?;
        build(&second)?;
        let same = std::fs::read(&first).ok() == std::fs::read(&second).ok();
        for path in [&first, &second] {
            std::fs::remove_file(path).map_err(|error| format!("{}: {error}", path.display()))?;
        }
        if same {
            Ok(())
        } else {
            Err(format!("two builds of the {name} differ"))
        }
    };
    let initrd = |out: &Path| -> Result<(), String> {
        let name = out
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        fixtures::initrd(
            &context.work,
            &name,
            &context.binaries,
            Some(&context.kernel),
            &[],
        )
        .map(drop)
        .map_err(|error| error.to_string())
    };
    build_twice("initramfs", &initrd)?;
    let uki = |out: &Path| -> Result<(), String> {
        fixtures::run(
            std::process::Command::new(&context.binaries.build)
                .args(["uki", "--linux"])
                .arg(&context.kernel.vmlinuz)
                .arg("--initrd")
                .arg(&context.initrd)
                .args([
                    "--cmdline",
                    &uki_cmdline(&context.system.root_hash, "uki-boot"),
                ])
                .arg("-o")
                .arg(out),
        )
        .map(drop)
        .map_err(|error| error.to_string())
    };
    build_twice("UKI", &uki)
}

fn verity_unverified_refused(context: &Context) -> Result<(), String> {
    let root = format!("root=PARTLABEL={ROOT_PARTLABEL}");
    let expect = refused(format!("bad kernel command line: {root} without roothash="));
    let disks = vec![context.system.disk.clone()];
    context
        .boot_disks(disks, "verity-unverified-refused", &root, &expect)
        .map_err(|error| format!("refusal: {error}"))?;
    context
        .boot_system(
            "verity-unverified-allowed",
            &format!("{root} xorbang.verity=optional"),
            &[],
        )
        .map_err(|error| format!("with xorbang.verity=optional: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::boot_report::{Micros, RootReport, Stage};

    fn report(stage_us: &[u64], total_us: u64) -> BootReport {
        let names = xorbang_formats::boot_report::STAGES;
        BootReport {
            version: 1,
            mode: xorbang_formats::boot_report::Mode::Production,
            root: RootReport {
                spec: "PARTUUID=x".into(),
                device: "/dev/mapper/root".into(),
                fstype: "squashfs".into(),
                verified: true,
            },
            verity: Some(xorbang_formats::boot_report::VerityReport {
                root_hash: "ab".into(),
                data_device: "/dev/vda1".into(),
                hash_device: "/dev/vda2".into(),
                status: "V".into(),
            }),
            modules_loaded: 5,
            extensions: Vec::new(),
            host_config: None,
            init: "/sbin/init".into(),
            stages: names
                .iter()
                .zip(stage_us)
                .map(|(name, us)| Stage {
                    name: (*name).into(),
                    us: Micros(*us),
                })
                .collect(),
            uptime_start_us: Micros(1_000_000),
            uptime_handoff_us: Micros(1_000_000 + total_us),
        }
    }

    #[test]
    fn reports_whose_stages_add_up_pass() {
        check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 150)).expect("adds up");
        check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 153)).expect("rounding");
    }

    #[test]
    fn reports_with_gaps_or_missing_stages_fail() {
        let gap = check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 400)).expect_err("gap");
        assert!(gap.contains("add up to 150"), "{gap}");
        let missing = check_report(&report(&[10, 20, 30, 40, 0], 100)).expect_err("missing stage");
        assert!(missing.contains("stages"), "{missing}");
    }
}

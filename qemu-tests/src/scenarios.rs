//! The VM scenarios. Each boots one or more VMs and passes only on exact console lines: the
//! guest agent's `XORBANG-TEST: PASS <name>`, or the init's own error and failure-policy
//! lines for the scenarios where the boot must be refused.

use std::path::PathBuf;
use std::time::Duration;

use xorbang_init::report::BootReport;

use crate::config::Config;
use crate::fixtures::{Kernel, ROOT_PARTLABEL, ROOT_PARTUUID};
use crate::qemu::{Console, LineMatch, Vm};

/// A systemd boot under TCG takes 30-45 s on a quiet machine; leave room for a noisy one.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(300);
const INITRAMFS_TIMEOUT: Duration = Duration::from_secs(120);
const MEMORY_MIB: u32 = 512;
/// A PARTUUID no disk has.
const ABSENT_PARTUUID: &str = "00000000-0000-4000-8000-00000000dead";

/// What the scenarios boot.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Config,
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub system_disk: PathBuf,
    pub busybox_image: PathBuf,
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

    fn vm(&self, disks: Vec<PathBuf>, append: &str, timeout: Duration) -> Vm {
        Vm {
            kernel: self.kernel.vmlinuz.clone(),
            initrd: self.initrd.clone(),
            append: self.append(append),
            disks,
            memory_mib: MEMORY_MIB,
            timeout,
        }
    }

    /// Boots the systemd image with `append` and expects the agent's PASS line for `check`.
    pub fn boot_system(
        &self,
        check: &str,
        append: &str,
        extra: &[LineMatch],
    ) -> Result<Console, String> {
        let vm = self.vm(
            vec![self.system_disk.clone()],
            &format!("{append} xtest.scenario={check}"),
            SYSTEMD_TIMEOUT,
        );
        let mut expect = extra.to_vec();
        expect.push(pass_line(check));
        self.boot(&vm, check, &expect)
    }

    fn boot(&self, vm: &Vm, log_name: &str, expect: &[LineMatch]) -> Result<Console, String> {
        let log = self.work.join(format!("{log_name}.log"));
        vm.run(&self.config, expect, &log)
            .map_err(|error| error.to_string())
    }
}

fn pass_line(check: &str) -> LineMatch {
    LineMatch::Exact(format!("XORBANG-TEST: PASS {check}"))
}

fn production_root() -> String {
    format!("root=PARTUUID={ROOT_PARTUUID} xorbang.verity=optional")
}

fn boot_busybox(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        vec![context.busybox_image.clone()],
        "root=/dev/vda xorbang.verity=optional xtest.scenario=boot-busybox",
        INITRAMFS_TIMEOUT,
    );
    context.boot(&vm, "boot-busybox", &[pass_line("boot-busybox")])?;
    Ok(())
}

fn boot_prod(context: &Context) -> Result<(), String> {
    context.boot_system("boot-prod", &production_root(), &[])?;
    Ok(())
}

fn boot_dev(context: &Context) -> Result<(), String> {
    let append = format!("root=PARTLABEL={ROOT_PARTLABEL} xorbang.dev=1");
    context.boot_system("boot-dev", &append, &[])?;
    Ok(())
}

fn dev_discard(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.dev=1", production_root());
    context
        .boot_system("dev-discard-write", &append, &[])
        .map_err(|error| format!("first boot: {error}"))?;
    context
        .boot_system("dev-discard-check", &append, &[])
        .map_err(|error| format!("second boot: {error}"))?;
    Ok(())
}

/// The init's last two lines of a refused boot.
fn refused(cause_prefix: String) -> [LineMatch; 2] {
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
        vec![context.busybox_image.clone()],
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
        &production_root(),
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
    let expected = [
        "setup",
        "modules",
        "root-device",
        "verity",
        "mount-root",
        "switch-root",
    ];
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
    if report.root.device != "/dev/vda1"
        || report.root.fstype != "squashfs"
        || report.modules_loaded == 0
    {
        return Err(format!("unexpected root or modules in {report:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_init::report::{Micros, RootReport, Stage};

    fn report(stage_us: &[u64], total_us: u64) -> BootReport {
        let names = [
            "setup",
            "modules",
            "root-device",
            "verity",
            "mount-root",
            "switch-root",
        ];
        BootReport {
            version: 1,
            mode: xorbang_init::options::Mode::Production,
            root: RootReport {
                spec: "PARTUUID=x".into(),
                device: "/dev/vda1".into(),
                fstype: "squashfs".into(),
            },
            verity: None,
            modules_loaded: 5,
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
        check_report(&report(&[10, 20, 30, 0, 40, 50], 150)).expect("adds up");
        check_report(&report(&[10, 20, 30, 0, 40, 50], 153)).expect("rounding");
    }

    #[test]
    fn reports_with_gaps_or_missing_stages_fail() {
        let gap = check_report(&report(&[10, 20, 30, 0, 40, 50], 400)).expect_err("gap");
        assert!(gap.contains("add up to 150"), "{gap}");
        let missing = check_report(&report(&[10, 20, 30, 40, 0], 100)).expect_err("missing stage");
        assert!(missing.contains("stages"), "{missing}");
    }
}

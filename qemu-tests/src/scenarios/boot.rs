//! Booting at all: the busybox smoke test, production and dev mode, refused boots the init
//! names, the boot report, the custom kernel and the reproducible build.

use std::path::Path;

use xorbang_formats::boot_report::BootReport;

use crate::context::{
    parse_report, pass_line, refused, same_contents, Context, INITRAMFS_TIMEOUT, MEMORY_MIB,
    REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use crate::fixtures::boot_chain::uki_cmdline;
use crate::fixtures::{binaries, command};
use crate::harness::qemu::{AfterMarkers, Boot, LineMatch, Network, Vm};

/// A PARTUUID no disk has.
const ABSENT_PARTUUID: &str = "00000000-0000-4000-8000-00000000dead";

pub fn boot_busybox(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        vec![context.busybox.image.clone()],
        "root=/dev/vda xorbang.verity=optional xtest.scenario=boot-busybox",
        INITRAMFS_TIMEOUT,
    );
    context.boot(&vm, "boot-busybox", &[pass_line("boot-busybox")])?;
    Ok(())
}

pub fn boot_prod(context: &Context) -> Result<(), String> {
    context.boot_system("boot-prod", &context.production_root(), &[])?;
    Ok(())
}

pub fn boot_dev(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.dev=1", context.production_root());
    context.boot_system("boot-dev", &append, &[])?;
    Ok(())
}

pub fn dev_discard(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.dev=1", context.production_root());
    context
        .boot_system("dev-discard-write", &append, &[])
        .map_err(|error| format!("first boot: {error}"))?;
    context
        .boot_system("dev-discard-check", &append, &[])
        .map_err(|error| format!("second boot: {error}"))?;
    Ok(())
}

pub fn missing_root(context: &Context) -> Result<(), String> {
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

pub fn bad_init(context: &Context) -> Result<(), String> {
    let vm = context.vm(
        vec![context.busybox.image.clone()],
        "root=/dev/vda xorbang.verity=optional init=/sbin/nope",
        INITRAMFS_TIMEOUT,
    );
    let expect = refused("init /sbin/nope does not exist in the new root".to_owned());
    context.boot(&vm, "bad-init", &expect)?;
    Ok(())
}

const FILE_PREFIX: &str = "XORBANG-TEST: FILE boot.json ";

pub fn boot_report(context: &Context) -> Result<(), String> {
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
    check_report(&stored, context.kernel.modules.is_some())
}

/// The stages are consecutive, so they add up to the time between start and hand-off (each
/// rounded down to whole microseconds on its own); modules were loaded exactly when the
/// kernel has them as modules, and the memory in use is recorded.
fn check_report(report: &BootReport, modular_kernel: bool) -> Result<(), String> {
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
    let memory = report
        .memory
        .as_ref()
        .is_some_and(|memory| memory.used_kib.0 > 0 && memory.used_kib < memory.total_kib);
    if report.root.device != "/dev/mapper/root"
        || report.root.fstype != "squashfs"
        || (report.modules_loaded > 0) != modular_kernel
        || !verified
        || !memory
    {
        return Err(format!(
            "unexpected root, verity, modules or memory in {report:?}"
        ));
    }
    Ok(())
}
pub fn custom_kernel_boot(context: &Context) -> Result<(), String> {
    let (bzimage, initrd) = context.custom_kernel_parts()?;
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
        network: Network::Isolated,
        memory_mib: MEMORY_MIB,
        timeout: SYSTEMD_TIMEOUT,
        after_markers: AfterMarkers::PowerOff,
        writable_disks: false,
    };
    let console = context.boot(&vm, check, &[pass_line(check)])?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    if report.modules_loaded != 0 {
        return Err(format!("the init loaded {} modules", report.modules_loaded));
    }
    Ok(())
}

pub fn reproducible_build(context: &Context) -> Result<(), String> {
    let build_twice = |name: &str,
                       build: &dyn Fn(&Path) -> Result<(), String>|
     -> Result<(), String> {
        let first = context.work.join(format!("repro-1-{name}"));
        let second = context.work.join(format!("repro-2-{name}"));
        build(&first)?;
        build(&second)?;
        let same = same_contents(&first, &second)?;
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
        binaries::initrd(
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
        command::run(
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

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::boot_report::{MemoryReport, Micros, RootReport, Stage};
    use xorbang_formats::meminfo::Kib;

    fn report(stage_us: &[u64], total_us: u64) -> BootReport {
        let names = xorbang_formats::boot_report::STAGES;
        BootReport {
            version: 1,
            mode: xorbang_formats::boot_report::Mode::Production,
            dev: None,
            root: RootReport {
                spec: "PARTUUID=x".into(),
                device: "/dev/mapper/root".into(),
                fstype: "squashfs".into(),
                verified: true,
                image_id: None,
                image_version: None,
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
            memory: Some(MemoryReport {
                total_kib: Kib(480_000),
                used_kib: Kib(20_000),
            }),
        }
    }

    #[test]
    fn reports_whose_stages_add_up_pass() {
        check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 150), true).expect("adds up");
        check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 153), true).expect("rounding");
    }

    #[test]
    fn modules_must_match_the_kernel_and_memory_must_be_recorded() {
        let report = report(&[10, 20, 5, 30, 0, 40, 0, 45], 150);
        let built_in = check_report(&report, false).expect_err("modules on a built-in kernel");
        assert!(built_in.contains("modules"), "{built_in}");
        let mut no_memory = report.clone();
        no_memory.memory = None;
        assert!(check_report(&no_memory, true).is_err());
    }

    #[test]
    fn reports_with_gaps_or_missing_stages_fail() {
        let gap =
            check_report(&report(&[10, 20, 5, 30, 0, 40, 0, 45], 400), true).expect_err("gap");
        assert!(gap.contains("add up to 150"), "{gap}");
        let missing =
            check_report(&report(&[10, 20, 30, 40, 0], 100), true).expect_err("missing stage");
        assert!(missing.contains("stages"), "{missing}");
    }
}

//! Extensions: sysexts and confexts merged (or refused) before switch_root, from every place
//! the init looks. Each checks the init's own lines and boot report on the console and, where
//! the boot goes on, what the guest agent sees.

use std::process::Command;

use xorbang_formats::boot_report::BootReport;
use xorbang_formats::boot_report::Trust;

use crate::context::{
    corrupted_block, parse_report, pass_line, refused, report_line, Context, INITRAMFS_TIMEOUT,
    REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use crate::fixtures::extensions::{self, TAMPERED_HELLO};
use crate::fixtures::{binaries, boot_chain, command, system};
use crate::harness::qemu::{Console, LineMatch};

/// The console line that starts with `prefix` (after `xorbang: `), in full.
fn line_after<'a>(console: &'a Console, prefix: &str) -> Result<&'a str, String> {
    console
        .lines
        .iter()
        .find(|line| line.starts_with(prefix))
        .map(String::as_str)
        .ok_or_else(|| format!("no console line starts with {prefix:?}"))
}

/// The report lists exactly these extensions, with the root hashes of their images.
fn expect_merged(
    context: &Context,
    report: &BootReport,
    expected: &[(&str, &str, Trust)],
) -> Result<(), String> {
    let found: Vec<(String, String, Trust)> = report
        .extensions
        .iter()
        .map(|e| (e.kind.clone(), e.name.clone(), e.trust))
        .collect();
    let wanted: Vec<(String, String, Trust)> = expected
        .iter()
        .map(|(kind, name, trust)| ((*kind).to_owned(), (*name).to_owned(), *trust))
        .collect();
    if found != wanted {
        return Err(format!("the report lists {found:?}, expected {wanted:?}"));
    }
    for extension in &report.extensions {
        let built = extensions::root_hash(&context.system.extensions, &extension.name)
            .map_err(|error| error.to_string())?;
        if extension.root_hash != built {
            return Err(format!(
                "{} merged with root hash {}, but its image has {built}",
                extension.name, extension.root_hash
            ));
        }
    }
    Ok(())
}

/// Only the pinned sysext `name` was merged, and from the image in `dir` (the route the
/// scenario is about, which shadows the base image's copy).
fn expect_merged_from(
    context: &Context,
    console: &Console,
    name: &str,
    dir: &str,
) -> Result<(), String> {
    let report = parse_report(console, REPORT_PREFIX)?;
    expect_merged(context, &report, &[("sysext", name, Trust::BaseManifest)])?;
    let image = &report.extensions[0].image;
    if *image != format!("{dir}/{name}.raw") {
        return Err(format!("{name} was merged from {image}, not from {dir}"));
    }
    Ok(())
}

pub fn sysext_merge(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.sysext=world,hello", context.production_root());
    let console = context.boot_system("sysext-merge", &append, &[report_line()])?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    expect_merged(
        context,
        &report,
        &[
            ("sysext", "hello", Trust::BaseManifest),
            ("sysext", "world", Trust::BaseManifest),
        ],
    )
}

pub fn sysext_mismatch(context: &Context) -> Result<(), String> {
    let cases = [
        ("fedora", "ID=fedora does not match the base's ID=debian"),
        (
            "oldstable",
            "VERSION_ID=11 does not match the base's VERSION_ID=12",
        ),
    ];
    for (name, reason) in cases {
        let prefix = format!("sysext {name} (/usr/lib/extensions/{name}.raw): ");
        let append = format!("{} xorbang.sysext={name}", context.production_root());
        let check = format!("sysext-mismatch-{name}");
        let console = context.boot_disks(
            vec![context.system.disk.clone()],
            &check,
            &append,
            &refused(prefix.clone()),
        )?;
        let line = line_after(&console, &format!("xorbang: {prefix}"))?;
        if !line.contains(reason) {
            return Err(format!(
                "{name}: refused with {line:?}, expected it to say {reason:?}"
            ));
        }
    }
    Ok(())
}

pub fn sysext_tamper(context: &Context) -> Result<(), String> {
    let tampered = context.system.extensions.join(TAMPERED_HELLO);
    let (block, block_size) = extensions::tampered_hello_block(&context.system.extensions)
        .map_err(|error| error.to_string())?;
    let initrd = binaries::initrd(
        &context.work,
        "initrd-tampered-sysext.img",
        &context.binaries,
        Some(&context.kernel),
        &[(tampered.as_path(), "/.extra/sysext/hello.raw")],
    )
    .map_err(|error| error.to_string())?;
    let vm = context.vm_with_initrd(
        &initrd,
        vec![context.system.disk.clone()],
        &format!(
            "{} xorbang.sysext=hello xtest.scenario=sysext-tamper",
            context.production_root()
        ),
        INITRAMFS_TIMEOUT,
    );
    // The init's full read fails at the first byte of the block the fixture damaged.
    let prefix = format!(
        "sysext hello (initramfs:/.extra/sysext/hello.raw): byte {} of ",
        block * block_size
    );
    let mut expect = vec![corrupted_block("data", block)];
    expect.extend(refused(prefix.clone()));
    let console = context.boot(&vm, "sysext-tamper", &expect)?;
    let line = line_after(&console, &format!("xorbang: {prefix}"))?;
    if !line.contains("does not match the hash tree") {
        return Err(format!("unexpected refusal {line:?}"));
    }
    Ok(())
}

/// The state partition route: the system disk laid out again with a DPS /var partition (ext4)
/// whose lib/extensions/ holds `state-tool.raw`; the initramfs carries ext4 for it.
pub fn sysext_state(context: &Context) -> Result<(), String> {
    boot_with_state_partition(context, "sysext-state")
}

/// After a boot that merged an extension from the /var partition, the booted system can
/// still mount that partition read-write: the init copied the image off it and let go.
pub fn sysext_state_var_rw(context: &Context) -> Result<(), String> {
    boot_with_state_partition(context, "sysext-state-var-rw")
}

/// Boots a disk whose DPS /var partition (ext4, /dev/vda3) holds `lib/extensions/state-tool.raw`,
/// selecting it; the agent runs `check`.
fn boot_with_state_partition(context: &Context, check: &str) -> Result<(), String> {
    let dir = context.work.join(check);
    let tree = dir.join("state/lib/extensions");
    std::fs::create_dir_all(&tree).map_err(|error| format!("{}: {error}", tree.display()))?;
    let image = context.system.extensions.join("state-tool.raw");
    std::fs::copy(&image, tree.join("state-tool.raw"))
        .map_err(|error| format!("{}: {error}", image.display()))?;
    let state = dir.join("state.img");
    command::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "state", "-d"])
            .arg(dir.join("state"))
            .arg(&state)
            .arg("32M"),
    )
    .map_err(|error| error.to_string())?;
    let var = format!("Type=var\nLabel=var\nCopyBlocks={}\n", state.display());
    let disk = system::disk_with(
        &context.binaries.build,
        &context.system,
        &dir,
        &[("30-var.conf", var)],
    )
    .map_err(|error| error.to_string())?;
    let initrd = context.ext4_initrd()?;
    let mut vm = context.vm_with_initrd(
        &initrd,
        vec![disk],
        &format!(
            "{} xorbang.sysext=state-tool xtest.scenario={check} xtest.var=/dev/vda3",
            context.production_root()
        ),
        SYSTEMD_TIMEOUT,
    );
    // The disk is this scenario's own copy: the guest writes to its /var partition.
    vm.writable_disks = true;
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    expect_merged_from(context, &console, "state-tool", "state:/var/lib/extensions")
}

/// A layered boot (two sysexts, a confext, a host config with a long file list): its report
/// is longer than one kmsg record takes, and `dmesg` in the booted system still holds all of
/// it, equal to /run/xorbang/boot.json.
pub fn boot_report_kmsg(context: &Context) -> Result<(), String> {
    let check = "boot-report-kmsg";
    let mut text = crate::fixtures::host_config::host_config("xorbang-kmsg");
    for index in 0..24 {
        text.push_str(&format!(
            "\n[[files]]\npath = \"/etc/xorbang-kmsg/file-{index:02}\"\ncontent = \"{index}\\n\"\n"
        ));
    }
    let config = context.write_work_file("host-config-kmsg.toml", &text)?;
    let append = format!(
        "{} xorbang.sysext=world,hello xorbang.confext=site xtest.scenario={check}",
        context.production_root()
    );
    let mut vm = context.vm(vec![context.system.disk.clone()], &append, SYSTEMD_TIMEOUT);
    vm.fw_cfg
        .push((crate::fixtures::host_config::FW_CFG_NAME.to_owned(), config));
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    // The split must have happened, or this proves nothing about it.
    if !console
        .lines
        .iter()
        .any(|line| line.starts_with("xorbang: +"))
    {
        return Err("the boot report fit one kmsg record: make the fixture's report longer".into());
    }
    let report = parse_report(&console, REPORT_PREFIX)?;
    match report.host_config {
        Some(host) if host.applied && host.files.len() > 24 => Ok(()),
        other => Err(format!("unexpected host config report {other:?}")),
    }
}

pub fn sysext_unpinned(context: &Context) -> Result<(), String> {
    let prefix = "sysext extra (/usr/lib/extensions/extra.raw): not pinned";
    let append = format!("{} xorbang.sysext=extra", context.production_root());
    context
        .boot_disks(
            vec![context.system.disk.clone()],
            "sysext-unpinned-production",
            &append,
            &refused(prefix.to_owned()),
        )
        .map_err(|error| format!("production: {error}"))?;
    let append = format!(
        "{} xorbang.dev=1 xorbang.sysext=extra",
        context.production_root()
    );
    let warning = LineMatch::Prefix(
        "xorbang: sysext extra (/usr/lib/extensions/extra.raw) is not pinned".to_owned(),
    );
    let console = context
        .boot_system("sysext-unpinned-dev", &append, &[warning, report_line()])
        .map_err(|error| format!("dev mode: {error}"))?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    expect_merged(context, &report, &[("sysext", "extra", Trust::Unpinned)])?;
    // The signed command line may pin what the base image does not.
    let hash = extensions::root_hash(&context.system.extensions, "extra")
        .map_err(|error| error.to_string())?;
    let append = format!("{} xorbang.sysext=extra:{hash}", context.production_root());
    let console = context
        .boot_system("sysext-unpinned-cmdline", &append, &[report_line()])
        .map_err(|error| format!("pinned on the command line: {error}"))?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    expect_merged(context, &report, &[("sysext", "extra", Trust::Cmdline)])
}

/// The ESP route: systemd-stub hands `EFI/BOOT/BOOTX64.EFI.extra.d/greeting.raw` to the
/// initramfs as /.extra/sysext/greeting.raw, which shadows the base image's copy: a different
/// image of the same name, with different text and no pin, which would be refused.
pub fn sysext_esp(context: &Context) -> Result<(), String> {
    let check = "sysext-esp";
    let cmdline = format!(
        "{} xorbang.sysext=greeting",
        boot_chain::uki_cmdline(&context.system.root_hash, check)
    );
    let extras = [context.system.extensions.join("greeting.raw")];
    let spec = boot_chain::UkiSpec {
        name: check,
        kernel: &context.kernel.vmlinuz,
        initrd: &context.initrd,
        cmdline: &cmdline,
        extras: &extras,
    };
    let disk = boot_chain::uki_disk_with(&context.work, &context.binaries, &context.system, &spec)
        .map_err(|error| error.to_string())?;
    let (vm, _) = context.firmware_vm(check, false, vec![disk])?;
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    expect_merged_from(context, &console, "greeting", "initramfs:/.extra/sysext")
}

pub fn confext_merge(context: &Context) -> Result<(), String> {
    let append = format!("{} xorbang.confext=site", context.production_root());
    let console = context.boot_system("confext-merge", &append, &[report_line()])?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    expect_merged(
        context,
        &report,
        &[("confext", "site", Trust::BaseManifest)],
    )
}

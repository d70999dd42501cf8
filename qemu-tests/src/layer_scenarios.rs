//! The scenarios of composable layers: extensions merged (or refused) and host config
//! applied (or refused) before switch_root. Each checks the init's own lines and boot
//! report on the console and, where the boot goes on, what the guest agent sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use xorbang_formats::boot_report::BootReport;
use xorbang_formats::boot_report::Trust;

use crate::extension_fixtures::{self, TAMPERED_HELLO};
use crate::fixtures;
use crate::qemu::{Boot, Console, LineMatch};
use crate::scenarios::{
    parse_report, pass_line, refused, Context, INITRAMFS_TIMEOUT, REPORT_PREFIX,
};

pub const FW_CFG_NAME: &str = xorbang_init::layers::host_config_source::FW_CFG_NAME;
const DM_VERITY_CORRUPTED: (&str, &str) = ("device-mapper: verity: ", "is corrupted");

fn report_line() -> LineMatch {
    LineMatch::Prefix(REPORT_PREFIX.to_owned())
}

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
        let built = extension_fixtures::root_hash(&context.system.extensions, &extension.name)
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
    let initrd = fixtures::initrd(
        &context.work,
        "initrd-tampered-sysext.img",
        &context.binaries,
        Some(&context.kernel),
        &[(tampered.as_path(), "/.extra/sysext/hello.raw")],
    )
    .map_err(|error| error.to_string())?;
    let mut vm = context.vm(
        vec![context.system.disk.clone()],
        &format!(
            "{} xorbang.sysext=hello xtest.scenario=sysext-tamper",
            context.production_root()
        ),
        INITRAMFS_TIMEOUT,
    );
    set_initrd(&mut vm.boot, initrd);
    let prefix = "sysext hello (initramfs:/.extra/sysext/hello.raw): byte ";
    let (start, end) = DM_VERITY_CORRUPTED;
    let mut expect = vec![LineMatch::Between(start.to_owned(), end.to_owned())];
    expect.extend(refused(prefix.to_owned()));
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
    let check = "sysext-state";
    let dir = context.work.join(check);
    let tree = dir.join("state/lib/extensions");
    std::fs::create_dir_all(&tree).map_err(|error| format!("{}: {error}", tree.display()))?;
    let image = context.system.extensions.join("state-tool.raw");
    std::fs::copy(&image, tree.join("state-tool.raw"))
        .map_err(|error| format!("{}: {error}", image.display()))?;
    let state = dir.join("state.img");
    fixtures::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "state", "-d"])
            .arg(dir.join("state"))
            .arg(&state)
            .arg("32M"),
    )
    .map_err(|error| error.to_string())?;
    let var = format!("Type=var\nLabel=var\nCopyBlocks={}\n", state.display());
    let disk = disk_with(context, &dir, &[("30-var.conf", var)])?;
    // ext4 asks for crc32c through the crypto API (a soft dependency modules.dep omits).
    let initrd = fixtures::initrd_with_modules(
        &context.work,
        "initrd-ext4.img",
        &context.binaries,
        &context.kernel,
        &["ext4", "crc32c_generic"],
    )
    .map_err(|error| error.to_string())?;
    let mut vm = context.vm(
        vec![disk],
        &format!(
            "{} xorbang.sysext=state-tool xtest.scenario={check}",
            context.production_root()
        ),
        crate::scenarios::SYSTEMD_TIMEOUT,
    );
    set_initrd(&mut vm.boot, initrd);
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    expect_merged_from(context, &console, "state-tool", "state:/var/lib/extensions")
}

fn set_initrd(boot: &mut Boot, new_initrd: PathBuf) {
    if let Boot::Direct { initrd, .. } = boot {
        *initrd = new_initrd;
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
    let hash = extension_fixtures::root_hash(&context.system.extensions, "extra")
        .map_err(|error| error.to_string())?;
    let append = format!("{} xorbang.sysext=extra:{hash}", context.production_root());
    let console = context
        .boot_system("sysext-unpinned-cmdline", &append, &[report_line()])
        .map_err(|error| format!("pinned on the command line: {error}"))?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    expect_merged(context, &report, &[("sysext", "extra", Trust::Cmdline)])
}

/// The ESP route: systemd-stub hands `EFI/BOOT/BOOTX64.EFI.extra.d/hello.raw` to the
/// initramfs as /.extra/sysext/hello.raw, which shadows the base image's copy.
pub fn sysext_esp(context: &Context) -> Result<(), String> {
    let check = "sysext-esp";
    let cmdline = format!(
        "{} xorbang.sysext=hello",
        crate::boot_chain::uki_cmdline(&context.system.root_hash, check)
    );
    let extras = [context.system.extensions.join("hello.raw")];
    let spec = crate::boot_chain::UkiSpec {
        name: check,
        kernel: &context.kernel.vmlinuz,
        initrd: &context.initrd,
        cmdline: &cmdline,
        extras: &extras,
    };
    let disk =
        crate::boot_chain::uki_disk_with(&context.work, &context.binaries, &context.system, &spec)
            .map_err(|error| error.to_string())?;
    let (vm, _) = context.firmware_vm(check, false, vec![disk])?;
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    expect_merged_from(context, &console, "hello", "initramfs:/.extra/sysext")
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

/// A host config that sets the hostname and one networkd file.
pub fn host_config(hostname: &str) -> String {
    format!(
        "# written by the xorbang test runner\n\
         version = 1\n\
         hostname = \"{hostname}\"\n\
         \n\
         [[network]]\n\
         name = \"en*\"\n\
         dhcp = true\n"
    )
}

pub fn write_work_file(context: &Context, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = context.work.join(name);
    std::fs::write(&path, text).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(path)
}

/// The report says the config from `origin` was applied with the networkd file.
fn expect_applied(console: &Console, origin: &str) -> Result<(), String> {
    let report = parse_report(console, REPORT_PREFIX)?;
    let host = report.host_config.ok_or("the report has no host_config")?;
    let network = "systemd/network/10-xorbang-0.network".to_owned();
    if host.origin != origin || !host.applied || !host.files.contains(&network) {
        return Err(format!("unexpected host config report {host:?}"));
    }
    Ok(())
}

pub fn hostconfig_fwcfg(context: &Context) -> Result<(), String> {
    let config = write_work_file(
        context,
        "host-config-fwcfg.toml",
        &host_config("xorbang-fwcfg"),
    )?;
    let mut vm = context.vm(
        vec![context.system.disk.clone()],
        &format!(
            "{} xtest.scenario=hostconfig-fwcfg",
            context.production_root()
        ),
        crate::scenarios::SYSTEMD_TIMEOUT,
    );
    vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
    let console = context.boot(
        &vm,
        "hostconfig-fwcfg",
        &[report_line(), pass_line("hostconfig-fwcfg")],
    )?;
    expect_applied(&console, &format!("fw_cfg {FW_CFG_NAME}"))
}

/// `initrd` with a cpio appended that holds `etc/xorbang/host-config.toml`, as a PXE server
/// adds a per-host archive after the shared one (the kernel unpacks them in order).
fn initrd_with_config(context: &Context, config: &str) -> Result<PathBuf, String> {
    let staging = context.work.join("host-config-cpio");
    let file = staging.join("etc/xorbang/host-config.toml");
    let parent = file.parent().unwrap_or(&staging);
    std::fs::create_dir_all(parent).map_err(|error| format!("{}: {error}", parent.display()))?;
    std::fs::write(&file, config).map_err(|error| format!("{}: {error}", file.display()))?;
    let cpio = context.work.join("host-config.cpio");
    let script = format!(
        "cd '{}' && find etc | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > '{}'",
        staging.display(),
        cpio.display()
    );
    fixtures::run(Command::new("sh").args(["-c", &script])).map_err(|error| error.to_string())?;
    let combined = context.work.join("initrd-host-config.img");
    let mut bytes = std::fs::read(&context.initrd)
        .map_err(|error| format!("{}: {error}", context.initrd.display()))?;
    // The kernel looks for an appended archive only at a 4-byte aligned offset after a
    // compressed one, skipping zeros up to it.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend(std::fs::read(&cpio).map_err(|error| format!("{}: {error}", cpio.display()))?);
    std::fs::write(&combined, bytes).map_err(|error| format!("{}: {error}", combined.display()))?;
    Ok(combined)
}

pub fn hostconfig_initrd(context: &Context) -> Result<(), String> {
    let initrd = initrd_with_config(context, &host_config("xorbang-initrd"))?;
    let mut vm = context.vm(
        vec![context.system.disk.clone()],
        &format!(
            "{} xtest.scenario=hostconfig-initrd",
            context.production_root()
        ),
        crate::scenarios::SYSTEMD_TIMEOUT,
    );
    set_initrd(&mut vm.boot, initrd);
    let console = context.boot(
        &vm,
        "hostconfig-initrd",
        &[report_line(), pass_line("hostconfig-initrd")],
    )?;
    expect_applied(&console, "initramfs:/etc/xorbang/host-config.toml")
}

/// A FAT image holding `text` at `path` (directories made as needed).
fn fat_image(out: &Path, path: &str, text: &str, staging: &Path) -> Result<(), String> {
    std::fs::write(staging, text).map_err(|error| format!("{}: {error}", staging.display()))?;
    // mkfs.vfat -C only creates: drop the image of an earlier run.
    match std::fs::remove_file(out) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {error}", out.display()))
        }
        _ => {}
    }
    fixtures::run(Command::new("mkfs.vfat").arg("-C").arg(out).arg("34000"))
        .map_err(|error| error.to_string())?;
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    let mut dir = String::from("::");
    for part in parts {
        dir.push('/');
        dir.push_str(part);
        fixtures::run(Command::new("mmd").arg("-i").arg(out).arg(&dir))
            .map_err(|error| error.to_string())?;
    }
    fixtures::run(
        Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(staging)
            .arg(format!("::/{path}")),
    )
    .map_err(|error| error.to_string())
    .map(drop)
}

/// The system disk laid out again with `extra` partitions (name, repart body) after the
/// root and its tree.
fn disk_with(context: &Context, dir: &Path, extra: &[(&str, String)]) -> Result<PathBuf, String> {
    let definitions = dir.join("definitions");
    std::fs::create_dir_all(&definitions)
        .map_err(|error| format!("{}: {error}", definitions.display()))?;
    let mut layout = vec![
        (
            "10-root.conf",
            "Type=root\nCopyBlocks=root-image\n".to_owned(),
        ),
        (
            "20-root-verity.conf",
            "Type=root-verity\nCopyBlocks=root-verity\n".to_owned(),
        ),
    ];
    layout.extend(extra.iter().cloned());
    for (name, body) in layout {
        let path = definitions.join(name);
        std::fs::write(&path, format!("[Partition]\n{body}"))
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    let disk = dir.join("disk.img");
    fixtures::run(
        Command::new(&context.binaries.build)
            .args(["disk", "--definitions"])
            .arg(&definitions)
            .arg("--image")
            .arg(&context.system.image)
            .arg("-o")
            .arg(&disk),
    )
    .map_err(|error| error.to_string())?;
    Ok(disk)
}

/// Host config on a FAT file system: a partition labelled `xorbang-config`, then the ESP of
/// the root's disk. The initramfs carries vfat for it (the default one does not).
pub fn hostconfig_partition(context: &Context) -> Result<(), String> {
    let initrd = fixtures::initrd_with_modules(
        &context.work,
        "initrd-vfat.img",
        &context.binaries,
        &context.kernel,
        &["vfat", "nls_cp437", "nls_ascii"],
    )
    .map_err(|error| error.to_string())?;
    let cases = [
        (
            "hostconfig-partition",
            "host-config.toml",
            "Type=linux-generic\nLabel=xorbang-config\n",
            "/dev/vda3:/host-config.toml",
        ),
        (
            "hostconfig-esp",
            "xorbang/host-config.toml",
            "Type=esp\n",
            "/dev/vda3:/xorbang/host-config.toml",
        ),
    ];
    for (check, path, partition, origin) in cases {
        let dir = context.work.join(check);
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let fat = dir.join("fat.img");
        let config = host_config(&check.replace("hostconfig", "xorbang"));
        fat_image(&fat, path, &config, &dir.join("config.toml"))?;
        let body = format!("{partition}CopyBlocks={}\n", fat.display());
        let disk = disk_with(context, &dir, &[("30-config.conf", body)])?;
        let mut vm = context.vm(
            vec![disk],
            &format!("{} xtest.scenario={check}", context.production_root()),
            crate::scenarios::SYSTEMD_TIMEOUT,
        );
        set_initrd(&mut vm.boot, initrd.clone());
        let console = context
            .boot(&vm, check, &[report_line(), pass_line(check)])
            .map_err(|error| format!("{check}: {error}"))?;
        expect_applied(&console, origin).map_err(|error| format!("{check}: {error}"))?;
    }
    Ok(())
}

/// Bad configs through fw_cfg: the error line must give the position, the report must
/// say nothing was applied. The last one boots on, and the agent checks the system.
pub fn hostconfig_invalid(context: &Context) -> Result<(), String> {
    let cases = [
        (
            "malformed",
            "version = 1\nhostname = \"unterminated\n",
            "line 2, column ",
        ),
        (
            "unknown-key",
            "version = 1\ncolour = \"blue\"\n",
            "line 2, column 1: ",
        ),
        (
            "bad-hostname",
            &*host_config("bad_host!"),
            "line 3, column 12: ",
        ),
    ];
    for (name, text, position) in cases {
        let config = write_work_file(context, &format!("host-config-{name}.toml"), text)?;
        let boots_on = name == "bad-hostname";
        let check = if boots_on { "hostconfig-invalid" } else { name };
        let mut vm = context.vm(
            vec![context.system.disk.clone()],
            &format!("{} xtest.scenario={check}", context.production_root()),
            crate::scenarios::SYSTEMD_TIMEOUT,
        );
        vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
        vm.stop_at_markers = !boots_on;
        let prefix = format!("xorbang: host config fw_cfg {FW_CFG_NAME}: {position}");
        let mut expect = vec![
            LineMatch::Between(prefix, "; booting without it".to_owned()),
            report_line(),
        ];
        if boots_on {
            expect.push(pass_line(check));
        }
        let console = context
            .boot(&vm, &format!("hostconfig-invalid-{name}"), &expect)
            .map_err(|error| format!("{name}: {error}"))?;
        let report = parse_report(&console, REPORT_PREFIX)?;
        match report.host_config {
            Some(host) if !host.applied && host.files.is_empty() && host.error.is_some() => {}
            other => return Err(format!("{name}: unexpected host config report {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_configs_are_valid_host_config() {
        xorbang_formats::host_config::parse(&host_config("xorbang-fwcfg")).expect("valid");
    }

    #[test]
    fn the_bad_configs_fail_where_the_scenario_expects() {
        let error =
            xorbang_formats::host_config::parse(&host_config("bad_host!")).expect_err("bad");
        assert!(
            error.to_string().starts_with("line 3, column 12: "),
            "{error}"
        );
        let error = xorbang_formats::host_config::parse("version = 1\ncolour = \"blue\"\n")
            .expect_err("unknown key");
        assert!(
            error.to_string().starts_with("line 2, column 1: "),
            "{error}"
        );
        let error = xorbang_formats::host_config::parse("version = 1\nhostname = \"unterminated\n")
            .expect_err("malformed");
        assert!(error.to_string().starts_with("line 2, column "), "{error}");
    }
}

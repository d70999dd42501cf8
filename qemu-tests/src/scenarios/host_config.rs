//! Host config: applied from every source as a generated /etc layer, or refused with its
//! line and column and the boot going on without it.

use crate::context::{
    parse_report, pass_line, report_line, Context, REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use std::path::{Path, PathBuf};

use xorbang_formats::boot_report::ConfigTrust;
use xorbang_init::layers::host_config_source::PARTITION_LABEL;

use crate::fixtures::boot_chain::{uki_disk_with, UkiSpec, UKI_CONSOLE};
use crate::fixtures::host_config::{
    ext4_image_with_fifo, fat_image, fat_image_with, host_config, initrd_with_config, sign,
    FW_CFG_NAME,
};
use crate::fixtures::system;
use crate::fixtures::system::{TEST_KEY_NAME, TEST_SECRET_KEY};
use crate::harness::qemu::{AfterMarkers, Console, LineMatch};

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
    let config =
        context.write_work_file("host-config-fwcfg.toml", &host_config("xorbang-fwcfg"))?;
    let mut vm = context.vm(
        vec![context.system.disk.clone()],
        &format!(
            "{} xtest.scenario=hostconfig-fwcfg",
            context.production_root()
        ),
        SYSTEMD_TIMEOUT,
    );
    vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
    let console = context.boot(
        &vm,
        "hostconfig-fwcfg",
        &[report_line(), pass_line("hostconfig-fwcfg")],
    )?;
    expect_applied(&console, &format!("fw_cfg {FW_CFG_NAME}"))
}

pub fn hostconfig_initrd(context: &Context) -> Result<(), String> {
    let initrd = initrd_with_config(
        &context.work,
        &context.initrd,
        &host_config("xorbang-initrd"),
    )
    .map_err(|error| error.to_string())?;
    let vm = context.vm_with_initrd(
        &initrd,
        vec![context.system.disk.clone()],
        &format!(
            "{} xtest.scenario=hostconfig-initrd",
            context.production_root()
        ),
        SYSTEMD_TIMEOUT,
    );
    let console = context.boot(
        &vm,
        "hostconfig-initrd",
        &[report_line(), pass_line("hostconfig-initrd")],
    )?;
    expect_applied(&console, "initramfs:/etc/xorbang/host-config.toml")
}

/// Host config on a FAT file system: a partition labelled `xorbang-config`, then the ESP of
/// the root's disk. The initramfs carries vfat for it (the default one does not).
pub fn hostconfig_partition(context: &Context) -> Result<(), String> {
    let initrd = context.vfat_initrd()?;
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
        fat_image(&fat, path, &config, &dir.join("config.toml"))
            .map_err(|error| error.to_string())?;
        let body = format!("{partition}CopyBlocks={}\n", fat.display());
        let disk = system::disk_with(
            &context.binaries.build,
            &context.system,
            &dir,
            &[("30-config.conf", body)],
        )
        .map_err(|error| error.to_string())?;
        let vm = context.vm_with_initrd(
            &initrd,
            vec![disk],
            &format!("{} xtest.scenario={check}", context.production_root()),
            SYSTEMD_TIMEOUT,
        );
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
        let config = context.write_work_file(&format!("host-config-{name}.toml"), text)?;
        let boots_on = name == "bad-hostname";
        let check = if boots_on { "hostconfig-invalid" } else { name };
        // The agent checks the system kept the image's own name, read from the image.
        let append = format!(
            "{} xtest.scenario={check} xtest.hostname={}",
            context.production_root(),
            context.system.hostname
        );
        let mut vm = context.vm(vec![context.system.disk.clone()], &append, SYSTEMD_TIMEOUT);
        vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
        if !boots_on {
            vm.after_markers = AfterMarkers::Stop;
        }
        let prefix = format!("xorbang: host config fw_cfg {FW_CFG_NAME}: {position}");
        // The init's next line after the report: by then every record of a report the
        // init had to split is on the console, even for a run stopped at its markers.
        let mut expect = vec![
            LineMatch::Between(prefix, "; trying the next source".to_owned()),
            report_line(),
            LineMatch::Exact("xorbang: starting /sbin/init".to_owned()),
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

/// The agent's check for a boot that refused its host config: the image's own hostname, no
/// network file, no host-config layer.
fn refused_check(context: &Context, extra: &str) -> String {
    format!(
        "{} {extra} xtest.scenario=hostconfig-refused xtest.hostname={}",
        context.production_root(),
        context.system.hostname
    )
}

/// The report says the config from `origin` was refused, and nothing of it was applied.
fn expect_refused(console: &Console, origin: &str) -> Result<(), String> {
    let report = parse_report(console, REPORT_PREFIX)?;
    match report.host_config {
        Some(host) if host.origin == origin && !host.applied && host.files.is_empty() => Ok(()),
        other => Err(format!("unexpected host config report {other:?}")),
    }
}

/// The report says the config from `origin` was applied at `trust`, signed by `key`.
fn expect_trusted(
    console: &Console,
    origin: &str,
    trust: ConfigTrust,
    key: Option<&str>,
) -> Result<(), String> {
    expect_applied(console, origin)?;
    let report = parse_report(console, REPORT_PREFIX)?;
    let host = report.host_config.ok_or("the report has no host_config")?;
    if host.trust != Some(trust) || host.signed_by.as_deref() != key {
        return Err(format!(
            "expected {trust} by {key:?}, the report says {host:?}"
        ));
    }
    Ok(())
}

/// Boots `disk` with `initrd` until the `expect` lines; errors name the log.
fn boot_case(
    context: &Context,
    initrd: &Path,
    disk: PathBuf,
    append: &str,
    log: &str,
    expect: &[LineMatch],
) -> Result<Console, String> {
    let vm = context.vm_with_initrd(initrd, vec![disk], append, SYSTEMD_TIMEOUT);
    context
        .boot(&vm, log, expect)
        .map_err(|error| format!("{log}: {error}"))
}

/// The system disk with one more partition, labelled `xorbang-config`, holding `image`: it
/// becomes /dev/vda3, next to the verified root.
fn disk_with_config(context: &Context, dir: &Path, image: &Path) -> Result<PathBuf, String> {
    let body = format!(
        "Type=linux-generic\nLabel={PARTITION_LABEL}\nCopyBlocks={}\n",
        image.display()
    );
    system::disk_with(
        &context.binaries.build,
        &context.system,
        dir,
        &[("30-config.conf", body)],
    )
    .map_err(|error| error.to_string())
}

fn scenario_dir(context: &Context, name: &str) -> Result<PathBuf, String> {
    let dir = context.work.join(name);
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    Ok(dir)
}

/// A config that uses the whole schema: a file under /etc and root's SSH key besides the
/// hostname and network.
fn full_config(hostname: &str) -> String {
    format!(
        "{}\n[users.root]\nssh_authorized_keys = [\"{SSH_KEY}\"]\n\n[[files]]\npath = \"/etc/xorbang-{hostname}\"\ncontent = \"from {hostname}\\n\"\n",
        host_config(hostname)
    )
}

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcUIS47SFVib3yJlqOwvcrX5PH+CxglMj9MWWZzgI2a test";
const CONFIG_ORIGIN: &str = "/dev/vda3:/host-config.toml";

/// A FAT config partition anyone could write: in production a config there that uses more
/// than hostname, timezone and network is refused as a whole, naming the first such key;
/// one that sets only those is applied.
pub fn hostconfig_local_restricted(context: &Context) -> Result<(), String> {
    let initrd = context.vfat_initrd()?;
    let cases = [
        ("refused", full_config("xorbang-local")),
        ("applied", host_config("xorbang-local")),
    ];
    for (case, text) in cases {
        let dir = scenario_dir(context, &format!("hostconfig-local-{case}"))?;
        let config = dir.join("host-config.toml");
        std::fs::write(&config, &text).map_err(|error| error.to_string())?;
        let fat = dir.join("fat.img");
        fat_image_with(&fat, &[("host-config.toml", &config)]).map_err(|e| e.to_string())?;
        let disk = disk_with_config(context, &dir, &fat)?;
        let log = format!("hostconfig-local-{case}");
        if case == "refused" {
            let expect = [
                LineMatch::Between(
                    format!("xorbang: host config {CONFIG_ORIGIN}: line "),
                    ": \"users\" is not allowed in an unsigned config from local storage (only \
                     hostname, timezone, network); sign it with a key the image pins; trying the \
                     next source"
                        .to_owned(),
                ),
                report_line(),
                pass_line("hostconfig-refused"),
            ];
            let append = refused_check(context, "");
            let console = boot_case(context, &initrd, disk, &append, &log, &expect)?;
            expect_refused(&console, CONFIG_ORIGIN).map_err(|e| format!("{case}: {e}"))?;
        } else {
            let append = format!(
                "{} xtest.scenario=hostconfig-local",
                context.production_root()
            );
            let expect = [report_line(), pass_line("hostconfig-local")];
            let console = boot_case(context, &initrd, disk, &append, &log, &expect)?;
            expect_trusted(&console, CONFIG_ORIGIN, ConfigTrust::Local, None)
                .map_err(|e| format!("{case}: {e}"))?;
        }
    }
    Ok(())
}

/// The same full config on the same FAT partition, with a detached signature by the key the
/// image pins: applied as `signed`. With one byte of the config changed after signing:
/// refused naming the key.
pub fn hostconfig_signed(context: &Context) -> Result<(), String> {
    let initrd = context.vfat_initrd()?;
    for case in ["valid", "flipped"] {
        let dir = scenario_dir(context, &format!("hostconfig-signed-{case}"))?;
        let config = dir.join("host-config.toml");
        let text = full_config("xorbang-signed");
        std::fs::write(&config, &text).map_err(|error| error.to_string())?;
        let signature = sign(&config, TEST_SECRET_KEY).map_err(|error| error.to_string())?;
        if case == "flipped" {
            let flipped = text.replacen("xorbang-signed", "xorbang-signee", 1);
            std::fs::write(&config, flipped).map_err(|error| error.to_string())?;
        }
        let fat = dir.join("fat.img");
        fat_image_with(
            &fat,
            &[
                ("host-config.toml", &config),
                ("host-config.toml.minisig", &signature),
            ],
        )
        .map_err(|error| error.to_string())?;
        let disk = disk_with_config(context, &dir, &fat)?;
        let log = format!("hostconfig-signed-{case}");
        if case == "valid" {
            let append = format!(
                "{} xtest.scenario=hostconfig-signed",
                context.production_root()
            );
            let expect = [report_line(), pass_line("hostconfig-signed")];
            let console = boot_case(context, &initrd, disk, &append, &log, &expect)?;
            expect_trusted(
                &console,
                CONFIG_ORIGIN,
                ConfigTrust::Signed,
                Some(TEST_KEY_NAME),
            )
            .map_err(|e| format!("{case}: {e}"))?;
        } else {
            let expect = [
                LineMatch::Exact(format!(
                    "xorbang: host config {CONFIG_ORIGIN}: signature: the signature by key \
                     {TEST_KEY_NAME} does not match the file; trying the next source"
                )),
                report_line(),
                pass_line("hostconfig-refused"),
            ];
            let append = refused_check(context, "");
            let console = boot_case(context, &initrd, disk, &append, &log, &expect)?;
            expect_refused(&console, CONFIG_ORIGIN).map_err(|e| format!("{case}: {e}"))?;
        }
    }
    Ok(())
}

/// The config file is a FIFO on an ext4 config partition: opening it must not wait for a
/// writer. One line names it, and the boot goes on without host config.
pub fn hostconfig_fifo(context: &Context) -> Result<(), String> {
    let dir = scenario_dir(context, "hostconfig-fifo")?;
    let image = dir.join("config.img");
    ext4_image_with_fifo(&image, "host-config.toml", &dir.join("staging"))
        .map_err(|error| error.to_string())?;
    let disk = disk_with_config(context, &dir, &image)?;
    let initrd = context.ext4_initrd()?;
    let vm = context.vm_with_initrd(
        &initrd,
        vec![disk],
        &refused_check(context, ""),
        SYSTEMD_TIMEOUT,
    );
    let expect = [
        LineMatch::Exact(format!(
            "xorbang: host config {CONFIG_ORIGIN}: /run/xorbang/config-source/host-config.toml: \
             is a FIFO, not a regular file; refused on untrusted storage; trying the next source"
        )),
        report_line(),
        pass_line("hostconfig-refused"),
    ];
    context.boot(&vm, "hostconfig-fifo", &expect).map(drop)
}

/// A config with a file under /etc, through fw_cfg: in the booted system the layer it made is
/// a read-only mount that cannot be written, and /etc still shows what the config said.
pub fn hostconfig_layer_immutable(context: &Context) -> Result<(), String> {
    let check = "hostconfig-layer-immutable";
    let config = context.write_work_file(
        "host-config-immutable.toml",
        &full_config("xorbang-immutable"),
    )?;
    let append = format!("{} xtest.scenario={check}", context.production_root());
    let mut vm = context.vm(vec![context.system.disk.clone()], &append, SYSTEMD_TIMEOUT);
    vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
    let console = context.boot(&vm, check, &[report_line(), pass_line(check)])?;
    expect_trusted(
        &console,
        &format!("fw_cfg {FW_CFG_NAME}"),
        ConfigTrust::Platform,
        None,
    )
}

/// A config that asks for a sysext nobody has: the request is part of the config, so the
/// whole config is refused and production boots on without it (only a command-line
/// selection is fatal).
pub fn hostconfig_extension_missing(context: &Context) -> Result<(), String> {
    let text = format!(
        "{}\n[extensions]\nsysext = [\"absent\"]\n",
        host_config("xorbang-absent")
    );
    let config = context.write_work_file("host-config-extension-missing.toml", &text)?;
    let mut vm = context.vm(
        vec![context.system.disk.clone()],
        &refused_check(context, ""),
        SYSTEMD_TIMEOUT,
    );
    vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config));
    let origin = format!("fw_cfg {FW_CFG_NAME}");
    let expect = [
        LineMatch::Between(
            format!("xorbang: host config {origin}: sysext absent: not found in "),
            "; booting without it".to_owned(),
        ),
        report_line(),
        pass_line("hostconfig-refused"),
    ];
    let console = context.boot(&vm, "hostconfig-extension-missing", &expect)?;
    expect_refused(&console, &origin)
}

/// A USB stick carrying a copy of the root's partitions (their PARTUUIDs follow from the root
/// hash, so anyone can make one) and a config partition, attached before the installed disk.
/// The firmware's `LoaderDevicePartUUID` names the ESP the UKI came from: the root is taken
/// from that disk, the stick's copy is passed over by name, and the stick's config (which a
/// `local` source may set) is never read. Without that variable the two roots are refused
/// as ambiguous (the init's unit tests).
pub fn hostconfig_usb_clone(context: &Context) -> Result<(), String> {
    let dir = scenario_dir(context, "hostconfig-usb-clone")?;
    let config = dir.join("host-config.toml");
    std::fs::write(&config, host_config("xorbang-stick")).map_err(|error| error.to_string())?;
    let fat = dir.join("fat.img");
    fat_image_with(&fat, &[("host-config.toml", &config)]).map_err(|e| e.to_string())?;
    let stick = disk_with_config(context, &dir, &fat)?;
    let initrd = context.vfat_initrd()?;
    let cmdline = format!("{UKI_CONSOLE} {}", refused_check(context, ""));
    let uki = UkiSpec {
        name: "hostconfig-usb-clone",
        kernel: &context.kernel.vmlinuz,
        initrd: &initrd,
        cmdline: &cmdline,
        extras: &[],
    };
    let installed = uki_disk_with(&dir, &context.binaries, &context.system, &uki)
        .map_err(|error| error.to_string())?;
    let (vm, _) = context.firmware_vm("hostconfig-usb-clone", false, vec![stick, installed])?;
    let expect = [
        LineMatch::Between(
            "xorbang: verity data device PARTUUID=".to_owned(),
            ": /dev/vda1 also matches, on a disk the firmware did not boot from; passed over"
                .to_owned(),
        ),
        report_line(),
        pass_line("hostconfig-refused"),
    ];
    let console = context.boot(&vm, "hostconfig-usb-clone", &expect)?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    let data = report.verity.map(|verity| verity.data_device);
    if !data
        .as_deref()
        .is_some_and(|device| device.starts_with("/dev/vdb"))
    {
        return Err(format!(
            "the root came from {data:?}, not the installed disk /dev/vdb"
        ));
    }
    match report.host_config {
        None => Ok(()),
        Some(host) => Err(format!("a host config was considered: {host:?}")),
    }
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

//! Host config: applied from every source as a generated /etc layer, or refused with its
//! line and column and the boot going on without it.

use crate::context::{
    parse_report, pass_line, report_line, Context, REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use crate::fixtures::host_config::{fat_image, host_config, initrd_with_config, FW_CFG_NAME};
use crate::fixtures::{binaries, system};
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
    let initrd = binaries::initrd_with_modules(
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
        let mut expect = vec![
            LineMatch::Between(prefix, "; trying the next source".to_owned()),
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

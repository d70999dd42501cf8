//! The UEFI boot chain: OVMF boots the UKI from the ESP, with and without Secure Boot, and
//! refuses what is not signed.

use crate::context::{pass_line, wrong_hash, Context, INITRAMFS_TIMEOUT};
use crate::fixtures::boot_chain::uki_cmdline;
use std::time::Duration;

use crate::harness::qemu::{AfterMarkers, Boot, LineMatch};

pub fn uki_boot(context: &Context) -> Result<(), String> {
    context.boot_uki_disk(&context.chain.unsigned_disk)?;
    Ok(())
}
pub fn secureboot_signed(context: &Context) -> Result<(), String> {
    let disks = vec![context.chain.signed_disk.clone()];
    let (vm, _) = context.firmware_vm("secureboot-signed", true, disks)?;
    let expect = [
        LineMatch::Exact("secureboot: Secure boot enabled".to_owned()),
        pass_line("secureboot-signed"),
    ];
    context.boot(&vm, "secureboot-signed", &expect)?;
    Ok(())
}

pub fn secureboot_unsigned(context: &Context) -> Result<(), String> {
    let cases = [
        ("secureboot-unsigned", &context.chain.unsigned_disk),
        ("secureboot-tampered", &context.chain.tampered_disk),
    ];
    for (name, disk) in cases {
        let (mut vm, _) = context.firmware_vm(name, true, vec![disk.clone()])?;
        vm.after_markers = AfterMarkers::Watch(AFTER_DENIAL);
        vm.timeout = INITRAMFS_TIMEOUT;
        let denied = LineMatch::Between(
            "BdsDxe: failed to load".to_owned(),
            "Access Denied".to_owned(),
        );
        let console = context
            .boot(&vm, name, &[denied])
            .map_err(|error| format!("{name}: {error}"))?;
        if let Some(line) = kernel_line(&console.lines) {
            return Err(format!("{name}: the kernel ran anyway: {line:?}"));
        }
    }
    Ok(())
}

/// How long the console is watched after the firmware's denial: a kernel the firmware
/// started anyway would print its banner within seconds, even under TCG.
const AFTER_DENIAL: Duration = Duration::from_secs(60);

/// The first line that only a running kernel (or our init) prints.
fn kernel_line(lines: &[String]) -> Option<&str> {
    const KERNEL_LINES: &[&str] = &[
        "Linux version",
        "EFI stub:",
        "Kernel command line:",
        "xorbang:",
    ];
    lines
        .iter()
        .map(String::as_str)
        .find(|line| KERNEL_LINES.iter().any(|start| line.starts_with(start)))
}

pub fn secureboot_cmdline_locked(context: &Context) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_line_after_the_denial_is_found() {
        let lines: Vec<String> = [
            "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0): Access Denied",
            "BdsDxe: starting Boot0002",
            "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path",
            "Linux version 6.1.0-57-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            kernel_line(&lines),
            Some("EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path")
        );
        assert_eq!(kernel_line(&lines[..2]), None);
    }
}

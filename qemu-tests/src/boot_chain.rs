//! Fixtures of the UEFI boot chain: UKIs built by `xorbang-build uki` from Debian's systemd
//! stub, kernel and our initramfs, signed with Debian's snakeoil key for OVMF's snakeoil
//! Secure Boot variables, and full GPT disks laid out from the example repart definitions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{run, Binaries, FixtureError, Kernel, SystemImage};
use crate::qemu::Firmware;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_SECURE_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd";
pub const OVMF_SECURE_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// The key whose certificate OVMF's snakeoil variables trust; encrypted with "snakeoil".
const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

#[derive(Debug, Clone)]
pub struct BootChain {
    /// Unsigned UKI whose command line names the `uki-boot` check, alone and on a disk with
    /// an ESP.
    pub unsigned_uki: PathBuf,
    pub unsigned_disk: PathBuf,
    /// Signed UKI (check `secureboot-signed`), alone and on a disk with an ESP.
    pub signed_uki: PathBuf,
    pub signed_disk: PathBuf,
    /// The signed UKI with one byte of its command line changed, on a disk.
    pub tampered_disk: PathBuf,
}

/// The command line baked into a UKI: the production root and the agent's check.
pub fn uki_cmdline(root_hash: &str, check: &str) -> String {
    format!("console=ttyS0 printk.time=0 panic=-1 roothash={root_hash} xtest.scenario={check}")
}

pub fn boot_chain(
    work: &Path,
    binaries: &Binaries,
    kernel: &Kernel,
    initrd: &Path,
    system: &SystemImage,
) -> Result<BootChain, FixtureError> {
    let key = decrypted_snakeoil_key(work)?;
    let unsigned = work.join("uki-boot.efi");
    build_uki(
        binaries,
        &kernel.vmlinuz,
        initrd,
        &uki_cmdline(&system.root_hash, "uki-boot"),
        None,
        &unsigned,
    )?;
    let signed = work.join("secureboot.efi");
    let signed_cmdline = uki_cmdline(&system.root_hash, "secureboot-signed");
    build_uki(
        binaries,
        &kernel.vmlinuz,
        initrd,
        &signed_cmdline,
        Some(&key),
        &signed,
    )?;
    let tampered = work.join("secureboot-tampered.efi");
    copy_with_changed_cmdline(&signed, &tampered, &signed_cmdline)?;
    Ok(BootChain {
        unsigned_disk: disk_with_esp(binaries, system, &unsigned, &[])?,
        signed_disk: disk_with_esp(binaries, system, &signed, &[])?,
        tampered_disk: disk_with_esp(binaries, system, &tampered, &[])?,
        signed_uki: signed,
        unsigned_uki: unsigned,
    })
}

/// A machine disk whose UKI holds `kernel` and `initrd` (the `uki-boot` check), as `name`.
pub fn uki_disk(
    work: &Path,
    name: &str,
    binaries: &Binaries,
    kernel: &Path,
    initrd: &Path,
    system: &SystemImage,
) -> Result<PathBuf, FixtureError> {
    let cmdline = uki_cmdline(&system.root_hash, "uki-boot");
    let uki = UkiSpec {
        name,
        kernel,
        initrd,
        cmdline: &cmdline,
        extras: &[],
    };
    uki_disk_with(work, binaries, system, &uki)
}

/// What goes into a test UKI and the ESP beside it.
pub struct UkiSpec<'a> {
    pub name: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    /// Files for the UKI's `.extra.d` directories (systemd-stub's sysexts and credentials).
    pub extras: &'a [PathBuf],
}

/// A machine disk with the UKI `spec` describes on its ESP.
pub fn uki_disk_with(
    work: &Path,
    binaries: &Binaries,
    system: &SystemImage,
    spec: &UkiSpec,
) -> Result<PathBuf, FixtureError> {
    let uki = work.join(format!("{}.efi", spec.name));
    build_uki(binaries, spec.kernel, spec.initrd, spec.cmdline, None, &uki)?;
    disk_with_esp(binaries, system, &uki, spec.extras)
}

/// A firmware setup with a fresh copy of its variable store in `work`.
pub fn firmware(work: &Path, name: &str, secure_boot: bool) -> Result<Firmware, FixtureError> {
    let (code, template) = if secure_boot {
        (OVMF_SECURE_CODE, OVMF_SECURE_VARS)
    } else {
        (OVMF_CODE, OVMF_VARS)
    };
    let vars = work.join(format!("{name}.vars.fd"));
    std::fs::copy(template, &vars).map_err(|source| FixtureError::Io {
        path: vars.clone(),
        source,
    })?;
    Ok(Firmware {
        code: PathBuf::from(code),
        vars,
        secure_boot,
        loader_image: None,
    })
}

/// sbsign cannot be given a password, so the key is decrypted into the work directory.
fn decrypted_snakeoil_key(work: &Path) -> Result<PathBuf, FixtureError> {
    let key = work.join("snakeoil.key");
    run(Command::new("openssl")
        .args([
            "pkey",
            "-passin",
            "pass:snakeoil",
            "-in",
            SNAKEOIL_KEY,
            "-out",
        ])
        .arg(&key))?;
    Ok(key)
}

fn build_uki(
    binaries: &Binaries,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    key: Option<&Path>,
    out: &Path,
) -> Result<(), FixtureError> {
    let mut command = Command::new(&binaries.build);
    command
        .args(["uki", "--linux"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", cmdline])
        .arg("-o")
        .arg(out);
    if let Some(key) = key {
        command
            .arg("--sign-key")
            .arg(key)
            .args(["--sign-cert", SNAKEOIL_CERT]);
    }
    run(&mut command).map(drop)
}

/// A copy of a signed UKI whose embedded command line says `xtest.scenario=secureboot-signeD`:
/// one byte, which the signature covers.
fn copy_with_changed_cmdline(signed: &Path, out: &Path, cmdline: &str) -> Result<(), FixtureError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FixtureError::Io { path, source }
    };
    let mut bytes = std::fs::read(signed).map_err(io(signed))?;
    let at = bytes
        .windows(cmdline.len())
        .position(|window| window == cmdline.as_bytes())
        .ok_or_else(|| FixtureError::Other(format!("no command line in {}", signed.display())))?;
    let last = at + cmdline.len() - 1;
    bytes[last] = bytes[last].to_ascii_uppercase();
    std::fs::write(out, bytes).map_err(io(out))
}

fn disk_with_esp(
    binaries: &Binaries,
    system: &SystemImage,
    uki: &Path,
    extras: &[PathBuf],
) -> Result<PathBuf, FixtureError> {
    let disk = uki.with_extension("disk.img");
    let mut command = Command::new(&binaries.build);
    command
        .args(["disk", "--image"])
        .arg(&system.image)
        .arg("--uki")
        .arg(uki);
    for extra in extras {
        command.arg("--uki-extra").arg(extra);
    }
    run(command.arg("-o").arg(&disk))?;
    Ok(disk)
}

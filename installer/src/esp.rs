//! The EFI System Partition, made in the scratch directory as the build makes a disk's:
//! systemd-boot as `EFI/BOOT/BOOTX64.EFI` with `loader/loader.conf`, the UKI as the boot
//! counted entry `EFI/Linux/<IMAGE_ID>_<IMAGE_VERSION>+3.efi` (the build tool's writer), and
//! the host config at `xorbang/host-config.toml` with its signature.

use std::path::{Path, PathBuf};
use std::process::Command;

use xorbang_build::boot::esp::{self, EspError};
use xorbang_build::os::steps::FIRST_BOOT_TRIES;
use xorbang_build::tool::{self, ToolError};
use xorbang_formats::bundle::bundle_dir;
use xorbang_formats::signature::SIGNATURE_SUFFIX;

use crate::host::{HostConfig, ESP_FILE};

/// systemd-boot as Debian's systemd-boot-efi installs it.
pub const BOOT_LOADER: &str = xorbang_build::boot::uki::SYSTEMD_BOOT;
const ESP_IMAGE: &str = "esp.img";

#[derive(Debug, thiserror::Error)]
pub enum MakeEspError {
    #[error("cannot make the EFI System Partition")]
    Esp(#[from] EspError),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot put the host config on the EFI System Partition")]
    HostConfig(#[from] ToolError),
}

/// What the ESP holds, for the plan.
#[derive(Debug, Clone)]
pub struct MadeEsp {
    pub image: PathBuf,
    /// `EFI/Linux/<name>.efi`.
    pub entry: String,
    pub host_config: bool,
}

/// The entry's file name without `.efi`: `<IMAGE_ID>_<IMAGE_VERSION>+<tries>`, as
/// `xorbang-build os` names it, so systemd-boot counts the first boots.
pub fn entry_name(image_id: &str, version: &str) -> String {
    format!("{}+{FIRST_BOOT_TRIES}", bundle_dir(image_id, version))
}

/// Makes the ESP image in `scratch` from the UKI at `uki`.
pub fn make(
    scratch: &Path,
    uki: &Path,
    entry: &str,
    boot_loader: &Path,
    host_config: Option<&HostConfig>,
) -> Result<MadeEsp, MakeEspError> {
    let image = scratch.join(ESP_IMAGE);
    esp::write_esp(uki, entry, Some(boot_loader), &[], &image)?;
    if let Some(config) = host_config {
        add_host_config(scratch, &image, config)?;
    }
    Ok(MadeEsp {
        image,
        entry: format!("EFI/Linux/{entry}.efi"),
        host_config: host_config.is_some(),
    })
}

fn add_host_config(scratch: &Path, image: &Path, config: &HostConfig) -> Result<(), MakeEspError> {
    let (dir, _) = ESP_FILE.rsplit_once('/').unwrap_or(("", ESP_FILE));
    mtools(
        Command::new("mmd")
            .arg("-i")
            .arg(image)
            .arg(format!("::/{dir}")),
    )?;
    let mut files = vec![(config.text.as_str(), ESP_FILE.to_owned())];
    if let Some(signature) = &config.signature {
        files.push((signature.as_str(), format!("{ESP_FILE}{SIGNATURE_SUFFIX}")));
    }
    for (text, target) in files {
        let staged = scratch.join(target.replace('/', "_"));
        std::fs::write(&staged, text)
            .map_err(|error| MakeEspError::Write(staged.clone(), error))?;
        mtools(
            Command::new("mcopy")
                .arg("-i")
                .arg(image)
                .arg(&staged)
                .arg(format!("::/{target}")),
        )?;
    }
    Ok(())
}

/// mtools stamps files with the clock unless SOURCE_DATE_EPOCH says otherwise; pinned as
/// the build's ESP writer pins it.
fn mtools(command: &mut Command) -> Result<(), ToolError> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        command.env("SOURCE_DATE_EPOCH", "0");
    }
    tool::run(command, "mtools")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtype(image: &Path, path: &str) -> Vec<u8> {
        let output = Command::new("mtype")
            .arg("-i")
            .arg(image)
            .arg(path)
            .output()
            .expect("mtype runs");
        assert!(output.status.success(), "{path}");
        output.stdout
    }

    #[test]
    fn the_entry_is_boot_counted() {
        assert_eq!(entry_name("xorbang-demo", "7"), "xorbang-demo_7+3");
    }

    #[test]
    fn the_esp_holds_loader_entry_and_host_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uki = dir.path().join("uki.efi");
        let loader = dir.path().join("systemd-bootx64.efi");
        std::fs::write(&uki, b"uki").expect("uki");
        std::fs::write(&loader, b"loader").expect("loader");
        let config = HostConfig {
            origin: "host.toml".into(),
            text: "version = 1\n".into(),
            signature: Some("untrusted comment: sig\nxyz\n".into()),
        };
        let made = make(dir.path(), &uki, "os_1+3", &loader, Some(&config)).expect("made");
        assert_eq!(made.entry, "EFI/Linux/os_1+3.efi");
        assert_eq!(mtype(&made.image, "::/EFI/Linux/os_1+3.efi"), b"uki");
        assert_eq!(mtype(&made.image, "::/EFI/BOOT/BOOTX64.EFI"), b"loader");
        assert_eq!(mtype(&made.image, "::/loader/loader.conf"), b"timeout 0\n");
        assert_eq!(
            mtype(&made.image, "::/xorbang/host-config.toml"),
            b"version = 1\n"
        );
        assert_eq!(
            mtype(&made.image, "::/xorbang/host-config.toml.minisig"),
            b"untrusted comment: sig\nxyz\n"
        );
    }
}

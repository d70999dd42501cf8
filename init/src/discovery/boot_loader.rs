//! Which ESP the firmware booted from: `LoaderDevicePartUUID`, which systemd-boot or the
//! systemd stub sets (Boot Loader Interface). When several disks carry the root's partitions
//! (a clone on a USB stick next to the installed disk), the root on this ESP's disk is the
//! one taken, so the stick's siblings (config partition, ESP, /var) are never looked at.
//!
//! efivarfs is mounted read-only just to read the variable and unmounted again: systemd
//! mounts it itself, writable, for `systemd-bless-boot`.

use std::path::Path;

use crate::handoff::mounts::{self, Mount, MountOp};
use crate::paths::Paths;
use crate::untrusted;
use xorbang_formats::efi_variable::{
    LoaderDevicePartUuid, LOADER_DEVICE_PART_UUID, MAX_LOADER_DEVICE_PART_UUID_BYTES,
};
use xorbang_formats::error_chain::error_chain;

/// The ESP the boot loader came from; `None` on a machine not booted through UEFI, or booted
/// by a loader that does not say (each reason but the first is logged).
pub fn loader_partition(paths: &Paths) -> Option<LoaderDevicePartUuid> {
    let efi = paths.sys().join("firmware/efi");
    if !efi.exists() {
        return None;
    }
    let efivars = efi.join("efivars");
    let mount = Mount::untrusted("efivarfs", efivars.clone(), "efivarfs");
    if let Err(error) = mounts::execute(&[MountOp::Mount(mount)]) {
        log::warn!(
            "cannot read the firmware's boot partition: {}",
            error_chain(&error)
        );
        return None;
    }
    let found = read_variable(&efivars);
    if let Err(errno) = rustix::mount::unmount(&efivars, rustix::mount::UnmountFlags::empty()) {
        log::warn!("cannot unmount {}: {errno}", efivars.display());
    }
    found
}

fn read_variable(efivars: &Path) -> Option<LoaderDevicePartUuid> {
    let name = Path::new(LOADER_DEVICE_PART_UUID);
    let bytes = match untrusted::read_beneath(efivars, name, MAX_LOADER_DEVICE_PART_UUID_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            log::info!("the boot loader did not set LoaderDevicePartUUID");
            return None;
        }
        Err(error) => {
            log::warn!("{}", error_chain(&error));
            return None;
        }
    };
    match LoaderDevicePartUuid::parse(&bytes) {
        Ok(uuid) => {
            log::info!("the firmware booted from the ESP PARTUUID={uuid}");
            Some(uuid)
        }
        Err(error) => {
            log::warn!(
                "{}: {}; the boot disk is not known",
                efivars.join(name).display(),
                error_chain(&error)
            );
            None
        }
    }
}

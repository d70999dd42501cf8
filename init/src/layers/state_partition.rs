//! The state partition: the Discoverable Partitions /var partition on the root's disk,
//! which may carry extension images in its `lib/extensions/` and `lib/confexts/` (the
//! booted system's /var/lib/extensions). It is mounted read-only, as untrusted storage, only
//! while the extensions are found and copied into memory, and unmounted before the boot goes
//! on, so the booted system can mount it read-write as /var. For that it is optional: a
//! missing or unreadable one is logged and the boot goes on.
//!
//! Persistent dev mode (`xorbang.dev=persist`) needs it: there it is mounted read-write for
//! the whole boot (the overlays' uppers live on it), extensions are read from that same mount,
//! and every way it can be missing is an error.

use std::path::{Path, PathBuf};

use crate::discovery::block_devices::{self, BlockError};
use crate::handoff::mounts::{self, Mount, MountError, MountOp};
use crate::kernel::module_loader::{KmodError, ModuleLoader};
use crate::paths::Paths;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::gpt;

/// A mounted state partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePartition {
    pub device: PathBuf,
    pub mount: PathBuf,
}

/// Why persistent dev mode has no state partition to write to.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "no state partition (a /var partition of the Discoverable Partitions Specification) \
         on the disk of {}", root_device.display()
    )]
    Missing { root_device: PathBuf },
    #[error("looking for the state partition on the disk of {}", root_device.display())]
    Lookup {
        root_device: PathBuf,
        source: BlockError,
    },
    #[error("state partition {} holds no file system; format it (mkfs.ext4) first", device.display())]
    Unformatted { device: PathBuf },
    #[error("cannot read the state partition {}", device.display())]
    Probe { device: PathBuf, source: BlockError },
    #[error("state partition {}", device.display())]
    Module { device: PathBuf, source: KmodError },
    #[error("state partition {}", device.display())]
    Mount { device: PathBuf, source: MountError },
    #[error("state partition {} was mounted read-only (a read-only device, or a file system that needs repair)", device.display())]
    ReadOnly { device: PathBuf },
}

/// Mounts the /var partition next to `root_device` read-write under /run/xorbang/state
/// (`nosuid,nodev`: what runs from it runs through the overlay, whose own mount decides).
pub fn mount_read_write(
    paths: &Paths,
    root_device: &Path,
    modules: &mut ModuleLoader,
) -> Result<StatePartition, StateError> {
    let lookup = |source| StateError::Lookup {
        root_device: root_device.to_owned(),
        source,
    };
    let device = block_devices::siblings(root_device, &paths.sys_class_block(), &paths.dev())
        .and_then(|siblings| siblings.of_type(gpt::VAR))
        .map_err(lookup)?
        .ok_or_else(|| StateError::Missing {
            root_device: root_device.to_owned(),
        })?;
    let fstype = match block_devices::probe_device(&device) {
        Ok(Some(info)) => info.kind.to_string(),
        Ok(None) => return Err(StateError::Unformatted { device }),
        Err(source) => return Err(StateError::Probe { device, source }),
    };
    if let Err(source) = modules.ensure(&fstype) {
        return Err(StateError::Module { device, source });
    }
    let mount = paths.xorbang_run().join("state");
    let writable = Mount::writable_storage(&device.to_string_lossy(), mount.clone(), &fstype);
    if let Err(source) = mounts::execute(&[MountOp::Mkdir(mount.clone()), MountOp::Mount(writable)])
    {
        return Err(StateError::Mount { device, source });
    }
    // A file system with errors can come up read-only even when asked for read-write.
    let read_only = rustix::fs::statvfs(&mount)
        .map(|stat| stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
        .unwrap_or(true);
    if read_only {
        return Err(StateError::ReadOnly { device });
    }
    log::info!(
        "state partition {} ({fstype}) mounted read-write at {}",
        device.display(),
        mount.display()
    );
    Ok(StatePartition { device, mount })
}

/// Mounts the /var partition next to `root_device` read-only under /run/xorbang/state, if
/// there is exactly one and it holds a file system; says why not otherwise.
pub fn mount_read_only(
    paths: &Paths,
    root_device: &Path,
    modules: &mut ModuleLoader,
) -> Option<StatePartition> {
    let device = find(paths, root_device)?;
    let fstype = match block_devices::probe_device(&device) {
        Ok(Some(info)) => info.kind.to_string(),
        Ok(None) => {
            log::info!(
                "state partition {} holds no file system yet; no extensions from it",
                device.display()
            );
            return None;
        }
        Err(error) => {
            log::warn!(
                "state partition: {}; no extensions from it",
                error_chain(&error)
            );
            return None;
        }
    };
    if let Err(error) = modules.ensure(&fstype) {
        log::warn!(
            "state partition {}: {}",
            device.display(),
            error_chain(&error)
        );
        return None;
    }
    let mount = paths.xorbang_run().join("state");
    let read_only = Mount::untrusted(&device.to_string_lossy(), mount.clone(), &fstype);
    match mounts::execute(&[MountOp::Mkdir(mount.clone()), MountOp::Mount(read_only)]) {
        Ok(()) => {
            log::info!(
                "state partition {} ({fstype}) mounted read-only at {} to look for extensions",
                device.display(),
                mount.display()
            );
            Some(StatePartition { device, mount })
        }
        Err(error) => {
            log::warn!(
                "state partition: {}; no extensions from it",
                error_chain(&error)
            );
            None
        }
    }
}

/// The /var partition's node, if the root's disk has exactly one.
fn find(paths: &Paths, root_device: &Path) -> Option<PathBuf> {
    let found = block_devices::siblings(root_device, &paths.sys_class_block(), &paths.dev())
        .and_then(|siblings| siblings.of_type(gpt::VAR));
    found.unwrap_or_else(|error| {
        log::warn!(
            "state partition: {}; no extensions from it",
            error_chain(&error)
        );
        None
    })
}

/// Unmounts the state partition (what was merged from it is a copy in memory), so the booted
/// system can mount it read-write as /var.
pub fn release(state: &StatePartition) {
    if let Err(errno) = rustix::mount::unmount(&state.mount, rustix::mount::UnmountFlags::empty()) {
        log::warn!("cannot unmount {}: {errno}", state.mount.display());
    }
}

//! The state partition: the Discoverable Partitions /var partition on the root's disk,
//! which may carry extension images in its `lib/extensions/` and `lib/confexts/` (the
//! booted system's /var/lib/extensions). It is mounted read-only, as untrusted storage, only
//! while the extensions are found and copied into memory, and unmounted before the boot goes
//! on, so the booted system can mount it read-write as /var. It is optional: nothing here
//! fails the boot.

use std::path::{Path, PathBuf};

use crate::discovery::block_devices;
use crate::handoff::mounts::{self, Mount, MountOp};
use crate::kernel::module_loader::ModuleLoader;
use crate::paths::Paths;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::gpt;

/// A mounted state partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePartition {
    pub device: PathBuf,
    pub mount: PathBuf,
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

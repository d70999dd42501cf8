//! Loop devices for root images that are files (a PXE-served initramfs carries its root
//! image inside itself) and for extension images: attach read-only, no udev, no losetup.
//! Every device is set to clear itself (`LO_FLAGS_AUTOCLEAR`) once nothing holds it: the
//! caller keeps the returned [`AttachedLoop`] until the mapping or mount that uses the
//! device exists, so a refused image leaves no loop device behind.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// Another process may take the free device between GET_FREE and CONFIGURE; the init is
/// alone, but the retry costs nothing.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free loop device")]
    GetFree(#[source] std::io::Error),
    #[error("cannot attach {file} to {device}")]
    Configure {
        file: PathBuf,
        device: PathBuf,
        source: std::io::Error,
    },
}

/// A byte range of a file: a partition of an image file, for instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// A configured loop device, held open: the device detaches itself when this is dropped and
/// nothing else (a device-mapper table, a mount) holds it.
#[derive(Debug)]
pub struct AttachedLoop {
    pub node: PathBuf,
    _held: File,
}

/// Attaches `file` read-only to a free loop device under `dev_dir`.
pub fn attach_read_only(dev_dir: &Path, file: &Path) -> Result<AttachedLoop, LoopError> {
    attach(dev_dir, file, None)
}

/// Attaches only `range` of `file`, read-only: the device is exactly that range.
pub fn attach_range_read_only(
    dev_dir: &Path,
    file: &Path,
    range: ByteRange,
) -> Result<AttachedLoop, LoopError> {
    attach(dev_dir, file, Some(range))
}

fn attach(
    dev_dir: &Path,
    file: &Path,
    range: Option<ByteRange>,
) -> Result<AttachedLoop, LoopError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| LoopError::Open {
            path: path.to_owned(),
            source,
        })
    };
    let backing = open(file)?;
    let control_path = dev_dir.join("loop-control");
    let control = File::options()
        .read(true)
        .write(true)
        .open(&control_path)
        .map_err(|source| LoopError::Open {
            path: control_path,
            source,
        })?;
    let (offset, length) = range.map_or((0, 0), |range| (range.offset, range.length));
    let config =
        sys::read_only_loop_config(backing.as_fd(), file.as_os_str().as_bytes(), offset, length);
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let index = sys::loop_ctl_get_free(control.as_fd()).map_err(LoopError::GetFree)?;
        let device = dev_dir.join(format!("loop{index}"));
        let node = open(&device)?;
        match sys::loop_configure(node.as_fd(), &config) {
            Ok(()) => {
                return Ok(AttachedLoop {
                    node: device,
                    _held: node,
                })
            }
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                last_error = Some((device, error))
            }
            Err(source) => {
                return Err(LoopError::Configure {
                    file: file.to_owned(),
                    device,
                    source,
                })
            }
        }
    }
    let (device, source) = last_error.unwrap_or_else(|| {
        (
            dev_dir.join("loop"),
            std::io::Error::from_raw_os_error(libc::EBUSY),
        )
    });
    Err(LoopError::Configure {
        file: file.to_owned(),
        device,
        source,
    })
}

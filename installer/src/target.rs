//! The disk being installed, held for the whole run: opened read-write with O_EXCL (the
//! kernel refuses while it or a partition is mounted or claimed by device-mapper, md, a file
//! system) and locked with `flock(LOCK_EX|LOCK_NB)`, the lock udev and systemd-repart take,
//! so udev does not probe it while it is being written. Every write and read goes through
//! this one descriptor, at explicit offsets.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Advice, FlockOperation, Mode, OFlags};

use crate::checks::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot open {} for writing", .0.display())]
    Open(PathBuf, #[source] io::Error),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The disk, opened exclusively and locked.
#[derive(Debug)]
pub struct Target {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl Target {
    /// Check 4: the exclusive open and the lock.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let flags = OFlags::RDWR | OFlags::EXCL | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|errno| {
            match errno == rustix::io::Errno::BUSY {
                true => TargetError::Refused(Refusal::Busy {
                    disk: path.to_owned(),
                    source: io::Error::from(errno),
                }),
                false => TargetError::Open(path.to_owned(), io::Error::from(errno)),
            }
        })?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|errno| {
            match errno == rustix::io::Errno::WOULDBLOCK {
                true => TargetError::Refused(Refusal::Locked(path.to_owned())),
                false => TargetError::Io {
                    action: "lock",
                    path: path.to_owned(),
                    source: io::Error::from(errno),
                },
            }
        })?;
        let mut file = File::from(fd);
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| TargetError::Io {
                action: "size",
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Up to `length` bytes at `offset` (fewer at the end of the disk).
    pub fn read_at(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        let available = self.bytes.saturating_sub(offset);
        let length = length.min(usize::try_from(available).unwrap_or(usize::MAX));
        let mut bytes = vec![0u8; length];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), TargetError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| self.error("write", source))
    }

    /// fsync: everything written is on the disk.
    pub fn sync(&self) -> Result<(), TargetError> {
        self.file
            .sync_all()
            .map_err(|source| self.error("sync", source))
    }

    /// Drops the disk's cached pages (they are clean after [`Target::sync`]), so what is
    /// read next comes from the disk, not from what was just written into memory.
    pub fn drop_cache(&self) -> Result<(), TargetError> {
        rustix::fs::fadvise(&self.file, 0, NonZeroU64::new(self.bytes), Advice::DontNeed)
            .map_err(|errno| self.error("drop the cached pages of", errno.into()))
    }

    pub fn error(&self, action: &'static str, source: io::Error) -> TargetError {
        TargetError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

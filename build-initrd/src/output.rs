//! Atomic output: everything is written to `OUT.tmp` beside `OUT` and renamed over it only
//! once complete, so a failed or interrupted build never leaves a half-written `OUT` that a
//! later step (UKI assembly, a boot) would pick up.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An output being produced at its temporary path. Dropping it without [`commit`] removes the
/// temporary file.
///
/// [`commit`]: PendingOutput::commit
#[derive(Debug)]
pub struct PendingOutput {
    temporary: PathBuf,
    destination: PathBuf,
    committed: bool,
}

impl PendingOutput {
    pub fn new(destination: &Path) -> Self {
        let mut temporary = OsString::from(destination.as_os_str());
        temporary.push(".tmp");
        Self {
            temporary: PathBuf::from(temporary),
            destination: destination.to_owned(),
            committed: false,
        }
    }

    /// Where to write: in the destination's directory, so the rename stays on one file system.
    pub fn temporary(&self) -> &Path {
        &self.temporary
    }

    pub fn commit(mut self) -> Result<(), OutputError> {
        fs::rename(&self.temporary, &self.destination).map_err(|source| OutputError::Rename {
            from: self.temporary.clone(),
            to: self.destination.clone(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match fs::remove_file(&self.temporary) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // Drop cannot return the error, and the user has to know about the leftover.
            Err(err) => eprintln!(
                "warning: cannot remove the partial output {}: {err}",
                self.temporary.display()
            ),
        }
    }
}

/// Writes `bytes` to `destination` atomically, flushed to disk before the rename.
pub fn write_atomically(destination: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let pending = PendingOutput::new(destination);
    write_synced(pending.temporary(), bytes).map_err(|source| OutputError::Write {
        path: pending.temporary().to_owned(),
        source,
    })?;
    pending.commit()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_appears_whole_and_no_temporary_remains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("initrd.img");
        fs::write(&out, "old").expect("old output");
        write_atomically(&out, b"new").expect("writes");
        assert_eq!(fs::read(&out).expect("reads"), b"new");
        assert!(!dir.path().join("initrd.img.tmp").exists());
    }

    #[test]
    fn an_abandoned_output_leaves_the_old_one_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("root.squashfs");
        fs::write(&out, "old").expect("old output");
        {
            let pending = PendingOutput::new(&out);
            fs::write(pending.temporary(), "half").expect("partial");
        }
        assert_eq!(fs::read(&out).expect("reads"), b"old");
        assert!(!dir.path().join("root.squashfs.tmp").exists());
    }

    #[test]
    fn a_failed_write_names_the_temporary_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("missing-dir").join("initrd.img");
        let err = write_atomically(&out, b"x").expect_err("no directory");
        assert!(
            err.to_string().contains("missing-dir/initrd.img.tmp"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

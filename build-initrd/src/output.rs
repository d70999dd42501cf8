//! Atomic output: everything is written to `OUT.tmp` beside `OUT` and renamed over it only
//! once complete, so a failed or interrupted build never leaves a half-written `OUT` that a
//! later step (UKI assembly, a boot) would pick up.
//!
//! The temporary file is created exclusively (`O_CREAT|O_EXCL`), after removing whatever a
//! crashed run left at its path: a symlink planted there is removed, never followed, so the
//! build cannot be made to write through it to some other file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::file_error::{FileAction, FileError};

/// An output being produced at its temporary path. Dropping it without [`commit`] removes the
/// temporary file.
///
/// [`commit`]: PendingOutput::commit
#[derive(Debug)]
pub struct PendingOutput {
    temporary: PathBuf,
    destination: PathBuf,
    file: File,
    committed: bool,
}

impl PendingOutput {
    /// Creates the empty temporary file for `destination`.
    pub fn new(destination: &Path) -> Result<Self, FileError> {
        let mut temporary = OsString::from(destination.as_os_str());
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        match fs::remove_file(&temporary) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(FileError::of(FileAction::Remove, &temporary)(source)),
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(FileError::of(FileAction::Create, &temporary))?;
        Ok(Self {
            temporary,
            destination: destination.to_owned(),
            file,
            committed: false,
        })
    }

    /// Where to write: in the destination's directory, so the rename stays on one file system.
    /// External programs write here by path; our own code writes through [`file`].
    ///
    /// [`file`]: PendingOutput::file
    pub fn temporary(&self) -> &Path {
        &self.temporary
    }

    /// The temporary file as created, open for writing.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn commit(mut self) -> Result<(), FileError> {
        fs::rename(&self.temporary, &self.destination).map_err(FileError::of(
            FileAction::RenameTo(self.destination.clone()),
            &self.temporary,
        ))?;
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
pub fn write_atomically(destination: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let pending = PendingOutput::new(destination)?;
    let write = FileError::of(FileAction::Write, pending.temporary());
    let mut file = pending.file();
    file.write_all(bytes).map_err(&write)?;
    file.sync_all().map_err(write)?;
    pending.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use xorbang_formats::error_chain::error_chain;

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
            let pending = PendingOutput::new(&out).expect("temporary");
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
        let text = error_chain(&err);
        assert!(text.starts_with("cannot create "), "{text}");
        assert!(
            text.contains("missing-dir/initrd.img.tmp: No such file"),
            "{text}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_path_is_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("victim");
        let out = dir.path().join("uki.efi");
        symlink(&victim, dir.path().join("uki.efi.tmp")).expect("planted link");
        write_atomically(&out, b"new").expect("writes");
        assert_eq!(fs::read(&victim).expect("reads"), b"precious");
        assert_eq!(fs::read(&out).expect("reads"), b"new");
        let leftover = dir.path().join("uki.efi.tmp");
        fs::write(&leftover, "from a crashed run").expect("leftover");
        write_atomically(&out, b"newer").expect("writes over a leftover");
        assert_eq!(fs::read(&out).expect("reads"), b"newer");
    }
}

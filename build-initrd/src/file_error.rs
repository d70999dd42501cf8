//! The one error for a failed file operation anywhere in the build tool: what was being done,
//! to which path, and the system's reason as its source (printed by `error_chain`, never in
//! the message itself).

use std::io;
use std::path::{Path, PathBuf};

/// What was being done to the file when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    Open,
    Create,
    Read,
    /// A read at this byte offset.
    ReadAt(u64),
    Write,
    /// A write at this byte offset.
    WriteAt(u64),
    /// Growing the file to this many bytes.
    Extend(u64),
    /// Flushing it to disk.
    Sync,
    /// Reading its size or type.
    Inspect,
    ListDirectory,
    CreateDirectory,
    Remove,
    RenameTo(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("{}", describe(action, path))]
pub struct FileError {
    pub action: FileAction,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// The error for `action` on `path`, as a `map_err` argument.
    pub fn of(action: FileAction, path: &Path) -> impl Fn(io::Error) -> Self + '_ {
        move |source| Self {
            action: action.clone(),
            path: path.to_owned(),
            source,
        }
    }
}

fn describe(action: &FileAction, path: &Path) -> String {
    let path = path.display();
    match action {
        FileAction::Open => format!("cannot open {path}"),
        FileAction::Create => format!("cannot create {path}"),
        FileAction::Read => format!("cannot read {path}"),
        FileAction::ReadAt(offset) => format!("cannot read {path} at byte {offset}"),
        FileAction::Write => format!("cannot write {path}"),
        FileAction::WriteAt(offset) => format!("cannot write {path} at byte {offset}"),
        FileAction::Extend(size) => format!("cannot extend {path} to {size} bytes"),
        FileAction::Sync => format!("cannot flush {path} to disk"),
        FileAction::Inspect => format!("cannot inspect {path}"),
        FileAction::ListDirectory => format!("cannot list the directory {path}"),
        FileAction::CreateDirectory => format!("cannot create the directory {path}"),
        FileAction::Remove => format!("cannot remove {path}"),
        FileAction::RenameTo(to) => format!("cannot rename {path} to {}", to.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::error_chain::error_chain;

    #[test]
    fn the_message_names_action_and_path_and_the_cause_follows_once() {
        let error = FileError::of(FileAction::ReadAt(4096), Path::new("/x/root.img"))(
            io::Error::from_raw_os_error(5),
        );
        assert_eq!(error.to_string(), "cannot read /x/root.img at byte 4096");
        assert_eq!(
            error_chain(&error),
            "cannot read /x/root.img at byte 4096: Input/output error (os error 5)"
        );
        let error = FileError::of(FileAction::RenameTo("b".into()), Path::new("a"))(
            io::ErrorKind::NotFound.into(),
        );
        assert_eq!(error.to_string(), "cannot rename a to b");
    }
}

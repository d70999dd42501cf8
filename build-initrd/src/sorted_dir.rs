//! Directory listings in one order, so every walk of a tree (hashing it, comparing two,
//! packing it) goes the same way on every machine.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use crate::file_error::{FileAction, FileError};

/// The names in `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Result<Vec<OsString>, FileError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(FileError::of(FileAction::ListDirectory, dir))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()
        .map_err(FileError::of(FileAction::ListDirectory, dir))?;
    names.sort();
    Ok(names)
}

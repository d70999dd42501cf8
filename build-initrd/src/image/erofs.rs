//! `xorbang-build image --format erofs`: a root file system tree packed as EROFS by
//! `mkfs.erofs` (erofs-utils 1.5), reproducibly: every timestamp and the UUID are pinned, so
//! the same tree always gives the same image and hence the same verity root hash.
//!
//! mkfs.erofs has no pseudo files: generated files (the extension pin manifest) go into a
//! staging copy of the tree whose files are hard links to the tree's (a full copy when the
//! output is on another file system), so the source tree is never modified.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::file_error::{FileAction, FileError};
use crate::image::squashfs::{missing_directories, parent_dir, AddedFile, ImageError, WorkDir};
use crate::output::PendingOutput;
use crate::tool;

/// The program run unless the caller names another.
pub const MKFS_EROFS: &str = "mkfs.erofs";
/// Every image gets the nil UUID: a root is found by its partition, never by its file
/// system's UUID, and a UUID of its own would make two builds of one tree differ.
const UUID: &str = "00000000-0000-0000-0000-000000000000";

/// EROFS compressors (the Debian and xorbang kernels read both; lz4hc packs tighter and
/// decompresses with the same lz4 code), or none: the file data stored as is, which shows
/// what decompression costs at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErofsCompression {
    Lz4,
    Lz4hc,
    Uncompressed,
}

impl ErofsCompression {
    /// The name `--compression` and profiles use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lz4 => "lz4",
            Self::Lz4hc => "lz4hc",
            Self::Uncompressed => "none",
        }
    }

    fn mkfs_options(self) -> &'static [&'static str] {
        match self {
            Self::Lz4 => &["-zlz4"],
            Self::Lz4hc => &["-zlz4hc,12"],
            Self::Uncompressed => &[],
        }
    }
}

/// Packs `rootfs`, with `added` files besides the tree's, into the EROFS image `out`
/// (atomically) with the `mkfs.erofs` program given, every timestamp set to `mtime`.
/// Returns the image size in bytes.
pub fn build_with_files(
    mkfs: &Path,
    rootfs: &Path,
    out: &Path,
    compression: ErofsCompression,
    mtime: u32,
    added: &[AddedFile],
) -> Result<u64, ImageError> {
    if !rootfs.is_dir() {
        return Err(ImageError::NotADirectory {
            path: rootfs.to_owned(),
        });
    }
    let staging = match added {
        [] => None,
        _ => Some(stage(rootfs, out, added)?),
    };
    let source = staging
        .as_ref()
        .map_or(rootfs.to_owned(), |work| work.path().join("tree"));
    let pending = PendingOutput::new(out)?;
    let args: Vec<OsString> = vec![
        format!("-T{mtime}").into(),
        format!("-U{UUID}").into(),
        "--quiet".into(),
        pending.temporary().into(),
        source.into(),
    ];
    let mut command = Command::new(mkfs);
    // -T already pins the times; the environment must not change them.
    command
        .args(compression.mkfs_options())
        .args(&args)
        .env_remove("SOURCE_DATE_EPOCH");
    tool::run(&mut command, "erofs-utils")?;
    let size = fs::metadata(pending.temporary())
        .map_err(FileError::of(FileAction::Inspect, pending.temporary()))?
        .len();
    pending.commit()?;
    Ok(size)
}

/// A copy of `rootfs` (hard links where it can) with `added` in it, next to `out`.
fn stage(rootfs: &Path, out: &Path, added: &[AddedFile]) -> Result<WorkDir, ImageError> {
    let directories = missing_directories(rootfs, added)?;
    let work = WorkDir::new_in(parent_dir(out), "erofs")?;
    let tree = work.path().join("tree");
    copy_tree(rootfs, &tree)?;
    for dir in &directories {
        let path = tree.join(dir);
        DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(FileError::of(FileAction::CreateDirectory, &path))?;
    }
    for file in added {
        let path = tree.join(&file.path);
        fs::write(&path, &file.contents).map_err(FileError::of(FileAction::Write, &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .map_err(FileError::of(FileAction::Write, &path))?;
    }
    Ok(work)
}

/// `cp -a --link`, and `cp -a` when hard links cannot cross to `to`'s file system. Either
/// keeps owners, modes and xattrs.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    let copy = |link: bool| {
        let mut command = Command::new("cp");
        command.arg("-a");
        if link {
            command.arg("--link");
        }
        command.arg(from).arg(to);
        tool::run(&mut command, "coreutils")
    };
    if copy(true).is_ok() {
        return Ok(());
    }
    if to.exists() {
        fs::remove_dir_all(to).map_err(FileError::of(FileAction::Remove, to))?;
    }
    Ok(copy(false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use xorbang_formats::fs_probe::{self, FsKind};

    fn mkfs_installed() -> bool {
        let installed = Command::new(MKFS_EROFS).arg("--help").output().is_ok();
        if !installed {
            println!("note: mkfs.erofs not installed, skipping the image build");
        }
        installed
    }

    fn sample_tree(root: &Path) -> std::path::PathBuf {
        let tree = root.join("rootfs");
        fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/os-release"), "ID=xorbang\n").expect("os-release");
        fs::write(tree.join("usr/bin/tool"), vec![7u8; 300_000]).expect("tool");
        symlink("usr/bin", tree.join("bin")).expect("symlink");
        tree
    }

    /// Two builds of one tree are the same bytes, EROFS by its superblock, with the added
    /// file in it (fsck.erofs extracts it) and the tree untouched.
    #[test]
    fn the_same_tree_gives_the_same_image_with_the_added_file() {
        if !mkfs_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let added = [AddedFile {
            path: "usr/lib/xorbang/extensions.toml".into(),
            mode: 0o644,
            contents: b"[sysext]\n".to_vec(),
        }];
        let mkfs = Path::new(MKFS_EROFS);
        let images = ["first.erofs", "second.erofs"].map(|name| dir.path().join(name));
        for image in &images {
            build_with_files(
                mkfs,
                &tree,
                image,
                ErofsCompression::Lz4hc,
                1_700_000_000,
                &added,
            )
            .expect("build");
        }
        let bytes = fs::read(&images[0]).expect("read");
        assert_eq!(bytes, fs::read(&images[1]).expect("read"));
        let probed = fs_probe::probe(&bytes[..fs_probe::PROBE_BYTES]).expect("a file system");
        assert_eq!(probed.kind, FsKind::Erofs);
        assert!(!tree.join("usr/lib").exists(), "the tree was changed");
        let extracted = dir.path().join("extracted");
        let status = Command::new("fsck.erofs")
            .arg(format!("--extract={}", extracted.display()))
            .arg(&images[0])
            .status()
            .expect("fsck.erofs runs");
        assert!(status.success());
        assert_eq!(
            fs::read(extracted.join("usr/lib/xorbang/extensions.toml")).expect("added file"),
            b"[sysext]\n"
        );
        assert_eq!(
            fs::read(extracted.join("usr/bin/tool")).expect("tool"),
            vec![7u8; 300_000]
        );
    }

    #[test]
    fn a_generated_file_the_tree_has_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let added = [AddedFile {
            path: "etc/os-release".into(),
            mode: 0o644,
            contents: Vec::new(),
        }];
        let result = build_with_files(
            Path::new(MKFS_EROFS),
            &tree,
            &dir.path().join("out.erofs"),
            ErofsCompression::Lz4,
            0,
            &added,
        );
        assert!(
            matches!(result, Err(ImageError::AlreadyInTree { .. })),
            "{result:?}"
        );
    }
}

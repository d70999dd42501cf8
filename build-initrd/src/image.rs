//! `xorbang-build image`: a root file system tree packed as SquashFS by `mksquashfs`
//! (squashfs-tools 4.5), reproducibly, so the same tree always gives the same image and hence
//! the same verity root hash.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::output::{OutputError, PendingOutput};
use crate::tool::{self, ToolError};

/// The program run unless the caller names another.
pub const MKSQUASHFS: &str = "mksquashfs";
/// mksquashfs's own default, pinned so that a changed default cannot change the image.
const BLOCK_SIZE: &str = "131072";

/// SquashFS compressors the Debian kernel's squashfs module is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SquashfsCompression {
    Zstd,
    Gzip,
    Xz,
}

impl SquashfsCompression {
    fn mksquashfs_name(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Xz => "xz",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the root file system {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot read the size of {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Packs `rootfs` into the SquashFS image `out` (atomically) with the `mksquashfs` program
/// given, every timestamp set to `mtime`. Returns the image size in bytes.
pub fn build(
    mksquashfs: &Path,
    rootfs: &Path,
    out: &Path,
    compression: SquashfsCompression,
    mtime: u32,
) -> Result<u64, ImageError> {
    if !rootfs.is_dir() {
        return Err(ImageError::NotADirectory {
            path: rootfs.to_owned(),
        });
    }
    let pending = PendingOutput::new(out);
    let args = mksquashfs_args(rootfs, pending.temporary(), compression, mtime);
    run(mksquashfs, &args)?;
    let size = fs::metadata(pending.temporary())
        .map_err(|source| ImageError::Size {
            path: pending.temporary().to_owned(),
            source,
        })?
        .len();
    pending.commit()?;
    Ok(size)
}

/// Ownership, permissions and xattrs are kept as they are in the tree (mksquashfs's
/// defaults, stated explicitly where a flag exists); everything that would vary between
/// builds is pinned.
fn mksquashfs_args(
    rootfs: &Path,
    image: &Path,
    compression: SquashfsCompression,
    mtime: u32,
) -> Vec<OsString> {
    let mtime = mtime.to_string();
    let mut args: Vec<OsString> = vec![rootfs.into(), image.into()];
    args.extend(
        [
            "-noappend",
            "-reproducible",
            "-mkfs-time",
            &mtime,
            "-all-time",
            &mtime,
            "-comp",
            compression.mksquashfs_name(),
            "-b",
            BLOCK_SIZE,
            "-xattrs",
            "-quiet",
            "-no-progress",
        ]
        .map(OsString::from),
    );
    args
}

fn run(program: &Path, args: &[OsString]) -> Result<(), ImageError> {
    let mut command = Command::new(program);
    // mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time, and the
    // times are already passed explicitly.
    command.args(args).env_remove("SOURCE_DATE_EPOCH");
    Ok(tool::run(&mut command, "squashfs-tools")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mksquashfs_installed() -> bool {
        let installed = Command::new(MKSQUASHFS).arg("-version").output().is_ok();
        if !installed {
            println!("note: mksquashfs not installed, skipping the image build");
        }
        installed
    }

    fn sample_tree(root: &Path) -> PathBuf {
        let tree = root.join("rootfs");
        fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/os-release"), "ID=xorbang\n").expect("os-release");
        fs::write(tree.join("usr/bin/tool"), vec![7u8; 300_000]).expect("tool");
        symlink("usr/bin", tree.join("bin")).expect("symlink");
        tree
    }

    #[test]
    fn the_same_tree_gives_the_same_image_and_unsquashfs_lists_it() {
        if !mksquashfs_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let first = dir.path().join("first.squashfs");
        let second = dir.path().join("second.squashfs");
        let mksquashfs = Path::new(MKSQUASHFS);
        let size = build(
            mksquashfs,
            &tree,
            &first,
            SquashfsCompression::Zstd,
            1_700_000_000,
        )
        .expect("first build");
        // A later modification time on the tree must not show in the image.
        fs::write(tree.join("etc/os-release"), "ID=xorbang\n").expect("touch");
        build(
            mksquashfs,
            &tree,
            &second,
            SquashfsCompression::Zstd,
            1_700_000_000,
        )
        .expect("second build");
        let first_bytes = fs::read(&first).expect("reads");
        assert_eq!(size, first_bytes.len() as u64);
        assert_eq!(first_bytes, fs::read(&second).expect("reads"));
        assert!(!dir.path().join("first.squashfs.tmp").exists());

        let listing = Command::new("unsquashfs")
            .args(["-lls", "-n"])
            .arg(&first)
            .output()
            .expect("unsquashfs runs");
        assert!(listing.status.success());
        let listing = String::from_utf8(listing.stdout).expect("UTF-8");
        for path in ["etc/os-release", "usr/bin/tool", "bin -> usr/bin"] {
            assert!(
                listing.contains(&format!("squashfs-root/{path}")),
                "{listing}"
            );
        }
        assert!(
            listing.contains("2023-11-14"),
            "timestamps pinned: {listing}"
        );
    }

    #[test]
    fn a_failing_mksquashfs_is_reported_with_its_output() {
        if !mksquashfs_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let out = dir.path().join("no-such-dir").join("root.squashfs");
        let err = build(
            Path::new(MKSQUASHFS),
            &tree,
            &out,
            SquashfsCompression::Xz,
            0,
        )
        .expect_err("cannot create the output");
        assert!(
            matches!(err, ImageError::Tool(ToolError::Failed { .. })),
            "{err}"
        );
        // mksquashfs's own words come through ("Could not create destination file").
        assert!(err.to_string().contains("destination"), "{err}");
    }

    #[test]
    fn a_missing_tool_and_a_missing_tree_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let out = dir.path().join("root.squashfs");
        let missing = Path::new("/nonexistent/mksquashfs");
        let err = build(missing, &tree, &out, SquashfsCompression::Gzip, 0).expect_err("missing");
        assert!(matches!(err, ImageError::Tool(ToolError::Missing { .. })));
        assert!(err.to_string().contains("/nonexistent/mksquashfs"), "{err}");
        let err = build(
            missing,
            &dir.path().join("nope"),
            &out,
            SquashfsCompression::Gzip,
            0,
        )
        .expect_err("no tree");
        assert!(matches!(err, ImageError::NotADirectory { .. }));
    }

    #[test]
    fn timestamps_and_the_temporary_output_go_to_mksquashfs() {
        let args = mksquashfs_args(
            Path::new("/r"),
            Path::new("/o.tmp"),
            SquashfsCompression::Xz,
            42,
        );
        let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(&args[..2], ["/r", "/o.tmp"]);
        for pair in [
            ["-mkfs-time", "42"],
            ["-all-time", "42"],
            ["-comp", "xz"],
            ["-b", "131072"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        assert!(args.contains(&"-noappend") && args.contains(&"-reproducible"));
    }
}

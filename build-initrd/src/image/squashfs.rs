//! `xorbang-build image`: a root file system tree packed as SquashFS by `mksquashfs`
//! (squashfs-tools 4.5), reproducibly, so the same tree always gives the same image and hence
//! the same verity root hash.
//!
//! Generated files (an extension's release file, the extension pin manifest) are added with
//! mksquashfs pseudo file definitions, so the source tree is never modified or copied.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::file_error::{FileAction, FileError};
use crate::output::PendingOutput;
use crate::tool::{self, ToolError};

/// The program run unless the caller names another.
pub const MKSQUASHFS: &str = "mksquashfs";
/// mksquashfs's own default, pinned so that a changed default cannot change the image.
pub const BLOCK_SIZE: u32 = 128 * 1024;
/// Not mksquashfs's 15: on a Debian root with its kernel modules (750 MB) level 15 took 91 s
/// on 2 cores and level 6 took 8 s for a 6 % larger image (223 and 237 MB); reading it back
/// costs the same, since zstd decompresses at one speed whatever the level.
const ZSTD_LEVEL: &str = "6";

/// SquashFS compressors the Debian kernel's squashfs module is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SquashfsCompression {
    Zstd,
    Gzip,
    Xz,
    Lz4,
}

impl SquashfsCompression {
    /// The name mksquashfs's `-comp` takes, and the one `--compression` and profiles use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Lz4 => "lz4",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the root file system {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "cannot add {added:?}: only relative paths of A-Z a-z 0-9 . _ - + components can be \
         added to an image"
    )]
    AddedPath { added: String },
    #[error("the tree already has {path}: refusing to replace it with the generated {added}")]
    AlreadyInTree { path: PathBuf, added: String },
    #[error(
        "a SquashFS block size of {bytes} bytes: it must be a power of two from 4096 to 1048576"
    )]
    BlockSize { bytes: u32 },
    #[error("{path} is not a directory, so {added} cannot be added under it")]
    NotADirectoryInTree { path: PathBuf, added: String },
}

/// A file the image gets that the tree does not have, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedFile {
    /// Relative to the image's root, `/`-separated.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub contents: Vec<u8>,
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
    build_with_files(mksquashfs, rootfs, out, compression, mtime, &[])
}

/// [`build`], with `added` files in the image besides the tree's. A path the tree already has
/// is refused (mksquashfs would silently keep the tree's); missing parent directories are
/// added too (mode 0755, root), since mksquashfs silently drops a pseudo file whose directory
/// does not exist.
pub fn build_with_files(
    mksquashfs: &Path,
    rootfs: &Path,
    out: &Path,
    compression: SquashfsCompression,
    mtime: u32,
    added: &[AddedFile],
) -> Result<u64, ImageError> {
    build_in_blocks(
        mksquashfs,
        rootfs,
        out,
        (compression, BLOCK_SIZE),
        mtime,
        added,
    )
}

/// [`build_with_files`] with data blocks of `block_size` bytes (a power of two from 4 KiB to
/// 1 MiB, as mksquashfs takes) instead of 128 KiB.
pub fn build_in_blocks(
    mksquashfs: &Path,
    rootfs: &Path,
    out: &Path,
    (compression, block_size): (SquashfsCompression, u32),
    mtime: u32,
    added: &[AddedFile],
) -> Result<u64, ImageError> {
    if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(ImageError::BlockSize { bytes: block_size });
    }
    if !rootfs.is_dir() {
        return Err(ImageError::NotADirectory {
            path: rootfs.to_owned(),
        });
    }
    let directories = missing_directories(rootfs, added)?;
    // The contents reach mksquashfs through `cat`: they live here until it has run.
    let work = match added {
        [] => None,
        _ => Some(WorkDir::new_in(parent_dir(out), "image")?),
    };
    let mut pseudo: Vec<String> = directories
        .iter()
        .map(|dir| format!("{dir} d 755 0 0"))
        .collect();
    if let Some(work) = &work {
        for (index, file) in added.iter().enumerate() {
            pseudo.push(pseudo_file(
                file,
                &work.path().join(format!("added-{index}")),
            )?);
        }
    }
    let pending = PendingOutput::new(out)?;
    let mut args = mksquashfs_args(rootfs, pending.temporary(), compression, block_size, mtime);
    for definition in pseudo {
        args.extend([OsString::from("-p"), OsString::from(definition)]);
    }
    run(mksquashfs, &args)?;
    let size = fs::metadata(pending.temporary())
        .map_err(FileError::of(FileAction::Inspect, pending.temporary()))?
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
    block_size: u32,
    mtime: u32,
) -> Vec<OsString> {
    let mtime = mtime.to_string();
    let block_size = block_size.to_string();
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
            compression.name(),
            "-b",
            &block_size,
            "-xattrs",
            // Each pinned key in a block of its own, not in a shared fragment: checking a
            // host config's signature then reads (and dm-verity hashes) one small block,
            // not a fragment of many files.
            "-action",
            "no-fragments@pathname(/usr/lib/xorbang/keys/*)",
            "-quiet",
            "-no-progress",
        ]
        .map(OsString::from),
    );
    if compression == SquashfsCompression::Zstd {
        args.extend(["-Xcompression-level", ZSTD_LEVEL].map(OsString::from));
    }
    args
}

/// The directories `added` needs that the tree lacks, parents first; refuses a path the tree
/// has already, and a parent that is there but not a directory.
pub(super) fn missing_directories(
    rootfs: &Path,
    added: &[AddedFile],
) -> Result<BTreeSet<String>, ImageError> {
    let mut missing = BTreeSet::new();
    for file in added {
        check_added_path(&file.path)?;
        let components: Vec<&str> = file.path.split('/').collect();
        for depth in 1..components.len() {
            let dir = components[..depth].join("/");
            let on_host = rootfs.join(&dir);
            match entry_kind(&on_host)? {
                Some(true) => {}
                Some(false) => {
                    return Err(ImageError::NotADirectoryInTree {
                        path: on_host,
                        added: file.path.clone(),
                    })
                }
                None => {
                    missing.insert(dir);
                }
            }
        }
        let on_host = rootfs.join(&file.path);
        if entry_kind(&on_host)?.is_some() {
            return Err(ImageError::AlreadyInTree {
                path: on_host,
                added: file.path.clone(),
            });
        }
    }
    Ok(missing)
}

/// Writes the contents of `file` to `contents`; returns its pseudo file definition.
fn pseudo_file(file: &AddedFile, contents: &Path) -> Result<String, ImageError> {
    fs::write(contents, &file.contents).map_err(FileError::of(FileAction::Write, contents))?;
    Ok(format!(
        "{} f {:o} 0 0 cat {}",
        file.path,
        file.mode,
        shell_quote(contents)
    ))
}

/// Pseudo file definitions are split on blanks and have no quoting mksquashfs 4.5 and later
/// versions agree on: the paths we add are kept to characters that need none.
fn check_added_path(path: &str) -> Result<(), ImageError> {
    let plain = |component: &str| {
        !component.is_empty()
            && component != "."
            && component != ".."
            && component.bytes().all(|byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'+')
            })
    };
    if path.split('/').all(plain) {
        Ok(())
    } else {
        Err(ImageError::AddedPath {
            added: path.to_owned(),
        })
    }
}

/// `Some(is a directory)` for an existing entry (a symlink is not a directory: mksquashfs
/// packs the link, not its target), `None` for a missing one.
fn entry_kind(path: &Path) -> Result<Option<bool>, ImageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta.is_dir())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::of(FileAction::Inspect, path)(source).into()),
    }
}

/// The command of a pseudo file is run by `/bin/sh -c`: single quotes keep any path intact.
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The directory an output goes into (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A private scratch directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Makes `PARENT/.xorbang-PURPOSE.PID.N`, mode 0700; it is next to an output so that big
    /// intermediate files stay on the output's file system, not in a small tmpfs.
    pub fn new_in(parent: &Path, purpose: &str) -> Result<Self, ImageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let mut attempts = 0;
        loop {
            let number = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!(".xorbang-{purpose}.{pid}.{number}"));
            attempts += 1;
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                // Left over by a crashed run with the same PID: take the next number.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {}
                Err(source) => {
                    return Err(FileError::of(FileAction::CreateDirectory, &path)(source).into())
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // Drop cannot return the error, and the user has to know about the leftover.
            Err(err) => eprintln!(
                "warning: cannot remove the work directory {}: {err}",
                self.path.display()
            ),
        }
    }
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
    fn a_failing_mksquashfs_is_reported_with_its_output_and_leaves_no_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        // A stand-in that fails the way mksquashfs does, with its message on stdout. A child
        // writes it: a file this process had open for writing could still be open in a child
        // another test thread forks meanwhile, and exec would fail with ETXTBSY.
        let failing = dir.path().join("mksquashfs");
        let written = Command::new("sh")
            .arg("-c")
            .arg("printf '#!/bin/sh\\necho \"FATAL ERROR: Could not create destination file\"\\nexit 1\\n' > \"$1\" && chmod 755 \"$1\"")
            .arg("write-script")
            .arg(&failing)
            .status()
            .expect("sh runs");
        assert!(written.success(), "the stand-in is written");
        let out = dir.path().join("root.squashfs");
        let err =
            build(&failing, &tree, &out, SquashfsCompression::Xz, 0).expect_err("mksquashfs fails");
        assert!(
            matches!(err, ImageError::Tool(ToolError::Failed { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("destination"), "{err}");
        assert!(!out.exists() && !dir.path().join("root.squashfs.tmp").exists());
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
            BLOCK_SIZE,
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

    fn manifest_file() -> AddedFile {
        AddedFile {
            path: "usr/lib/xorbang/extensions.toml".to_owned(),
            mode: 0o644,
            contents: b"[sysext]\n".to_vec(),
        }
    }

    #[test]
    fn added_files_get_their_missing_directories_and_the_tree_stays_as_it_was() {
        if !mksquashfs_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let out = dir.path().join("out").join("root.squashfs");
        fs::create_dir(dir.path().join("out")).expect("mkdir");
        let added = [manifest_file()];
        let build_once = |out: &Path| {
            build_with_files(
                Path::new(MKSQUASHFS),
                &tree,
                out,
                SquashfsCompression::Zstd,
                7,
                &added,
            )
            .expect("builds")
        };
        build_once(&out);
        assert!(!tree.join("usr/lib").exists(), "the tree is not modified");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("out"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["root.squashfs"], "no work directory is left");
        let listing = Command::new("unsquashfs")
            .args(["-lln", "-UTC"])
            .arg(&out)
            .output()
            .expect("unsquashfs runs");
        let listing = String::from_utf8(listing.stdout).expect("UTF-8");
        for (mode, path) in [
            ("drwxr-xr-x 0/0", "squashfs-root/usr/lib"),
            ("drwxr-xr-x 0/0", "squashfs-root/usr/lib/xorbang"),
            (
                "-rw-r--r-- 0/0",
                "squashfs-root/usr/lib/xorbang/extensions.toml",
            ),
        ] {
            assert!(
                listing.lines().any(|line| line.starts_with(mode)
                    && line.ends_with(&format!("1970-01-01 00:00 {path}"))),
                "{mode} {path} in {listing}"
            );
        }
        let cat = Command::new("unsquashfs")
            .arg("-cat")
            .arg(&out)
            .arg("usr/lib/xorbang/extensions.toml")
            .output()
            .expect("unsquashfs runs");
        assert_eq!(cat.stdout, b"[sysext]\n");
        let again = dir.path().join("again.squashfs");
        build_once(&again);
        assert_eq!(
            fs::read(&out).expect("read"),
            fs::read(&again).expect("read")
        );
    }

    #[test]
    fn an_added_file_may_not_replace_or_hide_under_what_the_tree_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let missing = missing_directories(&tree, &[manifest_file()]).expect("plan");
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            ["usr/lib", "usr/lib/xorbang"]
        );
        fs::write(tree.join("usr/lib"), "not a directory").expect("file");
        let err = missing_directories(&tree, &[manifest_file()]).expect_err("file in the way");
        assert!(
            matches!(err, ImageError::NotADirectoryInTree { .. }),
            "{err}"
        );
        assert!(err.to_string().ends_with("usr/lib is not a directory, so usr/lib/xorbang/extensions.toml cannot be added under it"), "{err}");
        fs::remove_file(tree.join("usr/lib")).expect("rm");
        fs::create_dir_all(tree.join("usr/lib/xorbang")).expect("mkdir");
        fs::write(tree.join("usr/lib/xorbang/extensions.toml"), "").expect("file");
        let err = missing_directories(&tree, &[manifest_file()]).expect_err("already there");
        assert!(
            err.to_string()
                .contains("usr/lib/xorbang/extensions.toml: refusing to replace it"),
            "{err}"
        );
        for bad in ["/etc/x", "a//b", "a/../b", "a b", "a/", "it's"] {
            let file = AddedFile {
                path: bad.to_owned(),
                ..manifest_file()
            };
            let err = missing_directories(&tree, &[file]).expect_err(bad);
            assert!(matches!(err, ImageError::AddedPath { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn pseudo_file_commands_quote_the_contents_path() {
        assert_eq!(
            shell_quote(Path::new("/tmp/a b/it's")),
            "'/tmp/a b/it'\\''s'"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let work = WorkDir::new_in(dir.path(), "test").expect("work dir");
        let path = work.path().to_owned();
        assert!(path.is_dir());
        fs::write(path.join("file"), "x").expect("write");
        drop(work);
        assert!(!path.exists(), "removed with its contents");
        assert_eq!(parent_dir(Path::new("gui.raw")), Path::new("."));
        assert_eq!(parent_dir(Path::new("out/gui.raw")), Path::new("out"));
    }
}

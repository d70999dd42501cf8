//! Copies the surveyed entries out of the overlay uppers into a staging tree that becomes an
//! extension image: type, mode (setuid bits included), numeric owner, mtime, symlink targets
//! and extended attributes are kept, since the image must reproduce what the running system
//! shows; the overlay's own `trusted.overlay.*` bookkeeping is dropped.
//!
//! The uppers belong to a running system, so an entry may change between the survey and the
//! copy: symlinks are never followed on either side, a file is checked to still be one once
//! opened, and every entry must land in a directory this stage created itself.

use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;

use crate::upper::{xattr_names, xattr_value, Hierarchy, OVERLAY_XATTR_PREFIX};

/// What was staged, for the command's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staged {
    pub files: usize,
    pub directories: usize,
    pub symlinks: usize,
    /// The size of the regular files' contents.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path} is not a path inside usr, opt or etc")]
    InvalidPath { path: String },
    #[error("the parent of {path} was not staged as a directory (listed after it, or changed since the survey)")]
    Parent { path: String },
    #[error("{} is no longer a file, directory or symlink", .path.display())]
    Unsupported { path: PathBuf },
    #[error("{} is no longer a regular file", .path.display())]
    NotRegular { path: PathBuf },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy {} to {}", .from.display(), .to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies the entries `paths` (relative, parents first, as in Survey.sysext) from the upper dirs into `to`
/// (a new, empty directory), keeping type, mode (incl. setuid bits), owner (uid/gid, numeric), mtime,
/// symlink targets as they are, and extended attributes except `trusted.overlay.*`.
pub fn stage(dev: &Path, paths: &[String], to: &Path) -> Result<Staged, StageError> {
    let mut staged = Staged::default();
    let mut directories: HashSet<&str> = HashSet::new();
    let mut directory_mtimes: Vec<(PathBuf, Timespec)> = Vec::new();
    for rel in paths {
        let source = locate(dev, rel)?;
        check_parent(rel, &directories)?;
        let dst = to.join(rel);
        let directory_mtime = match &source {
            Source::Top(hierarchy) => Some(stage_top(&hierarchy.upper(dev), &dst)?),
            Source::Entry(src) => stage_entry(src, &dst, &mut staged)?,
        };
        if let Some(mtime) = directory_mtime {
            directories.insert(rel);
            staged.directories += 1;
            directory_mtimes.push((dst, mtime));
        }
    }
    set_directory_mtimes(&directory_mtimes)?;
    Ok(staged)
}

/// Refuses `rel` unless its parent is a directory this stage created (the top directory's
/// parent is `to`): nothing is ever written through a symlink, and a parent that changed
/// type since the survey stops the stage.
fn check_parent(rel: &str, directories: &HashSet<&str>) -> Result<(), StageError> {
    match rel.rsplit_once('/') {
        Some((parent, _)) if !directories.contains(parent) => Err(StageError::Parent {
            path: rel.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Where a staged path comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// The hierarchy's own directory (`usr`), which has no entry in its upper.
    Top(Hierarchy),
    /// An entry in the hierarchy's upper.
    Entry(PathBuf),
}

/// Where the upper entry for `rel` is, refusing anything that could leave the upper
/// (`..`, absolute or empty components) or name another hierarchy.
fn locate(dev: &Path, rel: &str) -> Result<Source, StageError> {
    let invalid = || StageError::InvalidPath {
        path: rel.to_owned(),
    };
    let (top, rest) = match rel.split_once('/') {
        Some((top, rest)) => (top, Some(rest)),
        None => (rel, None),
    };
    let hierarchy = Hierarchy::from_name(top).ok_or_else(invalid)?;
    let Some(rest) = rest else {
        return Ok(Source::Top(hierarchy));
    };
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid());
    }
    Ok(Source::Entry(hierarchy.upper(dev).join(rest)))
}

/// Creates the hierarchy's own directory 0755 root:root without xattrs rather than copying the
/// upper root's: the image's top directory becomes the merged /usr's (or /etc's), so it must
/// not inherit whatever the dev directory's upper happens to have. Its mtime is the upper
/// root's (set with the other directories), so staging the same upper gives the same tree.
fn stage_top(upper: &Path, dst: &Path) -> Result<Timespec, StageError> {
    let upper_mtime = mtime(&read_metadata(upper)?);
    let fd = create_directory(dst)?;
    let write = |errno: Errno| write_error(dst, errno.into());
    rustix::fs::fchown(&fd, Some(Uid::ROOT), Some(Gid::ROOT)).map_err(write)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(write)?;
    Ok(upper_mtime)
}

/// Copies one upper entry. A directory's mtime is returned for the final pass, since writing
/// its children would change it.
fn stage_entry(
    src: &Path,
    dst: &Path,
    staged: &mut Staged,
) -> Result<Option<Timespec>, StageError> {
    let metadata = read_metadata(src)?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        staged.bytes += copy_file(src, dst)?;
        staged.files += 1;
        Ok(None)
    } else if file_type.is_dir() {
        copy_directory(src, dst, &metadata)?;
        Ok(Some(mtime(&metadata)))
    } else if file_type.is_symlink() {
        copy_symlink(src, dst, &metadata)?;
        staged.symlinks += 1;
        Ok(None)
    } else {
        Err(StageError::Unsupported {
            path: src.to_owned(),
        })
    }
}

/// Copies a regular file with its metadata, returning its size. The source is opened without
/// following a symlink and checked to still be a regular file (it may have changed since the
/// survey; non-blocking so a fifo in its place cannot hang the open).
fn copy_file(src: &Path, dst: &Path) -> Result<u64, StageError> {
    let not_regular = || StageError::NotRegular {
        path: src.to_owned(),
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(src, flags | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(not_regular()),
        Err(errno) => return Err(read_error(src, errno.into())),
    };
    let mut source = File::from(fd);
    let metadata = source.metadata().map_err(|e| read_error(src, e))?;
    if !metadata.file_type().is_file() {
        return Err(not_regular());
    }
    let mut dest = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| write_error(dst, e))?;
    let bytes = io::copy(&mut source, &mut dest).map_err(|source| StageError::Copy {
        from: src.to_owned(),
        to: dst.to_owned(),
        source,
    })?;
    set_owner_mode_xattrs(&dest, src, dst, &metadata)?;
    set_mtime(dst, mtime(&metadata))?;
    Ok(bytes)
}

/// Creates a directory with the source's owner, mode and xattrs; its mtime comes last.
fn copy_directory(src: &Path, dst: &Path, metadata: &Metadata) -> Result<(), StageError> {
    let fd = create_directory(dst)?;
    set_owner_mode_xattrs(&fd, src, dst, metadata)
}

/// Creates `dst` private to root until its mode is set, and opens it without following a
/// symlink that might have replaced it.
fn create_directory(dst: &Path) -> Result<rustix::fd::OwnedFd, StageError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(|e| write_error(dst, e))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(dst, flags, Mode::empty()).map_err(|e| write_error(dst, e.into()))
}

/// Recreates a symlink with its target bytes unchanged (never resolved), owner, xattrs and
/// mtime; symlinks have no mode of their own.
fn copy_symlink(src: &Path, dst: &Path, metadata: &Metadata) -> Result<(), StageError> {
    let target = fs::read_link(src).map_err(|e| read_error(src, e))?;
    std::os::unix::fs::symlink(&target, dst).map_err(|e| write_error(dst, e))?;
    std::os::unix::fs::lchown(dst, Some(metadata.uid()), Some(metadata.gid()))
        .map_err(|e| write_error(dst, e))?;
    copy_xattrs(src, dst, |name, value| {
        rustix::fs::lsetxattr(dst, name, value, XattrFlags::empty())
    })?;
    set_mtime(dst, mtime(metadata))
}

/// Owner first, then mode: chown clears setuid and setgid bits. Xattrs after both, since
/// chown also drops `security.capability`.
fn set_owner_mode_xattrs(
    fd: impl rustix::fd::AsFd,
    src: &Path,
    dst: &Path,
    metadata: &Metadata,
) -> Result<(), StageError> {
    let write = |errno: Errno| write_error(dst, errno.into());
    let owner = Uid::from_raw(metadata.uid());
    let group = Gid::from_raw(metadata.gid());
    rustix::fs::fchown(&fd, Some(owner), Some(group)).map_err(write)?;
    let mode = Mode::from_raw_mode(metadata.mode() & 0o7777);
    rustix::fs::fchmod(&fd, mode).map_err(write)?;
    copy_xattrs(src, dst, |name, value| {
        rustix::fs::fsetxattr(&fd, name, value, XattrFlags::empty())
    })
}

/// Copies every extended attribute but the overlay's own (`trusted.overlay.*`: origin,
/// impure and the like describe the upper, not the file).
fn copy_xattrs(
    src: &Path,
    dst: &Path,
    set: impl Fn(&[u8], &[u8]) -> Result<(), Errno>,
) -> Result<(), StageError> {
    let read = |errno: Errno| read_error(src, errno.into());
    for name in xattr_names(src).map_err(read)? {
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let value = xattr_value(src, &name).map_err(read)?;
        set(&name, &value).map_err(|errno| write_error(dst, errno.into()))?;
    }
    Ok(())
}

/// Directories' mtimes, deepest first, once nothing more is written into them.
fn set_directory_mtimes(directories: &[(PathBuf, Timespec)]) -> Result<(), StageError> {
    for (dst, mtime) in directories.iter().rev() {
        set_mtime(dst, *mtime)?;
    }
    Ok(())
}

/// Sets `dst`'s mtime (and atime, to the same, so the tree does not record when it was
/// staged), on a symlink itself rather than its target.
fn set_mtime(dst: &Path, mtime: Timespec) -> Result<(), StageError> {
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|errno| write_error(dst, errno.into()))
}

fn mtime(metadata: &Metadata) -> Timespec {
    Timespec {
        tv_sec: metadata.mtime(),
        tv_nsec: metadata.mtime_nsec(),
    }
}

/// The entry's own metadata, a symlink's included (never its target's).
fn read_metadata(path: &Path) -> Result<Metadata, StageError> {
    fs::symlink_metadata(path).map_err(|e| read_error(path, e))
}

fn read_error(path: &Path, source: io::Error) -> StageError {
    StageError::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> StageError {
    StageError::Write {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upper::survey;
    use crate::upper::tests::Fixture;

    const MTIME: Timespec = Timespec {
        tv_sec: 1_700_000_000,
        tv_nsec: 123_456_789,
    };

    fn set_fixture_mtime(path: &Path) {
        set_mtime(path, MTIME).expect("set fixture mtime");
    }

    fn assert_mtime(path: &Path) {
        let metadata = fs::symlink_metadata(path).expect("stat staged entry");
        assert_eq!(mtime(&metadata), MTIME, "{}", path.display());
    }

    fn xattr_list(path: &Path) -> Vec<Vec<u8>> {
        xattr_names(path).expect("list staged xattrs")
    }

    /// A sysext upper with a setuid file owned by 1234:5678, a symlink and an empty directory.
    fn sysext_fixture() -> Fixture {
        let fixture = Fixture::new();
        let file = fixture.file("usr/upper/bin/xfix", "hello");
        std::os::unix::fs::chown(&file, Some(1234), Some(5678)).expect("chown fixture file");
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .expect("chmod fixture file");
        fixture.xattr("usr/upper/bin/xfix", "user.test", b"kept");
        fixture.xattr("usr/upper/bin/xfix", "trusted.overlay.origin", b"\0\xfb");
        set_fixture_mtime(&file);
        let link = fixture.symlink("usr/upper/bin/xf", "../../nowhere/xfix");
        std::os::unix::fs::lchown(&link, Some(1234), Some(5678)).expect("chown fixture link");
        set_fixture_mtime(&link);
        let empty = fixture.dir("usr/upper/share/empty");
        set_fixture_mtime(&empty);
        set_fixture_mtime(&fixture.dev().join("usr/upper/bin"));
        fixture
    }

    fn staging(fixture: &Fixture) -> PathBuf {
        let to = fixture.dev().join("staged");
        fs::create_dir(&to).expect("create the staging directory");
        to
    }

    #[test]
    fn stage_keeps_mode_owner_mtime_target_and_xattrs() {
        let fixture = sysext_fixture();
        let paths = survey(fixture.dev()).expect("survey").sysext;
        let to = staging(&fixture);

        let staged = stage(fixture.dev(), &paths, &to).expect("stage");

        assert_eq!(
            staged,
            Staged {
                files: 1,
                directories: 4,
                symlinks: 1,
                bytes: 5
            }
        );
        let file = to.join("usr/bin/xfix");
        let metadata = fs::symlink_metadata(&file).expect("stat staged file");
        assert_eq!(
            fs::read_to_string(&file).expect("read staged file"),
            "hello"
        );
        assert_eq!(metadata.mode(), 0o104_755);
        assert_eq!((metadata.uid(), metadata.gid()), (1234, 5678));
        assert_mtime(&file);
        assert_eq!(xattr_list(&file), [b"user.test".to_vec()]);
        assert_eq!(
            xattr_value(&file, b"user.test").expect("read xattr"),
            b"kept"
        );

        let link = to.join("usr/bin/xf");
        assert_eq!(
            fs::read_link(&link).expect("read staged link"),
            Path::new("../../nowhere/xfix")
        );
        let metadata = fs::symlink_metadata(&link).expect("stat staged link");
        assert_eq!((metadata.uid(), metadata.gid()), (1234, 5678));
        assert_mtime(&link);
        assert_mtime(&to.join("usr/bin"));
        assert_mtime(&to.join("usr/share/empty"));
    }

    #[test]
    fn the_top_directory_is_root_owned_0755() {
        let fixture = sysext_fixture();
        fs::set_permissions(
            fixture.dev().join("usr/upper"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod the upper root");
        set_fixture_mtime(&fixture.dev().join("usr/upper"));
        let to = staging(&fixture);

        stage(fixture.dev(), &["usr".to_owned()], &to).expect("stage");

        let metadata = fs::symlink_metadata(to.join("usr")).expect("stat staged top");
        assert_eq!(metadata.mode(), 0o040_755);
        assert_eq!((metadata.uid(), metadata.gid()), (0, 0));
        assert_mtime(&to.join("usr"));
    }

    #[test]
    fn a_directory_that_became_a_symlink_is_refused_for_its_children() {
        let fixture = sysext_fixture();
        let paths = survey(fixture.dev()).expect("survey").sysext;
        let bin = fixture.dev().join("usr/upper/bin");
        fs::rename(&bin, fixture.dev().join("elsewhere")).expect("move bin away");
        std::os::unix::fs::symlink("../../elsewhere", &bin).expect("replace bin by a symlink");
        let to = staging(&fixture);

        let error = stage(fixture.dev(), &paths, &to).expect_err("bin is a symlink now");

        assert!(
            matches!(&error, StageError::Parent { path } if path == "usr/bin/xf"),
            "{error:?}"
        );
        assert!(!to.join("usr/bin/xf").exists());
    }

    #[test]
    fn a_file_that_became_a_symlink_is_refused_when_opened() {
        let fixture = sysext_fixture();
        let link = fixture.dev().join("usr/upper/bin/xf");
        let to = staging(&fixture);

        let error = copy_file(&link, &to.join("xf")).expect_err("not a regular file");

        assert!(
            matches!(&error, StageError::NotRegular { path } if path == &link),
            "{error:?}"
        );
    }

    #[test]
    fn a_special_file_is_refused() {
        let fixture = Fixture::new();
        let fifo = fixture.at("etc/upper/initctl");
        rustix::fs::mknodat(CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from(0o644), 0)
            .expect("create fifo");
        let to = staging(&fixture);

        let paths = ["etc".to_owned(), "etc/initctl".to_owned()];
        let error = stage(fixture.dev(), &paths, &to).expect_err("a fifo");

        assert!(
            matches!(&error, StageError::Unsupported { path } if path == &fifo),
            "{error:?}"
        );
    }

    #[test]
    fn paths_must_stay_inside_a_hierarchy() {
        let dev = Path::new("/dev-dir");
        for bad in ["var/x", "usr/../etc", "usr//x", "usr/./x", "/usr/x", ""] {
            assert!(
                matches!(locate(dev, bad), Err(StageError::InvalidPath { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            locate(dev, "etc/x").expect("a valid path"),
            Source::Entry(PathBuf::from("/dev-dir/etc/upper/x"))
        );
        assert_eq!(
            locate(dev, "opt").expect("a valid path"),
            Source::Top(Hierarchy::Opt)
        );
    }

    #[test]
    fn a_child_listed_before_its_parent_is_refused() {
        let fixture = sysext_fixture();
        let to = staging(&fixture);
        let paths = ["usr".to_owned(), "usr/bin/xfix".to_owned()];

        let error = stage(fixture.dev(), &paths, &to).expect_err("usr/bin not staged");

        assert!(matches!(error, StageError::Parent { .. }), "{error:?}");
    }
}

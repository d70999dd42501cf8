//! Leaving the initramfs: check the target init, move the API filesystems into the new root,
//! free the initramfs memory, make the new root `/`, and exec the target init as PID 1.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::paths::Paths;
use xorbang_formats::error_chain::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("init {init} does not exist in the new root")]
    InitMissing {
        init: PathBuf,
        source: rustix::io::Errno,
    },
    #[error("init {init} in the new root is not an executable file (mode {mode:o})")]
    InitNotExecutable { init: PathBuf, mode: u32 },
    #[error("cannot open the new root {path}")]
    OpenRoot {
        path: PathBuf,
        source: rustix::io::Errno,
    },
    #[error("{what} {path}")]
    Syscall {
        what: &'static str,
        path: PathBuf,
        source: rustix::io::Errno,
    },
    #[error("refusing to empty {path}: it is not the initramfs (filesystem type {fs_type:#x})")]
    NotInitramfs { path: PathBuf, fs_type: i64 },
    #[error("exec {init} failed")]
    Exec {
        init: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that `init` exists in `sysroot` and is executable, following symlinks as the new
/// root will see them (an absolute link like /sbin/init -> /lib/systemd/systemd resolves
/// inside the new root, not in the initramfs).
pub fn check_init(sysroot: &Path, init: &Path) -> Result<(), SwitchRootError> {
    let root = rustix::fs::open(sysroot, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).map_err(
        |source| SwitchRootError::OpenRoot {
            path: sysroot.to_owned(),
            source,
        },
    )?;
    let file = rustix::fs::openat2(
        &root,
        init,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .map_err(|source| SwitchRootError::InitMissing {
        init: init.to_owned(),
        source,
    })?;
    let stat = rustix::fs::fstat(&file).map_err(|source| SwitchRootError::InitMissing {
        init: init.to_owned(),
        source,
    })?;
    let is_file = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file();
    if !is_file || stat.st_mode & 0o111 == 0 {
        return Err(SwitchRootError::InitNotExecutable {
            init: init.to_owned(),
            mode: stat.st_mode,
        });
    }
    Ok(())
}

/// Moves /dev, /proc, /sys and /run into the new root, empties the initramfs and makes the
/// new root `/` of this process. Afterwards every path is a path of the new system.
pub fn enter_new_root(paths: &Paths) -> Result<(), SwitchRootError> {
    let sysroot = paths.sysroot();
    ensure_initramfs(paths.root())?;
    for api in [paths.dev(), paths.proc(), paths.sys(), paths.run()] {
        let name = api.file_name().map(PathBuf::from).unwrap_or_default();
        let target = sysroot.join(name);
        rustix::mount::mount_move(&api, &target).map_err(|source| SwitchRootError::Syscall {
            what: "cannot move mount to",
            path: target.clone(),
            source,
        })?;
    }
    let removed = empty_initramfs(paths.root());
    log::debug!("freed the initramfs ({removed} entries)");
    let syscall = |what, source| SwitchRootError::Syscall {
        what,
        path: sysroot.clone(),
        source,
    };
    rustix::process::chdir(&sysroot).map_err(|e| syscall("cannot chdir to", e))?;
    rustix::mount::mount_move(".", "/").map_err(|e| syscall("cannot move to / the mount", e))?;
    rustix::process::chroot(".").map_err(|e| syscall("cannot chroot into", e))?;
    rustix::process::chdir("/").map_err(|e| syscall("cannot chdir to / of", e))?;
    Ok(())
}

/// Refuses to delete anything that is not a ramfs or tmpfs root: running this on a real
/// disk by mistake would wipe it.
fn ensure_initramfs(root: &Path) -> Result<(), SwitchRootError> {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let statfs = rustix::fs::statfs(root).map_err(|source| SwitchRootError::Syscall {
        what: "cannot statfs",
        path: root.to_owned(),
        source,
    })?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures.
    let fs_type = statfs.f_type as i64;
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Err(SwitchRootError::NotInitramfs {
            path: root.to_owned(),
            fs_type,
        });
    }
    Ok(())
}

/// Deletes everything on the initramfs filesystem below `root` without crossing into other
/// filesystems (the new root is mounted below it). Returns how many entries went. Failures
/// only cost memory, so they are logged, not fatal.
fn empty_initramfs(root: &Path) -> usize {
    match std::fs::symlink_metadata(root) {
        Ok(meta) => remove_children_on_device(root, meta.dev()),
        Err(error) => {
            log::warn!(
                "cannot stat {}: {}; initramfs not freed",
                root.display(),
                error_chain(&error)
            );
            0
        }
    }
}

fn remove_children_on_device(dir: &Path, device: u64) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            log::warn!("cannot list {}: {}", dir.display(), error_chain(&error));
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != device {
            continue;
        }
        let result = if meta.is_dir() {
            removed += remove_children_on_device(&path, device);
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(error) => log::debug!("cannot remove {}: {}", path.display(), error_chain(&error)),
        }
    }
    removed
}

/// Replaces this process with the target init; returns only on failure.
pub fn exec_init(init: &Path, args: &[String]) -> SwitchRootError {
    let source = std::process::Command::new(init).args(args).exec();
    SwitchRootError::Exec {
        init: init.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn new_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("lib/systemd")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("sbin")).expect("mkdir");
        let systemd = root.path().join("lib/systemd/systemd");
        std::fs::write(&systemd, "#!").expect("write");
        std::fs::set_permissions(&systemd, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Absolute, as in Debian: it must resolve inside the new root.
        symlink("/lib/systemd/systemd", root.path().join("sbin/init")).expect("symlink");
        std::fs::write(root.path().join("sbin/plain"), "x").expect("write");
        root
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_new_root() {
        let root = new_root();
        check_init(root.path(), Path::new("/sbin/init")).expect("init is there");
    }

    #[test]
    fn missing_and_non_executable_inits_are_named() {
        let root = new_root();
        let missing = check_init(root.path(), Path::new("/sbin/nope")).expect_err("missing");
        assert!(missing
            .to_string()
            .starts_with("init /sbin/nope does not exist"));
        let plain = check_init(root.path(), Path::new("/sbin/plain")).expect_err("not exec");
        assert!(plain.to_string().contains("not an executable file"));
        let dir = check_init(root.path(), Path::new("/sbin")).expect_err("directory");
        assert!(dir.to_string().contains("not an executable file"));
    }

    #[test]
    fn emptying_refuses_a_root_that_is_not_an_initramfs() {
        // The test's temp directory lives on the build machine's disk (or a tmpfs): only the
        // former must be refused, and /proc is never an initramfs.
        let error = ensure_initramfs(Path::new("/proc")).expect_err("procfs is no initramfs");
        assert!(error.to_string().contains("not the initramfs"));
    }

    #[test]
    fn emptying_removes_everything_on_the_same_filesystem() {
        let root = new_root();
        let removed = remove_children_on_device(
            root.path(),
            std::fs::metadata(root.path()).expect("stat").dev(),
        );
        assert_eq!(removed, 6);
        assert_eq!(std::fs::read_dir(root.path()).expect("list").count(), 0);
    }
}

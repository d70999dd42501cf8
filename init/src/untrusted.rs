//! Reading files from storage that neither Secure Boot nor dm-verity covers: a config
//! partition, the ESP, the state partition, fw_cfg. Whoever wrote that storage chose what is
//! there, so a file is opened beneath its directory without following any symlink
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, never crossing into another
//! mount), non-blocking (a FIFO cannot stall PID 1), must be a regular file (`fstat`), and
//! is read only up to a bound known before reading.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
#[error("{}", path.display())]
pub struct UntrustedFileError {
    pub path: PathBuf,
    #[source]
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("is a symlink or has one on its way; refused on untrusted storage")]
    Symlink,
    #[error("is a {0}, not a regular file; refused on untrusted storage")]
    NotRegular(&'static str),
    #[error("is {size} bytes, more than the {max} bytes allowed")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot be read")]
    Io(#[source] std::io::Error),
}

/// The bytes of `relative` beneath `dir`, `None` when there is no such file.
pub fn read_beneath(
    dir: &Path,
    relative: &Path,
    max: u64,
) -> Result<Option<Vec<u8>>, UntrustedFileError> {
    let path = dir.join(relative);
    let Some((file, size)) = open_beneath(dir, relative, max)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // One byte past the bound at most: a file can grow after fstat.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| UntrustedFileError {
            path: path.clone(),
            problem: Problem::Io(error),
        })?;
    check_bound(&path, bytes.len() as u64, max)?;
    Ok(Some(bytes))
}

/// Copies `relative` beneath `dir` to the new file `to` (in memory, on /run), so nothing
/// keeps the untrusted file system busy afterwards; `None` when there is no such file.
pub fn copy_beneath(
    dir: &Path,
    relative: &Path,
    max: u64,
    to: &Path,
) -> Result<Option<u64>, UntrustedFileError> {
    let path = dir.join(relative);
    let Some((file, _)) = open_beneath(dir, relative, max)? else {
        return Ok(None);
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| UntrustedFileError {
            path,
            problem: Problem::Io(error),
        }
    };
    let mut out = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io(to))?;
    let copied = std::io::copy(&mut file.take(max + 1), &mut out).map_err(io(to))?;
    check_bound(&path, copied, max)?;
    Ok(Some(copied))
}

/// Opens a regular file beneath `dir` and returns it with its size, or refuses it.
fn open_beneath(
    dir: &Path,
    relative: &Path,
    max: u64,
) -> Result<Option<(File, u64)>, UntrustedFileError> {
    let path = dir.join(relative);
    let fail = |problem| UntrustedFileError {
        path: path.clone(),
        problem,
    };
    let io = |errno: Errno| fail(Problem::Io(errno.into()));
    let base = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)?;
    let opened = rustix::fs::openat2(
        &base,
        relative,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) | Err(Errno::XDEV) => return Err(fail(Problem::Symlink)),
        Err(errno) => return Err(io(errno)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(io)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(fail(Problem::NotRegular(kind_name(kind))));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    check_bound(&path, size, max)?;
    Ok(Some((File::from(fd), size)))
}

fn check_bound(path: &Path, size: u64, max: u64) -> Result<(), UntrustedFileError> {
    match size > max {
        true => Err(UntrustedFileError {
            path: path.to_owned(),
            problem: Problem::TooLarge { size, max },
        }),
        false => Ok(()),
    }
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Directory => "directory",
        FileType::Socket => "socket",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::error_chain::error_chain;

    fn problem(dir: &Path, relative: &str, max: u64) -> String {
        let error = read_beneath(dir, Path::new(relative), max).expect_err(relative);
        error_chain(&error)
    }

    #[test]
    fn only_regular_files_beneath_the_directory_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("config"), "hello").expect("write");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), "x").expect("write");
        assert_eq!(
            read_beneath(root, Path::new("config"), 5).expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            read_beneath(root, Path::new("sub/file"), 5).expect("read"),
            Some(b"x".to_vec())
        );
        assert_eq!(
            read_beneath(root, Path::new("absent"), 5).expect("absent"),
            None
        );
        assert!(problem(root, "config", 4).ends_with("is 5 bytes, more than the 4 bytes allowed"));

        std::os::unix::fs::symlink("config", root.join("link")).expect("symlink");
        std::os::unix::fs::symlink("/etc", root.join("dirlink")).expect("symlink");
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).expect("symlink");
        for link in ["link", "dirlink/hostname", "zero", "../config"] {
            assert!(
                problem(root, link, 100).contains("is a symlink or has one"),
                "{link}"
            );
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(problem(root, "fifo", 100)
            .ends_with("is a FIFO, not a regular file; refused on untrusted storage"));
        assert!(problem(root, "sub", 100).contains("is a directory"));
    }

    #[test]
    fn copies_go_to_a_new_file_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("image.raw"), "12345").expect("write");
        let copy = root.join("copy.raw");
        assert_eq!(
            copy_beneath(root, Path::new("image.raw"), 5, &copy).expect("copied"),
            Some(5)
        );
        assert_eq!(std::fs::read(&copy).expect("read"), b"12345");
        // Never over an existing file (a planted symlink included).
        assert!(copy_beneath(root, Path::new("image.raw"), 5, &copy).is_err());
        let error = copy_beneath(root, Path::new("image.raw"), 4, &root.join("small.raw"))
            .expect_err("too large");
        let chain = xorbang_formats::error_chain::error_chain(&error);
        assert!(chain.ends_with("more than the 4 bytes allowed"), "{chain}");
    }
}

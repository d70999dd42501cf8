//! What a set of packages changes in a root: the difference between the base root and the
//! same root with the packages installed, split the way extensions can carry it. New and
//! changed files under /usr and /opt go into a system extension; new files under /etc into a
//! companion configuration extension; dpkg's database, apt's lists and caches and logs are
//! dropped (the extension records its package list instead). A change to a file the base
//! already has in /etc, or a file anywhere else, cannot be carried: an extension replaces
//! whole files, and merges only /usr, /opt and /etc. Those are listed, with the package that
//! owns each path when dpkg knows one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::file_error::{FileAction, FileError};
use crate::sorted_dir::sorted_names;

/// Where a changed path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative paths (`usr/bin/strace`) for the system extension, directories included.
    pub sysext: Vec<String>,
    /// Relative paths for the configuration extension.
    pub confext: Vec<String>,
    /// Directories under /var the packages create; left to the package or systemd-tmpfiles at
    /// runtime.
    pub dropped_dirs: Vec<String>,
    /// Alternatives the base had chosen that the packages would switch: the base's choice
    /// stays (the extension's program is still there under its own name).
    pub kept_alternatives: Vec<String>,
    /// What cannot be carried, and why.
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: String,
    pub reason: &'static str,
}

/// What belongs to the package manager, not to the system: its databases, caches and logs,
/// the linker cache it refreshes (libraries in /usr/lib are found without it), and what its
/// scripts leave in /run and /tmp (locks such as adduser's; empty file systems at boot).
const PACKAGE_STATE: &[&str] = &[
    "run",
    "tmp",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/lib/systemd/deb-systemd-helper-enabled",
    "var/lib/systemd/deb-systemd-helper-masked",
    "var/cache",
    "var/log",
    "etc/ld.so.cache",
];

/// Secrets a package makes at install time that belong to one machine, never to an image:
/// the image step removes them, and they differ between any two installs.
pub const MACHINE_SECRETS: &[&str] = &["etc/ssh/ssh_host_"];

/// Compares `with` (the root with the packages) against `base`.
pub fn difference(base: &Path, with: &Path) -> Result<Difference, FileError> {
    let mut found = Difference {
        sysext: Vec::new(),
        confext: Vec::new(),
        dropped_dirs: Vec::new(),
        kept_alternatives: Vec::new(),
        refused: Vec::new(),
    };
    walk(base, with, Path::new(""), &mut found)?;
    Ok(found)
}

fn walk(
    base: &Path,
    with: &Path,
    relative: &Path,
    found: &mut Difference,
) -> Result<(), FileError> {
    for name in sorted_names(&with.join(relative))? {
        let path = relative.join(&name);
        let text = path.to_string_lossy().into_owned();
        let package_state = PACKAGE_STATE
            .iter()
            .any(|state| text == *state || text.starts_with(&format!("{state}/")));
        let secret = MACHINE_SECRETS
            .iter()
            .any(|secret| text.starts_with(secret));
        if package_state || secret {
            continue;
        }
        let new = with.join(&path);
        let meta = fs::symlink_metadata(&new).map_err(FileError::of(FileAction::Inspect, &new))?;
        let old = base.join(&path);
        let before = fs::symlink_metadata(&old).ok();
        let same = match &before {
            Some(before) => same_entry(before, &old, &meta, &new)?,
            None => false,
        };
        if !same {
            classify(&text, before.is_some(), meta.is_dir(), found);
        }
        if meta.is_dir() {
            walk(base, with, &path, found)?;
        }
    }
    Ok(())
}

/// Whether the entry is unchanged: same type, mode, owner, and content or link target.
/// A directory counts as unchanged when its metadata is (its entries are compared one by one).
fn same_entry(
    before: &fs::Metadata,
    old: &Path,
    after: &fs::Metadata,
    new: &Path,
) -> Result<bool, FileError> {
    if before.mode() != after.mode() || before.uid() != after.uid() || before.gid() != after.gid() {
        return Ok(false);
    }
    if after.file_type().is_symlink() {
        let read = |path: &Path| fs::read_link(path).map_err(FileError::of(FileAction::Read, path));
        return Ok(read(old)? == read(new)?);
    }
    if after.is_file() {
        return Ok(before.len() == after.len() && same_contents(old, new)?);
    }
    Ok(true)
}

fn same_contents(first: &Path, second: &Path) -> Result<bool, FileError> {
    let open = |path: &Path| fs::File::open(path).map_err(FileError::of(FileAction::Open, path));
    let (mut a, mut b) = (open(first)?, open(second)?);
    let (mut x, mut y) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut x, first)?;
        let m = read_full(&mut b, &mut y, second)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut fs::File, buffer: &mut [u8], path: &Path) -> Result<usize, FileError> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = file
            .read(&mut buffer[filled..])
            .map_err(FileError::of(FileAction::Read, path))?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

fn classify(path: &str, existed: bool, is_dir: bool, found: &mut Difference) {
    let top = path.split('/').next().unwrap_or_default();
    let refuse = |found: &mut Difference, reason| {
        found.refused.push(Refused {
            path: format!("/{path}"),
            reason,
        })
    };
    match top {
        "usr" | "opt" => found.sysext.push(path.to_owned()),
        "etc" if !existed => found.confext.push(path.to_owned()),
        // A directory's own metadata (a changed mode) is left as the base has it.
        "etc" if is_dir => {}
        "etc" if path.starts_with("etc/alternatives/") => {
            found.kept_alternatives.push(format!("/{path}"))
        }
        "etc" => refuse(
            found,
            "changes a file the base has in /etc (an extension would replace it whole)",
        ),
        "var" if is_dir => found.dropped_dirs.push(format!("/{path}")),
        _ if is_dir && existed => {}
        _ => refuse(
            found,
            "is outside /usr, /opt and /etc, which extensions merge",
        ),
    }
}

/// The packages that own `paths`, from dpkg's file lists in `root`.
pub fn owners(
    root: &Path,
    paths: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>, FileError> {
    let info = root.join("var/lib/dpkg/info");
    let mut owners = BTreeMap::new();
    for entry in fs::read_dir(&info).map_err(FileError::of(FileAction::ListDirectory, &info))? {
        let path = entry
            .map_err(FileError::of(FileAction::ListDirectory, &info))?
            .path();
        let Some(package) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".list"))
        else {
            continue;
        };
        let text = fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
        for line in text.lines().filter(|line| paths.contains(*line)) {
            owners.insert(
                line.to_owned(),
                package.split(':').next().unwrap_or(package).to_owned(),
            );
        }
    }
    Ok(owners)
}

/// `name version` of every package installed in `with` and not (or at another version) in
/// `base`, from dpkg's status files.
pub fn added_packages(base: &Path, with: &Path) -> Result<Vec<String>, FileError> {
    let before = installed(base)?;
    Ok(installed(with)?
        .into_iter()
        .filter(|(name, version)| before.get(name) != Some(version))
        .map(|(name, version)| format!("{name} {version}"))
        .collect())
}

fn installed(root: &Path) -> Result<BTreeMap<String, String>, FileError> {
    let path = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
    Ok(parse_status(&text))
}

/// Installed packages and their versions from a dpkg status file.
fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.split("\n\n")
        .filter_map(|paragraph| {
            let field = |key: &str| {
                paragraph
                    .lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                    .map(str::trim)
            };
            let installed = field("Status").is_some_and(|status| status.ends_with(" installed"));
            let version = field("Version")?;
            let package = field("Package")?;
            installed.then(|| (package.to_owned(), version.to_owned()))
        })
        .collect()
}

/// Relative `paths` of `from`, copied with their metadata into `to` by tar (which keeps
/// owners, modes, links and extended attributes), each entry on its own.
pub fn copy_entries(from: &Path, paths: &[String], to: &Path) -> Result<(), FileError> {
    let list = to.with_extension("list");
    fs::write(&list, paths.join("\n") + "\n").map_err(FileError::of(FileAction::Write, &list))?;
    fs::create_dir_all(to).map_err(FileError::of(FileAction::CreateDirectory, to))?;
    let script = "tar -C \"$1\" --no-recursion --xattrs --xattrs-include='*' -cf - -T \"$3\" \
                  | tar -C \"$2\" --numeric-owner --xattrs --xattrs-include='*' -xf -";
    let status = std::process::Command::new("sh")
        .args(["-c", script, "copy"])
        .arg(from)
        .arg(to)
        .arg(&list)
        .status()
        .map_err(FileError::of(FileAction::Read, from))?;
    fs::remove_file(&list).map_err(FileError::of(FileAction::Remove, &list))?;
    match status.success() {
        true => Ok(()),
        false => Err(FileError::of(FileAction::Read, from)(
            std::io::Error::other(format!(
                "tar copying into {} failed ({status})",
                to.display()
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn new_files_split_by_where_extensions_merge_them() {
        let base = tempfile::tempdir().expect("base");
        let with = tempfile::tempdir().expect("with");
        for root in [base.path(), with.path()] {
            write(root, "usr/bin/ls", "ls");
            write(root, "etc/passwd", "root");
            write(root, "var/lib/dpkg/status", "");
            symlink("usr/bin", root.join("bin")).expect("symlink");
        }
        write(with.path(), "usr/bin/strace", "strace");
        write(with.path(), "usr/bin/ls", "a newer ls");
        write(with.path(), "opt/tool/run", "run");
        write(with.path(), "etc/strace.conf", "conf");
        write(with.path(), "etc/passwd", "root\nstrace");
        write(base.path(), "etc/ssh/ssh_host_ed25519_key", "one machine");
        write(
            with.path(),
            "etc/ssh/ssh_host_ed25519_key",
            "another machine",
        );
        write(base.path(), "etc/alternatives/pager", "more");
        write(with.path(), "etc/alternatives/pager", "less");
        write(with.path(), "var/lib/dpkg/status", "changed");
        write(with.path(), "var/log/apt/history.log", "log");
        write(with.path(), "run/adduser", "");
        write(with.path(), "tmp/scratch", "");
        fs::create_dir_all(with.path().join("var/lib/tool")).expect("mkdir");
        write(with.path(), "srv/data", "data");
        let found = difference(base.path(), with.path()).expect("difference");
        assert_eq!(
            found.sysext,
            [
                "opt",
                "opt/tool",
                "opt/tool/run",
                "usr/bin/ls",
                "usr/bin/strace"
            ]
        );
        assert_eq!(found.confext, ["etc/strace.conf"]);
        assert_eq!(found.dropped_dirs, ["/var/lib/tool"]);
        assert_eq!(found.kept_alternatives, ["/etc/alternatives/pager"]);
        let refused: Vec<&str> = found.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(refused, ["/etc/passwd", "/srv", "/srv/data"]);
    }

    #[test]
    fn status_files_give_installed_packages() {
        let status = "Package: a\nStatus: install ok installed\nVersion: 1\n\n\
                      Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                      Package: c\nVersion: 3:1.0-1\nStatus: install ok installed\n";
        let parsed = parse_status(status);
        assert_eq!(parsed.get("a").map(String::as_str), Some("1"));
        assert_eq!(parsed.get("b"), None);
        assert_eq!(parsed.get("c").map(String::as_str), Some("3:1.0-1"));
    }
}

//! Reads a dev-mode machine's overlay upper directories and sorts every change into what an
//! extension can carry (files, symlinks and the directories holding them, under /usr, /opt and
//! /etc) and what it cannot (deletions, opaque directories, the package database, anything
//! outside the merged hierarchies), each with the reason shown to the user.
//!
//! Only `lstat`, `llistxattr` and `lgetxattr` touch the uppers: symlinks are never followed and
//! nothing is written, so surveying a live overlay's upper is safe.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::io::Errno;

/// Marks a directory that replaces the lower one (value `y`).
const OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// Written for renamed directories when `redirect_dir=on`; we mount with it off.
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
/// Written for metadata-only copy-ups when `metacopy=on`; we mount with it off.
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
/// Overlay's own bookkeeping, never copied into an extension.
pub(crate) const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// Where extensions keep their release files, relative to the image root.
const EXTENSION_RELEASE_DIRS: &[&str] = &["usr/lib/extension-release.d", "etc/extension-release.d"];
/// dpkg's database, which the root overlay's upper carries after any `apt install`.
const PACKAGE_DATABASE: &str = "/var/lib/dpkg";

/// A hierarchy with its own overlay, whose changes an extension can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    Usr,
    Opt,
    Etc,
}

/// Which kind of extension merges a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// A system extension (systemd-sysext): /usr and /opt.
    System,
    /// A configuration extension (systemd-confext): /etc.
    Configuration,
}

impl Hierarchy {
    pub const ALL: [Hierarchy; 3] = [Hierarchy::Usr, Hierarchy::Opt, Hierarchy::Etc];

    /// The directory's name under `/`, under the dev directory and in an extension image.
    pub fn name(self) -> &'static str {
        match self {
            Hierarchy::Usr => "usr",
            Hierarchy::Opt => "opt",
            Hierarchy::Etc => "etc",
        }
    }

    /// The hierarchy named `name` (the first component of an extension-relative path).
    pub fn from_name(name: &str) -> Option<Hierarchy> {
        Hierarchy::ALL.into_iter().find(|h| h.name() == name)
    }

    /// systemd-sysext merges /usr and /opt, systemd-confext merges /etc.
    pub fn extension(self) -> Extension {
        match self {
            Hierarchy::Usr | Hierarchy::Opt => Extension::System,
            Hierarchy::Etc => Extension::Configuration,
        }
    }

    /// The upper directory of this hierarchy's overlay in the dev directory.
    pub fn upper(self, dev: &Path) -> PathBuf {
        dev.join(self.name()).join("upper")
    }
}

/// Every change found in the uppers, sorted into what the commit carries and what it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Paths relative to the extension image root (e.g. "usr/bin/xfix", "usr/bin"), directories included,
    /// sorted so that every parent comes before its children; only entries that exist in the upper.
    pub sysext: Vec<String>,
    /// Likewise for the configuration extension, e.g. "etc/xorbang-local.conf".
    pub confext: Vec<String>,
    /// Sorted by path.
    pub not_committed: Vec<NotCommitted>,
}

/// A change the commit leaves out, so the user can see it will not survive a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCommitted {
    /// Absolute, as the running system sees it, e.g. "/etc/issue.net".
    pub path: String,
    pub reason: Reason,
}

/// Why a change is not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A whiteout.
    Deleted,
    /// An opaque directory, with the number of entries below it (recursively).
    Opaque { entries: usize },
    /// Anything under /var/lib/dpkg.
    PackageDatabase,
    /// Anything else in the root overlay's upper.
    OutsideExtensions,
    /// A fifo, socket or device that is not a whiteout.
    SpecialFile,
    /// Anything under an extension-release.d directory.
    ExtensionRelease,
    /// A file that identifies this machine or caches its state (see [`MACHINE_STATE`]).
    MachineState,
}

/// Files in /etc that belong to one machine, never to a layer others boot: its identity and
/// host keys, and what tools regenerate (the linker cache, lock files).
const MACHINE_STATE: &[&str] = &[
    "etc/machine-id",
    "etc/ld.so.cache",
    "etc/.pwd.lock",
    "etc/ssh/ssh_host_",
];

fn is_machine_state(rel: &str) -> bool {
    MACHINE_STATE
        .iter()
        .any(|prefix| match prefix.ends_with('_') {
            true => rel.starts_with(prefix),
            false => rel == *prefix,
        })
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Deleted => f.write_str(
                "deleted here; an extension can only add files, so the base's copy stays",
            ),
            Reason::Opaque { entries } => write!(
                f,
                "replaces the base's directory ({entries} entries inside, not committed either); \
                 an extension can only add to a directory"
            ),
            Reason::PackageDatabase => f.write_str(
                "dpkg's database does not merge across layers; \
                 the system extension records its package list instead",
            ),
            Reason::OutsideExtensions => {
                f.write_str("outside /usr, /opt and /etc, which extensions merge")
            }
            Reason::SpecialFile => {
                f.write_str("a special file; extensions carry files, directories and symlinks")
            }
            Reason::ExtensionRelease => {
                f.write_str("an extension release file; the commit writes its own")
            }
            Reason::MachineState => f.write_str(
                "belongs to this machine (its identity, keys or caches), not to a layer",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SurveyError {
    #[error("{} has trusted.overlay.redirect: the overlay ran with redirect_dir=on, which commits do not support", .path.display())]
    Redirect { path: PathBuf },
    #[error("{} has trusted.overlay.metacopy: the overlay ran with metacopy=on, which commits do not support", .path.display())]
    Metacopy { path: PathBuf },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not UTF-8", .path.display())]
    NotUtf8 { path: PathBuf },
}

/// What an upper entry means to the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Symlink,
    Directory,
    OpaqueDirectory,
    Whiteout,
    Special,
}

/// Reads the uppers under `dev` (`root`, `usr`, `opt`, `etc`; a missing one is empty).
pub fn survey(dev: &Path) -> Result<Survey, SurveyError> {
    let mut survey = Survey::default();
    for hierarchy in Hierarchy::ALL {
        let committed = survey_hierarchy(dev, hierarchy, &mut survey.not_committed)?;
        match hierarchy.extension() {
            Extension::System => survey.sysext.extend(committed),
            Extension::Configuration => survey.confext.extend(committed),
        }
    }
    survey_root(&dev.join("root").join("upper"), &mut survey.not_committed)?;
    survey.not_committed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(survey)
}

/// The committed paths of one hierarchy. Its upper root is the mount point, not a new
/// directory: it is committed only as the parent of something.
fn survey_hierarchy(
    dev: &Path,
    hierarchy: Hierarchy,
    not_committed: &mut Vec<NotCommitted>,
) -> Result<Vec<String>, SurveyError> {
    let upper = hierarchy.upper(dev);
    if !exists(&upper)? {
        return Ok(Vec::new());
    }
    let below = commit_children(&upper, hierarchy.name(), not_committed)?;
    if below.is_empty() {
        return Ok(below);
    }
    let mut committed = vec![hierarchy.name().to_owned()];
    committed.extend(below);
    Ok(committed)
}

/// The committed paths below the directory `dir` (extension-relative `rel`), parents first.
fn commit_children(
    dir: &Path,
    rel: &str,
    not_committed: &mut Vec<NotCommitted>,
) -> Result<Vec<String>, SurveyError> {
    let mut committed = Vec::new();
    for name in sorted_names(dir)? {
        let path = dir.join(&name);
        let rel = format!("{rel}/{}", utf8(&path, &name)?);
        if EXTENSION_RELEASE_DIRS.contains(&rel.as_str()) {
            list_entry(
                &path,
                format!("/{rel}"),
                Listing::ExtensionRelease,
                not_committed,
            )?;
            continue;
        }
        match inspect(&path)? {
            Kind::File | Kind::Symlink if is_machine_state(&rel) => {
                not_committed.push(NotCommitted {
                    path: format!("/{rel}"),
                    reason: Reason::MachineState,
                });
            }
            Kind::File | Kind::Symlink => committed.push(rel),
            Kind::Directory => committed.extend(commit_directory(&path, rel, not_committed)?),
            kind => not_committed.push(NotCommitted {
                reason: hierarchy_reason(&path, kind)?,
                path: format!("/{rel}"),
            }),
        }
    }
    Ok(committed)
}

/// A directory is committed with what is committed below it, or alone when it is a new empty
/// one; a directory holding only uncommitted entries (e.g. whiteouts) is left out.
fn commit_directory(
    dir: &Path,
    rel: String,
    not_committed: &mut Vec<NotCommitted>,
) -> Result<Vec<String>, SurveyError> {
    let below = commit_children(dir, &rel, not_committed)?;
    if below.is_empty() && !sorted_names(dir)?.is_empty() {
        return Ok(below);
    }
    let mut committed = vec![rel];
    committed.extend(below);
    Ok(committed)
}

/// Why an entry of a hierarchy's upper that is neither a file, a symlink nor a plain directory
/// is not committed.
fn hierarchy_reason(path: &Path, kind: Kind) -> Result<Reason, SurveyError> {
    Ok(match kind {
        Kind::Whiteout => Reason::Deleted,
        Kind::OpaqueDirectory => Reason::Opaque {
            entries: count_entries(path)?,
        },
        _ => Reason::SpecialFile,
    })
}

/// Lists the root overlay's changes: none of them can be committed.
fn survey_root(upper: &Path, not_committed: &mut Vec<NotCommitted>) -> Result<(), SurveyError> {
    if !exists(upper)? {
        return Ok(());
    }
    for name in sorted_names(upper)? {
        let path = upper.join(&name);
        let abs = format!("/{}", utf8(&path, &name)?);
        list_entry(&path, abs, Listing::Root, not_committed)?;
    }
    Ok(())
}

/// How a subtree that is listed entry by entry (never committed) names its reasons.
#[derive(Debug, Clone, Copy)]
enum Listing {
    /// The root overlay's upper.
    Root,
    /// An extension-release.d directory in a hierarchy.
    ExtensionRelease,
}

impl Listing {
    fn reason(self, abs: &str, path: &Path, kind: Kind) -> Result<Reason, SurveyError> {
        Ok(match (self, kind) {
            (Listing::ExtensionRelease, _) => Reason::ExtensionRelease,
            _ if is_package_database(abs) => Reason::PackageDatabase,
            (Listing::Root, Kind::Whiteout) => Reason::Deleted,
            (Listing::Root, Kind::OpaqueDirectory) => Reason::Opaque {
                entries: count_entries(path)?,
            },
            (Listing::Root, _) => Reason::OutsideExtensions,
        })
    }
}

/// Lists the entry at `path` (absolute system path `abs`): a plain directory through its
/// entries, or itself when empty (a new empty directory is a change too); anything else,
/// opaque directories included, as one entry.
fn list_entry(
    path: &Path,
    abs: String,
    listing: Listing,
    not_committed: &mut Vec<NotCommitted>,
) -> Result<(), SurveyError> {
    let kind = inspect(path)?;
    let names = match kind {
        Kind::Directory => sorted_names(path)?,
        _ => Vec::new(),
    };
    if names.is_empty() {
        let reason = listing.reason(&abs, path, kind)?;
        not_committed.push(NotCommitted { path: abs, reason });
        return Ok(());
    }
    for name in names {
        let child = path.join(&name);
        let child_abs = format!("{abs}/{}", utf8(&child, &name)?);
        list_entry(&child, child_abs, listing, not_committed)?;
    }
    Ok(())
}

fn is_package_database(abs: &str) -> bool {
    abs.strip_prefix(PACKAGE_DATABASE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The number of entries below `dir`, recursively: what an opaque directory hides from the
/// user's view of the commit. Each is still inspected, so a redirect or metacopy anywhere
/// fails the survey.
fn count_entries(dir: &Path) -> Result<usize, SurveyError> {
    let mut count = 0;
    for name in sorted_names(dir)? {
        let path = dir.join(name);
        count += 1;
        if matches!(inspect(&path)?, Kind::Directory | Kind::OpaqueDirectory) {
            count += count_entries(&path)?;
        }
    }
    Ok(count)
}

/// What `path` is to the overlay, refusing the xattrs of options we never mount with.
fn inspect(path: &Path) -> Result<Kind, SurveyError> {
    let read = |errno: Errno| SurveyError::Read {
        path: path.to_owned(),
        source: errno.into(),
    };
    let stat = rustix::fs::lstat(path).map_err(read)?;
    let names = xattr_names(path).map_err(read)?;
    if names.iter().any(|n| n == REDIRECT) {
        return Err(SurveyError::Redirect {
            path: path.to_owned(),
        });
    }
    if names.iter().any(|n| n == METACOPY) {
        return Err(SurveyError::Metacopy {
            path: path.to_owned(),
        });
    }
    let opaque = names.iter().any(|n| n == OPAQUE)
        && xattr_value(path, OPAQUE).map_err(read)?.first() == Some(&b'y');
    Ok(classify(
        FileType::from_raw_mode(stat.st_mode),
        stat.st_rdev,
        opaque,
    ))
}

/// The overlay's reading of an upper entry (Linux 6.1 format).
fn classify(file_type: FileType, rdev: u64, opaque: bool) -> Kind {
    match file_type {
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        FileType::Directory if opaque => Kind::OpaqueDirectory,
        FileType::Directory => Kind::Directory,
        FileType::CharacterDevice if rdev == 0 => Kind::Whiteout,
        _ => Kind::Special,
    }
}

/// Whether an upper exists: a hierarchy without one has no changes.
fn exists(path: &Path) -> Result<bool, SurveyError> {
    match rustix::fs::lstat(path) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(errno) => Err(SurveyError::Read {
            path: path.to_owned(),
            source: errno.into(),
        }),
    }
}

/// The names in `dir`, sorted by bytes so the survey is the same on every run.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>, SurveyError> {
    let read = |source| SurveyError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `name` as text: the survey's paths are strings shown to the user and written to manifests.
fn utf8<'a>(path: &Path, name: &'a OsString) -> Result<&'a str, SurveyError> {
    name.to_str().ok_or_else(|| SurveyError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// The names of `path`'s extended attributes (the symlink's own, never its target's).
pub(crate) fn xattr_names(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let list = read_sized(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
    )?;
    Ok(list
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The value of `path`'s extended attribute `name` (the symlink's own, never its target's).
pub(crate) fn xattr_value(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    read_sized(
        || rustix::fs::lgetxattr_query(path, name),
        |buf| rustix::fs::lgetxattr(path, name, buf),
    )
}

/// Queries a size, then reads that much; a list or value that grew in between (`ERANGE`) is
/// read again, since the upper belongs to a running system.
fn read_sized(
    query: impl Fn() -> Result<usize, Errno>,
    read: impl Fn(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    loop {
        let mut buf = vec![0; query()?];
        match read(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustix::fs::{Mode, XattrFlags, CWD};
    use std::fs;

    /// Builds fixture trees under a dev directory, creating parents as needed.
    pub(crate) struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        pub(crate) fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().expect("create a temporary dev directory"),
            }
        }

        pub(crate) fn dev(&self) -> &Path {
            self.dir.path()
        }

        /// The path of `rel` under the dev directory, with its parents created.
        pub(crate) fn at(&self, rel: &str) -> PathBuf {
            let path = self.dev().join(rel);
            let parent = path.parent().expect("fixture paths have a parent");
            fs::create_dir_all(parent).expect("create fixture parents");
            path
        }

        pub(crate) fn file(&self, rel: &str, contents: &str) -> PathBuf {
            let path = self.at(rel);
            fs::write(&path, contents).expect("write fixture file");
            path
        }

        pub(crate) fn dir(&self, rel: &str) -> PathBuf {
            let path = self.at(rel);
            fs::create_dir(&path).expect("create fixture directory");
            path
        }

        pub(crate) fn symlink(&self, rel: &str, target: &str) -> PathBuf {
            let path = self.at(rel);
            std::os::unix::fs::symlink(target, &path).expect("create fixture symlink");
            path
        }

        fn whiteout(&self, rel: &str) {
            let path = self.at(rel);
            rustix::fs::mknodat(
                CWD,
                &path,
                FileType::CharacterDevice,
                Mode::from(0o644),
                rustix::fs::makedev(0, 0),
            )
            .expect("create whiteout");
        }

        fn fifo(&self, rel: &str) {
            let path = self.at(rel);
            rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from(0o644), 0)
                .expect("create fifo");
        }

        pub(crate) fn xattr(&self, rel: &str, name: &str, value: &[u8]) {
            rustix::fs::lsetxattr(self.dev().join(rel), name, value, XattrFlags::empty())
                .expect("set fixture xattr");
        }

        fn survey(&self) -> Survey {
            survey(self.dev()).expect("survey the fixture")
        }
    }

    fn not_committed(path: &str, reason: Reason) -> NotCommitted {
        NotCommitted {
            path: path.to_owned(),
            reason,
        }
    }

    #[test]
    fn machine_state_in_etc_is_not_committed() {
        for (rel, expected) in [
            ("etc/machine-id", true),
            ("etc/ssh/ssh_host_ed25519_key", true),
            ("etc/ld.so.cache", true),
            ("etc/machine-id.d", false),
            ("etc/ssh/sshd_config", false),
        ] {
            assert_eq!(is_machine_state(rel), expected, "{rel}");
        }
    }

    #[test]
    fn a_missing_dev_directory_has_no_changes() {
        let fixture = Fixture::new();
        assert_eq!(fixture.survey(), Survey::default());
    }

    #[test]
    fn files_symlinks_and_new_empty_directories_are_committed_parents_first() {
        let fixture = Fixture::new();
        fixture.file("usr/upper/bin/xfix", "#!/bin/sh\n");
        fixture.symlink("usr/upper/bin/xf", "xfix");
        fixture.dir("usr/upper/share/xfix");
        fixture.file("opt/upper/tool/run", "");
        fixture.file("etc/upper/xorbang-local.conf", "a=1\n");
        fixture.dir("usr/work/work");

        let survey = fixture.survey();

        assert_eq!(
            survey.sysext,
            [
                "usr",
                "usr/bin",
                "usr/bin/xf",
                "usr/bin/xfix",
                "usr/share",
                "usr/share/xfix",
                "opt",
                "opt/tool",
                "opt/tool/run"
            ]
        );
        assert_eq!(survey.confext, ["etc", "etc/xorbang-local.conf"]);
        assert_eq!(survey.not_committed, []);
    }

    #[test]
    fn an_empty_upper_commits_nothing() {
        let fixture = Fixture::new();
        fixture.dir("usr/upper");
        assert_eq!(fixture.survey(), Survey::default());
    }

    #[test]
    fn whiteouts_are_deleted_and_their_directory_is_not_committed_for_them() {
        let fixture = Fixture::new();
        fixture.whiteout("etc/upper/issue.net");
        fixture.whiteout("usr/upper/share/doc/old");

        let survey = fixture.survey();

        assert_eq!(survey.sysext, Vec::<String>::new());
        assert_eq!(survey.confext, Vec::<String>::new());
        assert_eq!(
            survey.not_committed,
            [
                not_committed("/etc/issue.net", Reason::Deleted),
                not_committed("/usr/share/doc/old", Reason::Deleted),
            ]
        );
    }

    #[test]
    fn an_opaque_directory_is_listed_once_with_its_entries_counted() {
        let fixture = Fixture::new();
        fixture.file("usr/upper/share/icons/a.png", "");
        fixture.file("usr/upper/share/icons/sub/b.png", "");
        fixture.whiteout("usr/upper/share/icons/sub/gone");
        fixture.xattr("usr/upper/share/icons", "trusted.overlay.opaque", b"y");
        fixture.file("usr/upper/share/kept", "");

        let survey = fixture.survey();

        assert_eq!(survey.sysext, ["usr", "usr/share", "usr/share/kept"]);
        assert_eq!(
            survey.not_committed,
            [not_committed(
                "/usr/share/icons",
                Reason::Opaque { entries: 4 }
            )]
        );
    }

    #[test]
    fn an_opaque_xattr_other_than_y_is_a_plain_directory() {
        let fixture = Fixture::new();
        fixture.file("etc/upper/d/f", "");
        fixture.xattr("etc/upper/d", "trusted.overlay.opaque", b"n");
        assert_eq!(fixture.survey().confext, ["etc", "etc/d", "etc/d/f"]);
    }

    #[test]
    fn redirect_and_metacopy_fail_the_survey_naming_the_path() {
        for xattr in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
            let fixture = Fixture::new();
            fixture.file("usr/upper/bin/moved", "");
            fixture.xattr("usr/upper/bin/moved", xattr, b"/x");

            let error = survey(fixture.dev()).expect_err("an unsupported upper");

            let path = fixture.dev().join("usr/upper/bin/moved");
            match &error {
                SurveyError::Redirect { path: p } | SurveyError::Metacopy { path: p } => {
                    assert_eq!(p, &path)
                }
                other => panic!("unexpected error {other:?}"),
            }
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(xattr), "{message}");
        }
    }

    #[test]
    fn overlay_markers_are_harmless() {
        let fixture = Fixture::new();
        fixture.file("usr/upper/bin/xfix", "");
        fixture.xattr("usr/upper/bin/xfix", "trusted.overlay.origin", b"\0\xfb");
        fixture.xattr("usr/upper/bin", "trusted.overlay.impure", b"y");
        assert_eq!(fixture.survey().sysext, ["usr", "usr/bin", "usr/bin/xfix"]);
    }

    #[test]
    fn root_changes_are_listed_with_the_package_database_apart() {
        let fixture = Fixture::new();
        fixture.file("root/upper/var/lib/dpkg/status", "");
        fixture.whiteout("root/upper/var/lib/dpkg/info/old.list");
        fixture.file("root/upper/root/.profile", "");
        fixture.whiteout("root/upper/srv/gone");
        fixture.dir("root/upper/srv/new");
        fixture.file("root/upper/usr/shadowed", "");
        fixture.fifo("root/upper/run/socket-like");
        fixture.file("root/upper/opaque/inside", "");
        fixture.xattr("root/upper/opaque", "trusted.overlay.opaque", b"y");

        let survey = fixture.survey();

        assert_eq!(survey.sysext, Vec::<String>::new());
        assert_eq!(
            survey.not_committed,
            [
                not_committed("/opaque", Reason::Opaque { entries: 1 }),
                not_committed("/root/.profile", Reason::OutsideExtensions),
                not_committed("/run/socket-like", Reason::OutsideExtensions),
                not_committed("/srv/gone", Reason::Deleted),
                not_committed("/srv/new", Reason::OutsideExtensions),
                not_committed("/usr/shadowed", Reason::OutsideExtensions),
                not_committed("/var/lib/dpkg/info/old.list", Reason::PackageDatabase),
                not_committed("/var/lib/dpkg/status", Reason::PackageDatabase),
            ]
        );
    }

    #[test]
    fn only_var_lib_dpkg_itself_is_the_package_database() {
        assert!(is_package_database("/var/lib/dpkg"));
        assert!(is_package_database("/var/lib/dpkg/status"));
        assert!(!is_package_database("/var/lib/dpkg-old/status"));
        assert!(!is_package_database("/var/lib"));
    }

    #[test]
    fn a_fifo_in_a_hierarchy_is_a_special_file() {
        let fixture = Fixture::new();
        fixture.fifo("etc/upper/initctl");
        assert_eq!(
            fixture.survey().not_committed,
            [not_committed("/etc/initctl", Reason::SpecialFile)]
        );
    }

    #[test]
    fn extension_release_files_are_not_committed() {
        let fixture = Fixture::new();
        fixture.file(
            "usr/upper/lib/extension-release.d/extension-release.dev",
            "",
        );
        fixture.dir("etc/upper/extension-release.d");
        fixture.file("usr/upper/lib/os-release", "");

        let survey = fixture.survey();

        assert_eq!(survey.sysext, ["usr", "usr/lib", "usr/lib/os-release"]);
        assert_eq!(survey.confext, Vec::<String>::new());
        assert_eq!(
            survey.not_committed,
            [
                not_committed("/etc/extension-release.d", Reason::ExtensionRelease),
                not_committed(
                    "/usr/lib/extension-release.d/extension-release.dev",
                    Reason::ExtensionRelease
                ),
            ]
        );
    }

    #[test]
    fn a_non_utf8_name_fails_naming_the_path() {
        let fixture = Fixture::new();
        let dir = fixture.dir("usr/upper/bin");
        let name = std::ffi::OsStr::from_bytes(b"bad\xff");
        fs::write(dir.join(name), "").expect("write non-UTF-8 fixture");

        let error = survey(fixture.dev()).expect_err("a non-UTF-8 name");

        assert!(matches!(error, SurveyError::NotUtf8 { .. }), "{error:?}");
        assert!(error.to_string().contains("bin/bad\u{fffd}"), "{error}");
    }

    #[test]
    fn reasons_read_as_sentences_for_the_user() {
        assert_eq!(
            Reason::Opaque { entries: 3 }.to_string(),
            "replaces the base's directory (3 entries inside, not committed either); \
             an extension can only add to a directory"
        );
        assert_eq!(
            Reason::Deleted.to_string(),
            "deleted here; an extension can only add files, so the base's copy stays"
        );
    }

    #[test]
    fn hierarchies_name_their_directory_and_extension() {
        assert_eq!(Hierarchy::from_name("opt"), Some(Hierarchy::Opt));
        assert_eq!(Hierarchy::from_name("var"), None);
        assert_eq!(Hierarchy::Opt.extension(), Extension::System);
        assert_eq!(Hierarchy::Etc.extension(), Extension::Configuration);
        assert_eq!(
            Hierarchy::Usr.upper(Path::new("/dev-dir")),
            Path::new("/dev-dir/usr/upper")
        );
    }
}

//! Dev mode's writable layer: the overlays' uppers in memory (`xorbang.dev=1`), or
//! (`xorbang.dev=persist`) on the state partition,
//! one directory per base root hash (see `xorbang_formats::dev_state`). A boot of another base
//! starts with an empty upper and leaves the others where they are; requests the running
//! system left beside the upper (discard it, set it aside after a commit) are carried out here,
//! before anything mounts it, since an upper must never change under a mounted overlay.
//!
//! The base itself is verified exactly as in production: only the writable layer differs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::state_partition::{self, StateError, StatePartition};
use crate::handoff::mounts::{DevDirs, ROOT_OVERLAY};
use crate::kernel::module_loader::ModuleLoader;
use crate::options::DevStorage;
use crate::paths::Paths;
use crate::untrusted;
use xorbang_formats::boot_report::DevReport;
use xorbang_formats::dev_state::{self, CommittedExtensions, Record, DEV_DIR};
use xorbang_formats::error_chain::error_chain;

/// The overlays whose uppers a dev directory holds.
pub const OVERLAYS: [&str; 4] = [ROOT_OVERLAY, "usr", "opt", "etc"];

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("xorbang.dev=persist keeps its upper under the root hash: it needs a verified root (roothash=)")]
    Unverified,
    #[error("xorbang.dev=persist")]
    State(#[from] StateError),
    #[error("xorbang.dev=persist: {} on the state partition is a {found}, not a directory; refused", path.display())]
    NotDirectory { path: PathBuf, found: &'static str },
    #[error("xorbang.dev=persist: cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Where this dev-mode boot writes.
#[derive(Debug)]
pub enum DevLayer {
    Transient(DevDirs),
    Persistent(PersistentUpper),
}

impl DevLayer {
    /// The transient layer needs nothing yet (its tmpfs is part of the mount plan); the
    /// persistent one mounts the state partition next to `root_device` and prepares the upper
    /// of the base with `root_hash`.
    pub fn prepare(
        paths: &Paths,
        storage: DevStorage,
        root_device: &Path,
        root_hash: Option<&str>,
        modules: &mut ModuleLoader,
    ) -> Result<Self, PersistError> {
        match storage {
            DevStorage::Transient => Ok(DevLayer::Transient(DevDirs::transient(paths))),
            DevStorage::Persistent => {
                prepare(paths, root_device, root_hash, modules).map(DevLayer::Persistent)
            }
        }
    }

    pub fn dirs(&self) -> &DevDirs {
        match self {
            DevLayer::Transient(dirs) => dirs,
            DevLayer::Persistent(upper) => &upper.dirs,
        }
    }

    pub fn report(&self, paths: &Paths) -> DevReport {
        match self {
            DevLayer::Transient(dirs) => DevReport {
                persistent: false,
                dir: system_view(paths, &dirs.dir),
                fresh: Some("in memory, empty at every boot".to_owned()),
                kept: Vec::new(),
            },
            DevLayer::Persistent(upper) => upper.report.clone(),
        }
    }

    /// The state partition, when this boot keeps it mounted read-write.
    pub fn state(&self) -> Option<&StatePartition> {
        match self {
            DevLayer::Transient(_) => None,
            DevLayer::Persistent(upper) => Some(&upper.state),
        }
    }

    /// The extensions committed over this base (only a persistent layer knows them).
    pub fn committed(&self) -> Option<&CommittedExtensions> {
        match self {
            DevLayer::Transient(_) => None,
            DevLayer::Persistent(upper) => Some(&upper.committed),
        }
    }
}

/// A persistent upper ready to mount.
#[derive(Debug)]
pub struct PersistentUpper {
    /// Mounted read-write for the whole boot; extensions are read from it too.
    pub state: StatePartition,
    pub dirs: DevDirs,
    pub report: DevReport,
    /// The extensions committed over this base, merged without being asked.
    pub committed: CommittedExtensions,
}

fn prepare(
    paths: &Paths,
    root_device: &Path,
    root_hash: Option<&str>,
    modules: &mut ModuleLoader,
) -> Result<PersistentUpper, PersistError> {
    let root_hash = root_hash.ok_or(PersistError::Unverified)?;
    let state = state_partition::mount_read_write(paths, root_device, modules)?;
    let dev_dir = state.mount.join(DEV_DIR);
    ensure_dir(&state.mount.join("xorbang"))?;
    ensure_dir(&dev_dir)?;
    let upper = dev_dir.join(Record::Upper.name(root_hash));
    let requested = carry_out_requests(&dev_dir, root_hash)?;
    let fresh = match (requested, is_dir(&upper)?) {
        (Some(done), _) => Some(done),
        (None, false) => Some("first boot of this base".to_owned()),
        (None, true) => None,
    };
    ensure_dir(&upper)?;
    let dirs = DevDirs {
        dir: upper.clone(),
        transient: false,
    };
    for overlay in OVERLAYS {
        ensure_dir(&upper.join(overlay))?;
        ensure_dir(&dirs.upper(overlay))?;
        ensure_dir(&dirs.work(overlay))?;
    }
    let kept = kept_uppers(&dev_dir, root_hash)?;
    let shown = |path: &Path| system_view(paths, path);
    match &fresh {
        Some(why) => log::info!(
            "dev mode: persistent upper {} starts empty ({why})",
            shown(&upper)
        ),
        None => log::info!(
            "dev mode: persistent upper {} (kept from earlier boots)",
            shown(&upper)
        ),
    }
    for other in &kept {
        log::info!("dev mode: {} is kept, not in use", shown(other));
    }
    let committed = read_committed(&dev_dir, root_hash);
    Ok(PersistentUpper {
        report: DevReport {
            persistent: true,
            dir: shown(&upper),
            fresh,
            kept: kept.iter().map(|path| shown(path)).collect(),
        },
        dirs,
        state,
        committed,
    })
}

/// Acts on a discard or set-aside request for this base's upper; says what was done.
fn carry_out_requests(dev_dir: &Path, root_hash: &str) -> Result<Option<String>, PersistError> {
    let upper = dev_dir.join(Record::Upper.name(root_hash));
    let discard = dev_dir.join(Record::Discard.name(root_hash));
    let set_aside = dev_dir.join(Record::SetAside.name(root_hash));
    if is_marker(&discard)? {
        if is_dir(&upper)? {
            fs::remove_dir_all(&upper).map_err(io_error("delete", &upper))?;
        }
        remove_marker(&discard)?;
        return Ok(Some("the last upper was discarded on request".to_owned()));
    }
    if is_marker(&set_aside)? {
        let mut done = "a set-aside was requested, but there was no upper".to_owned();
        if is_dir(&upper)? {
            let kept = free_kept_name(dev_dir, root_hash)?;
            fs::rename(&upper, &kept).map_err(io_error("set aside", &upper))?;
            done = format!(
                "the last upper was committed and set aside as {}",
                kept.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        remove_marker(&set_aside)?;
        return Ok(Some(done));
    }
    Ok(None)
}

fn free_kept_name(dev_dir: &Path, root_hash: &str) -> Result<PathBuf, PersistError> {
    let mut n = 1;
    loop {
        let candidate = dev_dir.join(dev_state::kept_name(root_hash, n));
        if !exists(&candidate)? {
            return Ok(candidate);
        }
        n += 1;
    }
}

/// Every other upper in the dev directory (other bases', set-aside ones), sorted.
fn kept_uppers(dev_dir: &Path, root_hash: &str) -> Result<Vec<PathBuf>, PersistError> {
    let entries = fs::read_dir(dev_dir).map_err(io_error("list", dev_dir))?;
    let mut kept = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", dev_dir))?;
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && entry.file_name() != root_hash {
            kept.push(entry.path());
        }
    }
    kept.sort();
    Ok(kept)
}

/// The committed-extensions list: a bad one is logged and merges nothing.
fn read_committed(dev_dir: &Path, root_hash: &str) -> CommittedExtensions {
    let name = Record::Committed.name(root_hash);
    let parsed = untrusted::read_beneath(dev_dir, Path::new(&name), dev_state::MAX_COMMITTED_BYTES)
        .map_err(|error| error_chain(&error))
        .and_then(|bytes| {
            let text = String::from_utf8(bytes.unwrap_or_default())
                .map_err(|_| format!("{} is not text", dev_dir.join(&name).display()))?;
            CommittedExtensions::parse(&text)
                .map_err(|error| format!("{}: {error}", dev_dir.join(&name).display()))
        });
    parsed.unwrap_or_else(|error| {
        log::error!("dev mode: committed extensions: {error}; merging none of them");
        CommittedExtensions::default()
    })
}

/// Makes `path` a directory unless it is one; refuses a symlink or anything else there.
fn ensure_dir(path: &Path) -> Result<(), PersistError> {
    if is_dir(path)? {
        return Ok(());
    }
    fs::create_dir(path).map_err(io_error("create directory", path))
}

/// Whether `path` is a directory (not a symlink to one); `false` when absent.
fn is_dir(path: &Path) -> Result<bool, PersistError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(meta) => Err(PersistError::NotDirectory {
            path: path.to_owned(),
            found: kind_of(&meta),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("inspect", path)(error)),
    }
}

/// Whether a request marker is there: a regular file, nothing else.
fn is_marker(path: &Path) -> Result<bool, PersistError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) => {
            log::warn!(
                "dev mode: {} is a {}, not a request file; ignored",
                path.display(),
                kind_of(&meta)
            );
            Ok(false)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("inspect", path)(error)),
    }
}

fn exists(path: &Path) -> Result<bool, PersistError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("inspect", path)(error)),
    }
}

fn remove_marker(path: &Path) -> Result<(), PersistError> {
    fs::remove_file(path).map_err(io_error("remove", path))
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_symlink() {
        "symlink"
    } else if kind.is_file() {
        "file"
    } else {
        "special file"
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl Fn(io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The path as the booted system sees it (tests run the init under another root).
fn system_view(paths: &Paths, path: &Path) -> String {
    match path.strip_prefix(paths.root()) {
        Ok(relative) => Path::new("/").join(relative).display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "aa11";

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn set_aside_keeps_the_upper_under_the_next_free_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        write(&dev.join(HASH).join("usr/upper/bin/tool"), "tool");
        fs::create_dir(dev.join(dev_state::kept_name(HASH, 1))).expect("kept-1");
        write(&dev.join(Record::SetAside.name(HASH)), "");
        let done = carry_out_requests(dev, HASH).expect("carried out");
        assert_eq!(
            done.as_deref(),
            Some("the last upper was committed and set aside as aa11.kept-2")
        );
        assert!(dev.join("aa11.kept-2/usr/upper/bin/tool").is_file());
        assert!(!dev.join(HASH).exists());
        assert!(!dev.join(Record::SetAside.name(HASH)).exists());
        assert_eq!(carry_out_requests(dev, HASH).expect("nothing"), None);
    }

    #[test]
    fn discard_deletes_the_upper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        write(&dev.join(HASH).join("etc/upper/x"), "x");
        write(&dev.join(Record::Discard.name(HASH)), "");
        let done = carry_out_requests(dev, HASH).expect("carried out");
        assert_eq!(
            done.as_deref(),
            Some("the last upper was discarded on request")
        );
        assert!(!dev.join(HASH).exists());
    }

    #[test]
    fn a_symlinked_marker_or_upper_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        let elsewhere = dir.path().join("elsewhere");
        write(&elsewhere.join("precious"), "keep");
        std::os::unix::fs::symlink(&elsewhere, dev.join(HASH)).expect("symlink");
        write(&dev.join(Record::Discard.name(HASH)), "");
        let error = carry_out_requests(dev, HASH).expect_err("refused");
        assert!(matches!(
            error,
            PersistError::NotDirectory {
                found: "symlink",
                ..
            }
        ));
        assert!(elsewhere.join("precious").is_file());
    }

    #[test]
    fn other_uppers_are_reported_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        for name in [HASH, "bb22", "aa11.kept-1"] {
            fs::create_dir(dev.join(name)).expect("mkdir");
        }
        write(&dev.join("bb22.extensions"), "sysext x\n");
        let kept = kept_uppers(dev, HASH).expect("listed");
        assert_eq!(kept, [dev.join("aa11.kept-1"), dev.join("bb22")]);
    }

    #[test]
    fn committed_extensions_are_read_and_a_bad_list_merges_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        assert_eq!(read_committed(dev, HASH), CommittedExtensions::default());
        write(&dev.join(Record::Committed.name(HASH)), "sysext tools\n");
        assert!(read_committed(dev, HASH)
            .contains(xorbang_formats::os_release::ExtensionKind::Sysext, "tools"));
        write(&dev.join(Record::Committed.name(HASH)), "sysext ../x\n");
        assert_eq!(read_committed(dev, HASH), CommittedExtensions::default());
    }
}

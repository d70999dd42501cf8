//! The command's steps: find the upper from the boot report, survey it, stage what can be
//! committed, build the images with the sysext builder, and leave the requests the init acts
//! on at the next boot (a persistent upper cannot change while it is mounted).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::stage::{self, StageError};
use crate::upper::{self, Survey, SurveyError};
use xorbang_build::image::squashfs::{SquashfsCompression, MKSQUASHFS};
use xorbang_build::image::sysext::{self, ExtensionSpec, ReleaseFields, SysextError};
use xorbang_build::os::difference;
use xorbang_formats::boot_report::{BootReport, DevReport, Mode};
use xorbang_formats::dev_state::{CommittedExtensions, Record, DEV_DIR};
use xorbang_formats::extension_pins::valid_name;
use xorbang_formats::os_release::{ExtensionKind, OsRelease};

/// What the command reads of the running machine; each can be pointed elsewhere for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub boot_report: PathBuf,
    /// The verified base image as the init mounted it, below the dev overlays.
    pub base: PathBuf,
    /// The merged root (dpkg's database as the running system sees it).
    pub root: PathBuf,
    pub mksquashfs: PathBuf,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            boot_report: PathBuf::from("/run/xorbang/boot.json"),
            base: PathBuf::from("/run/xorbang/base"),
            root: PathBuf::from("/"),
            mksquashfs: PathBuf::from(MKSQUASHFS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Commit {
        name: String,
        output: Option<PathBuf>,
        dry_run: bool,
    },
    Discard,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("cannot read the boot report {}", path.display())]
    Report { path: PathBuf, source: io::Error },
    #[error("the boot report {} is not valid", path.display())]
    ReportJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("this boot is not in dev mode, so nothing is written over the base (boot with xorbang.dev=persist or xorbang.dev=1)")]
    NotDev,
    #[error("the dev upper {} is not where persistent dev mode keeps one (STATE/{DEV_DIR}/ROOTHASH)", dir.display())]
    UnknownLayout { dir: PathBuf },
    #[error("xorbang.dev=1 keeps no state partition mounted: give -o DIR")]
    NoDestination,
    #[error("{name:?} is not an extension name (letters, digits, '_', '-', '.')")]
    Name { name: String },
    #[error("{} exists already: each commit is a layer of its own; choose another --name", path.display())]
    Exists { path: PathBuf },
    #[error("nothing to commit: the upper holds no change under /usr, /opt or /etc")]
    Nothing,
    #[error(transparent)]
    Survey(#[from] SurveyError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("building {kind} {name}")]
    Build {
        kind: ExtensionKind,
        name: String,
        source: Box<SysextError>,
    },
    #[error("the base's os-release {}: {problem}", path.display())]
    BaseRelease { path: PathBuf, problem: String },
    #[error("comparing dpkg's package lists")]
    Packages(#[from] xorbang_build::file_error::FileError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Prints one line of the command's report.
fn say(line: impl std::fmt::Display) {
    println!("xorbang-commit-overlay: {line}");
}

pub fn run(command: &Command, machine: &Machine) -> Result<(), CommitError> {
    let dev = DevUpper::of(&read_report(&machine.boot_report)?)?;
    match command {
        Command::Discard => discard(&dev),
        Command::Commit {
            name,
            output,
            dry_run,
        } => {
            if !valid_name(name) {
                return Err(CommitError::Name { name: name.clone() });
            }
            let survey = upper::survey(&dev.dir)?;
            match dry_run {
                true => dry_run_listing(&survey, name, machine),
                false => commit(&dev, &survey, name, output.as_deref(), machine),
            }
        }
    }
}

fn read_report(path: &Path) -> Result<BootReport, CommitError> {
    let text = fs::read_to_string(path).map_err(|source| CommitError::Report {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CommitError::ReportJson {
        path: path.to_owned(),
        source,
    })
}

/// The upper this boot writes to.
struct DevUpper {
    dir: PathBuf,
    /// For a persistent upper: the state partition's mount and the base's root hash.
    persistent: Option<(PathBuf, String)>,
}

impl DevUpper {
    fn of(report: &BootReport) -> Result<Self, CommitError> {
        let dev: &DevReport = match (report.mode, &report.dev) {
            (Mode::Dev, Some(dev)) => dev,
            _ => return Err(CommitError::NotDev),
        };
        let dir = PathBuf::from(&dev.dir);
        let persistent = match dev.persistent {
            false => None,
            true => Some(state_and_hash(&dir)?),
        };
        Ok(Self { dir, persistent })
    }
}

/// `STATE/xorbang/dev/HASH` → (`STATE`, `HASH`).
fn state_and_hash(dir: &Path) -> Result<(PathBuf, String), CommitError> {
    let unknown = || CommitError::UnknownLayout {
        dir: dir.to_owned(),
    };
    let hash = dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(unknown)?;
    let parent = dir.parent().ok_or_else(unknown)?;
    let state = parent.strip_suffix_path(DEV_DIR).ok_or_else(unknown)?;
    Ok((state, hash.to_owned()))
}

trait StripSuffixPath {
    fn strip_suffix_path(&self, suffix: &str) -> Option<PathBuf>;
}

impl StripSuffixPath for Path {
    /// `self` without its trailing components `suffix`.
    fn strip_suffix_path(&self, suffix: &str) -> Option<PathBuf> {
        let mut path = self.to_path_buf();
        for component in Path::new(suffix).iter().rev() {
            if path.file_name() != Some(component) {
                return None;
            }
            path.pop();
        }
        Some(path)
    }
}

fn discard(dev: &DevUpper) -> Result<(), CommitError> {
    let Some((state, hash)) = &dev.persistent else {
        say("xorbang.dev=1 keeps the upper in memory: it is gone at every reboot, nothing to discard");
        return Ok(());
    };
    let marker = state.join(DEV_DIR).join(Record::Discard.name(hash));
    write_file(&marker, b"")?;
    say(format!(
        "the upper {} is deleted at the next boot, which starts with an empty one",
        dev.dir.display()
    ));
    Ok(())
}

fn dry_run_listing(survey: &Survey, name: &str, machine: &Machine) -> Result<(), CommitError> {
    for (kind, paths) in by_kind(survey) {
        for path in paths {
            say(format!("would commit to {kind} {name}: /{path}"));
        }
    }
    if !survey.sysext.is_empty() {
        for package in difference::added_packages(&machine.base, &machine.root)? {
            say(format!("would record package {package}"));
        }
    }
    list_not_committed(survey);
    say(format!(
        "dry run: {} entries for the sysext, {} for the confext, {} not committed; nothing written",
        survey.sysext.len(),
        survey.confext.len(),
        survey.not_committed.len()
    ));
    Ok(())
}

fn list_not_committed(survey: &Survey) {
    for entry in &survey.not_committed {
        say(format!("not committed: {}: {}", entry.path, entry.reason));
    }
}

fn by_kind(survey: &Survey) -> [(ExtensionKind, &[String]); 2] {
    [
        (ExtensionKind::Sysext, survey.sysext.as_slice()),
        (ExtensionKind::Confext, survey.confext.as_slice()),
    ]
}

/// Where a kind's images go below the destination (the state partition's `lib/`, or `-o`).
fn image_dir(kind: ExtensionKind) -> &'static str {
    match kind {
        ExtensionKind::Sysext => "extensions",
        ExtensionKind::Confext => "confexts",
    }
}

/// One image built.
struct Built {
    kind: ExtensionKind,
    bytes: u64,
    root_hash: String,
}

fn commit(
    dev: &DevUpper,
    survey: &Survey,
    name: &str,
    output: Option<&Path>,
    machine: &Machine,
) -> Result<(), CommitError> {
    let started = Instant::now();
    let to_state = output.is_none();
    let destination = match (output, &dev.persistent) {
        (Some(dir), _) => dir.to_owned(),
        (None, Some((state, _))) => state.join("lib"),
        (None, None) => return Err(CommitError::NoDestination),
    };
    let kinds: Vec<(ExtensionKind, &[String])> = by_kind(survey)
        .into_iter()
        .filter(|(_, paths)| !paths.is_empty())
        .collect();
    if kinds.is_empty() {
        list_not_committed(survey);
        return Err(CommitError::Nothing);
    }
    for (kind, _) in &kinds {
        let image = image_path(&destination, *kind, name);
        if image.exists() {
            return Err(CommitError::Exists { path: image });
        }
    }
    let fields = release_fields(&machine.base)?;
    let packages = difference::added_packages(&machine.base, &machine.root)?;
    let staging = destination.join(format!(".commit-{name}"));
    remove_if_present(&staging)?;
    let mut built = Vec::new();
    for (kind, paths) in &kinds {
        let tree = staging.join(kind.to_string());
        create_dir_all(&tree)?;
        let staged = stage::stage(&dev.dir, paths, &tree)?;
        if *kind == ExtensionKind::Sysext && !packages.is_empty() {
            record_packages(&tree, name, &packages)?;
        }
        let image = image_path(&destination, *kind, name);
        create_dir_all(image.parent().unwrap_or(&destination))?;
        let spec = ExtensionSpec {
            tree,
            name: name.to_owned(),
            kind: *kind,
            fields: fields.clone(),
            compression: SquashfsCompression::Zstd,
            mtime: now(),
        };
        let result =
            sysext::build_extension(&machine.mksquashfs, &spec, &image).map_err(|source| {
                CommitError::Build {
                    kind: *kind,
                    name: name.to_owned(),
                    source: Box::new(source),
                }
            })?;
        say(format!(
            "{kind} {name}: {}, {} bytes (SquashFS {}, hash tree {}), root hash {} ({} files, {} symlinks, {} directories, {} bytes of data)",
            image.display(),
            result.image_bytes,
            result.squashfs_bytes,
            result.verity_bytes,
            result.root_hash,
            staged.files,
            staged.symlinks,
            staged.directories,
            staged.bytes
        ));
        built.push(Built {
            kind: *kind,
            bytes: result.image_bytes,
            root_hash: result.root_hash.to_string(),
        });
    }
    remove_if_present(&staging)?;
    if !packages.is_empty() {
        say(format!(
            "packages recorded in /usr/share/xorbang/extensions/{name}.packages (dpkg's database does not merge across layers): {}",
            packages.join(", ")
        ));
    }
    list_not_committed(survey);
    let pins: Vec<String> = built
        .iter()
        .map(|image| format!("xorbang.{}={name}:{}", image.kind, image.root_hash))
        .collect();
    say(format!("pin: {}", pins.join(" ")));
    say("production merges them only when pinned: add the pin above to the signed command line, or pin them in the base image's manifest");
    match (&dev.persistent, to_state) {
        (Some((state, hash)), true) => hand_over(state, hash, name, &built)?,
        (Some(_), false) => {
            say("the upper is left as it is (the images are not on the state partition)")
        }
        (None, _) => say("xorbang.dev=1: the upper is in memory and gone at the next boot"),
    }
    let bytes: u64 = built.iter().map(|image| image.bytes).sum();
    say(format!(
        "committed in {:.1} s, {bytes} bytes of images",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Makes the committed images this base's dev layer from the next boot on: dev-mode boots
/// merge them, and the upper that held the same changes is set aside (kept, not deleted:
/// what was not committed is still in it).
fn hand_over(state: &Path, hash: &str, name: &str, built: &[Built]) -> Result<(), CommitError> {
    let dev_dir = state.join(DEV_DIR);
    let list = dev_dir.join(Record::Committed.name(hash));
    let mut committed = match fs::read_to_string(&list) {
        Ok(text) => CommittedExtensions::parse(&text).unwrap_or_else(|error| {
            say(format!("{}: {error}; starting it again", list.display()));
            CommittedExtensions::default()
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => CommittedExtensions::default(),
        Err(source) => {
            return Err(CommitError::Io {
                action: "read",
                path: list,
                source,
            })
        }
    };
    for image in built {
        committed.add(image.kind, name);
    }
    write_file(&list, committed.to_string().as_bytes())?;
    write_file(&dev_dir.join(Record::SetAside.name(hash)), b"")?;
    say(format!(
        "dev-mode boots of this base merge them (listed in {}); at the next boot the upper is set aside in {} and starts empty",
        list.display(),
        dev_dir.display()
    ));
    Ok(())
}

fn image_path(destination: &Path, kind: ExtensionKind, name: &str) -> PathBuf {
    destination
        .join(image_dir(kind))
        .join(format!("{name}.raw"))
}

/// The release fields that make the images match the booted base: its ID, VERSION_ID and
/// API level, as the init and systemd-sysext compare them.
fn release_fields(base: &Path) -> Result<ReleaseFields, CommitError> {
    let path = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .map(|relative| base.join(relative))
        .find(|path| path.is_file())
        .unwrap_or_else(|| base.join("usr/lib/os-release"));
    let problem = |problem: String| CommitError::BaseRelease {
        path: path.clone(),
        problem,
    };
    let text = fs::read_to_string(&path).map_err(|error| problem(error.to_string()))?;
    let release = OsRelease::parse(&text).map_err(|error| problem(error.to_string()))?;
    let field = |key: &str| release.get_nonempty(key).map(str::to_owned);
    Ok(ReleaseFields {
        os_id: Some(field("ID").ok_or_else(|| problem("no ID".to_owned()))?),
        version_id: field("VERSION_ID"),
        level: field(ExtensionKind::Sysext.level_key()),
        architecture: None,
    })
}

/// The package list an extension carries, as `xorbang-build os` writes it for its extensions.
fn record_packages(tree: &Path, name: &str, packages: &[String]) -> Result<(), CommitError> {
    let dir = tree.join("usr/share/xorbang/extensions");
    create_dir_all(&dir)?;
    write_file(
        &dir.join(format!("{name}.packages")),
        (packages.join("\n") + "\n").as_bytes(),
    )
}

fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CommitError> {
    fs::write(path, bytes).map_err(|source| CommitError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

fn create_dir_all(path: &Path) -> Result<(), CommitError> {
    fs::create_dir_all(path).map_err(|source| CommitError::Io {
        action: "create directory",
        path: path.to_owned(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), CommitError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CommitError::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persistent_upper_names_its_state_partition_and_base() {
        let (state, hash) =
            state_and_hash(Path::new("/run/xorbang/state/xorbang/dev/ab12")).expect("known");
        assert_eq!(state, PathBuf::from("/run/xorbang/state"));
        assert_eq!(hash, "ab12");
        assert!(state_and_hash(Path::new("/run/xorbang/overlay")).is_err());
    }

    #[test]
    fn production_boots_have_nothing_to_commit() {
        let report: BootReport = serde_json::from_str(
            r#"{"version":1,"mode":"production","root":{"spec":"x","device":"/dev/vda","fstype":"squashfs","verified":true},
                "verity":null,"modules_loaded":0,"init":"/sbin/init","stages":[],"uptime_start_us":0,"uptime_handoff_us":0}"#,
        )
        .expect("parses");
        assert!(matches!(DevUpper::of(&report), Err(CommitError::NotDev)));
    }
}

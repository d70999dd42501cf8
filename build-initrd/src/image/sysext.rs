//! `xorbang-build sysext`: UAPI extension images (system extensions over `/usr` and `/opt`,
//! configuration extensions over `/etc`) as DDIs: a GPT holding the SquashFS as root-x86-64
//! and its dm-verity hash tree as root-x86-64-verity, PARTUUIDs from the root hash, plus the
//! `NAME.roothash` sidecar systemd-sysext and systemd-dissect read the root hash from.
//!
//! And the way back: [`read_extension`] checks such a DDI end to end (partition table,
//! PARTUUIDs, every data block against the tree) and [`pin_extensions`] turns checked images
//! into the pin manifest a base image carries.
//!
//! The tree is checked more strictly than systemd does: what systemd would silently ignore
//! (a top-level directory it does not merge, a second release file) is refused, so that the
//! builder notices before the image ships.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use xorbang_formats::extension_pins::{valid_name, ExtensionPins};
use xorbang_formats::gpt::{self, GptError, GptHeader, GptPartition, Guid};
use xorbang_formats::os_release::{
    validate_extension_release, ExtensionKind, OsRelease, OsReleaseError, OsReleaseProblem,
    ReleaseError, HOST_ARCHITECTURE,
};
use xorbang_formats::verity::{RootHash, RootHashError, VeritySuperblock, SUPERBLOCK_SIZE};

use crate::boot::disk::{self, DiskError};
use crate::file_error::{FileAction, FileError};
use crate::image::squashfs::{self, AddedFile, ImageError, SquashfsCompression, WorkDir};
use crate::image::verified::{self, VerifiedImageError};
use crate::image::verity::{self, VerifyParams, VerityBuildError};
use crate::output;
use crate::tool::{self, ToolError};

/// The program that reads files back out of an image.
pub const UNSQUASHFS: &str = "unsquashfs";
/// What extension images are called; systemd-sysext and the init look for `NAME.raw`.
const IMAGE_SUFFIX: &str = ".raw";
/// The sidecar systemd reads an unsigned verity image's root hash from.
const ROOTHASH_SUFFIX: &str = ".roothash";
/// A SquashFS superblock starts with "hsqs".
const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
/// Where a SquashFS superblock says how many bytes the file system uses (little-endian).
const SQUASHFS_BYTES_USED: std::ops::Range<usize> = 40..48;
/// Sector sizes a DDI's GPT may use (systemd-repart writes 512 unless told otherwise).
const SECTOR_SIZES: [u64; 2] = [512, 4096];
const DATA_LABEL: &str = "root-x86-64";
const VERITY_LABEL: &str = "root-x86-64-verity";

/// The release file fields `sysext` writes when the tree has no release file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseFields {
    pub os_id: Option<String>,
    pub version_id: Option<String>,
    pub level: Option<String>,
    pub architecture: Option<String>,
}

impl ReleaseFields {
    /// The options given, as the command line spells them.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--os-id", &self.os_id),
            ("--version-id", &self.version_id),
            ("--level", &self.level),
            ("--architecture", &self.architecture),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .map(|(flag, _)| flag)
        .collect()
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ExtensionSpec {
    pub tree: PathBuf,
    pub name: String,
    pub kind: ExtensionKind,
    pub fields: ReleaseFields,
    pub compression: SquashfsCompression,
    /// Every timestamp in the SquashFS.
    pub mtime: u32,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltExtension {
    pub root_hash: RootHash,
    pub image_bytes: u64,
    pub squashfs_bytes: u64,
    pub verity_bytes: u64,
    /// Whether the release file was generated from the options (else the tree had it).
    pub release_generated: bool,
    pub sidecar: PathBuf,
}

/// The type of a directory entry, as messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Directory,
    File,
    Symlink,
    Other,
}

impl EntryType {
    fn of(meta: &fs::Metadata) -> Self {
        let file_type = meta.file_type();
        if file_type.is_dir() {
            Self::Directory
        } else if file_type.is_file() {
            Self::File
        } else if file_type.is_symlink() {
            Self::Symlink
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for EntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Directory => "directory",
            Self::File => "file",
            Self::Symlink => "symlink",
            Self::Other => "special file",
        })
    }
}

/// What is wrong with the tree of an extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeProblem {
    #[error(
        "top-level {entry_type} {name:?} is not merged by a {kind} (only {}): systemd would \
         ignore it; remove it",
        allowed(*.kind)
    )]
    Foreign {
        kind: ExtensionKind,
        name: String,
        entry_type: EntryType,
    },
    #[error("top-level {name:?} is a {entry_type}, not a directory")]
    HierarchyNotDirectory { name: String, entry_type: EntryType },
    #[error(
        "it has usr/lib/os-release: systemd refuses a system extension that would replace the \
         base's os-release"
    )]
    OsRelease,
    #[error(
        "{dir}/{found} is the release file of another extension than {name:?}: systemd would \
         ignore or mistake it; remove it"
    )]
    OtherRelease {
        dir: &'static str,
        found: String,
        name: String,
    },
    #[error("{path} is a {entry_type}, not a regular file")]
    ReleaseNotFile { path: String, entry_type: EntryType },
    #[error(
        "{path} is a symlink: the image would hold the link, not the directory it points to \
         here, so systemd and the init would not find the release file this tree is checked \
         by; make it a directory"
    )]
    SymlinkedDirectory { path: String },
}

fn allowed(kind: ExtensionKind) -> String {
    kind.hierarchies()
        .iter()
        .map(|dir| format!("{dir}/"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// What is wrong with the release file, or with the options meant to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseProblem {
    #[error(
        "the tree has it, so {} would be ambiguous: drop them, or the file",
        .flags.join(", ")
    )]
    Conflict { flags: Vec<&'static str> },
    #[error(
        "the tree has none: give --os-id (and --version-id, --level, --architecture as needed) \
         to write one"
    )]
    MissingOsId,
    #[error(transparent)]
    Parse(#[from] OsReleaseError),
    #[error(transparent)]
    Value(#[from] OsReleaseProblem),
    #[error(transparent)]
    Invalid(#[from] ReleaseError),
    #[error(
        "ARCHITECTURE={value:?} cannot be used in an image of root-{HOST_ARCHITECTURE} \
         partitions: use {HOST_ARCHITECTURE} or _any"
    )]
    Architecture { value: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SysextError {
    #[error("extension name {name:?}: only A-Z a-z 0-9 _ . - are allowed, not starting with '.'")]
    Name { name: String },
    #[error(
        "{path} must be named {expected}: systemd-sysext and xorbang-init match an image's \
         file name against its extension-release.NAME"
    )]
    OutputName { path: PathBuf, expected: String },
    #[error("the extension tree {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{tree}: {problem}")]
    Tree { tree: PathBuf, problem: TreeProblem },
    #[error("{kind} release file {path}")]
    Release {
        kind: ExtensionKind,
        path: String,
        #[source]
        problem: ReleaseProblem,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    VerifiedImage(#[from] VerifiedImageError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(
        "{path}: an extension image must be named NAME{IMAGE_SUFFIX}, with NAME of \
         A-Z a-z 0-9 _ . - not starting with '.'"
    )]
    ImageName { path: PathBuf },
    #[error("{path}: no GPT partition table (tried {} and 4096-byte sectors)", SECTOR_SIZES[0])]
    NoGpt {
        path: PathBuf,
        #[source]
        source: GptError,
    },
    #[error("{path}: its partition table")]
    Gpt {
        path: PathBuf,
        #[source]
        source: GptError,
    },
    #[error("{path}: {problem}")]
    Partitions {
        path: PathBuf,
        problem: PartitionProblem,
    },
    #[error(
        "{path}: partition {number} ({label}, bytes {offset}..{end}) extends past the end of \
         the file at byte {size}"
    )]
    PastEnd {
        path: PathBuf,
        number: u32,
        label: &'static str,
        offset: u64,
        end: u64,
        size: u64,
    },
    #[error("{path}: partition {number} ({DATA_LABEL}) does not hold a SquashFS (its first bytes are {found:02x?})")]
    NotSquashfs {
        path: PathBuf,
        number: u32,
        found: [u8; 4],
    },
    #[error(
        "{path}: partition {data} ({DATA_LABEL}) holds a SquashFS of {squashfs_bytes} bytes, \
         but the hash tree covers only its first {covered}"
    )]
    Uncovered {
        path: PathBuf,
        data: u32,
        squashfs_bytes: u64,
        covered: u64,
    },
    #[error(
        "{path}: partition {number} ({VERITY_LABEL}) holds a {algorithm} hash tree; its root \
         hash cannot be told by the PARTUUIDs (only sha256 root hashes fit in two of them)"
    )]
    Algorithm {
        path: PathBuf,
        number: u32,
        algorithm: String,
    },
    #[error(
        "{path}: partition {number} ({label}) has PARTUUID {found}, but the root hash of the \
         data and hash tree, {root_hash}, gives {expected} (the PARTUUIDs, the data or the \
         tree were changed)"
    )]
    PartUuid {
        path: PathBuf,
        number: u32,
        label: &'static str,
        found: Guid,
        expected: Guid,
        root_hash: RootHash,
    },
    #[error(
        "{path}: partition {data} ({DATA_LABEL}) does not verify against the hash tree in \
         partition {verity} ({VERITY_LABEL})"
    )]
    Verity {
        path: PathBuf,
        data: u32,
        verity: u32,
        #[source]
        source: Box<VerityBuildError>,
    },
    #[error("cannot copy partition {number} of {path} out")]
    Extract {
        path: PathBuf,
        number: u32,
        #[source]
        source: FileError,
    },
    #[error("{path}: cannot read the {kind} release file {release}")]
    ReleaseInImage {
        path: PathBuf,
        kind: ExtensionKind,
        release: String,
        #[source]
        source: Box<ReleaseReadError>,
    },
    #[error("{kind} {name} is given twice: {first} and {second}")]
    DuplicatePin {
        kind: ExtensionKind,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Why the release file of a built image could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseReadError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the image has no such file")]
    Missing,
    #[error("it is a {0}, not a regular file")]
    NotFile(EntryType),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Release(#[from] ReleaseProblem),
}

/// What is wrong with a DDI's partitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionProblem {
    #[error("no {0} partition")]
    Missing(&'static str),
    #[error("{count} {label} partitions (numbers {numbers:?}); an extension image has one")]
    Several {
        label: &'static str,
        count: usize,
        numbers: Vec<u32>,
    },
    #[error(
        "partition {number} ({name:?}) has type {type_guid}, which an extension image does not \
         hold (only {DATA_LABEL} and {VERITY_LABEL})"
    )]
    Unexpected {
        number: u32,
        name: String,
        type_guid: Guid,
    },
}

/// A partition of a DDI: its number, PARTUUID and where its bytes are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub number: u32,
    pub offset: u64,
    pub bytes: u64,
    pub uuid: Guid,
}

/// A DDI checked by [`read_extension`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionImage {
    pub root_hash: RootHash,
    /// The SquashFS.
    pub data: PartitionRange,
    /// The superblock and hash tree.
    pub verity: PartitionRange,
}

/// `DIR/NAME.roothash` for `DIR/NAME.raw`; `None` if the file name does not end in `.raw`.
pub fn roothash_sidecar(image: &Path) -> Option<PathBuf> {
    let stem = image_stem(image)?;
    Some(image.with_file_name(format!("{stem}{ROOTHASH_SUFFIX}")))
}

/// `NAME` of `DIR/NAME.raw`.
fn image_stem(image: &Path) -> Option<&str> {
    image.file_name()?.to_str()?.strip_suffix(IMAGE_SUFFIX)
}

/// The extension name an image file stands for: `gui` for `…/gui.raw`.
pub fn image_name(image: &Path) -> Result<&str, SysextError> {
    image_stem(image)
        .filter(|name| valid_name(name))
        .ok_or_else(|| SysextError::ImageName {
            path: image.to_owned(),
        })
}

/// Builds the extension image `out` (which must be named `NAME.raw`) and its sidecar.
pub fn build_extension(
    mksquashfs: &Path,
    spec: &ExtensionSpec,
    out: &Path,
) -> Result<BuiltExtension, SysextError> {
    let sidecar = check_names(&spec.name, out)?;
    let release = read_tree(spec)?;
    let added: Vec<AddedFile> = match &release {
        Release::Existing(_) => Vec::new(),
        Release::Generated(release) => vec![AddedFile {
            path: spec.kind.release_path(&spec.name),
            mode: 0o644,
            contents: release.to_string().into_bytes(),
        }],
    };
    // The SquashFS, its tree and manifest are intermediate: only the DDI and sidecar stay.
    let work = WorkDir::new_in(squashfs::parent_dir(out), "sysext")?;
    let squashfs = work.path().join(format!("{}.squashfs", spec.name));
    let squashfs_bytes = squashfs::build_with_files(
        mksquashfs,
        &spec.tree,
        &squashfs,
        spec.compression,
        spec.mtime,
        &added,
    )?;
    let manifest = verified::add_verity(&squashfs, verified::ImageIdentity::default())?;
    let (_, root_hash, tree) = verified::read_manifest(&squashfs)?;
    let partitions = disk::verity_root_partitions(&root_hash, &squashfs, &tree);
    let image_bytes = disk::write_disk(out, &partitions)?;
    output::write_atomically(&sidecar, format!("{root_hash}\n").as_bytes())?;
    Ok(BuiltExtension {
        root_hash,
        image_bytes,
        squashfs_bytes,
        verity_bytes: manifest.verity_bytes,
        release_generated: matches!(release, Release::Generated(_)),
        sidecar,
    })
}

/// Checks the name and that `out` is `NAME.raw`; returns the sidecar's path.
fn check_names(name: &str, out: &Path) -> Result<PathBuf, SysextError> {
    if !valid_name(name) {
        return Err(SysextError::Name {
            name: name.to_owned(),
        });
    }
    let expected = format!("{name}{IMAGE_SUFFIX}");
    if out.file_name().and_then(|name| name.to_str()) != Some(expected.as_str()) {
        return Err(SysextError::OutputName {
            path: out.to_owned(),
            expected,
        });
    }
    roothash_sidecar(out).ok_or_else(|| SysextError::OutputName {
        path: out.to_owned(),
        expected,
    })
}

/// The release file the image gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The tree's own.
    Existing(OsRelease),
    /// Written from the options.
    Generated(OsRelease),
}

/// Checks the tree (see [`TreeProblem`]) and decides its release file.
fn read_tree(spec: &ExtensionSpec) -> Result<Release, SysextError> {
    let tree = &spec.tree;
    let tree_error = |problem| SysextError::Tree {
        tree: tree.clone(),
        problem,
    };
    if !tree.is_dir() {
        return Err(SysextError::NotADirectory { path: tree.clone() });
    }
    check_top_level(spec.kind, &list_dir(tree)?).map_err(tree_error)?;
    check_no_symlinked_directory(tree, spec.kind.release_dir())?;
    if spec.kind == ExtensionKind::Sysext && entry_type(&tree.join("usr/lib/os-release"))?.is_some()
    {
        return Err(tree_error(TreeProblem::OsRelease));
    }
    let release_dir = tree.join(spec.kind.release_dir());
    let names = match entry_type(&release_dir)? {
        Some(EntryType::Directory) => list_dir(&release_dir)?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        _ => Vec::new(),
    };
    check_release_dir(spec.kind, &spec.name, &names).map_err(tree_error)?;
    let release_path = spec.kind.release_path(&spec.name);
    let existing = match entry_type(&tree.join(&release_path))? {
        None => None,
        Some(EntryType::File) => Some(read_text(&tree.join(&release_path))?),
        Some(entry_type) => {
            return Err(tree_error(TreeProblem::ReleaseNotFile {
                path: release_path,
                entry_type,
            }))
        }
    };
    decide_release(spec.kind, existing.as_deref(), &spec.fields).map_err(|problem| {
        SysextError::Release {
            kind: spec.kind,
            path: release_path,
            problem,
        }
    })
}

/// Every directory on the way to `relative` (a `/`-separated path in `tree`) must be one, not a
/// symlink: the checks here look through the host's links, the image keeps them as links.
fn check_no_symlinked_directory(tree: &Path, relative: &str) -> Result<(), SysextError> {
    let mut prefix = String::new();
    for component in relative.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        if entry_type(&tree.join(&prefix))? == Some(EntryType::Symlink) {
            return Err(SysextError::Tree {
                tree: tree.to_owned(),
                problem: TreeProblem::SymlinkedDirectory { path: prefix },
            });
        }
    }
    Ok(())
}

/// The entries of `dir` with their types, sorted by name (so the first problem reported does
/// not depend on the file system's order).
fn list_dir(dir: &Path) -> Result<Vec<(String, EntryType)>, SysextError> {
    let list = FileError::of(FileAction::ListDirectory, dir);
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(&list)? {
        let entry = entry.map_err(&list)?;
        let meta = fs::symlink_metadata(entry.path())
            .map_err(FileError::of(FileAction::Inspect, &entry.path()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, EntryType::of(&meta)));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// The type of the entry at `path` (not following a final symlink); `None` if missing.
fn entry_type(path: &Path) -> Result<Option<EntryType>, SysextError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(EntryType::of(&meta))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::of(FileAction::Inspect, path)(source).into()),
    }
}

fn read_text(path: &Path) -> Result<String, SysextError> {
    Ok(fs::read_to_string(path).map_err(FileError::of(FileAction::Read, path))?)
}

/// Only the hierarchies `kind` merges may be at the top, and as directories.
pub fn check_top_level(
    kind: ExtensionKind,
    entries: &[(String, EntryType)],
) -> Result<(), TreeProblem> {
    for (name, entry_type) in entries {
        if !kind.hierarchies().contains(&name.as_str()) {
            return Err(TreeProblem::Foreign {
                kind,
                name: name.clone(),
                entry_type: *entry_type,
            });
        }
        if *entry_type != EntryType::Directory {
            return Err(TreeProblem::HierarchyNotDirectory {
                name: name.clone(),
                entry_type: *entry_type,
            });
        }
    }
    Ok(())
}

/// No other extension's release file may sit in the release directory: systemd picks the
/// one matching the image name and would ignore (or, renamed, use) the others.
pub fn check_release_dir(
    kind: ExtensionKind,
    name: &str,
    entries: &[String],
) -> Result<(), TreeProblem> {
    let ours = format!("extension-release.{name}");
    match entries
        .iter()
        .find(|entry| entry.starts_with("extension-release.") && **entry != ours)
    {
        Some(found) => Err(TreeProblem::OtherRelease {
            dir: kind.release_dir(),
            found: found.clone(),
            name: name.to_owned(),
        }),
        None => Ok(()),
    }
}

/// The tree's release file (`existing`, its text) if it has one and no option competes with
/// it, else one written from the options; either way checked as the init will read it.
pub fn decide_release(
    kind: ExtensionKind,
    existing: Option<&str>,
    fields: &ReleaseFields,
) -> Result<Release, ReleaseProblem> {
    let given = fields.given();
    let (release, generated) = match existing {
        Some(_) if !given.is_empty() => return Err(ReleaseProblem::Conflict { flags: given }),
        Some(text) => (OsRelease::parse(text)?, false),
        None => (release_from(kind, fields)?, true),
    };
    check_release(&release, kind)?;
    Ok(if generated {
        Release::Generated(release)
    } else {
        Release::Existing(release)
    })
}

fn release_from(kind: ExtensionKind, fields: &ReleaseFields) -> Result<OsRelease, ReleaseProblem> {
    let os_id = fields.os_id.as_deref().ok_or(ReleaseProblem::MissingOsId)?;
    let mut release = OsRelease::new();
    release.set("ID", os_id)?;
    for (key, value) in [
        ("VERSION_ID", &fields.version_id),
        (kind.level_key(), &fields.level),
        ("ARCHITECTURE", &fields.architecture),
    ] {
        if let Some(value) = value {
            release.set(key, value)?;
        }
    }
    Ok(release)
}

/// The build tool's checks, and an architecture that fits the partition types we write.
fn check_release(release: &OsRelease, kind: ExtensionKind) -> Result<(), ReleaseProblem> {
    validate_extension_release(release, kind)?;
    match release.get_nonempty("ARCHITECTURE") {
        Some(value) if value != HOST_ARCHITECTURE && value != "_any" => {
            Err(ReleaseProblem::Architecture {
                value: value.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Reads the DDI at `path` back and checks all of it: one root-x86-64 partition holding a
/// SquashFS, one root-x86-64-verity partition holding its hash tree, nothing else; PARTUUIDs
/// that are the halves of the tree's root hash; every data block against the tree. Returns
/// the root hash.
pub fn read_extension(path: &Path) -> Result<ExtensionImage, SysextError> {
    let mut file = File::open(path).map_err(FileError::of(FileAction::Open, path))?;
    let size = file
        .metadata()
        .map_err(FileError::of(FileAction::Inspect, path))?
        .len();
    let (sector, partitions) = read_gpt(&mut file, path)?;
    let (data, verity) =
        select_partitions(&partitions).map_err(|problem| SysextError::Partitions {
            path: path.to_owned(),
            problem,
        })?;
    let data_range = partition_range(path, data, DATA_LABEL, sector, size)?;
    let verity_range = partition_range(path, verity, VERITY_LABEL, sector, size)?;
    let squashfs_bytes = check_squashfs(&mut file, path, &data_range)?;
    let claimed = claimed_root_hash(path, &data_range, &verity_range)?;
    let root_hash = verify_partitions(&mut file, path, &data_range, &verity_range, &claimed)?;
    check_coverage(&mut file, path, &data_range, &verity_range, squashfs_bytes)?;
    Ok(ExtensionImage {
        root_hash,
        data: data_range,
        verity: verity_range,
    })
}

/// The GPT at the sector size that has one, and its partitions.
fn read_gpt(file: &mut File, path: &Path) -> Result<(u64, Vec<GptPartition>), SysextError> {
    let [small, large] = SECTOR_SIZES;
    let (sector, header) = match header_at(file, path, small)? {
        Ok(header) => (small, header),
        // The 512-byte error is the one to show: that is where nearly every GPT is.
        Err(error) => match header_at(file, path, large)? {
            Ok(header) => (large, header),
            Err(_) => {
                return Err(SysextError::NoGpt {
                    path: path.to_owned(),
                    source: error,
                })
            }
        },
    };
    let entries_at = header.entries_lba.0.saturating_mul(sector);
    let entries = read_range(file, path, entries_at, header.entries_bytes())?;
    let partitions = gpt::parse_entries(&header, &entries).map_err(|source| SysextError::Gpt {
        path: path.to_owned(),
        source,
    })?;
    Ok((sector, partitions))
}

/// The primary GPT header, read from LBA 1 for `sector`-byte sectors.
fn header_at(
    file: &mut File,
    path: &Path,
    sector: u64,
) -> Result<Result<GptHeader, GptError>, SysextError> {
    Ok(GptHeader::parse(&read_range(file, path, sector, sector)?))
}

/// `bytes` bytes at `offset`; a short file reads as zeros past its end (a tiny file then fails
/// the GPT signature check, which says more than "unexpected end of file"). Only used for
/// headers and the entry array, which the GPT parser bounds to 1 MiB.
fn read_range(
    file: &mut File,
    path: &Path,
    offset: u64,
    bytes: u64,
) -> Result<Vec<u8>, SysextError> {
    let read = FileError::of(FileAction::ReadAt(offset), path);
    let mut buffer = Vec::new();
    file.seek(SeekFrom::Start(offset)).map_err(&read)?;
    Read::by_ref(file)
        .take(bytes)
        .read_to_end(&mut buffer)
        .map_err(&read)?;
    let length = usize::try_from(bytes).unwrap_or(buffer.len());
    buffer.resize(length, 0);
    Ok(buffer)
}

/// Exactly one data and one verity partition, and nothing else.
pub fn select_partitions(
    partitions: &[GptPartition],
) -> Result<(&GptPartition, &GptPartition), PartitionProblem> {
    if let Some(other) = partitions
        .iter()
        .find(|p| p.type_guid != gpt::ROOT_X86_64 && p.type_guid != gpt::ROOT_VERITY_X86_64)
    {
        return Err(PartitionProblem::Unexpected {
            number: other.number,
            name: other.name.clone(),
            type_guid: other.type_guid,
        });
    }
    Ok((
        only_one(partitions, gpt::ROOT_X86_64, DATA_LABEL)?,
        only_one(partitions, gpt::ROOT_VERITY_X86_64, VERITY_LABEL)?,
    ))
}

fn only_one<'a>(
    partitions: &'a [GptPartition],
    type_guid: Guid,
    label: &'static str,
) -> Result<&'a GptPartition, PartitionProblem> {
    let found: Vec<&GptPartition> = partitions
        .iter()
        .filter(|p| p.type_guid == type_guid)
        .collect();
    match found.as_slice() {
        [] => Err(PartitionProblem::Missing(label)),
        [one] => Ok(one),
        several => Err(PartitionProblem::Several {
            label,
            count: several.len(),
            numbers: several.iter().map(|p| p.number).collect(),
        }),
    }
}

fn partition_range(
    path: &Path,
    partition: &GptPartition,
    label: &'static str,
    sector: u64,
    size: u64,
) -> Result<PartitionRange, SysextError> {
    // parse_entries guarantees first <= last; the products fit for any file that exists.
    let offset = partition.first_lba.0.saturating_mul(sector);
    let bytes = (partition.last_lba.0 - partition.first_lba.0 + 1).saturating_mul(sector);
    let end = offset.saturating_add(bytes);
    if end > size {
        return Err(SysextError::PastEnd {
            path: path.to_owned(),
            number: partition.number,
            label,
            offset,
            end,
            size,
        });
    }
    Ok(PartitionRange {
        number: partition.number,
        offset,
        bytes,
        uuid: partition.unique_guid,
    })
}

/// Checks the SquashFS magic; returns the file system's size (its superblock's
/// `bytes_used`).
fn check_squashfs(file: &mut File, path: &Path, data: &PartitionRange) -> Result<u64, SysextError> {
    let superblock = read_range(file, path, data.offset, SQUASHFS_BYTES_USED.end as u64)?;
    let mut found = [0u8; 4];
    found.copy_from_slice(&superblock[..4]);
    if &found != SQUASHFS_MAGIC {
        return Err(SysextError::NotSquashfs {
            path: path.to_owned(),
            number: data.number,
            found,
        });
    }
    let mut bytes_used = [0u8; 8];
    bytes_used.copy_from_slice(&superblock[SQUASHFS_BYTES_USED]);
    Ok(u64::from_le_bytes(bytes_used))
}

/// The tree must cover all of the SquashFS: the verity device holds only the blocks the tree
/// covers, so a file system running past them would be unprotected here and unreadable at
/// boot. (`verify` has already read this superblock, so it parses.)
fn check_coverage(
    file: &mut File,
    path: &Path,
    data: &PartitionRange,
    verity: &PartitionRange,
    squashfs_bytes: u64,
) -> Result<(), SysextError> {
    let bytes = read_range(file, path, verity.offset, SUPERBLOCK_SIZE as u64)?;
    let superblock = VeritySuperblock::parse(&bytes).map_err(|source| SysextError::Verity {
        path: path.to_owned(),
        data: data.number,
        verity: verity.number,
        source: Box::new(VerityBuildError::Superblock {
            path: PathBuf::from(format!("partition {}", verity.number)),
            offset: 0,
            source,
        }),
    })?;
    let covered = superblock
        .data_blocks
        .saturating_mul(superblock.data_block_size.as_u64());
    if squashfs_bytes > covered {
        return Err(SysextError::Uncovered {
            path: path.to_owned(),
            data: data.number,
            squashfs_bytes,
            covered,
        });
    }
    Ok(())
}

/// The root hash the PARTUUIDs stand for: the data partition's UUID is its first half, the
/// verity partition's its second.
fn claimed_root_hash(
    path: &Path,
    data: &PartitionRange,
    verity: &PartitionRange,
) -> Result<RootHash, SysextError> {
    let mut bytes = data.uuid.as_bytes().to_vec();
    bytes.extend_from_slice(verity.uuid.as_bytes());
    // 32 bytes is sha256's digest size: always accepted.
    RootHash::from_bytes(bytes).map_err(|_| SysextError::Algorithm {
        path: path.to_owned(),
        number: verity.number,
        algorithm: "sha256".to_owned(),
    })
}

/// Verifies the data partition against the tree in the verity partition, expecting the
/// PARTUUIDs' root hash. The verifier takes whole files, so the partitions are copied out
/// to a scratch directory first.
fn verify_partitions(
    file: &mut File,
    path: &Path,
    data: &PartitionRange,
    verity: &PartitionRange,
    claimed: &RootHash,
) -> Result<RootHash, SysextError> {
    let work = WorkDir::new_in(&std::env::temp_dir(), "extension")?;
    let data_file = work
        .path()
        .join(format!("partition-{}-{DATA_LABEL}", data.number));
    let verity_file = work
        .path()
        .join(format!("partition-{}-{VERITY_LABEL}", verity.number));
    extract(file, path, data, &data_file)?;
    extract(file, path, verity, &verity_file)?;
    let params = VerifyParams::Superblock { hash_offset: 0 };
    match verity::verify(&data_file, &verity_file, claimed, &params) {
        Ok(()) => Ok(claimed.clone()),
        Err(VerityBuildError::RootMismatch { found, .. }) => {
            Err(partuuid_mismatch(path, data, verity, &found))
        }
        Err(VerityBuildError::RootHash(RootHashError::Algorithm { algorithm, .. })) => {
            Err(SysextError::Algorithm {
                path: path.to_owned(),
                number: verity.number,
                algorithm: algorithm.name().to_owned(),
            })
        }
        Err(source) => Err(SysextError::Verity {
            path: path.to_owned(),
            data: data.number,
            verity: verity.number,
            source: Box::new(in_partition(source, verity)),
        }),
    }
}

/// A mismatch names the scratch copy the verifier read; say which partition it is instead,
/// since the copy is gone by the time the message is read (its offset is the same).
fn in_partition(error: VerityBuildError, verity: &PartitionRange) -> VerityBuildError {
    match error {
        VerityBuildError::HashMismatch {
            level,
            block,
            offset,
            covers,
            ..
        } => VerityBuildError::HashMismatch {
            path: PathBuf::from(format!("partition {}", verity.number)),
            level,
            block,
            offset,
            covers,
        },
        other => other,
    }
}

/// The data and tree agree with each other, but not with the PARTUUIDs: name the partition
/// whose PARTUUID is not what the tree's root hash gives.
fn partuuid_mismatch(
    path: &Path,
    data: &PartitionRange,
    verity: &PartitionRange,
    root_hash: &RootHash,
) -> SysextError {
    let (data_uuid, verity_uuid) = root_hash.partition_uuids();
    let (partition, label, expected) = if data.uuid != data_uuid {
        (data, DATA_LABEL, data_uuid)
    } else {
        (verity, VERITY_LABEL, verity_uuid)
    };
    SysextError::PartUuid {
        path: path.to_owned(),
        number: partition.number,
        label,
        found: partition.uuid,
        expected,
        root_hash: root_hash.clone(),
    }
}

/// Copies a partition's bytes to `to` (with copy_file_range where the file system has it).
fn extract(
    file: &mut File,
    path: &Path,
    partition: &PartitionRange,
    to: &Path,
) -> Result<(), SysextError> {
    let error = |source| SysextError::Extract {
        path: path.to_owned(),
        number: partition.number,
        source,
    };
    file.seek(SeekFrom::Start(partition.offset))
        .map_err(|err| {
            error(FileError::of(FileAction::ReadAt(partition.offset), path)(
                err,
            ))
        })?;
    let write = FileError::of(FileAction::Write, to);
    let mut output = File::create(to).map_err(|err| error(write(err)))?;
    let copied = io::copy(&mut Read::by_ref(file).take(partition.bytes), &mut output)
        .map_err(|err| error(write(err)))?;
    if copied != partition.bytes {
        return Err(error(write(io::ErrorKind::UnexpectedEof.into())));
    }
    output.flush().map_err(|err| error(write(err)))
}

/// The manifest file for an image that pins `pins`; none when nothing is pinned (an image
/// without pins has none, as before pinning existed).
pub fn pin_manifest(pins: &ExtensionPins) -> Vec<AddedFile> {
    if pins.sysext.is_empty() && pins.confext.is_empty() {
        return Vec::new();
    }
    vec![AddedFile {
        path: xorbang_formats::extension_pins::MANIFEST_PATH.to_owned(),
        mode: 0o644,
        contents: pins.to_toml().into_bytes(),
    }]
}

/// Checks the extension images named `NAME.raw` with [`read_extension`] and that each carries
/// the release file of its name and kind; returns their root hashes as pins.
pub fn pin_extensions(
    unsquashfs: &Path,
    sysexts: &[PathBuf],
    confexts: &[PathBuf],
) -> Result<ExtensionPins, SysextError> {
    let mut pins = ExtensionPins::default();
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let images = sysexts
        .iter()
        .map(|path| (ExtensionKind::Sysext, path))
        .chain(confexts.iter().map(|path| (ExtensionKind::Confext, path)));
    for (kind, path) in images {
        let name = image_name(path)?;
        if let Some(first) = seen.insert((kind.to_string(), name.to_owned()), path.clone()) {
            return Err(SysextError::DuplicatePin {
                kind,
                name: name.to_owned(),
                first,
                second: path.clone(),
            });
        }
        let image = read_extension(path)?;
        read_image_release(unsquashfs, path, &image, kind, name)?;
        let map = match kind {
            ExtensionKind::Sysext => &mut pins.sysext,
            ExtensionKind::Confext => &mut pins.confext,
        };
        map.insert(name.to_owned(), image.root_hash);
    }
    Ok(pins)
}

/// The release file of extension `name` in the checked image, checked as `sysext` checks the
/// one it packs: a sysext pinned as a confext (or an image renamed) fails here, not at boot.
pub fn read_image_release(
    unsquashfs: &Path,
    path: &Path,
    image: &ExtensionImage,
    kind: ExtensionKind,
    name: &str,
) -> Result<OsRelease, SysextError> {
    let release = kind.release_path(name);
    read_release_from(unsquashfs, path, image, kind, &release).map_err(|source| {
        SysextError::ReleaseInImage {
            path: path.to_owned(),
            kind,
            release,
            source: Box::new(source),
        }
    })
}

fn read_release_from(
    unsquashfs: &Path,
    path: &Path,
    image: &ExtensionImage,
    kind: ExtensionKind,
    release: &str,
) -> Result<OsRelease, ReleaseReadError> {
    let work = WorkDir::new_in(&std::env::temp_dir(), "release")?;
    let destination = work.path().join("root");
    // unsquashfs reads the SquashFS in place, at the data partition's offset, and extracts
    // only the release file (nothing at all if the image lacks it).
    let mut command = Command::new(unsquashfs);
    command
        .args(["-no-progress", "-quiet", "-no-xattrs", "-offset"])
        .arg(image.data.offset.to_string())
        .arg("-dest")
        .arg(&destination)
        .arg(path)
        .arg(release);
    tool::run(&mut command, "squashfs-tools")?;
    let file = destination.join(release);
    match entry_type(&file).map_err(|_| ReleaseReadError::Missing)? {
        None => return Err(ReleaseReadError::Missing),
        Some(EntryType::File) => {}
        Some(other) => return Err(ReleaseReadError::NotFile(other)),
    }
    let text = fs::read_to_string(&file).map_err(FileError::of(FileAction::Read, &file))?;
    Ok(
        match decide_release(kind, Some(&text), &ReleaseFields::default())? {
            Release::Existing(release) | Release::Generated(release) => release,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::gpt::Lba;

    const HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn entries(list: &[(&str, EntryType)]) -> Vec<(String, EntryType)> {
        list.iter()
            .map(|(name, kind)| ((*name).to_owned(), *kind))
            .collect()
    }

    #[test]
    fn only_the_kinds_hierarchies_may_be_at_the_top_as_directories() {
        use EntryType::*;
        let sysext = ExtensionKind::Sysext;
        let confext = ExtensionKind::Confext;
        assert_eq!(
            check_top_level(sysext, &entries(&[("opt", Directory), ("usr", Directory)])),
            Ok(())
        );
        assert_eq!(check_top_level(sysext, &[]), Ok(()));
        assert_eq!(
            check_top_level(confext, &entries(&[("etc", Directory)])),
            Ok(())
        );
        let err = check_top_level(sysext, &entries(&[("etc", Directory), ("usr", Directory)]))
            .expect_err("etc in a sysext");
        assert_eq!(
            err.to_string(),
            "top-level directory \"etc\" is not merged by a sysext (only usr/ and opt/): \
             systemd would ignore it; remove it"
        );
        let err = check_top_level(confext, &entries(&[("etc", Directory), ("usr", Directory)]))
            .expect_err("usr in a confext");
        assert!(
            err.to_string()
                .contains("\"usr\" is not merged by a confext (only etc/)"),
            "{err}"
        );
        let err = check_top_level(sysext, &entries(&[("README", File)])).expect_err("file");
        assert!(
            err.to_string().starts_with("top-level file \"README\""),
            "{err}"
        );
        let err = check_top_level(sysext, &entries(&[("usr", Symlink)])).expect_err("symlink");
        assert_eq!(
            err.to_string(),
            "top-level \"usr\" is a symlink, not a directory"
        );
    }

    #[test]
    fn another_extensions_release_file_is_refused() {
        let kind = ExtensionKind::Confext;
        let ours = ["extension-release.site".to_owned(), "README".to_owned()];
        assert_eq!(check_release_dir(kind, "site", &ours), Ok(()));
        let err = check_release_dir(kind, "site", &["extension-release.other".to_owned()])
            .expect_err("other");
        assert!(
            err.to_string().starts_with(
                "etc/extension-release.d/extension-release.other is the release file of another \
                 extension than \"site\""
            ),
            "{err}"
        );
        // A name that only starts like ours is another extension's.
        assert!(check_release_dir(kind, "site", &["extension-release.site2".to_owned()]).is_err());
    }

    fn fields(os_id: Option<&str>) -> ReleaseFields {
        ReleaseFields {
            os_id: os_id.map(str::to_owned),
            ..ReleaseFields::default()
        }
    }

    #[test]
    fn the_options_write_a_release_file_only_when_the_tree_has_none() {
        let kind = ExtensionKind::Sysext;
        let all = ReleaseFields {
            os_id: Some("debian".into()),
            version_id: Some("12".into()),
            level: Some("1.0".into()),
            architecture: Some("x86-64".into()),
        };
        let Ok(Release::Generated(release)) = decide_release(kind, None, &all) else {
            panic!("generated");
        };
        assert_eq!(
            release.to_string(),
            "ID=\"debian\"\nVERSION_ID=\"12\"\nSYSEXT_LEVEL=\"1.0\"\nARCHITECTURE=\"x86-64\"\n"
        );
        let Ok(Release::Generated(release)) = decide_release(
            ExtensionKind::Confext,
            None,
            &ReleaseFields {
                level: Some("2".into()),
                ..fields(Some("_any"))
            },
        ) else {
            panic!("generated");
        };
        assert_eq!(release.to_string(), "ID=\"_any\"\nCONFEXT_LEVEL=\"2\"\n");

        let err = decide_release(kind, None, &ReleaseFields::default()).expect_err("no id");
        assert_eq!(err, ReleaseProblem::MissingOsId);
        let Ok(Release::Existing(release)) =
            decide_release(kind, Some("ID=fedora\n"), &fields(None))
        else {
            panic!("existing");
        };
        assert_eq!(release.get("ID"), Some("fedora"));
        let err = decide_release(kind, Some("ID=fedora\n"), &all).expect_err("ambiguous");
        assert_eq!(
            err.to_string(),
            "the tree has it, so --os-id, --version-id, --level, --architecture would be \
             ambiguous: drop them, or the file"
        );
    }

    #[test]
    fn release_files_are_checked_as_the_init_reads_them() {
        let kind = ExtensionKind::Sysext;
        let err =
            decide_release(kind, Some("ID=debian\nfoo\n"), &fields(None)).expect_err("syntax");
        assert!(
            matches!(err, ReleaseProblem::Parse(ref e) if e.line == 2),
            "{err}"
        );
        let err = decide_release(kind, Some("VERSION_ID=12\n"), &fields(None)).expect_err("no ID");
        assert!(
            matches!(err, ReleaseProblem::Invalid(ReleaseError::NoId)),
            "{err}"
        );
        let err = decide_release(kind, None, &fields(Some("Debian"))).expect_err("upper case");
        assert!(
            matches!(err, ReleaseProblem::Invalid(ReleaseError::BadId { .. })),
            "{err}"
        );
        let err = decide_release(kind, None, &fields(Some("a\nb"))).expect_err("newline");
        assert!(matches!(err, ReleaseProblem::Value(_)), "{err}");
        let arm = ReleaseFields {
            architecture: Some("arm64".into()),
            ..fields(Some("debian"))
        };
        let err = decide_release(kind, None, &arm).expect_err("arm64");
        assert_eq!(
            err.to_string(),
            "ARCHITECTURE=\"arm64\" cannot be used in an image of root-x86-64 partitions: use \
             x86-64 or _any"
        );
        let err = decide_release(kind, Some("ID=_any\nARCHITECTURE=mips\n"), &fields(None))
            .expect_err("mips");
        assert!(matches!(err, ReleaseProblem::Architecture { .. }), "{err}");
        let unknown = ReleaseFields {
            architecture: Some("x86_64".into()),
            ..fields(Some("debian"))
        };
        let err = decide_release(kind, None, &unknown).expect_err("not systemd's name");
        assert!(matches!(
            err,
            ReleaseProblem::Invalid(ReleaseError::UnknownArchitecture { .. })
        ));
        assert!(decide_release(kind, Some("ID=_any\nARCHITECTURE=_any\n"), &fields(None)).is_ok());
    }

    #[test]
    fn the_sidecar_and_the_name_come_from_the_raw_file_name() {
        assert_eq!(
            roothash_sidecar(Path::new("out/gui.raw")),
            Some(PathBuf::from("out/gui.roothash"))
        );
        assert_eq!(
            roothash_sidecar(Path::new("gui.v2.raw")),
            Some(PathBuf::from("gui.v2.roothash"))
        );
        assert_eq!(roothash_sidecar(Path::new("gui.img")), None);
        assert_eq!(image_name(Path::new("/x/gui.v2.raw")).ok(), Some("gui.v2"));
        for bad in ["gui.img", "/x/.raw", "/x/.hidden.raw", "/x/a b.raw"] {
            let err = image_name(Path::new(bad)).expect_err(bad);
            assert!(err.to_string().starts_with(bad), "{err}");
        }
        assert_eq!(
            check_names("gui", Path::new("o/gui.raw")).ok(),
            Some(PathBuf::from("o/gui.roothash"))
        );
        let err = check_names("gui", Path::new("o/tools.raw")).expect_err("other name");
        assert!(
            err.to_string()
                .starts_with("o/tools.raw must be named gui.raw"),
            "{err}"
        );
        let err = check_names("../gui", Path::new("o/gui.raw")).expect_err("bad name");
        assert!(matches!(err, SysextError::Name { .. }), "{err}");
    }

    fn partition(number: u32, type_guid: Guid) -> GptPartition {
        GptPartition {
            number,
            type_guid,
            unique_guid: Guid::from_bytes([number as u8; 16]),
            first_lba: Lba(2048 * u64::from(number)),
            last_lba: Lba(2048 * u64::from(number) + 2047),
            attributes: 0,
            name: format!("p{number}"),
        }
    }

    #[test]
    fn a_ddi_has_exactly_one_data_and_one_verity_partition() {
        let data = partition(1, gpt::ROOT_X86_64);
        let verity = partition(2, gpt::ROOT_VERITY_X86_64);
        let pair = [data.clone(), verity.clone()];
        let (found_data, found_verity) = select_partitions(&pair).expect("pair");
        assert_eq!((found_data.number, found_verity.number), (1, 2));
        // Order does not matter.
        let swapped = [verity.clone(), data.clone()];
        assert_eq!(select_partitions(&swapped).map(|(d, _)| d.number), Ok(1));
        assert_eq!(
            select_partitions(std::slice::from_ref(&data)),
            Err(PartitionProblem::Missing("root-x86-64-verity"))
        );
        assert_eq!(
            select_partitions(std::slice::from_ref(&verity))
                .expect_err("no data")
                .to_string(),
            "no root-x86-64 partition"
        );
        let twice = [data.clone(), verity.clone(), partition(3, gpt::ROOT_X86_64)];
        assert_eq!(
            select_partitions(&twice).expect_err("two").to_string(),
            "2 root-x86-64 partitions (numbers [1, 3]); an extension image has one"
        );
        let esp = [partition(1, gpt::ESP), data, verity];
        let err = select_partitions(&esp).expect_err("esp");
        assert!(
            err.to_string()
                .starts_with("partition 1 (\"p1\") has type c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            "{err}"
        );
    }

    #[test]
    fn a_partuuid_mismatch_names_the_partition_and_the_uuid_it_should_have() {
        let root_hash = RootHash::parse_hex(HASH).expect("hash");
        let (data_uuid, verity_uuid) = root_hash.partition_uuids();
        let range = |number, uuid| PartitionRange {
            number,
            offset: 0,
            bytes: 0,
            uuid,
        };
        let wrong = Guid::from_bytes([7; 16]);
        let err = partuuid_mismatch(
            Path::new("x.raw"),
            &range(1, data_uuid),
            &range(2, wrong),
            &root_hash,
        );
        assert_eq!(
            err.to_string(),
            format!(
                "x.raw: partition 2 (root-x86-64-verity) has PARTUUID {wrong}, but the root hash \
                 of the data and hash tree, {HASH}, gives a6a77ede-951f-ad19-f0f9-4df0d7266a93 \
                 (the PARTUUIDs, the data or the tree were changed)"
            )
        );
        let err = partuuid_mismatch(
            Path::new("x.raw"),
            &range(1, wrong),
            &range(2, verity_uuid),
            &root_hash,
        );
        assert!(
            err.to_string()
                .contains("partition 1 (root-x86-64) has PARTUUID"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("gives 954172df-ee9a-aab2-d90a-0ab162ee6bc5 "),
            "{err}"
        );
    }

    /// A DDI as `sysext` lays it out, around a stand-in SquashFS of three blocks (its magic
    /// and size only) with a tree over `covered` of them.
    fn fake_ddi(dir: &Path, magic: &[u8; 4], covered: u64) -> (PathBuf, RootHash) {
        use crate::image::verity::{FormatParams, TreeParams};
        let data = dir.join("data");
        let mut bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        bytes[..4].copy_from_slice(magic);
        bytes[SQUASHFS_BYTES_USED].copy_from_slice(&(3 * 4096u64).to_le_bytes());
        fs::write(&data, bytes).expect("data");
        let tree = dir.join("tree");
        let salt = xorbang_formats::verity::Salt::from_array([9u8; 32]);
        let params = FormatParams {
            data_blocks: Some(covered),
            ..FormatParams::new(TreeParams::new(salt), Guid::from_bytes([3; 16]))
        };
        let root_hash = verity::format(&data, &tree, &params)
            .expect("format")
            .root_hash;
        let ddi = dir.join("x.raw");
        disk::write_disk(
            &ddi,
            &disk::verity_root_partitions(&root_hash, &data, &tree),
        )
        .expect("disk");
        (ddi, root_hash)
    }

    #[test]
    fn a_ddi_reads_back_with_its_root_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ddi, root_hash) = fake_ddi(dir.path(), SQUASHFS_MAGIC, 3);
        let image = read_extension(&ddi).expect("reads");
        assert_eq!(image.root_hash, root_hash);
        assert_eq!((image.data.number, image.data.offset), (1, 1 << 20));
        assert_eq!((image.verity.number, image.verity.offset), (2, 2 << 20));
    }

    #[test]
    fn a_squashfs_the_tree_does_not_wholly_cover_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ddi, _) = fake_ddi(dir.path(), SQUASHFS_MAGIC, 2);
        let err = read_extension(&ddi).expect_err("partly covered");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: partition 1 (root-x86-64) holds a SquashFS of 12288 bytes, but the hash \
                 tree covers only its first 8192",
                ddi.display()
            )
        );
    }

    #[test]
    fn a_data_partition_without_a_squashfs_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ddi, _) = fake_ddi(dir.path(), b"\x7fELF", 3);
        let err = read_extension(&ddi).expect_err("not squashfs");
        assert!(
            err.to_string().ends_with(
                "partition 1 (root-x86-64) does not hold a SquashFS (its first bytes are \
                 [7f, 45, 4c, 46])"
            ),
            "{err}"
        );
        let truncated = dir.path().join("short.raw");
        fs::write(
            &truncated,
            &fs::read(&ddi).expect("read")[..(2 << 20) + 512],
        )
        .expect("write");
        let err = read_extension(&truncated).expect_err("cut short");
        assert!(
            err.to_string().contains("partition 2 (root-x86-64-verity, bytes 2097152..3145728) extends past the end of the file at byte 2097664"),
            "{err}"
        );
    }
}

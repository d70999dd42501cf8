//! Declarative disk layouts for `xorbang-build disk --definitions DIR`, written in
//! systemd-repart's partition definition format (`repart.d(5)`) and read by our own parser.
//!
//! Why not run systemd-repart itself: the one in Debian 12 (systemd 252) cannot place the
//! pre-built SquashFS image and verity hash tree of `xorbang-build image` the way we need
//! (its `Verity=` support computes its own tree and root hash), and it wants a real block
//! device or a loop device, which a build without root privileges does not have. So we read
//! the same files and write the GPT with [`crate::boot::disk::write_disk`].
//!
//! `DIR` holds `*.conf` files, laid out in file-name order as repart does, each with one
//! `[Partition]` section. Exactly these keys are supported (case-sensitive, as in repart; a
//! later assignment replaces an earlier one and an empty value resets the key, as in repart's
//! parser); any other key or section is an error naming the file, line and key:
//!
//! * `Type=`: `esp`, `root`, `root-verity`, `var` (the x86-64 Discoverable Partitions type
//!   GUIDs) or `linux-generic`.
//! * `Label=`: the partition name [default: the type's DPS name, e.g. `root-x86-64`; an empty
//!   slot's is `_empty`]. As in repart, `%M` stands for the image's `IMAGE_ID=`, `%A` for its
//!   `IMAGE_VERSION=` and `%%` for `%` (the A/B layout labels a slot `%M_%A` and its hash
//!   tree `%M_%A_verity`, as systemd-sysupdate does).
//! * `UUID=`: an explicit PARTUUID. `root` and `root-verity` get the first and last 16 bytes
//!   of the root hash (so `roothash=` alone finds them): a `UUID=` on them that says otherwise
//!   is refused. Without it every other partition gets the first 16 bytes of a SHA-256 over
//!   the root hash and its label, so the disk stays reproducible.
//!
//! Slots (A/B updates): several `root` and `root-verity` partitions, of which exactly one
//! of each type holds this build (`CopyBlocks=root-image`, `root-verity`) and the others are
//! empty slots (no `CopyBlocks=`), as many of one type as of the other. Every slot of a type
//! is as large as the largest (its content or `SizeMinBytes=`), so any version that fits one
//! slot fits the other. Empty slots get PARTUUIDs derived like any other partition's; the
//! updater sets the root-hash-derived ones when it fills a slot.
//! * `SizeMinBytes=`, `SizeMaxBytes=`: bytes, or with a `K`, `M`, `G` or `T` suffix
//!   (1024-based, as repart's). The partition is its content rounded up to whole MiB and at
//!   least `SizeMinBytes=`; content larger than `SizeMaxBytes=` is an error.
//! * `CopyBlocks=`: a file whose bytes fill the partition, relative to `DIR`, or one of
//!   xorbang's names for the outputs of this build (where repart would take a path):
//!   `root-image` (the `--image`), `root-verity` (its `.verity` hash tree) and `uki-esp` (the
//!   EFI System Partition made from `--uki`).
//!
//! * `Format=ext4`: an empty ext4 file system of `SizeMinBytes=` (made with mkfs.ext4, its
//!   UUID and hash seed derived like a PARTUUID and its times from SOURCE_DATE_EPOCH, so the
//!   disk stays reproducible): the state partition persistent dev mode and extensions use,
//!   which the init cannot format (no mkfs in an initramfs). Not with `CopyBlocks=`, and not
//!   on a slot.
//!
//! A partition with neither is left zero-filled and needs `SizeMinBytes=`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use xorbang_formats::gpt::{self, Guid, GuidError};
use xorbang_formats::verity::RootHash;

use crate::boot::disk::DiskPartition;
use crate::file_error::{FileAction, FileError};
use crate::image::verified::ImageIdentity;
use crate::tool::{self, ToolError};

/// The generic Linux data partition type (`linux-generic` in repart).
pub const LINUX_GENERIC: Guid = Guid::from_bytes([
    0x0f, 0xc6, 0x3d, 0xaf, 0x84, 0x83, 0x47, 0x72, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
]);

/// The section every definition file holds.
const SECTION: &str = "Partition";

/// `Type=`: the partition types we lay out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    Esp,
    Root,
    RootVerity,
    Var,
    LinuxGeneric,
}

impl PartitionType {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "esp" => Self::Esp,
            "root" => Self::Root,
            "root-verity" => Self::RootVerity,
            "var" => Self::Var,
            "linux-generic" => Self::LinuxGeneric,
            _ => return None,
        })
    }

    /// The GPT type GUID (x86-64 for the architecture-specific ones).
    pub fn guid(self) -> Guid {
        match self {
            Self::Esp => gpt::ESP,
            Self::Root => gpt::ROOT_X86_64,
            Self::RootVerity => gpt::ROOT_VERITY_X86_64,
            Self::Var => gpt::VAR,
            Self::LinuxGeneric => LINUX_GENERIC,
        }
    }

    /// A/B slot types: more than one may be laid out, all as large as the largest.
    fn is_slot(self) -> bool {
        matches!(self, Self::Root | Self::RootVerity)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Esp => "esp",
            Self::Root => "root",
            Self::RootVerity => "root-verity",
            Self::Var => "var",
            Self::LinuxGeneric => "linux-generic",
        }
    }

    /// The label a partition gets without `Label=`: the type's name as repart gives it.
    fn default_label(self) -> &'static str {
        match self {
            Self::Esp => "esp",
            Self::Root => "root-x86-64",
            Self::RootVerity => "root-x86-64-verity",
            Self::Var => "var",
            Self::LinuxGeneric => "linux-generic",
        }
    }
}

/// `CopyBlocks=`: what fills a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyBlocks {
    /// `root-image`: the image given with `--image`.
    RootImage,
    /// `root-verity`: that image's hash tree.
    RootVerity,
    /// `uki-esp`: the EFI System Partition made from `--uki`.
    UkiEsp,
    /// A file, relative to the definitions directory.
    File(PathBuf),
}

impl CopyBlocks {
    fn parse(text: &str) -> Self {
        match text {
            "root-image" => Self::RootImage,
            "root-verity" => Self::RootVerity,
            "uki-esp" => Self::UkiEsp,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// `Format=`: the file system a partition gets at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
}

/// One definition file, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The file it came from, for errors.
    pub file: PathBuf,
    pub partition_type: PartitionType,
    pub label: Option<String>,
    pub uuid: Option<Guid>,
    pub size_min_bytes: Option<u64>,
    pub size_max_bytes: Option<u64>,
    pub copy_blocks: Option<CopyBlocks>,
    pub format: Option<Format>,
}

/// The outputs of this build that `CopyBlocks=` names stand for.
#[derive(Debug, Clone, Copy)]
pub struct BuildOutputs<'a> {
    pub root_hash: &'a RootHash,
    /// The image's IMAGE_ID and IMAGE_VERSION, for `%M` and `%A` in labels.
    pub identity: &'a ImageIdentity,
    pub image: &'a Path,
    pub tree: &'a Path,
    /// The ESP made from `--uki`, if there is one.
    pub esp: Option<&'a Path>,
    /// An empty directory for the file systems `Format=` makes.
    pub scratch: &'a Path,
}

/// What is wrong with one line of a definition file.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("unknown section [{0}] (only [Partition] is supported)")]
    UnknownSection(String),
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("{0}= is outside of the [Partition] section")]
    OutsideSection(String),
    #[error("expected a [Section] or a Key=Value assignment, found {0:?}")]
    Syntax(String),
    #[error("Type={0:?} is not one of esp, root, root-verity, var, linux-generic")]
    Type(String),
    #[error("Format={0:?}: only ext4 is supported")]
    Format(String),
    #[error("{key}={value:?} is not a size: bytes, or with a K, M, G or T suffix")]
    Size { key: &'static str, value: String },
    #[error("UUID={value:?} is not a GUID")]
    Uuid {
        value: String,
        #[source]
        source: GuidError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RepartError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("no *.conf files in {0}")]
    Empty(PathBuf),
    #[error("{}:{line}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        #[source]
        source: LineError,
    },
    #[error("{}: no Type= in [Partition]", .0.display())]
    MissingType(PathBuf),
    #[error("{}: a partition without CopyBlocks= needs SizeMinBytes=", .0.display())]
    MissingSize(PathBuf),
    #[error("{}: Format= makes an empty file system: not with CopyBlocks=, not on a slot", .0.display())]
    FormatConflict(PathBuf),
    #[error("{}: Format=ext4", file.display())]
    MakeFileSystem {
        file: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("{}: SizeMinBytes={min} is larger than SizeMaxBytes={max}", file.display())]
    SizeRange { file: PathBuf, min: u64, max: u64 },
    #[error("{}: CopyBlocks=uki-esp needs --uki", .0.display())]
    NoUki(PathBuf),
    #[error("{}: CopyBlocks=", file.display())]
    Source {
        file: PathBuf,
        #[source]
        source: FileError,
    },
    #[error(
        "{} and {}: two Type={partition_type} partitions with CopyBlocks=; a disk holds one \
         root and its hash tree, which roothash= finds by PARTUUID (other slots stay empty)",
        first.display(),
        second.display()
    )]
    TwoRoots {
        first: PathBuf,
        second: PathBuf,
        partition_type: &'static str,
    },
    #[error(
        "{}: UUID={given} contradicts the PARTUUID the root hash gives this {partition_type} \
         partition, {derived}: roothash= would not find it; drop UUID=",
        file.display()
    )]
    RootUuid {
        file: PathBuf,
        partition_type: &'static str,
        given: Guid,
        derived: Guid,
    },
    #[error(
        "{count_root} Type=root and {count_verity} Type=root-verity partitions: each slot is a \
         root and its hash tree"
    )]
    UnpairedSlots {
        count_root: usize,
        count_verity: usize,
    },
    #[error("{}: Type={partition_type} without CopyBlocks= is an empty slot, but there is no \
             slot with CopyBlocks= to size it by", file.display())]
    OnlyEmptySlots {
        file: PathBuf,
        partition_type: &'static str,
    },
    #[error("{}: Label={label:?}: {problem}", file.display())]
    Label {
        file: PathBuf,
        label: String,
        problem: String,
    },
    #[error("{}: CopyBlocks={} is {bytes} bytes, more than SizeMaxBytes={max}", file.display(), path.display())]
    TooLarge {
        file: PathBuf,
        path: PathBuf,
        bytes: u64,
        max: u64,
    },
}

/// Parses one definition file: `file` names it in errors, `text` is its contents.
pub fn parse_definition(file: &Path, text: &str) -> Result<Definition, RepartError> {
    let mut in_section = false;
    let mut partition_type = None;
    let mut definition = Definition {
        file: file.to_owned(),
        partition_type: PartitionType::LinuxGeneric,
        label: None,
        uuid: None,
        size_min_bytes: None,
        size_max_bytes: None,
        copy_blocks: None,
        format: None,
    };
    for (index, raw) in text.lines().enumerate() {
        let at_line = |source| RepartError::Line {
            file: file.to_owned(),
            line: index + 1,
            source,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            if name != SECTION {
                return Err(at_line(LineError::UnknownSection(name.to_owned())));
            }
            in_section = true;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(at_line(LineError::Syntax(line.to_owned())));
        };
        let (key, value) = (key.trim(), value.trim());
        if !in_section {
            return Err(at_line(LineError::OutsideSection(key.to_owned())));
        }
        // As in repart, an empty value resets the key to its default.
        let set = (!value.is_empty()).then_some(value);
        match key {
            "Type" => {
                partition_type = set
                    .map(|value| {
                        PartitionType::parse(value)
                            .ok_or_else(|| at_line(LineError::Type(value.to_owned())))
                    })
                    .transpose()?;
            }
            "Label" => definition.label = set.map(str::to_owned),
            "UUID" => {
                definition.uuid = set
                    .map(|value| {
                        Guid::parse(value).map_err(|source| {
                            at_line(LineError::Uuid {
                                value: value.to_owned(),
                                source,
                            })
                        })
                    })
                    .transpose()?;
            }
            "SizeMinBytes" => {
                definition.size_min_bytes = set
                    .map(|value| parse_size("SizeMinBytes", value).map_err(at_line))
                    .transpose()?;
            }
            "SizeMaxBytes" => {
                definition.size_max_bytes = set
                    .map(|value| parse_size("SizeMaxBytes", value).map_err(at_line))
                    .transpose()?;
            }
            "CopyBlocks" => definition.copy_blocks = set.map(CopyBlocks::parse),
            "Format" => {
                definition.format = set
                    .map(|value| match value {
                        "ext4" => Ok(Format::Ext4),
                        other => Err(at_line(LineError::Format(other.to_owned()))),
                    })
                    .transpose()?;
            }
            _ => return Err(at_line(LineError::UnknownKey(key.to_owned()))),
        }
    }
    definition.partition_type =
        partition_type.ok_or_else(|| RepartError::MissingType(file.to_owned()))?;
    if definition.format.is_some()
        && (definition.copy_blocks.is_some() || definition.partition_type.is_slot())
    {
        return Err(RepartError::FormatConflict(file.to_owned()));
    }
    if definition.copy_blocks.is_none()
        && definition.size_min_bytes.is_none()
        && !definition.partition_type.is_slot()
    {
        return Err(RepartError::MissingSize(file.to_owned()));
    }
    if let (Some(min), Some(max)) = (definition.size_min_bytes, definition.size_max_bytes) {
        if min > max {
            return Err(RepartError::SizeRange {
                file: file.to_owned(),
                min,
                max,
            });
        }
    }
    Ok(definition)
}

/// A size as repart reads one: a whole number of bytes, optionally with a 1024-based suffix.
fn parse_size(key: &'static str, value: &str) -> Result<u64, LineError> {
    let bad = || LineError::Size {
        key,
        value: value.to_owned(),
    };
    let digits = value.trim_end_matches(|ch: char| ch.is_ascii_alphabetic());
    let shift = match value[digits.len()..].trim() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let digits = digits.trim();
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    number.checked_mul(1 << shift).ok_or_else(bad)
}

/// The built-in A/B layout, parsed; its files are named as if in `build-initrd/definitions/`.
pub fn default_ab_definitions() -> Result<Vec<Definition>, RepartError> {
    DEFAULT_AB_LAYOUT
        .iter()
        .map(|(name, text)| parse_definition(&Path::new("definitions").join(name), text))
        .collect()
}

/// Reads and parses the `*.conf` files of `dir`, in file-name order.
pub fn read_definitions(dir: &Path) -> Result<Vec<Definition>, RepartError> {
    let read_dir = FileError::of(FileAction::ListDirectory, dir);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(&read_dir)? {
        let path = entry.map_err(&read_dir)?.path();
        if path.extension().is_some_and(|ext| ext == "conf") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(RepartError::Empty(dir.to_owned()));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).map_err(FileError::of(FileAction::Read, path))?;
            parse_definition(path, &text)
        })
        .collect()
}

/// `build-initrd/definitions/`, the A/B layout `xorbang-build os` lays a disk out with when
/// a profile names no definitions of its own.
pub const DEFAULT_AB_LAYOUT: &[(&str, &str)] = &[
    ("00-esp.conf", include_str!("../../definitions/00-esp.conf")),
    (
        "10-root.conf",
        include_str!("../../definitions/10-root.conf"),
    ),
    (
        "11-root-verity.conf",
        include_str!("../../definitions/11-root-verity.conf"),
    ),
    (
        "20-root-b.conf",
        include_str!("../../definitions/20-root-b.conf"),
    ),
    (
        "21-root-b-verity.conf",
        include_str!("../../definitions/21-root-b-verity.conf"),
    ),
    ("30-var.conf", include_str!("../../definitions/30-var.conf")),
];

/// The label an empty slot gets without `Label=`, as systemd-sysupdate marks a free one.
pub const EMPTY_SLOT_LABEL: &str = "_empty";

/// The partitions the definitions lay out, with `CopyBlocks=` names resolved against this
/// build's `outputs` and relative paths against `dir`.
pub fn partitions(
    dir: &Path,
    definitions: &[Definition],
    outputs: &BuildOutputs<'_>,
) -> Result<Vec<DiskPartition>, RepartError> {
    check_slots(definitions)?;
    let mut partitions = definitions
        .iter()
        .map(|definition| partition(dir, definition, outputs))
        .collect::<Result<Vec<_>, _>>()?;
    equalize_slots(definitions, &mut partitions)?;
    Ok(partitions)
}

fn partition(
    dir: &Path,
    definition: &Definition,
    outputs: &BuildOutputs<'_>,
) -> Result<DiskPartition, RepartError> {
    let file = &definition.file;
    let source = match &definition.copy_blocks {
        None => None,
        Some(CopyBlocks::RootImage) => Some(outputs.image.to_owned()),
        Some(CopyBlocks::RootVerity) => Some(outputs.tree.to_owned()),
        Some(CopyBlocks::UkiEsp) => Some(
            outputs
                .esp
                .ok_or_else(|| RepartError::NoUki(file.clone()))?
                .to_owned(),
        ),
        Some(CopyBlocks::File(path)) => Some(dir.join(path)),
    };
    if let (Some(path), Some(max)) = (&source, definition.size_max_bytes) {
        let bytes = source_bytes(file, path)?;
        if bytes > max {
            return Err(RepartError::TooLarge {
                file: file.clone(),
                path: path.clone(),
                bytes,
                max,
            });
        }
    }
    let empty_slot = definition.partition_type.is_slot() && source.is_none();
    let label = match &definition.label {
        Some(label) => expand_label(file, label, outputs.identity)?,
        None if empty_slot => EMPTY_SLOT_LABEL.to_owned(),
        None => definition.partition_type.default_label().to_owned(),
    };
    let (data_uuid, hash_uuid) = outputs.root_hash.partition_uuids();
    let root_uuid = match definition.partition_type {
        PartitionType::Root if !empty_slot => Some(("root", data_uuid)),
        PartitionType::RootVerity if !empty_slot => Some(("root-verity", hash_uuid)),
        _ => None,
    };
    let uuid = match (definition.uuid, root_uuid) {
        (Some(given), Some((partition_type, derived))) if given != derived => {
            return Err(RepartError::RootUuid {
                file: file.clone(),
                partition_type,
                given,
                derived,
            })
        }
        (_, Some((_, derived))) => derived,
        (Some(given), None) => given,
        // Empty slots share a label: their file names tell them apart.
        (None, None) if empty_slot => {
            derived_uuid(outputs.root_hash, &format!("{label}/{}", file.display()))
        }
        (None, None) => derived_uuid(outputs.root_hash, &label),
    };
    let source = match definition.format {
        Some(Format::Ext4) => Some(make_ext4(definition, outputs, &label, uuid)?),
        None => source,
    };
    Ok(DiskPartition {
        type_guid: definition.partition_type.guid(),
        uuid,
        label,
        source,
        min_bytes: definition.size_min_bytes.unwrap_or(0),
    })
}

/// An empty ext4 file system of the partition's size in the scratch directory, reproducible:
/// its UUID and directory hash seed are the PARTUUID (itself derived from the root hash), its
/// label the partition's (cut to ext4's 16 bytes), its times SOURCE_DATE_EPOCH (else 1).
fn make_ext4(
    definition: &Definition,
    outputs: &BuildOutputs<'_>,
    label: &str,
    uuid: Guid,
) -> Result<PathBuf, RepartError> {
    let file = &definition.file;
    let path = outputs.scratch.join(format!("{uuid}.ext4"));
    let bytes = definition.size_min_bytes.unwrap_or(0);
    std::fs::File::create(&path)
        .and_then(|created| created.set_len(bytes))
        .map_err(|error| RepartError::Source {
            file: file.clone(),
            source: FileError::of(FileAction::Write, &path)(error),
        })?;
    let fs_label: String = label.chars().take(16).collect();
    // mke2fs takes a fake time of 0 for "none" and stamps the clock's: 0 becomes 1.
    let time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|epoch| epoch.parse::<u64>().ok())
        .unwrap_or(0)
        .max(1);
    tool::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", &fs_label, "-U", &uuid.to_string(), "-E"])
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg(&path)
            .env("E2FSPROGS_FAKE_TIME", time.to_string()),
        "e2fsprogs",
    )
    .map_err(|source| RepartError::MakeFileSystem {
        file: file.clone(),
        source,
    })?;
    Ok(path)
}

fn source_bytes(file: &Path, path: &Path) -> Result<u64, RepartError> {
    std::fs::metadata(path)
        .map(|metadata| metadata.len())
        .map_err(|error| RepartError::Source {
            file: file.to_owned(),
            source: FileError::of(FileAction::Inspect, path)(error),
        })
}

/// Expands repart's `%M` (IMAGE_ID), `%A` (IMAGE_VERSION) and `%%` in a label.
fn expand_label(file: &Path, label: &str, identity: &ImageIdentity) -> Result<String, RepartError> {
    let problem = |problem: String| RepartError::Label {
        file: file.to_owned(),
        label: label.to_owned(),
        problem,
    };
    let mut expanded = String::new();
    let mut chars = label.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            expanded.push(ch);
            continue;
        }
        let (value, key) = match chars.next() {
            Some('%') => {
                expanded.push('%');
                continue;
            }
            Some('M') => (&identity.image_id, "IMAGE_ID"),
            Some('A') => (&identity.image_version, "IMAGE_VERSION"),
            Some(other) => return Err(problem(format!("%{other} is not one of %M, %A, %%"))),
            None => return Err(problem("it ends in a lone %".to_owned())),
        };
        let value = value
            .as_deref()
            .ok_or_else(|| problem(format!("the image's os-release has no {key}=")))?;
        expanded.push_str(value);
    }
    // GPT names are 36 UTF-16 units.
    if expanded.encode_utf16().count() > 36 {
        return Err(problem(format!(
            "{expanded:?} is longer than the 36 characters a GPT name holds"
        )));
    }
    Ok(expanded)
}

/// Exactly one filled slot of each slot type, as many slots of one type as of the other:
/// the init finds the filled one by the PARTUUIDs derived from the root hash.
fn check_slots(definitions: &[Definition]) -> Result<(), RepartError> {
    let mut counts = [0usize; 2];
    for (count, partition_type) in counts
        .iter_mut()
        .zip([PartitionType::Root, PartitionType::RootVerity])
    {
        let slots: Vec<_> = definitions
            .iter()
            .filter(|definition| definition.partition_type == partition_type)
            .collect();
        *count = slots.len();
        let mut filled = slots.iter().filter(|slot| slot.copy_blocks.is_some());
        match (filled.next(), filled.next()) {
            (Some(first), Some(second)) => {
                return Err(RepartError::TwoRoots {
                    first: first.file.clone(),
                    second: second.file.clone(),
                    partition_type: partition_type.name(),
                })
            }
            (None, _) if !slots.is_empty() => {
                return Err(RepartError::OnlyEmptySlots {
                    file: slots[0].file.clone(),
                    partition_type: partition_type.name(),
                })
            }
            _ => {}
        }
    }
    if counts[0] != counts[1] && counts[0] > 1 {
        return Err(RepartError::UnpairedSlots {
            count_root: counts[0],
            count_verity: counts[1],
        });
    }
    Ok(())
}

/// Makes every slot of a type as large as the largest one (content or `SizeMinBytes=`).
fn equalize_slots(
    definitions: &[Definition],
    partitions: &mut [DiskPartition],
) -> Result<(), RepartError> {
    for partition_type in [PartitionType::Root, PartitionType::RootVerity] {
        let slots = definitions
            .iter()
            .filter(|definition| definition.partition_type == partition_type)
            .count();
        if slots < 2 {
            continue;
        }
        let mut largest = 0;
        for (definition, partition) in definitions.iter().zip(partitions.iter()) {
            if definition.partition_type != partition_type {
                continue;
            }
            let content = match &partition.source {
                Some(path) => source_bytes(&definition.file, path)?,
                None => 0,
            };
            largest = largest.max(content).max(partition.min_bytes);
        }
        for (definition, partition) in definitions.iter().zip(partitions.iter_mut()) {
            if definition.partition_type == partition_type {
                partition.min_bytes = largest;
            }
        }
    }
    Ok(())
}

/// The first 16 bytes of SHA-256 over the root hash and the label.
fn derived_uuid(root_hash: &RootHash, label: &str) -> Guid {
    let digest = Sha256::new()
        .chain_update(root_hash.as_bytes())
        .chain_update(label.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Guid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::error_chain::error_chain;

    const ROOT_HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn root_hash() -> RootHash {
        RootHash::parse_hex(ROOT_HASH).expect("hex")
    }

    fn parse(text: &str) -> Result<Definition, RepartError> {
        parse_definition(Path::new("10-x.conf"), text)
    }

    #[test]
    fn parses_a_full_layout() {
        let esp = parse("# the ESP\n[Partition]\nType=esp\nSizeMinBytes=64M\nCopyBlocks=uki-esp\n")
            .expect("esp");
        assert_eq!(esp.partition_type, PartitionType::Esp);
        assert_eq!(esp.size_min_bytes, Some(64 << 20));
        assert_eq!(esp.copy_blocks, Some(CopyBlocks::UkiEsp));
        let root = parse("[Partition]\nType=root\nCopyBlocks=root-image\nSizeMaxBytes=2G\n")
            .expect("root");
        assert_eq!(root.size_max_bytes, Some(2 << 30));
        assert_eq!(root.copy_blocks, Some(CopyBlocks::RootImage));
        let verity = parse(
            "[Partition]\nType=root-verity\nCopyBlocks=root-verity\n\
             UUID=A6A77EDE-951F-AD19-F0F9-4DF0D7266A93\n",
        )
        .expect("verity");
        assert_eq!(
            verity.uuid.map(|uuid| uuid.to_string()).as_deref(),
            Some("a6a77ede-951f-ad19-f0f9-4df0d7266a93")
        );
        let var = parse(
            "[Partition]\n  Type = var\nLabel=state\n; no content\nSizeMinBytes=256M\n\
             UUID=00112233-4455-6677-8899-AABBCCDDEEFF\n",
        )
        .expect("var");
        assert_eq!(var.label.as_deref(), Some("state"));
        assert_eq!(var.copy_blocks, None);

        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        let tree = dir.path().join("root.verity");
        let esp_image = dir.path().join("esp.img");
        std::fs::write(&image, vec![0xaa; 3 << 20]).expect("write");
        std::fs::write(&tree, vec![0xbb; 4096]).expect("write");
        std::fs::write(&esp_image, vec![0xcc; 4096]).expect("write");
        let hash = root_hash();
        let outputs = BuildOutputs {
            root_hash: &hash,
            image: &image,
            tree: &tree,
            esp: Some(&esp_image),
            identity: &NO_IDENTITY,
            scratch: dir.path(),
        };
        let laid_out =
            partitions(dir.path(), &[esp, root, verity, var], &outputs).expect("partitions");
        let types: Vec<_> = laid_out.iter().map(|p| p.type_guid).collect();
        assert_eq!(
            types,
            [
                gpt::ESP,
                gpt::ROOT_X86_64,
                gpt::ROOT_VERITY_X86_64,
                gpt::VAR
            ]
        );
        let labels: Vec<_> = laid_out.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            ["esp", "root-x86-64", "root-x86-64-verity", "state"]
        );
        assert_eq!(laid_out[1].uuid, hash.partition_uuids().0);
        assert_eq!(laid_out[2].uuid, hash.partition_uuids().1);
        assert_eq!(
            laid_out[3].uuid.to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(laid_out[3].source, None);
        assert_eq!(laid_out[3].min_bytes, 256 << 20);

        let disk = dir.path().join("disk.img");
        let size = crate::boot::disk::write_disk(&disk, &laid_out).expect("disk");
        // 1 MiB GPT + 64 + 3 + 1 + 256 MiB + 1 MiB backup GPT.
        assert_eq!(size, (1 + 64 + 3 + 1 + 256 + 1) << 20);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let error = parse("[Partition]\nType=root\nEncrypt=key-file\n").expect_err("unknown");
        assert!(
            matches!(error, RepartError::Line { line: 3, .. }),
            "{error:?}"
        );
        let text = error_chain(&error);
        assert!(
            text.contains("10-x.conf:3") && text.contains("\"Encrypt\""),
            "{text}"
        );
        let error = parse("[Partition]\ntype=root\n").expect_err("case-sensitive");
        assert!(
            error_chain(&error).contains("unknown key \"type\""),
            "{error:?}"
        );
        let error = parse("[Install]\nType=root\n").expect_err("section");
        assert!(error_chain(&error).contains("10-x.conf:1: unknown section [Install]"));
    }

    static NO_IDENTITY: ImageIdentity = ImageIdentity {
        image_id: None,
        image_version: None,
    };

    fn ab_definitions() -> Vec<Definition> {
        [
            (
                "10-root-a.conf",
                "Type=root\nLabel=%M_%A\nCopyBlocks=root-image\nSizeMinBytes=4M",
            ),
            (
                "11-verity-a.conf",
                "Type=root-verity\nLabel=%M_%A_verity\nCopyBlocks=root-verity",
            ),
            ("20-root-b.conf", "Type=root"),
            ("21-verity-b.conf", "Type=root-verity\nSizeMinBytes=2M"),
        ]
        .iter()
        .map(|(file, body)| {
            parse_definition(Path::new(file), &format!("[Partition]\n{body}\n")).expect(file)
        })
        .collect()
    }

    #[test]
    fn ab_slots_are_labelled_by_image_and_sized_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        let tree = dir.path().join("root.verity");
        std::fs::write(&image, vec![0xaa; 3 << 20]).expect("write");
        std::fs::write(&tree, vec![0xbb; 4096]).expect("write");
        let hash = root_hash();
        let identity = ImageIdentity {
            image_id: Some("demo".to_owned()),
            image_version: Some("1.2".to_owned()),
        };
        let outputs = BuildOutputs {
            root_hash: &hash,
            image: &image,
            tree: &tree,
            esp: None,
            identity: &identity,
            scratch: dir.path(),
        };
        let laid_out = partitions(dir.path(), &ab_definitions(), &outputs).expect("partitions");
        let labels: Vec<_> = laid_out.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["demo_1.2", "demo_1.2_verity", "_empty", "_empty"]);
        let sizes: Vec<_> = laid_out.iter().map(|p| p.min_bytes).collect();
        assert_eq!(sizes, [4 << 20, 2 << 20, 4 << 20, 2 << 20]);
        let (data, verity) = hash.partition_uuids();
        assert_eq!((laid_out[0].uuid, laid_out[1].uuid), (data, verity));
        let mut uuids: Vec<_> = laid_out.iter().map(|p| p.uuid).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 4, "every PARTUUID differs");

        let error = partitions(
            dir.path(),
            &ab_definitions(),
            &BuildOutputs {
                identity: &NO_IDENTITY,
                ..outputs
            },
        )
        .expect_err("no IMAGE_ID");
        assert_eq!(
            error.to_string(),
            "10-root-a.conf: Label=\"%M_%A\": the image's os-release has no IMAGE_ID="
        );
    }

    #[test]
    fn label_specifiers_are_checked() {
        let identity = ImageIdentity {
            image_id: Some("a".repeat(30)),
            image_version: Some("1".to_owned()),
        };
        let file = Path::new("x.conf");
        assert_eq!(
            expand_label(file, "100%%_%A", &identity).expect("expands"),
            "100%_1"
        );
        for (label, problem) in [
            ("%Q", "%Q is not one of %M, %A, %%"),
            ("x%", "it ends in a lone %"),
        ] {
            let error = expand_label(file, label, &identity).expect_err(label);
            assert_eq!(
                error.to_string(),
                format!("x.conf: Label={label:?}: {problem}")
            );
        }
        let error = expand_label(file, "%M_%A_verity", &identity).expect_err("long");
        assert!(error
            .to_string()
            .ends_with("longer than the 36 characters a GPT name holds"));
    }

    #[test]
    fn slots_must_pair_and_one_must_be_filled() {
        let mut definitions = ab_definitions();
        definitions.remove(3);
        let hash = root_hash();
        let error =
            partitions(Path::new("."), &definitions, &outputs(&hash)).expect_err("unpaired");
        assert_eq!(
            error.to_string(),
            "2 Type=root and 1 Type=root-verity partitions: each slot is a root and its hash tree"
        );
        let empty_only = &ab_definitions()[2..];
        let error =
            partitions(Path::new("."), empty_only, &outputs(&hash)).expect_err("none filled");
        assert!(
            error
                .to_string()
                .starts_with("20-root-b.conf: Type=root without CopyBlocks= is an empty slot"),
            "{error}"
        );
    }

    fn outputs(hash: &RootHash) -> BuildOutputs<'_> {
        BuildOutputs {
            root_hash: hash,
            image: Path::new("root.img"),
            tree: Path::new("root.verity"),
            esp: None,
            identity: &NO_IDENTITY,
            scratch: Path::new("scratch"),
        }
    }

    #[test]
    fn two_roots_or_two_hash_trees_are_refused() {
        let hash = root_hash();
        for (kind, copy) in [("root", "root-image"), ("root-verity", "root-verity")] {
            let text = format!("[Partition]\nType={kind}\nCopyBlocks={copy}\n");
            let first = parse_definition(Path::new("10-a.conf"), &text).expect("first");
            let second = parse_definition(Path::new("20-b.conf"), &text).expect("second");
            let error = partitions(Path::new("."), &[first, second], &outputs(&hash))
                .expect_err("two of a kind");
            assert_eq!(
                error.to_string(),
                format!(
                    "10-a.conf and 20-b.conf: two Type={kind} partitions with CopyBlocks=; a \
                     disk holds one root and its hash tree, which roothash= finds by PARTUUID \
                     (other slots stay empty)"
                )
            );
        }
    }

    #[test]
    fn a_root_uuid_that_contradicts_the_root_hash_is_refused() {
        let hash = root_hash();
        for (kind, copy, derived) in [
            ("root", "root-image", "954172df-ee9a-aab2-d90a-0ab162ee6bc5"),
            (
                "root-verity",
                "root-verity",
                "a6a77ede-951f-ad19-f0f9-4df0d7266a93",
            ),
        ] {
            let agreeing = parse(&format!(
                "[Partition]\nType={kind}\nCopyBlocks={copy}\nUUID={derived}\n"
            ))
            .expect("agrees");
            let laid_out = partitions(Path::new("."), &[agreeing], &outputs(&hash)).expect("ok");
            assert_eq!(laid_out[0].uuid.to_string(), derived);
            // The other half of the hash: right bytes, wrong partition.
            let swapped = if kind == "root" {
                "a6a77ede-951f-ad19-f0f9-4df0d7266a93"
            } else {
                "954172df-ee9a-aab2-d90a-0ab162ee6bc5"
            };
            let contradicting = parse(&format!(
                "[Partition]\nType={kind}\nCopyBlocks={copy}\nUUID={swapped}\n"
            ))
            .expect("parses");
            let error = partitions(Path::new("."), &[contradicting], &outputs(&hash))
                .expect_err("contradicts");
            assert_eq!(
                error.to_string(),
                format!(
                    "10-x.conf: UUID={swapped} contradicts the PARTUUID the root hash gives \
                     this {kind} partition, {derived}: roothash= would not find it; drop UUID="
                )
            );
        }
    }

    #[test]
    fn a_missing_type_is_an_error() {
        let error = parse("[Partition]\nCopyBlocks=root-image\n").expect_err("no type");
        assert!(matches!(error, RepartError::MissingType(_)), "{error:?}");
        assert_eq!(error.to_string(), "10-x.conf: no Type= in [Partition]");
    }

    #[test]
    fn a_bad_size_is_an_error() {
        for bad in [
            "64X",
            "M",
            "-1",
            "1.5G",
            "99999999999999999999",
            "20000000T",
        ] {
            let error =
                parse(&format!("[Partition]\nType=var\nSizeMinBytes={bad}\n")).expect_err(bad);
            assert!(
                error_chain(&error).contains("10-x.conf:3: SizeMinBytes="),
                "{bad}: {error:?}"
            );
        }
        assert_eq!(parse_size("SizeMinBytes", "4096").expect("bytes"), 4096);
        assert_eq!(parse_size("SizeMinBytes", "1 K").expect("K"), 1024);
        let error = parse("[Partition]\nType=var\n").expect_err("no size");
        assert!(matches!(error, RepartError::MissingSize(_)), "{error:?}");
        let error =
            parse("[Partition]\nType=var\nSizeMinBytes=2M\nSizeMaxBytes=1M\n").expect_err("range");
        assert!(matches!(error, RepartError::SizeRange { .. }), "{error:?}");
    }

    #[test]
    fn format_ext4_makes_the_same_empty_file_system_twice() {
        let definition = parse("[Partition]\nType=var\nLabel=var\nFormat=ext4\nSizeMinBytes=8M\n")
            .expect("parse");
        assert_eq!(definition.format, Some(Format::Ext4));
        let hash = root_hash();
        let made: Vec<Vec<u8>> = (0..2)
            .map(|run| {
                // mke2fs stamps the clock's seconds where it is not told a time.
                if run == 1 {
                    std::thread::sleep(std::time::Duration::from_millis(1100));
                }
                let dir = tempfile::tempdir().expect("tempdir");
                let outputs = BuildOutputs {
                    scratch: dir.path(),
                    ..outputs(&hash)
                };
                let laid_out = partitions(dir.path(), std::slice::from_ref(&definition), &outputs)
                    .expect("formatted");
                let source = laid_out[0].source.as_ref().expect("a file system");
                std::fs::read(source).expect("read")
            })
            .collect();
        assert_eq!(made[0].len(), 8 << 20);
        assert_eq!(made[0], made[1], "the file system is reproducible");
        let probed = xorbang_formats::fs_probe::probe(&made[0][..64 * 1024]);
        assert_eq!(
            probed.map(|info| info.kind.to_string()),
            Some("ext4".to_owned())
        );
    }

    #[test]
    fn format_is_ext4_only_and_never_with_copy_blocks_or_on_a_slot() {
        let error =
            parse("[Partition]\nType=var\nFormat=btrfs\nSizeMinBytes=8M\n").expect_err("btrfs");
        assert!(
            error_chain(&error).contains("Format=\"btrfs\": only ext4"),
            "{error}"
        );
        for text in [
            "[Partition]\nType=var\nFormat=ext4\nCopyBlocks=x\n",
            "[Partition]\nType=root\nFormat=ext4\nSizeMinBytes=8M\n",
        ] {
            let error = parse(text).expect_err(text);
            assert!(matches!(error, RepartError::FormatConflict(_)), "{error}");
        }
    }

    #[test]
    fn uki_esp_without_an_esp_is_an_error() {
        let esp = parse("[Partition]\nType=esp\nCopyBlocks=uki-esp\n").expect("esp");
        let hash = root_hash();
        let outputs = BuildOutputs {
            root_hash: &hash,
            image: Path::new("root.img"),
            tree: Path::new("root.verity"),
            esp: None,
            identity: &NO_IDENTITY,
            scratch: Path::new("scratch"),
        };
        let error = partitions(Path::new("."), &[esp], &outputs).expect_err("no uki");
        assert_eq!(
            error.to_string(),
            "10-x.conf: CopyBlocks=uki-esp needs --uki"
        );
    }

    #[test]
    fn content_larger_than_size_max_bytes_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("blob"), vec![1; 2048]).expect("write");
        let definition =
            parse("[Partition]\nType=linux-generic\nCopyBlocks=blob\nSizeMaxBytes=1K\n")
                .expect("parse");
        let hash = root_hash();
        let outputs = BuildOutputs {
            root_hash: &hash,
            image: Path::new("root.img"),
            tree: Path::new("root.verity"),
            esp: None,
            identity: &NO_IDENTITY,
            scratch: Path::new("scratch"),
        };
        let error = partitions(dir.path(), &[definition], &outputs).expect_err("too large");
        assert!(
            matches!(
                error,
                RepartError::TooLarge {
                    bytes: 2048,
                    max: 1024,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn the_shipped_ab_layout_is_the_default_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions");
        let definitions = read_definitions(&dir).expect("definitions");
        let names: Vec<_> = definitions
            .iter()
            .map(|d| d.file.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        let embedded: Vec<_> = DEFAULT_AB_LAYOUT.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, embedded);
        for ((name, text), definition) in DEFAULT_AB_LAYOUT.iter().zip(&definitions) {
            let on_disk = std::fs::read_to_string(&definition.file).expect("read");
            assert_eq!(&on_disk, text, "{name}");
        }
        let types: Vec<_> = definitions.iter().map(|d| d.partition_type).collect();
        assert_eq!(
            types,
            [
                PartitionType::Esp,
                PartitionType::Root,
                PartitionType::RootVerity,
                PartitionType::Root,
                PartitionType::RootVerity,
                PartitionType::Var
            ]
        );
        assert_eq!(definitions[0].copy_blocks, Some(CopyBlocks::UkiEsp));
        assert_eq!(definitions[1].copy_blocks, Some(CopyBlocks::RootImage));
        assert_eq!(definitions[1].label.as_deref(), Some("%M_%A"));
        assert_eq!(definitions[2].copy_blocks, Some(CopyBlocks::RootVerity));
        assert_eq!(definitions[3].copy_blocks, None);
        assert_eq!(definitions[5].size_min_bytes, Some(256 << 20));
        check_slots(&definitions).expect("one filled slot of each");
    }
}

//! System and configuration extensions: UAPI extension images (a GPT with a SquashFS
//! root-x86-64 partition and its root-x86-64-verity hash tree) found in the base image or
//! the initramfs, trusted only when a root hash pins them, verified block by block through
//! dm-verity, matched against the base's os-release, and mounted read-only so that
//! [`crate::handoff::mounts::plan_layers`] can stack them over /usr, /opt and /etc.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xorbang_formats::boot_report::Trust;
use xorbang_formats::error_chain::error_chain;

use crate::discovery::block_devices::{self, GptReadError};
use crate::discovery::loop_devices::{self, AttachedLoop, ByteRange, LoopError};
use crate::handoff::mounts::{self, Mount, MountError, MountOp};
use crate::options::ExtensionRequest;
use crate::verity::activation::{self, Mapping, VerityRootError};
use crate::verity::device_mapper::DeviceMapper;
use xorbang_formats::extension_pins::{ExtensionPins, MANIFEST_PATH};
use xorbang_formats::fs_probe::FsKind;
use xorbang_formats::gpt::{self, GptPartition, Guid, SectorSize};
use xorbang_formats::os_release::{
    check_extension, ExtensionKind, MatchError, OsRelease, OsReleaseError,
};
use xorbang_formats::verity::RootHash;

/// Whole-image verification reads this much at a time.
const READ_CHUNK: usize = 1 << 20;
/// After a failed chunk, the search for the bad block reads this much at a time: the
/// smallest verity data block.
const VERIFY_BLOCK: usize = 512;

/// Where an image directory is: inside the verified base image, in the initramfs (where
/// systemd-stub puts the ESP's `*.raw` and where a PXE server's extra cpio lands), or on
/// the state partition (the booted system's /var).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Base,
    Initramfs,
    State,
}

impl Place {
    /// How a directory of this place is named in messages and the report.
    pub fn show(self, dir: &str) -> String {
        match self {
            Self::Base => format!("/{dir}"),
            Self::Initramfs => format!("initramfs:/{dir}"),
            Self::State => format!("state:/var/{dir}"),
        }
    }
}

/// The directories searched for `NAME.raw`, highest precedence first: a name found in one
/// hides the same name further down, as systemd-sysext's search path does.
pub fn search_dirs(kind: ExtensionKind) -> [(Place, &'static str); 4] {
    match kind {
        ExtensionKind::Sysext => [
            (Place::Base, "etc/extensions"),
            (Place::Initramfs, ".extra/sysext"),
            (Place::State, "lib/extensions"),
            (Place::Base, "usr/lib/extensions"),
        ],
        ExtensionKind::Confext => [
            (Place::Base, "etc/confexts"),
            (Place::Initramfs, ".extra/confext"),
            (Place::State, "lib/confexts"),
            (Place::Base, "usr/lib/confexts"),
        ],
    }
}

/// The roots the search directories are relative to.
#[derive(Debug, Clone, Copy)]
pub struct SearchRoots<'a> {
    pub initramfs: &'a Path,
    pub base: &'a Path,
    /// The mounted state partition, if there is one.
    pub state: Option<&'a Path>,
}

/// An image file that may be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Where to open it now.
    pub file: PathBuf,
    /// How messages and the report name it.
    pub shown: String,
    pub place: Place,
}

/// An extension verified, checked and mounted, ready to be layered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    pub kind: ExtensionKind,
    pub name: String,
    pub image: String,
    pub root_hash: RootHash,
    pub trust: Trust,
    /// Where its file system is mounted.
    pub mount: PathBuf,
    /// Where its image was found.
    pub place: Place,
    /// Which of the kind's hierarchies it carries.
    pub hierarchies: Vec<&'static str>,
}

/// Why one extension cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("not found in {searched}")]
    NotFound { searched: String },
    #[error(
        "not pinned: neither {MANIFEST_PATH} in the base image nor the command line \
         (NAME:ROOTHASH) names its root hash, and production merges only pinned extensions"
    )]
    Unpinned,
    #[error("pinned twice: the command line says {cmdline}, the base image's manifest {manifest}")]
    PinConflict {
        cmdline: RootHash,
        manifest: RootHash,
    },
    #[error("cannot read its partition table")]
    Gpt(#[source] GptReadError),
    #[error("expected one root-x86-64 and one root-x86-64-verity partition, found {found}")]
    Partitions { found: String },
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("verity")]
    Verity(#[from] VerityRootError),
    /// The read error sits inside the message, so it is deliberately not a `source()`:
    /// the chain could only append it after "the image was modified".
    #[error(
        "byte {offset} of {device} does not match the hash tree (dm-verity: {read_error}); \
         the image was modified"
    )]
    Corrupted {
        device: PathBuf,
        offset: u64,
        read_error: io::Error,
    },
    #[error("holds {found}, not SquashFS")]
    NotSquashfs { found: String },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("has no {path}")]
    NoRelease { path: String },
    #[error("{path}")]
    BadRelease {
        path: String,
        source: OsReleaseError,
    },
    #[error("{path}")]
    Mismatch { path: String, source: MatchError },
    #[error("carries none of {wanted} (a {kind} merges only those)")]
    NoHierarchy { kind: ExtensionKind, wanted: String },
    #[error("carries usr/lib/os-release, which would replace the base's identity")]
    CarriesOsRelease,
    #[error("the base image has no /{0} to merge it onto")]
    NoMountPoint(&'static str),
    #[error("cannot copy it off the state partition")]
    Copy(#[source] crate::untrusted::UntrustedFileError),
    #[error(transparent)]
    Probe(crate::discovery::block_devices::BlockError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// A file or directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// One extension refused, named as the user knows it.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}{}", image.as_deref().map(|image| format!(" ({image})")).unwrap_or_default())]
pub struct ExtensionError {
    pub kind: ExtensionKind,
    pub name: String,
    pub image: Option<String>,
    #[source]
    pub cause: Box<Cause>,
}

/// Problems with the base image's own inputs to merging.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("the base image's {path}")]
    OsRelease {
        path: String,
        source: OsReleaseError,
    },
    #[error(
        "the base image has no etc/os-release or usr/lib/os-release to match extensions against"
    )]
    NoOsRelease,
    #[error("the base image's {MANIFEST_PATH}")]
    Pins(#[from] xorbang_formats::extension_pins::PinsError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Every `NAME.raw` of the kind, each name from the first directory that has it.
pub fn discover(
    kind: ExtensionKind,
    roots: &SearchRoots,
) -> Result<BTreeMap<String, Candidate>, BaseError> {
    let mut found = BTreeMap::new();
    for (place, dir) in search_dirs(kind) {
        let root = match place {
            Place::Base => roots.base,
            Place::Initramfs => roots.initramfs,
            Place::State => match roots.state {
                Some(state) => state,
                None => continue,
            },
        };
        for (name, file) in raw_images(&root.join(dir))? {
            let shown = format!("{}/{name}.raw", place.show(dir));
            found.entry(name.clone()).or_insert(Candidate {
                name,
                file,
                shown,
                place,
            });
        }
    }
    Ok(found)
}

/// `(name, path)` of the `*.raw` files in `dir`; none if it does not exist.
fn raw_images(dir: &Path) -> Result<Vec<(String, PathBuf)>, BaseError> {
    let read_error = |source| {
        BaseError::Read(ReadError {
            path: dir.to_owned(),
            source,
        })
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(read_error(error)),
    };
    let mut images = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_error)?.path();
        let Some(name) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".raw"))
        else {
            continue;
        };
        if xorbang_formats::extension_pins::valid_name(name) {
            images.push((name.to_owned(), path.clone()));
        } else {
            log::warn!("ignoring {}: not a valid extension name", path.display());
        }
    }
    Ok(images)
}

/// The base image's os-release, where systemd looks for it.
pub fn base_os_release(base: &Path) -> Result<OsRelease, BaseError> {
    for path in ["etc/os-release", "usr/lib/os-release"] {
        let Some(text) = read_in_root(base, path)? else {
            continue;
        };
        return OsRelease::parse(&text).map_err(|source| BaseError::OsRelease {
            path: path.to_owned(),
            source,
        });
    }
    Err(BaseError::NoOsRelease)
}

/// The pins of the base image; none if it carries no manifest.
pub fn base_pins(base: &Path) -> Result<ExtensionPins, BaseError> {
    match read_in_root(base, MANIFEST_PATH)? {
        Some(text) => Ok(ExtensionPins::parse(&text)?),
        None => Ok(ExtensionPins::default()),
    }
}

/// Reads `relative` inside the tree at `root`, following symlinks as that tree would (an
/// absolute /etc/os-release link must not reach into the initramfs). Only a regular file,
/// opened without blocking and read up to a bound: an unverified root (dev mode) could hold
/// a FIFO there, and every boot reads os-release.
fn read_in_root(root: &Path, relative: &str) -> Result<Option<String>, ReadError> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    let read_error = |source: io::Error| ReadError {
        path: root.join(relative),
        source,
    };
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(|errno| read_error(errno.into()))?;
    let fd = match rustix::fs::openat2(
        &dir,
        relative,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(errno) => return Err(read_error(errno.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|errno| read_error(errno.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(read_error(io::Error::other("not a regular file")));
    }
    let mut text = String::new();
    File::from(fd)
        .take(MAX_ROOT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_ROOT_FILE_BYTES {
        return Err(read_error(io::Error::other(format!(
            "more than {MAX_ROOT_FILE_BYTES} bytes"
        ))));
    }
    Ok(Some(text))
}

/// os-release and the pin manifest are a few kilobytes.
const MAX_ROOT_FILE_BYTES: u64 = 1 << 20;

/// The root hash an extension must have and why it is trusted; `None` means unpinned.
pub fn pin_for(
    kind: ExtensionKind,
    request: &ExtensionRequest,
    pins: &ExtensionPins,
) -> Result<(Option<RootHash>, Trust), Cause> {
    let manifest = pins.get(kind, &request.name);
    match (&request.pin, manifest) {
        (Some(cmdline), Some(manifest)) if cmdline != manifest => Err(Cause::PinConflict {
            cmdline: cmdline.clone(),
            manifest: manifest.clone(),
        }),
        (Some(cmdline), _) => Ok((Some(cmdline.clone()), Trust::Cmdline)),
        (None, Some(manifest)) => Ok((Some(manifest.clone()), Trust::BaseManifest)),
        (None, None) => Ok((None, Trust::Unpinned)),
    }
}

/// What activation needs from the boot.
#[derive(Debug)]
pub struct Activator<'a> {
    pub dev_dir: &'a Path,
    /// Extensions are mounted under `<mount_dir>/<kind>/<name>`.
    pub mount_dir: &'a Path,
    pub base: &'a Path,
    pub base_release: &'a OsRelease,
    /// Where images from the state partition are copied (on /run), so that partition is
    /// free again once the extensions are verified.
    pub copy_dir: &'a Path,
}

/// Far above a real extension; a copy larger than this is refused rather than fill /run.
const MAX_COPIED_IMAGE_BYTES: u64 = 1 << 30;

/// What was set up so far, to be undone when a later step refuses the extension.
#[derive(Debug, Default)]
struct Undo {
    mapping: Option<String>,
    mount: Option<PathBuf>,
    copy: Option<PathBuf>,
}

impl Activator<'_> {
    /// Maps, verifies, mounts and checks one extension. On refusal nothing of it stays
    /// mapped or mounted (its read-only loop devices stay attached, unused).
    pub fn activate(
        &self,
        kind: ExtensionKind,
        candidate: &Candidate,
        pin: Option<RootHash>,
        trust: Trust,
    ) -> Result<Activated, ExtensionError> {
        let mut undo = Undo::default();
        let result = self.try_activate(kind, candidate, pin, trust, &mut undo);
        if result.is_err() {
            self.undo(undo);
        }
        result.map_err(|cause| ExtensionError {
            kind,
            name: candidate.name.clone(),
            image: Some(candidate.shown.clone()),
            cause: Box::new(cause),
        })
    }

    fn try_activate(
        &self,
        kind: ExtensionKind,
        candidate: &Candidate,
        pin: Option<RootHash>,
        trust: Trust,
        undo: &mut Undo,
    ) -> Result<Activated, Cause> {
        let file = match candidate.place {
            Place::State => {
                let copy = self.copy_into_memory(kind, candidate)?;
                undo.copy = Some(copy.clone());
                copy
            }
            _ => candidate.file.clone(),
        };
        let (data, hash) = verity_partitions(&file)?;
        // Unpinned (dev mode only): the hash the image's own partition UUIDs spell.
        let root_hash = match pin {
            Some(pin) => pin,
            None => root_hash_from_uuids(&data, &hash)?,
        };
        // Held until the mapping holds them: on a refusal before that they detach at once.
        let data_loop = attach(self.dev_dir, &file, &data)?;
        let hash_loop = attach(self.dev_dir, &file, &hash)?;
        let (data_node, hash_node) = (&data_loop.node, &hash_loop.node);
        let name = format!("{kind}-{}", candidate.name);
        let mapping = Mapping {
            name: &name,
            root_hash: &root_hash,
            // No restart policy: a bad block is an I/O error, which the full read below
            // turns into a refusal of this one extension.
            options: &[],
        };
        let active = activation::activate_mapping(self.dev_dir, &mapping, data_node, hash_node)?;
        undo.mapping = Some(name);
        read_everything(&active.node)?;
        let probed = block_devices::probe_device(&active.node).map_err(Cause::Probe)?;
        match probed {
            Some(info) if info.kind == FsKind::Squashfs => {}
            other => {
                return Err(Cause::NotSquashfs {
                    found: other.map_or("no known file system".to_owned(), |info| {
                        info.kind.to_string()
                    }),
                })
            }
        }
        let mount = self.mount_dir.join(kind.to_string()).join(&candidate.name);
        mounts::execute(&[
            MountOp::Mkdir(mount.clone()),
            MountOp::Mount(Mount::read_only(
                &active.node.to_string_lossy(),
                mount.clone(),
                "squashfs",
            )),
        ])?;
        undo.mount = Some(mount.clone());
        self.check_release(kind, &candidate.name, &mount)?;
        let hierarchies = self.check_hierarchies(kind, &mount)?;
        Ok(Activated {
            kind,
            name: candidate.name.clone(),
            image: candidate.shown.clone(),
            root_hash,
            trust,
            mount,
            place: candidate.place,
            hierarchies,
        })
    }

    fn check_release(&self, kind: ExtensionKind, name: &str, mount: &Path) -> Result<(), Cause> {
        let path = kind.release_path(name);
        let text =
            read_in_root(mount, &path)?.ok_or_else(|| Cause::NoRelease { path: path.clone() })?;
        let release = OsRelease::parse(&text).map_err(|source| Cause::BadRelease {
            path: path.clone(),
            source,
        })?;
        check_extension(self.base_release, &release, kind)
            .map_err(|source| Cause::Mismatch { path, source })
    }

    fn check_hierarchies(
        &self,
        kind: ExtensionKind,
        mount: &Path,
    ) -> Result<Vec<&'static str>, Cause> {
        if kind == ExtensionKind::Sysext && mount.join("usr/lib/os-release").exists() {
            return Err(Cause::CarriesOsRelease);
        }
        let present: Vec<&'static str> = kind
            .hierarchies()
            .iter()
            .copied()
            .filter(|hierarchy| mount.join(hierarchy).is_dir())
            .collect();
        if present.is_empty() {
            return Err(Cause::NoHierarchy {
                kind,
                wanted: kind
                    .hierarchies()
                    .iter()
                    .map(|hierarchy| format!("/{hierarchy}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(missing) = present
            .iter()
            .find(|hierarchy| !self.base.join(hierarchy).is_dir())
        {
            return Err(Cause::NoMountPoint(missing));
        }
        Ok(present)
    }

    /// Copies an image off the state partition into memory, read as untrusted storage is:
    /// the loop devices then hold the copy, and the partition can be unmounted (and mounted
    /// read-write by the booted system).
    fn copy_into_memory(
        &self,
        kind: ExtensionKind,
        candidate: &Candidate,
    ) -> Result<PathBuf, Cause> {
        let copy = self.copy_dir.join(format!("{kind}-{}.raw", candidate.name));
        let dir = candidate.file.parent().unwrap_or(Path::new("/"));
        let name = candidate
            .file
            .file_name()
            .map(Path::new)
            .unwrap_or(Path::new(""));
        std::fs::create_dir_all(self.copy_dir).map_err(|error| {
            Cause::Copy(crate::untrusted::UntrustedFileError {
                path: self.copy_dir.to_owned(),
                problem: crate::untrusted::Problem::Io(error),
            })
        })?;
        crate::untrusted::copy_beneath(dir, name, MAX_COPIED_IMAGE_BYTES, &copy)
            .map_err(Cause::Copy)?;
        Ok(copy)
    }

    /// Unmounts and unmaps an extension that will not be merged after all.
    pub fn release(&self, extension: &Activated) {
        self.undo(Undo {
            mapping: Some(format!("{}-{}", extension.kind, extension.name)),
            mount: Some(extension.mount.clone()),
            copy: (extension.place == Place::State).then(|| {
                self.copy_dir
                    .join(format!("{}-{}.raw", extension.kind, extension.name))
            }),
        });
    }

    fn undo(&self, undo: Undo) {
        if let Some(mount) = undo.mount {
            if let Err(errno) = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::empty())
            {
                log::warn!("cannot unmount {}: {errno}", mount.display());
            }
        }
        if let Some(name) = undo.mapping {
            let removed = DeviceMapper::open(&self.dev_dir.join("mapper/control"))
                .and_then(|control| control.remove(&name));
            if let Err(error) = removed {
                log::warn!("cannot remove /dev/mapper/{name}: {}", error_chain(&error));
            }
        }
        if let Some(copy) = undo.copy {
            if let Err(error) = std::fs::remove_file(&copy) {
                log::warn!("cannot remove {}: {error}", copy.display());
            }
        }
    }
}

/// The data and hash partitions of an extension image.
fn verity_partitions(image: &Path) -> Result<(GptPartition, GptPartition), Cause> {
    let partitions =
        block_devices::read_gpt_from(image, SectorSize::BYTES_512).map_err(Cause::Gpt)?;
    let only = |type_guid: Guid| {
        let mut matching = partitions
            .iter()
            .filter(|partition| partition.type_guid == type_guid);
        match (matching.next(), matching.next()) {
            (Some(partition), None) => Some(partition.clone()),
            _ => None,
        }
    };
    match (only(gpt::ROOT_X86_64), only(gpt::ROOT_VERITY_X86_64)) {
        (Some(data), Some(hash)) => Ok((data, hash)),
        _ => Err(Cause::Partitions {
            found: describe_partitions(&partitions),
        }),
    }
}

fn describe_partitions(partitions: &[GptPartition]) -> String {
    if partitions.is_empty() {
        return "none".to_owned();
    }
    partitions
        .iter()
        .map(|partition| format!("{} (type {})", partition.number, partition.type_guid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// DPS derives the partitions' UUIDs from the root hash; read backwards they give it.
fn root_hash_from_uuids(data: &GptPartition, hash: &GptPartition) -> Result<RootHash, Cause> {
    let mut bytes = data.unique_guid.as_bytes().to_vec();
    bytes.extend_from_slice(hash.unique_guid.as_bytes());
    RootHash::from_bytes(bytes).map_err(|error| Cause::Partitions {
        found: format!(
            "partition UUIDs that spell no root hash ({})",
            error_chain(&error)
        ),
    })
}

fn attach(dev_dir: &Path, image: &Path, partition: &GptPartition) -> Result<AttachedLoop, Cause> {
    let sector = SectorSize::BYTES_512;
    let offset = sector.offset_of(partition.first_lba);
    // The GPT reader checked first <= last within the disk; checked anyway, the values are
    // the image's.
    let end = partition
        .last_lba
        .0
        .checked_add(1)
        .map(|next| sector.offset_of(gpt::Lba(next)))
        .filter(|&end| end > offset)
        .ok_or_else(|| Cause::Partitions {
            found: format!(
                "partition {} spanning LBA {}..={}",
                partition.number, partition.first_lba.0, partition.last_lba.0
            ),
        })?;
    let range = ByteRange {
        offset,
        length: end - offset,
    };
    Ok(loop_devices::attach_range_read_only(dev_dir, image, range)?)
}

/// Reads the whole mapped device, so that dm-verity checks every block now: an image that
/// was modified is refused before anything of it is visible.
fn read_everything(device: &Path) -> Result<(), Cause> {
    let file = File::open(device).map_err(|source| ReadError {
        path: device.to_owned(),
        source,
    })?;
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buffer, offset) {
            Ok(0) => return Ok(()),
            Ok(read) => offset += read as u64,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(first_bad_block(&file, device, offset)),
        }
    }
}

/// The exact place of a failed chunk read, for the message: dm-verity fails a read at the
/// first block whose hash does not match.
fn first_bad_block(file: &File, device: &Path, mut offset: u64) -> Cause {
    let mut block = [0u8; VERIFY_BLOCK];
    loop {
        match file.read_at(&mut block, offset) {
            Ok(0) => {
                return Cause::Corrupted {
                    device: device.to_owned(),
                    offset,
                    read_error: io::Error::from(io::ErrorKind::UnexpectedEof),
                }
            }
            Ok(read) => offset += read as u64,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(read_error) => {
                return Cause::Corrupted {
                    device: device.to_owned(),
                    offset,
                    read_error,
                }
            }
        }
    }
}

/// Orders names as versions, the way extensions stack: `app-9` below `app-10`, digits
/// compared as numbers, everything else byte by byte.
pub fn version_order(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (x_digits, x_rest) = split_digits(a);
                let (y_digits, y_rest) = split_digits(b);
                let order = compare_numbers(x_digits, y_digits);
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (x_rest, y_rest);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(text: &[u8]) -> (&[u8], &[u8]) {
    let end = text
        .iter()
        .position(|byte| !byte.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Numbers of any length: leading zeros do not count, then longer is larger.
fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |digits: &[u8]| -> usize {
        digits
            .iter()
            .position(|&digit| digit != b'0')
            .unwrap_or(digits.len())
    };
    let (a, b) = (&a[trim(a)..], &b[trim(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every boot reads the root's os-release: a FIFO or a huge file there (an unverified
    /// root) is an error at once, never a wait for a writer.
    #[test]
    fn the_roots_os_release_is_a_bounded_regular_file() {
        use rustix::fs::{FileType, Mode};
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("etc/os-release"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let fifo = base_os_release(root.path()).expect_err("a FIFO");
        assert!(
            error_chain(&fifo).ends_with("not a regular file"),
            "{}",
            error_chain(&fifo)
        );
        std::fs::remove_file(root.path().join("etc/os-release")).expect("rm");
        let huge = "ID=x\n".repeat(300_000);
        std::fs::write(root.path().join("etc/os-release"), huge).expect("write");
        let huge = base_os_release(root.path()).expect_err("too large");
        assert!(
            error_chain(&huge).contains("more than 1048576 bytes"),
            "{}",
            error_chain(&huge)
        );
    }

    #[test]
    fn names_stack_in_version_order() {
        let mut names = vec!["app-10", "app-9", "app", "base", "app-09a", "app-9b"];
        names.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            names,
            ["app", "app-9", "app-09a", "app-9b", "app-10", "base"]
        );
        assert_eq!(version_order("a007", "a7"), Ordering::Equal);
    }

    #[test]
    fn version_order_is_a_total_order_on_random_names() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"ab01-9.";
        let names: Vec<String> = (0..300)
            .map(|_| {
                let length = (next() % 6) as usize;
                (0..length)
                    .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
                    .collect()
            })
            .collect();
        for a in &names {
            for b in &names {
                assert_eq!(
                    version_order(a, b),
                    version_order(b, a).reverse(),
                    "{a} {b}"
                );
                for c in names.iter().take(40) {
                    if version_order(a, b).is_le() && version_order(b, c).is_le() {
                        assert!(version_order(a, c).is_le(), "{a} <= {b} <= {c}");
                    }
                }
            }
        }
    }

    const HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn hash(text: &str) -> RootHash {
        RootHash::parse_hex(text).expect("hash")
    }

    #[test]
    fn trust_comes_from_the_command_line_or_the_manifest() {
        let mut pins = ExtensionPins::default();
        pins.sysext.insert("gui".into(), hash(HASH));
        let request = |name: &str, pin: Option<&str>| ExtensionRequest {
            name: name.into(),
            pin: pin.map(hash),
        };
        let sysext = ExtensionKind::Sysext;
        assert_eq!(
            pin_for(sysext, &request("gui", None), &pins).expect("pinned"),
            (Some(hash(HASH)), Trust::BaseManifest)
        );
        assert_eq!(
            pin_for(ExtensionKind::Confext, &request("gui", None), &pins).expect("other kind"),
            (None, Trust::Unpinned)
        );
        assert_eq!(
            pin_for(sysext, &request("tool", Some(HASH)), &pins).expect("cmdline"),
            (Some(hash(HASH)), Trust::Cmdline)
        );
        let other = format!("{}0", &HASH[..63]);
        let conflict = pin_for(sysext, &request("gui", Some(&other)), &pins).expect_err("two pins");
        assert!(
            conflict.to_string().starts_with("pinned twice"),
            "{conflict}"
        );
    }

    #[test]
    fn discovery_follows_the_search_order() {
        let base = tempfile::tempdir().expect("tempdir");
        let initramfs = tempfile::tempdir().expect("tempdir");
        let touch = |root: &Path, path: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, b"").expect("write");
        };
        touch(base.path(), "usr/lib/extensions/gui.raw");
        touch(base.path(), "usr/lib/extensions/tools.raw");
        touch(base.path(), "usr/lib/extensions/notes.txt");
        touch(base.path(), "usr/lib/extensions/.hidden.raw");
        touch(initramfs.path(), ".extra/sysext/gui.raw");
        touch(base.path(), "etc/extensions/tools.raw");
        touch(base.path(), "usr/lib/confexts/site.raw");
        let state = tempfile::tempdir().expect("tempdir");
        touch(state.path(), "lib/extensions/gui.raw");
        touch(state.path(), "lib/extensions/db.raw");
        let roots = SearchRoots {
            initramfs: initramfs.path(),
            base: base.path(),
            state: Some(state.path()),
        };
        let found = discover(ExtensionKind::Sysext, &roots).expect("discover");
        let shown: Vec<&str> = found.values().map(|c| c.shown.as_str()).collect();
        assert_eq!(
            shown,
            [
                "state:/var/lib/extensions/db.raw",
                "initramfs:/.extra/sysext/gui.raw",
                "/etc/extensions/tools.raw"
            ]
        );
        let without_state = SearchRoots {
            state: None,
            ..roots
        };
        let found = discover(ExtensionKind::Sysext, &without_state).expect("discover");
        assert!(!found.contains_key("db"));
        let found = discover(ExtensionKind::Confext, &roots).expect("discover");
        assert_eq!(found.keys().collect::<Vec<_>>(), ["site"]);
    }

    #[test]
    fn causes_are_said_once_and_the_chain_reads_as_before() {
        let refused = ExtensionError {
            kind: ExtensionKind::Sysext,
            name: "fedora".into(),
            image: Some("/usr/lib/extensions/fedora.raw".into()),
            cause: Box::new(Cause::Mismatch {
                path: "usr/lib/extension-release.d/extension-release.fedora".into(),
                source: MatchError::Id {
                    extension: "fedora".into(),
                    base: "debian".into(),
                },
            }),
        };
        xorbang_formats::fixtures::assert_said_once(&refused);
        assert_eq!(
            error_chain(&refused),
            "sysext fedora (/usr/lib/extensions/fedora.raw): \
             usr/lib/extension-release.d/extension-release.fedora: \
             ID=fedora does not match the base's ID=debian"
        );
        let boot = crate::boot::BootError::Verity(VerityRootError::Dm(
            crate::verity::device_mapper::DmError::Ioctl {
                op: "DM_TABLE_LOAD",
                name: "root".into(),
                source: io::Error::from_raw_os_error(22),
            },
        ));
        xorbang_formats::fixtures::assert_said_once(&boot);
        assert_eq!(
            error_chain(&boot),
            "verity: device-mapper: DM_TABLE_LOAD root: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn errors_name_the_extension_and_its_image() {
        let error = ExtensionError {
            kind: ExtensionKind::Sysext,
            name: "gui".into(),
            image: Some("/usr/lib/extensions/gui.raw".into()),
            cause: Box::new(Cause::Unpinned),
        };
        assert!(
            error_chain(&error).starts_with("sysext gui (/usr/lib/extensions/gui.raw): not pinned")
        );
        let error = ExtensionError {
            kind: ExtensionKind::Confext,
            name: "site".into(),
            image: None,
            cause: Box::new(Cause::NotFound {
                searched: "/etc/confexts".into(),
            }),
        };
        assert_eq!(
            error_chain(&error),
            "confext site: not found in /etc/confexts"
        );
    }
}

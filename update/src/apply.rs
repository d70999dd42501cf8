//! `xorbang-update apply`: installs a version into the slot that did not boot.
//!
//! The order is what keeps every interruption harmless. Nothing is written before the
//! manifest's signature, the UKI's bytes and the UKI's own `roothash=` and identity have
//! been checked. Then: the evicted version's UKI is deleted first (no boot loader entry ever
//! points at a slot being overwritten), the slot is relabelled `_empty`, the root and its
//! hash tree are streamed in and checked against the signed SHA-256 while written, read back
//! from the disk and checked again, the data block by block against the tree and the tree up
//! to the root hash (what dm-verity will check at boot), the slot gets the new version's labels and root-hash-derived
//! PARTUUIDs, and only then is the new UKI written, under a temporary name and renamed to
//! `<IMAGE_ID>_<version>+<tries>.efi` last. Until that rename systemd-boot sees nothing
//! new, so the machine boots what it booted; run `apply` again to finish.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use xorbang_formats::bundle::{
    self, BundleError, BundleFile, ChannelIndex, Manifest, UkiCheckError,
};
use xorbang_formats::gpt::{self, GptWriteError, Guid, PartitionSpec, SectorSize};
use xorbang_formats::signature::{self, PinnedKey, SignatureError};
use xorbang_formats::verity::RootHash;
use xorbang_formats::verity_tree::{TreeCheck, TreeError};
use xorbang_formats::version::compare_versions;

use crate::channel::{Channel, ChannelError};
use crate::machine::{self, Machine, MachineError};

/// The label of a slot being written or not holding a version (systemd-sysupdate's).
const EMPTY: &str = "_empty";
/// The UKI is written under this name in `EFI/Linux/` and renamed when complete; not
/// `*.efi`, so systemd-boot never lists it.
const UKI_TEMPORARY: &str = ".xorbang-update.tmp";
const COPY_BUFFER: usize = 1 << 20;
/// Progress lines: one each time this share of a file more is written, for files of at
/// least `PROGRESS_MIN_BYTES` (a hash tree is written in a moment).
const PROGRESS_STEPS: u64 = 10;
const PROGRESS_MIN_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{what} from {channel}")]
    Bundle {
        what: String,
        channel: String,
        #[source]
        source: BundleError,
    },
    #[error("the channel {channel} offers no versions")]
    NoVersions { channel: String },
    #[error("the channel is for {found}, this machine runs {running}")]
    OtherImage { found: String, running: String },
    #[error("{version} is the version running now")]
    Running { version: String },
    #[error("the manifest of {bundle} is not signed by a key this image pins")]
    Signature {
        bundle: String,
        #[source]
        source: SignatureError,
    },
    #[error("the signed manifest of {bundle} is for {found}, not {wanted}")]
    ManifestIdentity {
        bundle: String,
        found: String,
        wanted: String,
    },
    #[error("{what}: {found}, the signed manifest says {expected}")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("the UKI {what}")]
    Uki {
        what: String,
        #[source]
        source: UkiCheckError,
    },
    #[error("{what} ({bytes} bytes) does not fit slot partition {device} ({size} bytes)")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        device: String,
        size: u64,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{device} does not verify")]
    Tree {
        device: PathBuf,
        #[source]
        source: TreeError,
    },
    #[error("cannot lay out the new partition table of {disk}")]
    Gpt {
        disk: PathBuf,
        #[source]
        source: GptWriteError,
    },
    #[error("partition {number} of {disk} leaves a gap in its table; refusing to rewrite it")]
    TableGap { disk: PathBuf, number: u32 },
}

/// What `apply` did.
pub struct Installed {
    pub version: String,
    pub slot: usize,
    pub entry: String,
    pub bytes: u64,
    pub seconds: f64,
}

pub struct Request<'a> {
    pub channel: &'a Channel,
    pub keys: &'a [PinnedKey],
    pub esp: &'a Path,
    pub version: Option<&'a str>,
    pub tries: u32,
}

/// The newest version the channel offers for this image.
pub fn newest(machine: &Machine, channel: &Channel) -> Result<String, ApplyError> {
    let bytes = channel.read_small(bundle::INDEX, bundle::MAX_INDEX_BYTES)?;
    let index = ChannelIndex::parse(&bytes).map_err(|source| ApplyError::Bundle {
        what: bundle::INDEX.to_owned(),
        channel: channel.to_string(),
        source,
    })?;
    if index.image_id != machine.image_id {
        return Err(ApplyError::OtherImage {
            found: index.image_id,
            running: machine.image_id.clone(),
        });
    }
    index
        .newest()
        .map(str::to_owned)
        .ok_or_else(|| ApplyError::NoVersions {
            channel: channel.to_string(),
        })
}

/// What `apply` did: installed a version, or found nothing newer to install.
pub enum Outcome {
    Installed(Installed),
    UpToDate { newest: String },
}

pub fn apply(machine: &Machine, request: &Request) -> Result<Outcome, ApplyError> {
    let started = Instant::now();
    let version = match request.version {
        Some(version) => version.to_owned(),
        // The index is not signed: whatever it says, without a version named by the admin
        // only a newer one is installed, so a replayed old index cannot downgrade a machine
        // to an old (validly signed) version.
        None => {
            let newest = newest(machine, request.channel)?;
            if compare_versions(&newest, &machine.version) != Ordering::Greater {
                return Ok(Outcome::UpToDate { newest });
            }
            newest
        }
    };
    if version == machine.version {
        return Err(ApplyError::Running { version });
    }
    let manifest = signed_manifest(machine, request, &version)?;
    let dir = manifest.bundle_dir();
    let uki = checked_uki(request.channel, &dir, &manifest)?;
    let target = machine.inactive();
    let slot = &machine.slots[target];
    let root_device = machine.partition_device(slot.root.number)?;
    let verity_device = machine.partition_device(slot.verity.number)?;
    check_fits("the root image", &manifest.root, &root_device, &slot.root)?;
    check_fits(
        "the hash tree",
        &manifest.verity,
        &verity_device,
        &slot.verity,
    )?;
    say(&format!(
        "installing {} {} into slot {} ({}, {})",
        manifest.image_id,
        manifest.version,
        slot_name(target),
        root_device.display(),
        verity_device.display()
    ));

    evict(machine, request.esp, target)?;
    relabel(machine, target, EMPTY, EMPTY, None)?;
    let channel = request.channel;
    let mut bytes = write_file(channel, &dir, &manifest.root, &root_device, "root")?;
    bytes += write_file(channel, &dir, &manifest.verity, &verity_device, "hash tree")?;
    let root_hash = manifest.root_hash().map_err(|source| ApplyError::Bundle {
        what: dir.clone(),
        channel: channel.to_string(),
        source,
    })?;
    verify_slot(&manifest, &root_device, &verity_device, &root_hash)?;
    let name = bundle::bundle_dir(&manifest.image_id, &manifest.version);
    relabel(
        machine,
        target,
        &name,
        &format!("{name}_verity"),
        Some(root_hash.partition_uuids()),
    )?;
    let entry = format!("{name}+{}.efi", request.tries);
    write_uki(request.esp, &uki, &entry)?;
    bytes += uki.len() as u64;
    Ok(Outcome::Installed(Installed {
        version: manifest.version,
        slot: target,
        entry,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

pub fn slot_name(index: usize) -> char {
    char::from(b'A' + u8::try_from(index).unwrap_or(25))
}

pub fn say(line: &str) {
    println!("xorbang-update: {line}");
}

/// The manifest of `version`, its signature checked with the pinned keys, its identity
/// checked against the machine and the version asked for.
fn signed_manifest(
    machine: &Machine,
    request: &Request,
    version: &str,
) -> Result<Manifest, ApplyError> {
    let dir = bundle::bundle_dir(&machine.image_id, version);
    let channel = request.channel;
    let manifest_path = format!("{dir}/{}", bundle::MANIFEST);
    let bytes = channel.read_small(&manifest_path, bundle::MAX_MANIFEST_BYTES)?;
    let signature = channel.read_small(
        &format!("{manifest_path}{}", signature::SIGNATURE_SUFFIX),
        signature::MAX_KEY_OR_SIGNATURE_BYTES,
    )?;
    let signature = String::from_utf8_lossy(&signature);
    let key = signature::verify(request.keys, &bytes, &signature).map_err(|source| {
        ApplyError::Signature {
            bundle: dir.clone(),
            source,
        }
    })?;
    let manifest = Manifest::parse(&bytes).map_err(|source| ApplyError::Bundle {
        what: manifest_path.clone(),
        channel: channel.to_string(),
        source,
    })?;
    let found = bundle::bundle_dir(&manifest.image_id, &manifest.version);
    if found != dir {
        return Err(ApplyError::ManifestIdentity {
            bundle: dir,
            found,
            wanted: format!("{}_{version}", machine.image_id),
        });
    }
    say(&format!("{manifest_path}: signed by {key}"));
    Ok(manifest)
}

/// The UKI, whole, with its SHA-256 checked, and its own command line's `roothash=` and
/// `.osrel` identity checked against the manifest: a UKI that would boot another root is
/// refused before anything is written.
fn checked_uki(channel: &Channel, dir: &str, manifest: &Manifest) -> Result<Vec<u8>, ApplyError> {
    let what = format!("{dir}/{}", manifest.uki.name);
    let mut uki = Vec::new();
    let download = channel.open(&what)?;
    check_announced_length(&what, manifest.uki.bytes, download.length)?;
    download
        .reader
        .take(manifest.uki.bytes + 1)
        .read_to_end(&mut uki)
        .map_err(|source| ApplyError::Io {
            action: "download",
            path: PathBuf::from(&download.what),
            source,
        })?;
    check_digest(
        &what,
        &manifest.uki,
        uki.len() as u64,
        Sha256::digest(&uki).into(),
    )?;
    bundle::check_uki(&uki, manifest).map_err(|source| ApplyError::Uki { what, source })?;
    Ok(uki)
}

/// A file whose server already announces another size than the signed one is refused
/// before a byte of it is written.
fn check_announced_length(
    what: &str,
    signed: u64,
    announced: Option<u64>,
) -> Result<(), ApplyError> {
    match announced {
        Some(bytes) if bytes != signed => Err(ApplyError::Mismatch {
            what: format!("{what} size"),
            expected: format!("{signed} bytes"),
            found: format!("{bytes} bytes"),
        }),
        _ => Ok(()),
    }
}

fn check_digest(
    what: &str,
    file: &BundleFile,
    bytes: u64,
    digest: [u8; 32],
) -> Result<(), ApplyError> {
    if bytes != file.bytes {
        return Err(ApplyError::Mismatch {
            what: format!("{what} size"),
            expected: format!("{} bytes", file.bytes),
            found: format!("{bytes} bytes"),
        });
    }
    let found = hex(&digest);
    if found != file.sha256 {
        return Err(ApplyError::Mismatch {
            what: format!("{what} SHA-256"),
            expected: file.sha256.clone(),
            found,
        });
    }
    Ok(())
}

fn check_fits(
    what: &'static str,
    file: &BundleFile,
    device: &Path,
    partition: &gpt::GptPartition,
) -> Result<(), ApplyError> {
    let size = (partition.last_lba.0 + 1 - partition.first_lba.0) * 512;
    if file.bytes > size {
        return Err(ApplyError::TooLarge {
            what,
            bytes: file.bytes,
            device: device.display().to_string(),
            size,
        });
    }
    Ok(())
}

/// Deletes the UKIs of the version in the target slot (never the booted version's), and a
/// temporary left by an interrupted run.
fn evict(machine: &Machine, esp: &Path, target: usize) -> Result<(), ApplyError> {
    let linux = esp.join("EFI/Linux");
    remove_if_present(&linux.join(UKI_TEMPORARY))?;
    let Some(evicted) = machine.slots[target].version(&machine.image_id) else {
        return Ok(());
    };
    if evicted == machine.version {
        return Ok(());
    }
    for entry in machine::boot_entries(esp, &machine.image_id)? {
        let version = xorbang_formats::boot_entry::image_version(entry.stem(), &machine.image_id);
        if version == Some(evicted) {
            let path = linux.join(entry.to_string());
            say(&format!("removing {} (version {evicted})", path.display()));
            remove_if_present(&path)?;
        }
    }
    sync_dir(&linux)
}

fn remove_if_present(path: &Path) -> Result<(), ApplyError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(ApplyError::Io {
            action: "remove",
            path: path.to_owned(),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Rewrites the GPT (backup first, then primary) with the target slot's names and, when
/// given, its new PARTUUIDs; every other entry stays as it is.
fn relabel(
    machine: &Machine,
    target: usize,
    root_name: &str,
    verity_name: &str,
    uuids: Option<(Guid, Guid)>,
) -> Result<(), ApplyError> {
    let slot = &machine.slots[target];
    let mut specs = Vec::new();
    for (index, partition) in machine.partitions.iter().enumerate() {
        if usize::try_from(partition.number).ok() != Some(index + 1) {
            return Err(ApplyError::TableGap {
                disk: machine.disk.clone(),
                number: partition.number,
            });
        }
        let mut spec = PartitionSpec {
            type_guid: partition.type_guid,
            unique_guid: partition.unique_guid,
            name: partition.name.clone(),
            first_lba: partition.first_lba,
            last_lba: partition.last_lba,
            attributes: partition.attributes,
        };
        if partition.number == slot.root.number {
            spec.name = root_name.to_owned();
            if let Some((data, _)) = uuids {
                spec.unique_guid = data;
            }
        } else if partition.number == slot.verity.number {
            spec.name = verity_name.to_owned();
            if let Some((_, hash)) = uuids {
                spec.unique_guid = hash;
            }
        }
        specs.push(spec);
    }
    let image = gpt::write_gpt(
        machine.disk_bytes,
        SectorSize::BYTES_512,
        machine.header.disk_guid,
        &specs,
    )
    .map_err(|source| ApplyError::Gpt {
        disk: machine.disk.clone(),
        source,
    })?;
    let disk_path = machine.disk.as_path();
    let mut disk = OpenOptions::new()
        .write(true)
        .open(disk_path)
        .map_err(io_error("open for writing", disk_path))?;
    disk.seek(SeekFrom::Start(image.backup_offset))
        .and_then(|_| disk.write_all(&image.backup))
        .and_then(|()| disk.sync_all())
        .map_err(io_error("write the backup GPT of", disk_path))?;
    disk.seek(SeekFrom::Start(0))
        .and_then(|_| disk.write_all(&image.primary))
        .and_then(|()| disk.sync_all())
        .map_err(io_error("write the GPT of", disk_path))
}

/// Streams one bundle file onto a partition, hashing what it writes; returns its size.
fn write_file(
    channel: &Channel,
    dir: &str,
    file: &BundleFile,
    device: &Path,
    label: &str,
) -> Result<u64, ApplyError> {
    let what = format!("{dir}/{}", file.name);
    let download = channel.open(&what)?;
    check_announced_length(&what, file.bytes, download.length)?;
    let mut reader = download.reader.take(file.bytes + 1);
    let mut out = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(io_error("open for writing", device))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut written = 0u64;
    let mut next_report = file.bytes / PROGRESS_STEPS;
    loop {
        let count = reader
            .read(&mut buffer)
            .map_err(io_error("download", Path::new(&download.what)))?;
        if count == 0 {
            break;
        }
        // More than the manifest says is refused before it reaches the disk.
        if written + count as u64 > file.bytes {
            written += count as u64;
            break;
        }
        hasher.update(&buffer[..count]);
        out.write_all(&buffer[..count])
            .map_err(io_error("write", device))?;
        written += count as u64;
        if file.bytes >= PROGRESS_MIN_BYTES && written >= next_report && written < file.bytes {
            say(&format!(
                "writing {label}: {} of {} MiB ({}%)",
                written >> 20,
                file.bytes >> 20,
                written * 100 / file.bytes
            ));
            next_report += file.bytes / PROGRESS_STEPS;
        }
    }
    out.sync_all().map_err(io_error("sync", device))?;
    check_digest(&what, file, written, hasher.finalize().into())?;
    say(&format!(
        "wrote {label}: {written} bytes, SHA-256 as signed"
    ));
    Ok(written)
}

/// Reads what landed on the partitions back: both must have the signed SHA-256, and the
/// data must match the hash tree block by block up to the root hash, as dm-verity will
/// check it at boot.
fn verify_slot(
    manifest: &Manifest,
    root_device: &Path,
    verity_device: &Path,
    root_hash: &RootHash,
) -> Result<(), ApplyError> {
    let tree = read_back(&manifest.verity, verity_device)?;
    let tree_error = |source| ApplyError::Tree {
        device: verity_device.to_owned(),
        source,
    };
    let mut check = TreeCheck::new(&tree).map_err(tree_error)?;
    let io_error = |source| ApplyError::Io {
        action: "read back",
        path: root_device.to_owned(),
        source,
    };
    let block_bytes = usize::try_from(check.data_block_bytes()).unwrap_or(usize::MAX);
    let verified_blocks = check.data_bytes() / check.data_block_bytes();
    let mut reader = File::open(root_device)
        .map_err(io_error)?
        .take(manifest.root.bytes);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; block_bytes];
    let (mut read, mut index) = (0u64, 0u64);
    while read < manifest.root.bytes {
        let want = usize::try_from(manifest.root.bytes - read)
            .map_or(block_bytes, |left| left.min(block_bytes));
        reader.read_exact(&mut block[..want]).map_err(io_error)?;
        hasher.update(&block[..want]);
        if index < verified_blocks && want == block_bytes {
            check
                .data_block(&block)
                .map_err(|source| ApplyError::Tree {
                    device: root_device.to_owned(),
                    source,
                })?;
        }
        read += want as u64;
        index += 1;
    }
    check_digest(
        &format!("{} as read back", root_device.display()),
        &manifest.root,
        read,
        hasher.finalize().into(),
    )?;
    check.finish(root_hash).map_err(tree_error)?;
    say(&format!(
        "verified {} against root hash {root_hash}: {verified_blocks} blocks",
        root_device.display()
    ));
    Ok(())
}

/// Reads `file.bytes` back from the partition and checks them against the signed SHA-256.
fn read_back(file: &BundleFile, device: &Path) -> Result<Vec<u8>, ApplyError> {
    let io_error = |source| ApplyError::Io {
        action: "read back",
        path: device.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(device)
        .map_err(io_error)?
        .take(file.bytes)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    check_digest(
        &format!("{} as read back", device.display()),
        file,
        bytes.len() as u64,
        Sha256::digest(&bytes).into(),
    )?;
    Ok(bytes)
}

/// Writes the UKI under a temporary name, syncs it, and renames it to its entry name.
fn write_uki(esp: &Path, uki: &[u8], entry: &str) -> Result<(), ApplyError> {
    let linux = esp.join("EFI/Linux");
    let temporary = linux.join(UKI_TEMPORARY);
    // `evict` removed any earlier temporary: this one is new, never a file planted there.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(uki)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    let final_path = linux.join(entry);
    fs::rename(&temporary, &final_path).map_err(io_error("rename to its entry", &final_path))?;
    sync_dir(&linux)
}

fn sync_dir(dir: &Path) -> Result<(), ApplyError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| ApplyError::Io {
            action: "sync",
            path: dir.to_owned(),
            source,
        })
}

/// The error of an I/O `action` on `path`, for `map_err`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.to_owned();
    move |source| ApplyError::Io {
        action,
        path,
        source,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

//! Activating the verified root: read and check the verity superblock and the devices'
//! sizes, check the top of the hash tree against `roothash=` ourselves (so a wrong hash is
//! refused with a clear line before anything is mounted, instead of tripping the corruption
//! policy on the first read), then create `/dev/mapper/root` through device-mapper ioctls.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::options::VerityRoot;
use crate::verity::device_mapper::{self, DeviceMapper, DmError, Sectors, Target};
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::verity::{
    RootHash, SuperblockError, TableWord, VerityOption, VeritySuperblock, VerityTable,
    SUPERBLOCK_SIZE,
};
use xorbang_formats::verity_tree::{salted_digest, TreeGeometry};

/// The mapping's name: `/dev/mapper/root`, as systemd names its verity root.
pub const MAPPING: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum VerityRootError {
    #[error("cannot read {device}")]
    Read {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("hash device {device}")]
    Superblock {
        device: PathBuf,
        source: SuperblockError,
    },
    #[error("roothash= has {found} bytes but the superblock on {device} says {algorithm} ({expected} bytes)")]
    HashLength {
        device: PathBuf,
        algorithm: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("data device {device} is {size} bytes, but its verity superblock covers {needed} bytes ({blocks} blocks of {block_size})")]
    DataTooSmall {
        device: PathBuf,
        size: u64,
        needed: u64,
        blocks: u64,
        block_size: u32,
    },
    #[error("hash device {device} is {size} bytes, shorter than the {needed} bytes its verity superblock needs")]
    HashTooSmall {
        device: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("root hash mismatch: roothash={expected} but the hash tree on {device} gives {found}")]
    RootMismatch {
        device: PathBuf,
        expected: RootHash,
        found: String,
    },
    #[error(
        "root hash mismatch: roothash={expected} but the only data block of {device} gives {found}"
    )]
    SingleBlockMismatch {
        device: PathBuf,
        expected: RootHash,
        found: String,
    },
    #[error("the device name {0} cannot go into a device-mapper table")]
    TableWord(PathBuf),
    #[error("device-mapper")]
    Dm(#[from] DmError),
    #[error(
        "/dev/mapper/{name} reports status {status:?} right after activation, not verified (V)"
    )]
    NotVerified { name: String, status: String },
}

/// The devices of a verified root and what the activation found out.
#[derive(Debug, Clone)]
pub struct ActiveRoot {
    pub node: PathBuf,
    pub table: String,
    pub status: String,
}

/// What to map: the mapping's name (`/dev/mapper/NAME`), the hash it must verify against,
/// and the table's optional arguments.
#[derive(Debug, Clone, Copy)]
pub struct Mapping<'a> {
    pub name: &'a str,
    pub root_hash: &'a RootHash,
    pub options: &'a [VerityOption],
}

/// Checks everything that can be checked before the kernel sees the devices, then maps
/// `data` through dm-verity as `/dev/mapper/root` (a node made under `dev_dir`).
pub fn activate(
    dev_dir: &Path,
    request: &VerityRoot,
    data: &Path,
    hash: &Path,
) -> Result<ActiveRoot, VerityRootError> {
    let mapping = Mapping {
        name: MAPPING,
        root_hash: &request.root_hash,
        options: &request.options,
    };
    activate_mapping(dev_dir, &mapping, data, hash)
}

/// [`activate`] for any verity device: checks the superblock, the sizes and the top of the
/// tree against `mapping.root_hash`, then maps `data` as `/dev/mapper/<mapping.name>`.
pub fn activate_mapping(
    dev_dir: &Path,
    mapping: &Mapping,
    data: &Path,
    hash: &Path,
) -> Result<ActiveRoot, VerityRootError> {
    let superblock = read_superblock(hash)?;
    check_hash_length(&superblock, mapping.root_hash, hash)?;
    let geometry = TreeGeometry::new(&superblock);
    check_sizes(&superblock, &geometry, data, hash)?;
    check_root_hash(&superblock, &geometry, mapping.root_hash, data, hash)?;
    let word = |path: &Path| {
        TableWord::new(&path.to_string_lossy())
            .map_err(|_| VerityRootError::TableWord(path.to_owned()))
    };
    let mut table = VerityTable::from_superblock(
        &superblock,
        word(data)?,
        word(hash)?,
        0,
        mapping.root_hash.clone(),
    )
    .map_err(|_| VerityRootError::HashLength {
        device: hash.to_owned(),
        algorithm: superblock.algorithm.name(),
        expected: superblock.algorithm.digest_size(),
        found: mapping.root_hash.as_bytes().len(),
    })?;
    table.options = mapping.options.to_vec();
    map(dev_dir, mapping.name, &superblock, &table.to_string())
}

fn map(
    dev_dir: &Path,
    name: &str,
    superblock: &VeritySuperblock,
    params: &str,
) -> Result<ActiveRoot, VerityRootError> {
    let control = DeviceMapper::open(&dev_dir.join("mapper/control"))?;
    // Refuses a kernel whose device-mapper interface is not version 4, before anything else.
    let version = control.version()?;
    log::debug!(
        "device-mapper interface {}.{}.{}",
        version[0],
        version[1],
        version[2]
    );
    let sectors = superblock.data_blocks * superblock.data_block_size.as_u64() / 512;
    let target = Target {
        start: Sectors(0),
        length: Sectors(sectors),
        target_type: "verity".to_owned(),
        params: params.to_owned(),
    };
    control.create(name, Some(&format!("XORBANG-VERITY-{name}")))?;
    let loaded = control
        .load_table(name, &[target], true)
        .and_then(|()| control.resume(name));
    let id = match loaded {
        Ok(id) => id,
        Err(error) => {
            // Leave no half-made mapping behind; the load error is the one to report.
            if let Err(cleanup) = control.remove(name) {
                log::warn!(
                    "cannot remove the failed mapping: {}",
                    error_chain(&cleanup)
                );
            }
            return Err(error.into());
        }
    };
    let node = device_mapper::make_node(dev_dir, name, id)?;
    let status = control
        .table_status(name)?
        .into_iter()
        .map(|target| target.status)
        .collect::<Vec<_>>()
        .join(" ");
    if status != "V" {
        return Err(VerityRootError::NotVerified {
            name: name.to_owned(),
            status,
        });
    }
    Ok(ActiveRoot {
        node,
        table: params.to_owned(),
        status,
    })
}

fn read_superblock(hash: &Path) -> Result<VeritySuperblock, VerityRootError> {
    let mut bytes = [0u8; SUPERBLOCK_SIZE];
    read_at(hash, 0, &mut bytes)?;
    VeritySuperblock::parse(&bytes).map_err(|source| VerityRootError::Superblock {
        device: hash.to_owned(),
        source,
    })
}

fn check_hash_length(
    superblock: &VeritySuperblock,
    root_hash: &RootHash,
    hash: &Path,
) -> Result<(), VerityRootError> {
    let expected = superblock.algorithm.digest_size();
    let found = root_hash.as_bytes().len();
    if expected != found {
        return Err(VerityRootError::HashLength {
            device: hash.to_owned(),
            algorithm: superblock.algorithm.name(),
            expected,
            found,
        });
    }
    Ok(())
}

fn check_sizes(
    superblock: &VeritySuperblock,
    geometry: &TreeGeometry,
    data: &Path,
    hash: &Path,
) -> Result<(), VerityRootError> {
    let block_size = superblock.data_block_size.bytes();
    let needed = superblock.data_blocks * u64::from(block_size);
    let size = device_size(data)?;
    if size < needed {
        return Err(VerityRootError::DataTooSmall {
            device: data.to_owned(),
            size,
            needed,
            blocks: superblock.data_blocks,
            block_size,
        });
    }
    let needed = geometry.end_bytes();
    let size = device_size(hash)?;
    if size < needed {
        return Err(VerityRootError::HashTooSmall {
            device: hash.to_owned(),
            size,
            needed,
        });
    }
    Ok(())
}

/// The root digest covers the tree's single top block, or the only data block of a
/// one-block image (which has no tree).
fn check_root_hash(
    superblock: &VeritySuperblock,
    geometry: &TreeGeometry,
    expected: &RootHash,
    data: &Path,
    hash: &Path,
) -> Result<(), VerityRootError> {
    let (device, offset, size) = match geometry.top_block() {
        Some(block) => {
            let bytes = geometry.hash_block_bytes();
            (hash, block * bytes, bytes)
        }
        None => (data, 0, superblock.data_block_size.as_u64()),
    };
    let mut block = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
    read_at(device, offset, &mut block)?;
    let found = salted_digest(superblock, &block);
    if found != expected.as_bytes() {
        let found = found.iter().map(|byte| format!("{byte:02x}")).collect();
        let expected = expected.clone();
        return Err(match geometry.top_block() {
            Some(_) => VerityRootError::RootMismatch {
                device: hash.to_owned(),
                expected,
                found,
            },
            None => VerityRootError::SingleBlockMismatch {
                device: data.to_owned(),
                expected,
                found,
            },
        });
    }
    Ok(())
}

fn read_at(device: &Path, offset: u64, buffer: &mut [u8]) -> Result<(), VerityRootError> {
    let read = |source| VerityRootError::Read {
        device: device.to_owned(),
        source,
    };
    let mut file = File::open(device).map_err(read)?;
    file.seek(SeekFrom::Start(offset)).map_err(read)?;
    file.read_exact(buffer).map_err(read)
}

/// A block device's size (seeking to the end works for block devices and files alike).
fn device_size(device: &Path) -> Result<u64, VerityRootError> {
    File::open(device)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|source| VerityRootError::Read {
            device: device.to_owned(),
            source,
        })
}

//! `xorbang-build verity`: the dm-verity hash tree of an image, written byte for byte as
//! `veritysetup format` writes it (cryptsetup 2.6, `lib/verity/verity_hash.c`) and checked
//! as `veritysetup verify` checks it, but hashed on every core.
//!
//! The hash area starts at `hash_offset` of HASH: the superblock (unless there is none),
//! then, from the next hash-block boundary, the tree's levels from the top (one block) down
//! to level 0 (the digests of the data blocks). A hash block holds the largest power of two
//! of digests that fits and is zero-padded; the root hash is the digest of the top block
//! (of the only data block, for a one-block image, which has no tree at all).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::{fmt, thread};

use sha2::{Digest, Sha256, Sha512};
use xorbang_formats::gpt::Guid;
use xorbang_formats::verity::{
    hash_start_block, BlockSize, HashAlgorithm, HashType, RootHash, RootHashError, Salt,
    SuperblockError, VeritySuperblock, SUPERBLOCK_SIZE,
};

use crate::file_error::{FileAction, FileError};

/// Where random salts and UUIDs come from, as for veritysetup.
const URANDOM: &str = "/dev/urandom";
/// veritysetup's default salt size.
pub const DEFAULT_SALT_SIZE: usize = 32;
/// veritysetup requires hash offsets in whole 512-byte sectors.
const SECTOR_SIZE: u64 = 512;
/// veritysetup writes the superblock as one I/O block of at most a page (it reads, patches
/// and rewrites that block), so a hash file grows at least to that block's end.
const SUPERBLOCK_IO_BLOCK_MAX: u64 = 4096;
/// Input one worker reads and hashes at a time: large sequential reads, many pieces to
/// share between cores, and small enough that the bytes are still in cache when hashed
/// (1-2 MiB measured 5% faster than 8 MiB per GiB here).
const CHUNK_BYTES: usize = 2 << 20;

/// How the blocks are hashed; the rest of veritysetup's options say where things go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeParams {
    pub hash_type: HashType,
    pub algorithm: HashAlgorithm,
    pub data_block_size: BlockSize,
    pub hash_block_size: BlockSize,
    pub salt: Salt,
}

impl TreeParams {
    /// veritysetup's defaults (normal hash type, sha256, 4096-byte blocks) with `salt`.
    pub fn new(salt: Salt) -> Self {
        Self {
            hash_type: HashType::Normal,
            algorithm: HashAlgorithm::Sha256,
            data_block_size: BlockSize::DEFAULT,
            hash_block_size: BlockSize::DEFAULT,
            salt,
        }
    }
}

/// `veritysetup format`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatParams {
    pub tree: TreeParams,
    /// Written in the superblock; it identifies the hash device and is not hashed.
    pub uuid: Guid,
    /// Where the hash area (superblock, then tree) starts in HASH, in bytes.
    pub hash_offset: u64,
    /// How much of DATA to protect; `None` means all of it.
    pub data_blocks: Option<u64>,
    /// Whether to write the superblock; without it the tree starts at `hash_offset` and
    /// every parameter must be given again to verify or open the device.
    pub superblock: bool,
}

impl FormatParams {
    /// veritysetup's defaults: a superblock, the hash area at the start of HASH, all of DATA.
    pub fn new(tree: TreeParams, uuid: Guid) -> Self {
        Self {
            tree,
            uuid,
            hash_offset: 0,
            data_blocks: None,
            superblock: true,
        }
    }
}

/// Where `verify` takes the parameters from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyParams {
    /// The superblock at `hash_offset` of HASH.
    Superblock { hash_offset: u64 },
    /// No superblock: the parameters given to `format`.
    NoSuperblock {
        tree: TreeParams,
        hash_offset: u64,
        data_blocks: Option<u64>,
    },
}

/// What `format` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatResult {
    pub root_hash: RootHash,
    /// The parameters as a superblock; written to HASH unless `superblock_written` is false.
    pub superblock: VeritySuperblock,
    pub superblock_written: bool,
    pub hash_offset: u64,
    /// Where the tree starts, in hash blocks from the start of HASH (the table's
    /// `<hash_start_block>`).
    pub hash_start_block: u64,
    /// Blocks in the tree (veritysetup's "Hash blocks").
    pub hash_blocks: u64,
}

impl FormatResult {
    /// The report `veritysetup format` prints (cryptsetup 2.6.1), for the hash device
    /// named `hash`.
    pub fn summary(&self, hash: &Path) -> String {
        let sb = &self.superblock;
        let uuid = if self.superblock_written {
            sb.uuid.to_string()
        } else {
            String::new()
        };
        let mut text = format!(
            "VERITY header information for {}\n\
             UUID:            \t{uuid}\n\
             Hash type:       \t{}\n\
             Data blocks:     \t{}\n\
             Data block size: \t{}\n\
             Hash blocks:     \t{}\n\
             Hash block size: \t{}\n\
             Hash algorithm:  \t{}\n\
             Salt:            \t{}\n\
             Root hash:      \t{}\n",
            hash.display(),
            sb.hash_type.number(),
            sb.data_blocks,
            sb.data_block_size,
            self.hash_blocks,
            sb.hash_block_size,
            sb.algorithm,
            sb.salt,
            self.root_hash,
        );
        // veritysetup knows the device size only for a hash area at the start.
        if self.hash_offset == 0 {
            let blocks = self.hash_start_block + self.hash_blocks;
            let bytes = blocks * sb.hash_block_size.as_u64();
            text.push_str(&format!("Hash device size: \t{bytes} [bytes]\n"));
        }
        text
    }
}

/// What a hash block's byte stands for, to say what a mismatch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    DataBlock(u64),
    HashBlock { level: usize, block: u64 },
    Padding,
}

impl fmt::Display for Covered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DataBlock(block) => write!(f, "the digest of data block {block}"),
            Self::HashBlock { level, block } => {
                write!(f, "the digest of level {level} hash block {block}")
            }
            Self::Padding => f.write_str("its zero padding"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerityBuildError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read random bytes from {URANDOM}")]
    Random(#[source] io::Error),
    #[error("hash offset {offset} is not a multiple of {SECTOR_SIZE} bytes")]
    HashOffsetSector { offset: u64 },
    #[error(
        "hash offset {offset} is not a multiple of the {hash_block_size}-byte hash block: \
         without a superblock the tree starts at the offset itself (veritysetup would start \
         it at the block boundary before, over what is there)"
    )]
    HashOffsetBlock {
        offset: u64,
        hash_block_size: BlockSize,
    },
    #[error(
        "{path} is {size} bytes, not a whole number of {block_size}-byte data blocks: its \
         last {} bytes would be left unprotected (veritysetup drops them silently); pad it \
         or pass the number of data blocks",
        size % block_size.as_u64()
    )]
    PartialDataBlock {
        path: PathBuf,
        size: u64,
        block_size: BlockSize,
    },
    #[error("{path} is {size} bytes, less than one {block_size}-byte data block")]
    NoDataBlocks {
        path: PathBuf,
        size: u64,
        block_size: BlockSize,
    },
    #[error("{path} is {size} bytes, less than {data_blocks} data blocks of {block_size} bytes")]
    DataTooSmall {
        path: PathBuf,
        size: u64,
        data_blocks: u64,
        block_size: BlockSize,
    },
    #[error(
        "the data area of {path} (bytes 0 to {data_end}) overlaps its hash area at byte \
         {hash_offset}"
    )]
    Overlap {
        path: PathBuf,
        data_end: u64,
        hash_offset: u64,
    },
    #[error("{what} does not fit in 64 bits")]
    Overflow { what: &'static str },
    #[error("cannot use the verity superblock at byte {offset} of {path}")]
    Superblock {
        path: PathBuf,
        offset: u64,
        #[source]
        source: SuperblockError,
    },
    #[error("{path} is {size} bytes, but the hash tree ends at byte {needed}")]
    HashTooShort {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("level {level} hash block {block} at byte {offset} of {path} does not match {covers}")]
    HashMismatch {
        path: PathBuf,
        level: usize,
        block: u64,
        offset: u64,
        covers: Covered,
    },
    #[error("the tree's root hash is {found}, expected {expected}")]
    RootMismatch { expected: RootHash, found: RootHash },
    #[error(transparent)]
    RootHash(#[from] RootHashError),
}

type Result<T, E = VerityBuildError> = std::result::Result<T, E>;

/// A salt of veritysetup's default size from the system's random source.
pub fn random_salt() -> Result<Salt> {
    Ok(Salt::from_array(random_bytes::<DEFAULT_SALT_SIZE>()?))
}

/// A random (version 4) UUID, as veritysetup makes when none is given.
pub fn random_uuid() -> Result<Guid> {
    let mut bytes = random_bytes::<16>()?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(Guid::from_bytes(bytes))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open(URANDOM)
        .and_then(|mut source| source.read_exact(&mut bytes))
        .map_err(VerityBuildError::Random)?;
    Ok(bytes)
}

/// Hashes DATA and writes the superblock (unless `params.superblock` is false) and the
/// tree to HASH at `params.hash_offset`, creating HASH if missing. HASH may be DATA itself
/// when the hash area lies past the data. Like veritysetup it does not truncate HASH.
pub fn format(data: &Path, hash: &Path, params: &FormatParams) -> Result<FormatResult> {
    let tree = &params.tree;
    check_hash_offset(params.hash_offset, tree.hash_block_size, params.superblock)?;
    let data_file = open(data, OpenOptions::new().read(true))?;
    let data_size = device_size(&data_file, data)?;
    let data_blocks = count_data_blocks(params.data_blocks, data_size, tree, data)?;
    let hash_file = open_for_writing(hash)?;
    if same_device(&data_file, data, &hash_file, hash)? {
        check_no_overlap(data, data_blocks, tree.data_block_size, params.hash_offset)?;
    }
    let start_block = hash_start_block(params.hash_offset, tree.hash_block_size, params.superblock);
    let layout = TreeLayout::new(tree, data_blocks, start_block)?;
    let hasher = BlockHasher::new(tree);
    let data_input = Input::File {
        file: &data_file,
        path: data,
    };
    let levels = build_levels(&data_input, &layout, &hasher)?;
    let root_hash = root_digest(
        &data_input,
        levels.last().map(Vec::as_slice),
        &layout,
        &hasher,
    )?;
    for (level, bytes) in layout.levels.iter().zip(&levels) {
        write_at(&hash_file, hash, level.offset(&layout), bytes)?;
    }
    let superblock = params.superblock_for(data_blocks);
    if params.superblock {
        write_superblock(&hash_file, hash, params.hash_offset, &superblock)?;
    }
    sync(&hash_file, hash)?;
    Ok(FormatResult {
        root_hash,
        superblock,
        superblock_written: params.superblock,
        hash_offset: params.hash_offset,
        hash_start_block: start_block,
        hash_blocks: layout.hash_blocks(),
    })
}

impl FormatParams {
    fn superblock_for(&self, data_blocks: u64) -> VeritySuperblock {
        VeritySuperblock {
            hash_type: self.tree.hash_type,
            uuid: self.uuid,
            algorithm: self.tree.algorithm,
            data_block_size: self.tree.data_block_size,
            hash_block_size: self.tree.hash_block_size,
            data_blocks,
            salt: self.tree.salt.clone(),
        }
    }
}

/// Recomputes the tree of DATA, compares every hash block with what HASH holds (bottom
/// level first, as veritysetup does) and the top with `root_hash`; names the first
/// difference. The bytes between the superblock and the tree are not part of anything
/// hashed and are not checked (veritysetup does not check them either).
pub fn verify(data: &Path, hash: &Path, root_hash: &RootHash, params: &VerifyParams) -> Result<()> {
    let data_file = open(data, OpenOptions::new().read(true))?;
    let hash_file = open(hash, OpenOptions::new().read(true))?;
    let (tree, requested_blocks, start_block) = resolve(params, &hash_file, hash)?;
    root_hash.check_algorithm(tree.algorithm)?;
    let data_size = device_size(&data_file, data)?;
    let data_blocks = count_data_blocks(requested_blocks, data_size, &tree, data)?;
    let layout = TreeLayout::new(&tree, data_blocks, start_block)?;
    check_hash_size(&hash_file, hash, &layout)?;
    let hasher = BlockHasher::new(&tree);
    let data_input = Input::File {
        file: &data_file,
        path: data,
    };
    let top = verify_levels(&data_input, &hash_file, hash, &layout, &hasher)?;
    let found = root_digest(&data_input, top.as_deref(), &layout, &hasher)?;
    if &found != root_hash {
        return Err(VerityBuildError::RootMismatch {
            expected: root_hash.clone(),
            found,
        });
    }
    Ok(())
}

/// The tree parameters, the data blocks if known, and where the tree starts (in hash
/// blocks), from the superblock or as given.
fn resolve(
    params: &VerifyParams,
    hash_file: &File,
    hash: &Path,
) -> Result<(TreeParams, Option<u64>, u64)> {
    match params {
        VerifyParams::Superblock { hash_offset } => {
            let superblock = read_superblock(hash_file, hash, *hash_offset)?;
            let start = hash_start_block(*hash_offset, superblock.hash_block_size, true);
            Ok((
                tree_params(&superblock),
                Some(superblock.data_blocks),
                start,
            ))
        }
        VerifyParams::NoSuperblock {
            tree,
            hash_offset,
            data_blocks,
        } => {
            check_hash_offset(*hash_offset, tree.hash_block_size, false)?;
            let start = hash_start_block(*hash_offset, tree.hash_block_size, false);
            Ok((tree.clone(), *data_blocks, start))
        }
    }
}

fn tree_params(superblock: &VeritySuperblock) -> TreeParams {
    TreeParams {
        hash_type: superblock.hash_type,
        algorithm: superblock.algorithm,
        data_block_size: superblock.data_block_size,
        hash_block_size: superblock.hash_block_size,
        salt: superblock.salt.clone(),
    }
}

/// veritysetup's rule (whole sectors) plus, without a superblock, whole hash blocks: the
/// kernel addresses the tree in hash blocks.
fn check_hash_offset(offset: u64, hash_block_size: BlockSize, superblock: bool) -> Result<()> {
    if offset % SECTOR_SIZE != 0 {
        return Err(VerityBuildError::HashOffsetSector { offset });
    }
    if !superblock && offset % hash_block_size.as_u64() != 0 {
        return Err(VerityBuildError::HashOffsetBlock {
            offset,
            hash_block_size,
        });
    }
    Ok(())
}

/// The number of data blocks: as requested (DATA must hold them), else all of DATA, which
/// must then be whole blocks.
fn count_data_blocks(
    requested: Option<u64>,
    size: u64,
    tree: &TreeParams,
    path: &Path,
) -> Result<u64> {
    let block_size = tree.data_block_size;
    let whole_blocks = size / block_size.as_u64();
    match requested {
        Some(data_blocks) if data_blocks > whole_blocks => Err(VerityBuildError::DataTooSmall {
            path: path.to_owned(),
            size,
            data_blocks,
            block_size,
        }),
        Some(data_blocks) => Ok(data_blocks),
        None if size % block_size.as_u64() != 0 => Err(VerityBuildError::PartialDataBlock {
            path: path.to_owned(),
            size,
            block_size,
        }),
        None if whole_blocks == 0 => Err(VerityBuildError::NoDataBlocks {
            path: path.to_owned(),
            size,
            block_size,
        }),
        None => Ok(whole_blocks),
    }
}

/// When DATA and HASH are one file or device, the hash area must start after the data.
fn check_no_overlap(
    path: &Path,
    data_blocks: u64,
    block_size: BlockSize,
    hash_offset: u64,
) -> Result<()> {
    let data_end =
        data_blocks
            .checked_mul(block_size.as_u64())
            .ok_or(VerityBuildError::Overflow {
                what: "the data size",
            })?;
    if data_end > hash_offset {
        return Err(VerityBuildError::Overlap {
            path: path.to_owned(),
            data_end,
            hash_offset,
        });
    }
    Ok(())
}

fn open(path: &Path, options: &OpenOptions) -> Result<File> {
    Ok(options
        .open(path)
        .map_err(FileError::of(FileAction::Open, path))?)
}

/// Opens HASH, creating it as veritysetup does: readable and writable by the owner only.
fn open_for_writing(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600);
    open(path, &options)
}

fn sync(file: &File, path: &Path) -> Result<()> {
    Ok(file
        .sync_data()
        .map_err(FileError::of(FileAction::Sync, path))?)
}

/// The size of a file or block device (whose metadata says 0).
fn device_size(mut file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .seek(SeekFrom::End(0))
        .map_err(FileError::of(FileAction::Inspect, path))?)
}

fn metadata(file: &File, path: &Path) -> Result<Metadata> {
    Ok(file
        .metadata()
        .map_err(FileError::of(FileAction::Inspect, path))?)
}

/// Whether two open files are the same file, or nodes of the same block device.
fn same_device(a: &File, a_path: &Path, b: &File, b_path: &Path) -> Result<bool> {
    let (a, b) = (metadata(a, a_path)?, metadata(b, b_path)?);
    if a.file_type().is_block_device() && b.file_type().is_block_device() {
        return Ok(a.rdev() == b.rdev());
    }
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn write_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    Ok(file
        .write_all_at(bytes, offset)
        .map_err(FileError::of(FileAction::WriteAt(offset), path))?)
}

fn read_at(file: &File, path: &Path, offset: u64, buffer: &mut [u8]) -> Result<()> {
    Ok(file
        .read_exact_at(buffer, offset)
        .map_err(FileError::of(FileAction::ReadAt(offset), path))?)
}

/// Writes the superblock at `offset`; a regular file too short for veritysetup's I/O block
/// around it is extended with zeros, so that even a tree-less (one-block) image gives the
/// same file as veritysetup.
fn write_superblock(
    file: &File,
    path: &Path,
    offset: u64,
    superblock: &VeritySuperblock,
) -> Result<()> {
    write_at(file, path, offset, &superblock.to_bytes())?;
    let io_block = superblock
        .hash_block_size
        .as_u64()
        .min(SUPERBLOCK_IO_BLOCK_MAX);
    let block_end = (offset + SUPERBLOCK_SIZE as u64).next_multiple_of(io_block);
    let meta = metadata(file, path)?;
    if meta.is_file() && meta.len() < block_end {
        file.set_len(block_end)
            .map_err(FileError::of(FileAction::Extend(block_end), path))?;
    }
    Ok(())
}

fn read_superblock(file: &File, path: &Path, offset: u64) -> Result<VeritySuperblock> {
    if offset % SECTOR_SIZE != 0 {
        return Err(VerityBuildError::HashOffsetSector { offset });
    }
    let mut bytes = [0u8; SUPERBLOCK_SIZE];
    read_at(file, path, offset, &mut bytes)?;
    VeritySuperblock::parse(&bytes).map_err(|source| VerityBuildError::Superblock {
        path: path.to_owned(),
        offset,
        source,
    })
}

fn check_hash_size(file: &File, path: &Path, layout: &TreeLayout) -> Result<()> {
    let needed = layout.end_offset();
    let size = device_size(file, path)?;
    if size < needed {
        return Err(VerityBuildError::HashTooShort {
            path: path.to_owned(),
            size,
            needed,
        });
    }
    Ok(())
}

/// One level of the tree: where it is in HASH and how many hash blocks it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    first_block: u64,
    blocks: u64,
}

impl Level {
    fn offset(&self, layout: &TreeLayout) -> u64 {
        self.first_block * layout.hash_block_size as u64
    }
}

/// The shape of the tree, as cryptsetup's `hash_levels` computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeLayout {
    data_block_size: usize,
    hash_block_size: usize,
    data_blocks: u64,
    digest_size: usize,
    /// Bytes from one digest to the next in a hash block: the digest size, rounded up to a
    /// power of two for the normal hash type.
    digest_stride: usize,
    /// Digests per hash block: the largest power of two that fits.
    hashes_per_block: usize,
    /// From the bottom: level 0 holds the digests of the data blocks. Empty for a single
    /// data block, whose digest is the root hash.
    levels: Vec<Level>,
}

impl TreeLayout {
    fn new(tree: &TreeParams, data_blocks: u64, start_block: u64) -> Result<Self> {
        let digest_size = tree.algorithm.digest_size();
        let hash_block_size = tree.hash_block_size.as_usize();
        let fitting = hash_block_size / digest_size;
        // The largest power of two not above `fitting` (at least 8: 512 / 64).
        let hashes_per_block = 1 << fitting.ilog2();
        let digest_stride = match tree.hash_type {
            HashType::Normal => digest_size.next_power_of_two(),
            HashType::ChromeOs => digest_size,
        };
        let overflow = || VerityBuildError::Overflow {
            what: "the end of the hash tree",
        };
        // The top level comes first in HASH.
        let mut next_block = start_block;
        let mut levels = level_sizes(data_blocks, hashes_per_block as u64)
            .into_iter()
            .rev()
            .map(|blocks| {
                let level = Level {
                    first_block: next_block,
                    blocks,
                };
                next_block = next_block.checked_add(blocks).ok_or_else(overflow)?;
                Ok(level)
            })
            .collect::<Result<Vec<_>>>()?;
        levels.reverse();
        next_block
            .checked_mul(hash_block_size as u64)
            .ok_or_else(overflow)?;
        Ok(Self {
            data_block_size: tree.data_block_size.as_usize(),
            hash_block_size,
            data_blocks,
            digest_size,
            digest_stride,
            hashes_per_block,
            levels,
        })
    }

    fn hash_blocks(&self) -> u64 {
        self.levels.iter().map(|level| level.blocks).sum()
    }

    /// The byte after the tree (its bottom level ends it). `new` checked it fits.
    fn end_offset(&self) -> u64 {
        self.levels.first().map_or(0, |bottom| {
            (bottom.first_block + bottom.blocks) * self.hash_block_size as u64
        })
    }

    /// The blocks level `index` hashes: the data blocks, or the level below's hash blocks.
    fn input_of(&self, index: usize) -> (usize, u64) {
        match index
            .checked_sub(1)
            .and_then(|below| self.levels.get(below))
        {
            None => (self.data_block_size, self.data_blocks),
            Some(below) => (self.hash_block_size, below.blocks),
        }
    }

    /// Where input block `block` has its digest in the level above: (hash block, byte in it).
    fn slot_of(&self, block: u64) -> (u64, usize) {
        let per_block = self.hashes_per_block as u64;
        let slot = (block % per_block) as usize;
        (block / per_block, slot * self.digest_stride)
    }

    /// What byte `byte` of hash block `block` of level `index` stands for.
    fn covered(&self, index: usize, block: u64, byte: usize) -> Covered {
        let (_, inputs) = self.input_of(index);
        let slot = byte / self.digest_stride;
        let input = block * self.hashes_per_block as u64 + slot as u64;
        let in_digest = byte % self.digest_stride < self.digest_size;
        if slot >= self.hashes_per_block || input >= inputs || !in_digest {
            return Covered::Padding;
        }
        match index {
            0 => Covered::DataBlock(input),
            _ => Covered::HashBlock {
                level: index - 1,
                block: input,
            },
        }
    }
}

/// Hash blocks per level, bottom first: each level holds the digests of the one below,
/// until one block (the top) is left. A single data block needs no level at all.
fn level_sizes(data_blocks: u64, hashes_per_block: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut count = data_blocks;
    while count > 1 {
        count = count.div_ceil(hashes_per_block);
        sizes.push(count);
    }
    sizes
}

/// The digest veritysetup computes for one block: salt first for the normal hash type,
/// last for the Chrome OS one.
struct BlockHasher {
    /// The hash state after the salt (normal type) or nothing (Chrome OS type).
    start: HashState,
    /// Hashed after the block: the salt for the Chrome OS type, else nothing.
    suffix: Vec<u8>,
}

#[derive(Clone)]
enum HashState {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl BlockHasher {
    fn new(tree: &TreeParams) -> Self {
        let salt = tree.salt.as_bytes();
        let (prefix, suffix) = match tree.hash_type {
            HashType::Normal => (salt, &[][..]),
            HashType::ChromeOs => (&[][..], salt),
        };
        let start = match tree.algorithm {
            HashAlgorithm::Sha256 => HashState::Sha256(Sha256::new_with_prefix(prefix)),
            HashAlgorithm::Sha512 => HashState::Sha512(Sha512::new_with_prefix(prefix)),
        };
        Self {
            start,
            suffix: suffix.to_vec(),
        }
    }

    /// Writes the digest of `block` to the start of `out`.
    fn digest_into(&self, block: &[u8], out: &mut [u8]) {
        match &self.start {
            HashState::Sha256(start) => finish(start, block, &self.suffix, out),
            HashState::Sha512(start) => finish(start, block, &self.suffix, out),
        }
    }
}

fn finish<D: Digest + Clone>(start: &D, block: &[u8], suffix: &[u8], out: &mut [u8]) {
    let mut state = start.clone();
    state.update(block);
    state.update(suffix);
    let digest = state.finalize();
    out[..digest.len()].copy_from_slice(&digest);
}

/// A reusable read buffer whose bytes start on a page boundary: the kernel copies from the
/// page cache to a page-aligned buffer about four times faster (measured: 0.1 s against
/// 0.43 s per GiB here), and that copy is most of what is not hashing.
#[derive(Default)]
struct ReadBuffer {
    storage: Vec<u8>,
}

/// Alignment of the read buffer; a page on every Linux architecture this runs on.
const READ_ALIGNMENT: usize = 4096;

impl ReadBuffer {
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + READ_ALIGNMENT {
            // Reallocation may move the storage: the offset is computed after it.
            self.storage = vec![0; len + READ_ALIGNMENT];
        }
        let misalignment = self.storage.as_ptr() as usize % READ_ALIGNMENT;
        let offset = (READ_ALIGNMENT - misalignment) % READ_ALIGNMENT;
        &mut self.storage[offset..offset + len]
    }
}

/// Where a level's input blocks come from.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// The data device, from its first byte.
    File { file: &'a File, path: &'a Path },
    /// The level below, in memory.
    Memory(&'a [u8]),
}

impl Input<'_> {
    /// `count` blocks of `block_size` bytes from block `first`, read into `buffer` if need be.
    fn blocks<'b>(
        &'b self,
        first: u64,
        count: usize,
        block_size: usize,
        buffer: &'b mut ReadBuffer,
    ) -> Result<&'b [u8]> {
        // Both are bounded by the size of data that exists: the file or the slice.
        let start = first as usize * block_size;
        let len = count * block_size;
        match self {
            Self::Memory(bytes) => Ok(&bytes[start..start + len]),
            Self::File { file, path } => {
                let bytes = buffer.get(len);
                read_at(file, path, first * block_size as u64, bytes)?;
                Ok(bytes)
            }
        }
    }
}

/// Every level of the tree, bottom first.
fn build_levels(data: &Input, layout: &TreeLayout, hasher: &BlockHasher) -> Result<Vec<Vec<u8>>> {
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(layout.levels.len());
    for index in 0..layout.levels.len() {
        let input = match levels.last() {
            Some(below) => Input::Memory(below),
            None => *data,
        };
        levels.push(hash_level(&input, index, layout, hasher)?);
    }
    Ok(levels)
}

/// Checks the stored levels bottom first, each against the digests of the (already
/// checked) level below; returns the stored top level.
fn verify_levels(
    data: &Input,
    hash_file: &File,
    hash: &Path,
    layout: &TreeLayout,
    hasher: &BlockHasher,
) -> Result<Option<Vec<u8>>> {
    let mut below: Option<Vec<u8>> = None;
    for (index, level) in layout.levels.iter().enumerate() {
        let input = match &below {
            Some(bytes) => Input::Memory(bytes),
            None => *data,
        };
        let computed = hash_level(&input, index, layout, hasher)?;
        let mut stored = vec![0u8; computed.len()];
        read_at(hash_file, hash, level.offset(layout), &mut stored)?;
        compare_level(index, level, &computed, &stored, layout, hash)?;
        below = Some(stored);
    }
    Ok(below)
}

fn compare_level(
    index: usize,
    level: &Level,
    computed: &[u8],
    stored: &[u8],
    layout: &TreeLayout,
    hash: &Path,
) -> Result<()> {
    let Some(byte) = computed.iter().zip(stored).position(|(a, b)| a != b) else {
        return Ok(());
    };
    let block = (byte / layout.hash_block_size) as u64;
    let within = byte % layout.hash_block_size;
    Err(VerityBuildError::HashMismatch {
        path: hash.to_owned(),
        level: index,
        block,
        offset: level.offset(layout) + byte as u64,
        covers: layout.covered(index, block, within),
    })
}

/// The digest of the top hash block or, for a one-block image, of the data block.
fn root_digest(
    data: &Input,
    top: Option<&[u8]>,
    layout: &TreeLayout,
    hasher: &BlockHasher,
) -> Result<RootHash> {
    let mut buffer = ReadBuffer::default();
    let block = match top {
        Some(top) => top,
        None => data.blocks(0, 1, layout.data_block_size, &mut buffer)?,
    };
    let mut digest = vec![0u8; layout.digest_size];
    hasher.digest_into(block, &mut digest);
    Ok(RootHash::from_bytes(digest)?)
}

/// Hashes the input of level `index` on every core: the output is split into runs of
/// whole hash blocks that workers take in turn, each reading and hashing its inputs in
/// chunks of about [`CHUNK_BYTES`].
fn hash_level(
    input: &Input,
    index: usize,
    layout: &TreeLayout,
    hasher: &BlockHasher,
) -> Result<Vec<u8>> {
    let (block_size, blocks) = layout.input_of(index);
    let hash_blocks = layout.levels[index].blocks;
    let len = usize::try_from(hash_blocks * layout.hash_block_size as u64).map_err(|_| {
        VerityBuildError::Overflow {
            what: "a level of the tree",
        }
    })?;
    let mut out = vec![0u8; len];
    let inputs_per_hash_block = layout.hashes_per_block * block_size;
    let hash_blocks_per_job = (CHUNK_BYTES / inputs_per_hash_block).max(1);
    let job_len = hash_blocks_per_job * layout.hash_block_size;
    let job_count = out.len().div_ceil(job_len);
    let jobs = Mutex::new(out.chunks_mut(job_len).enumerate());
    let work = LevelWork {
        input,
        block_size,
        blocks,
        inputs_per_job: (hash_blocks_per_job * layout.hashes_per_block) as u64,
        layout,
        hasher,
        failed: AtomicBool::new(false),
    };
    let workers = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(job_count);
    thread::scope(|scope| {
        let running: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| work.run(&jobs)))
            .collect();
        running.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })?;
    Ok(out)
}

/// What the workers of one level share.
struct LevelWork<'a> {
    input: &'a Input<'a>,
    block_size: usize,
    /// Input blocks of the whole level.
    blocks: u64,
    /// Input blocks behind one job's run of hash blocks.
    inputs_per_job: u64,
    layout: &'a TreeLayout,
    hasher: &'a BlockHasher,
    /// Set by the first worker that fails, so the others stop early.
    failed: AtomicBool,
}

impl LevelWork<'_> {
    fn run<'o>(&self, jobs: &Mutex<impl Iterator<Item = (usize, &'o mut [u8])>>) -> Result<()> {
        let mut buffer = ReadBuffer::default();
        while !self.failed.load(Ordering::Relaxed) {
            // A poisoned lock means another worker panicked; the scope re-raises that.
            let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((job, out)) = next else {
                return Ok(());
            };
            if let Err(err) = self.hash_job(job as u64, out, &mut buffer) {
                self.failed.store(true, Ordering::Relaxed);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Hashes the inputs of job `job` into `out`, its run of hash blocks.
    fn hash_job(&self, job: u64, out: &mut [u8], buffer: &mut ReadBuffer) -> Result<()> {
        let first = job * self.inputs_per_job;
        let end = (first + self.inputs_per_job).min(self.blocks);
        let chunk_blocks = (CHUNK_BYTES / self.block_size).max(1) as u64;
        let digest_size = self.layout.digest_size;
        let mut chunk_first = first;
        while chunk_first < end {
            let count = chunk_blocks.min(end - chunk_first);
            let bytes = self
                .input
                .blocks(chunk_first, count as usize, self.block_size, buffer)?;
            for (block, number) in bytes
                .chunks_exact(self.block_size)
                .zip(chunk_first - first..)
            {
                let (hash_block, at) = self.layout.slot_of(number);
                let at = hash_block as usize * self.layout.hash_block_size + at;
                self.hasher
                    .digest_into(block, &mut out[at..at + digest_size]);
            }
            chunk_first += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;
    use std::fs;
    use std::process::{Command, Output};

    const UUID: &str = "0badcafe-1234-4321-8765-feedfacef00d";

    /// veritysetup, if installed (Debian keeps it in /usr/sbin, not always on PATH).
    fn veritysetup() -> Option<PathBuf> {
        let found = ["veritysetup", "/usr/sbin/veritysetup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|program| Command::new(program).arg("--version").output().is_ok());
        if found.is_none() {
            println!("note: veritysetup not installed, skipping the comparison with it");
        }
        found
    }

    fn run(program: &Path, dir: &Path, args: &[String]) -> Output {
        let output = Command::new(program)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("veritysetup runs");
        assert!(
            output.status.success(),
            "veritysetup {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Deterministic, incompressible-looking data (xorshift64).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn size(bytes: u32) -> BlockSize {
        BlockSize::new(bytes).expect("block size")
    }

    /// One `veritysetup format` configuration and the file it applies to.
    #[derive(Clone)]
    struct Case {
        name: &'static str,
        file_blocks: usize,
        params: FormatParams,
        /// Data and hash in one file (the hash area at `hash_offset`, past the data).
        same_file: bool,
    }

    impl Case {
        fn new(name: &'static str, file_blocks: usize) -> Self {
            let salt = "5a17".repeat(16).parse().expect("salt");
            let uuid = Guid::parse(UUID).expect("uuid");
            Self {
                name,
                file_blocks,
                params: FormatParams::new(TreeParams::new(salt), uuid),
                same_file: false,
            }
        }

        fn blocks(mut self, data: u32, hash: u32) -> Self {
            self.params.tree.data_block_size = size(data);
            self.params.tree.hash_block_size = size(hash);
            self
        }

        fn data_len(&self) -> usize {
            self.file_blocks * self.params.tree.data_block_size.as_usize()
        }

        /// The same options, as veritysetup spells them.
        fn veritysetup_options(&self) -> Vec<String> {
            let p = &self.params;
            let mut args = vec![
                format!("--hash={}", p.tree.algorithm),
                format!("--format={}", p.tree.hash_type.number()),
                format!("--data-block-size={}", p.tree.data_block_size),
                format!("--hash-block-size={}", p.tree.hash_block_size),
                format!("--hash-offset={}", p.hash_offset),
                format!("--salt={}", p.tree.salt),
            ];
            if let Some(blocks) = p.data_blocks {
                args.push(format!("--data-blocks={blocks}"));
            }
            if !p.superblock {
                args.push("--no-superblock".into());
            }
            args
        }

        /// (data, hash) file names in a case directory.
        fn files(&self) -> (&'static str, &'static str) {
            if self.same_file {
                ("image", "image")
            } else {
                ("data", "hash")
            }
        }
    }

    /// Formats the case with veritysetup and with `format`, in two directories holding
    /// the same data, and checks the hash files, root hashes and reports are identical;
    /// then that veritysetup and `verify` both accept our output.
    fn compare_with_veritysetup(program: &Path, case: &Case) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_name, hash_name) = case.files();
        let data = pattern(case.data_len(), case.file_blocks as u64);
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        for side in [&ours, &theirs] {
            fs::create_dir(side).expect("mkdir");
            fs::write(side.join(data_name), &data).expect("data");
        }
        let mut args = vec!["format".to_owned(), data_name.into(), hash_name.into()];
        args.extend(case.veritysetup_options());
        if case.params.superblock {
            args.push(format!("--uuid={UUID}"));
        }
        let report = String::from_utf8(run(program, &theirs, &args).stdout).expect("UTF-8");

        let result = format(&ours.join(data_name), &ours.join(hash_name), &case.params)
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        assert_eq!(
            result.summary(Path::new(hash_name)),
            report,
            "{}",
            case.name
        );
        let expected = fs::read(theirs.join(hash_name)).expect("theirs");
        let written = fs::read(ours.join(hash_name)).expect("ours");
        assert!(expected == written, "{}: hash files differ", case.name);

        let mut verify_args = vec!["verify".to_owned(), data_name.into(), hash_name.into()];
        verify_args.push(result.root_hash.to_string());
        verify_args.extend(case.veritysetup_options());
        run(program, &ours, &verify_args);
        verify(
            &ours.join(data_name),
            &ours.join(hash_name),
            &result.root_hash,
            &verify_params(&case.params),
        )
        .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        if case.params.superblock && case.params.hash_offset == 0 {
            full_check_accepts(case, &data, &expected, &result.root_hash);
        }
    }

    /// The updater's full check (`xorbang_formats::verity_tree`) accepts veritysetup's tree
    /// for the data, and refuses it once a data byte changes.
    fn full_check_accepts(case: &Case, data: &[u8], tree: &[u8], root_hash: &RootHash) {
        use xorbang_formats::verity_tree::TreeCheck;
        let covered =
            usize::try_from(TreeCheck::new(tree).expect("superblock").data_bytes()).expect("size");
        let check = |data: &[u8]| {
            let mut check = TreeCheck::new(tree).expect("veritysetup's superblock");
            let block = usize::try_from(check.data_block_bytes()).expect("size");
            for chunk in data[..covered].chunks(block) {
                check.data_block(chunk)?;
            }
            check.finish(root_hash)
        };
        check(data).unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let mut changed = data.to_vec();
        changed[covered / 2] ^= 1;
        assert!(
            check(&changed).is_err(),
            "{}: a changed byte passes",
            case.name
        );
    }

    fn verify_params(params: &FormatParams) -> VerifyParams {
        if params.superblock {
            VerifyParams::Superblock {
                hash_offset: params.hash_offset,
            }
        } else {
            VerifyParams::NoSuperblock {
                tree: params.tree.clone(),
                hash_offset: params.hash_offset,
                data_blocks: params.data_blocks,
            }
        }
    }

    fn check_cases(cases: &[Case]) {
        let Some(program) = veritysetup() else {
            return;
        };
        for case in cases {
            compare_with_veritysetup(&program, case);
        }
    }

    #[test]
    fn byte_identical_to_veritysetup_for_one_and_two_blocks() {
        check_cases(&[
            // No tree at all: the root is the digest of the block.
            Case::new("one block", 1),
            Case::new("one block, 512-byte hash blocks", 1).blocks(4096, 512),
            Case::new("two blocks", 2),
        ]);
    }

    #[test]
    fn byte_identical_to_veritysetup_with_several_levels_and_block_size_mixes() {
        check_cases(&[
            // 16 digests per 512-byte block: 5000 -> 313 -> 20 -> 2 -> 1, four levels.
            Case::new("512/512, four levels", 5000).blocks(512, 512),
            // 300 -> 19 -> 2 -> 1.
            Case::new("4096/512, three levels", 300).blocks(4096, 512),
            // 128 digests per block: 16385 -> 129 -> 2 -> 1; 8 MiB, several chunks.
            Case::new("512/4096, three levels", 16385).blocks(512, 4096),
            // Level 0 of 6 hash blocks, split between two jobs.
            Case::new("4096/4096, two jobs", 768),
        ]);
    }

    #[test]
    fn byte_identical_to_veritysetup_for_salts_and_algorithms() {
        let with = |name, salt: &str, algorithm, hash_type| {
            let mut case = Case::new(name, 40).blocks(512, 512);
            case.params.tree.salt = salt.parse().expect("salt");
            case.params.tree.algorithm = algorithm;
            case.params.tree.hash_type = hash_type;
            case
        };
        let long_salt = "c3".repeat(256);
        check_cases(&[
            with("no salt", "-", HashAlgorithm::Sha256, HashType::Normal),
            with(
                "256-byte salt",
                &long_salt,
                HashAlgorithm::Sha256,
                HashType::Normal,
            ),
            with("sha512", "0123", HashAlgorithm::Sha512, HashType::Normal),
            with(
                "sha512, Chrome OS",
                "0123",
                HashAlgorithm::Sha512,
                HashType::ChromeOs,
            ),
            with(
                "sha256, Chrome OS",
                "abcdef",
                HashAlgorithm::Sha256,
                HashType::ChromeOs,
            ),
        ]);
    }

    #[test]
    fn byte_identical_to_veritysetup_for_offsets_and_without_superblock() {
        let mut same_file = Case::new("hash area after the data, same file", 80);
        same_file.same_file = true;
        same_file.params.data_blocks = Some(64);
        same_file.params.hash_offset = 64 * 4096;
        // Superblock at a sector that is not a hash-block boundary: a gap before the tree.
        let mut odd_offset = same_file.clone();
        odd_offset.name = "hash area one sector past a block boundary";
        odd_offset.params.hash_offset = 64 * 4096 + 512;
        let mut separate = Case::new("hash offset in a separate file", 50).blocks(4096, 512);
        separate.params.hash_offset = 3072;
        let mut bare = Case::new("no superblock", 300).blocks(4096, 512);
        bare.params.superblock = false;
        let mut bare_same_file = Case::new("no superblock, same file", 80);
        bare_same_file.same_file = true;
        bare_same_file.params.superblock = false;
        bare_same_file.params.data_blocks = Some(70);
        bare_same_file.params.hash_offset = 72 * 4096;
        let mut fewer = Case::new("fewer data blocks than the file", 20);
        fewer.params.data_blocks = Some(9);
        check_cases(&[same_file, odd_offset, separate, bare, bare_same_file, fewer]);
    }

    /// Blocks of the small image: with 16 digests per 512-byte hash block, level 0 is 2
    /// blocks and level 1 (the top) is one.
    const SMALL_BLOCKS: usize = 24;

    /// A small image of `blocks` 512-byte blocks with 512-byte hash blocks.
    fn small_image(
        dir: &Path,
        salt: &str,
        blocks: usize,
    ) -> (PathBuf, PathBuf, FormatParams, FormatResult) {
        let data = dir.join("data");
        let hash = dir.join("hash");
        fs::write(&data, pattern(blocks * 512, 7)).expect("data");
        let mut params = FormatParams::new(
            TreeParams::new(salt.parse().expect("salt")),
            Guid::parse(UUID).expect("uuid"),
        );
        params.tree.data_block_size = size(512);
        params.tree.hash_block_size = size(512);
        let result = format(&data, &hash, &params).expect("format");
        (data, hash, params, result)
    }

    fn flipped(path: &Path, at: usize, check: impl FnOnce()) {
        let original = fs::read(path).expect("read");
        let mut damaged = original.clone();
        damaged[at] ^= 0xff;
        fs::write(path, &damaged).expect("damage");
        check();
        fs::write(path, &original).expect("repair");
    }

    /// Over a one-level image (8 blocks: 4 KiB of data, one hash block), to keep the
    /// 4096 verifications quick; the upper levels are the tree test's business.
    #[test]
    fn every_flipped_data_byte_is_caught_in_level_0_at_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, hash, params, result) = small_image(dir.path(), "00ff", 8);
        assert_eq!(result.hash_blocks, 1);
        let params = verify_params(&params);
        for at in 0..8 * 512 {
            flipped(&data, at, || {
                let err = verify(&data, &hash, &result.root_hash, &params).expect_err("caught");
                let block = (at / 512) as u64;
                let VerityBuildError::HashMismatch {
                    level: 0,
                    block: hash_block,
                    offset,
                    covers: Covered::DataBlock(covered),
                    ..
                } = err
                else {
                    panic!("byte {at}: {err}");
                };
                assert_eq!((covered, hash_block), (block, block / 16), "byte {at}");
                // Level 0 follows the superblock; the first differing byte is somewhere
                // in the block's 32-byte digest.
                let digest = 512 + block * 32;
                assert!(
                    (digest..digest + 32).contains(&offset),
                    "byte {at}: {offset}"
                );
            });
        }
    }

    /// The tree (bytes 512 to 2048): every byte is either a digest or zero padding, all of
    /// it covered by the root hash, so each flip is reported at exactly that byte.
    #[test]
    fn every_flipped_tree_byte_is_caught_at_that_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, hash, params, result) = small_image(dir.path(), "00ff", SMALL_BLOCKS);
        assert_eq!(result.hash_blocks, 3);
        let params = verify_params(&params);
        for at in 512..2048 {
            flipped(&hash, at, || {
                let err = verify(&data, &hash, &result.root_hash, &params).expect_err("caught");
                let VerityBuildError::HashMismatch { level, offset, .. } = &err else {
                    panic!("byte {at}: {err}");
                };
                assert_eq!(*offset, at as u64, "{err}");
                assert_eq!(*level, if at < 1024 { 1 } else { 0 }, "{err}");
            });
        }
        // 24 digests fill level 0's first block and half its second; the rest is padding.
        flipped(&hash, 1536 + 8 * 32, || {
            let err = verify(&data, &hash, &result.root_hash, &params).expect_err("caught");
            assert!(
                err.to_string().ends_with("does not match its zero padding"),
                "{err}"
            );
        });
        flipped(&hash, 512 + 32, || {
            let err = verify(&data, &hash, &result.root_hash, &params).expect_err("caught");
            assert!(
                err.to_string()
                    .ends_with("does not match the digest of level 0 hash block 1"),
                "{err}"
            );
        });
    }

    /// The superblock is not covered by the root hash: a flip either changes a parameter
    /// the tree depends on (and verification fails) or lands where nothing is read — the
    /// UUID, the algorithm field past its NUL, the padding, the salt field past the salt —
    /// which veritysetup ignores too.
    #[test]
    fn superblock_flips_fail_verification_unless_the_field_is_unused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let salt_len = 2;
        let (data, hash, params, result) = small_image(dir.path(), "00ff", SMALL_BLOCKS);
        let params = verify_params(&params);
        let unused = |at: usize| {
            (16..32).contains(&at) // uuid
                || (32 + "sha256\0".len()..64).contains(&at) // algorithm, past the name
                || (82..88).contains(&at) // _pad1
                || (88 + salt_len..512).contains(&at) // rest of the salt field, _pad2
        };
        let mut ignored = 0;
        for at in 0..SUPERBLOCK_SIZE {
            flipped(&hash, at, || {
                let outcome = verify(&data, &hash, &result.root_hash, &params);
                assert_eq!(outcome.is_ok(), unused(at), "byte {at}: {outcome:?}");
                ignored += usize::from(outcome.is_ok());
            });
        }
        assert_eq!(ignored, 16 + 25 + 6 + (512 - 88 - salt_len));
    }

    #[test]
    fn veritysetup_agrees_on_damage_and_on_the_unused_gap() {
        let Some(program) = veritysetup() else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let hash = dir.path().join("hash");
        fs::write(&data, pattern(64 * 4096, 3)).expect("data");
        let params = FormatParams::new(
            TreeParams::new(Salt::from_array([1, 2, 3])),
            Guid::parse(UUID).expect("uuid"),
        );
        let result = format(&data, &hash, &params).expect("format");
        let verify_args =
            ["verify", "data", "hash", &result.root_hash.to_string()].map(String::from);
        let veritysetup_accepts = || {
            Command::new(&program)
                .current_dir(dir.path())
                .args(&verify_args)
                .output()
                .expect("runs")
                .status
                .success()
        };
        let ours_accepts =
            || verify(&data, &hash, &result.root_hash, &verify_params(&params)).is_ok();
        // Bytes 512..4096 of HASH: after the superblock, before the tree (block 1).
        for at in [512, 2000, 4095] {
            flipped(&hash, at, || {
                assert!(ours_accepts() && veritysetup_accepts(), "gap {at}")
            });
        }
        for (file, at) in [
            (&data, 0),
            (&data, 64 * 4096 - 1),
            (&hash, 4096),
            (&hash, 8191),
        ] {
            flipped(file, at, || {
                assert!(
                    !ours_accepts() && !veritysetup_accepts(),
                    "{} {at}",
                    file.display()
                )
            });
        }
    }

    #[test]
    fn a_wrong_root_hash_is_named_with_the_one_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, hash, params, result) = small_image(dir.path(), "-", SMALL_BLOCKS);
        let wrong = RootHash::parse_hex(&"00".repeat(32)).expect("root");
        let err = verify(&data, &hash, &wrong, &verify_params(&params)).expect_err("wrong");
        assert_eq!(
            err.to_string(),
            format!(
                "the tree's root hash is {}, expected {wrong}",
                result.root_hash
            )
        );
        let long = RootHash::parse_hex(&"00".repeat(64)).expect("sha512 size");
        let err = verify(&data, &hash, &long, &verify_params(&params)).expect_err("size");
        assert!(matches!(err, VerityBuildError::RootHash(_)), "{err}");
    }

    #[test]
    fn verify_names_a_missing_superblock_and_a_short_hash_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, hash, params, result) = small_image(dir.path(), "abcd", SMALL_BLOCKS);
        let misplaced = VerifyParams::Superblock { hash_offset: 1024 };
        let err = verify(&data, &hash, &result.root_hash, &misplaced).expect_err("no sb");
        let text = format!(
            "{err}: {}",
            err.source().map(ToString::to_string).unwrap_or_default()
        );
        assert!(text.contains("superblock at byte 1024 of"), "{text}");
        assert!(text.contains("not a verity superblock"), "{text}");

        let bytes = fs::read(&hash).expect("hash");
        fs::write(&hash, &bytes[..bytes.len() - 1]).expect("truncate");
        let err =
            verify(&data, &hash, &result.root_hash, &verify_params(&params)).expect_err("short");
        assert!(
            err.to_string()
                .ends_with("is 2047 bytes, but the hash tree ends at byte 2048"),
            "{err}"
        );
    }

    #[test]
    fn data_that_is_not_whole_blocks_is_refused_unless_the_count_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let hash = dir.path().join("hash");
        fs::write(&data, pattern(5000, 1)).expect("data");
        let mut params = FormatParams::new(
            TreeParams::new(Salt::default()),
            Guid::parse(UUID).expect("uuid"),
        );
        let err = format(&data, &hash, &params).expect_err("partial");
        assert!(
            !hash.exists(),
            "nothing created for data that cannot be formatted"
        );
        assert!(
            err.to_string().contains(
                "is 5000 bytes, not a whole number of 4096-byte data blocks: its last 904 bytes"
            ),
            "{err}"
        );
        params.data_blocks = Some(1);
        assert_eq!(
            format(&data, &hash, &params)
                .expect("one block")
                .superblock
                .data_blocks,
            1
        );
        params.data_blocks = Some(2);
        let err = format(&data, &hash, &params).expect_err("too few");
        assert!(
            err.to_string()
                .contains("less than 2 data blocks of 4096 bytes"),
            "{err}"
        );

        fs::write(&data, b"").expect("empty");
        params.data_blocks = None;
        let err = format(&data, &hash, &params).expect_err("empty");
        assert!(
            err.to_string()
                .contains("is 0 bytes, less than one 4096-byte data block"),
            "{err}"
        );
    }

    #[test]
    fn offsets_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image");
        fs::write(&image, pattern(8 * 4096, 2)).expect("data");
        let mut params = FormatParams::new(
            TreeParams::new(Salt::default()),
            Guid::parse(UUID).expect("uuid"),
        );
        params.hash_offset = 100;
        let err = format(&image, &image, &params).expect_err("sector");
        assert_eq!(
            err.to_string(),
            "hash offset 100 is not a multiple of 512 bytes"
        );
        params.hash_offset = 7 * 4096;
        let err = format(&image, &image, &params).expect_err("overlap");
        assert!(
            err.to_string()
                .ends_with("(bytes 0 to 32768) overlaps its hash area at byte 28672"),
            "{err}"
        );
        params.hash_offset = 8 * 4096 + 512;
        params.superblock = false;
        let err = format(&image, &image, &params).expect_err("block");
        assert!(
            err.to_string()
                .starts_with("hash offset 33280 is not a multiple of the 4096-byte hash block"),
            "{err}"
        );
        assert_eq!(
            fs::read(&image).expect("image"),
            pattern(8 * 4096, 2),
            "untouched"
        );
        assert!(!dir.path().join("hash").exists());
    }

    #[test]
    fn random_salts_and_uuids_are_fresh_and_uuids_are_version_4() {
        let (first, second) = (random_salt().expect("salt"), random_salt().expect("salt"));
        assert_eq!(first.as_bytes().len(), DEFAULT_SALT_SIZE);
        assert_ne!(first, second);
        let uuid = random_uuid().expect("uuid");
        let text = uuid.to_string();
        assert_eq!(&text[14..15], "4", "{text}");
        assert!("89ab".contains(&text[19..20]), "{text}");
        assert_ne!(uuid, random_uuid().expect("uuid"));
    }

    #[test]
    fn layout_follows_cryptsetups_hash_levels() {
        let mut tree = TreeParams::new(Salt::default());
        let layout = TreeLayout::new(&tree, 1, 1).expect("layout");
        assert!(layout.levels.is_empty());
        assert_eq!(layout.end_offset(), 0);
        let layout = TreeLayout::new(&tree, 128 * 128 + 1, 1).expect("layout");
        let levels: Vec<(u64, u64)> = layout
            .levels
            .iter()
            .map(|l| (l.first_block, l.blocks))
            .collect();
        // Bottom first; the top (1 block) comes first in HASH, right after the superblock.
        assert_eq!(levels, [(4, 129), (2, 2), (1, 1)]);
        tree.algorithm = HashAlgorithm::Sha512;
        tree.hash_block_size = size(512);
        let layout = TreeLayout::new(&tree, 9, 0).expect("layout");
        assert_eq!((layout.hashes_per_block, layout.digest_stride), (8, 64));
        let err = TreeLayout::new(&tree, u64::MAX, u64::MAX - 1).expect_err("overflow");
        assert!(matches!(err, VerityBuildError::Overflow { .. }), "{err}");
    }
}

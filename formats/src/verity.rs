//! dm-verity metadata, shared by the init (which sets up the `verity` target) and the build
//! tool (which writes the hash tree): the 512-byte superblock `veritysetup format` writes at
//! the start of the hash area, the device-mapper `verity` table line, root hashes and the
//! partition UUIDs the Discoverable Partitions Specification derives from them.
//!
//! Pure: parsers take bytes or text, the caller does the I/O. The formats follow cryptsetup
//! 2.6 (`lib/verity/verity.c`) and the kernel's
//! `Documentation/admin-guide/device-mapper/verity.rst`.

use std::fmt;
use std::str::FromStr;

use crate::bytes::Block;
use crate::gpt::Guid;

/// Size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 512;
/// The largest salt the superblock can hold (its salt field).
pub const MAX_SALT_SIZE: usize = 256;
/// Bounds veritysetup puts on both block sizes (`VERITY_BLOCK_SIZE_OK`).
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 512 * 1024;
/// dm-verity refuses data blocks larger than a page; this is x86-64's page size.
/// veritysetup formats such images anyway, with a warning.
pub const KERNEL_MAX_DATA_BLOCK_SIZE: u32 = 4096;

const SIGNATURE: &[u8; 8] = b"verity\0\0";
const SUPERBLOCK_VERSION: u32 = 1;

// Field offsets of the little-endian superblock (`struct verity_sb`, packed).
const VERSION_AT: usize = 8;
const HASH_TYPE_AT: usize = 12;
const UUID_AT: usize = 16;
const ALGORITHM_AT: usize = 32;
const ALGORITHM_LEN: usize = 32;
const DATA_BLOCK_SIZE_AT: usize = 64;
const HASH_BLOCK_SIZE_AT: usize = 68;
const DATA_BLOCKS_AT: usize = 72;
const SALT_SIZE_AT: usize = 80;
const SALT_AT: usize = 88;

/// How blocks are hashed: the `hash_type` of the superblock, the `<version>` of the table
/// and veritysetup's `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashType {
    /// The original Chrome OS format: the salt follows the block and digests are packed.
    ChromeOs,
    /// The normal format (veritysetup's default): the salt precedes the block and each
    /// digest takes a power-of-two slot, zero-padded.
    Normal,
}

impl HashType {
    pub fn number(self) -> u32 {
        match self {
            Self::ChromeOs => 0,
            Self::Normal => 1,
        }
    }

    pub fn from_number(number: u32) -> Option<Self> {
        match number {
            0 => Some(Self::ChromeOs),
            1 => Some(Self::Normal),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unsupported verity hash type {found:?}: expected 0 (Chrome OS) or 1 (normal)")]
pub struct HashTypeError {
    pub found: String,
}

impl FromStr for HashType {
    type Err = HashTypeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse()
            .ok()
            .and_then(Self::from_number)
            .ok_or_else(|| HashTypeError {
                found: text.to_owned(),
            })
    }
}

/// The digests this code computes and checks. veritysetup also accepts older ones (sha1);
/// they are refused here by name rather than half-supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unsupported verity hash algorithm {found:?}: expected sha256 or sha512")]
pub struct AlgorithmError {
    pub found: String,
}

impl HashAlgorithm {
    /// The kernel crypto API name, as the superblock and the table spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    pub fn digest_size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgorithm {
    type Err = AlgorithmError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            _ => Err(AlgorithmError {
                found: text.to_owned(),
            }),
        }
    }
}

/// A data or hash block size: a power of two from 512 bytes to 512 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSize(u32);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BlockSizeError {
    #[error("block size {found:?} is not a number")]
    NotANumber { found: String },
    #[error("block size {found} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}")]
    Range { found: u64 },
}

impl BlockSize {
    pub const DEFAULT: Self = Self(4096);

    pub fn new(bytes: u32) -> Result<Self, BlockSizeError> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(BlockSizeError::Range {
                found: u64::from(bytes),
            });
        }
        Ok(Self(bytes))
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn as_u64(self) -> u64 {
        u64::from(self.0)
    }

    /// Block sizes are at most 512 KiB, so this never truncates.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for BlockSize {
    type Err = BlockSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes: u64 = text.parse().map_err(|_| BlockSizeError::NotANumber {
            found: text.to_owned(),
        })?;
        let bytes = u32::try_from(bytes).map_err(|_| BlockSizeError::Range { found: bytes })?;
        Self::new(bytes)
    }
}

/// Where hex text stops being hex; shared by salts and root hashes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    #[error("expected a hex digit at character {position}, found {found:?}")]
    Digit { position: usize, found: char },
    #[error("expected an even number of hex digits, found {found}")]
    OddLength { found: usize },
}

/// Decodes hex text, either case. Positions in errors are 1-based, as a person counts.
fn decode_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut nibbles = Vec::with_capacity(text.len());
    for (index, ch) in text.chars().enumerate() {
        let digit = ch.to_digit(16).ok_or(HexError::Digit {
            position: index + 1,
            found: ch,
        })?;
        // A hex digit is below 16, so it fits a byte.
        nibbles.push(digit as u8);
    }
    if nibbles.len() % 2 != 0 {
        return Err(HexError::OddLength {
            found: nibbles.len(),
        });
    }
    Ok(nibbles
        .chunks_exact(2)
        .map(|pair| pair[0] << 4 | pair[1])
        .collect())
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// The salt hashed with every block: at most [`MAX_SALT_SIZE`] bytes, possibly none.
/// Written as hex, or `-` when empty (as veritysetup and the table write it).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Salt(Vec<u8>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SaltError {
    #[error("salt {text:?} is not hex (or - for none)")]
    Hex {
        text: String,
        #[source]
        source: HexError,
    },
    #[error("salt is {found} bytes, more than the {MAX_SALT_SIZE} the superblock holds")]
    TooLong { found: usize },
}

impl Salt {
    pub fn new(bytes: Vec<u8>) -> Result<Self, SaltError> {
        if bytes.len() > MAX_SALT_SIZE {
            return Err(SaltError::TooLong { found: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// A salt of a size known to fit, checked at compile time.
    pub fn from_array<const N: usize>(bytes: [u8; N]) -> Self {
        const { assert!(N <= MAX_SALT_SIZE) };
        Self(bytes.to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Salt {
    type Err = SaltError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "-" {
            return Ok(Self::default());
        }
        let bytes = decode_hex(text).map_err(|source| SaltError::Hex {
            text: text.to_owned(),
            source,
        })?;
        Self::new(bytes)
    }
}

impl fmt::Display for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({self})")
    }
}

/// The digest of the top of the hash tree: what `roothash=` carries and what the table
/// needs. Always as long as a supported algorithm's digest (32 or 64 bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RootHash(Vec<u8>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RootHashError {
    #[error("root hash {text:?} is not hex")]
    Hex {
        text: String,
        #[source]
        source: HexError,
    },
    #[error(
        "root hash is {found} bytes ({} hex digits), but no supported algorithm has that \
         digest size: expected 32 (sha256) or 64 (sha512)", found * 2
    )]
    Size { found: usize },
    #[error(
        "root hash is {found} bytes ({} hex digits), but {algorithm} digests are {} bytes",
        found * 2,
        algorithm.digest_size()
    )]
    Algorithm {
        algorithm: HashAlgorithm,
        found: usize,
    },
}

impl RootHash {
    /// A digest of one of the supported algorithms.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, RootHashError> {
        let supported = [HashAlgorithm::Sha256, HashAlgorithm::Sha512];
        if !supported.iter().any(|alg| alg.digest_size() == bytes.len()) {
            return Err(RootHashError::Size { found: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// Hex of any supported digest size: for when the algorithm is not known yet (the
    /// command line comes before the superblock is read).
    pub fn parse_hex(text: &str) -> Result<Self, RootHashError> {
        let bytes = decode_hex(text).map_err(|source| RootHashError::Hex {
            text: text.to_owned(),
            source,
        })?;
        Self::from_bytes(bytes)
    }

    /// Hex of exactly `algorithm`'s digest size.
    pub fn parse(text: &str, algorithm: HashAlgorithm) -> Result<Self, RootHashError> {
        let hash = Self::parse_hex(text)?;
        hash.check_algorithm(algorithm)?;
        Ok(hash)
    }

    /// Whether this is as long as `algorithm`'s digests.
    pub fn check_algorithm(&self, algorithm: HashAlgorithm) -> Result<(), RootHashError> {
        if self.0.len() != algorithm.digest_size() {
            return Err(RootHashError::Algorithm {
                algorithm,
                found: self.0.len(),
            });
        }
        Ok(())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The DPS partition UUIDs: the data partition's is the first 16 bytes, the verity
    /// partition's the last 16, copied in order (no version bits forced).
    pub fn partition_uuids(&self) -> (Guid, Guid) {
        let mut data = [0u8; 16];
        let mut hash = [0u8; 16];
        // The constructors guarantee at least 32 bytes.
        data.copy_from_slice(&self.0[..16]);
        hash.copy_from_slice(&self.0[self.0.len() - 16..]);
        (Guid::from_bytes(data), Guid::from_bytes(hash))
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

// Debug as hex: a byte list in a test failure says nothing to a person.
impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({self})")
    }
}

/// The superblock `veritysetup format` writes at the hash offset (unless
/// `--no-superblock`). The hash tree follows it at the next hash-block boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySuperblock {
    pub hash_type: HashType,
    pub uuid: Guid,
    pub algorithm: HashAlgorithm,
    pub data_block_size: BlockSize,
    pub hash_block_size: BlockSize,
    pub data_blocks: u64,
    pub salt: Salt,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("verity superblock is {found} bytes, expected {SUPERBLOCK_SIZE}")]
    TooShort { found: usize },
    #[error("not a verity superblock: expected signature \"verity\\0\\0\", found {found}")]
    Signature { found: String },
    #[error("verity superblock version is {found}, expected {SUPERBLOCK_VERSION}")]
    Version { found: u32 },
    #[error("verity superblock hash_type is {found}, expected 0 (Chrome OS) or 1 (normal)")]
    HashType { found: u32 },
    #[error("verity superblock algorithm field")]
    Algorithm(#[source] AlgorithmError),
    #[error("verity superblock {field}")]
    BlockSize {
        field: &'static str,
        #[source]
        source: BlockSizeError,
    },
    #[error("verity superblock data_blocks is 0, expected at least 1")]
    NoDataBlocks,
    #[error("verity superblock salt_size is {found}, expected at most {MAX_SALT_SIZE}")]
    SaltSize { found: u16 },
}

impl VeritySuperblock {
    /// Parses and checks the first [`SUPERBLOCK_SIZE`] bytes of `bytes`. Like veritysetup,
    /// it ignores the padding fields, the algorithm field past the name's NUL and the salt
    /// field past `salt_size`; the UUID is taken as it is (it identifies the device, it
    /// does not affect the hashes).
    pub fn parse(bytes: &[u8]) -> Result<Self, SuperblockError> {
        let block: &[u8; SUPERBLOCK_SIZE] = bytes
            .get(..SUPERBLOCK_SIZE)
            .and_then(|prefix| prefix.try_into().ok())
            .ok_or(SuperblockError::TooShort { found: bytes.len() })?;
        check_signature(block)?;
        let version = Block(block).le_u32::<VERSION_AT>();
        if version != SUPERBLOCK_VERSION {
            return Err(SuperblockError::Version { found: version });
        }
        let hash_type_number = Block(block).le_u32::<HASH_TYPE_AT>();
        let hash_type =
            HashType::from_number(hash_type_number).ok_or(SuperblockError::HashType {
                found: hash_type_number,
            })?;
        let superblock = Self {
            hash_type,
            uuid: Guid::from_bytes(Block(block).array::<UUID_AT, 16>()),
            algorithm: parse_algorithm_field(&block[ALGORITHM_AT..ALGORITHM_AT + ALGORITHM_LEN])?,
            data_block_size: block_size_field::<DATA_BLOCK_SIZE_AT>(block, "data_block_size")?,
            hash_block_size: block_size_field::<HASH_BLOCK_SIZE_AT>(block, "hash_block_size")?,
            data_blocks: Block(block).le_u64::<DATA_BLOCKS_AT>(),
            salt: salt_field(block)?,
        };
        if superblock.data_blocks == 0 {
            return Err(SuperblockError::NoDataBlocks);
        }
        Ok(superblock)
    }

    /// The on-disk bytes, zero where veritysetup leaves zeros.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
        put(&mut out, VERSION_AT, &SUPERBLOCK_VERSION.to_le_bytes());
        put(
            &mut out,
            HASH_TYPE_AT,
            &self.hash_type.number().to_le_bytes(),
        );
        put(&mut out, UUID_AT, self.uuid.as_bytes());
        put(&mut out, ALGORITHM_AT, self.algorithm.name().as_bytes());
        put(
            &mut out,
            DATA_BLOCK_SIZE_AT,
            &self.data_block_size.bytes().to_le_bytes(),
        );
        put(
            &mut out,
            HASH_BLOCK_SIZE_AT,
            &self.hash_block_size.bytes().to_le_bytes(),
        );
        put(&mut out, DATA_BLOCKS_AT, &self.data_blocks.to_le_bytes());
        let salt = self.salt.as_bytes();
        // `Salt` holds at most 256 bytes.
        put(&mut out, SALT_SIZE_AT, &(salt.len() as u16).to_le_bytes());
        put(&mut out, SALT_AT, salt);
        out
    }
}

fn check_signature(block: &[u8; SUPERBLOCK_SIZE]) -> Result<(), SuperblockError> {
    let found = &block[..SIGNATURE.len()];
    if found == SIGNATURE {
        return Ok(());
    }
    Err(SuperblockError::Signature {
        found: hex_and_ascii(found),
    })
}

/// `76 65 72 ... ("ver...")`: hex for the exact bytes, ASCII so a person recognises them.
fn hex_and_ascii(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let ascii: String = bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                char::from(byte)
            } else {
                '.'
            }
        })
        .collect();
    format!("{} ({ascii:?})", hex.join(" "))
}

/// The NUL-padded algorithm name; veritysetup reads at most the 32 bytes of the field.
fn parse_algorithm_field(field: &[u8]) -> Result<HashAlgorithm, SuperblockError> {
    let end = field
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(field.len());
    let name = String::from_utf8_lossy(&field[..end]);
    name.parse().map_err(SuperblockError::Algorithm)
}

fn block_size_field<const AT: usize>(
    block: &[u8; SUPERBLOCK_SIZE],
    field: &'static str,
) -> Result<BlockSize, SuperblockError> {
    BlockSize::new(Block(block).le_u32::<AT>())
        .map_err(|source| SuperblockError::BlockSize { field, source })
}

fn salt_field(block: &[u8; SUPERBLOCK_SIZE]) -> Result<Salt, SuperblockError> {
    let size = Block(block).le_u16::<SALT_SIZE_AT>();
    if usize::from(size) > MAX_SALT_SIZE {
        return Err(SuperblockError::SaltSize { found: size });
    }
    let bytes = block[SALT_AT..SALT_AT + usize::from(size)].to_vec();
    // The size was just checked against the limit `Salt` enforces.
    Ok(Salt(bytes))
}

fn put(out: &mut [u8; SUPERBLOCK_SIZE], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Where the hash tree starts, in hash blocks from the start of the hash device, for a hash
/// area at byte `hash_offset`. With a superblock the tree starts at the first hash-block
/// boundary after it; without one, at the hash block holding `hash_offset` (cryptsetup's
/// `VERITY_hash_offset_block`: callers should keep such offsets block-aligned).
pub fn hash_start_block(hash_offset: u64, hash_block_size: BlockSize, superblock: bool) -> u64 {
    let block = hash_block_size.as_u64();
    let whole_blocks = hash_offset / block;
    if superblock {
        // ceil((hash_offset + 512) / block), without overflowing near u64::MAX.
        whole_blocks + (hash_offset % block + SUPERBLOCK_SIZE as u64).div_ceil(block)
    } else {
        whole_blocks
    }
}

/// One word of a table: a device (a path or `major:minor`) or a key description. The
/// kernel splits the table at whitespace, so a word cannot contain any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableWord(String);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{found:?} cannot be a dm table word: expected non-empty text without whitespace")]
pub struct TableWordError {
    pub found: String,
}

impl TableWord {
    pub fn new(word: &str) -> Result<Self, TableWordError> {
        if word.is_empty() || word.chars().any(char::is_whitespace) {
            return Err(TableWordError {
                found: word.to_owned(),
            });
        }
        Ok(Self(word.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The optional parameters of the `verity` target. The table counts them in words, as the
/// kernel does (`fec_roots 2` is two).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VerityOption {
    IgnoreCorruption,
    RestartOnCorruption,
    PanicOnCorruption,
    RestartOnError,
    PanicOnError,
    IgnoreZeroBlocks,
    CheckAtMostOnce,
    TryVerifyInTasklet,
    UseFecFromDevice(TableWord),
    FecRoots(u32),
    FecBlocks(u64),
    FecStart(u64),
    RootHashSigKeyDesc(TableWord),
}

impl VerityOption {
    pub fn name(&self) -> &'static str {
        match self {
            Self::IgnoreCorruption => "ignore_corruption",
            Self::RestartOnCorruption => "restart_on_corruption",
            Self::PanicOnCorruption => "panic_on_corruption",
            Self::RestartOnError => "restart_on_error",
            Self::PanicOnError => "panic_on_error",
            Self::IgnoreZeroBlocks => "ignore_zero_blocks",
            Self::CheckAtMostOnce => "check_at_most_once",
            Self::TryVerifyInTasklet => "try_verify_in_tasklet",
            Self::UseFecFromDevice(_) => "use_fec_from_device",
            Self::FecRoots(_) => "fec_roots",
            Self::FecBlocks(_) => "fec_blocks",
            Self::FecStart(_) => "fec_start",
            Self::RootHashSigKeyDesc(_) => "root_hash_sig_key_desc",
        }
    }

    /// How many table words this option takes.
    fn words(&self) -> usize {
        match self {
            Self::UseFecFromDevice(_)
            | Self::FecRoots(_)
            | Self::FecBlocks(_)
            | Self::FecStart(_)
            | Self::RootHashSigKeyDesc(_) => 2,
            _ => 1,
        }
    }

    /// The option without an argument called `name`, if there is one.
    fn flag(name: &str) -> Option<Self> {
        Some(match name {
            "ignore_corruption" => Self::IgnoreCorruption,
            "restart_on_corruption" => Self::RestartOnCorruption,
            "panic_on_corruption" => Self::PanicOnCorruption,
            "restart_on_error" => Self::RestartOnError,
            "panic_on_error" => Self::PanicOnError,
            "ignore_zero_blocks" => Self::IgnoreZeroBlocks,
            "check_at_most_once" => Self::CheckAtMostOnce,
            "try_verify_in_tasklet" => Self::TryVerifyInTasklet,
            _ => return None,
        })
    }

    /// Reads the option `name` whose argument, if it takes one, is `argument`; returns it
    /// and how many words it took.
    fn parse(name: &str, argument: Option<&str>) -> Result<(Self, usize), TableError> {
        if let Some(flag) = Self::flag(name) {
            return Ok((flag, 1));
        }
        if !matches!(
            name,
            "use_fec_from_device"
                | "fec_roots"
                | "fec_blocks"
                | "fec_start"
                | "root_hash_sig_key_desc"
        ) {
            return Err(TableError::UnknownOption {
                found: name.to_owned(),
            });
        }
        let argument = argument.ok_or_else(|| TableError::OptionArgument {
            option: name.to_owned(),
        })?;
        let option = match name {
            "use_fec_from_device" => {
                Self::UseFecFromDevice(table_word(argument, "use_fec_from_device")?)
            }
            "fec_roots" => Self::FecRoots(number(argument, "fec_roots")?),
            "fec_blocks" => Self::FecBlocks(number(argument, "fec_blocks")?),
            "fec_start" => Self::FecStart(number(argument, "fec_start")?),
            _ => Self::RootHashSigKeyDesc(table_word(argument, "root_hash_sig_key_desc")?),
        };
        Ok((option, 2))
    }
}

impl fmt::Display for VerityOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Self::UseFecFromDevice(word) | Self::RootHashSigKeyDesc(word) => write!(f, " {word}"),
            Self::FecRoots(value) => write!(f, " {value}"),
            Self::FecBlocks(value) | Self::FecStart(value) => write!(f, " {value}"),
            _ => Ok(()),
        }
    }
}

/// The parameter line of a device-mapper `verity` target:
/// `<version> <dev> <hash_dev> <data_block_size> <hash_block_size> <num_data_blocks>
/// <hash_start_block> <algorithm> <digest> <salt> [<#opt_params> <opt_params>...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    pub hash_type: HashType,
    pub data_device: TableWord,
    pub hash_device: TableWord,
    pub data_block_size: BlockSize,
    pub hash_block_size: BlockSize,
    pub data_blocks: u64,
    /// In hash blocks from the start of the hash device: see [`hash_start_block`].
    pub hash_start_block: u64,
    pub algorithm: HashAlgorithm,
    pub root_hash: RootHash,
    pub salt: Salt,
    pub options: Vec<VerityOption>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("verity table has no {field} (it needs 10 fields, then optional parameters)")]
    Missing { field: &'static str },
    #[error("verity table {field} {found:?} is not a number")]
    Number { field: &'static str, found: String },
    #[error("verity table version")]
    Version(#[source] HashTypeError),
    #[error("verity table {field}")]
    Device {
        field: &'static str,
        #[source]
        source: TableWordError,
    },
    #[error("verity table {field}")]
    BlockSize {
        field: &'static str,
        #[source]
        source: BlockSizeError,
    },
    #[error("verity table algorithm")]
    Algorithm(#[source] AlgorithmError),
    #[error("verity table digest")]
    RootHash(#[source] RootHashError),
    #[error("verity table salt")]
    Salt(#[source] SaltError),
    #[error("verity table declares {declared} optional parameter words but has {found}")]
    OptionCount { declared: usize, found: usize },
    #[error("verity table option {found:?} is not one dm-verity knows")]
    UnknownOption { found: String },
    #[error("verity table option {option} needs an argument")]
    OptionArgument { option: String },
}

impl VerityTable {
    /// The table for a device formatted with `superblock` at byte `hash_offset` of
    /// `hash_device`, as veritysetup would load it. Fails when `root_hash` does not have
    /// the superblock algorithm's digest size.
    pub fn from_superblock(
        superblock: &VeritySuperblock,
        data_device: TableWord,
        hash_device: TableWord,
        hash_offset: u64,
        root_hash: RootHash,
    ) -> Result<Self, RootHashError> {
        root_hash.check_algorithm(superblock.algorithm)?;
        Ok(Self {
            hash_type: superblock.hash_type,
            data_device,
            hash_device,
            data_block_size: superblock.data_block_size,
            hash_block_size: superblock.hash_block_size,
            data_blocks: superblock.data_blocks,
            hash_start_block: hash_start_block(hash_offset, superblock.hash_block_size, true),
            algorithm: superblock.algorithm,
            root_hash,
            salt: superblock.salt.clone(),
            options: Vec::new(),
        })
    }

    /// Parses a table line; fields are separated by any whitespace, as the kernel splits.
    pub fn parse(text: &str) -> Result<Self, TableError> {
        let mut words = text.split_whitespace();
        let mut next = |field: &'static str| words.next().ok_or(TableError::Missing { field });
        let hash_type = next("version")?.parse().map_err(TableError::Version)?;
        let data_device = table_word(next("data device")?, "data device")?;
        let hash_device = table_word(next("hash device")?, "hash device")?;
        let data_block_size = block_size(next("data block size")?, "data block size")?;
        let hash_block_size = block_size(next("hash block size")?, "hash block size")?;
        let data_blocks = number(next("number of data blocks")?, "number of data blocks")?;
        let hash_start_block = number(next("hash start block")?, "hash start block")?;
        let algorithm = next("algorithm")?.parse().map_err(TableError::Algorithm)?;
        let root_hash =
            RootHash::parse(next("digest")?, algorithm).map_err(TableError::RootHash)?;
        let salt = next("salt")?.parse().map_err(TableError::Salt)?;
        let rest: Vec<&str> = words.collect();
        Ok(Self {
            hash_type,
            data_device,
            hash_device,
            data_block_size,
            hash_block_size,
            data_blocks,
            hash_start_block,
            algorithm,
            root_hash,
            salt,
            options: parse_options(&rest)?,
        })
    }
}

/// `[<#opt_params> <opt_params>...]`: the count is in words, not options.
fn parse_options(words: &[&str]) -> Result<Vec<VerityOption>, TableError> {
    let Some((count, rest)) = words.split_first() else {
        return Ok(Vec::new());
    };
    let declared: usize = number(count, "number of optional parameters")?;
    if declared != rest.len() {
        return Err(TableError::OptionCount {
            declared,
            found: rest.len(),
        });
    }
    let mut options = Vec::new();
    let mut index = 0;
    while let Some(name) = rest.get(index) {
        let (option, used) = VerityOption::parse(name, rest.get(index + 1).copied())?;
        options.push(option);
        index += used;
    }
    Ok(options)
}

fn number<T: FromStr>(text: &str, field: &'static str) -> Result<T, TableError> {
    text.parse().map_err(|_| TableError::Number {
        field,
        found: text.to_owned(),
    })
}

fn block_size(text: &str, field: &'static str) -> Result<BlockSize, TableError> {
    text.parse()
        .map_err(|source| TableError::BlockSize { field, source })
}

fn table_word(text: &str, field: &'static str) -> Result<TableWord, TableError> {
    TableWord::new(text).map_err(|source| TableError::Device { field, source })
}

impl fmt::Display for VerityTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {} {} {}",
            self.hash_type.number(),
            self.data_device,
            self.hash_device,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start_block,
            self.algorithm,
            self.root_hash,
            self.salt,
        )?;
        if self.options.is_empty() {
            return Ok(());
        }
        let words: usize = self.options.iter().map(VerityOption::words).sum();
        write!(f, " {words}")?;
        for option in &self.options {
            write!(f, " {option}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::error_chain;
    use crate::fixtures::XorShift;

    const UUID: &str = "12345678-1234-1234-1234-123456789abc";

    /// The superblock `veritysetup format --salt 00112233 --uuid 12345678-1234-1234-1234-
    /// 123456789abc` wrote for a two-block data file (cryptsetup 2.6.1), as hex of its
    /// non-zero prefix; the rest of the 512 bytes is zero.
    const VERITYSETUP_SUPERBLOCK_HEX: &str = "7665726974790000010000000100000012345678123412341234123456789abc\
                                              7368613235360000000000000000000000000000000000000000000000000000\
                                              0010000000100000020000000000000004000000000000000011223300000000";

    fn veritysetup_superblock() -> [u8; SUPERBLOCK_SIZE] {
        let prefix = decode_hex(VERITYSETUP_SUPERBLOCK_HEX).expect("hex");
        let mut block = [0u8; SUPERBLOCK_SIZE];
        block[..prefix.len()].copy_from_slice(&prefix);
        block
    }

    fn sample_superblock() -> VeritySuperblock {
        VeritySuperblock {
            hash_type: HashType::Normal,
            uuid: Guid::parse(UUID).expect("uuid"),
            algorithm: HashAlgorithm::Sha256,
            data_block_size: BlockSize::DEFAULT,
            hash_block_size: BlockSize::DEFAULT,
            data_blocks: 2,
            salt: "00112233".parse().expect("salt"),
        }
    }

    #[test]
    fn reads_and_rewrites_what_veritysetup_wrote() {
        let block = veritysetup_superblock();
        let superblock = VeritySuperblock::parse(&block).expect("parses");
        assert_eq!(superblock, sample_superblock());
        assert_eq!(superblock.to_bytes(), block);
        // A longer buffer (a whole hash block) is fine: only the first 512 bytes count.
        let mut longer = block.to_vec();
        longer.resize(4096, 0xff);
        assert_eq!(VeritySuperblock::parse(&longer), Ok(superblock));
    }

    fn parse_with(
        edit: impl FnOnce(&mut [u8; SUPERBLOCK_SIZE]),
    ) -> Result<VeritySuperblock, SuperblockError> {
        let mut block = veritysetup_superblock();
        edit(&mut block);
        VeritySuperblock::parse(&block)
    }

    #[test]
    fn names_the_field_and_what_was_found() {
        let err = VeritySuperblock::parse(&[0u8; 100]).expect_err("short");
        assert_eq!(err, SuperblockError::TooShort { found: 100 });

        let err =
            parse_with(|b| b[..8].copy_from_slice(b"hsqs\x01\x02\x03\x04")).expect_err("magic");
        assert_eq!(
            err.to_string(),
            "not a verity superblock: expected signature \"verity\\0\\0\", found \
             68 73 71 73 01 02 03 04 (\"hsqs....\")"
        );
        let err = parse_with(|b| b[VERSION_AT] = 2).expect_err("version");
        assert_eq!(
            err.to_string(),
            "verity superblock version is 2, expected 1"
        );
        let err = parse_with(|b| b[HASH_TYPE_AT] = 7).expect_err("hash type");
        assert_eq!(
            err.to_string(),
            "verity superblock hash_type is 7, expected 0 (Chrome OS) or 1 (normal)"
        );
        let err = parse_with(|b| b[ALGORITHM_AT..ALGORITHM_AT + 6].copy_from_slice(b"sha1\0\0"))
            .expect_err("sha1");
        assert_eq!(
            error_chain(&err),
            "verity superblock algorithm field: unsupported verity hash algorithm \"sha1\": \
             expected sha256 or sha512"
        );
        let err = parse_with(|b| put(b, DATA_BLOCK_SIZE_AT, &1000u32.to_le_bytes()))
            .expect_err("block size");
        assert_eq!(
            error_chain(&err),
            "verity superblock data_block_size: block size 1000 is not a power of two from \
             512 to 524288"
        );
        let err = parse_with(|b| put(b, HASH_BLOCK_SIZE_AT, &(1u32 << 20).to_le_bytes()))
            .expect_err("too large");
        assert!(
            error_chain(&err).contains("hash_block_size: block size 1048576"),
            "{err}"
        );
        let err = parse_with(|b| put(b, DATA_BLOCKS_AT, &0u64.to_le_bytes())).expect_err("empty");
        assert_eq!(err, SuperblockError::NoDataBlocks);
        let err = parse_with(|b| put(b, SALT_SIZE_AT, &257u16.to_le_bytes())).expect_err("salt");
        assert_eq!(
            err.to_string(),
            "verity superblock salt_size is 257, expected at most 256"
        );
    }

    #[test]
    fn chrome_os_hash_type_and_sha512_are_read() {
        let superblock = parse_with(|b| {
            b[HASH_TYPE_AT] = 0;
            b[ALGORITHM_AT..ALGORITHM_AT + 6].copy_from_slice(b"sha512");
        })
        .expect("parses");
        assert_eq!(superblock.hash_type, HashType::ChromeOs);
        assert_eq!(superblock.algorithm, HashAlgorithm::Sha512);
    }

    #[test]
    fn padding_and_bytes_past_the_name_and_the_salt_are_ignored_like_veritysetup_does() {
        let superblock = parse_with(|b| {
            b[ALGORITHM_AT + 10] = 0xdd; // past the name's NUL
            b[84] = 0xaa; // _pad1
            b[SALT_AT + 4] = 0xbb; // salt field past salt_size
            b[SUPERBLOCK_SIZE - 1] = 0xcc; // _pad2
        })
        .expect("parses");
        assert_eq!(superblock, sample_superblock());
    }

    #[test]
    fn dps_uuids_come_from_the_two_halves_of_the_root_hash() {
        let hash = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";
        let root = RootHash::parse(hash, HashAlgorithm::Sha256).expect("parses");
        assert_eq!(root.to_string(), hash);
        let (data, verity) = root.partition_uuids();
        assert_eq!(data.to_string(), "954172df-ee9a-aab2-d90a-0ab162ee6bc5");
        assert_eq!(verity.to_string(), "a6a77ede-951f-ad19-f0f9-4df0d7266a93");
    }

    #[test]
    fn sha512_root_hashes_give_the_first_and_last_sixteen_bytes() {
        let text: String = (0u8..64).map(|byte| format!("{byte:02X}")).collect();
        let root = RootHash::parse(&text, HashAlgorithm::Sha512).expect("upper case is hex");
        assert_eq!(root.to_string(), text.to_lowercase());
        let (data, verity) = root.partition_uuids();
        assert_eq!(data.to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(verity.to_string(), "30313233-3435-3637-3839-3a3b3c3d3e3f");
    }

    #[test]
    fn root_hash_errors_say_where_and_how_long() {
        let short = "954172dfee9aaab2d90a0ab162ee6bc5";
        assert_eq!(
            RootHash::parse(short, HashAlgorithm::Sha256)
                .expect_err("16 bytes")
                .to_string(),
            "root hash is 16 bytes (32 hex digits), but no supported algorithm has that \
             digest size: expected 32 (sha256) or 64 (sha512)"
        );
        let sha256 = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";
        assert_eq!(
            RootHash::parse(sha256, HashAlgorithm::Sha512)
                .expect_err("wrong algorithm")
                .to_string(),
            "root hash is 32 bytes (64 hex digits), but sha512 digests are 64 bytes"
        );
        let err = RootHash::parse_hex("95417g").expect_err("not hex");
        assert_eq!(
            error_chain(&err),
            "root hash \"95417g\" is not hex: expected a hex digit at character 6, found 'g'"
        );
        let err = RootHash::parse_hex("954").expect_err("odd");
        assert_eq!(
            error_chain(&err),
            "root hash \"954\" is not hex: expected an even number of hex digits, found 3"
        );
    }

    #[test]
    fn salts_are_hex_or_a_dash_and_at_most_256_bytes() {
        let empty: Salt = "-".parse().expect("dash");
        assert!(empty.is_empty());
        assert_eq!(empty.to_string(), "-");
        let salt: Salt = "AbCd".parse().expect("hex");
        assert_eq!(salt.as_bytes(), [0xab, 0xcd]);
        assert_eq!(salt.to_string(), "abcd");
        assert!("".parse::<Salt>().expect("empty hex").is_empty());
        let err = "abc".parse::<Salt>().expect_err("odd");
        assert!(
            error_chain(&err).contains("even number of hex digits, found 3"),
            "{err}"
        );
        let err = "00".repeat(257).parse::<Salt>().expect_err("long");
        assert_eq!(err, SaltError::TooLong { found: 257 });
        assert_eq!(
            "00".repeat(256).parse::<Salt>().map(|s| s.as_bytes().len()),
            Ok(256)
        );
    }

    #[test]
    fn block_sizes_are_powers_of_two_in_veritysetups_range() {
        for good in [512, 1024, 4096, 65536, 524288] {
            assert_eq!(BlockSize::new(good).map(BlockSize::bytes), Ok(good));
        }
        for bad in [0, 256, 1000, 4097, 1 << 20] {
            assert_eq!(
                BlockSize::new(bad),
                Err(BlockSizeError::Range {
                    found: u64::from(bad)
                })
            );
        }
        assert_eq!(
            "4k".parse::<BlockSize>(),
            Err(BlockSizeError::NotANumber { found: "4k".into() })
        );
        assert_eq!(
            "8589934592".parse::<BlockSize>(),
            Err(BlockSizeError::Range { found: 1 << 33 })
        );
    }

    #[test]
    fn the_tree_starts_after_the_superblock_on_a_hash_block_boundary() {
        let size = |bytes| BlockSize::new(bytes).expect("size");
        // veritysetup's default layout: superblock in block 0, tree from block 1.
        assert_eq!(hash_start_block(0, size(4096), true), 1);
        assert_eq!(hash_start_block(0, size(512), true), 1);
        assert_eq!(hash_start_block(1024, size(4096), true), 1);
        assert_eq!(hash_start_block(3584, size(4096), true), 1);
        assert_eq!(hash_start_block(3585, size(4096), true), 2);
        assert_eq!(hash_start_block(8192, size(4096), true), 3);
        assert_eq!(hash_start_block(8192, size(512), true), 17);
        assert_eq!(hash_start_block(8192, size(4096), false), 2);
        assert_eq!(hash_start_block(0, size(4096), false), 0);
        // No overflow at the top of the range: the superblock ends in the next block.
        let last = u64::MAX / 4096;
        assert_eq!(hash_start_block(u64::MAX, size(4096), true), last + 2);
    }

    /// The example of the kernel's verity.rst.
    const KERNEL_DOC_TABLE: &str = "0 /dev/sda1 /dev/sda2 4096 4096 262144 1 sha256 \
        4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076 \
        1234000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn parses_the_kernel_documentation_example_and_prints_it_back() {
        let table = VerityTable::parse(KERNEL_DOC_TABLE).expect("parses");
        assert_eq!(table.hash_type, HashType::ChromeOs);
        assert_eq!(table.data_device.as_str(), "/dev/sda1");
        assert_eq!(table.hash_device.as_str(), "/dev/sda2");
        assert_eq!(table.data_blocks, 262_144);
        assert_eq!(table.hash_start_block, 1);
        assert_eq!(table.algorithm, HashAlgorithm::Sha256);
        assert_eq!(table.salt.as_bytes()[..2], [0x12, 0x34]);
        assert!(table.options.is_empty());
        assert_eq!(table.to_string(), KERNEL_DOC_TABLE);
    }

    #[test]
    fn optional_parameters_are_counted_in_words() {
        let line = format!(
            "{KERNEL_DOC_TABLE} 7 restart_on_corruption ignore_zero_blocks fec_roots 2 \
             use_fec_from_device 259:3 check_at_most_once"
        );
        let table = VerityTable::parse(&line).expect("parses");
        assert_eq!(
            table.options,
            [
                VerityOption::RestartOnCorruption,
                VerityOption::IgnoreZeroBlocks,
                VerityOption::FecRoots(2),
                VerityOption::UseFecFromDevice(TableWord::new("259:3").expect("word")),
                VerityOption::CheckAtMostOnce,
            ]
        );
        assert_eq!(table.to_string(), line);
        // Extra whitespace is only a separator.
        let spaced = line.replace(' ', "  \t");
        assert_eq!(VerityTable::parse(&spaced), Ok(table));
    }

    #[test]
    fn table_errors_name_the_field() {
        let err = VerityTable::parse("1 /dev/a /dev/b 4096").expect_err("short");
        assert_eq!(
            err,
            TableError::Missing {
                field: "hash block size"
            }
        );
        let err = VerityTable::parse(&KERNEL_DOC_TABLE.replace(" 262144 ", " lots "))
            .expect_err("number");
        assert_eq!(
            err.to_string(),
            "verity table number of data blocks \"lots\" is not a number"
        );
        let err = VerityTable::parse(&KERNEL_DOC_TABLE.replace("sha256", "sha512"))
            .expect_err("digest length");
        assert!(matches!(
            err,
            TableError::RootHash(RootHashError::Algorithm { .. })
        ));
        let err = VerityTable::parse(&format!("{KERNEL_DOC_TABLE} 2 ignore_corruption"))
            .expect_err("count");
        assert_eq!(
            err,
            TableError::OptionCount {
                declared: 2,
                found: 1
            }
        );
        let err =
            VerityTable::parse(&format!("{KERNEL_DOC_TABLE} 1 fec_roots")).expect_err("argument");
        assert_eq!(
            err.to_string(),
            "verity table option fec_roots needs an argument"
        );
        let err = VerityTable::parse(&format!("{KERNEL_DOC_TABLE} 1 verify_harder"))
            .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "verity table option \"verify_harder\" is not one dm-verity knows"
        );
        let err = VerityTable::parse(&KERNEL_DOC_TABLE.replacen('0', "2", 1)).expect_err("v2");
        assert!(error_chain(&err)
            .starts_with("verity table version: unsupported verity hash type \"2\""));
    }

    #[test]
    fn the_table_for_a_superblock_uses_its_parameters_and_an_empty_salt_is_a_dash() {
        let mut superblock = sample_superblock();
        superblock.salt = Salt::default();
        superblock.hash_block_size = BlockSize::new(512).expect("size");
        let root = RootHash::parse_hex(&"ab".repeat(32)).expect("root");
        let word = |text| TableWord::new(text).expect("word");
        let table =
            VerityTable::from_superblock(&superblock, word("8:1"), word("8:2"), 4096, root.clone())
                .expect("table");
        assert_eq!(
            table.to_string(),
            format!("1 8:1 8:2 4096 512 2 9 sha256 {root} -")
        );
        let long_root = RootHash::parse_hex(&"ab".repeat(64)).expect("sha512 size");
        let err = VerityTable::from_superblock(&superblock, word("a"), word("b"), 0, long_root)
            .expect_err("wrong size");
        assert!(matches!(err, RootHashError::Algorithm { found: 64, .. }));
        assert!(TableWord::new("/dev/with space").is_err());
        assert!(TableWord::new("").is_err());
    }

    fn random_superblock(rng: &mut XorShift) -> VeritySuperblock {
        let size = |rng: &mut XorShift| BlockSize::new(512 << rng.below(11)).expect("size");
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&rng.bytes(16));
        let salt_len = rng.below(MAX_SALT_SIZE + 1);
        VeritySuperblock {
            hash_type: HashType::from_number(rng.below(2) as u32).expect("0 or 1"),
            uuid: Guid::from_bytes(uuid),
            algorithm: [HashAlgorithm::Sha256, HashAlgorithm::Sha512][rng.below(2)],
            data_block_size: size(rng),
            hash_block_size: size(rng),
            data_blocks: rng.next_u64().max(1),
            salt: Salt::new(rng.bytes(salt_len)).expect("salt"),
        }
    }

    const FUZZ_ITERATIONS: usize = 100_000;

    #[test]
    fn random_valid_superblocks_round_trip() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..FUZZ_ITERATIONS / 5 {
            let superblock = random_superblock(&mut rng);
            assert_eq!(
                VeritySuperblock::parse(&superblock.to_bytes()),
                Ok(superblock)
            );
        }
    }

    /// Random and randomly damaged superblocks: parsing never panics, and whatever parses
    /// writes back to bytes that parse to the same value.
    #[test]
    fn damaged_superblocks_never_panic_and_what_parses_round_trips() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let mut parsed = 0;
        for iteration in 0..FUZZ_ITERATIONS {
            let mut bytes = if iteration % 4 == 0 {
                let len = rng.below(SUPERBLOCK_SIZE + 64);
                rng.bytes(len)
            } else {
                random_superblock(&mut rng).to_bytes().to_vec()
            };
            for _ in 0..=rng.below(4) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next_u64() as u8;
                }
            }
            if let Ok(superblock) = VeritySuperblock::parse(&bytes) {
                parsed += 1;
                assert_eq!(
                    VeritySuperblock::parse(&superblock.to_bytes()),
                    Ok(superblock)
                );
            }
        }
        // The damage must leave a fair share valid, or the round trip was barely tested.
        assert!(parsed > FUZZ_ITERATIONS / 4, "{parsed} parsed");
    }

    fn random_option(rng: &mut XorShift) -> VerityOption {
        match rng.below(13) {
            0 => VerityOption::IgnoreCorruption,
            1 => VerityOption::RestartOnCorruption,
            2 => VerityOption::PanicOnCorruption,
            3 => VerityOption::RestartOnError,
            4 => VerityOption::PanicOnError,
            5 => VerityOption::IgnoreZeroBlocks,
            6 => VerityOption::CheckAtMostOnce,
            7 => VerityOption::TryVerifyInTasklet,
            8 => VerityOption::UseFecFromDevice(TableWord::new("/dev/vdb3").expect("word")),
            9 => VerityOption::FecRoots(rng.next_u64() as u32),
            10 => VerityOption::FecBlocks(rng.next_u64()),
            11 => VerityOption::FecStart(rng.next_u64()),
            _ => VerityOption::RootHashSigKeyDesc(TableWord::new("key:1").expect("word")),
        }
    }

    fn random_table(rng: &mut XorShift) -> VerityTable {
        let superblock = random_superblock(rng);
        let root = RootHash::from_bytes(rng.bytes(superblock.algorithm.digest_size()))
            .expect("digest size");
        let word = |text| TableWord::new(text).expect("word");
        let mut table = VerityTable::from_superblock(
            &superblock,
            word("/dev/disk/by-partuuid/x"),
            word("254:7"),
            rng.next_u64() >> 1,
            root,
        )
        .expect("sizes match");
        table.options = (0..rng.below(4)).map(|_| random_option(rng)).collect();
        table
    }

    #[test]
    fn random_valid_tables_round_trip() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for _ in 0..FUZZ_ITERATIONS / 5 {
            let table = random_table(&mut rng);
            assert_eq!(VerityTable::parse(&table.to_string()), Ok(table));
        }
    }

    /// Tables with words dropped, repeated, swapped for others or garbled: parsing never
    /// panics, and whatever parses prints back to text that parses to the same table.
    #[test]
    fn damaged_tables_never_panic_and_what_parses_round_trips() {
        let mut rng = XorShift(0x5151_7e7e_a5a5_3c3c);
        let pool = [
            "0",
            "1",
            "2",
            "3",
            "7",
            "-",
            "sha256",
            "sha512",
            "sha1",
            "4096",
            "512",
            "fec_roots",
            "fec_start",
            "ignore_corruption",
            "use_fec_from_device",
            "ab",
            "zz",
            "\u{e9}",
            "18446744073709551616",
            "",
        ];
        let mut parsed = 0;
        for _ in 0..FUZZ_ITERATIONS {
            let text = random_table(&mut rng).to_string();
            let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
            for _ in 0..=rng.below(3) {
                let at = rng.below(words.len());
                match rng.below(5) {
                    0 => {
                        words.remove(at);
                    }
                    1 => words.insert(at, words[at].clone()),
                    2 => words[at] = pool[rng.below(pool.len())].to_owned(),
                    3 => words.insert(at, pool[rng.below(pool.len())].to_owned()),
                    _ => {
                        let mut bytes = words[at].clone().into_bytes();
                        if !bytes.is_empty() {
                            let pos = rng.below(bytes.len());
                            bytes[pos] = b"0f-x: \t"[rng.below(7)];
                        }
                        words[at] = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
                if words.is_empty() {
                    break;
                }
            }
            if let Ok(table) = VerityTable::parse(&words.join(" ")) {
                parsed += 1;
                assert_eq!(VerityTable::parse(&table.to_string()), Ok(table));
            }
        }
        assert!(parsed > FUZZ_ITERATIONS / 20, "{parsed} parsed");
    }

    #[test]
    fn arbitrary_text_never_panics_the_table_parser() {
        let mut rng = XorShift(0x1357_9bdf_2468_ace0);
        let alphabet: Vec<char> = "0123456789abcdef -:/\t\nsha256_x\u{e9}".chars().collect();
        for _ in 0..FUZZ_ITERATIONS {
            let len = rng.below(200);
            let text: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            if let Ok(table) = VerityTable::parse(&text) {
                assert_eq!(VerityTable::parse(&table.to_string()), Ok(table));
            }
        }
    }
}

//! GUID Partition Table: reading (to find partitions by PARTUUID/PARTLABEL without udev or
//! blkid) and writing (so the build tool and the tests can make real disk images).
//!
//! Pure: every function takes or returns bytes; the caller does the I/O.

use std::fmt;

use crate::bytes::Block;

#[cfg(any(test, feature = "gpt-writer"))]
mod write;
#[cfg(any(test, feature = "gpt-writer"))]
pub use write::{write_gpt, GptImage, GptWriteError, PartitionSpec};

/// A GUID with its bytes in text order (as written `8-4-4-4-12`). On disk GPT stores the
/// first three fields little-endian ("mixed-endian"); convert with
/// [`Guid::from_mixed_endian`] / [`Guid::to_mixed_endian`] before comparing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

// Discoverable Partitions Specification type GUIDs (x86-64).
pub const ROOT_X86_64: Guid = Guid::from_bytes([
    0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09,
]);
pub const ROOT_VERITY_X86_64: Guid = Guid::from_bytes([
    0x2c, 0x73, 0x57, 0xed, 0xeb, 0xd2, 0x46, 0xd9, 0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b, 0xf5,
]);
pub const ROOT_VERITY_SIG_X86_64: Guid = Guid::from_bytes([
    0x41, 0x09, 0x2b, 0x05, 0x9f, 0xc8, 0x45, 0x23, 0x99, 0x4f, 0x2d, 0xef, 0x04, 0x08, 0xb1, 0x76,
]);
pub const USR_X86_64: Guid = Guid::from_bytes([
    0x84, 0x84, 0x68, 0x0c, 0x95, 0x21, 0x48, 0xc6, 0x9c, 0x11, 0xb0, 0x72, 0x06, 0x56, 0xf6, 0x9e,
]);
pub const USR_VERITY_X86_64: Guid = Guid::from_bytes([
    0x77, 0xff, 0x5f, 0x63, 0xe7, 0xb6, 0x46, 0x33, 0xac, 0xf4, 0x15, 0x65, 0xb8, 0x64, 0xc0, 0xe6,
]);
pub const ESP: Guid = Guid::from_bytes([
    0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
]);
pub const VAR: Guid = Guid::from_bytes([
    0x4d, 0x21, 0xb0, 0x16, 0xb5, 0x34, 0x45, 0xc2, 0xa9, 0xfb, 0x5c, 0x16, 0xe0, 0x91, 0xfd, 0x2d,
]);

/// Text length of a GUID and where its dashes are.
const GUID_TEXT_LEN: usize = 36;
const GUID_DASHES: [usize; 4] = [8, 13, 18, 23];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GuidError {
    #[error("{text:?} is not a GUID: expected 36 characters (8-4-4-4-12), found {found}")]
    Length { text: String, found: usize },
    #[error("{text:?} is not a GUID: expected '-' at character {position}")]
    Dash { text: String, position: usize },
    #[error("{text:?} is not a GUID: expected a hex digit at character {position}")]
    Hex { text: String, position: usize },
}

impl Guid {
    /// A GUID from its bytes in text order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The bytes in text order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the exact 36-character form, either case. Character positions in errors are
    /// 1-based, as a person counts them.
    pub fn parse(text: &str) -> Result<Self, GuidError> {
        let found = text.chars().count();
        if found != GUID_TEXT_LEN {
            return Err(GuidError::Length {
                text: text.to_owned(),
                found,
            });
        }
        let mut nibbles = Vec::with_capacity(32);
        for (index, ch) in text.chars().enumerate() {
            if GUID_DASHES.contains(&index) {
                if ch != '-' {
                    return Err(GuidError::Dash {
                        text: text.to_owned(),
                        position: index + 1,
                    });
                }
                continue;
            }
            let digit = ch.to_digit(16).ok_or_else(|| GuidError::Hex {
                text: text.to_owned(),
                position: index + 1,
            })?;
            nibbles.push(digit as u8);
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(nibbles.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Self(bytes))
    }

    /// Converts the on-disk GPT form (first three fields little-endian).
    pub fn from_mixed_endian(raw: &[u8; 16]) -> Self {
        Self(swap_mixed_endian(raw))
    }

    /// The on-disk GPT form.
    pub fn to_mixed_endian(&self) -> [u8; 16] {
        swap_mixed_endian(&self.0)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

/// Reverses the first three fields (4, 2 and 2 bytes); the conversion is its own inverse.
fn swap_mixed_endian(bytes: &[u8; 16]) -> [u8; 16] {
    let mut out = *bytes;
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

// Debug as text: a byte array in test failures says nothing to a person.
impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A logical block address: an index in units of the disk's sector size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

/// The logical block size GPT addresses are counted in: a power of two from 512 to 64 KiB
/// (the kernel's range; the bound also caps what one sector read allocates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorSize(u32);

impl SectorSize {
    pub const BYTES_512: Self = Self(512);

    pub fn new(bytes: u32) -> Result<Self, GptError> {
        if !(512..=65536).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(GptError::SectorSize { found: bytes });
        }
        Ok(Self(bytes))
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    /// Byte offset of `lba` (saturating: an absurd LBA must not wrap onto real data).
    pub fn offset_of(self, lba: Lba) -> u64 {
        lba.0.saturating_mul(u64::from(self.0))
    }

    #[cfg(any(test, feature = "gpt-writer"))]
    /// How many sectors `bytes` bytes occupy, rounded up.
    fn sectors_for(self, bytes: u64) -> u64 {
        bytes.div_ceil(u64::from(self.0))
    }
}

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Revision 1.0, the only one UEFI has defined.
const REVISION_1_0: u32 = 0x0001_0000;
/// Size of the header fields defined by UEFI; a header may claim more (zero-padded).
const HEADER_SIZE: usize = 92;
const HEADER_CRC_RANGE: std::ops::Range<usize> = 16..20;
const MIN_ENTRY_SIZE: u32 = 128;
/// Bound on the entry array a header may describe: far above the 16 KiB every tool writes,
/// far below anything that could exhaust an initramfs's memory on a corrupt header.
const MAX_ENTRIES_BYTES: u64 = 1 << 20;
/// UTF-16 code units in an entry's name field.
const NAME_UNITS: usize = 36;
#[cfg(any(test, feature = "gpt-writer"))]
/// Entries the writer reserves, as every partitioning tool does.
const WRITER_ENTRY_COUNT: u32 = 128;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("sector size {found} is not a power of two from 512 to 65536 bytes")]
    SectorSize { found: u32 },
    #[error("GPT header block is {found} bytes, shorter than the {expected}-byte header")]
    HeaderTooShort { expected: usize, found: usize },
    #[error("no GPT header: signature is {found:02x?}, expected \"EFI PART\"")]
    Signature { found: [u8; 8] },
    #[error("GPT header revision {found:#010x} is not supported (expected major version 1)")]
    Revision { found: u32 },
    #[error("GPT header size {found} is outside {min}..={max} (the block holding it)")]
    HeaderSize { min: usize, max: usize, found: u32 },
    #[error("GPT header CRC32 is {found:#010x}, computed {expected:#010x}")]
    HeaderCrc { expected: u32, found: u32 },
    #[error("GPT header says it is at LBA {found}, but it was read from LBA {expected}")]
    MyLba { expected: u64, found: u64 },
    #[error("GPT first usable LBA {first} is after last usable LBA {last}")]
    UsableRange { first: u64, last: u64 },
    #[error("GPT partition entry size {found} is not a multiple of 8 of at least 128")]
    EntrySize { found: u32 },
    #[error("GPT entry array of {count} entries of {size} bytes exceeds {max} bytes")]
    EntriesTooLarge { count: u32, size: u32, max: u64 },
    #[error("GPT entry array is {found} bytes, expected {expected}")]
    EntriesTooShort { expected: u64, found: usize },
    #[error("GPT entry array CRC32 is {found:#010x}, computed {expected:#010x}")]
    EntriesCrc { expected: u32, found: u32 },
    #[error("GPT header at LBA {lba} lies inside its own usable LBAs {first}..={last}")]
    HeaderInUsable { lba: u64, first: u64, last: u64 },
    #[error("GPT entry array (LBAs {start}..={end}) overlaps the usable LBAs {first}..={last}")]
    EntriesInUsable {
        start: u64,
        end: u64,
        first: u64,
        last: u64,
    },
    #[error("GPT entry array (LBAs {start}..={end}) overlaps its header at LBA {header}")]
    EntriesOverHeader { start: u64, end: u64, header: u64 },
    #[error("GPT partition {number} ends at LBA {last}, before it starts at LBA {first}")]
    PartitionExtent { number: u32, first: u64, last: u64 },
    #[error(
        "GPT partition {number} (LBAs {first}..={last}) is outside the usable LBAs \
         {usable_first}..={usable_last}"
    )]
    PartitionOutsideUsable {
        number: u32,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
}

/// A GPT header, as read from LBA 1 (or written there and, as the backup, at the last LBA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    pub revision: u32,
    pub header_size: u32,
    pub my_lba: Lba,
    pub alternate_lba: Lba,
    pub first_usable: Lba,
    pub last_usable: Lba,
    pub disk_guid: Guid,
    pub entries_lba: Lba,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc32: u32,
}

impl GptHeader {
    /// Parses and checks the primary header; `lba1` is the whole block read from LBA 1. Its
    /// length is taken as the sector size: it bounds the header size and gives the number of
    /// LBAs the entry array spans.
    pub fn parse(lba1: &[u8]) -> Result<Self, GptError> {
        Self::parse_at(lba1, Lba(1))
    }

    /// Parses and checks a header read from `lba` (1 for the primary, the last LBA for the
    /// backup): a header that points elsewhere is a stale copy, not this disk's table.
    fn parse_at(block: &[u8], lba: Lba) -> Result<Self, GptError> {
        let fields: &[u8; HEADER_SIZE] = block
            .get(..HEADER_SIZE)
            .and_then(|prefix| prefix.try_into().ok())
            .ok_or(GptError::HeaderTooShort {
                expected: HEADER_SIZE,
                found: block.len(),
            })?;
        let fields = Block(fields);
        let signature: [u8; 8] = fields.array::<0, 8>();
        if &signature != SIGNATURE {
            return Err(GptError::Signature { found: signature });
        }
        let revision = fields.le_u32::<8>();
        if revision >> 16 != REVISION_1_0 >> 16 {
            return Err(GptError::Revision { found: revision });
        }
        let header_size = fields.le_u32::<12>();
        let size = usize::try_from(header_size).unwrap_or(usize::MAX);
        if !(HEADER_SIZE..=block.len()).contains(&size) {
            return Err(GptError::HeaderSize {
                min: HEADER_SIZE,
                max: block.len(),
                found: header_size,
            });
        }
        check_header_crc(
            &block[..size],
            fields.le_u32::<{ HEADER_CRC_RANGE.start }>(),
        )?;
        let header = Self::from_fields(fields, revision, header_size);
        header.check(lba)?;
        // `block` is one whole sector: its length is the unit the LBAs count in.
        header.check_entries_placement(block.len() as u64)?;
        Ok(header)
    }

    /// Reads the fields after the checked prefix.
    fn from_fields(block: Block<HEADER_SIZE>, revision: u32, header_size: u32) -> Self {
        Self {
            revision,
            header_size,
            my_lba: Lba(block.le_u64::<24>()),
            alternate_lba: Lba(block.le_u64::<32>()),
            first_usable: Lba(block.le_u64::<40>()),
            last_usable: Lba(block.le_u64::<48>()),
            disk_guid: Guid::from_mixed_endian(&block.array::<56, 16>()),
            entries_lba: Lba(block.le_u64::<72>()),
            entry_count: block.le_u32::<80>(),
            entry_size: block.le_u32::<84>(),
            entries_crc32: block.le_u32::<88>(),
        }
    }

    fn check(&self, lba: Lba) -> Result<(), GptError> {
        if self.my_lba != lba {
            return Err(GptError::MyLba {
                expected: lba.0,
                found: self.my_lba.0,
            });
        }
        if self.first_usable > self.last_usable {
            return Err(GptError::UsableRange {
                first: self.first_usable.0,
                last: self.last_usable.0,
            });
        }
        // Partitions may be written anywhere in the usable range: the header must be outside.
        if self.is_usable(self.my_lba) {
            return Err(GptError::HeaderInUsable {
                lba: self.my_lba.0,
                first: self.first_usable.0,
                last: self.last_usable.0,
            });
        }
        self.check_entry_layout()
    }

    /// The entry size and the array's size; `parse_entries` repeats this, since a header can
    /// also be built without `parse`.
    fn check_entry_layout(&self) -> Result<(), GptError> {
        if self.entry_size < MIN_ENTRY_SIZE || self.entry_size % 8 != 0 {
            return Err(GptError::EntrySize {
                found: self.entry_size,
            });
        }
        if self.entries_bytes() > MAX_ENTRIES_BYTES {
            return Err(GptError::EntriesTooLarge {
                count: self.entry_count,
                size: self.entry_size,
                max: MAX_ENTRIES_BYTES,
            });
        }
        Ok(())
    }

    /// The entry array, `sector` bytes per LBA, must lie outside the usable range (a
    /// partition would overwrite it) and must not cover the header.
    fn check_entries_placement(&self, sector: u64) -> Result<(), GptError> {
        let sectors = self.entries_bytes().div_ceil(sector.max(1));
        if sectors == 0 {
            return Ok(());
        }
        let start = self.entries_lba.0;
        let end = start.saturating_add(sectors - 1);
        if start <= self.last_usable.0 && self.first_usable.0 <= end {
            return Err(GptError::EntriesInUsable {
                start,
                end,
                first: self.first_usable.0,
                last: self.last_usable.0,
            });
        }
        if (start..=end).contains(&self.my_lba.0) {
            return Err(GptError::EntriesOverHeader {
                start,
                end,
                header: self.my_lba.0,
            });
        }
        Ok(())
    }

    fn is_usable(&self, lba: Lba) -> bool {
        (self.first_usable..=self.last_usable).contains(&lba)
    }

    /// Size of the partition entry array in bytes (what to read at `entries_lba`).
    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }

    #[cfg(any(test, feature = "gpt-writer"))]
    /// The header's on-disk bytes (UEFI's 92), CRC included.
    fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..8].copy_from_slice(SIGNATURE);
        out[8..12].copy_from_slice(&self.revision.to_le_bytes());
        out[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        out[24..32].copy_from_slice(&self.my_lba.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.alternate_lba.0.to_le_bytes());
        out[40..48].copy_from_slice(&self.first_usable.0.to_le_bytes());
        out[48..56].copy_from_slice(&self.last_usable.0.to_le_bytes());
        out[56..72].copy_from_slice(&self.disk_guid.to_mixed_endian());
        out[72..80].copy_from_slice(&self.entries_lba.0.to_le_bytes());
        out[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        out[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        out[88..92].copy_from_slice(&self.entries_crc32.to_le_bytes());
        let crc = crc32(&out);
        out[HEADER_CRC_RANGE].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// The header CRC covers `header_size` bytes with the CRC field itself taken as zero.
fn check_header_crc(header: &[u8], found: u32) -> Result<(), GptError> {
    let mut zeroed = header.to_vec();
    zeroed[HEADER_CRC_RANGE].fill(0);
    let expected = crc32(&zeroed);
    if found != expected {
        return Err(GptError::HeaderCrc { expected, found });
    }
    Ok(())
}

/// A used entry of the partition array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based index in the entry array: the kernel's partition number (`sda<number>`).
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: Lba,
    pub last_lba: Lba,
    pub attributes: u64,
    pub name: String,
}

/// Checks the entry array's CRC and returns its used entries (non-zero type GUID), each of
/// which must lie inside the header's usable range. `bytes` is what was read at
/// `header.entries_lba`: at least `header.entries_bytes()` long.
pub fn parse_entries(header: &GptHeader, bytes: &[u8]) -> Result<Vec<GptPartition>, GptError> {
    header.check_entry_layout()?;
    let expected_len = header.entries_bytes();
    let array = usize::try_from(expected_len)
        .ok()
        .and_then(|len| bytes.get(..len))
        .ok_or(GptError::EntriesTooShort {
            expected: expected_len,
            found: bytes.len(),
        })?;
    let crc = crc32(array);
    if crc != header.entries_crc32 {
        return Err(GptError::EntriesCrc {
            expected: crc,
            found: header.entries_crc32,
        });
    }
    // `check_entry_layout` guaranteed entry_size >= 128: every chunk holds a UEFI entry.
    let entry_size = usize::try_from(header.entry_size).unwrap_or(usize::MAX);
    array
        .chunks_exact(entry_size)
        .zip(1u32..)
        .filter_map(|(entry, number)| parse_entry(entry, number))
        .map(|partition| check_extent(header, partition))
        .collect()
}

/// A used entry must span at least one LBA, all of them inside the usable range: a CRC-valid
/// table that breaks this was written by a broken tool and cannot be trusted to name a root.
fn check_extent(header: &GptHeader, partition: GptPartition) -> Result<GptPartition, GptError> {
    let (first, last) = (partition.first_lba, partition.last_lba);
    if first > last {
        return Err(GptError::PartitionExtent {
            number: partition.number,
            first: first.0,
            last: last.0,
        });
    }
    if !header.is_usable(first) || !header.is_usable(last) {
        return Err(GptError::PartitionOutsideUsable {
            number: partition.number,
            first: first.0,
            last: last.0,
            usable_first: header.first_usable.0,
            usable_last: header.last_usable.0,
        });
    }
    Ok(partition)
}

/// One entry (its first 128 bytes; a larger entry size leaves the rest unused); `None` when
/// unused or shorter.
fn parse_entry(entry: &[u8], number: u32) -> Option<GptPartition> {
    let entry: &[u8; MIN_ENTRY_SIZE as usize] =
        entry.get(..MIN_ENTRY_SIZE as usize)?.try_into().ok()?;
    let fields = Block(entry);
    let type_guid = Guid::from_mixed_endian(&fields.array::<0, 16>());
    if type_guid.is_nil() {
        return None;
    }
    Some(GptPartition {
        number,
        type_guid,
        unique_guid: Guid::from_mixed_endian(&fields.array::<16, 16>()),
        first_lba: Lba(fields.le_u64::<32>()),
        last_lba: Lba(fields.le_u64::<40>()),
        attributes: fields.le_u64::<48>(),
        name: decode_name(&fields.array::<56, { 2 * NAME_UNITS }>()),
    })
}

/// UTF-16LE up to the first NUL. Lossy: the name is only ever compared with a PARTLABEL=
/// typed as UTF-8, which a malformed name cannot equal anyway, so it must not fail the table.
fn decode_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// CRC-32/IEEE (reflected, polynomial 0xEDB88320), the checksum UEFI specifies for GPT.
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        CRC32_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
    })
}

/// A `static`, not a `const`: indexing a `const` array copies all 1 KiB of it per byte in an
/// unoptimised build.
static CRC32_TABLE: [u32; 256] = crc32_table();

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{le_u32, le_u64};
    use crate::fixtures::{dps_partitions, tool_exists, write_image, XorShift};

    fn guid(text: &str) -> Guid {
        Guid::parse(text).expect("test GUID")
    }

    /// Parses a written image back: primary header and its entries, and the backup header.
    fn read_back(image: &GptImage, sector: SectorSize) -> (GptHeader, Vec<GptPartition>) {
        let block = sector.bytes() as usize;
        let header = GptHeader::parse(&image.primary[block..2 * block]).expect("primary header");
        let entries_at = sector.offset_of(header.entries_lba) as usize;
        let parts = parse_entries(&header, &image.primary[entries_at..]).expect("entries");
        (header, parts)
    }

    fn as_specs(parts: &[GptPartition]) -> Vec<PartitionSpec> {
        parts
            .iter()
            .map(|p| PartitionSpec {
                type_guid: p.type_guid,
                unique_guid: p.unique_guid,
                name: p.name.clone(),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attributes: p.attributes,
            })
            .collect()
    }

    const DISK_GUID: &str = "0f7a3c2e-5b1d-4e8f-9a6b-c4d2e1f0a9b8";
    const DISK_SIZE: u64 = 32 << 20;

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_round_trips_lower_case() {
        let text = "4F68BCE3-e8cd-4DB1-96e7-fbcaf984b709";
        let parsed = guid(text);
        assert_eq!(parsed, ROOT_X86_64);
        assert_eq!(parsed.to_string(), text.to_lowercase());
    }

    #[test]
    fn dps_constants_match_their_text() {
        let pairs = [
            (ROOT_X86_64, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            (ROOT_VERITY_X86_64, "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
            (
                ROOT_VERITY_SIG_X86_64,
                "41092b05-9fc8-4523-994f-2def0408b176",
            ),
            (USR_X86_64, "8484680c-9521-48c6-9c11-b0720656f69e"),
            (USR_VERITY_X86_64, "77ff5f63-e7b6-4633-acf4-1565b864c0e6"),
            (ESP, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            (VAR, "4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
        ];
        for (constant, text) in pairs {
            assert_eq!(constant.to_string(), text);
        }
    }

    #[test]
    fn guid_parse_errors_say_what_is_wrong() {
        let short = Guid::parse("954172df-ee9a");
        assert!(matches!(short, Err(GuidError::Length { found: 13, .. })));
        let dash = Guid::parse("954172df+ee9a-aab2-d90a-0ab162ee6bc5");
        assert!(matches!(dash, Err(GuidError::Dash { position: 9, .. })));
        let hex = Guid::parse("954172dg-ee9a-aab2-d90a-0ab162ee6bc5");
        assert!(matches!(hex, Err(GuidError::Hex { position: 8, .. })));
        // 36 bytes but not 36 characters: must not be taken as a length match.
        let wide = Guid::parse("é54172d-ee9a-aab2-d90a-0ab162ee6bc5");
        assert!(matches!(wide, Err(GuidError::Length { found: 35, .. })));
        assert_eq!(
            hex.map_err(|e| e.to_string()),
            Err("\"954172dg-ee9a-aab2-d90a-0ab162ee6bc5\" is not a GUID: \
                 expected a hex digit at character 8"
                .to_owned())
        );
    }

    #[test]
    fn mixed_endian_swaps_the_first_three_fields() {
        let text = guid("954172df-ee9a-aab2-d90a-0ab162ee6bc5");
        let disk = [
            0xdf, 0x72, 0x41, 0x95, 0x9a, 0xee, 0xb2, 0xaa, 0xd9, 0x0a, 0x0a, 0xb1, 0x62, 0xee,
            0x6b, 0xc5,
        ];
        assert_eq!(text.to_mixed_endian(), disk);
        assert_eq!(Guid::from_mixed_endian(&disk), text);
    }

    #[test]
    fn parse_of_write_gives_back_the_partitions() {
        for sector in [SectorSize::BYTES_512, SectorSize::new(4096).expect("4K")] {
            // The same sector count for both sizes, so the same LBAs fit.
            let total = 65536;
            let disk_size = total * u64::from(sector.bytes());
            let specs = dps_partitions();
            let image = write_gpt(disk_size, sector, guid(DISK_GUID), &specs).expect("write");
            let (header, parts) = read_back(&image, sector);
            assert_eq!(header.disk_guid, guid(DISK_GUID));
            assert_eq!(as_specs(&parts), specs);
            assert_eq!(
                parts.iter().map(|p| p.number).collect::<Vec<_>>(),
                (1..=7).collect::<Vec<_>>()
            );
            assert_eq!(header.alternate_lba, Lba(total - 1));
            assert_eq!(image.backup_offset + image.backup.len() as u64, disk_size);
            let entry_sectors = 16384 / u64::from(sector.bytes());
            assert_eq!(image.first_usable, Lba(2 + entry_sectors));
            assert_eq!(image.last_usable, Lba(total - 2 - entry_sectors));
        }
    }

    #[test]
    fn backup_header_and_entries_are_valid_copies() {
        let sector = SectorSize::BYTES_512;
        let image = write_gpt(DISK_SIZE, sector, guid(DISK_GUID), &dps_partitions()).expect("w");
        let header_at = image.backup.len() - 512;
        let last = Lba(DISK_SIZE / 512 - 1);
        let backup = GptHeader::parse_at(&image.backup[header_at..], last).expect("backup");
        assert_eq!(backup.alternate_lba, Lba(1));
        assert_eq!(sector.offset_of(backup.entries_lba), image.backup_offset);
        let parts = parse_entries(&backup, &image.backup).expect("backup entries");
        assert_eq!(as_specs(&parts), dps_partitions());
    }

    #[test]
    fn unused_entries_are_skipped_and_numbers_keep_their_slot() {
        let mut specs = dps_partitions();
        specs.truncate(3);
        let image =
            write_gpt(DISK_SIZE, SectorSize::BYTES_512, guid(DISK_GUID), &specs).expect("write");
        let mut primary = image.primary.clone();
        // Blank entry 2 (bytes 1024 + 128..256) and fix the CRCs, as a tool deleting it would.
        primary[1024 + 128..1024 + 256].fill(0);
        let crc = crc32(&primary[1024..1024 + 128 * 128]);
        primary[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
        primary[512 + 16..512 + 20].fill(0);
        let header_crc = crc32(&primary[512..512 + HEADER_SIZE]);
        primary[512 + 16..512 + 20].copy_from_slice(&header_crc.to_le_bytes());

        let header = GptHeader::parse(&primary[512..1024]).expect("header");
        let parts = parse_entries(&header, &primary[1024..]).expect("entries");
        assert_eq!(parts.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn corruption_is_detected_by_the_crcs() {
        let image = write_gpt(
            DISK_SIZE,
            SectorSize::BYTES_512,
            guid(DISK_GUID),
            &dps_partitions(),
        )
        .expect("write");
        let mut header_block = image.primary[512..1024].to_vec();
        header_block[40] ^= 1; // first usable LBA
        assert!(matches!(
            GptHeader::parse(&header_block),
            Err(GptError::HeaderCrc { .. })
        ));

        let header = GptHeader::parse(&image.primary[512..1024]).expect("header");
        let mut entries = image.primary[1024..].to_vec();
        entries[56] ^= 1; // first letter of partition 1's name
        let err = parse_entries(&header, &entries).expect_err("entries CRC");
        assert!(matches!(err, GptError::EntriesCrc { found, .. } if found == header.entries_crc32));
    }

    #[test]
    fn header_checks_name_the_field() {
        let image =
            write_gpt(DISK_SIZE, SectorSize::BYTES_512, guid(DISK_GUID), &[]).expect("write");
        let block = &image.primary[512..1024];
        assert!(matches!(
            GptHeader::parse(&image.primary[..512]),
            Err(GptError::Signature { .. })
        ));
        assert!(matches!(
            GptHeader::parse(&block[..60]),
            Err(GptError::HeaderTooShort {
                expected: 92,
                found: 60
            })
        ));
        let last = Lba(DISK_SIZE / 512 - 1);
        assert_eq!(
            GptHeader::parse_at(block, last),
            Err(GptError::MyLba {
                expected: last.0,
                found: 1
            })
        );
        let mut bad_size = block.to_vec();
        bad_size[84..88].copy_from_slice(&100u32.to_le_bytes());
        let crc = {
            bad_size[16..20].fill(0);
            crc32(&bad_size[..HEADER_SIZE])
        };
        bad_size[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            GptHeader::parse(&bad_size),
            Err(GptError::EntrySize { found: 100 })
        );
    }

    #[test]
    fn writer_refuses_bad_layouts() {
        let disk = guid(DISK_GUID);
        let sector = SectorSize::BYTES_512;
        let mut specs = dps_partitions();
        specs[1].first_lba = Lba(3000); // inside partition 1 (2048..=4095)
        assert_eq!(
            write_gpt(DISK_SIZE, sector, disk, &specs),
            Err(GptWriteError::Overlap {
                first: 1,
                second: 2
            })
        );
        let mut specs = dps_partitions();
        specs[0].first_lba = Lba(33);
        assert!(matches!(
            write_gpt(DISK_SIZE, sector, disk, &specs),
            Err(GptWriteError::OutOfRange { number: 1, .. })
        ));
        let mut specs = dps_partitions();
        specs[0].name = "x".repeat(37);
        assert!(matches!(
            write_gpt(DISK_SIZE, sector, disk, &specs),
            Err(GptWriteError::NameTooLong { number: 1, .. })
        ));
        assert!(matches!(
            write_gpt(DISK_SIZE + 1, sector, disk, &[]),
            Err(GptWriteError::UnalignedDisk { .. })
        ));
        assert!(matches!(
            write_gpt(60 * 512, sector, disk, &[]),
            Err(GptWriteError::DiskTooSmall { .. })
        ));
        assert_eq!(
            SectorSize::new(1000),
            Err(GptError::SectorSize { found: 1000 })
        );
    }

    #[test]
    fn names_are_utf16_and_cut_at_the_first_nul() {
        let mut specs = dps_partitions();
        specs.truncate(1);
        specs[0].name = "racine-été-🦀".to_owned();
        let image =
            write_gpt(DISK_SIZE, SectorSize::BYTES_512, guid(DISK_GUID), &specs).expect("write");
        let (_, parts) = read_back(&image, SectorSize::BYTES_512);
        assert_eq!(parts[0].name, "racine-été-🦀");
    }

    /// Writes a real disk image file and asks util-linux what it sees.
    #[test]
    fn sfdisk_accepts_the_written_table() {
        if !tool_exists("sfdisk") {
            eprintln!("sfdisk not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let specs = dps_partitions();
        let image =
            write_gpt(DISK_SIZE, SectorSize::BYTES_512, guid(DISK_GUID), &specs).expect("write");
        write_image(&path, DISK_SIZE, &image);

        let output = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&path)
            .output()
            .expect("run sfdisk");
        assert!(output.status.success(), "sfdisk: {output:?}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        let table = &json["partitiontable"];
        assert_eq!(table["label"], "gpt");
        assert_eq!(
            table["id"].as_str().map(str::to_lowercase).as_deref(),
            Some(DISK_GUID)
        );
        assert_eq!(table["firstlba"], 34);
        let reported = table["partitions"].as_array().expect("partitions");
        assert_eq!(reported.len(), specs.len());
        for (part, spec) in reported.iter().zip(&specs) {
            let text = |key: &str| part[key].as_str().map(str::to_lowercase);
            assert_eq!(text("uuid"), Some(spec.unique_guid.to_string()));
            assert_eq!(text("type"), Some(spec.type_guid.to_string()));
            assert_eq!(part["name"], spec.name.as_str());
            assert_eq!(part["start"], spec.first_lba.0);
            assert_eq!(part["size"], spec.last_lba.0 - spec.first_lba.0 + 1);
        }
        // sfdisk reads leniently; sgdisk -v checks both copies and the protective MBR.
        if tool_exists("sgdisk") {
            let verify = std::process::Command::new("sgdisk")
                .arg("-v")
                .arg(&path)
                .output()
                .expect("run sgdisk");
            let report = String::from_utf8_lossy(&verify.stdout);
            assert!(verify.status.success(), "sgdisk -v: {verify:?}");
            assert!(report.contains("No problems found"), "sgdisk -v: {report}");
        }
    }

    const FUZZ_ITERATIONS: usize = 100_000;
    /// Half as many for entry arrays: each iteration computes two CRCs of up to 16 KiB and
    /// decodes up to 128 names, and 100,000 of them take some 3 s in a debug build.
    const ENTRY_FUZZ_ITERATIONS: usize = 50_000;
    /// Header fields holding LBAs, and those holding 32-bit sizes and counts.
    const LBA_FIELDS: [usize; 5] = [24, 32, 40, 48, 72];
    const U32_FIELDS: [usize; 3] = [12, 80, 84];

    /// The error's variant name, to show which checks a fuzz loop reached.
    fn kind(error: &GptError) -> String {
        let debug = format!("{error:?}");
        debug
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
        if let Some(field) = bytes.get_mut(offset..offset + 8) {
            field.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
        if let Some(field) = bytes.get_mut(offset..offset + 4) {
            field.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Recomputes the header CRC over the `header_size` bytes the block claims, as a tool
    /// writing those fields would; false when that size does not fit the block.
    fn fix_header_crc(block: &mut [u8]) -> bool {
        if block.len() < HEADER_SIZE {
            return false;
        }
        let size = le_u32(block, 12).expect("a whole header") as usize;
        if !(HEADER_SIZE..=block.len()).contains(&size) {
            return false;
        }
        block[HEADER_CRC_RANGE].fill(0);
        let crc = crc32(&block[..size]);
        block[HEADER_CRC_RANGE].copy_from_slice(&crc.to_le_bytes());
        true
    }

    /// An LBA near the ones that matter (`near`), at a boundary, or anything at all.
    fn interesting_lba(rng: &mut XorShift, near: &[u64]) -> u64 {
        match rng.below(4) {
            0 => rng.next_u64(),
            1 => *rng.pick(&[0, 1, 2, 33, 34, u64::MAX - 1, u64::MAX]),
            _ => rng
                .pick(near)
                .wrapping_add(rng.below(5) as u64)
                .wrapping_sub(2),
        }
    }

    fn interesting_u32(rng: &mut XorShift) -> u32 {
        *rng.pick(&[0, 1, 8, 92, 127, 128, 136, 256, 512, 513, 8192, u32::MAX])
    }

    /// What every accepted header satisfies, whatever bytes it came from: the UEFI rules the
    /// init relies on, restated independently of `check`.
    fn assert_consistent_header(header: &GptHeader, block_len: usize, lba: Lba) {
        let usable = header.first_usable..=header.last_usable;
        assert_eq!(header.my_lba, lba, "{header:?}");
        assert_eq!(header.revision >> 16, 1, "{header:?}");
        let size = header.header_size as usize;
        assert!((HEADER_SIZE..=block_len).contains(&size), "{header:?}");
        assert!(header.first_usable <= header.last_usable, "{header:?}");
        assert!(!usable.contains(&header.my_lba), "{header:?}");
        assert!(header.entry_size >= 128, "{header:?}");
        assert_eq!(header.entry_size % 8, 0, "{header:?}");
        assert!(header.entries_bytes() <= MAX_ENTRIES_BYTES, "{header:?}");
        let sectors = header.entries_bytes().div_ceil(block_len as u64);
        if sectors > 0 {
            let start = header.entries_lba;
            let end = Lba(start.0.saturating_add(sectors - 1));
            assert!(
                end < header.first_usable || header.last_usable < start,
                "entries overlap the usable range: {header:?}"
            );
            assert!(
                !(start..=end).contains(&header.my_lba),
                "entries cover the header: {header:?}"
            );
        }
    }

    /// Random 512-byte blocks: half pure noise (stopped by the signature), half with a valid
    /// signature, mostly valid revision and size, a recomputed CRC and random fields biased
    /// to small LBAs, so that the checks after the CRC see values that can pass. Parsing
    /// never panics, and whatever parses is consistent.
    #[test]
    fn random_header_blocks_never_panic_and_what_parses_is_consistent() {
        let mut rng = XorShift(0x6a09_e667_f3bc_c908);
        let mut block = [0u8; 512];
        let mut kinds = std::collections::BTreeSet::new();
        let mut accepted = 0;
        for _ in 0..FUZZ_ITERATIONS {
            rng.fill(&mut block);
            if rng.one_in(2) {
                block[..8].copy_from_slice(SIGNATURE);
                if !rng.one_in(16) {
                    put_u32(&mut block, 8, REVISION_1_0 | rng.below(4) as u32);
                }
                let size = if rng.one_in(16) {
                    interesting_u32(&mut rng)
                } else {
                    (HEADER_SIZE + rng.below(512 - HEADER_SIZE + 1)) as u32
                };
                put_u32(&mut block, 12, size);
                let my_lba = if rng.one_in(8) {
                    rng.below(3) as u64
                } else {
                    1
                };
                let first = rng.below(100) as u64;
                let last = first
                    .wrapping_add(rng.below(1 << 20) as u64)
                    .wrapping_sub(8);
                let entries_lba = rng.below(40) as u64;
                let near = [first, last, entries_lba];
                for (offset, value) in LBA_FIELDS.into_iter().zip([1, 0, first, last, 2]) {
                    let value = match rng.below(4) {
                        0 => interesting_lba(&mut rng, &near),
                        _ if offset == 24 => my_lba,
                        _ if offset == 72 => entries_lba,
                        _ if offset == 32 => rng.next_u64(),
                        _ => value,
                    };
                    put_u64(&mut block, offset, value);
                }
                put_u32(&mut block, 80, rng.below(300) as u32);
                let entry_size = match rng.below(4) {
                    0 => interesting_u32(&mut rng),
                    1 => 128 + 8 * rng.below(64) as u32,
                    _ => 128,
                };
                put_u32(&mut block, 84, entry_size);
                if !rng.one_in(16) {
                    fix_header_crc(&mut block);
                }
            }
            match GptHeader::parse(&block) {
                Ok(header) => {
                    accepted += 1;
                    assert_consistent_header(&header, block.len(), Lba(1));
                }
                Err(error) => {
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!("{accepted} of {FUZZ_ITERATIONS} random blocks parsed; errors: {kinds:?}");
        assert!(accepted > FUZZ_ITERATIONS / 100, "{accepted} parsed");
        for expected in [
            "Signature",
            "Revision",
            "HeaderSize",
            "HeaderCrc",
            "MyLba",
            "UsableRange",
            "HeaderInUsable",
            "EntrySize",
            "EntriesTooLarge",
            "EntriesInUsable",
            "EntriesOverHeader",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    /// One random change to `bytes`: a bit flip (anywhere, or in the header fields), a byte
    /// overwrite, a field set to a boundary value, a zeroed run, or a truncation.
    fn mutate_header(rng: &mut XorShift, bytes: &mut Vec<u8>, near: &[u64]) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match rng.below(8) {
            0 => bytes[rng.below(len)] ^= 1 << rng.below(8),
            1 => bytes[rng.below(len.min(HEADER_SIZE))] ^= 1 << rng.below(8),
            2 => bytes[rng.below(len)] = rng.next_u64() as u8,
            3 | 4 => {
                let value = interesting_lba(rng, near);
                put_u64(bytes, *rng.pick(&LBA_FIELDS), value);
            }
            5 => {
                let value = interesting_u32(rng);
                put_u32(bytes, *rng.pick(&U32_FIELDS), value);
            }
            6 => {
                let start = rng.below(len);
                let end = (start + rng.below(16)).min(len);
                bytes[start..end].fill(0);
            }
            _ => bytes.truncate(rng.below(len + 1)),
        }
    }

    /// Up to three random changes to a valid primary or backup header, with the header CRC
    /// recomputed half the time (as a broken tool would write it) so that the field checks
    /// see the damage. Parsing never panics; what parses is consistent; and without a new
    /// CRC, any change to the 92 covered bytes is refused while changes past them do not
    /// matter.
    #[test]
    fn damaged_headers_never_panic_and_what_parses_is_consistent() {
        let sector = SectorSize::BYTES_512;
        let image =
            write_gpt(DISK_SIZE, sector, guid(DISK_GUID), &dps_partitions()).expect("write");
        let last = Lba(DISK_SIZE / 512 - 1);
        let primary = image.primary[512..1024].to_vec();
        let backup = image.backup[image.backup.len() - 512..].to_vec();
        let originals = [
            (
                primary.clone(),
                Lba(1),
                GptHeader::parse(&primary).expect("primary"),
            ),
            (
                backup.clone(),
                last,
                GptHeader::parse_at(&backup, last).expect("backup"),
            ),
        ];
        let near = [
            1,
            2,
            image.first_usable.0,
            image.last_usable.0,
            last.0,
            last.0 - 32,
        ];
        let mut rng = XorShift(0xbb67_ae85_84ca_a73b);
        let mut kinds = std::collections::BTreeSet::new();
        let (mut accepted, mut changed) = (0, 0);
        for iteration in 0..FUZZ_ITERATIONS {
            let (source, lba, original) = &originals[iteration % 2];
            let mut block = source.clone();
            for _ in 0..=rng.below(3) {
                mutate_header(&mut rng, &mut block, &near);
            }
            let recomputed = rng.one_in(2) && fix_header_crc(&mut block);
            let result = GptHeader::parse_at(&block, *lba);
            match &result {
                Ok(header) => {
                    accepted += 1;
                    changed += usize::from(header != original);
                    assert_consistent_header(header, block.len(), *lba);
                }
                Err(error) => {
                    kinds.insert(kind(error));
                }
            }
            if recomputed {
                continue;
            }
            if block.len() < HEADER_SIZE {
                assert!(
                    matches!(result, Err(GptError::HeaderTooShort { .. })),
                    "{result:?}"
                );
            } else if block[..HEADER_SIZE] == source[..HEADER_SIZE] {
                // Only a whole sector: a shorter block is taken as a smaller sector size,
                // and the entry array then spans more LBAs.
                if block.len() == source.len() {
                    assert_eq!(result.as_ref(), Ok(original), "padding changed only");
                }
            } else {
                assert!(
                    result.is_err(),
                    "damage under the old CRC accepted: {block:02x?}"
                );
            }
        }
        eprintln!(
            "{accepted} of {FUZZ_ITERATIONS} damaged headers parsed ({changed} with changed \
             fields); errors: {kinds:?}"
        );
        assert!(
            changed > FUZZ_ITERATIONS / 50,
            "{changed} changed headers parsed"
        );
        for expected in [
            "HeaderTooShort",
            "Signature",
            "Revision",
            "HeaderSize",
            "HeaderCrc",
            "MyLba",
            "UsableRange",
            "HeaderInUsable",
            "EntrySize",
            "EntriesTooLarge",
            "EntriesInUsable",
            "EntriesOverHeader",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    /// One random change to an entry array of `count` entries of `size` bytes, aimed at the
    /// fields parse_entries reads.
    fn mutate_entries(rng: &mut XorShift, array: &mut Vec<u8>, size: usize, near: &[u64]) {
        let count = array.len() / size;
        if count == 0 {
            return;
        }
        let entry = rng.below(count) * size;
        match rng.below(8) {
            0 => array[entry..entry + 16].fill(0),
            1 => {
                let at = entry + rng.below(16);
                array[at] = rng.next_u64() as u8;
            }
            2..=4 => {
                let value = interesting_lba(rng, near);
                put_u64(array, entry + *rng.pick(&[32, 40]), value);
            }
            5 => {
                let any = rng.next_u64() as u16;
                let unit = *rng.pick(&[0, 0x41, 0xd800, 0xdc00, 0xfffd, any]);
                let at = entry + 56 + 2 * rng.below(NAME_UNITS);
                array[at..at + 2].copy_from_slice(&unit.to_le_bytes());
            }
            6 => {
                let at = rng.below(array.len());
                array[at] ^= 1 << rng.below(8);
            }
            _ if rng.one_in(4) => array.truncate(rng.below(array.len() + 1)),
            _ => {
                let at = entry + 48;
                put_u64(array, at, rng.next_u64());
            }
        }
    }

    /// Damaged entry arrays under a header that vouches for them: both the entry array CRC
    /// and the header CRC are recomputed, as a broken tool would write them, and the header
    /// sometimes claims another entry count or size. Parsing never panics, and what parses
    /// lists exactly the used entries, in slot order, each inside the usable range.
    #[test]
    fn damaged_entry_arrays_never_panic_and_what_parses_is_consistent() {
        let sector = SectorSize::BYTES_512;
        let image =
            write_gpt(DISK_SIZE, sector, guid(DISK_GUID), &dps_partitions()).expect("write");
        let header_block = image.primary[512..1024].to_vec();
        let written = &image.primary[1024..1024 + 128 * 128];
        let (first, last) = (image.first_usable.0, image.last_usable.0);
        let near = [0, first, last, 2048, 4095, 4096, 16383];
        let mut rng = XorShift(0x3c6e_f372_fe94_f82b);
        let mut kinds = std::collections::BTreeSet::new();
        let (mut accepted, mut partitions) = (0, 0);
        for _ in 0..ENTRY_FUZZ_ITERATIONS {
            // Mostly the 7 used entries and one free: the CRCs of the whole 16 KiB array
            // would make the loop too slow for a debug build.
            let count = match rng.below(256) {
                0 => 128,
                1..=48 => rng.below(17),
                _ => 8,
            };
            let size = if rng.one_in(4) && count <= 32 {
                128 + 8 * rng.below(49)
            } else {
                128
            };
            let mut array = written[..(count * size).min(written.len())].to_vec();
            array.resize(count * size, 0);
            for _ in 0..=rng.below(3) {
                mutate_entries(&mut rng, &mut array, size, &near);
            }
            let mut block = header_block.clone();
            put_u32(&mut block, 80, count as u32);
            put_u32(&mut block, 84, size as u32);
            let vouched = &array[..array.len().min(count * size)];
            put_u32(&mut block, 88, crc32(vouched));
            assert!(fix_header_crc(&mut block));
            let header = GptHeader::parse(&block).expect("the header itself is valid");
            match parse_entries(&header, &array) {
                Ok(parts) => {
                    accepted += 1;
                    partitions += parts.len();
                    assert_consistent_entries(&header, &array, &parts);
                }
                Err(error) => {
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!(
            "{accepted} of {ENTRY_FUZZ_ITERATIONS} damaged entry arrays parsed, with \
             {partitions} partitions; errors: {kinds:?}"
        );
        assert!(accepted > ENTRY_FUZZ_ITERATIONS / 10, "{accepted} parsed");
        assert!(
            partitions > ENTRY_FUZZ_ITERATIONS,
            "{partitions} partitions"
        );
        for expected in [
            "EntriesTooShort",
            "PartitionExtent",
            "PartitionOutsideUsable",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    /// What a successful `parse_entries` returns, restated from the raw array: one
    /// partition per used slot, in order, with its LBAs, inside the usable range.
    fn assert_consistent_entries(header: &GptHeader, array: &[u8], parts: &[GptPartition]) {
        let size = header.entry_size as usize;
        let used: Vec<(u32, &[u8])> = array[..header.entries_bytes() as usize]
            .chunks_exact(size)
            .zip(1u32..)
            .filter(|(entry, _)| entry[..16] != [0; 16])
            .map(|(entry, number)| (number, entry))
            .collect();
        assert_eq!(parts.len(), used.len(), "{parts:?}");
        for (part, (number, entry)) in parts.iter().zip(used) {
            assert_eq!(part.number, number);
            assert!(!part.type_guid.is_nil());
            assert_eq!(part.first_lba, Lba(le_u64(entry, 32).expect("an entry")));
            assert_eq!(part.last_lba, Lba(le_u64(entry, 40).expect("an entry")));
            assert!(part.first_lba <= part.last_lba, "{part:?}");
            assert!(header.first_usable <= part.first_lba, "{part:?}");
            assert!(part.last_lba <= header.last_usable, "{part:?}");
            assert!(!part.name.contains('\0'), "{part:?}");
            assert!(part.name.encode_utf16().count() <= NAME_UNITS, "{part:?}");
        }
    }

    /// Rewrites the entries of a valid image with `edit` and recomputes both CRCs, as a
    /// broken tool would: the damage reaches the entry checks.
    fn vouched_entries(edit: impl FnOnce(&mut [u8])) -> (GptHeader, Vec<u8>) {
        let image = write_gpt(
            DISK_SIZE,
            SectorSize::BYTES_512,
            guid(DISK_GUID),
            &dps_partitions(),
        )
        .expect("write");
        let mut block = image.primary[512..1024].to_vec();
        let mut entries = image.primary[1024..1024 + 128 * 128].to_vec();
        edit(&mut entries);
        put_u32(&mut block, 88, crc32(&entries));
        assert!(fix_header_crc(&mut block));
        (GptHeader::parse(&block).expect("header"), entries)
    }

    // Findings of the fuzz loops above, each a table the parser used to accept.

    #[test]
    fn a_partition_ending_before_it_starts_is_refused() {
        // Partition 2 spans 4096..=6143: make it end at 4095.
        let (header, entries) = vouched_entries(|entries| put_u64(entries, 128 + 40, 4095));
        assert_eq!(
            parse_entries(&header, &entries),
            Err(GptError::PartitionExtent {
                number: 2,
                first: 4096,
                last: 4095
            })
        );
        let (header, entries) = vouched_entries(|entries| put_u64(entries, 128 + 40, 4096));
        assert_eq!(parse_entries(&header, &entries).expect("one LBA").len(), 7);
    }

    #[test]
    fn a_partition_outside_the_usable_range_is_refused() {
        let last_usable = DISK_SIZE / 512 - 34;
        for (field, value) in [(32, 33), (32, 0), (40, last_usable + 1), (40, u64::MAX)] {
            let (header, entries) = vouched_entries(|entries| put_u64(entries, field, value));
            let err = parse_entries(&header, &entries).expect_err("outside");
            let (first, last) = if field == 32 {
                (value, 4095)
            } else {
                (2048, value)
            };
            assert_eq!(
                err,
                GptError::PartitionOutsideUsable {
                    number: 1,
                    first,
                    last,
                    usable_first: 34,
                    usable_last: last_usable
                }
            );
        }
        assert_eq!(
            GptError::PartitionOutsideUsable {
                number: 1,
                first: 0,
                last: 4095,
                usable_first: 34,
                usable_last: 65502
            }
            .to_string(),
            "GPT partition 1 (LBAs 0..=4095) is outside the usable LBAs 34..=65502"
        );
    }

    /// A header edited with `edit` and its CRC recomputed.
    fn vouched_header(edit: impl FnOnce(&mut [u8])) -> Result<GptHeader, GptError> {
        let image =
            write_gpt(DISK_SIZE, SectorSize::BYTES_512, guid(DISK_GUID), &[]).expect("write");
        let mut block = image.primary[512..1024].to_vec();
        edit(&mut block);
        assert!(fix_header_crc(&mut block));
        GptHeader::parse(&block)
    }

    #[test]
    fn a_header_inside_its_usable_range_is_refused() {
        assert_eq!(
            vouched_header(|block| put_u64(block, 40, 0)),
            Err(GptError::HeaderInUsable {
                lba: 1,
                first: 0,
                last: DISK_SIZE / 512 - 34
            })
        );
        // LBA 1 just outside either end of the range is fine (entries moved out of the way).
        let below = vouched_header(|block| {
            put_u64(block, 40, 0);
            put_u64(block, 48, 0);
            put_u64(block, 72, 2);
        });
        assert!(below.is_ok(), "{below:?}");
    }

    #[test]
    fn an_entry_array_overlapping_partitions_or_its_header_is_refused() {
        let last_usable = DISK_SIZE / 512 - 34;
        // 128 entries of 128 bytes are 32 sectors: from LBA 3 they reach LBA 34.
        assert_eq!(
            vouched_header(|block| put_u64(block, 72, 3)),
            Err(GptError::EntriesInUsable {
                start: 3,
                end: 34,
                first: 34,
                last: last_usable
            })
        );
        assert_eq!(
            vouched_header(|block| put_u64(block, 72, 1)),
            Err(GptError::EntriesOverHeader {
                start: 1,
                end: 32,
                header: 1
            })
        );
        // Past the usable range is where the backup array lives: fine for the primary too.
        let after = vouched_header(|block| put_u64(block, 72, last_usable + 1));
        assert!(after.is_ok(), "{after:?}");
        // An empty array occupies no LBA, so it overlaps nothing.
        let empty = vouched_header(|block| {
            put_u32(block, 80, 0);
            put_u64(block, 72, 1);
        });
        assert!(empty.is_ok(), "{empty:?}");
    }

    #[test]
    fn entries_under_a_hand_built_header_with_a_bad_entry_size_are_refused() {
        // The fields are public, so a header need not come from `parse`: an entry size of 0
        // or under 128 bytes used to panic (zero-sized chunks, a name field past the entry).
        let image = write_gpt(
            DISK_SIZE,
            SectorSize::BYTES_512,
            guid(DISK_GUID),
            &dps_partitions(),
        )
        .expect("write");
        let header = GptHeader::parse(&image.primary[512..1024]).expect("header");
        for size in [0, 8, 64, 120, 129] {
            let bad = GptHeader {
                entry_size: size,
                ..header.clone()
            };
            assert_eq!(
                parse_entries(&bad, &image.primary[1024..]),
                Err(GptError::EntrySize { found: size })
            );
        }
    }
}

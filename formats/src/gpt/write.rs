//! Writing a GPT: protective MBR, primary and backup headers and entry arrays, for the build
//! tool and the installer (PID 1 only reads; see the `gpt-writer` feature).

use super::*;

/// A partition to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub name: String,
    pub first_lba: Lba,
    pub last_lba: Lba,
    /// GPT attribute bits (DPS uses bit 60 read-only, bit 63 no-auto).
    pub attributes: u64,
}

/// The bytes of a GPT-partitioned disk that are not partition contents: write `primary` at
/// offset 0 and `backup` at `backup_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptImage {
    /// Protective MBR, primary header and entry array (LBA 0 up to the first usable LBA).
    pub primary: Vec<u8>,
    /// Backup entry array followed by the backup header (the disk's last LBAs).
    pub backup: Vec<u8>,
    pub backup_offset: u64,
    /// Where partitions may go (inclusive), for callers that lay them out.
    pub first_usable: Lba,
    pub last_usable: Lba,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GptWriteError {
    #[error("disk size {size} bytes is not a multiple of the {sector}-byte sector")]
    UnalignedDisk { size: u64, sector: u32 },
    #[error("disk of {size} bytes is too small for a GPT with {sector}-byte sectors")]
    DiskTooSmall { size: u64, sector: u32 },
    #[error("{count} partitions do not fit in the {max}-entry table")]
    TooManyPartitions { count: usize, max: u32 },
    #[error("partition {number} ({first}..={last}) is outside the usable LBAs {usable_first}..={usable_last}")]
    OutOfRange {
        number: usize,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
    #[error("partitions {first} and {second} overlap")]
    Overlap { first: usize, second: usize },
    #[error("partition {number} name {name:?} is longer than 36 UTF-16 code units")]
    NameTooLong { number: usize, name: String },
    #[error("partition {number} has the nil type GUID, which marks an unused entry")]
    NilType { number: usize },
}

/// Lays out a GPT for a disk of `disk_size` bytes: protective MBR, primary header and 128
/// entries, and their backups at the end. Partition `n` of the table is `partitions[n-1]`.
pub fn write_gpt(
    disk_size: u64,
    sector: SectorSize,
    disk_guid: Guid,
    partitions: &[PartitionSpec],
) -> Result<GptImage, GptWriteError> {
    let layout = Layout::new(disk_size, sector)?;
    check_partitions(&layout, partitions)?;
    let entries = encode_entries(partitions);
    let primary_header = layout.header(disk_guid, crc32(&entries), Role::Primary);
    let backup_header = layout.header(disk_guid, crc32(&entries), Role::Backup);

    let mut primary = vec![0u8; layout.bytes(layout.first_usable.0)];
    let block = layout.bytes(1);
    primary[..512].copy_from_slice(&protective_mbr(layout.total_sectors));
    primary[block..block + HEADER_SIZE].copy_from_slice(&primary_header.to_bytes());
    primary[2 * block..2 * block + entries.len()].copy_from_slice(&entries);

    let mut backup = vec![0u8; layout.bytes(layout.entry_sectors + 1)];
    backup[..entries.len()].copy_from_slice(&entries);
    let header_at = layout.bytes(layout.entry_sectors);
    backup[header_at..header_at + HEADER_SIZE].copy_from_slice(&backup_header.to_bytes());

    Ok(GptImage {
        primary,
        backup,
        backup_offset: sector.offset_of(backup_header.entries_lba),
        first_usable: layout.first_usable,
        last_usable: layout.last_usable,
    })
}

#[derive(Clone, Copy)]
pub(super) enum Role {
    Primary,
    Backup,
}

/// Where the writer puts things on a disk of a given size.
pub(super) struct Layout {
    sector: SectorSize,
    total_sectors: u64,
    entry_sectors: u64,
    first_usable: Lba,
    last_usable: Lba,
}

impl Layout {
    fn new(disk_size: u64, sector: SectorSize) -> Result<Self, GptWriteError> {
        let bytes = u64::from(sector.bytes());
        if disk_size % bytes != 0 {
            return Err(GptWriteError::UnalignedDisk {
                size: disk_size,
                sector: sector.bytes(),
            });
        }
        let total_sectors = disk_size / bytes;
        let entry_sectors =
            sector.sectors_for(u64::from(WRITER_ENTRY_COUNT) * u64::from(MIN_ENTRY_SIZE));
        // MBR + primary header + entries, and backup entries + backup header.
        let reserved = 2 + entry_sectors + entry_sectors + 1;
        if total_sectors <= reserved {
            return Err(GptWriteError::DiskTooSmall {
                size: disk_size,
                sector: sector.bytes(),
            });
        }
        Ok(Self {
            sector,
            total_sectors,
            entry_sectors,
            first_usable: Lba(2 + entry_sectors),
            last_usable: Lba(total_sectors - entry_sectors - 2),
        })
    }

    /// Byte length of `sectors` sectors; only called on the small reserved areas.
    fn bytes(&self, sectors: u64) -> usize {
        usize::try_from(self.sector.offset_of(Lba(sectors))).unwrap_or(usize::MAX)
    }

    fn header(&self, disk_guid: Guid, entries_crc32: u32, role: Role) -> GptHeader {
        let last = Lba(self.total_sectors - 1);
        let (my_lba, alternate_lba, entries_lba) = match role {
            Role::Primary => (Lba(1), last, Lba(2)),
            Role::Backup => (last, Lba(1), Lba(last.0 - self.entry_sectors)),
        };
        GptHeader {
            revision: REVISION_1_0,
            header_size: HEADER_SIZE as u32,
            my_lba,
            alternate_lba,
            first_usable: self.first_usable,
            last_usable: self.last_usable,
            disk_guid,
            entries_lba,
            entry_count: WRITER_ENTRY_COUNT,
            entry_size: MIN_ENTRY_SIZE,
            entries_crc32,
        }
    }
}

pub(super) fn check_partitions(
    layout: &Layout,
    partitions: &[PartitionSpec],
) -> Result<(), GptWriteError> {
    if partitions.len() > WRITER_ENTRY_COUNT as usize {
        return Err(GptWriteError::TooManyPartitions {
            count: partitions.len(),
            max: WRITER_ENTRY_COUNT,
        });
    }
    for (index, part) in partitions.iter().enumerate() {
        let number = index + 1;
        check_partition(layout, part, number)?;
        let overlapping = partitions[..index]
            .iter()
            .position(|other| other.first_lba <= part.last_lba && part.first_lba <= other.last_lba);
        if let Some(other) = overlapping {
            return Err(GptWriteError::Overlap {
                first: other + 1,
                second: number,
            });
        }
    }
    Ok(())
}

pub(super) fn check_partition(
    layout: &Layout,
    part: &PartitionSpec,
    number: usize,
) -> Result<(), GptWriteError> {
    if part.type_guid.is_nil() {
        return Err(GptWriteError::NilType { number });
    }
    if part.name.encode_utf16().count() > NAME_UNITS {
        return Err(GptWriteError::NameTooLong {
            number,
            name: part.name.clone(),
        });
    }
    let inside = layout.first_usable <= part.first_lba
        && part.first_lba <= part.last_lba
        && part.last_lba <= layout.last_usable;
    if !inside {
        return Err(GptWriteError::OutOfRange {
            number,
            first: part.first_lba.0,
            last: part.last_lba.0,
            usable_first: layout.first_usable.0,
            usable_last: layout.last_usable.0,
        });
    }
    Ok(())
}

/// The whole entry array: 128 entries of 128 bytes, unused ones zero.
pub(super) fn encode_entries(partitions: &[PartitionSpec]) -> Vec<u8> {
    let size = MIN_ENTRY_SIZE as usize;
    let mut out = vec![0u8; WRITER_ENTRY_COUNT as usize * size];
    for (entry, part) in out.chunks_exact_mut(size).zip(partitions) {
        entry[0..16].copy_from_slice(&part.type_guid.to_mixed_endian());
        entry[16..32].copy_from_slice(&part.unique_guid.to_mixed_endian());
        entry[32..40].copy_from_slice(&part.first_lba.0.to_le_bytes());
        entry[40..48].copy_from_slice(&part.last_lba.0.to_le_bytes());
        entry[48..56].copy_from_slice(&part.attributes.to_le_bytes());
        let name = entry[56..56 + 2 * NAME_UNITS].chunks_exact_mut(2);
        for (slot, unit) in name.zip(part.name.encode_utf16()) {
            slot.copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

/// An MBR with one partition of type 0xEE covering the disk (capped at 2^32-1 sectors), so
/// MBR-only tools see the disk as in use rather than empty.
pub(super) fn protective_mbr(total_sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xEE;
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "beyond addressable"
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

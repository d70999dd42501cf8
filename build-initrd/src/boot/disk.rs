//! `xorbang-build disk` (first version): a GPT disk image with the root image and its verity
//! hash tree as Discoverable Partitions: DPS type GUIDs, and PARTUUIDs derived from the root
//! hash so that `roothash=` alone finds both.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use xorbang_formats::gpt::{self, GptWriteError, Guid, Lba, PartitionSpec, SectorSize};
use xorbang_formats::verity::RootHash;

use crate::file_error::{FileAction, FileError};
use crate::output::PendingOutput;

/// Partitions start and end on MiB boundaries, as every partitioning tool aligns them.
const ALIGNMENT: u64 = 1 << 20;
const SECTOR: SectorSize = SectorSize::BYTES_512;

/// One partition: its DPS type, identity, and what fills it.
#[derive(Debug, Clone)]
pub struct DiskPartition {
    pub type_guid: Guid,
    pub uuid: Guid,
    pub label: String,
    /// The file whose bytes fill the partition; `None` leaves it zero-filled.
    pub source: Option<PathBuf>,
    /// The partition is at least this large (before rounding up to whole MiB), even when
    /// its source is smaller.
    pub min_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("invalid partition layout")]
    Layout(#[from] GptWriteError),
}

/// The partitions of a verity-protected root: `root-x86-64` holds the image, PARTUUID the
/// root hash's first 16 bytes; `root-x86-64-verity` holds the hash tree, PARTUUID its last
/// 16 bytes (systemd-repart's labels and derivation).
pub fn verity_root_partitions(
    root_hash: &RootHash,
    image: &Path,
    tree: &Path,
) -> [DiskPartition; 2] {
    let (data_uuid, hash_uuid) = root_hash.partition_uuids();
    [
        DiskPartition {
            type_guid: gpt::ROOT_X86_64,
            uuid: data_uuid,
            label: "root-x86-64".to_owned(),
            source: Some(image.to_owned()),
            min_bytes: 0,
        },
        DiskPartition {
            type_guid: gpt::ROOT_VERITY_X86_64,
            uuid: hash_uuid,
            label: "root-x86-64-verity".to_owned(),
            source: Some(tree.to_owned()),
            min_bytes: 0,
        },
    ]
}

/// The ESP partition for `esp` (a FAT image from [`crate::boot::esp::write_esp`]); its PARTUUID
/// is derived from the root hash so the disk stays reproducible.
pub fn esp_partition(root_hash: &RootHash, esp: &Path) -> DiskPartition {
    let digest = Sha256::new()
        .chain_update(b"xorbang esp partition")
        .chain_update(root_hash.as_bytes())
        .finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    DiskPartition {
        type_guid: gpt::ESP,
        uuid: Guid::from_bytes(uuid),
        label: "esp".to_owned(),
        source: Some(esp.to_owned()),
        min_bytes: 0,
    }
}

/// Where [`write_disk`] puts the partitions (512-byte sectors): their table entries, the disk
/// GUID, and the smallest disk that holds them. xorbang-installer lays a real disk out with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Partition `n` of the table is `specs[n-1]`.
    pub specs: Vec<PartitionSpec>,
    pub disk_guid: Guid,
    /// Up to the end of the last partition, and room for the backup GPT behind it.
    pub disk_bytes: u64,
}

/// Lays the partitions out one after another from 1 MiB on, each its source's size (or its
/// minimum, if larger) rounded up to whole MiB. The disk GUID is derived from the
/// partitions' UUIDs, so the same inputs give the same layout.
pub fn plan_disk(partitions: &[DiskPartition]) -> Result<DiskLayout, DiskError> {
    let sizes = partitions
        .iter()
        .map(|partition| {
            let content = match &partition.source {
                Some(source) => source_size(source)?,
                None => 0,
            };
            Ok::<_, DiskError>(content.max(partition.min_bytes))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let specs = layout(partitions, &sizes);
    let end = specs
        .last()
        .map_or(Lba(2048), |spec| Lba(spec.last_lba.0 + 1));
    Ok(DiskLayout {
        specs,
        disk_guid: disk_guid(partitions),
        // Room for the backup GPT behind the last partition, aligned like the rest.
        disk_bytes: SECTOR.offset_of(end) + ALIGNMENT,
    })
}

/// Writes the disk atomically; returns its size in bytes (see [`plan_disk`]): the same
/// inputs give the same bytes.
pub fn write_disk(out: &Path, partitions: &[DiskPartition]) -> Result<u64, DiskError> {
    let DiskLayout {
        specs,
        disk_guid,
        disk_bytes,
    } = plan_disk(partitions)?;
    let image = gpt::write_gpt(disk_bytes, SECTOR, disk_guid, &specs)?;
    let pending = PendingOutput::new(out)?;
    let temporary = pending.temporary().to_owned();
    let write = FileError::of(FileAction::Write, &temporary);
    let mut file = pending.file();
    file.set_len(disk_bytes).map_err(FileError::of(
        FileAction::Extend(disk_bytes),
        pending.temporary(),
    ))?;
    file.write_all(&image.primary).map_err(&write)?;
    file.seek(SeekFrom::Start(image.backup_offset))
        .map_err(&write)?;
    file.write_all(&image.backup).map_err(&write)?;
    for (partition, spec) in partitions.iter().zip(&specs) {
        // The file was made with set_len, so a partition without a source reads as zeros.
        let Some(path) = &partition.source else {
            continue;
        };
        copy_into(file, SECTOR.offset_of(spec.first_lba), path).map_err(|error| match error {
            CopyError::Read(source) => FileError::of(FileAction::Read, path)(source),
            CopyError::Write(source) => write(source),
        })?;
    }
    file.sync_all()
        .map_err(FileError::of(FileAction::Sync, &temporary))?;
    pending.commit()?;
    Ok(disk_bytes)
}

fn source_size(path: &Path) -> Result<u64, FileError> {
    std::fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(FileError::of(FileAction::Inspect, path))
}

/// Places the partitions one after another from 1 MiB on, each rounded up to whole MiB.
/// `sizes` are the partitions' sizes in bytes: their source's, or their minimum if larger.
fn layout(partitions: &[DiskPartition], sizes: &[u64]) -> Vec<PartitionSpec> {
    let sectors_per_mib = ALIGNMENT / u64::from(SECTOR.bytes());
    let mut next = Lba(sectors_per_mib);
    partitions
        .iter()
        .zip(sizes)
        .map(|(partition, size)| {
            let sectors = (*size).max(1).div_ceil(ALIGNMENT) * sectors_per_mib;
            let spec = PartitionSpec {
                type_guid: partition.type_guid,
                unique_guid: partition.uuid,
                name: partition.label.clone(),
                first_lba: next,
                last_lba: Lba(next.0 + sectors - 1),
                attributes: 0,
            };
            next = Lba(next.0 + sectors);
            spec
        })
        .collect()
}

fn disk_guid(partitions: &[DiskPartition]) -> Guid {
    let mut hasher = Sha256::new();
    hasher.update(b"xorbang disk guid");
    for partition in partitions {
        hasher.update(partition.uuid.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Guid::from_bytes(bytes)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_into(mut file: &File, offset: u64, source: &Path) -> Result<(), CopyError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(CopyError::Write)?;
    let mut input = File::open(source).map_err(CopyError::Read)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = io::Read::read(&mut input, &mut buffer).map_err(CopyError::Read)?;
        if count == 0 {
            return Ok(());
        }
        file.write_all(&buffer[..count]).map_err(CopyError::Write)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::gpt::{parse_entries, GptHeader};

    const ROOT_HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn hash_bytes() -> RootHash {
        RootHash::parse_hex(ROOT_HASH).expect("hex")
    }

    #[test]
    fn writes_a_gpt_that_reads_back_with_the_sources_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        let tree = dir.path().join("root.verity");
        std::fs::write(&image, vec![0xaa; 1_500_000]).expect("write");
        std::fs::write(&tree, vec![0xbb; 4096]).expect("write");
        let disk = dir.path().join("disk.img");
        let partitions = verity_root_partitions(&hash_bytes(), &image, &tree);
        let size = write_disk(&disk, &partitions).expect("writes");
        let bytes = std::fs::read(&disk).expect("read");
        assert_eq!(bytes.len() as u64, size);
        let header = GptHeader::parse(&bytes[512..1024]).expect("primary header");
        let start = header.entries_lba.0 as usize * 512;
        let entries = &bytes[start..start + header.entries_bytes() as usize];
        let found = parse_entries(&header, entries).expect("entries");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].type_guid, gpt::ROOT_X86_64);
        assert_eq!(
            found[0].unique_guid.to_string(),
            "954172df-ee9a-aab2-d90a-0ab162ee6bc5"
        );
        assert_eq!(found[1].name, "root-x86-64-verity");
        let data_at = found[0].first_lba.0 as usize * 512;
        assert_eq!(
            &bytes[data_at..data_at + 1_500_000],
            &vec![0xaa; 1_500_000][..]
        );
        let hash_at = found[1].first_lba.0 as usize * 512;
        assert_eq!(&bytes[hash_at..hash_at + 4096], &[0xbb; 4096][..]);
        assert_eq!(data_at % (1 << 20), 0, "aligned");
        let again = dir.path().join("again.img");
        write_disk(&again, &partitions).expect("writes");
        assert_eq!(std::fs::read(&again).expect("read"), bytes, "reproducible");
    }

    #[test]
    fn a_missing_source_is_named_and_leaves_no_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.img");
        let partitions = verity_root_partitions(
            &hash_bytes(),
            &dir.path().join("nope"),
            &dir.path().join("x"),
        );
        let error = write_disk(&disk, &partitions).expect_err("missing");
        assert!(error.to_string().contains("nope"), "{error}");
        assert!(!disk.exists());
    }
}

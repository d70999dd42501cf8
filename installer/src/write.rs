//! Carries the plan's writes out on the held disk, hashing each as it goes, and reads every
//! one back from the disk afterwards: a region whose SHA-256 differs, or a partition table
//! that does not read back as planned, is an error naming it and both hashes.
//!
//! The image is copied block by block and each block is checked against its hash tree, and
//! the tree up to the root hash, on the way: the disk gets the bytes dm-verity will accept,
//! whatever the data device holds beyond them or however it was read.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use xorbang_formats::gpt::{self, GptError, GptHeader, GptPartition};
use xorbang_formats::verity_tree::{TreeCheck, TreeError};

use crate::plan::{Plan, Source, Write};
use crate::running::RunningImage;
use crate::target::{Target, TargetError};

const CHUNK: usize = 1 << 20;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("{} does not match the running image's hash tree", .0.display())]
    Tree(PathBuf, #[source] TreeError),
    #[error("{name} reads back with SHA-256 {found}, but {written} was written")]
    Mismatch {
        name: String,
        found: String,
        written: String,
    },
    #[error("the partition table read back from {}", .0.display())]
    ReadTable(PathBuf, #[source] GptError),
    #[error(
        "the partition table read back from {} differs from the plan: {found}, planned {planned}",
        disk.display()
    )]
    Table {
        disk: PathBuf,
        found: String,
        planned: String,
    },
}

/// A write made, and the SHA-256 of what it wrote.
pub struct Written {
    pub write: Write,
    pub sha256: [u8; 32],
}

/// The hash area, read whole: the writes of the image and the tree both need it.
pub fn read_hash_area(image: &RunningImage) -> Result<Vec<u8>, WriteError> {
    let mut tree = Vec::new();
    File::open(&image.hash_device)
        .and_then(|file| file.take(image.hash_bytes).read_to_end(&mut tree))
        .map_err(|error| WriteError::Read(image.hash_device.clone(), error))?;
    Ok(tree)
}

/// Makes one write.
pub fn write(
    target: &Target,
    write: &Write,
    image: &RunningImage,
    tree: &[u8],
) -> Result<Written, WriteError> {
    let sha256 = match &write.source {
        Source::Image => copy_image(target, write, image, tree)?,
        Source::HashArea => write_bytes(target, write.offset, tree)?,
        Source::File(path) => copy_file(target, write, path)?,
        Source::Zeros => write_zeros(target, write)?,
        Source::Bytes(bytes) => write_bytes(target, write.offset, bytes)?,
    };
    Ok(Written {
        write: write.clone(),
        sha256,
    })
}

fn write_bytes(target: &Target, offset: u64, bytes: &[u8]) -> Result<[u8; 32], WriteError> {
    target.write_at(bytes, offset)?;
    Ok(Sha256::digest(bytes).into())
}

fn write_zeros(target: &Target, write: &Write) -> Result<[u8; 32], WriteError> {
    let zeros = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < write.length {
        let count = chunk_length(write.length - done);
        target.write_at(&zeros[..count], write.offset + done)?;
        hasher.update(&zeros[..count]);
        done += count as u64;
    }
    Ok(hasher.finalize().into())
}

fn copy_file(target: &Target, write: &Write, path: &Path) -> Result<[u8; 32], WriteError> {
    let read_error = |error| WriteError::Read(path.to_owned(), error);
    let mut input = File::open(path).map_err(read_error)?.take(write.length);
    let mut buffer = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < write.length {
        let count = chunk_length(write.length - done);
        input.read_exact(&mut buffer[..count]).map_err(read_error)?;
        target.write_at(&buffer[..count], write.offset + done)?;
        hasher.update(&buffer[..count]);
        done += count as u64;
    }
    Ok(hasher.finalize().into())
}

/// Copies the image, each data block checked against the tree before it is written, and
/// the tree against the root hash at the end.
fn copy_image(
    target: &Target,
    write: &Write,
    image: &RunningImage,
    tree: &[u8],
) -> Result<[u8; 32], WriteError> {
    let device = &image.data_device;
    let tree_error = |error| WriteError::Tree(device.clone(), error);
    let mut check = TreeCheck::new(tree).map_err(tree_error)?;
    let block = usize::try_from(check.data_block_bytes()).unwrap_or(usize::MAX);
    // Whole blocks per chunk: the image is whole blocks.
    let chunk = (CHUNK / block).max(1) * block;
    let read_error = |error| WriteError::Read(device.clone(), error);
    let mut input = File::open(device).map_err(read_error)?.take(write.length);
    let mut buffer = vec![0u8; chunk];
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < write.length {
        let count = usize::try_from(write.length - done).map_or(chunk, |left| left.min(chunk));
        input.read_exact(&mut buffer[..count]).map_err(read_error)?;
        for data_block in buffer[..count].chunks(block) {
            check.data_block(data_block).map_err(tree_error)?;
        }
        target.write_at(&buffer[..count], write.offset + done)?;
        hasher.update(&buffer[..count]);
        done += count as u64;
    }
    check.finish(&image.root_hash).map_err(tree_error)?;
    Ok(hasher.finalize().into())
}

fn chunk_length(left: u64) -> usize {
    usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK))
}

/// Reads a write's region back from the disk and compares its SHA-256.
pub fn verify(target: &Target, written: &Written) -> Result<(), WriteError> {
    let write = &written.write;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < write.length {
        let count = chunk_length(write.length - done);
        let bytes = target
            .read_at(write.offset + done, count)
            .map_err(|error| target.error("read back", error))?;
        if bytes.len() != count {
            return Err(target
                .error("read back", io::ErrorKind::UnexpectedEof.into())
                .into());
        }
        hasher.update(&bytes);
        done += count as u64;
    }
    let found: [u8; 32] = hasher.finalize().into();
    match found == written.sha256 {
        true => Ok(()),
        false => Err(WriteError::Mismatch {
            name: write.name.clone(),
            found: hex(&found),
            written: hex(&written.sha256),
        }),
    }
}

/// Reads the primary GPT back with the formats' reader and compares every entry with the
/// plan, field by field.
pub fn verify_table(target: &Target, plan: &Plan) -> Result<(), WriteError> {
    let disk = target.path().to_owned();
    let read_error = |error| target.error("read back", error);
    let lba1 = target
        .read_at(SECTOR, SECTOR as usize)
        .map_err(read_error)?;
    let table_error = |error| WriteError::ReadTable(disk.clone(), error);
    let header = GptHeader::parse(&lba1).map_err(table_error)?;
    let entries = target
        .read_at(
            header.entries_lba.0 * SECTOR,
            usize::try_from(header.entries_bytes()).unwrap_or(usize::MAX),
        )
        .map_err(read_error)?;
    let found = gpt::parse_entries(&header, &entries).map_err(table_error)?;
    let planned: Vec<GptPartition> = plan
        .partitions
        .iter()
        .map(|partition| GptPartition {
            number: partition.number,
            type_guid: partition.spec.type_guid,
            unique_guid: partition.spec.unique_guid,
            first_lba: partition.spec.first_lba,
            last_lba: partition.spec.last_lba,
            attributes: partition.spec.attributes,
            name: partition.spec.name.clone(),
        })
        .collect();
    compare_table(&disk, header.disk_guid == plan.disk_guid, &found, &planned)
}

fn compare_table(
    disk: &Path,
    same_guid: bool,
    found: &[GptPartition],
    planned: &[GptPartition],
) -> Result<(), WriteError> {
    let differs = |found: String, planned: String| WriteError::Table {
        disk: disk.to_owned(),
        found,
        planned,
    };
    if !same_guid {
        return Err(differs(
            "another disk GUID".into(),
            "the planned one".into(),
        ));
    }
    if found.len() != planned.len() {
        return Err(differs(
            format!("{} partitions", found.len()),
            planned.len().to_string(),
        ));
    }
    match found
        .iter()
        .zip(planned)
        .find(|(found, planned)| found != planned)
    {
        Some((found, planned)) => Err(differs(format!("{found:?}"), format!("{planned:?}"))),
        None => Ok(()),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::gpt::{Guid, Lba};

    #[test]
    fn a_table_that_reads_back_otherwise_names_what_differs() {
        let partition = GptPartition {
            number: 1,
            type_guid: gpt::VAR,
            unique_guid: Guid::from_bytes([1; 16]),
            first_lba: Lba(2048),
            last_lba: Lba(4095),
            attributes: 0,
            name: "var".to_owned(),
        };
        let disk = Path::new("/dev/vdb");
        let planned = [partition.clone()];
        compare_table(disk, true, &planned, &planned).expect("same");
        let mut renamed = partition.clone();
        renamed.name = "state".to_owned();
        let error = compare_table(disk, true, &[renamed], &planned).expect_err("renamed");
        assert!(
            error.to_string().starts_with(
                "the partition table read back from /dev/vdb differs from the plan: GptPartition"
            ),
            "{error}"
        );
        let error = compare_table(disk, true, &[], &planned).expect_err("none");
        assert_eq!(
            error.to_string(),
            "the partition table read back from /dev/vdb differs from the plan: 0 partitions, \
             planned 1"
        );
        assert!(compare_table(disk, false, &planned, &planned).is_err());
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}

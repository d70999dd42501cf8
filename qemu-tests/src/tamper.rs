//! Damaged copies of the verity test disk, made exactly where a read will hit them: one byte
//! of a canary file's data, and one byte of that data's digest in the hash tree. The canary
//! is random bytes, so SquashFS stores it uncompressed and it can be found on the disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use xorbang_formats::gpt::{parse_entries, GptHeader, GptPartition};
use xorbang_formats::verity::{VeritySuperblock, SUPERBLOCK_SIZE};
use xorbang_init::verity::activation::TreeGeometry;

use crate::fixtures::FixtureError;

/// This file's source: the cached image is rebuilt when the recipe changes.
pub const RECIPE: &str = include_str!("tamper.rs");
pub const TAMPERED_DATA: &str = "tampered-data.img";
pub const TAMPERED_HASH: &str = "tampered-hash.img";
pub const TRUNCATED_TREE: &str = "truncated.verity";
/// Where the canary lives in the image (the agent reads it there).
const CANARY: &str = "usr/share/xorbang-test/verity-canary";
const CANARY_BYTES: usize = 256 * 1024;
/// The window searched for on the disk: deep inside the canary, clear of block edges.
const PROBE: std::ops::Range<usize> = 100_000..100_064;

fn other(message: String) -> FixtureError {
    FixtureError::Other(message)
}

fn io_error(path: &Path, source: std::io::Error) -> FixtureError {
    FixtureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Deterministic noise (xorshift64), so the image is the same every time it is built.
fn canary_bytes() -> Vec<u8> {
    noise(0x9e37_79b9_7f4a_7c15, CANARY_BYTES)
}

/// `length` bytes of xorshift64 noise from `seed`: incompressible, and the same every time.
pub fn noise(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

pub fn install_canary(tree: &Path) -> Result<(), FixtureError> {
    let path = tree.join(CANARY);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| io_error(parent, error))?;
    }
    std::fs::write(&path, canary_bytes()).map_err(|error| io_error(&path, error))
}

/// Writes the damaged copies of `dir/disk.img` and the truncated tree into `dir`.
pub fn make_variants(dir: &Path) -> Result<(), FixtureError> {
    let disk_path = dir.join("disk.img");
    let disk = std::fs::read(&disk_path).map_err(|error| io_error(&disk_path, error))?;
    let [data, hash] = verity_partitions(&disk)?;
    let data_start = data.first_lba.0 * 512;
    let hash_start = hash.first_lba.0 * 512;
    let canary = canary_bytes();
    let found = find(&disk, &canary[PROBE])
        .ok_or_else(|| other("the canary is not on the disk: was it compressed?".into()))?;
    let data_offset = found as u64 - data_start;

    copy_with_flip(&disk_path, &dir.join(TAMPERED_DATA), found as u64)?;

    let superblock =
        VeritySuperblock::parse(&disk[hash_start as usize..hash_start as usize + SUPERBLOCK_SIZE])
            .map_err(|error| other(format!("verity superblock on the test disk: {error}")))?;
    let block = data_offset / superblock.data_block_size.as_u64();
    let digest = TreeGeometry::new(&superblock)
        .data_digest_offset(block)
        .ok_or_else(|| other("the test image is too small to have a hash tree".into()))?;
    copy_with_flip(&disk_path, &dir.join(TAMPERED_HASH), hash_start + digest)?;

    let tree_path = dir.join("root.squashfs.verity");
    let tree = std::fs::read(&tree_path).map_err(|error| io_error(&tree_path, error))?;
    let half = (tree.len() / 2) & !4095;
    let truncated = dir.join(TRUNCATED_TREE);
    std::fs::write(&truncated, &tree[..half]).map_err(|error| io_error(&truncated, error))
}

fn verity_partitions(disk: &[u8]) -> Result<[GptPartition; 2], FixtureError> {
    let header = GptHeader::parse(&disk[512..1024])
        .map_err(|error| other(format!("test disk GPT: {error}")))?;
    let start = header.entries_lba.0 as usize * 512;
    let entries = &disk[start..start + header.entries_bytes() as usize];
    let partitions = parse_entries(&header, entries)
        .map_err(|error| other(format!("test disk GPT: {error}")))?;
    <[GptPartition; 2]>::try_from(partitions).map_err(|found| {
        other(format!(
            "the test disk has {} partitions, expected 2",
            found.len()
        ))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Copies `from` to `to` with the byte at `offset` inverted.
fn copy_with_flip(from: &Path, to: &Path, offset: u64) -> Result<(), FixtureError> {
    std::fs::copy(from, to).map_err(|error| io_error(to, error))?;
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(to)
        .map_err(|error| io_error(to, error))?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut byte))
        .and_then(|()| file.seek(SeekFrom::Start(offset)))
        .and_then(|_| file.write_all(&[!byte[0]]))
        .map_err(|error| io_error(to, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_is_the_same_every_time_and_incompressible_looking() {
        let canary = canary_bytes();
        assert_eq!(canary, canary_bytes());
        let distinct = canary
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 250, "{distinct} distinct byte values");
        assert_eq!(find(&canary, &canary[PROBE]), Some(PROBE.start));
    }

    #[test]
    fn flipping_changes_exactly_one_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("a");
        let to = dir.path().join("b");
        std::fs::write(&from, [1u8, 2, 3, 4]).expect("write");
        copy_with_flip(&from, &to, 2).expect("flips");
        assert_eq!(std::fs::read(&to).expect("read"), [1u8, 2, !3, 4]);
    }
}

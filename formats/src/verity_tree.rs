//! The dm-verity hash tree as veritysetup writes it and the kernel reads it: where each
//! level lies (the top level first, right after the superblock's block), how a block is
//! hashed (salted), and a full check of data and tree against a root hash. PID 1 checks only
//! the top block before it maps the root; the updater checks everything it wrote.

use sha2::{Digest, Sha256, Sha512};

use crate::verity::{self, HashAlgorithm, HashType, RootHash, SuperblockError, VeritySuperblock};

/// Where the levels of a hash tree lie on the hash device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeGeometry {
    hash_block: u64,
    /// Bytes per digest slot, and log2 of the slots per hash block.
    slot: u64,
    per_block_bits: u32,
    /// Absolute hash-block index of each level's first block, bottom level first.
    level_starts: Vec<u64>,
    /// Hash blocks of each level, bottom level first.
    level_blocks: Vec<u64>,
}

impl TreeGeometry {
    pub fn new(superblock: &VeritySuperblock) -> Self {
        let hash_block = superblock.hash_block_size.as_u64();
        // Format 1 gives each digest a power-of-two slot; the kernel then rounds the count
        // per block down to a power of two either way.
        let digest = superblock.algorithm.digest_size() as u64;
        let slot = match superblock.hash_type {
            HashType::Normal => digest.next_power_of_two(),
            HashType::ChromeOs => digest,
        };
        let per_block_bits = (hash_block / slot).ilog2();
        let data_blocks = superblock.data_blocks;
        // The kernel's count: levels until one block's worth of hashes covers all data.
        let mut levels = 0u32;
        while per_block_bits * levels < 64
            && data_blocks.saturating_sub(1) >> (per_block_bits * levels) != 0
        {
            levels += 1;
        }
        let level_blocks: Vec<u64> = (1..=levels)
            .map(|level| {
                let shift = per_block_bits * level;
                if shift >= 64 {
                    1
                } else {
                    (data_blocks - 1) / (1u64 << shift) + 1
                }
            })
            .collect();
        let mut position = verity::hash_start_block(0, superblock.hash_block_size, true);
        let mut level_starts = vec![0; level_blocks.len()];
        for level in (0..level_blocks.len()).rev() {
            level_starts[level] = position;
            position += level_blocks[level];
        }
        Self {
            hash_block,
            slot,
            per_block_bits,
            level_starts,
            level_blocks,
        }
    }

    /// The byte offset on the hash device of the digest of block `index` of the level below
    /// `level` (level 0 holds the digests of data blocks), if that level exists.
    pub fn digest_offset(&self, level: usize, index: u64) -> Option<u64> {
        let start = self.level_starts.get(level)?;
        let per_block = 1u64 << self.per_block_bits;
        let block = start + index / per_block;
        Some(block * self.hash_block + (index % per_block) * self.slot)
    }

    /// The byte offset of data block `index`'s digest in the bottom level.
    pub fn data_digest_offset(&self, data_block: u64) -> Option<u64> {
        self.digest_offset(0, data_block)
    }

    /// The byte just past the tree: how large the hash device must be.
    pub fn end_bytes(&self) -> u64 {
        let end_block = match (self.level_starts.first(), self.level_blocks.first()) {
            (Some(start), Some(blocks)) => start + blocks,
            // No tree: only the superblock's block.
            _ => 1,
        };
        end_block * self.hash_block
    }

    /// Bytes per hash block.
    pub fn hash_block_bytes(&self) -> u64 {
        self.hash_block
    }

    /// The absolute index of the top level's only block, if there is a tree.
    pub fn top_block(&self) -> Option<u64> {
        self.level_starts.last().copied()
    }
}

/// A block's digest as the tree holds it: format 1 hashes the salt first, format 0 (Chrome
/// OS) last.
pub fn salted_digest(superblock: &VeritySuperblock, block: &[u8]) -> Vec<u8> {
    let salt = superblock.salt.as_bytes();
    let (before, after): (&[u8], &[u8]) = match superblock.hash_type {
        HashType::Normal => (salt, &[]),
        HashType::ChromeOs => (&[], salt),
    };
    match superblock.algorithm {
        HashAlgorithm::Sha256 => Sha256::new()
            .chain_update(before)
            .chain_update(block)
            .chain_update(after)
            .finalize()
            .to_vec(),
        HashAlgorithm::Sha512 => Sha512::new()
            .chain_update(before)
            .chain_update(block)
            .chain_update(after)
            .finalize()
            .to_vec(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("the hash tree's superblock")]
    Superblock(#[source] SuperblockError),
    #[error("the hash tree is {found} bytes, its superblock needs {needed}")]
    Short { found: u64, needed: u64 },
    #[error("data block {index} does not match its digest in the hash tree")]
    DataBlock { index: u64 },
    #[error("hash block {index} of level {level} does not match its digest in the level above")]
    HashBlock { level: usize, index: u64 },
    #[error("the tree's top gives root hash {found}, not {expected}")]
    Root { found: String, expected: RootHash },
    #[error("{seen} data blocks were checked, the superblock says {expected}")]
    Incomplete { seen: u64, expected: u64 },
}

/// A full check: feed every data block in order, then `finish` with the root hash.
pub struct TreeCheck<'a> {
    superblock: VeritySuperblock,
    geometry: TreeGeometry,
    tree: &'a [u8],
    seen: u64,
    /// The digest of a one-block image's only block (it has no tree).
    single: Option<Vec<u8>>,
}

impl<'a> TreeCheck<'a> {
    /// `tree` is the whole hash device as written (superblock first).
    pub fn new(tree: &'a [u8]) -> Result<Self, TreeError> {
        let superblock = VeritySuperblock::parse(tree).map_err(TreeError::Superblock)?;
        let geometry = TreeGeometry::new(&superblock);
        let found = tree.len() as u64;
        if found < geometry.end_bytes() {
            return Err(TreeError::Short {
                found,
                needed: geometry.end_bytes(),
            });
        }
        Ok(Self {
            superblock,
            geometry,
            tree,
            seen: 0,
            single: None,
        })
    }

    /// Bytes of data the tree covers, and the size of each block to feed.
    pub fn data_bytes(&self) -> u64 {
        self.superblock.data_blocks * self.data_block_bytes()
    }

    pub fn data_block_bytes(&self) -> u64 {
        self.superblock.data_block_size.as_u64()
    }

    /// Checks the next data block against its digest in the bottom level.
    pub fn data_block(&mut self, block: &[u8]) -> Result<(), TreeError> {
        let index = self.seen;
        let digest = salted_digest(&self.superblock, block);
        self.seen += 1;
        match self.geometry.data_digest_offset(index) {
            Some(offset) if self.slot_holds(offset, &digest) => Ok(()),
            Some(_) => Err(TreeError::DataBlock { index }),
            None => {
                self.single = Some(digest);
                Ok(())
            }
        }
    }

    /// Checks every level against the one above and the top against `root_hash`.
    pub fn finish(self, root_hash: &RootHash) -> Result<(), TreeError> {
        if self.seen != self.superblock.data_blocks {
            return Err(TreeError::Incomplete {
                seen: self.seen,
                expected: self.superblock.data_blocks,
            });
        }
        let levels = self.geometry.level_blocks.len();
        for level in 0..levels.saturating_sub(1) {
            for index in 0..self.geometry.level_blocks[level] {
                let digest = salted_digest(&self.superblock, self.hash_block(level, index));
                let offset = self.geometry.digest_offset(level + 1, index);
                if !offset.is_some_and(|offset| self.slot_holds(offset, &digest)) {
                    return Err(TreeError::HashBlock { level, index });
                }
            }
        }
        let top = match levels {
            0 => self.single.clone().unwrap_or_default(),
            _ => salted_digest(&self.superblock, self.hash_block(levels - 1, 0)),
        };
        if top != root_hash.as_bytes() {
            return Err(TreeError::Root {
                found: top.iter().map(|byte| format!("{byte:02x}")).collect(),
                expected: root_hash.clone(),
            });
        }
        Ok(())
    }

    fn hash_block(&self, level: usize, index: u64) -> &[u8] {
        let start = (self.geometry.level_starts[level] + index) * self.geometry.hash_block;
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(start + self.geometry.hash_block).unwrap_or(usize::MAX);
        // `new` checked the tree holds every level.
        self.tree.get(range).unwrap_or_default()
    }

    fn slot_holds(&self, offset: u64, digest: &[u8]) -> bool {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        self.tree.get(start..start.saturating_add(digest.len())) == Some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::Guid;
    use crate::verity::{BlockSize, Salt};

    fn superblock(data_blocks: u64, hash_block: u32) -> VeritySuperblock {
        VeritySuperblock {
            hash_type: HashType::Normal,
            uuid: Guid::from_bytes([1; 16]),
            algorithm: HashAlgorithm::Sha256,
            data_block_size: BlockSize::new(4096).expect("size"),
            hash_block_size: BlockSize::new(hash_block).expect("size"),
            data_blocks,
            salt: Salt::new(vec![7; 32]).expect("salt"),
        }
    }

    #[test]
    fn one_block_has_no_tree() {
        let geometry = TreeGeometry::new(&superblock(1, 4096));
        assert_eq!(geometry.top_block(), None);
        assert_eq!(geometry.end_bytes(), 4096);
    }

    #[test]
    fn levels_are_stored_top_first_after_the_superblock() {
        // 4096-byte hash blocks hold 128 sha256 digests: 20000 blocks need 157 + 2 + 1.
        let geometry = TreeGeometry::new(&superblock(20_000, 4096));
        assert_eq!(geometry.level_blocks, [157, 2, 1]);
        assert_eq!(geometry.level_starts, [4, 2, 1]);
        assert_eq!(geometry.top_block(), Some(1));
        assert_eq!(geometry.end_bytes(), (4 + 157) * 4096);
        let exact = TreeGeometry::new(&superblock(128, 4096));
        assert_eq!(exact.level_blocks, [1]);
        // Data block 130 is the third digest of the bottom level's second block.
        assert_eq!(geometry.data_digest_offset(130), Some(5 * 4096 + 2 * 32));
        assert_eq!(geometry.digest_offset(1, 129), Some(3 * 4096 + 32));
    }

    /// A tree built here the way veritysetup lays it out, for `data`, with 512-byte hash
    /// blocks (16 digests each: three levels for a few hundred data blocks).
    const HASH_BLOCK: u64 = 512;

    fn build_tree(data: &[u8], data_blocks: u64) -> (Vec<u8>, RootHash) {
        let superblock = superblock(data_blocks, HASH_BLOCK as u32);
        let geometry = TreeGeometry::new(&superblock);
        let mut tree = vec![0u8; geometry.end_bytes() as usize];
        tree[..verity::SUPERBLOCK_SIZE].copy_from_slice(&superblock.to_bytes());
        for (index, block) in data.chunks(4096).enumerate() {
            if let Some(offset) = geometry.data_digest_offset(index as u64) {
                let digest = salted_digest(&superblock, block);
                tree[offset as usize..offset as usize + 32].copy_from_slice(&digest);
            }
        }
        let levels = geometry.level_blocks.len();
        for level in 0..levels.saturating_sub(1) {
            for index in 0..geometry.level_blocks[level] {
                let start = ((geometry.level_starts[level] + index) * HASH_BLOCK) as usize;
                let digest = salted_digest(&superblock, &tree[start..start + HASH_BLOCK as usize]);
                let offset = geometry.digest_offset(level + 1, index).expect("level") as usize;
                tree[offset..offset + 32].copy_from_slice(&digest);
            }
        }
        let top = match geometry.top_block() {
            Some(block) => {
                let start = (block * HASH_BLOCK) as usize;
                salted_digest(&superblock, &tree[start..start + HASH_BLOCK as usize])
            }
            None => salted_digest(&superblock, &data[..4096]),
        };
        (tree, RootHash::from_bytes(top).expect("hash"))
    }

    fn check(tree: &[u8], data: &[u8], root: &RootHash) -> Result<(), TreeError> {
        let mut check = TreeCheck::new(tree)?;
        for block in data.chunks(4096) {
            check.data_block(block)?;
        }
        check.finish(root)
    }

    #[test]
    fn a_full_check_accepts_the_tree_and_names_what_differs() {
        for blocks in [1u64, 2, 16, 17, 300] {
            let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 7 % 251) as u8).collect();
            let (tree, root) = build_tree(&data, blocks);
            check(&tree, &data, &root).unwrap_or_else(|error| panic!("{blocks}: {error}"));
            let mut bad_data = data.clone();
            bad_data[(blocks as usize - 1) * 4096 + 5] ^= 1;
            let error = check(&tree, &bad_data, &root).expect_err("data changed");
            match blocks {
                1 => assert!(matches!(error, TreeError::Root { .. }), "{error}"),
                _ => assert_eq!(error, TreeError::DataBlock { index: blocks - 1 }),
            }
        }
        let data = vec![3u8; 300 * 4096];
        let (mut tree, root) = build_tree(&data, 300);
        let geometry = TreeGeometry::new(&superblock(300, HASH_BLOCK as u32));
        assert_eq!(geometry.level_blocks, [19, 2, 1]);
        let offset = geometry.data_digest_offset(0).expect("tree") as usize;
        tree[offset] ^= 1;
        assert_eq!(
            check(&tree, &data, &root),
            Err(TreeError::DataBlock { index: 0 })
        );
        tree[offset] ^= 1;
        // A byte of the bottom level's last block past its digests: the level above catches it.
        let unused = (geometry.data_digest_offset(299).expect("tree") + 32) as usize;
        let last = geometry.end_bytes() as usize - 1;
        tree[last] ^= 1;
        assert!(unused < last);
        let error = check(&tree, &data, &root).expect_err("slack changed");
        assert!(
            matches!(error, TreeError::HashBlock { level: 0, .. }),
            "{error}"
        );
        let short = &tree[..tree.len() - HASH_BLOCK as usize];
        assert!(matches!(
            TreeCheck::new(short),
            Err(TreeError::Short { .. })
        ));
        let mut fewer = TreeCheck::new(&tree).expect("tree");
        fewer.data_block(&data[..4096]).expect("first block");
        assert_eq!(
            fewer.finish(&root),
            Err(TreeError::Incomplete {
                seen: 1,
                expected: 300
            })
        );
    }
}

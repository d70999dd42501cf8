//! Little-endian integers at byte offsets of on-disk structures (GPT, verity superblock,
//! filesystem superblocks, PE and ELF headers): the one reader of the workspace. On a slice
//! of unknown length a read is `None` when the bytes end first, so a truncated input is an
//! error of the caller's format, never a panic; on a [`Block`] whose length the caller has
//! already checked, reads at constant offsets are proven in bounds by the compiler.

/// `N` bytes at `at`.
pub fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_le_bytes)
}

pub fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_le_bytes)
}

pub fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    array(bytes, at).map(u64::from_le_bytes)
}

/// A structure of known size (a GPT header, a verity superblock): every read is at a
/// constant offset that the compiler checks against `N`.
#[derive(Clone, Copy)]
pub struct Block<'a, const N: usize>(pub &'a [u8; N]);

impl<const N: usize> Block<'_, N> {
    pub fn array<const AT: usize, const LEN: usize>(self) -> [u8; LEN] {
        const { assert!(AT + LEN <= N, "read past the end of the block") };
        let mut out = [0; LEN];
        out.copy_from_slice(&self.0[AT..AT + LEN]);
        out
    }

    pub fn le_u16<const AT: usize>(self) -> u16 {
        u16::from_le_bytes(self.array::<AT, 2>())
    }

    pub fn le_u32<const AT: usize>(self) -> u32 {
        u32::from_le_bytes(self.array::<AT, 4>())
    }

    pub fn le_u64<const AT: usize>(self) -> u64 {
        u64::from_le_bytes(self.array::<AT, 8>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_offsets_and_refuses_short_input() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le_u16(&bytes, 0), Some(0x0201));
        assert_eq!(le_u32(&bytes, 1), Some(0x0504_0302));
        assert_eq!(le_u64(&bytes, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(le_u64(&bytes, 2), None);
        assert_eq!(le_u16(&bytes, usize::MAX), None);
        assert_eq!(array::<0>(&bytes, 9), Some([]));
        let block = Block(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(block.le_u16::<7>(), 0x0908);
        assert_eq!(block.le_u64::<1>(), 0x0908_0706_0504_0302);
        assert_eq!(block.array::<2, 3>(), [3, 4, 5]);
    }
}

//! The crate's only unsafe code: the one ioctl that asks the kernel to read a disk's new
//! partition table, through rustix's typed `Ioctl` (no libc, no raw pointers). Opening the
//! disk exclusively, locking it and sizing it go through rustix's safe functions elsewhere.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;

use rustix::ioctl::{opcode, NoArg, Opcode};

/// include/uapi/linux/fs.h:
/// ```c
/// #define BLKRRPART  _IO(0x12,95) /* re-read partition table */
/// ```
/// No argument; fails with EBUSY while a partition of the disk is open, and with EINVAL on a
/// device that has no partitions (a loop device without partition scanning).
const BLKRRPART: Opcode = opcode::none(0x12, 95);

/// The kernel's own number for it, as a C program including <linux/fs.h> prints it.
const _: () = assert!(BLKRRPART == 0x125f);

/// Makes the kernel drop the disk's partition devices and create them from its table again.
pub fn reread_partition_table(disk: impl AsFd) -> io::Result<()> {
    // SAFETY: `disk` is a live descriptor for the borrow's duration, and BLKRRPART takes no
    // argument: the kernel reads and writes no memory of ours (block/ioctl.c handles it by
    // rescanning the disk it was issued on).
    let request = unsafe { NoArg::<BLKRRPART>::new() };
    // SAFETY: as above; `NoArg` passes no pointer.
    unsafe { rustix::ioctl::ioctl(disk, request) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_disk_is_refused_by_the_kernel() {
        let file = tempfile::tempfile().expect("tempfile");
        let error = reread_partition_table(&file).expect_err("not a block device");
        assert_eq!(
            error.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error())
        );
    }
}

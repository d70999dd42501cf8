//! The checks made before a byte is written, each a refusal of one line naming the device
//! and the cause: the target is a whole disk, not the one the system runs from, not in use,
//! holds nothing (unless `--wipe`), and is large enough. Every check here reads the given
//! sysfs and procfs trees and bytes handed in, so each is tested on a fake machine.

use std::path::{Path, PathBuf};

use xorbang_formats::fs_probe::{self, FsKind};
use xorbang_formats::gpt::{self, GptHeader};

use crate::block::{self, BlockDevice, DevNum, Mount, Sysfs};
use crate::units::Size;

/// What stops an install before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{} is not a block device", .0.display())]
    NotBlockDevice(PathBuf),
    #[error("{} is block device {number}, which {} does not list", path.display(), sys.display())]
    Unknown {
        path: PathBuf,
        number: DevNum,
        sys: PathBuf,
    },
    #[error("{} is a partition, not a whole disk (its disk is {})", path.display(), disk.display())]
    Partition { path: PathBuf, disk: PathBuf },
    #[error("{} holds the running system ({reason})", disk.display())]
    RunningSystem { disk: PathBuf, reason: String },
    #[error("{} is mounted at {mount_point}", device.display())]
    Mounted {
        device: PathBuf,
        mount_point: String,
    },
    #[error("{} is in use as swap", .0.display())]
    Swap(PathBuf),
    #[error("{} is held by {holder}", device.display())]
    Held { device: PathBuf, holder: String },
    #[error("{} is the backing device of {}", device.display(), loop_device.display())]
    LoopBacking {
        device: PathBuf,
        loop_device: PathBuf,
    },
    #[error("{} is in use: the kernel refuses to open it exclusively", .disk.display())]
    Busy {
        disk: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is locked by another program (udev or a partitioning tool); try again when it is done", .0.display())]
    Locked(PathBuf),
    #[error("{} has {found}; pass --wipe to overwrite it", disk.display())]
    Contents { disk: PathBuf, found: Found },
    #[error("{} has {bytes}-byte logical sectors; the installer writes a GPT of 512-byte sectors", disk.display())]
    SectorSize { disk: PathBuf, bytes: u64 },
    #[error("{} is {size}; the layout needs {needed}", disk.display())]
    TooSmall {
        disk: PathBuf,
        size: Size,
        needed: Size,
    },
}

/// Check 1: `path` (device number `number`) is a whole disk; returns it as sysfs knows it.
pub fn whole_disk(sys: &Sysfs, path: &Path, number: DevNum) -> Result<BlockDevice, Refusal> {
    let device = sys.by_devnum(number).ok_or_else(|| Refusal::Unknown {
        path: path.to_owned(),
        number,
        sys: sys.root().join("dev/block"),
    })?;
    if device.is_partition() {
        return Err(Refusal::Partition {
            path: path.to_owned(),
            disk: block::dev_node(&device.disk),
        });
    }
    Ok(device)
}

/// A device the running system is built on, and how the boot report or the mount table
/// names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemDevice {
    pub path: PathBuf,
    pub role: String,
}

/// Check 2: the target is not below any device the running system is built on: the devices
/// the boot report names (the verity data and hash devices, the root), and the devices of
/// what is mounted, through every layer. A netbooted root is a loop device over a file in
/// memory and has no disk below it.
pub fn not_running_system(
    sys: &Sysfs,
    disk: &BlockDevice,
    disk_path: &Path,
    system: &[SystemDevice],
    mounts: &[Mount],
) -> Result<(), Refusal> {
    let from_report = system
        .iter()
        .filter_map(|used| Some((sys.by_path(&used.path)?, used.role.clone())));
    // A file system straight on the disk or a partition of it is check 3's, unless it is
    // the root: here are the root and what is mounted through other layers (device-mapper,
    // md, loop devices over files on it).
    let from_mounts = mounts
        .iter()
        .filter(|mount| !mount.device.is_anonymous())
        .filter_map(|mount| {
            let device = sys.by_devnum(mount.device)?;
            let root = mount.mount_point == "/";
            (root || device.disk != disk.name)
                .then(|| (device, format!("mounted at {}", mount.mount_point)))
        });
    for (device, role) in from_report.chain(from_mounts) {
        if let Some((_, chain)) = sys
            .disks_below(&device)
            .into_iter()
            .find(|(below, _)| *below == disk.name)
        {
            let via = match chain == device.name {
                true => String::new(),
                false => format!(", {chain}"),
            };
            return Err(Refusal::RunningSystem {
                disk: disk_path.to_owned(),
                reason: format!("{}: {role}{via}", device.node().display()),
            });
        }
    }
    Ok(())
}

/// Check 3: nothing uses the disk or any of its partitions: mounted (mountinfo), swap,
/// stacked on (`holders/`: device-mapper, md), or read by a loop device.
pub fn not_in_use(
    sys: &Sysfs,
    disk: &BlockDevice,
    mounts: &[Mount],
    swaps: &[String],
) -> Result<(), Refusal> {
    let mut devices = vec![disk.clone()];
    devices.extend(sys.partitions(disk));
    for device in &devices {
        let node = device.node();
        let number = read_devnum(sys, &device.name);
        if let Some(mount) = mounts
            .iter()
            .find(|mount| Some(mount.device) == number || Path::new(&mount.source) == node)
        {
            return Err(Refusal::Mounted {
                device: node,
                mount_point: mount.mount_point.clone(),
            });
        }
        if swaps.iter().any(|swap| {
            Path::new(swap) == node
                || sys
                    .by_path(Path::new(swap))
                    .is_some_and(|used| used.name == device.name)
        }) {
            return Err(Refusal::Swap(node));
        }
        if let Some(holder) = sys.holders(device).into_iter().next() {
            return Err(Refusal::Held {
                device: node,
                holder,
            });
        }
        if let Some((loop_device, _)) = sys
            .loop_devices()
            .into_iter()
            .find(|(_, backing)| *backing == node)
        {
            return Err(Refusal::LoopBacking {
                device: node,
                loop_device: loop_device.node(),
            });
        }
    }
    Ok(())
}

fn read_devnum(sys: &Sysfs, name: &str) -> Option<DevNum> {
    std::fs::read_to_string(sys.root().join("class/block").join(name).join("dev"))
        .ok()?
        .parse()
        .ok()
}

/// What a disk already holds (check 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A GPT whose header reads; its partition count and the file systems at their starts,
    /// or why its entries do not read.
    Gpt {
        partitions: Result<usize, String>,
        file_systems: Vec<(u32, FsKind)>,
    },
    /// "EFI PART" at LBA 1, but the header does not check out.
    DamagedGpt(String),
    /// A backup GPT header at the last sector, with no primary.
    BackupGpt,
    FileSystem(FsKind),
    /// The boot signature 0x55AA at the end of sector 0.
    Mbr,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gpt {
                partitions: Ok(count),
                file_systems,
            } => {
                let noun = if *count == 1 {
                    "partition"
                } else {
                    "partitions"
                };
                write!(f, "a GPT partition table ({count} {noun}")?;
                let listed: Vec<String> = file_systems
                    .iter()
                    .map(|(number, kind)| format!("{kind} on {number}"))
                    .collect();
                if !listed.is_empty() {
                    write!(f, ": {}", listed.join(", "))?;
                }
                f.write_str(")")
            }
            Self::Gpt {
                partitions: Err(reason),
                ..
            } => write!(
                f,
                "a GPT partition table (its entries do not read: {reason})"
            ),
            Self::DamagedGpt(reason) => write!(f, "a damaged GPT header at sector 1 ({reason})"),
            Self::BackupGpt => f.write_str("a backup GPT header at its last sector"),
            Self::FileSystem(kind) => write!(f, "a {kind} file system"),
            Self::Mbr => f.write_str("an MBR (boot signature 0x55AA in sector 0)"),
        }
    }
}

/// How many bytes of the disk's start [`existing_contents`] wants: 64 KiB, which holds the
/// MBR, the GPT header and the 16 KiB entry array every tool writes (and every superblock
/// the probe knows).
pub const HEAD_BYTES: usize = 64 * 1024;
const SECTOR: usize = 512;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xaa];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// Check 5: what the disk holds, from its first [`HEAD_BYTES`] (`head`) and its last sector
/// (`tail`); `read_at(offset, length)` reads more (a GPT's entries beyond the head, the
/// start of each partition). `None` for a disk that holds nothing we know of.
pub fn existing_contents(
    head: &[u8],
    tail: &[u8],
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Option<Found>> {
    let lba1 = head.get(SECTOR..2 * SECTOR).unwrap_or_default();
    match GptHeader::parse(lba1) {
        Ok(header) => return gpt_contents(&header, read_at).map(Some),
        Err(error) if lba1.starts_with(GPT_SIGNATURE) => {
            return Ok(Some(Found::DamagedGpt(error.to_string())))
        }
        Err(_) => {}
    }
    if tail.starts_with(GPT_SIGNATURE) {
        return Ok(Some(Found::BackupGpt));
    }
    if let Some(info) = fs_probe::probe(head) {
        return Ok(Some(Found::FileSystem(info.kind)));
    }
    if head.get(SECTOR - 2..SECTOR) == Some(&BOOT_SIGNATURE[..]) {
        return Ok(Some(Found::Mbr));
    }
    Ok(None)
}

fn gpt_contents(
    header: &GptHeader,
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Found> {
    let length = usize::try_from(header.entries_bytes()).unwrap_or(usize::MAX);
    let entries = read_at(header.entries_lba.0 * SECTOR as u64, length)?;
    let partitions = match gpt::parse_entries(header, &entries) {
        Ok(partitions) => partitions,
        Err(error) => {
            return Ok(Found::Gpt {
                partitions: Err(error.to_string()),
                file_systems: Vec::new(),
            })
        }
    };
    let mut file_systems = Vec::new();
    for partition in &partitions {
        let start = read_at(partition.first_lba.0 * SECTOR as u64, HEAD_BYTES)?;
        if let Some(info) = fs_probe::probe(&start) {
            file_systems.push((partition.number, info.kind));
        }
    }
    Ok(Found::Gpt {
        partitions: Ok(partitions.len()),
        file_systems,
    })
}

/// Check 6: the disk holds the layout.
pub fn large_enough(disk: &Path, disk_bytes: u64, needed: u64) -> Result<(), Refusal> {
    match disk_bytes >= needed {
        true => Ok(()),
        false => Err(Refusal::TooSmall {
            disk: disk.to_owned(),
            size: Size(disk_bytes),
            needed: Size(needed),
        }),
    }
}

/// The GPT the installer writes counts 512-byte sectors.
pub fn sector_size(sys: &Sysfs, disk: &BlockDevice, path: &Path) -> Result<(), Refusal> {
    match sys.logical_block_size(disk) {
        Some(bytes) if bytes != SECTOR as u64 => Err(Refusal::SectorSize {
            disk: path.to_owned(),
            bytes,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::fake::FakeSys;
    use crate::block::parse_mountinfo;
    use xorbang_formats::gpt::{Guid, Lba, PartitionSpec, SectorSize};

    fn vdb(sys: &FakeSys) {
        sys.disk("vdb", "252:16", 4 << 30);
        sys.partition("vdb", 1, "252:17", 64 << 20);
        sys.partition("vdb", 2, "252:18", 1 << 30);
    }

    fn number(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    #[test]
    fn a_partition_is_refused_naming_its_disk() {
        let sys = FakeSys::new();
        vdb(&sys);
        let sysfs = sys.sysfs();
        let disk = whole_disk(&sysfs, Path::new("/dev/vdb"), number(252, 16)).expect("disk");
        assert_eq!(disk.name, "vdb");
        let error = whole_disk(&sysfs, Path::new("/dev/vdb1"), number(252, 17)).expect_err("part");
        assert_eq!(
            error.to_string(),
            "/dev/vdb1 is a partition, not a whole disk (its disk is /dev/vdb)"
        );
        let error = whole_disk(&sysfs, Path::new("/dev/odd"), number(9, 9)).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            format!(
                "/dev/odd is block device 9:9, which {}/dev/block does not list",
                sys.sys().display()
            )
        );
    }

    fn system(data: &str, hash: &str) -> Vec<SystemDevice> {
        vec![
            SystemDevice {
                path: PathBuf::from(data),
                role: "the running image's verity data device".to_owned(),
            },
            SystemDevice {
                path: PathBuf::from(hash),
                role: "the running image's verity hash device".to_owned(),
            },
        ]
    }

    #[test]
    fn the_disk_the_system_runs_from_is_refused() {
        let sys = FakeSys::new();
        sys.disk("vda", "252:0", 8 << 30);
        sys.partition("vda", 2, "252:2", 1 << 30);
        sys.partition("vda", 3, "252:3", 16 << 20);
        sys.partition("vda", 6, "252:6", 256 << 20);
        sys.disk("dm-0", "253:0", 1 << 30);
        sys.stack("dm-0", "vda2");
        sys.stack("dm-0", "vda3");
        vdb(&sys);
        let sysfs = sys.sysfs();
        let vda = sysfs.by_name("vda").expect("vda");
        let error = not_running_system(
            &sysfs,
            &vda,
            Path::new("/dev/vda"),
            &system("/dev/vda2", "/dev/vda3"),
            &[],
        )
        .expect_err("running from it");
        assert_eq!(
            error.to_string(),
            "/dev/vda holds the running system (/dev/vda2: the running image's verity data device)"
        );
        // Known through the mount table alone: / on the verity mapping over vda2.
        let mounts = parse_mountinfo("1 0 253:0 / / ro - squashfs /dev/dm-0 ro\n");
        let error = not_running_system(&sysfs, &vda, Path::new("/dev/vda"), &[], &mounts)
            .expect_err("root on it");
        assert_eq!(
            error.to_string(),
            "/dev/vda holds the running system (/dev/dm-0: mounted at /, dm-0 on vda2)"
        );
        let target = sysfs.by_name("vdb").expect("vdb");
        not_running_system(
            &sysfs,
            &target,
            Path::new("/dev/vdb"),
            &system("/dev/vda2", "/dev/vda3"),
            &mounts,
        )
        .expect("another disk");
        // Through another layer: an encrypted /home on vdb2.
        sys.disk("dm-1", "253:1", 1 << 30);
        sys.stack("dm-1", "vdb2");
        let home = parse_mountinfo("1 0 253:1 / /home rw - ext4 /dev/mapper/home rw\n");
        let error = not_running_system(&sysfs, &target, Path::new("/dev/vdb"), &[], &home)
            .expect_err("home on it");
        assert_eq!(
            error.to_string(),
            "/dev/vdb holds the running system (/dev/dm-1: mounted at /home, dm-1 on vdb2)"
        );
    }

    #[test]
    fn a_netbooted_root_has_no_disk() {
        let sys = FakeSys::new();
        sys.disk("loop0", "7:0", 200 << 20);
        sys.disk("loop1", "7:1", 2 << 20);
        sys.loop_backing("loop0", "/run/xorbang/netboot/root.squashfs");
        sys.loop_backing("loop1", "/run/xorbang/netboot/root.squashfs.verity");
        vdb(&sys);
        let sysfs = sys.sysfs();
        let target = sysfs.by_name("vdb").expect("vdb");
        not_running_system(
            &sysfs,
            &target,
            Path::new("/dev/vdb"),
            &system("/dev/loop0", "/dev/loop1"),
            &[],
        )
        .expect("nothing below the loops");
        // Installing onto the running image's own loop device is refused.
        let looped = sysfs.by_name("loop0").expect("loop0");
        let error = not_running_system(
            &sysfs,
            &looped,
            Path::new("/dev/loop0"),
            &system("/dev/loop0", "/dev/loop1"),
            &[],
        )
        .expect_err("the image itself");
        assert_eq!(
            error.to_string(),
            "/dev/loop0 holds the running system (/dev/loop0: the running image's verity data \
             device)"
        );
    }

    #[test]
    fn mounted_swapped_held_and_looped_partitions_are_refused() {
        let sys = FakeSys::new();
        vdb(&sys);
        let sysfs = sys.sysfs();
        let disk = sysfs.by_name("vdb").expect("vdb");
        not_in_use(&sysfs, &disk, &[], &[]).expect("unused");

        let mounts = parse_mountinfo("40 1 252:18 / /mnt rw - ext4 /dev/vdb2 rw\n");
        let error = not_in_use(&sysfs, &disk, &mounts, &[]).expect_err("mounted");
        assert_eq!(error.to_string(), "/dev/vdb2 is mounted at /mnt");

        let error = not_in_use(&sysfs, &disk, &[], &["/dev/vdb1".to_owned()]).expect_err("swap");
        assert_eq!(error.to_string(), "/dev/vdb1 is in use as swap");

        sys.disk("dm-0", "253:0", 1 << 30);
        sys.stack("dm-0", "vdb2");
        let error = not_in_use(&sysfs, &disk, &[], &[]).expect_err("held");
        assert_eq!(error.to_string(), "/dev/vdb2 is held by dm-0");
    }

    #[test]
    fn a_loop_device_over_the_disk_is_refused() {
        let sys = FakeSys::new();
        vdb(&sys);
        sys.disk("loop3", "7:3", 4 << 30);
        sys.loop_backing("loop3", "/dev/vdb");
        let sysfs = sys.sysfs();
        let disk = sysfs.by_name("vdb").expect("vdb");
        let error = not_in_use(&sysfs, &disk, &[], &[]).expect_err("looped");
        assert_eq!(
            error.to_string(),
            "/dev/vdb is the backing device of /dev/loop3"
        );
    }

    fn contents(disk: &[u8]) -> Option<Found> {
        let head = &disk[..HEAD_BYTES.min(disk.len())];
        let tail = &disk[disk.len() - SECTOR..];
        let mut read_at = |offset: u64, length: usize| {
            let start = usize::try_from(offset).expect("offset");
            let end = (start + length).min(disk.len());
            Ok(disk.get(start..end).unwrap_or_default().to_vec())
        };
        existing_contents(head, tail, &mut read_at).expect("reads")
    }

    fn gpt_disk(bytes: u64, partitions: &[(u64, u64)]) -> Vec<u8> {
        let specs: Vec<PartitionSpec> = partitions
            .iter()
            .enumerate()
            .map(|(index, (first, last))| PartitionSpec {
                type_guid: gpt::VAR,
                unique_guid: Guid::from_bytes([index as u8 + 1; 16]),
                name: format!("p{index}"),
                first_lba: Lba(*first),
                last_lba: Lba(*last),
                attributes: 0,
            })
            .collect();
        let image = gpt::write_gpt(
            bytes,
            SectorSize::BYTES_512,
            Guid::from_bytes([9; 16]),
            &specs,
        )
        .expect("gpt");
        let mut disk = vec![0u8; bytes as usize];
        disk[..image.primary.len()].copy_from_slice(&image.primary);
        let at = image.backup_offset as usize;
        disk[at..at + image.backup.len()].copy_from_slice(&image.backup);
        disk
    }

    fn ext4_superblock(disk: &mut [u8], at: usize) {
        // The ext magic at 0x438 and nothing in the incompatible features' journal bit.
        disk[at + 0x438..at + 0x43a].copy_from_slice(&0xEF53u16.to_le_bytes());
    }

    #[test]
    fn partition_tables_and_file_systems_are_found() {
        assert_eq!(contents(&vec![0u8; 1 << 20]), None);

        let mut disk = gpt_disk(4 << 20, &[(2048, 4095), (4096, 6143)]);
        ext4_superblock(&mut disk, 4096 * 512);
        let found = contents(&disk).expect("gpt");
        assert_eq!(
            Refusal::Contents {
                disk: PathBuf::from("/dev/vdb"),
                found,
            }
            .to_string(),
            "/dev/vdb has a GPT partition table (2 partitions: ext4 on 2); pass --wipe to \
             overwrite it"
        );

        // Only the backup survives.
        let mut backup_only = gpt_disk(4 << 20, &[(2048, 4095)]);
        backup_only[..2 * SECTOR].fill(0);
        assert_eq!(contents(&backup_only), Some(Found::BackupGpt));
        // The primary header is damaged.
        let mut damaged = gpt_disk(4 << 20, &[(2048, 4095)]);
        damaged[SECTOR + 20] ^= 1;
        assert!(matches!(contents(&damaged), Some(Found::DamagedGpt(_))));
        // Entries that fail their CRC.
        let mut bad_entries = gpt_disk(4 << 20, &[(2048, 4095)]);
        bad_entries[2 * SECTOR + 40] ^= 1;
        assert!(matches!(
            contents(&bad_entries),
            Some(Found::Gpt {
                partitions: Err(_),
                ..
            })
        ));

        let mut whole = vec![0u8; 1 << 20];
        ext4_superblock(&mut whole, 0);
        assert_eq!(contents(&whole), Some(Found::FileSystem(FsKind::Ext4)));
        let mut mbr = vec![0u8; 1 << 20];
        mbr[510..512].copy_from_slice(&BOOT_SIGNATURE);
        assert_eq!(
            contents(&mbr).map(|found| found.to_string()),
            Some("an MBR (boot signature 0x55AA in sector 0)".to_owned())
        );
    }

    #[test]
    fn the_size_check_says_both_sizes() {
        large_enough(Path::new("/dev/vdb"), 3 << 30, 2402 << 20).expect("fits");
        let error =
            large_enough(Path::new("/dev/vdb"), 1 << 30, 2402 << 20).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "/dev/vdb is 1.0 GiB; the layout needs 2.3 GiB"
        );
    }

    #[test]
    fn only_512_byte_sectors_are_accepted() {
        let sys = FakeSys::new();
        let dir = sys.disk("sdc", "8:32", 4 << 30);
        let sysfs = sys.sysfs();
        let disk = sysfs.by_name("sdc").expect("sdc");
        sector_size(&sysfs, &disk, Path::new("/dev/sdc")).expect("512");
        std::fs::write(dir.join("queue/logical_block_size"), "4096\n").expect("write");
        let error = sector_size(&sysfs, &disk, Path::new("/dev/sdc")).expect_err("4096");
        assert_eq!(
            error.to_string(),
            "/dev/sdc has 4096-byte logical sectors; the installer writes a GPT of 512-byte sectors"
        );
    }
}

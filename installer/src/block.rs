//! What the kernel says about block devices and their users, read from a sysfs tree and a
//! procfs tree given as directories (`/sys` and `/proc`, or a test's fakes): which whole disk
//! a device belongs to, what is stacked on it (`holders/`) or below it (`slaves/`, a loop
//! device's backing file), what is mounted (`self/mountinfo`) and what is swap (`swaps`).
//!
//! A device is known by its kernel name (`vdb`, `vdb2`, `dm-0`, `loop3p1`), the name of its
//! directory in sysfs and of its node in devtmpfs.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How deep [`Sysfs::disks_below`] follows stacked devices (dm over md over loop …).
const MAX_STACK_DEPTH: usize = 16;

/// A device number, `major:minor` as sysfs and mountinfo write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// From a `st_rdev` or `st_dev`.
    pub fn from_raw(raw: u64) -> Self {
        Self {
            major: rustix::fs::major(raw),
            minor: rustix::fs::minor(raw),
        }
    }

    /// Major 0 numbers file systems without a device (tmpfs, proc, overlay).
    pub fn is_anonymous(self) -> bool {
        self.major == 0
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (major, minor) = text.trim().split_once(':').ok_or(())?;
        Ok(Self {
            major: major.parse().map_err(|_| ())?,
            minor: minor.parse().map_err(|_| ())?,
        })
    }
}

/// A block device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The kernel name: `vdb2`.
    pub name: String,
    /// The whole disk it is on: its own name for a disk, `vdb` for `vdb2`.
    pub disk: String,
    /// Its number on the disk, for a partition.
    pub partition: Option<u32>,
    /// Its directory, symlinks resolved.
    dir: PathBuf,
}

impl BlockDevice {
    /// Its node in devtmpfs.
    pub fn node(&self) -> PathBuf {
        dev_node(&self.name)
    }

    pub fn is_partition(&self) -> bool {
        self.partition.is_some()
    }
}

/// `/dev/<name>`.
pub fn dev_node(name: &str) -> PathBuf {
    Path::new("/dev").join(name)
}

/// A sysfs tree.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The device `/sys/dev/block/MAJ:MIN` links to.
    pub fn by_devnum(&self, number: DevNum) -> Option<BlockDevice> {
        self.device_at(&self.root.join("dev/block").join(number.to_string()))
    }

    /// The device `/sys/class/block/NAME` links to.
    pub fn by_name(&self, name: &str) -> Option<BlockDevice> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        self.device_at(&self.root.join("class/block").join(name))
    }

    /// The device a path names: a device node (by its name in devtmpfs, else its number), or
    /// for a regular file the device of the file system holding it (a swap file, a loop
    /// device's backing file). `None` when the path names no block device sysfs knows,
    /// such as a file in memory (tmpfs).
    pub fn by_path(&self, path: &Path) -> Option<BlockDevice> {
        let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        if let Ok(name) = resolved.strip_prefix("/dev") {
            if let Some(device) = name.to_str().and_then(|name| self.by_name(name)) {
                return Some(device);
            }
        }
        let metadata = fs::metadata(&resolved).ok()?;
        let number = match metadata.file_type().is_block_device() {
            true => DevNum::from_raw(metadata.rdev()),
            false => DevNum::from_raw(metadata.dev()),
        };
        match number.is_anonymous() {
            true => None,
            false => self.by_devnum(number),
        }
    }

    fn device_at(&self, link: &Path) -> Option<BlockDevice> {
        let dir = fs::canonicalize(link).ok()?;
        let name = dir.file_name()?.to_str()?.to_owned();
        let partition =
            read_number(&dir.join("partition")).and_then(|number| u32::try_from(number).ok());
        let disk = match partition {
            Some(_) => dir.parent()?.file_name()?.to_str()?.to_owned(),
            None => name.clone(),
        };
        Some(BlockDevice {
            name,
            disk,
            partition,
            dir,
        })
    }

    /// The partitions of a disk, by number.
    pub fn partitions(&self, disk: &BlockDevice) -> Vec<BlockDevice> {
        let mut found: Vec<BlockDevice> = subdirectories(&disk.dir)
            .into_iter()
            .filter(|dir| dir.join("partition").is_file())
            .filter_map(|dir| self.device_at(&dir))
            .collect();
        found.sort_by_key(|partition| partition.partition);
        found
    }

    /// What is stacked on the device (device-mapper, md): the names in its `holders/`.
    pub fn holders(&self, device: &BlockDevice) -> Vec<String> {
        names_in(&device.dir.join("holders"))
    }

    /// What the device is stacked on: the names in its `slaves/`.
    pub fn slaves(&self, device: &BlockDevice) -> Vec<String> {
        names_in(&device.dir.join("slaves"))
    }

    /// The file or device a loop device reads, if it is a loop device.
    pub fn loop_backing_file(&self, device: &BlockDevice) -> Option<PathBuf> {
        let text = fs::read_to_string(device.dir.join("loop/backing_file")).ok()?;
        let path = text.trim_end_matches('\n');
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        (!path.is_empty()).then(|| PathBuf::from(path))
    }

    /// Every loop device and the file or device it reads.
    pub fn loop_devices(&self) -> Vec<(BlockDevice, PathBuf)> {
        let mut found: Vec<(BlockDevice, PathBuf)> = names_in(&self.root.join("class/block"))
            .into_iter()
            .filter(|name| name.starts_with("loop"))
            .filter_map(|name| self.by_name(&name))
            .filter_map(|device| {
                let backing = self.loop_backing_file(&device)?;
                Some((device, backing))
            })
            .collect();
        found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        found
    }

    /// The size of the device's logical blocks, which partition tables count in.
    pub fn logical_block_size(&self, device: &BlockDevice) -> Option<u64> {
        read_number(&device.dir.join("queue/logical_block_size"))
    }

    /// The whole disks a device's data lives on, through every layer: the disk of a
    /// partition, the disks below a device-mapper or md device (`slaves/`), the disk holding
    /// a loop device's backing file. Each comes with the chain that leads to it
    /// (`dm-0 on vda2`). A loop device over a file in memory has none below it.
    pub fn disks_below(&self, device: &BlockDevice) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        self.collect_disks(device, device.name.clone(), 0, &mut seen, &mut found);
        found
    }

    fn collect_disks(
        &self,
        device: &BlockDevice,
        chain: String,
        depth: usize,
        seen: &mut BTreeSet<String>,
        found: &mut Vec<(String, String)>,
    ) {
        if depth > MAX_STACK_DEPTH || !seen.insert(device.name.clone()) {
            return;
        }
        if !found.iter().any(|(disk, _)| *disk == device.disk) {
            found.push((device.disk.clone(), chain.clone()));
        }
        let mut below: Vec<BlockDevice> = self
            .slaves(device)
            .iter()
            .filter_map(|name| self.by_name(name))
            .collect();
        if let Some(backing) = self.loop_backing_file(device) {
            below.extend(self.by_path(&backing));
        }
        for next in below {
            let chain = format!("{chain} on {}", next.name);
            self.collect_disks(&next, chain, depth + 1, seen, found);
        }
    }
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The `st_dev` of its files: the block device, or an anonymous number.
    pub device: DevNum,
    pub mount_point: String,
    /// What was mounted, as given to mount(2): `/dev/vda2`, `tmpfs`, `overlay`.
    pub source: String,
}

/// Parses `mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [TAGS…] - TYPE
/// SOURCE SUPER-OPTIONS`. Lines that do not have that shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let device = fields.get(2)?.parse().ok()?;
            let mount_point = unescape(fields.get(4)?);
            let separator = fields.iter().position(|field| *field == "-")?;
            let source = unescape(fields.get(separator + 2)?);
            Some(Mount {
                device,
                mount_point,
                source,
            })
        })
        .collect()
}

/// The paths of `/proc/swaps`, after its header line.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// The kernel writes space, tab, newline and backslash in these files as `\040`, `\011`,
/// `\012` and `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes
            .get(index + 1..index + 4)
            .filter(|digits| {
                bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            })
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub mod fake {
    //! A fake sysfs: `disk("vdb", "252:16", 2 << 30)` and its partitions, holders, loops.

    use super::*;
    use std::os::unix::fs::symlink;

    pub struct FakeSys {
        pub dir: tempfile::TempDir,
    }

    impl FakeSys {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for sub in [
                "sys/dev/block",
                "sys/class/block",
                "sys/devices/virtual/block",
            ] {
                fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            }
            Self { dir }
        }

        pub fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }

        pub fn sysfs(&self) -> Sysfs {
            Sysfs::new(&self.sys())
        }

        fn register(&self, name: &str, number: &str, dir: &Path, bytes: u64) {
            fs::create_dir_all(dir.join("holders")).expect("holders");
            fs::create_dir_all(dir.join("slaves")).expect("slaves");
            fs::write(dir.join("dev"), format!("{number}\n")).expect("dev");
            fs::write(dir.join("size"), format!("{}\n", bytes / 512)).expect("size");
            let relative = dir.strip_prefix(self.sys()).expect("inside sys");
            symlink(
                Path::new("../../").join(relative),
                self.sys().join("dev/block").join(number),
            )
            .expect("dev link");
            symlink(
                Path::new("../../").join(relative),
                self.sys().join("class/block").join(name),
            )
            .expect("class link");
        }

        pub fn disk(&self, name: &str, number: &str, bytes: u64) -> PathBuf {
            let dir = self.sys().join("devices/virtual/block").join(name);
            fs::create_dir_all(dir.join("queue")).expect("queue");
            fs::write(dir.join("queue/logical_block_size"), "512\n").expect("lbs");
            self.register(name, number, &dir, bytes);
            dir
        }

        pub fn partition(&self, disk: &str, number: u32, devnum: &str, bytes: u64) -> PathBuf {
            let name = match disk.ends_with(|c: char| c.is_ascii_digit()) {
                true => format!("{disk}p{number}"),
                false => format!("{disk}{number}"),
            };
            let dir = self
                .sys()
                .join("devices/virtual/block")
                .join(disk)
                .join(&name);
            fs::create_dir_all(&dir).expect("partition dir");
            fs::write(dir.join("partition"), format!("{number}\n")).expect("partition");
            self.register(&name, devnum, &dir, bytes);
            dir
        }

        /// `upper` stacked on `lower` (holders/ and slaves/ entries).
        pub fn stack(&self, upper: &str, lower: &str) {
            let class = self.sys().join("class/block");
            let upper_dir = fs::canonicalize(class.join(upper)).expect("upper");
            let lower_dir = fs::canonicalize(class.join(lower)).expect("lower");
            fs::write(lower_dir.join("holders").join(upper), "").expect("holder");
            fs::write(upper_dir.join("slaves").join(lower), "").expect("slave");
        }

        pub fn loop_backing(&self, name: &str, backing: &str) {
            let dir = fs::canonicalize(self.sys().join("class/block").join(name)).expect("loop");
            fs::create_dir_all(dir.join("loop")).expect("loop dir");
            fs::write(dir.join("loop/backing_file"), format!("{backing}\n")).expect("backing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSys;
    use super::*;

    #[test]
    fn devices_resolve_by_number_name_and_node() {
        let sys = FakeSys::new();
        sys.disk("vdb", "252:16", 4 << 30);
        sys.partition("vdb", 1, "252:17", 64 << 20);
        sys.partition("vdb", 2, "252:18", 1 << 30);
        let sysfs = sys.sysfs();
        let disk = sysfs
            .by_devnum(DevNum {
                major: 252,
                minor: 16,
            })
            .expect("disk");
        assert_eq!((disk.name.as_str(), disk.partition), ("vdb", None));
        assert_eq!(sysfs.logical_block_size(&disk), Some(512));
        let partition = sysfs.by_name("vdb2").expect("partition");
        assert_eq!(
            (partition.disk.as_str(), partition.partition),
            ("vdb", Some(2))
        );
        let numbers: Vec<_> = sysfs
            .partitions(&disk)
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(numbers, ["vdb1", "vdb2"]);
        assert_eq!(
            sysfs.by_path(Path::new("/dev/vdb1")).map(|d| d.name),
            Some("vdb1".to_owned())
        );
        assert_eq!(sysfs.by_name("../vdb"), None);
        assert_eq!(sysfs.by_name("nope"), None);
    }

    #[test]
    fn disks_below_follow_device_mapper_and_loops() {
        let sys = FakeSys::new();
        sys.disk("vda", "252:0", 8 << 30);
        sys.partition("vda", 2, "252:2", 1 << 30);
        sys.partition("vda", 3, "252:3", 16 << 20);
        sys.disk("dm-0", "253:0", 1 << 30);
        sys.stack("dm-0", "vda2");
        sys.stack("dm-0", "vda3");
        sys.disk("loop0", "7:0", 1 << 30);
        // A file in memory (and here: one that does not exist) has no disk below it.
        sys.loop_backing("loop0", "/run/xorbang/netboot/root.squashfs");
        let sysfs = sys.sysfs();
        let dm = sysfs.by_name("dm-0").expect("dm");
        assert_eq!(
            sysfs.disks_below(&dm),
            [
                ("dm-0".to_owned(), "dm-0".to_owned()),
                ("vda".to_owned(), "dm-0 on vda2".to_owned())
            ]
        );
        let looped = sysfs.by_name("loop0").expect("loop");
        assert_eq!(
            sysfs.disks_below(&looped),
            [("loop0".to_owned(), "loop0".to_owned())]
        );
        assert_eq!(
            sysfs.loop_devices()[0].1,
            PathBuf::from("/run/xorbang/netboot/root.squashfs")
        );
    }

    #[test]
    fn mountinfo_and_swaps_parse_with_escapes() {
        let mounts = parse_mountinfo(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             36 35 252:18 / /mnt/my\\040disk rw,noatime shared:1 master:2 - ext4 /dev/vdb2 rw\n\
             garbage\n",
        );
        assert_eq!(mounts.len(), 2);
        assert!(mounts[0].device.is_anonymous());
        assert_eq!(
            mounts[1],
            Mount {
                device: DevNum {
                    major: 252,
                    minor: 18
                },
                mount_point: "/mnt/my disk".to_owned(),
                source: "/dev/vdb2".to_owned(),
            }
        );
        let swaps = parse_swaps(
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/vdb3                               partition\t1048572\t\t0\t\t-2\n",
        );
        assert_eq!(swaps, ["/dev/vdb3"]);
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }
}

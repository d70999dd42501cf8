//! Finding the block device a [`DeviceSpec`] names, without udev or blkid: sysfs says which
//! devices exist and which are partitions of which disk; the GPT and superblock parsers say
//! what they hold.
//!
//! The sysfs and /dev directories are parameters so tests can run on a fake tree.

use std::collections::hash_map::{Entry, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xorbang_formats::devspec::DeviceSpec;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::fs_probe::{self, FsInfo, PROBE_BYTES};
use xorbang_formats::gpt::{self, GptError, GptHeader, GptPartition, Guid, Lba, SectorSize};

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Image files (in the initramfs or downloaded) are attached to loop devices by the
    /// caller, never looked up here.
    #[error("{spec} is an image file, not a block device")]
    ImageFile { spec: DeviceSpec },
    #[error("cannot list {path}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: expected {expected}, found {found:?}")]
    Attribute {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("cannot resolve the sysfs link {path}")]
    Link { path: PathBuf, source: io::Error },
    #[error("partition {path} has no parent disk directory in sysfs")]
    NoParent { path: PathBuf },
    #[error("the disk of {node} has {count} partitions that are {what}, so none is taken")]
    SeveralSiblings {
        node: PathBuf,
        what: String,
        count: usize,
    },
    #[error("{spec} names {} devices ({}), so none is taken", nodes.len(), nodes.iter().map(|node| node.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        spec: DeviceSpec,
        nodes: Vec<PathBuf>,
    },
}

/// The device node of the block device `spec` names, or `None` when none does yet (devices
/// appear as drivers probe them, so the caller polls). Two devices that match are an error:
/// whichever was probed first must not win.
pub fn resolve(
    spec: &DeviceSpec,
    sys_class_block: &Path,
    dev_dir: &Path,
) -> Result<Option<PathBuf>, BlockError> {
    DeviceScan::new(sys_class_block, dev_dir).resolve(spec)
}

/// One look for the root's partitions, on a machine whose firmware may say which ESP it
/// booted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The one partition, and same-named ones on other disks that were passed over because
    /// the firmware booted from this one's disk.
    Found {
        node: PathBuf,
        passed_over: Vec<PathBuf>,
    },
    /// Nothing matches yet.
    Missing,
    /// Partitions match on other disks, but the disk of the ESP the firmware booted from has
    /// not appeared yet: it may still bring the root.
    BootDiskUnseen { elsewhere: Vec<PathBuf> },
}

/// One look at the machine's block devices: each disk's partition table is read once, however
/// many specs are resolved against it (a verity root's data and hash partitions).
pub struct DeviceScan<'a> {
    scan: Scan<'a>,
    partitions: Option<Vec<SeenPartition>>,
}

impl<'a> DeviceScan<'a> {
    pub fn new(sys_class_block: &'a Path, dev_dir: &'a Path) -> Self {
        Self {
            scan: Scan {
                sys: sys_class_block,
                dev: dev_dir,
            },
            partitions: None,
        }
    }

    /// Every partition with a GPT entry, read on first use.
    fn partitions(&mut self) -> Result<&[SeenPartition], BlockError> {
        if self.partitions.is_none() {
            self.partitions = Some(self.scan.partitions(None)?);
        }
        Ok(self.partitions.as_deref().unwrap_or_default())
    }

    /// [`resolve`] on this look.
    pub fn resolve(&mut self, spec: &DeviceSpec) -> Result<Option<PathBuf>, BlockError> {
        let found = match spec {
            DeviceSpec::Path(path) => return self.scan.existing_path(path),
            DeviceSpec::File(_) | DeviceSpec::Url(_) => {
                return Err(BlockError::ImageFile { spec: spec.clone() })
            }
            DeviceSpec::PartUuid(_) | DeviceSpec::PartLabel(_) => present_nodes(
                self.partitions()?
                    .iter()
                    .filter(|part| names(spec, &part.entry)),
            )?,
            DeviceSpec::Uuid(uuid) => self.scan.find_filesystems(|fs| {
                fs.uuid
                    .as_deref()
                    .is_some_and(|found| found.eq_ignore_ascii_case(uuid))
            })?,
            DeviceSpec::Label(label) => self
                .scan
                .find_filesystems(|fs| fs.label.as_deref() == Some(label.as_str()))?,
        };
        only_one(spec, found)
    }

    /// Like [`Self::resolve`], preferring the disk that holds the ESP `boot_esp` (the
    /// firmware's `LoaderDevicePartUUID`) for partition specs: a clone of the root's
    /// partitions on another disk (a USB stick) is passed over, and the wait goes on while the
    /// boot disk is unseen.
    pub fn resolve_on_boot_disk(
        &mut self,
        spec: &DeviceSpec,
        boot_esp: Option<Guid>,
    ) -> Result<Lookup, BlockError> {
        let by_partition = matches!(spec, DeviceSpec::PartUuid(_) | DeviceSpec::PartLabel(_));
        let Some(esp) = boot_esp.filter(|_| by_partition) else {
            return Ok(match self.resolve(spec)? {
                Some(node) => Lookup::Found {
                    node,
                    passed_over: Vec::new(),
                },
                None => Lookup::Missing,
            });
        };
        let seen = self.partitions()?;
        let matching: Vec<&SeenPartition> = seen
            .iter()
            .filter(|part| names(spec, &part.entry))
            .collect();
        let boot_disk = seen
            .iter()
            .find(|part| part.entry.unique_guid == esp)
            .map(|part| part.disk.as_str());
        let Some(boot_disk) = boot_disk else {
            let elsewhere = present_nodes(matching.into_iter())?;
            return Ok(match elsewhere.is_empty() {
                true => Lookup::Missing,
                false => Lookup::BootDiskUnseen { elsewhere },
            });
        };
        let (on_boot_disk, elsewhere): (Vec<&SeenPartition>, Vec<&SeenPartition>) = matching
            .into_iter()
            .partition(|part| part.disk == boot_disk);
        let elsewhere = present_nodes(elsewhere.into_iter())?;
        if on_boot_disk.is_empty() {
            return Ok(match only_one(spec, elsewhere)? {
                Some(node) => Lookup::Found {
                    node,
                    passed_over: Vec::new(),
                },
                None => Lookup::Missing,
            });
        }
        let found = present_nodes(on_boot_disk.iter().copied())?;
        if found.len() < on_boot_disk.len() {
            return Ok(Lookup::Missing);
        }
        Ok(match only_one(spec, found)? {
            Some(node) => Lookup::Found {
                node,
                passed_over: elsewhere,
            },
            None => Lookup::Missing,
        })
    }
}

/// [`DeviceScan::resolve_on_boot_disk`] on a look of its own.
pub fn resolve_on_boot_disk(
    spec: &DeviceSpec,
    boot_esp: Option<Guid>,
    sys_class_block: &Path,
    dev_dir: &Path,
) -> Result<Lookup, BlockError> {
    DeviceScan::new(sys_class_block, dev_dir).resolve_on_boot_disk(spec, boot_esp)
}

/// Whether the GPT entry is the partition a `PARTUUID=`/`PARTLABEL=` spec names.
fn names(spec: &DeviceSpec, entry: &GptPartition) -> bool {
    match spec {
        DeviceSpec::PartUuid(guid) => entry.unique_guid == *guid,
        DeviceSpec::PartLabel(name) => entry.name == *name,
        _ => false,
    }
}

/// The nodes of `partitions` that exist already.
fn present_nodes<'p>(
    partitions: impl Iterator<Item = &'p SeenPartition>,
) -> Result<Vec<PathBuf>, BlockError> {
    let mut nodes = Vec::new();
    for part in partitions {
        if node_exists(&part.node)? {
            nodes.push(part.node.clone());
        }
    }
    Ok(nodes)
}

fn only_one(spec: &DeviceSpec, mut found: Vec<PathBuf>) -> Result<Option<PathBuf>, BlockError> {
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(BlockError::Ambiguous {
            spec: spec.clone(),
            nodes: found,
        }),
    }
}

/// The partitions of the disk a partition is on, read once: how DPS partitions are found
/// next to the root (the ESP, /var, the config partition). Only that disk counts, and a
/// partition is known by its number on it, never looked up again by a UUID a clone on
/// another disk could share.
pub struct Siblings {
    of: PathBuf,
    partitions: Vec<SeenPartition>,
}

/// The partitions beside `node` (under `dev_dir`); none when `node` is no partition (a
/// whole disk, a loop device) or its disk holds no readable GPT.
pub fn siblings(
    node: &Path,
    sys_class_block: &Path,
    dev_dir: &Path,
) -> Result<Siblings, BlockError> {
    let scan = Scan {
        sys: sys_class_block,
        dev: dev_dir,
    };
    let partitions = match scan.disk_of(node, dev_dir)? {
        Some(disk) => scan.partitions(Some(&disk))?,
        None => Vec::new(),
    };
    Ok(Siblings {
        of: node.to_owned(),
        partitions,
    })
}

impl Siblings {
    /// The GPT entries of the disk's partitions the kernel shows.
    pub fn entries(&self) -> impl Iterator<Item = &GptPartition> {
        self.partitions.iter().map(|part| &part.entry)
    }

    /// The node of the one partition of DPS type `type_guid` (the ESP, /var); `None` when
    /// there is none, an error when there are several.
    pub fn of_type(&self, type_guid: Guid) -> Result<Option<PathBuf>, BlockError> {
        self.the_one(&format!("of type {type_guid}"), |part| {
            part.type_guid == type_guid
        })
    }

    /// The node of the one partition named (PARTLABEL) `label`.
    pub fn with_label(&self, label: &str) -> Result<Option<PathBuf>, BlockError> {
        self.the_one(&format!("named {label:?}"), |part| part.name == label)
    }

    fn the_one(
        &self,
        what: &str,
        wanted: impl Fn(&GptPartition) -> bool,
    ) -> Result<Option<PathBuf>, BlockError> {
        let matching: Vec<&SeenPartition> = self
            .partitions
            .iter()
            .filter(|part| wanted(&part.entry))
            .collect();
        match matching.as_slice() {
            [] => Ok(None),
            [one] => Ok(node_exists(&one.node)?.then(|| one.node.clone())),
            several => Err(BlockError::SeveralSiblings {
                node: self.of.clone(),
                what: what.to_owned(),
                count: several.len(),
            }),
        }
    }
}

/// What filesystem `device` holds, from its first 64 KiB.
pub fn probe_device(device: &Path) -> Result<Option<FsInfo>, BlockError> {
    let head = read_head(device).map_err(|source| BlockError::Read {
        path: device.to_owned(),
        source,
    })?;
    Ok(fs_probe::probe(&head))
}

/// A partition the kernel shows, the disk it is on, and its GPT entry.
struct SeenPartition {
    node: PathBuf,
    disk: String,
    entry: GptPartition,
}

/// One lookup over /sys/class/block and /dev.
struct Scan<'a> {
    sys: &'a Path,
    dev: &'a Path,
}

impl Scan<'_> {
    /// `/dev/x` is looked up as `<dev_dir>/x`, any other path as it is.
    fn existing_path(&self, path: &Path) -> Result<Option<PathBuf>, BlockError> {
        let node = match path.strip_prefix("/dev") {
            Ok(relative) => self.dev.join(relative),
            Err(_) => path.to_owned(),
        };
        Ok(node_exists(&node)?.then_some(node))
    }

    /// The disk a partition node is on; `None` for a node that is no partition.
    fn disk_of(&self, node: &Path, dev_dir: &Path) -> Result<Option<String>, BlockError> {
        let Some(name) = node
            .strip_prefix(dev_dir)
            .ok()
            .map(|relative| relative.to_string_lossy().replace('/', "!"))
        else {
            return Ok(None);
        };
        if self.partition_number(&name)?.is_none() {
            return Ok(None);
        }
        self.parent_disk(&name).map(Some)
    }

    /// Every partition the kernel shows (on `only_disk`, when given) whose disk holds a
    /// readable GPT, with its entry.
    fn partitions(&self, only_disk: Option<&str>) -> Result<Vec<SeenPartition>, BlockError> {
        let mut seen = Vec::new();
        // Several partitions share a disk: read each disk's table once per lookup.
        let mut tables: HashMap<String, Option<Vec<GptPartition>>> = HashMap::new();
        for name in self.device_names()? {
            let Some(number) = self.partition_number(&name)? else {
                continue;
            };
            let disk = self.parent_disk(&name)?;
            if only_disk.is_some_and(|only| only != disk) {
                continue;
            }
            let table = match tables.entry(disk.clone()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    let table = self.read_gpt(new.key())?;
                    new.insert(table)
                }
            };
            let entry = table.iter().flatten().find(|part| part.number == number);
            if let Some(entry) = entry {
                seen.push(SeenPartition {
                    node: self.node(&name),
                    disk,
                    entry: entry.clone(),
                });
            }
        }
        Ok(seen)
    }

    fn find_filesystems(
        &self,
        wanted: impl Fn(&FsInfo) -> bool,
    ) -> Result<Vec<PathBuf>, BlockError> {
        let mut found = Vec::new();
        for name in self.device_names()? {
            if !self.worth_probing(&name)? {
                continue;
            }
            let node = self.node(&name);
            match read_head(&node) {
                Ok(head) => {
                    if fs_probe::probe(&head).is_some_and(|fs| wanted(&fs)) {
                        found.push(node);
                    }
                }
                Err(err) => log::debug!("skipping {}: {}", node.display(), error_chain(&err)),
            }
        }
        Ok(found)
    }

    /// Entries of /sys/class/block, sorted so the first match is the same on every boot.
    fn device_names(&self) -> Result<Vec<String>, BlockError> {
        let list_error = |source| BlockError::List {
            path: self.sys.to_owned(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.sys).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The `partition` attribute: present (with the 1-based number) only on partitions.
    fn partition_number(&self, name: &str) -> Result<Option<u32>, BlockError> {
        let path = self.sys.join(name).join("partition");
        let Some(text) = read_attribute(&path)? else {
            return Ok(None);
        };
        parse_attribute(&path, &text, "a partition number").map(Some)
    }

    /// A partition's sysfs directory sits inside its disk's (`.../block/vda/vda1`): the
    /// link's own target names it, no need to resolve every component.
    fn parent_disk(&self, name: &str) -> Result<String, BlockError> {
        let link = self.sys.join(name);
        let target = std::fs::read_link(&link).map_err(|source| BlockError::Link {
            path: link.clone(),
            source,
        })?;
        target
            .parent()
            .and_then(Path::file_name)
            .map(|disk| disk.to_string_lossy().into_owned())
            .ok_or(BlockError::NoParent { path: link })
    }

    /// The disk's GPT partitions; `None` when the disk cannot be read or holds no valid GPT
    /// (an MBR disk, an empty drive): that is a disk to pass over, not a failed boot.
    fn read_gpt(&self, disk: &str) -> Result<Option<Vec<GptPartition>>, BlockError> {
        let node = self.node(disk);
        if let Some(table) = known_table(&node) {
            return Ok(Some(table));
        }
        let sector = self.logical_block_size(disk)?;
        match read_gpt_from(&node, sector) {
            Ok(table) => {
                remember_table(&node, &table);
                Ok(Some(table))
            }
            Err(reason) => {
                log::debug!(
                    "no GPT read from {}: {}",
                    node.display(),
                    error_chain(&reason)
                );
                Ok(None)
            }
        }
    }

    /// `queue/logical_block_size`, the unit GPT LBAs count in; 512 when sysfs lacks it.
    fn logical_block_size(&self, disk: &str) -> Result<SectorSize, BlockError> {
        let path = self.sys.join(disk).join("queue/logical_block_size");
        let Some(text) = read_attribute(&path)? else {
            return Ok(SectorSize::BYTES_512);
        };
        let expected = "a power of two from 512 to 65536";
        let bytes = parse_attribute(&path, &text, expected)?;
        SectorSize::new(bytes).map_err(|_| BlockError::Attribute {
            path,
            expected,
            found: text.trim().to_owned(),
        })
    }

    /// Floppy drives are passed over as udev does (opening one without a disk stalls for
    /// seconds), and so are devices of size 0 (no medium, unbound loop devices).
    fn worth_probing(&self, name: &str) -> Result<bool, BlockError> {
        if name.starts_with("fd") {
            return Ok(false);
        }
        let path = self.sys.join(name).join("size");
        match read_attribute(&path)? {
            Some(text) => Ok(parse_attribute::<u64>(&path, &text, "a size in sectors")? != 0),
            None => Ok(true),
        }
    }

    /// The node devtmpfs creates for a sysfs name: sysfs spells '/' in names as '!'
    /// (`cciss!c0d0` is `/dev/cciss/c0d0`).
    fn node(&self, name: &str) -> PathBuf {
        self.dev.join(name.replace('!', "/"))
    }
}

/// Why a disk's GPT could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GptReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Gpt(#[from] GptError),
}

/// The used partitions of the GPT on `node` (a disk or an image file).
pub fn read_gpt_from(node: &Path, sector: SectorSize) -> Result<Vec<GptPartition>, GptReadError> {
    let file = File::open(node)?;
    // One read for the header and, where every tool puts them, the entries right after it
    // (LBA 2, 16 KiB): each read of a disk is an I/O round trip to the device.
    let sector_bytes = sector.bytes() as usize;
    let mut head = vec![0u8; sector_bytes * 2 + USUAL_ENTRIES_BYTES];
    let read = read_at_most(&file, &mut head, sector.offset_of(Lba(1)))?;
    head.truncate(read);
    let header = GptHeader::parse(head.get(..sector_bytes).unwrap_or(&head))?;
    let entries_bytes = usize::try_from(header.entries_bytes()).unwrap_or(0);
    let in_head = sector
        .offset_of(header.entries_lba)
        .checked_sub(sector.offset_of(Lba(1)))
        .and_then(|start| usize::try_from(start).ok())
        .and_then(|start| head.get(start..start.checked_add(entries_bytes)?));
    if let Some(entries) = in_head {
        return Ok(gpt::parse_entries(&header, entries)?);
    }
    // The header bounds the array to 1 MiB, so this allocation is small.
    let mut entries = vec![0u8; entries_bytes];
    file.read_exact_at(&mut entries, sector.offset_of(header.entries_lba))?;
    Ok(gpt::parse_entries(&header, &entries)?)
}

/// Partition tables read in this boot, by disk node: the root's lookup and the host config's
/// both look at the boot disk, and its table does not change while the init runs. Only
/// tables read whole are kept; a disk still being probed is read again.
static TABLES: std::sync::Mutex<Vec<(PathBuf, Vec<GptPartition>)>> =
    std::sync::Mutex::new(Vec::new());

fn known_table(node: &Path) -> Option<Vec<GptPartition>> {
    let tables = TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tables
        .iter()
        .find(|(known, _)| known == node)
        .map(|(_, table)| table.clone())
}

fn remember_table(node: &Path, table: &[GptPartition]) {
    let mut tables = TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tables.push((node.to_owned(), table.to_vec()));
}

/// The entry array's usual size: 128 entries of 128 bytes.
const USUAL_ENTRIES_BYTES: usize = 128 * 128;

/// Reads up to `buffer.len()` bytes at `offset`; fewer only at the device's end.
fn read_at_most(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The first `PROBE_BYTES` of a device, fewer if it is smaller. Without read-ahead: on a
/// verity device the kernel would hash every block it reads ahead, and a SquashFS mount
/// next wants the tables at the image's end, not the data after its superblock.
fn read_head(node: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(node)?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random)?;
    let mut head = Vec::with_capacity(PROBE_BYTES);
    file.take(PROBE_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A sysfs attribute's text; `None` when the attribute does not exist.
fn read_attribute(path: &Path) -> Result<Option<String>, BlockError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BlockError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_attribute<T: std::str::FromStr>(
    path: &Path,
    text: &str,
    expected: &'static str,
) -> Result<T, BlockError> {
    text.trim().parse().map_err(|_| BlockError::Attribute {
        path: path.to_owned(),
        expected,
        found: text.trim().to_owned(),
    })
}

fn node_exists(node: &Path) -> Result<bool, BlockError> {
    node.try_exists().map_err(|source| BlockError::Read {
        path: node.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use xorbang_formats::fixtures::{dps_partitions, write_image};
    use xorbang_formats::fixtures::{ext4_fixture, squashfs_fixture};
    use xorbang_formats::fs_probe::FsKind;
    use xorbang_formats::gpt::{write_gpt, Guid, PartitionSpec};

    const DISK_SIZE: u64 = 32 << 20;

    /// A fake /sys/class/block and /dev in a tempdir, laid out as the kernel lays them out:
    /// class entries are links into a device tree where partitions nest in their disk.
    struct FakeSystem {
        root: tempfile::TempDir,
    }

    impl FakeSystem {
        fn new() -> Self {
            let system = Self {
                root: tempfile::tempdir().expect("tempdir"),
            };
            fs::create_dir_all(system.sys()).expect("mkdir class");
            fs::create_dir_all(system.dev()).expect("mkdir dev");
            system
        }

        fn sys(&self) -> PathBuf {
            self.root.path().join("sys/class/block")
        }

        fn dev(&self) -> PathBuf {
            self.root.path().join("dev")
        }

        fn resolve(&self, spec: &str) -> Option<PathBuf> {
            let spec = DeviceSpec::parse(spec).expect("spec");
            resolve(&spec, &self.sys(), &self.dev()).expect("resolve")
        }

        /// A device directory (disk, or partition inside `parent`) and its class link.
        fn add_device(&self, name: &str, parent: Option<&str>, attributes: &[(&str, &str)]) {
            let devices = self.root.path().join("sys/devices/virtual/block");
            let dir = match parent {
                Some(disk) => devices.join(disk).join(name),
                None => devices.join(name),
            };
            fs::create_dir_all(dir.join("queue")).expect("mkdir device");
            for (attribute, value) in attributes {
                fs::write(dir.join(attribute), format!("{value}\n")).expect("attribute");
            }
            std::os::unix::fs::symlink(&dir, self.sys().join(name)).expect("class link");
        }

        /// A GPT disk `disk` with partitions `disk1`.. as sysfs entries and nodes; partition
        /// `n` holds `contents[n-1]` at its start (in its own node, as the kernel shows it).
        fn add_gpt_disk(&self, disk: &str, specs: &[PartitionSpec], contents: &[Vec<u8>]) {
            let image =
                write_gpt(DISK_SIZE, SectorSize::BYTES_512, disk_guid(), specs).expect("write gpt");
            write_image(&self.dev().join(disk), DISK_SIZE, &image);
            self.add_device(disk, None, &[("queue/logical_block_size", "512")]);
            for (index, spec) in specs.iter().enumerate() {
                let name = format!("{disk}{}", index + 1);
                let number = (index + 1).to_string();
                let size = (spec.last_lba.0 - spec.first_lba.0 + 1).to_string();
                self.add_device(
                    &name,
                    Some(disk),
                    &[("partition", &number), ("size", &size)],
                );
                let content = contents.get(index).cloned().unwrap_or_default();
                fs::write(self.dev().join(&name), content).expect("partition node");
            }
        }
    }

    fn disk_guid() -> Guid {
        Guid::parse("0f7a3c2e-5b1d-4e8f-9a6b-c4d2e1f0a9b8").expect("guid")
    }

    fn ext4_uuid() -> [u8; 16] {
        *Guid::parse("954172df-ee9a-aab2-d90a-0ab162ee6bc5")
            .expect("guid")
            .as_bytes()
    }

    /// vda: the DPS layout, partition 2 (root) holding SquashFS, partition 7 (/var) ext4.
    fn dps_system() -> FakeSystem {
        let system = FakeSystem::new();
        let mut contents = vec![Vec::new(); 7];
        contents[1] = squashfs_fixture();
        contents[6] = ext4_fixture(ext4_uuid(), "var");
        system.add_gpt_disk("vda", &dps_partitions(), &contents);
        system
    }

    #[test]
    fn partuuid_and_partlabel_find_the_partition_node() {
        let system = dps_system();
        let root = &dps_partitions()[1];
        let by_uuid = system.resolve(&format!("PARTUUID={}", root.unique_guid));
        assert_eq!(by_uuid, Some(system.dev().join("vda2")));
        let by_upper = system.resolve(&format!("PARTUUID={}", root.unique_guid).to_uppercase());
        assert_eq!(by_upper, Some(system.dev().join("vda2")));
        let by_label = system.resolve("PARTLABEL=root-x86-64-verity");
        assert_eq!(by_label, Some(system.dev().join("vda3")));
        assert_eq!(system.resolve("PARTLABEL=nonexistent"), None);
        assert_eq!(
            system.resolve("PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5"),
            None
        );
    }

    #[test]
    fn gpt_is_read_in_the_disks_logical_block_size() {
        let system = FakeSystem::new();
        let sector = SectorSize::new(4096).expect("4K");
        let spec = PartitionSpec {
            first_lba: Lba(256),
            last_lba: Lba(511),
            ..dps_partitions()[1].clone()
        };
        let image = write_gpt(DISK_SIZE, sector, disk_guid(), &[spec]).expect("write");
        write_image(&system.dev().join("nvme0n1"), DISK_SIZE, &image);
        system.add_device("nvme0n1", None, &[("queue/logical_block_size", "4096")]);
        system.add_device("nvme0n1p1", Some("nvme0n1"), &[("partition", "1")]);
        fs::write(system.dev().join("nvme0n1p1"), b"").expect("node");
        assert_eq!(
            system.resolve("PARTLABEL=root-x86-64"),
            Some(system.dev().join("nvme0n1p1"))
        );
    }

    #[test]
    fn a_partition_whose_node_is_not_there_yet_is_not_found_yet() {
        let system = dps_system();
        fs::remove_file(system.dev().join("vda2")).expect("rm node");
        assert_eq!(system.resolve("PARTLABEL=root-x86-64"), None);
    }

    #[test]
    fn siblings_are_the_partitions_of_the_same_disk() {
        let system = dps_system();
        let root = &dps_partitions()[1];
        let node = system.dev().join("vda2");
        let beside = siblings(&node, &system.sys(), &system.dev()).expect("reads");
        assert!(beside
            .entries()
            .any(|part| part.unique_guid == root.unique_guid));
        assert_eq!(
            beside.of_type(xorbang_formats::gpt::VAR).expect("one"),
            Some(system.dev().join("vda7"))
        );
        assert_eq!(
            beside.with_label("esp").expect("one"),
            Some(system.dev().join("vda1"))
        );
        assert_eq!(beside.entries().count(), dps_partitions().len());
        let disk = system.dev().join("vda");
        let of_disk = siblings(&disk, &system.sys(), &system.dev()).expect("reads");
        assert_eq!(of_disk.entries().count(), 0);
    }

    /// vda: the DPS system; vdb: a clone of its partitions (a USB stick carrying a copy of
    /// the root), probed first because its name sorts later only by accident.
    fn system_with_clone() -> FakeSystem {
        let system = dps_system();
        let clone: Vec<PartitionSpec> = dps_partitions()[1..3].to_vec();
        system.add_gpt_disk("vdb", &clone, &[]);
        system
    }

    fn on_boot_disk(system: &FakeSystem, esp: Option<Guid>) -> Lookup {
        let spec = DeviceSpec::PartLabel("root-x86-64".into());
        resolve_on_boot_disk(&spec, esp, &system.sys(), &system.dev()).expect("lookup")
    }

    #[test]
    fn the_firmwares_boot_disk_wins_over_a_clone() {
        let system = system_with_clone();
        let esp = dps_partitions()[0].unique_guid;
        assert_eq!(
            on_boot_disk(&system, Some(esp)),
            Lookup::Found {
                node: system.dev().join("vda2"),
                passed_over: vec![system.dev().join("vdb1")],
            }
        );
        let spec = DeviceSpec::PartLabel("root-x86-64".into());
        assert!(matches!(
            resolve(&spec, &system.sys(), &system.dev()),
            Err(BlockError::Ambiguous { .. })
        ));
        assert!(matches!(
            resolve_on_boot_disk(&spec, None, &system.sys(), &system.dev()),
            Err(BlockError::Ambiguous { .. })
        ));
    }

    #[test]
    fn a_clone_waits_while_the_boot_disk_is_unseen() {
        let system = FakeSystem::new();
        system.add_gpt_disk("vdb", &dps_partitions()[1..3], &[]);
        let esp = dps_partitions()[0].unique_guid;
        assert_eq!(
            on_boot_disk(&system, Some(esp)),
            Lookup::BootDiskUnseen {
                elsewhere: vec![system.dev().join("vdb1")]
            }
        );
        let other_esp = Guid::from_bytes([0xee; 16]);
        system.add_gpt_disk(
            "vdc",
            &[PartitionSpec {
                unique_guid: other_esp,
                ..dps_partitions()[0].clone()
            }],
            &[],
        );
        assert_eq!(
            on_boot_disk(&system, Some(other_esp)),
            Lookup::Found {
                node: system.dev().join("vdb1"),
                passed_over: Vec::new(),
            },
            "a boot disk without the root leaves the usual rule"
        );
    }

    #[test]
    fn siblings_come_from_the_disk_not_from_a_clone_with_the_same_uuids() {
        let system = dps_system();
        system.add_gpt_disk("vdb", &dps_partitions(), &[]);
        let var = siblings(&system.dev().join("vdb2"), &system.sys(), &system.dev())
            .and_then(|siblings| siblings.of_type(xorbang_formats::gpt::VAR))
            .expect("one per disk");
        assert_eq!(var, Some(system.dev().join("vdb7")));
    }

    #[test]
    fn disks_without_a_readable_gpt_are_passed_over() {
        let system = FakeSystem::new();
        // An MBR-only disk, and a "disk" whose node cannot be read (a directory).
        fs::write(system.dev().join("sda"), vec![0u8; 64 * 1024]).expect("sda");
        system.add_device("sda", None, &[]);
        system.add_device("sda1", Some("sda"), &[("partition", "1")]);
        fs::create_dir(system.dev().join("sdb")).expect("sdb");
        system.add_device("sdb", None, &[]);
        system.add_device("sdb1", Some("sdb"), &[("partition", "1")]);
        // A partition of vdc matches; the broken disks before it must not stop the search.
        let mut specs = dps_partitions();
        specs.truncate(2);
        system.add_gpt_disk("vdc", &specs, &[]);
        assert_eq!(
            system.resolve("PARTLABEL=root-x86-64"),
            Some(system.dev().join("vdc2"))
        );
        assert_eq!(system.resolve("PARTLABEL=var"), None);
    }

    #[test]
    fn uuid_and_label_find_the_filesystem() {
        let system = dps_system();
        let var = Some(system.dev().join("vda7"));
        assert_eq!(
            system.resolve("UUID=954172DF-EE9A-AAB2-D90A-0AB162EE6BC5"),
            var
        );
        assert_eq!(system.resolve("LABEL=var"), var);
        assert_eq!(system.resolve("LABEL=VAR"), None);
        assert_eq!(
            system.resolve("UUID=00000000-0000-0000-0000-000000000000"),
            None
        );
    }

    #[test]
    fn filesystem_search_refuses_two_matches_and_skips_unreadable_nodes() {
        let system = FakeSystem::new();
        let ext4 = ext4_fixture(ext4_uuid(), "data");
        // sr0: no medium (size 0); fd0: never opened; sda: unreadable (a directory).
        system.add_device("sr0", None, &[("size", "0")]);
        fs::write(system.dev().join("sr0"), &ext4).expect("sr0");
        system.add_device("fd0", None, &[("size", "2880")]);
        fs::write(system.dev().join("fd0"), &ext4).expect("fd0");
        system.add_device("sda", None, &[("size", "8")]);
        fs::create_dir(system.dev().join("sda")).expect("sda");
        system.add_device("vda", None, &[("size", "16")]);
        fs::write(system.dev().join("vda"), &ext4).expect("node");
        assert_eq!(system.resolve("LABEL=data"), Some(system.dev().join("vda")));
        // A second disk with the same label (a USB stick, say) makes neither the one.
        system.add_device("vdb", None, &[("size", "16")]);
        fs::write(system.dev().join("vdb"), &ext4).expect("node");
        let spec = DeviceSpec::parse("LABEL=data").expect("spec");
        let error = resolve(&spec, &system.sys(), &system.dev()).expect_err("two");
        assert!(
            error
                .to_string()
                .starts_with("LABEL=data names 2 devices ("),
            "{error}"
        );
    }

    #[test]
    fn dev_paths_are_looked_up_under_the_dev_dir() {
        let system = dps_system();
        assert_eq!(system.resolve("/dev/vda1"), Some(system.dev().join("vda1")));
        assert_eq!(system.resolve("/dev/vdz1"), None);
        // Built in code rather than parsed: a path outside /dev is taken as it is.
        let outside = DeviceSpec::Path(system.dev().join("vda2"));
        let found = resolve(&outside, &system.sys(), Path::new("/nonexistent")).expect("resolve");
        assert_eq!(found, Some(system.dev().join("vda2")));
    }

    #[test]
    fn broken_sysfs_attributes_are_errors_naming_the_file() {
        let system = dps_system();
        let attribute = system
            .root
            .path()
            .join("sys/devices/virtual/block/vda/vda1/partition");
        fs::write(&attribute, "one\n").expect("attribute");
        let spec = DeviceSpec::parse("PARTLABEL=esp").expect("spec");
        let err = resolve(&spec, &system.sys(), &system.dev()).expect_err("bad attribute");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: expected a partition number, found \"one\"",
                system.sys().join("vda1/partition").display()
            )
        );
        let missing = system.root.path().join("nowhere");
        let err = resolve(&spec, &missing, &system.dev()).expect_err("no sysfs");
        assert!(error_chain(&err).starts_with(&format!("cannot list {}: ", missing.display())));
    }

    #[test]
    fn probe_device_reports_the_filesystem() {
        let system = dps_system();
        let root = probe_device(&system.dev().join("vda2")).expect("probe");
        assert_eq!(root.map(|info| info.kind), Some(FsKind::Squashfs));
        let esp = probe_device(&system.dev().join("vda1")).expect("probe");
        assert_eq!(esp, None);
        let missing = system.dev().join("vdz");
        let err = probe_device(&missing).expect_err("missing node");
        assert!(matches!(err, BlockError::Read { ref path, .. } if *path == missing));
    }
}

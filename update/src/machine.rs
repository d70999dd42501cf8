//! The machine as it booted: which image and version (the init's boot report), the disk the
//! root came from (never guessed: the report names the device), its A/B slots (the GPT's
//! `root-x86-64` and `root-x86-64-verity` partitions, paired in table order), and the boot
//! loader entries on the ESP.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use xorbang_formats::boot_entry::{self, BootEntryFile};
use xorbang_formats::boot_report::BootReport;
use xorbang_formats::gpt::{self, GptHeader, GptPartition};

/// Where the init writes its report.
pub const BOOT_REPORT: &str = "/run/xorbang/boot.json";
/// Where systemd mounts the ESP (gpt-auto-generator), in the order bootctl looks.
pub const ESP_MOUNTS: &[&str] = &["/efi", "/boot", "/boot/efi"];
const MAX_BOOT_REPORT_BYTES: u64 = 1 << 20;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a boot report")]
    Report {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the boot report names no verified root: this machine was not booted from an A/B slot"
    )]
    Unverified,
    #[error("the booted root has no IMAGE_ID/IMAGE_VERSION in its os-release")]
    NoIdentity,
    #[error("{device} is not a partition of a disk (no {sysfs})")]
    NotPartition { device: String, sysfs: PathBuf },
    #[error("the GPT of {disk} cannot be read")]
    Gpt {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("{disk} has {roots} root and {hashes} root-verity partitions: A/B needs two of each")]
    Slots {
        disk: PathBuf,
        roots: usize,
        hashes: usize,
    },
    #[error("the booted root partition {number} of {disk} is not one of its slots")]
    BootedSlot { disk: PathBuf, number: u32 },
    #[error("the ESP is not mounted at {} (systemd mounts it there on first access)", ESP_MOUNTS.join(", "))]
    NoEsp,
}

/// One A/B slot: a root partition and its hash tree partition.
#[derive(Debug, Clone)]
pub struct Slot {
    pub root: GptPartition,
    pub verity: GptPartition,
}

impl Slot {
    /// The version its label names, for an image `image_id` (`<IMAGE_ID>_<version>`).
    pub fn version<'a>(&'a self, image_id: &str) -> Option<&'a str> {
        boot_entry::image_version(&self.root.name, image_id)
    }
}

/// What the updater works on.
pub struct Machine {
    pub report: BootReport,
    pub image_id: String,
    pub version: String,
    /// The whole disk, e.g. `/dev/vda`, and its size.
    pub disk: PathBuf,
    pub disk_bytes: u64,
    /// The GPT as read, every used entry.
    pub header: GptHeader,
    pub partitions: Vec<GptPartition>,
    pub slots: Vec<Slot>,
    /// Index into `slots` of the booted one.
    pub booted: usize,
}

impl Machine {
    pub fn read(report_path: &Path) -> Result<Self, MachineError> {
        let report = read_report(report_path)?;
        let verity = report.verity.as_ref().ok_or(MachineError::Unverified)?;
        let (image_id, version) = match (&report.root.image_id, &report.root.image_version) {
            (Some(id), Some(version)) => (id.clone(), version.clone()),
            _ => return Err(MachineError::NoIdentity),
        };
        let (disk, booted_number) = disk_of(&verity.data_device)?;
        let disk_bytes = sysfs_number(&sysfs_block(&disk).join("size"))? * SECTOR;
        let (header, partitions) = read_gpt(&disk)?;
        let slots = pair_slots(&disk, &partitions)?;
        let booted = slots
            .iter()
            .position(|slot| slot.root.number == booted_number)
            .ok_or_else(|| MachineError::BootedSlot {
                disk: disk.clone(),
                number: booted_number,
            })?;
        Ok(Self {
            report,
            image_id,
            version,
            disk,
            disk_bytes,
            header,
            partitions,
            slots,
            booted,
        })
    }

    /// The slot an update goes into: the one not booted.
    pub fn inactive(&self) -> usize {
        usize::from(self.booted == 0)
    }

    /// The device node of partition `number` of the disk.
    pub fn partition_device(&self, number: u32) -> Result<PathBuf, MachineError> {
        partition_device(&self.disk, number)
    }
}

fn read_report(path: &Path) -> Result<BootReport, MachineError> {
    let read = |source| MachineError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(read)?
        .take(MAX_BOOT_REPORT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    serde_json::from_slice(&bytes).map_err(|source| MachineError::Report {
        path: path.to_owned(),
        source,
    })
}

fn sysfs_block(device: &Path) -> PathBuf {
    let name = device.file_name().unwrap_or_default();
    Path::new("/sys/class/block").join(name)
}

fn sysfs_number(path: &Path) -> Result<u64, MachineError> {
    let text = fs::read_to_string(path).map_err(|source| MachineError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| MachineError::Read {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
    })
}

/// The whole disk a partition device belongs to, and its partition number (sysfs: the
/// partition's directory sits inside its disk's).
fn disk_of(device: &str) -> Result<(PathBuf, u32), MachineError> {
    let sysfs = sysfs_block(Path::new(device));
    let number_file = sysfs.join("partition");
    let not_partition = || MachineError::NotPartition {
        device: device.to_owned(),
        sysfs: number_file.clone(),
    };
    let number = sysfs_number(&number_file).map_err(|_| not_partition())?;
    let real = fs::canonicalize(&sysfs).map_err(|_| not_partition())?;
    let disk_name = real
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(not_partition)?;
    let number = u32::try_from(number).map_err(|_| not_partition())?;
    Ok((Path::new("/dev").join(disk_name), number))
}

/// `/dev/<name>` of the disk's partition `number`, from the partitions sysfs lists.
fn partition_device(disk: &Path, number: u32) -> Result<PathBuf, MachineError> {
    let dir = sysfs_block(disk);
    let entries = fs::read_dir(&dir).map_err(|source| MachineError::Read {
        path: dir.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let number_file = entry.path().join("partition");
        if sysfs_number(&number_file).ok() == Some(u64::from(number)) {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(MachineError::NotPartition {
        device: format!("{} partition {number}", disk.display()),
        sysfs: dir,
    })
}

pub fn read_gpt(disk: &Path) -> Result<(GptHeader, Vec<GptPartition>), MachineError> {
    let read = |source| MachineError::Read {
        path: disk.to_owned(),
        source,
    };
    let gpt_error = |source| MachineError::Gpt {
        disk: disk.to_owned(),
        source,
    };
    let mut file = File::open(disk).map_err(read)?;
    let mut lba1 = vec![0u8; SECTOR as usize];
    file.seek(SeekFrom::Start(SECTOR)).map_err(read)?;
    file.read_exact(&mut lba1).map_err(read)?;
    let header = GptHeader::parse(&lba1).map_err(gpt_error)?;
    let mut entries = vec![0u8; usize::try_from(header.entries_bytes()).unwrap_or(0)];
    file.seek(SeekFrom::Start(header.entries_lba.0 * SECTOR))
        .map_err(read)?;
    file.read_exact(&mut entries).map_err(read)?;
    let partitions = gpt::parse_entries(&header, &entries).map_err(gpt_error)?;
    Ok((header, partitions))
}

/// The i-th root partition with the i-th root-verity partition, in table order.
pub fn pair_slots(disk: &Path, partitions: &[GptPartition]) -> Result<Vec<Slot>, MachineError> {
    let of_type = |type_guid| {
        partitions
            .iter()
            .filter(move |partition| partition.type_guid == type_guid)
            .cloned()
            .collect::<Vec<_>>()
    };
    let roots = of_type(gpt::ROOT_X86_64);
    let hashes = of_type(gpt::ROOT_VERITY_X86_64);
    if roots.len() != 2 || hashes.len() != 2 {
        return Err(MachineError::Slots {
            disk: disk.to_owned(),
            roots: roots.len(),
            hashes: hashes.len(),
        });
    }
    Ok(roots
        .into_iter()
        .zip(hashes)
        .map(|(root, verity)| Slot { root, verity })
        .collect())
}

/// The mounted ESP: the first of [`ESP_MOUNTS`] with an `EFI/Linux` directory (reading it
/// triggers systemd's automount).
pub fn find_esp(given: Option<&Path>) -> Result<PathBuf, MachineError> {
    if let Some(dir) = given {
        return Ok(dir.to_owned());
    }
    ESP_MOUNTS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("EFI/Linux").is_dir())
        .ok_or(MachineError::NoEsp)
}

/// The type #2 entries of `image_id` in `EFI/Linux/` of the ESP, by file name.
pub fn boot_entries(esp: &Path, image_id: &str) -> Result<Vec<BootEntryFile>, MachineError> {
    let dir = esp.join("EFI/Linux");
    let listing = fs::read_dir(&dir).map_err(|source| MachineError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut entries: Vec<BootEntryFile> = listing
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter_map(|name| BootEntryFile::parse(&name).ok())
        .filter(|entry| boot_entry::image_version(entry.stem(), image_id).is_some())
        .collect();
    entries.sort_by_key(ToString::to_string);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::gpt::{Guid, Lba};

    fn partition(number: u32, type_guid: Guid, name: &str) -> GptPartition {
        GptPartition {
            number,
            type_guid,
            unique_guid: Guid::from_bytes([number as u8; 16]),
            first_lba: Lba(u64::from(number) * 2048),
            last_lba: Lba(u64::from(number) * 2048 + 2047),
            attributes: 0,
            name: name.to_owned(),
        }
    }

    #[test]
    fn slots_pair_roots_with_hash_trees_in_table_order() {
        let partitions = [
            partition(1, gpt::ESP, "esp"),
            partition(2, gpt::ROOT_X86_64, "demo_1"),
            partition(3, gpt::ROOT_VERITY_X86_64, "demo_1_verity"),
            partition(4, gpt::ROOT_X86_64, "_empty"),
            partition(5, gpt::ROOT_VERITY_X86_64, "_empty"),
            partition(6, gpt::VAR, "var"),
        ];
        let slots = pair_slots(Path::new("/dev/vda"), &partitions).expect("two slots");
        assert_eq!((slots[0].root.number, slots[0].verity.number), (2, 3));
        assert_eq!((slots[1].root.number, slots[1].verity.number), (4, 5));
        assert_eq!(slots[0].version("demo"), Some("1"));
        assert_eq!(slots[1].version("demo"), None);
        let error = pair_slots(Path::new("/dev/vda"), &partitions[..3]).expect_err("one slot");
        assert_eq!(
            error.to_string(),
            "/dev/vda has 1 root and 1 root-verity partitions: A/B needs two of each"
        );
    }

    #[test]
    fn boot_entries_of_the_image_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let linux = dir.path().join("EFI/Linux");
        fs::create_dir_all(&linux).expect("mkdir");
        for name in ["demo_1.efi", "demo_2+0-3.efi", "other_1.efi", ".demo_3.tmp"] {
            fs::write(linux.join(name), b"").expect("write");
        }
        let entries = boot_entries(dir.path(), "demo").expect("lists");
        let names: Vec<String> = entries.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["demo_1.efi", "demo_2+0-3.efi"]);
        assert!(entries[1].is_bad());
    }
}

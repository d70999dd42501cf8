//! The image this machine runs, which is what gets installed: the init's boot report names
//! its verified root (data and hash devices, root hash) and its identity (IMAGE_ID,
//! IMAGE_VERSION); the verity superblock at the start of the hash device says how many bytes
//! the image and its hash tree are (either device may be larger: a partition, a padded file).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use xorbang_formats::boot_report::BootReport;
use xorbang_formats::verity::{RootHash, RootHashError, SuperblockError, VeritySuperblock};
use xorbang_formats::verity_tree::TreeGeometry;

use crate::checks::SystemDevice;

/// Where the init writes its report.
pub const BOOT_REPORT: &str = "/run/xorbang/boot.json";
const MAX_BOOT_REPORT_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RunningError {
    #[error("cannot read the boot report {}", path.display())]
    ReadReport {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a boot report", path.display())]
    Report {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the boot report {} names no verified root: only an image booted with roothash= can be \
         installed",
        .0.display()
    )]
    Unverified(PathBuf),
    #[error(
        "the running image has no IMAGE_ID/IMAGE_VERSION in its os-release (boot report {}): \
         its slot and boot entry could not be named",
        .0.display()
    )]
    NoIdentity(PathBuf),
    #[error("the boot report's root hash {0:?}")]
    RootHash(String, #[source] RootHashError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the hash device {} does not start with a verity superblock", path.display())]
    Superblock {
        path: PathBuf,
        #[source]
        source: SuperblockError,
    },
    #[error("{} is {size} bytes, but its verity superblock says the {what} is {needed} bytes", path.display())]
    Short {
        path: PathBuf,
        what: &'static str,
        size: u64,
        needed: u64,
    },
}

/// What is installed: the running image.
#[derive(Debug, Clone)]
pub struct RunningImage {
    pub image_id: String,
    pub version: String,
    pub root_hash: RootHash,
    pub data_device: PathBuf,
    pub hash_device: PathBuf,
    /// The device the root is mounted from (the verity mapping), as the report names it.
    pub root_device: String,
    /// `data_blocks × data_block_size`: the bytes dm-verity maps, the image.
    pub image_bytes: u64,
    /// The superblock and the tree: the hash area.
    pub hash_bytes: u64,
}

impl RunningImage {
    /// Reads the report at `path` and the superblock of the hash device it names.
    pub fn read(path: &Path) -> Result<Self, RunningError> {
        let report = read_report(path)?;
        let named = Named::of(&report, path)?;
        let superblock = read_superblock(&named.hash_device)?;
        let root_hash = RootHash::parse(&named.root_hash, superblock.algorithm)
            .map_err(|source| RunningError::RootHash(named.root_hash.clone(), source))?;
        let (image_bytes, hash_bytes) = sizes(&superblock);
        check_size(&named.data_device, "image", image_bytes)?;
        check_size(&named.hash_device, "hash area", hash_bytes)?;
        Ok(Self {
            image_id: named.image_id,
            version: named.version,
            root_hash,
            data_device: named.data_device,
            hash_device: named.hash_device,
            root_device: named.root_device,
            image_bytes,
            hash_bytes,
        })
    }

    /// The devices the running system is built on, for the check that the target is not one.
    pub fn system_devices(&self) -> Vec<SystemDevice> {
        [
            (&self.data_device, "the running image's verity data device"),
            (&self.hash_device, "the running image's verity hash device"),
            (&PathBuf::from(&self.root_device), "the running root"),
        ]
        .into_iter()
        .map(|(path, role)| SystemDevice {
            path: path.clone(),
            role: role.to_owned(),
        })
        .collect()
    }
}

/// What the report names, before any device is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    image_id: String,
    version: String,
    root_hash: String,
    data_device: PathBuf,
    hash_device: PathBuf,
    root_device: String,
}

impl Named {
    fn of(report: &BootReport, path: &Path) -> Result<Self, RunningError> {
        let verity = report
            .verity
            .as_ref()
            .ok_or_else(|| RunningError::Unverified(path.to_owned()))?;
        let (Some(image_id), Some(version)) = (&report.root.image_id, &report.root.image_version)
        else {
            return Err(RunningError::NoIdentity(path.to_owned()));
        };
        Ok(Self {
            image_id: image_id.clone(),
            version: version.clone(),
            root_hash: verity.root_hash.clone(),
            data_device: PathBuf::from(&verity.data_device),
            hash_device: PathBuf::from(&verity.hash_device),
            root_device: report.root.device.clone(),
        })
    }
}

/// The image's and the hash area's sizes, in bytes.
pub fn sizes(superblock: &VeritySuperblock) -> (u64, u64) {
    let image = superblock
        .data_blocks
        .saturating_mul(superblock.data_block_size.as_u64());
    (image, TreeGeometry::new(superblock).end_bytes())
}

fn read_report(path: &Path) -> Result<BootReport, RunningError> {
    let read = |source| RunningError::ReadReport {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(read)?
        .take(MAX_BOOT_REPORT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    serde_json::from_slice(&bytes).map_err(|source| RunningError::Report {
        path: path.to_owned(),
        source,
    })
}

fn read_superblock(device: &Path) -> Result<VeritySuperblock, RunningError> {
    let mut block = vec![0u8; xorbang_formats::verity::SUPERBLOCK_SIZE];
    File::open(device)
        .and_then(|mut file| file.read_exact(&mut block))
        .map_err(|source| RunningError::Read {
            path: device.to_owned(),
            source,
        })?;
    VeritySuperblock::parse(&block).map_err(|source| RunningError::Superblock {
        path: device.to_owned(),
        source,
    })
}

/// The device holds at least what the superblock says lies on it.
fn check_size(device: &Path, what: &'static str, needed: u64) -> Result<(), RunningError> {
    let size = File::open(device)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|source| RunningError::Read {
            path: device.to_owned(),
            source,
        })?;
    match size >= needed {
        true => Ok(()),
        false => Err(RunningError::Short {
            path: device.to_owned(),
            what,
            size,
            needed,
        }),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use xorbang_formats::error_chain::error_chain;
    use xorbang_formats::gpt::Guid;
    use xorbang_formats::verity::{BlockSize, HashAlgorithm, HashType, Salt};

    pub const ROOT_HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    pub fn report_json(data: &str, hash: &str, identity: bool) -> String {
        let identity = match identity {
            true => r#","image_id":"xorbang-demo","image_version":"7""#,
            false => "",
        };
        format!(
            r#"{{"version":1,"mode":"production",
                "root":{{"spec":"roothash","device":"/dev/mapper/root","fstype":"squashfs",
                         "verified":true{identity}}},
                "verity":{{"root_hash":"{ROOT_HASH}","data_device":"{data}",
                           "hash_device":"{hash}","status":"V"}},
                "modules_loaded":0,"init":"/sbin/init","stages":[],
                "uptime_start_us":0,"uptime_handoff_us":0}}"#
        )
    }

    fn superblock(data_blocks: u64) -> VeritySuperblock {
        VeritySuperblock {
            hash_type: HashType::Normal,
            uuid: Guid::from_bytes([1; 16]),
            algorithm: HashAlgorithm::Sha256,
            data_block_size: BlockSize::DEFAULT,
            hash_block_size: BlockSize::DEFAULT,
            data_blocks,
            salt: Salt::from_array([7; 32]),
        }
    }

    /// A report over files standing in for the devices: `blocks` data blocks.
    pub fn fake_image(dir: &Path, blocks: u64) -> PathBuf {
        let data = dir.join("root.img");
        let hash = dir.join("root.verity");
        std::fs::write(&data, vec![0x5a; (blocks * 4096) as usize]).expect("data");
        let sb = superblock(blocks);
        let mut tree = sb.to_bytes().to_vec();
        tree.resize(sizes(&sb).1 as usize, 0);
        std::fs::write(&hash, tree).expect("hash");
        let report = dir.join("boot.json");
        let json = report_json(
            &data.display().to_string(),
            &hash.display().to_string(),
            true,
        );
        std::fs::write(&report, json).expect("report");
        report
    }

    #[test]
    fn the_report_and_the_superblock_give_identity_and_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = fake_image(dir.path(), 300);
        let image = RunningImage::read(&report).expect("reads");
        assert_eq!(
            (image.image_id.as_str(), image.version.as_str()),
            ("xorbang-demo", "7")
        );
        assert_eq!(image.root_hash.to_string(), ROOT_HASH);
        assert_eq!(image.image_bytes, 300 * 4096);
        // The superblock's block, then 300 digests of 32 bytes (128 a block): 3 leaf
        // blocks and the top one.
        assert_eq!(image.hash_bytes, 5 * 4096);
        assert_eq!(image.root_device, "/dev/mapper/root");
        assert_eq!(image.system_devices().len(), 3);
    }

    #[test]
    fn reports_without_verity_or_identity_and_short_devices_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("boot.json");
        std::fs::write(&report, report_json("/dev/vda2", "/dev/vda3", false)).expect("write");
        let error = RunningImage::read(&report).expect_err("no identity");
        assert!(matches!(error, RunningError::NoIdentity(_)), "{error}");
        let unverified = report_json("x", "y", true).replace(
            &format!(
                r#""verity":{{"root_hash":"{ROOT_HASH}","data_device":"x",
                           "hash_device":"y","status":"V"}}"#
            ),
            r#""verity":null"#,
        );
        std::fs::write(&report, unverified).expect("write");
        let error = RunningImage::read(&report).expect_err("unverified");
        assert!(matches!(error, RunningError::Unverified(_)), "{error}");

        let report = fake_image(dir.path(), 300);
        let data = dir.path().join("root.img");
        std::fs::write(&data, vec![0u8; 4096]).expect("shorten");
        let error = RunningImage::read(&report).expect_err("short");
        assert_eq!(
            error_chain(&error),
            format!(
                "{} is 4096 bytes, but its verity superblock says the image is 1228800 bytes",
                data.display()
            )
        );
        std::fs::write(dir.path().join("root.verity"), vec![0u8; 4096]).expect("no superblock");
        let error = RunningImage::read(&report).expect_err("no superblock");
        assert!(
            error_chain(&error).contains("does not start with a verity superblock: not a verity"),
            "{}",
            error_chain(&error)
        );
    }
}

//! Where host config comes from, tried in order of trust: a file in the (signed) initramfs,
//! then the fleet's file for one of this machine's MAC addresses there
//! (`/etc/xorbang/hosts/<mac>.toml`), QEMU's fw_cfg entry `opt/org.xorbang/host-config`, the
//! per-host part a netboot loader appended (`/netboot/host-config.toml`: from the network,
//! so `local`), a config partition on the root's disk (PARTLABEL `xorbang-config`,
//! `host-config.toml` at its root) and that disk's ESP (`xorbang/host-config.toml`);
//! `xorbang.config=` names one source instead. Each candidate
//! comes with its detached signature (`….minisig`) when there is one. Only reading happens
//! here, with [`crate::untrusted`]'s rules; deciding what to trust is [`super::host_config_trust`]'s.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::discovery::block_devices::{self, Siblings};
use crate::handoff::mounts::{self, Mount, MountOp};
use crate::kernel::module_loader::ModuleLoader;
use crate::options::ConfigSource;
use crate::paths::Paths;
use crate::untrusted::{self, UntrustedFileError};
use xorbang_formats::boot_report::ConfigTrust;
use xorbang_formats::devspec::DeviceSpec;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::gpt;
use xorbang_formats::host_config::parse_mac;
use xorbang_formats::netboot::{self as fleet, HOSTS_DIR, HOST_PART_FILE};
use xorbang_formats::signature::{MAX_KEY_OR_SIGNATURE_BYTES, SIGNATURE_SUFFIX};

/// The fw_cfg file name QEMU is given with `-fw_cfg name=opt/org.xorbang/host-config,file=…`.
pub const FW_CFG_NAME: &str = "opt/org.xorbang/host-config";
/// Where the default search looks inside the initramfs.
pub const INITRAMFS_FILE: &str = "etc/xorbang/host-config.toml";
/// The partition label the default search looks for.
pub const PARTITION_LABEL: &str = "xorbang-config";
/// The file at the root of a config partition.
pub const PARTITION_FILE: &str = "host-config.toml";
/// The file on the ESP.
pub const ESP_FILE: &str = "xorbang/host-config.toml";
/// Far above a real host config (a few KiB), and small enough that reading it through
/// fw_cfg's port I/O and deciding it stays well under a second of init time under TCG.
pub const MAX_BYTES: u64 = 64 * 1024;

/// One host config found: where, how far its source is trusted before any signature, its
/// text and its detached signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub origin: String,
    pub trust: ConfigTrust,
    pub text: String,
    pub signature: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    #[error("host config {origin}")]
    Read {
        origin: String,
        source: UntrustedFileError,
    },
    #[error("host config {origin} is not UTF-8 text")]
    NotText { origin: String },
    #[error("xorbang.config={0}: no such file in the initramfs")]
    Missing(PathBuf),
    #[error("xorbang.config=fw_cfg: QEMU passed no {FW_CFG_NAME} (looked for {0})")]
    NoFwCfg(PathBuf),
    #[error("xorbang.config={0}: no such partition")]
    NoPartition(DeviceSpec),
    #[error("xorbang.config=esp: the root's disk has no EFI System Partition")]
    NoEsp,
    #[error("host config {origin}: {detail}")]
    Partition { origin: String, detail: String },
    #[error("host config {origin}: no {file} on it")]
    NotOnPartition { origin: String, file: &'static str },
}

/// The directory the qemu_fw_cfg driver shows an fw_cfg entry in (`raw` holds its bytes).
pub fn fw_cfg_dir(paths: &Paths, name: &str) -> PathBuf {
    paths.sys().join("firmware/qemu_fw_cfg/by_name").join(name)
}

/// Offers each host config found to `consider`, most trusted source first, until it breaks
/// with a result. A source that cannot be read is logged and skipped; one the command line
/// names explicitly must exist (logged as an error when it does not).
pub fn search<R>(
    paths: &Paths,
    source: &ConfigSource,
    root_device: &Path,
    modules: &mut ModuleLoader,
    mut consider: impl FnMut(Candidate) -> ControlFlow<R>,
) -> Option<R> {
    let mut disks = Disks {
        paths,
        modules,
        root_device,
        siblings: None,
    };
    for place in places(&mut disks, source) {
        let found = match place {
            Ok(place) => disks.read(&place),
            Err(error) => Err(error),
        };
        match found {
            Ok(Some(candidate)) => {
                if let ControlFlow::Break(result) = consider(candidate) {
                    return Some(result);
                }
            }
            Ok(None) => {}
            Err(error) => log::error!("{}; trying the next source", error_chain(&error)),
        }
    }
    None
}

/// Where a host config may be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Initramfs {
        file: PathBuf,
        required: bool,
    },
    FwCfg {
        required: bool,
    },
    Partition {
        device: PathBuf,
        file: &'static str,
        required: bool,
    },
    /// A partition beside the root, looked for only when the search gets this far: a config
    /// found in the initramfs or fw_cfg costs no disk read.
    BesideRoot(Beside),
    /// The fleet's configs in the initramfs, picked by this machine's MAC addresses.
    HostByMac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beside {
    ConfigPartition,
    Esp,
}

/// The places to look, in order of trust; an explicit source that is not there is an error.
fn places(disks: &mut Disks, source: &ConfigSource) -> Vec<Result<Place, ConfigSourceError>> {
    let initramfs = |file: PathBuf, required| Place::Initramfs { file, required };
    match source {
        ConfigSource::Nothing => Vec::new(),
        ConfigSource::FwCfg => vec![Ok(Place::FwCfg { required: true })],
        ConfigSource::File(file) => vec![Ok(initramfs(file.clone(), true))],
        ConfigSource::Partition(spec) => vec![disks
            .find(spec)
            .map(|device| Place::Partition {
                device,
                file: PARTITION_FILE,
                required: true,
            })
            .ok_or_else(|| ConfigSourceError::NoPartition(spec.clone()))],
        ConfigSource::Esp => vec![disks
            .beside_root(Beside::Esp)
            .map(|device| Place::Partition {
                device,
                file: ESP_FILE,
                required: true,
            })
            .ok_or(ConfigSourceError::NoEsp)],
        ConfigSource::Search => vec![
            Ok(initramfs(PathBuf::from("/").join(INITRAMFS_FILE), false)),
            Ok(Place::HostByMac),
            Ok(Place::FwCfg { required: false }),
            Ok(initramfs(PathBuf::from("/").join(HOST_PART_FILE), false)),
            Ok(Place::BesideRoot(Beside::ConfigPartition)),
            Ok(Place::BesideRoot(Beside::Esp)),
        ],
    }
}

/// How messages and the report name a file on a partition.
fn origin_of(device: &Path, file: &str) -> String {
    format!("{}:/{file}", device.display())
}

/// Partitions on the machine's disks, for the sources that are files on a file system.
struct Disks<'a> {
    paths: &'a Paths,
    modules: &'a mut ModuleLoader,
    root_device: &'a Path,
    /// The root's disk, read once for both the config partition and the ESP.
    siblings: Option<Siblings>,
}

impl Disks<'_> {
    fn read(&mut self, place: &Place) -> Result<Option<Candidate>, ConfigSourceError> {
        match place {
            Place::Initramfs { file, required } => {
                let relative = file.strip_prefix("/").unwrap_or(file);
                let origin = format!("initramfs:{}", file.display());
                let found = read_pair(self.paths.root(), relative, &origin, initramfs_trust(file))?;
                match found {
                    None if *required => Err(ConfigSourceError::Missing(file.clone())),
                    found => Ok(found),
                }
            }
            Place::FwCfg { required } => {
                let dir = fw_cfg_dir(self.paths, FW_CFG_NAME);
                if !dir.exists() {
                    return match required {
                        true => Err(ConfigSourceError::NoFwCfg(dir)),
                        false => Ok(None),
                    };
                }
                let origin = format!("fw_cfg {FW_CFG_NAME}");
                let text = read_text(&dir, Path::new("raw"), &origin, MAX_BYTES)?;
                let signature_dir =
                    fw_cfg_dir(self.paths, &format!("{FW_CFG_NAME}{SIGNATURE_SUFFIX}"));
                let signature = match signature_dir.exists() {
                    true => read_text(
                        &signature_dir,
                        Path::new("raw"),
                        &format!("{origin}{SIGNATURE_SUFFIX}"),
                        MAX_KEY_OR_SIGNATURE_BYTES,
                    )?,
                    false => None,
                };
                Ok(text.map(|text| Candidate {
                    origin,
                    trust: ConfigTrust::Platform,
                    text,
                    signature,
                }))
            }
            Place::Partition {
                device,
                file,
                required,
            } => {
                let found = self.read_from(device, file)?;
                match found {
                    None if *required => Err(ConfigSourceError::NotOnPartition {
                        origin: origin_of(device, file),
                        file,
                    }),
                    found => Ok(found),
                }
            }
            Place::HostByMac => self.host_by_mac(),
            Place::BesideRoot(beside) => match self.beside_root(*beside) {
                Some(device) => {
                    let file = match beside {
                        Beside::ConfigPartition => PARTITION_FILE,
                        Beside::Esp => ESP_FILE,
                    };
                    self.read_from(&device, file)
                }
                None => Ok(None),
            },
        }
    }

    /// The fleet's config for the first NIC (by name) that has one in [`HOSTS_DIR`]; an
    /// initramfs without the directory costs no look at the NICs.
    fn host_by_mac(&self) -> Result<Option<Candidate>, ConfigSourceError> {
        let hosts = self.paths.root().join(HOSTS_DIR);
        if !hosts.is_dir() {
            return Ok(None);
        }
        let nics = nic_addresses(&self.paths.sys().join("class/net"));
        for (name, mac) in &nics {
            let file = Path::new(HOSTS_DIR).join(fleet::host_file_name(mac));
            let origin = format!("initramfs:/{} ({name})", file.display());
            if let Some(found) = read_pair(self.paths.root(), &file, &origin, ConfigTrust::Signed)?
            {
                return Ok(Some(found));
            }
        }
        let seen: Vec<String> = nics
            .iter()
            .map(|(name, mac)| format!("{name} {}", fleet::mac_key(mac)))
            .collect();
        log::info!(
            "host config: /{HOSTS_DIR} has no file for this machine's NICs ({})",
            match seen.is_empty() {
                true => "none found: is the NIC's driver in the initramfs?".to_owned(),
                false => seen.join(", "),
            }
        );
        Ok(None)
    }

    /// The partition `spec` names, if it is there (the root's disks have appeared by now).
    fn find(&self, spec: &DeviceSpec) -> Option<PathBuf> {
        match block_devices::resolve(spec, &self.paths.sys_class_block(), &self.paths.dev()) {
            Ok(found) => found,
            Err(error) => {
                log::warn!(
                    "looking for the host config partition {spec}: {}",
                    error_chain(&error)
                );
                None
            }
        }
    }

    /// The config partition (PARTLABEL `xorbang-config`) or the ESP on the root's disk, if
    /// it has exactly one: another disk (a USB stick) is never searched.
    fn beside_root(&mut self, beside: Beside) -> Option<PathBuf> {
        if self.siblings.is_none() {
            let paths = self.paths;
            match block_devices::siblings(self.root_device, &paths.sys_class_block(), &paths.dev())
            {
                Ok(siblings) => self.siblings = Some(siblings),
                Err(error) => {
                    log::warn!("host config beside the root: {}", error_chain(&error));
                    return None;
                }
            }
        }
        let siblings = self.siblings.as_ref()?;
        let (what, found) = match beside {
            Beside::ConfigPartition => ("partition", siblings.with_label(PARTITION_LABEL)),
            Beside::Esp => ("on the ESP", siblings.of_type(gpt::ESP)),
        };
        found.unwrap_or_else(|error| {
            log::warn!("host config {what}: {}", error_chain(&error));
            None
        })
    }

    /// Reads `file` (and its signature) from the file system on `device`, mounted as
    /// untrusted storage for just this. `None` when the file is not there, or the file
    /// system is one this initramfs cannot mount (the modules are optional:
    /// `--modules …,vfat,nls_cp437,nls_ascii`).
    fn read_from(
        &mut self,
        device: &Path,
        file: &'static str,
    ) -> Result<Option<Candidate>, ConfigSourceError> {
        let origin = origin_of(device, file);
        let fail = |detail: String| ConfigSourceError::Partition {
            origin: origin.clone(),
            detail,
        };
        let fstype = match block_devices::probe_device(device) {
            Ok(Some(info)) => info.kind.to_string(),
            Ok(None) => return Err(fail("holds no file system this init knows".to_owned())),
            Err(error) => return Err(fail(error_chain(&error))),
        };
        if !self.can_mount(&fstype) {
            log::warn!(
                "not reading {origin}: the initramfs carries no {fstype} driver (add it with \
                 xorbang-build initrd --modules …,{})",
                filesystem_modules(&fstype).join(",")
            );
            return Ok(None);
        }
        let mount = self.paths.xorbang_run().join("config-source");
        let read_only = Mount::untrusted(&device.to_string_lossy(), mount.clone(), &fstype);
        mounts::execute(&[MountOp::Mkdir(mount.clone()), MountOp::Mount(read_only)])
            .map_err(|error| fail(error_chain(&error)))?;
        let found = read_pair(&mount, Path::new(file), &origin, ConfigTrust::Local);
        let unmounted = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::empty())
            .map_err(|errno| fail(format!("cannot unmount {}: {errno}", mount.display())))
            .and_then(|()| {
                std::fs::remove_dir(&mount).map_err(|error| {
                    fail(format!(
                        "cannot remove {}: {}",
                        mount.display(),
                        error_chain(&error)
                    ))
                })
            });
        let found = found?;
        unmounted?;
        Ok(found)
    }

    /// Whether the kernel knows `fstype` already, or the initramfs carries its modules (then
    /// loaded, with what FAT mounts ask for).
    fn can_mount(&mut self, fstype: &str) -> bool {
        if !self.modules.can_provide(fstype) {
            return false;
        }
        for module in filesystem_modules(fstype) {
            if !self.modules.can_provide(module) {
                continue;
            }
            if let Err(error) = self.modules.ensure(module) {
                log::warn!("{}", error_chain(&error));
                return false;
            }
        }
        true
    }
}

/// The modules a file system needs (FAT mounts ask for the code pages Debian's defaults name).
fn filesystem_modules(fstype: &str) -> Vec<&str> {
    match fstype {
        "vfat" => vec!["vfat", "nls_cp437", "nls_ascii"],
        "ext4" => vec!["ext4", "crc32c_generic"],
        other => vec![other],
    }
}

/// A file the initramfs builder wrote is covered by the UKI's signature; the per-host part
/// a netboot loader appends is not, and lands in its own directory so it cannot pass for one.
fn initramfs_trust(file: &Path) -> ConfigTrust {
    let part_dir = Path::new("/").join(HOST_PART_FILE);
    match part_dir.parent().is_some_and(|dir| file.starts_with(dir)) {
        true => ConfigTrust::Local,
        false => ConfigTrust::Signed,
    }
}

/// The network interfaces with an Ethernet address, sorted by name: `(name, MAC)`.
/// Interfaces whose address cannot be read are passed over (a virtual one going away).
fn nic_addresses(class_net: &Path) -> Vec<(String, [u8; 6])> {
    let Ok(entries) = std::fs::read_dir(class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<(String, [u8; 6])> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let text = std::fs::read_to_string(entry.path().join("address")).ok()?;
            let mac = parse_mac(text.trim()).ok()?;
            (mac != [0; 6]).then_some((name, mac))
        })
        .collect();
    nics.sort();
    nics
}

/// A config file beneath `dir` and its `.minisig`, if the file is there.
fn read_pair(
    dir: &Path,
    relative: &Path,
    origin: &str,
    trust: ConfigTrust,
) -> Result<Option<Candidate>, ConfigSourceError> {
    let Some(text) = read_text(dir, relative, origin, MAX_BYTES)? else {
        return Ok(None);
    };
    let mut signature_file = relative.as_os_str().to_owned();
    signature_file.push(SIGNATURE_SUFFIX);
    let signature = read_text(
        dir,
        Path::new(&signature_file),
        &format!("{origin}{SIGNATURE_SUFFIX}"),
        MAX_KEY_OR_SIGNATURE_BYTES,
    )?;
    Ok(Some(Candidate {
        origin: origin.to_owned(),
        trust,
        text,
        signature,
    }))
}

fn read_text(
    dir: &Path,
    relative: &Path,
    origin: &str,
    max: u64,
) -> Result<Option<String>, ConfigSourceError> {
    let bytes =
        untrusted::read_beneath(dir, relative, max).map_err(|source| ConfigSourceError::Read {
            origin: origin.to_owned(),
            source,
        })?;
    bytes
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| ConfigSourceError::NotText {
                origin: origin.to_owned(),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::module_loader::KernelView;

    /// Every candidate `search` offers, in order, on a fake root without disks or modules.
    fn offered(paths: &Paths, source: &ConfigSource) -> Vec<Candidate> {
        let mut modules =
            ModuleLoader::open(&paths.root().join("no-modules"), KernelView::of(paths))
                .expect("empty");
        let mut seen = Vec::new();
        let none: Option<()> = search(
            paths,
            source,
            &paths.dev().join("vda1"),
            &mut modules,
            |c| {
                seen.push(c);
                ControlFlow::Continue(())
            },
        );
        assert_eq!(none, None);
        seen
    }

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn sources_come_in_order_of_trust_with_their_signatures() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        assert!(offered(&paths, &ConfigSource::Search).is_empty());
        write(root.path(), INITRAMFS_FILE, "version = 1\n");
        let fw_cfg = "sys/firmware/qemu_fw_cfg/by_name/opt/org.xorbang/host-config";
        write(root.path(), &format!("{fw_cfg}/raw"), "hostname = \"a\"\n");
        write(root.path(), &format!("{fw_cfg}.minisig/raw"), "sig");
        let found = offered(&paths, &ConfigSource::Search);
        let summary: Vec<(&str, ConfigTrust, Option<&str>)> = found
            .iter()
            .map(|c| (c.origin.as_str(), c.trust, c.signature.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "initramfs:/etc/xorbang/host-config.toml",
                    ConfigTrust::Signed,
                    None
                ),
                (
                    "fw_cfg opt/org.xorbang/host-config",
                    ConfigTrust::Platform,
                    Some("sig")
                ),
            ]
        );
        assert!(offered(&paths, &ConfigSource::Nothing).is_empty());
    }

    #[test]
    fn a_fleet_file_is_picked_by_mac_and_a_netboot_part_is_local() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        write(
            root.path(),
            "sys/class/net/lo/address",
            "00:00:00:00:00:00\n",
        );
        write(
            root.path(),
            "sys/class/net/eth1/address",
            "52:54:00:14:00:02\n",
        );
        write(
            root.path(),
            "sys/class/net/eth0/address",
            "52:54:00:14:00:09\n",
        );
        write(root.path(), HOST_PART_FILE, "hostname = \"part\"\n");
        // No hosts directory: the NICs are not even looked at, the part is offered.
        let found = offered(&paths, &ConfigSource::Search);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].origin, "initramfs:/netboot/host-config.toml");
        assert_eq!(found[0].trust, ConfigTrust::Local);
        write(
            root.path(),
            "etc/xorbang/hosts/52-54-00-14-00-01.toml",
            "hostname = \"one\"\n",
        );
        write(
            root.path(),
            "etc/xorbang/hosts/52-54-00-14-00-02.toml",
            "hostname = \"two\"\n",
        );
        write(
            root.path(),
            "etc/xorbang/hosts/52-54-00-14-00-02.toml.minisig",
            "sig",
        );
        let found = offered(&paths, &ConfigSource::Search);
        let summary: Vec<(&str, ConfigTrust, &str)> = found
            .iter()
            .map(|c| (c.origin.as_str(), c.trust, c.text.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "initramfs:/etc/xorbang/hosts/52-54-00-14-00-02.toml (eth1)",
                    ConfigTrust::Signed,
                    "hostname = \"two\"\n"
                ),
                (
                    "initramfs:/netboot/host-config.toml",
                    ConfigTrust::Local,
                    "hostname = \"part\"\n"
                ),
            ]
        );
        assert_eq!(found[0].signature.as_deref(), Some("sig"));
        let named = ConfigSource::File(Path::new("/").join(HOST_PART_FILE));
        assert_eq!(offered(&paths, &named)[0].trust, ConfigTrust::Local);
    }

    #[test]
    fn an_explicit_source_must_exist_and_bad_files_are_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        let mut modules =
            ModuleLoader::open(&paths.root().join("no-modules"), KernelView::of(&paths))
                .expect("empty");
        let root_device = paths.dev().join("vda1");
        let mut disks = Disks {
            paths: &paths,
            modules: &mut modules,
            root_device: &root_device,
            siblings: None,
        };
        let missing = Place::Initramfs {
            file: "/host.toml".into(),
            required: true,
        };
        let error = disks.read(&missing).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "xorbang.config=/host.toml: no such file in the initramfs"
        );
        let error = disks
            .read(&Place::FwCfg { required: true })
            .expect_err("no fw_cfg");
        assert!(error
            .to_string()
            .starts_with("xorbang.config=fw_cfg: QEMU passed no"));
        std::fs::write(root.path().join("bin.toml"), [0xff, 0xfe]).expect("write");
        let binary = Place::Initramfs {
            file: "/bin.toml".into(),
            required: true,
        };
        let error = disks.read(&binary).expect_err("binary");
        assert_eq!(
            error.to_string(),
            "host config initramfs:/bin.toml is not UTF-8 text"
        );
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("link.toml")).expect("link");
        let link = Place::Initramfs {
            file: "/link.toml".into(),
            required: true,
        };
        let error = disks.read(&link).expect_err("symlink");
        assert!(error_chain(&error).contains("is a symlink"), "{error}");
    }
}

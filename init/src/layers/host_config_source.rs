//! Where host config comes from, in PRODUCT.md's precedence: `xorbang.config=`, then QEMU's
//! fw_cfg entry `opt/org.xorbang/host-config`, then a config partition (PARTLABEL
//! `xorbang-config`, `host-config.toml` at its root) or the ESP of the root's disk
//! (`xorbang/host-config.toml`), then a file in the initramfs (a PXE server appends a
//! per-host cpio holding it). Only reading happens here; parsing is [`xorbang_formats::host_config`]'s.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::discovery::block_devices;
use crate::handoff::mounts::{self, Mount, MountOp};
use crate::kernel::module_loader::ModuleLoader;
use crate::options::ConfigSource;
use crate::paths::Paths;
use xorbang_formats::devspec::DeviceSpec;
use xorbang_formats::gpt;

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
/// Far above any real host config; bounds what PID 1 reads from an untrusted source.
const MAX_BYTES: u64 = 1 << 20;

/// A config's text and where it came from, for messages and the boot report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigText {
    pub origin: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    #[error("host config {origin}: cannot read {path}: {source}")]
    Read {
        origin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host config {origin} is larger than {MAX_BYTES} bytes")]
    TooLarge { origin: String },
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

/// The fw_cfg entry's contents as the qemu_fw_cfg driver shows them in sysfs.
pub fn fw_cfg_path(paths: &Paths) -> PathBuf {
    paths
        .sys()
        .join("firmware/qemu_fw_cfg/by_name")
        .join(FW_CFG_NAME)
        .join("raw")
}

/// The host config to apply, if any source has one. `root_device` is the block device the
/// root image is read from: its disk's ESP is searched.
pub fn load(
    paths: &Paths,
    source: &ConfigSource,
    root_device: &Path,
    modules: &mut ModuleLoader,
) -> Result<Option<ConfigText>, ConfigSourceError> {
    let fw_cfg = fw_cfg_path(paths);
    let in_initramfs = |file: &Path| paths.root().join(file.strip_prefix("/").unwrap_or(file));
    let mut disks = Disks { paths, modules };
    match source {
        ConfigSource::Nothing => Ok(None),
        ConfigSource::FwCfg if fw_cfg.exists() => {
            read(&fw_cfg, format!("fw_cfg {FW_CFG_NAME}")).map(Some)
        }
        ConfigSource::FwCfg => Err(ConfigSourceError::NoFwCfg(fw_cfg)),
        ConfigSource::Partition(spec) => {
            let device = disks
                .find(spec)
                .ok_or_else(|| ConfigSourceError::NoPartition(spec.clone()))?;
            disks.required(&device, PARTITION_FILE, spec).map(Some)
        }
        ConfigSource::Esp => {
            let esp = disks.esp_of(root_device).ok_or(ConfigSourceError::NoEsp)?;
            let spec = DeviceSpec::Path(esp.clone());
            disks.required(&esp, ESP_FILE, &spec).map(Some)
        }
        ConfigSource::File(file) => {
            let path = in_initramfs(file);
            if !path.exists() {
                return Err(ConfigSourceError::Missing(file.clone()));
            }
            read(&path, format!("initramfs:{}", file.display())).map(Some)
        }
        ConfigSource::Search => {
            if fw_cfg.exists() {
                return read(&fw_cfg, format!("fw_cfg {FW_CFG_NAME}")).map(Some);
            }
            let label = DeviceSpec::PartLabel(PARTITION_LABEL.to_owned());
            if let Some(device) = disks.find(&label) {
                if let Some(text) = disks.read_from(&device, PARTITION_FILE, &label)? {
                    return Ok(Some(text));
                }
            }
            if let Some(esp) = disks.esp_of(root_device) {
                let spec = DeviceSpec::Path(esp.clone());
                if let Some(text) = disks.read_from(&esp, ESP_FILE, &spec)? {
                    return Ok(Some(text));
                }
            }
            let file = in_initramfs(Path::new(INITRAMFS_FILE));
            if file.exists() {
                return read(&file, format!("initramfs:/{INITRAMFS_FILE}")).map(Some);
            }
            Ok(None)
        }
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
}

impl Disks<'_> {
    /// The partition `spec` names, if it is there (the root's disks have appeared by now).
    fn find(&self, spec: &DeviceSpec) -> Option<PathBuf> {
        match block_devices::resolve(spec, &self.paths.sys_class_block(), &self.paths.dev()) {
            Ok(found) => found,
            Err(error) => {
                log::warn!("looking for the host config partition {spec}: {error}");
                None
            }
        }
    }

    /// The EFI System Partition on the disk of `root_device`, if it has exactly one.
    fn esp_of(&self, root_device: &Path) -> Option<PathBuf> {
        let found = block_devices::sibling_of_type(
            root_device,
            gpt::ESP,
            &self.paths.sys_class_block(),
            &self.paths.dev(),
        );
        found.unwrap_or_else(|error| {
            log::warn!("host config on the ESP: {error}");
            None
        })
    }

    /// [`Self::read_from`] for a source the command line named: absent is an error.
    fn required(
        &mut self,
        device: &Path,
        file: &'static str,
        spec: &DeviceSpec,
    ) -> Result<ConfigText, ConfigSourceError> {
        self.read_from(device, file, spec)?
            .ok_or_else(|| ConfigSourceError::NotOnPartition {
                origin: origin_of(device, file),
                file,
            })
    }

    /// Reads `file` from the file system on `device`, mounted read-only for just this.
    /// `None` when the file is not there, or the file system is one this initramfs cannot
    /// mount (the modules are optional: `--modules …,vfat,nls_cp437,nls_ascii`).
    fn read_from(
        &mut self,
        device: &Path,
        file: &'static str,
        spec: &DeviceSpec,
    ) -> Result<Option<ConfigText>, ConfigSourceError> {
        let origin = origin_of(device, file);
        let fail = |detail: String| ConfigSourceError::Partition {
            origin: origin.clone(),
            detail,
        };
        let fstype = match block_devices::probe_device(device) {
            Ok(Some(info)) => info.kind.to_string(),
            Ok(None) => return Err(fail(format!("{spec} holds no file system this init knows"))),
            Err(error) => return Err(fail(error.to_string())),
        };
        if !self.can_mount(&fstype) {
            log::debug!("not reading {origin}: the initramfs carries no {fstype} driver");
            return Ok(None);
        }
        let mount = self.paths.xorbang_run().join("config-source");
        let mut read_only = Mount::read_only(&device.to_string_lossy(), mount.clone(), &fstype);
        read_only.restricted = true;
        mounts::execute(&[MountOp::Mkdir(mount.clone()), MountOp::Mount(read_only)])
            .map_err(|error| fail(error.to_string()))?;
        let path = mount.join(file);
        let text = if path.exists() {
            read(&path, origin.clone()).map(Some)
        } else {
            Ok(None)
        };
        let unmounted = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::empty())
            .map_err(|errno| fail(format!("cannot unmount {}: {errno}", mount.display())))
            .and_then(|()| {
                std::fs::remove_dir(&mount)
                    .map_err(|error| fail(format!("cannot remove {}: {error}", mount.display())))
            });
        let text = text?;
        unmounted?;
        Ok(text)
    }

    /// Whether the kernel knows `fstype` already, or the initramfs carries its module (then
    /// loaded, with the code pages FAT mounts ask for).
    fn can_mount(&mut self, fstype: &str) -> bool {
        let known =
            std::fs::read_to_string(self.paths.proc().join("filesystems")).is_ok_and(|list| {
                list.lines()
                    .any(|line| line.split_whitespace().last() == Some(fstype))
            });
        if known {
            return true;
        }
        if !self.modules.carries(fstype) {
            return false;
        }
        let mut needed = vec![fstype];
        if fstype == "vfat" {
            needed.extend(["nls_cp437", "nls_ascii"]);
        }
        for module in needed {
            if let Err(error) = self.modules.ensure(module) {
                log::warn!("{error}");
                return false;
            }
        }
        true
    }
}

fn read(path: &Path, origin: String) -> Result<ConfigText, ConfigSourceError> {
    let read_error = |source| ConfigSourceError::Read {
        origin: origin.clone(),
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ConfigSourceError::TooLarge { origin });
    }
    let text = String::from_utf8(bytes).map_err(|_| ConfigSourceError::NotText {
        origin: origin.clone(),
    })?;
    Ok(ConfigText { origin, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `load` on a fake root: no disks, no modules.
    fn load_in(
        paths: &Paths,
        source: &ConfigSource,
    ) -> Result<Option<ConfigText>, ConfigSourceError> {
        let mut modules = ModuleLoader::open(&paths.root().join("no-modules")).expect("empty");
        load(paths, source, &paths.dev().join("vda1"), &mut modules)
    }

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn fw_cfg_comes_before_the_initramfs_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        assert_eq!(
            load_in(&paths, &ConfigSource::Search).expect("nothing"),
            None
        );
        write(root.path(), INITRAMFS_FILE, "version = 1\n");
        let found = load_in(&paths, &ConfigSource::Search)
            .expect("file")
            .expect("some");
        assert_eq!(found.origin, "initramfs:/etc/xorbang/host-config.toml");
        write(
            root.path(),
            "sys/firmware/qemu_fw_cfg/by_name/opt/org.xorbang/host-config/raw",
            "hostname = \"a\"\n",
        );
        let found = load_in(&paths, &ConfigSource::Search)
            .expect("fw_cfg")
            .expect("some");
        assert_eq!(found.origin, "fw_cfg opt/org.xorbang/host-config");
        assert_eq!(found.text, "hostname = \"a\"\n");
        assert_eq!(load_in(&paths, &ConfigSource::Nothing).expect("none"), None);
    }

    #[test]
    fn an_explicit_source_must_exist() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        let missing =
            load_in(&paths, &ConfigSource::File("/host.toml".into())).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "xorbang.config=/host.toml: no such file in the initramfs"
        );
        let no_fw_cfg = load_in(&paths, &ConfigSource::FwCfg).expect_err("no fw_cfg");
        assert!(no_fw_cfg
            .to_string()
            .starts_with("xorbang.config=fw_cfg: QEMU passed no"));
        std::fs::write(root.path().join("bin.toml"), [0xff, 0xfe]).expect("write");
        let binary = load_in(&paths, &ConfigSource::File("/bin.toml".into())).expect_err("binary");
        assert_eq!(
            binary.to_string(),
            "host config initramfs:/bin.toml is not UTF-8 text"
        );
    }
}

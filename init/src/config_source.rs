//! Where host config comes from, in PRODUCT.md's precedence: `xorbang.config=`, then QEMU's
//! fw_cfg entry `opt/org.xorbang/host-config`, then a file in the initramfs (a PXE server
//! appends a per-host cpio holding it). Only reading happens here; parsing is
//! [`crate::hostconfig`]'s.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::options::ConfigSource;
use crate::paths::Paths;

/// The fw_cfg file name QEMU is given with `-fw_cfg name=opt/org.xorbang/host-config,file=…`.
pub const FW_CFG_NAME: &str = "opt/org.xorbang/host-config";
/// Where the default search looks inside the initramfs.
pub const INITRAMFS_FILE: &str = "etc/xorbang/host-config.toml";
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
}

/// The fw_cfg entry's contents as the qemu_fw_cfg driver shows them in sysfs.
pub fn fw_cfg_path(paths: &Paths) -> PathBuf {
    paths
        .sys()
        .join("firmware/qemu_fw_cfg/by_name")
        .join(FW_CFG_NAME)
        .join("raw")
}

/// The host config to apply, if any source has one.
pub fn load(paths: &Paths, source: &ConfigSource) -> Result<Option<ConfigText>, ConfigSourceError> {
    let fw_cfg = fw_cfg_path(paths);
    let in_initramfs = |file: &Path| paths.root().join(file.strip_prefix("/").unwrap_or(file));
    match source {
        ConfigSource::Nothing => Ok(None),
        ConfigSource::FwCfg if fw_cfg.exists() => {
            read(&fw_cfg, format!("fw_cfg {FW_CFG_NAME}")).map(Some)
        }
        ConfigSource::FwCfg => Err(ConfigSourceError::NoFwCfg(fw_cfg)),
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
            let file = in_initramfs(Path::new(INITRAMFS_FILE));
            if file.exists() {
                return read(&file, format!("initramfs:/{INITRAMFS_FILE}")).map(Some);
            }
            Ok(None)
        }
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

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn fw_cfg_comes_before_the_initramfs_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        assert_eq!(load(&paths, &ConfigSource::Search).expect("nothing"), None);
        write(root.path(), INITRAMFS_FILE, "version = 1\n");
        let found = load(&paths, &ConfigSource::Search)
            .expect("file")
            .expect("some");
        assert_eq!(found.origin, "initramfs:/etc/xorbang/host-config.toml");
        write(
            root.path(),
            "sys/firmware/qemu_fw_cfg/by_name/opt/org.xorbang/host-config/raw",
            "hostname = \"a\"\n",
        );
        let found = load(&paths, &ConfigSource::Search)
            .expect("fw_cfg")
            .expect("some");
        assert_eq!(found.origin, "fw_cfg opt/org.xorbang/host-config");
        assert_eq!(found.text, "hostname = \"a\"\n");
        assert_eq!(load(&paths, &ConfigSource::Nothing).expect("none"), None);
    }

    #[test]
    fn an_explicit_source_must_exist() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path().to_owned());
        let missing = load(&paths, &ConfigSource::File("/host.toml".into())).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "xorbang.config=/host.toml: no such file in the initramfs"
        );
        let no_fw_cfg = load(&paths, &ConfigSource::FwCfg).expect_err("no fw_cfg");
        assert!(no_fw_cfg
            .to_string()
            .starts_with("xorbang.config=fw_cfg: QEMU passed no"));
        std::fs::write(root.path().join("bin.toml"), [0xff, 0xfe]).expect("write");
        let binary = load(&paths, &ConfigSource::File("/bin.toml".into())).expect_err("binary");
        assert_eq!(
            binary.to_string(),
            "host config initramfs:/bin.toml is not UTF-8 text"
        );
    }
}

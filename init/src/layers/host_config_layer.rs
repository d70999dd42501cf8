//! Writes a host config's generated /etc entries into a fresh directory, the layer the init
//! stacks on top of /etc.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use xorbang_formats::host_config::{EntryKind, EtcEntry};

const DIR_MODE: u32 = 0o755;

/// Why the generated layer could not be written; names the path.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("host config layer entry {path:?} is not a plain relative path")]
    BadEntry { path: String },
    #[error("{}: {problem}", path.display())]
    Refused {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the layer under `etc_dir`, which must not exist yet or be an empty directory:
/// nothing existing is followed or overwritten (files are created with `create_new`,
/// symlinks fail on existing paths). Directories get 0755 and files their exact mode, set
/// explicitly so the umask does not matter.
pub fn write_layer(entries: &[EtcEntry], etc_dir: &Path) -> Result<(), LayerError> {
    prepare_root(etc_dir)?;
    for entry in entries {
        let relative = entry_path(&entry.path)?;
        if let Some(parent) = relative.parent() {
            make_dirs(etc_dir, parent)?;
        }
        let path = etc_dir.join(relative);
        match &entry.kind {
            EntryKind::File { mode, content } => write_file(&path, *mode, content)?,
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &path)
                .map_err(|source| io_error("create the symlink", &path, source))?,
        }
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> LayerError {
    LayerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `EtcEntry` is public, so its path is checked rather than trusted: plain components only.
fn entry_path(path: &str) -> Result<&Path, LayerError> {
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if plain {
        Ok(Path::new(path))
    } else {
        Err(LayerError::BadEntry {
            path: path.to_owned(),
        })
    }
}

fn prepare_root(etc_dir: &Path) -> Result<(), LayerError> {
    std::fs::create_dir_all(etc_dir)
        .map_err(|source| io_error("create the directory", etc_dir, source))?;
    let metadata = std::fs::symlink_metadata(etc_dir)
        .map_err(|source| io_error("inspect", etc_dir, source))?;
    if !metadata.is_dir() {
        return Err(LayerError::Refused {
            path: etc_dir.to_owned(),
            problem: "is not a directory",
        });
    }
    let mut listing =
        std::fs::read_dir(etc_dir).map_err(|source| io_error("list", etc_dir, source))?;
    if listing.next().is_some() {
        return Err(LayerError::Refused {
            path: etc_dir.to_owned(),
            problem: "is not empty; the host config layer is written only into a fresh directory",
        });
    }
    set_mode(etc_dir, DIR_MODE)
}

/// Creates each missing directory of `relative` under `etc_dir`. One that exists already
/// (made for an earlier entry) must be a real directory, never a symlink to follow.
fn make_dirs(etc_dir: &Path, relative: &Path) -> Result<(), LayerError> {
    let mut path = etc_dir.to_owned();
    for component in relative.components() {
        path.push(component);
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
            Ok(()) => set_mode(&path, DIR_MODE)?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let metadata = std::fs::symlink_metadata(&path)
                    .map_err(|source| io_error("inspect", &path, source))?;
                if !metadata.is_dir() {
                    return Err(LayerError::Refused {
                        path,
                        problem: "exists and is not a directory",
                    });
                }
            }
            Err(source) => return Err(io_error("create the directory", &path, source)),
        }
    }
    Ok(())
}

fn write_file(path: &Path, mode: u32, content: &str) -> Result<(), LayerError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error("create", path, source))?;
    file.write_all(content.as_bytes())
        .map_err(|source| io_error("write", path, source))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("set the mode of", path, source))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LayerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("set the mode of", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version = 1
hostname = "web-01"
timezone = "Europe/Berlin"
[[network]]
name = "en*"
dhcp = true
[users.root]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcUIS47SFVib3yJlqOwvcrX5PH+CxglMj9MWWZzgI2a"]
[[files]]
path = "/etc/xorbang/site.conf"
mode = "0600"
content = "a = 1\n"
"#;

    use xorbang_formats::fixtures::text_entry as text_file;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn the_layer_is_written_with_exact_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("host-config/etc");
        let mut entries = xorbang_formats::host_config::parse(EXAMPLE)
            .expect("valid")
            .etc_layer();
        entries.push(text_file("wide-open", 0o666, "x"));
        write_layer(&entries, &etc).expect("written");
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).expect("read"),
            "web-01\n"
        );
        assert_eq!(
            std::fs::read_link(etc.join("localtime")).expect("link"),
            Path::new("../usr/share/zoneinfo/Europe/Berlin")
        );
        assert_eq!(mode_of(&etc.join("xorbang/site.conf")), 0o600);
        assert_eq!(mode_of(&etc.join("ssh/authorized_keys/root")), 0o644);
        // Past a umask of 022, which would have cleared the group and other write bits.
        assert_eq!(mode_of(&etc.join("wide-open")), 0o666);
        for directory in ["", "ssh", "ssh/authorized_keys", "systemd/network"] {
            assert_eq!(mode_of(&etc.join(directory)), 0o755, "{directory}");
        }
        let network = etc.join("systemd/network/10-xorbang-0.network");
        assert!(std::fs::read_to_string(network)
            .expect("read")
            .contains("DHCP=yes"));
    }

    #[test]
    fn the_layer_goes_only_into_a_fresh_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        let entries = [text_file("hostname", 0o644, "a\n")];
        write_layer(&entries, &etc).expect("written");
        let error = write_layer(&entries, &etc).expect_err("not empty");
        assert!(error.to_string().contains("is not empty"), "{error}");
        let other = dir.path().join("other");
        let twice = [text_file("x", 0o644, "a"), text_file("x", 0o644, "b")];
        let error = write_layer(&twice, &other).expect_err("exists");
        assert!(error.to_string().starts_with("cannot create "), "{error}");
        assert!(error.to_string().contains("other/x"), "{error}");
        for bad in ["../x", "/x", "a//b", "a/./b", ""] {
            let fresh = dir.path().join(format!("fresh-{}", bad.len()));
            let error = write_layer(&[text_file(bad, 0o644, "")], &fresh).expect_err(bad);
            assert!(matches!(error, LayerError::BadEntry { .. }), "{error}");
        }
        let nested = [text_file("a", 0o644, ""), text_file("a/b", 0o644, "")];
        let error = write_layer(&nested, &dir.path().join("nested")).expect_err("a is a file");
        assert!(error.to_string().contains("not a directory"), "{error}");
    }
}

//! The host config that goes on the disk's ESP (`xorbang/host-config.toml`, where the init's
//! default search reads it, with its `.minisig` beside it): fetched by host name from the
//! netboot tree (`hosts/NAME.toml`) or read from a file. It must parse as the init parses it.
//! On the ESP it counts as `local` unless its signature verifies with a key the image pins,
//! and a `local` config may only set what an unsigned config may: the installer says so
//! before it installs one the init would refuse.

use std::fs;
use std::path::{Path, PathBuf};

use xorbang_formats::host_config::{self, HostConfigError};
use xorbang_formats::signature::{self, PinnedKey, MAX_KEY_OR_SIGNATURE_BYTES, SIGNATURE_SUFFIX};

use crate::source::{Location, SourceError};

/// As the init bounds it.
pub const MAX_HOST_CONFIG_BYTES: u64 = 64 * 1024;
/// Where the image pins the keys that sign host configs.
pub const KEYS_DIR: &str = "/usr/lib/xorbang/keys";
/// On the ESP, as the init's default search reads it.
pub const ESP_FILE: &str = "xorbang/host-config.toml";

/// Which host config to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostChoice {
    /// `--host NAME`: `hosts/NAME.toml` of the netboot tree.
    Name(String),
    /// `--host-config FILE`.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "--host {0:?} is not a host name (letters, digits, '-', '_', '.'; not starting with '.')"
    )]
    Name(String),
    #[error("--host needs the netboot tree: pass --tree URL, or boot with xorbang.netboot=URL")]
    NoTree,
    #[error("host config")]
    Source(#[from] SourceError),
    #[error("host config {0} is not UTF-8 text")]
    NotText(String),
    #[error("host config {origin}")]
    Invalid {
        origin: String,
        #[source]
        source: HostConfigError,
    },
}

/// A host config, read and parsed.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub origin: String,
    pub text: String,
    pub signature: Option<String>,
}

/// Reads and parses the chosen host config and its signature, if it has one.
pub fn load(choice: &HostChoice, tree: Option<&Location>) -> Result<HostConfig, HostError> {
    let location = match choice {
        HostChoice::Name(name) => {
            check_name(name)?;
            tree.ok_or(HostError::NoTree)?
                .join(&format!("hosts/{name}.toml"))?
        }
        HostChoice::File(path) => Location::File(path.clone()),
    };
    let origin = location.to_string();
    let bytes = location.read(MAX_HOST_CONFIG_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| HostError::NotText(origin.clone()))?;
    host_config::parse(&text).map_err(|source| HostError::Invalid {
        origin: origin.clone(),
        source,
    })?;
    let signature_location = Location::parse(&format!("{origin}{SIGNATURE_SUFFIX}"))?;
    let signature = signature_location
        .read_if_present(MAX_KEY_OR_SIGNATURE_BYTES)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    Ok(HostConfig {
        origin,
        text,
        signature,
    })
}

fn check_name(name: &str) -> Result<(), HostError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
    match valid {
        true => Ok(()),
        false => Err(HostError::Name(name.to_owned())),
    }
}

/// How the init will trust the config on the ESP, in one line for the report, and whether
/// it will refuse it (a `local` config setting more than a local one may).
pub fn trust(config: &HostConfig, keys: &[PinnedKey]) -> (String, bool) {
    if let Some(signature) = &config.signature {
        match signature::verify(keys, config.text.as_bytes(), signature) {
            Ok(key) => return (format!("signed by {key}: trusted as signed"), false),
            Err(error) => {
                return local(config, &format!("its signature does not verify ({error})"))
            }
        }
    }
    local(config, "unsigned")
}

fn local(config: &HostConfig, why: &str) -> (String, bool) {
    match host_config::check_local_keys(&config.text) {
        Ok(()) => (format!("{why}: trusted as local"), false),
        Err(error) => (
            format!("{why}: trusted as local, and a production boot will refuse it: {error}"),
            true,
        ),
    }
}

/// The keys of `dir` (`*.pub`); none when the directory is missing or a key does not parse
/// (the report then says the signature does not verify).
pub fn pinned_keys(dir: &Path) -> Vec<PinnedKey> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut keys: Vec<PinnedKey> = listing
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let text = name
                .ends_with(".pub")
                .then(|| fs::read_to_string(entry.path()).ok())??;
            PinnedKey::parse(&name, &text).ok()
        })
        .collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    match signature::self_test() {
        Ok(()) => keys,
        // Signature code that fails its known answer must not trust anything.
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::serve;
    use xorbang_formats::error_chain::error_chain;

    const CONFIG: &str = "version = 1\nhostname = \"web-01\"\n";

    #[test]
    fn a_host_is_fetched_by_name_with_its_signature_if_the_tree_has_one() {
        let (base, server) = serve(
            vec![
                ("hosts/web.toml", CONFIG.as_bytes().to_vec()),
                ("hosts/db.toml", CONFIG.as_bytes().to_vec()),
                (
                    "hosts/db.toml.minisig",
                    b"untrusted comment: x\nsig\n".to_vec(),
                ),
            ],
            4,
        );
        let tree = Location::parse_directory(&base).expect("tree");
        let web = load(&HostChoice::Name("web".into()), Some(&tree)).expect("web");
        assert_eq!(web.text, CONFIG);
        assert_eq!(web.signature, None, "a 404 means unsigned");
        assert_eq!(web.origin, format!("{base}hosts/web.toml"));
        let db = load(&HostChoice::Name("db".into()), Some(&tree)).expect("db");
        assert!(db.signature.is_some());
        server.join().expect("server");
        let (line, refused) = trust(&web, &[]);
        assert_eq!(
            (line.as_str(), refused),
            ("unsigned: trusted as local", false)
        );
        let (line, refused) = trust(&db, &[]);
        assert!(line.starts_with("its signature does not verify"), "{line}");
        assert!(!refused);
    }

    #[test]
    fn bad_names_missing_trees_and_invalid_configs_are_refused() {
        for bad in ["../x", ".hidden", "a/b", ""] {
            let error = load(&HostChoice::Name(bad.into()), None).expect_err(bad);
            assert!(matches!(error, HostError::Name(_)), "{bad}: {error}");
        }
        let error = load(&HostChoice::Name("web".into()), None).expect_err("no tree");
        assert_eq!(
            error.to_string(),
            "--host needs the netboot tree: pass --tree URL, or boot with xorbang.netboot=URL"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("host.toml");
        std::fs::write(&file, "version = 1\nhostnme = \"x\"\n").expect("write");
        let error = load(&HostChoice::File(file.clone()), None).expect_err("typo");
        let line = error_chain(&error);
        assert!(
            line.starts_with(&format!(
                "host config {}: line 2, column 1: ",
                file.display()
            )),
            "{line}"
        );
        std::fs::write(&file, vec![b'#'; MAX_HOST_CONFIG_BYTES as usize + 1]).expect("write");
        let error = load(&HostChoice::File(file.clone()), None).expect_err("large");
        assert!(error_chain(&error).ends_with("is larger than the 65536 bytes it may be"));
    }

    #[test]
    fn a_local_config_that_sets_more_than_a_local_one_may_is_flagged() {
        let config = HostConfig {
            origin: "host.toml".into(),
            text: "version = 1\nmodules = [\"kvm\"]\n".into(),
            signature: None,
        };
        let (line, refused) = trust(&config, &[]);
        assert!(refused);
        assert!(
            line.starts_with(
                "unsigned: trusted as local, and a production boot will refuse it: line 2"
            ),
            "{line}"
        );
    }
}

//! The extension pin manifest: which extension images a base image trusts, by root hash.
//!
//! `xorbang-build image --pin-sysext/--pin-confext` writes it into the base image as
//! `/usr/lib/xorbang/extensions.toml`; being inside the verified image makes it as trusted
//! as the image itself, so an extension whose verity root hash it names may be merged.
//!
//! ```toml
//! [sysext]
//! gui = "954172dfee9aaab2…"
//! [confext]
//! site = "a6a77ede951fad19…"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::os_release::ExtensionKind;
use crate::verity::RootHash;

/// Where the manifest lives inside the base image (relative to its root).
pub const MANIFEST_PATH: &str = "usr/lib/xorbang/extensions.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionPins {
    pub sysext: BTreeMap<String, RootHash>,
    pub confext: BTreeMap<String, RootHash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinsError {
    #[error("{0}")]
    Toml(String),
    #[error("{kind} {name}: {value:?} is not a root hash in hex")]
    Hash {
        kind: ExtensionKind,
        name: String,
        value: String,
    },
    #[error("{kind} name {name:?}: only A-Z a-z 0-9 _ . - are allowed, not starting with '.'")]
    Name { kind: ExtensionKind, name: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    sysext: BTreeMap<String, String>,
    #[serde(default)]
    confext: BTreeMap<String, String>,
}

/// The longest extension name: its device-mapper name `confext-NAME` must fit the kernel's
/// DM_NAME_LEN (128 bytes with the NUL).
pub const MAX_NAME_LEN: usize = 127 - "confext-".len();

/// Extension names become file names (`NAME.raw`) and mapping names: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

impl ExtensionPins {
    pub fn parse(text: &str) -> Result<Self, PinsError> {
        let raw: Raw = toml::from_str(text)
            .map_err(|error| PinsError::Toml(error.to_string().replace('\n', " ")))?;
        Ok(Self {
            sysext: typed(ExtensionKind::Sysext, raw.sysext)?,
            confext: typed(ExtensionKind::Confext, raw.confext)?,
        })
    }

    pub fn get(&self, kind: ExtensionKind, name: &str) -> Option<&RootHash> {
        match kind {
            ExtensionKind::Sysext => self.sysext.get(name),
            ExtensionKind::Confext => self.confext.get(name),
        }
    }

    /// The manifest's text; names are checked on insertion, so plain keys need no quoting.
    pub fn to_toml(&self) -> String {
        let mut text =
            String::from("# Extension images this base image trusts, by verity root hash.\n");
        for (kind, pins) in [("sysext", &self.sysext), ("confext", &self.confext)] {
            if pins.is_empty() {
                continue;
            }
            text.push_str(&format!("[{kind}]\n"));
            for (name, hash) in pins {
                text.push_str(&format!("\"{name}\" = \"{hash}\"\n"));
            }
        }
        text
    }
}

fn typed(
    kind: ExtensionKind,
    raw: BTreeMap<String, String>,
) -> Result<BTreeMap<String, RootHash>, PinsError> {
    raw.into_iter()
        .map(|(name, value)| {
            if !valid_name(&name) {
                return Err(PinsError::Name { kind, name });
            }
            match RootHash::parse_hex(&value) {
                Ok(hash) => Ok((name, hash)),
                Err(_) => Err(PinsError::Hash { kind, name, value }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    #[test]
    fn round_trips() {
        let mut pins = ExtensionPins::default();
        pins.sysext
            .insert("gui".into(), RootHash::parse_hex(HASH).expect("hash"));
        pins.confext
            .insert("site.v2".into(), RootHash::parse_hex(HASH).expect("hash"));
        assert_eq!(ExtensionPins::parse(&pins.to_toml()), Ok(pins.clone()));
        assert_eq!(
            pins.get(ExtensionKind::Confext, "site.v2")
                .map(ToString::to_string),
            Some(HASH.to_owned())
        );
        assert_eq!(pins.get(ExtensionKind::Sysext, "site.v2"), None);
    }

    #[test]
    fn refuses_bad_hashes_names_and_keys() {
        let bad_hash = ExtensionPins::parse("[sysext]\ngui = \"xyz\"\n").expect_err("hash");
        assert_eq!(
            bad_hash.to_string(),
            "sysext gui: \"xyz\" is not a root hash in hex"
        );
        let bad_name =
            ExtensionPins::parse(&format!("[confext]\n\"../x\" = \"{HASH}\"\n")).expect_err("name");
        assert!(
            bad_name.to_string().starts_with("confext name \"../x\""),
            "{bad_name}"
        );
        let unknown = ExtensionPins::parse("[portable]\n").expect_err("unknown table");
        assert!(unknown.to_string().contains("portable"), "{unknown}");
        assert!(!unknown.to_string().contains('\n'));
    }
}

//! Update bundles and channels. A version of an image travels as a bundle: the root image,
//! its verity hash tree and its UKI, described by `manifest.json` (sizes, SHA-256 of each
//! file, the root hash) and signed by `manifest.json.minisig` with a key the running image
//! pins. A channel is a static directory (over HTTP or local): `index.json` lists the
//! versions, and each version's bundle sits in `<IMAGE_ID>_<version>/`.
//!
//! Everything here arrives from the network before any signature is checked, so both files
//! are parsed with a size bound, unknown fields refused, and every name and number checked
//! before a caller uses it to build a URL or a write.

use serde::{Deserialize, Serialize};

use crate::cmdline::Cmdline;
use crate::os_release;
use crate::pe::{self, PeError};
use crate::verity::{RootHash, RootHashError};

/// The one format of manifests and indexes so far.
pub const FORMAT: u32 = 1;
/// The manifest's file name in a bundle; its signature is this plus `.minisig`.
pub const MANIFEST: &str = "manifest.json";
/// The channel's list of versions.
pub const INDEX: &str = "index.json";
/// Far above a real manifest (under 1 KiB) or an index of a few hundred versions.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;
pub const MAX_INDEX_BYTES: u64 = 1 << 20;
/// Bounds on what a bundle may ask the updater to download and write.
pub const MAX_ROOT_BYTES: u64 = 64 << 30;
pub const MAX_VERITY_BYTES: u64 = 4 << 30;
/// A UKI is read into memory whole, to check its command line before anything is written.
pub const MAX_UKI_BYTES: u64 = 512 << 20;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The image's `IMAGE_ID=`.
    pub image_id: String,
    /// Its `IMAGE_VERSION=`.
    pub version: String,
    /// The dm-verity root hash of `root` with `verity`, in hex; the UKI's `roothash=`.
    pub root_hash: String,
    pub root: BundleFile,
    pub verity: BundleFile,
    pub uki: BundleFile,
}

/// One file of a bundle, in the bundle's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelIndex {
    pub format: u32,
    pub image_id: String,
    /// The versions the channel offers, in any order.
    pub versions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} is {bytes} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        max: u64,
    },
    #[error("{what} is not valid JSON of its format")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: format {found}, this updater reads format {FORMAT}")]
    Format { what: &'static str, found: u32 },
    #[error("{field} {value:?}: {problem}")]
    Field {
        field: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("root_hash")]
    RootHash(#[source] RootHashError),
}

impl Manifest {
    /// Parses and checks a manifest's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let manifest: Self = parse_json("the manifest", bytes, MAX_MANIFEST_BYTES)?;
        check_format("the manifest", manifest.format)?;
        check_image_id(&manifest.image_id)?;
        check_version(&manifest.version)?;
        manifest.root_hash()?;
        for (field, file, max) in [
            ("root", &manifest.root, MAX_ROOT_BYTES),
            ("verity", &manifest.verity, MAX_VERITY_BYTES),
            ("uki", &manifest.uki, MAX_UKI_BYTES),
        ] {
            file.check(field, max)?;
        }
        let names = [
            &manifest.root.name,
            &manifest.verity.name,
            &manifest.uki.name,
        ];
        let shared = names
            .iter()
            .enumerate()
            .find(|(at, name)| names[at + 1..].contains(name));
        if let Some((_, name)) = shared {
            return Err(field_error(
                "file name",
                name,
                "two files of the bundle share a name",
            ));
        }
        Ok(manifest)
    }

    pub fn root_hash(&self) -> Result<RootHash, BundleError> {
        RootHash::parse_hex(&self.root_hash).map_err(BundleError::RootHash)
    }

    /// The bundle's directory in its channel.
    pub fn bundle_dir(&self) -> String {
        bundle_dir(&self.image_id, &self.version)
    }

    /// Pretty JSON with a final newline, as `xorbang-build bundle` writes it.
    pub fn render(&self) -> String {
        render(self)
    }
}

impl BundleFile {
    fn check(&self, field: &'static str, max: u64) -> Result<(), BundleError> {
        check_file_name(&self.name)?;
        if self.bytes == 0 {
            return Err(field_error(field, &self.name, "the file is empty"));
        }
        if self.bytes > max {
            return Err(BundleError::TooLarge {
                what: field,
                bytes: self.bytes,
                max,
            });
        }
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !hex {
            return Err(field_error(
                "sha256",
                &self.sha256,
                "not 64 lower-case hex digits",
            ));
        }
        Ok(())
    }
}

impl ChannelIndex {
    /// Parses and checks an index's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let index: Self = parse_json("the channel index", bytes, MAX_INDEX_BYTES)?;
        check_format("the channel index", index.format)?;
        check_image_id(&index.image_id)?;
        for version in &index.versions {
            check_version(version)?;
        }
        Ok(index)
    }

    /// The newest version, by the version order systemd-boot sorts entries with.
    pub fn newest(&self) -> Option<&str> {
        self.versions
            .iter()
            .max_by(|a, b| crate::version::compare_versions(a, b))
            .map(String::as_str)
    }

    pub fn render(&self) -> String {
        render(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UkiCheckError {
    #[error("is not a UKI")]
    Pe(#[source] PeError),
    #[error("boots roothash={found}, not the bundle's {expected}")]
    RootHash { found: String, expected: String },
    #[error("names {found} in its .osrel, not the bundle's {expected}")]
    Identity { found: String, expected: String },
}

/// A UKI belongs to a bundle when its own command line's `roothash=` is the bundle's root
/// hash and its `.osrel` names the bundle's IMAGE_ID and IMAGE_VERSION: the build tool
/// checks it before publishing, the updater before writing anything.
pub fn check_uki(uki: &[u8], manifest: &Manifest) -> Result<(), UkiCheckError> {
    let section = |name| pe::section(uki, name).map_err(UkiCheckError::Pe);
    let cmdline = String::from_utf8_lossy(section(".cmdline")?).into_owned();
    let found = Cmdline::parse(cmdline.trim_end_matches('\0'))
        .last("roothash")
        .flatten()
        .unwrap_or("(none)")
        .to_owned();
    if found != manifest.root_hash {
        return Err(UkiCheckError::RootHash {
            found,
            expected: manifest.root_hash.clone(),
        });
    }
    let osrel = String::from_utf8_lossy(section(".osrel")?).into_owned();
    let release = os_release::parse(osrel.trim_end_matches('\0')).unwrap_or_default();
    let found = bundle_dir(
        release.get("IMAGE_ID").unwrap_or(""),
        release.get("IMAGE_VERSION").unwrap_or(""),
    );
    if found != manifest.bundle_dir() {
        return Err(UkiCheckError::Identity {
            found,
            expected: manifest.bundle_dir(),
        });
    }
    Ok(())
}

/// `<IMAGE_ID>_<version>`: a bundle's directory, the slot's partition label and the UKI's
/// entry name.
pub fn bundle_dir(image_id: &str, version: &str) -> String {
    format!("{image_id}_{version}")
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: u64,
) -> Result<T, BundleError> {
    let size = bytes.len() as u64;
    if size > max {
        return Err(BundleError::TooLarge {
            what,
            bytes: size,
            max,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| BundleError::Json { what, source })
}

fn render<T: Serialize>(value: &T) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn check_format(what: &'static str, found: u32) -> Result<(), BundleError> {
    if found == FORMAT {
        Ok(())
    } else {
        Err(BundleError::Format { what, found })
    }
}

fn field_error(field: &'static str, value: &str, problem: &'static str) -> BundleError {
    BundleError::Field {
        field,
        value: value.to_owned(),
        problem,
    }
}

/// os-release's rule for `IMAGE_ID=`: lower-case letters, digits, `-`, `_`, `.`.
fn check_image_id(value: &str) -> Result<(), BundleError> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_.".contains(&byte)
        });
    if valid {
        Ok(())
    } else {
        Err(field_error(
            "image_id",
            value,
            "not 1 to 64 of a-z, 0-9, '-', '_', '.'",
        ))
    }
}

/// os-release's rule for `IMAGE_VERSION=`, which also ends up in a file and partition name:
/// letters, digits, `.`, `_`, `-`, `+`, `~`, `^`; not starting with `.`; and no `+` so a
/// version never looks like a boot counter.
fn check_version(value: &str) -> Result<(), BundleError> {
    let valid = !value.is_empty()
        && value.len() <= 32
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-~^".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(field_error(
            "version",
            value,
            "not 1 to 32 of A-Z, a-z, 0-9, '.', '_', '-', '~', '^' (not starting with '.')",
        ))
    }
}

/// A bundle's file names are plain names in its directory.
fn check_file_name(value: &str) -> Result<(), BundleError> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-+".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(field_error(
            "file name",
            value,
            "not a plain file name (A-Z, a-z, 0-9, '.', '_', '-', '+'; not starting with '.')",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::XorShift;

    const HASH: &str = "954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93";

    fn file(name: &str, bytes: u64) -> BundleFile {
        BundleFile {
            name: name.to_owned(),
            bytes,
            sha256: "ab".repeat(32),
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            image_id: "xorbang-demo".to_owned(),
            version: "2".to_owned(),
            root_hash: HASH.to_owned(),
            root: file("root.squashfs", 1 << 20),
            verity: file("root.squashfs.verity", 16384),
            uki: file("xorbang-demo_2.efi", 9 << 20),
        }
    }

    #[test]
    fn a_manifest_round_trips() {
        let text = manifest().render();
        assert_eq!(
            Manifest::parse(text.as_bytes()).expect("parses"),
            manifest()
        );
        assert_eq!(manifest().bundle_dir(), "xorbang-demo_2");
        assert_eq!(manifest().root_hash().expect("hash").to_string(), HASH);
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_field() {
        type Change = fn(&mut Manifest);
        let cases: Vec<(Change, &str)> = vec![
            (
                |m| m.format = 2,
                "the manifest: format 2, this updater reads format 1",
            ),
            (
                |m| m.image_id = "Demo".into(),
                "image_id \"Demo\": not 1 to 64",
            ),
            (|m| m.version = "2+1".into(), "version \"2+1\": not 1 to 32"),
            (|m| m.version = "../x".into(), "version \"../x\""),
            (
                |m| m.root.name = "../root".into(),
                "file name \"../root\": not a plain",
            ),
            (
                |m| m.uki.name = "root.squashfs".into(),
                "file name \"root.squashfs\": two files of the bundle share a name",
            ),
            (|m| m.verity.sha256 = "AB".repeat(32), "sha256 \"ABAB"),
            (
                |m| m.uki.bytes = MAX_UKI_BYTES + 1,
                "uki is 536870913 bytes, more than",
            ),
            (
                |m| m.root.bytes = 0,
                "root \"root.squashfs\": the file is empty",
            ),
            (|m| m.root_hash = "12".into(), "root_hash"),
        ];
        for (change, expected) in cases {
            let mut bad = manifest();
            change(&mut bad);
            let error = Manifest::parse(bad.render().as_bytes()).expect_err(expected);
            assert!(
                error.to_string().starts_with(expected),
                "{error} vs {expected}"
            );
        }
        let extra = manifest().render().replacen('{', "{\"extra\": 1,", 1);
        let error = Manifest::parse(extra.as_bytes()).expect_err("unknown field");
        assert!(error
            .to_string()
            .starts_with("the manifest is not valid JSON"));
        let huge = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            Manifest::parse(&huge),
            Err(BundleError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_newest_version_follows_the_version_order() {
        let index = ChannelIndex {
            format: FORMAT,
            image_id: "xorbang-demo".to_owned(),
            versions: ["9", "10", "10~rc1", "2"].map(str::to_owned).to_vec(),
        };
        let parsed = ChannelIndex::parse(index.render().as_bytes()).expect("parses");
        assert_eq!(parsed.newest(), Some("10"));
        let empty = ChannelIndex {
            versions: Vec::new(),
            ..index
        };
        assert_eq!(empty.newest(), None);
    }

    #[test]
    fn random_bytes_never_panic_the_parsers() {
        let mut random = XorShift(0x6275_6e64);
        let valid = manifest().render().into_bytes();
        for _ in 0..2000 {
            let mut bytes = valid.clone();
            for _ in 0..random.range(1, 5) {
                let at = random.below(bytes.len());
                bytes[at] = random.next_u64() as u8;
            }
            // What parses is valid through and through: it renders and parses back alike.
            if let Ok(parsed) = Manifest::parse(&bytes) {
                let again = Manifest::parse(parsed.render().as_bytes()).expect("round trip");
                assert_eq!(again, parsed);
            }
            assert!(
                ChannelIndex::parse(&bytes).is_err(),
                "a manifest is never an index"
            );
        }
    }
}

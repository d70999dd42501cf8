//! A root image as the init boots it: the SquashFS, its dm-verity hash tree beside it
//! (`IMAGE.verity`, with superblock, as veritysetup writes it) and a manifest
//! (`IMAGE.json`) with the root hash and everything needed to find and check the pair.
//!
//! Salt and UUID are derived from the image's bytes, so the same tree gives the same
//! outputs (and different images never share a salt).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xorbang_formats::gpt::Guid;
use xorbang_formats::os_release;
use xorbang_formats::verity::{RootHash, RootHashError, Salt, SaltError};

use crate::file_error::{FileAction, FileError};
use crate::image::verity::{self, FormatParams, TreeParams, VerityBuildError};
use crate::output::PendingOutput;

/// What `xorbang-build image` writes next to the image, and what `disk` reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// The image's size and SHA-256 (hex): `disk` refuses an image that is not the one the
    /// root hash was computed for, rather than writing a disk that cannot boot.
    pub image_bytes: u64,
    pub image_sha256: String,
    pub verity_bytes: u64,
    /// File names, relative to the manifest's directory.
    pub image: String,
    pub verity: String,
    /// The root's `IMAGE_ID=` and `IMAGE_VERSION=` (extensions have none): what names its
    /// partitions in the A/B layout (`Label=%M_%A`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
}

/// Which build of which OS an image holds, from its os-release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageIdentity {
    pub image_id: Option<String>,
    pub image_version: Option<String>,
}

impl ImageIdentity {
    /// `IMAGE_ID=` and `IMAGE_VERSION=` of the root tree `root` (`usr/lib/os-release`, else
    /// `etc/os-release`); none when it has neither file.
    pub fn of_tree(root: &Path) -> Result<Self, VerifiedImageError> {
        let Some(path) = ["usr/lib/os-release", "etc/os-release"]
            .iter()
            .map(|candidate| root.join(candidate))
            .find(|path| path.is_file())
        else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
        let release = os_release::parse(&text)
            .map_err(|source| VerifiedImageError::OsRelease { path, source })?;
        let value = |key| release.get_nonempty(key).map(str::to_owned);
        Ok(Self {
            image_id: value("IMAGE_ID"),
            image_version: value("IMAGE_VERSION"),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifiedImageError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is not an image manifest")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} records no valid root hash")]
    RootHash {
        path: PathBuf,
        #[source]
        source: RootHashError,
    },
    #[error("cannot derive the verity salt of {path}")]
    Salt {
        path: PathBuf,
        #[source]
        source: SaltError,
    },
    #[error(
        "{image} is not the image its manifest {manifest} describes: its {what} is {found}, the \
         manifest records {recorded} (rebuild the image, or restore the one the manifest is for)"
    )]
    Mismatch {
        image: PathBuf,
        manifest: PathBuf,
        what: &'static str,
        found: String,
        recorded: String,
    },
    #[error("{path} is not a valid os-release file")]
    OsRelease {
        path: PathBuf,
        #[source]
        source: os_release::OsReleaseError,
    },
    #[error("hash tree of {image}")]
    Verity {
        image: PathBuf,
        #[source]
        source: Box<VerityBuildError>,
    },
}

/// `IMAGE.verity` and `IMAGE.json` beside `image`.
pub fn companion(image: &Path, extension: &str) -> PathBuf {
    let mut name = OsString::from(image.as_os_str());
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

/// Removes `IMAGE.verity` and `IMAGE.json` if they are there: before an image is replaced, so
/// that no manifest ever stands beside an image it does not describe (and an image built
/// without verity has none at all).
pub fn remove_companions(image: &Path) -> Result<(), FileError> {
    for extension in ["json", "verity"] {
        let path = companion(image, extension);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(FileError::of(FileAction::Remove, &path)(source)),
        }
    }
    Ok(())
}

/// Formats the hash tree of `image` and then writes the manifest, last, once the image and
/// tree it describes are complete; returns it.
pub fn add_verity(image: &Path, identity: ImageIdentity) -> Result<Manifest, VerifiedImageError> {
    let digest = file_digest(image)?;
    let derive = |purpose: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(purpose)
            .chain_update(digest)
            .finalize()
            .into()
    };
    let salt = Salt::new(derive(b"xorbang verity salt").to_vec()).map_err(|source| {
        VerifiedImageError::Salt {
            path: image.to_owned(),
            source,
        }
    })?;
    let uuid = uuid_v4(derive(b"xorbang verity uuid"));
    let tree_path = companion(image, "verity");
    let pending = PendingOutput::new(&tree_path)?;
    let params = FormatParams::new(TreeParams::new(salt.clone()), uuid);
    let result = verity::format(image, pending.temporary(), &params).map_err(|source| {
        VerifiedImageError::Verity {
            image: image.to_owned(),
            source: Box::new(source),
        }
    })?;
    pending.commit()?;
    let manifest = Manifest {
        root_hash: result.root_hash.to_string(),
        salt: hex(salt.as_bytes()),
        uuid: uuid.to_string(),
        algorithm: result.superblock.algorithm.name().to_owned(),
        data_block_size: result.superblock.data_block_size.bytes(),
        hash_block_size: result.superblock.hash_block_size.bytes(),
        data_blocks: result.superblock.data_blocks,
        image_bytes: file_size(image)?,
        image_sha256: hex(&digest),
        verity_bytes: file_size(&tree_path)?,
        image: file_name(image),
        verity: file_name(&tree_path),
        image_id: identity.image_id,
        image_version: identity.image_version,
    };
    write_manifest(&companion(image, "json"), &manifest)?;
    Ok(manifest)
}

/// Reads `IMAGE.json` and checks that `image` is the image it describes (size, then SHA-256);
/// returns the manifest, its root hash and the tree path it names.
pub fn read_manifest(image: &Path) -> Result<(Manifest, RootHash, PathBuf), VerifiedImageError> {
    let path = companion(image, "json");
    let text = std::fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|source| VerifiedImageError::Manifest {
            path: path.clone(),
            source,
        })?;
    let root_hash = RootHash::parse_hex(&manifest.root_hash).map_err(|source| {
        VerifiedImageError::RootHash {
            path: path.clone(),
            source,
        }
    })?;
    let mismatch = |what, found: String, recorded: String| VerifiedImageError::Mismatch {
        image: image.to_owned(),
        manifest: path.clone(),
        what,
        found,
        recorded,
    };
    let size = file_size(image)?;
    if size != manifest.image_bytes {
        return Err(mismatch(
            "size",
            format!("{size} bytes"),
            format!("{} bytes", manifest.image_bytes),
        ));
    }
    let sha256 = hex(&file_digest(image)?);
    if sha256 != manifest.image_sha256 {
        return Err(mismatch("SHA-256", sha256, manifest.image_sha256.clone()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tree = dir.join(&manifest.verity);
    Ok((manifest, root_hash, tree))
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), VerifiedImageError> {
    let json =
        serde_json::to_string_pretty(manifest).map_err(|source| VerifiedImageError::Manifest {
            path: path.to_owned(),
            source,
        })?;
    let pending = PendingOutput::new(path)?;
    let write = FileError::of(FileAction::Write, pending.temporary());
    let mut file = pending.file();
    file.write_all(json.as_bytes()).map_err(&write)?;
    file.write_all(b"\n").map_err(write)?;
    pending.commit()?;
    Ok(())
}

/// The SHA-256 of a file's bytes, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> Result<[u8; 32], FileError> {
    let mut file = File::open(path).map_err(FileError::of(FileAction::Open, path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file
            .read(&mut buffer)
            .map_err(FileError::of(FileAction::Read, path))?;
        if count == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..count]);
    }
}

fn file_size(path: &Path) -> Result<u64, FileError> {
    std::fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(FileError::of(FileAction::Inspect, path))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A random-looking UUID from derived bytes, marked version 4 like veritysetup's own.
fn uuid_v4(bytes: [u8; 32]) -> Guid {
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&bytes[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Guid::from_bytes(uuid)
}

/// Bytes as lower-case hex, as manifests and build records write digests.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::verity::VerifyParams;
    use xorbang_formats::error_chain::error_chain;

    #[test]
    fn adds_a_tree_that_verifies_and_a_manifest_that_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&image, &data).expect("write");
        let manifest = add_verity(&image, ImageIdentity::default()).expect("formats");
        assert_eq!(manifest.data_blocks, 64);
        assert_eq!(manifest.image, "root.img");
        let (read, root_hash, tree) = read_manifest(&image).expect("reads");
        assert_eq!(read, manifest);
        assert_eq!(tree, dir.path().join("root.img.verity"));
        verity::verify(
            &image,
            &tree,
            &root_hash,
            &VerifyParams::Superblock { hash_offset: 0 },
        )
        .expect("our verifier accepts it");
        let first = std::fs::read(&tree).expect("read");
        add_verity(&image, ImageIdentity::default()).expect("formats again");
        assert_eq!(std::fs::read(&tree).expect("read"), first, "reproducible");
    }

    #[test]
    fn a_different_image_gets_a_different_salt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        std::fs::write(&a, vec![1u8; 4096]).expect("write");
        std::fs::write(&b, vec![2u8; 4096]).expect("write");
        let salt_a = add_verity(&a, ImageIdentity::default()).expect("a").salt;
        let salt_b = add_verity(&b, ImageIdentity::default()).expect("b").salt;
        assert_ne!(salt_a, salt_b);
    }

    #[test]
    fn an_image_that_is_not_the_manifests_is_refused_naming_both_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        std::fs::write(&image, vec![3u8; 8192]).expect("write");
        let manifest = add_verity(&image, ImageIdentity::default()).expect("formats");
        assert_eq!(manifest.image_bytes, 8192);
        assert_eq!(manifest.image_sha256, hex(&Sha256::digest(vec![3u8; 8192])));
        std::fs::write(&image, vec![3u8; 4096]).expect("shorter");
        let error = error_chain(&read_manifest(&image).expect_err("size differs"));
        assert!(
            error.starts_with(&format!(
                "{} is not the image its manifest {}.json describes: its size is 4096 bytes, \
                 the manifest records 8192 bytes",
                image.display(),
                image.display()
            )),
            "{error}"
        );
        let mut changed = vec![3u8; 8192];
        changed[5000] = 4;
        std::fs::write(&image, &changed).expect("same size, other bytes");
        let error = error_chain(&read_manifest(&image).expect_err("bytes differ"));
        let expected = format!(
            "its SHA-256 is {}, the manifest records {}",
            hex(&Sha256::digest(&changed)),
            manifest.image_sha256
        );
        assert!(error.contains(&expected), "{error}");
    }

    #[test]
    fn companions_are_removed_and_missing_ones_are_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("root.img");
        std::fs::write(&image, vec![1u8; 4096]).expect("write");
        add_verity(&image, ImageIdentity::default()).expect("formats");
        remove_companions(&image).expect("removes");
        assert!(!companion(&image, "json").exists() && !companion(&image, "verity").exists());
        assert!(image.exists());
        remove_companions(&image).expect("nothing to remove");
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = read_manifest(&dir.path().join("nope.img")).expect_err("missing");
        assert!(error.to_string().contains("nope.img.json"), "{error}");
    }
}

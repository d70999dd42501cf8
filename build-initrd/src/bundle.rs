//! `xorbang-build bundle`: one version of an image as an update bundle in a channel
//! directory. The bundle is `CHANNEL/<IMAGE_ID>_<version>/` with the root image, its hash
//! tree, the UKI and `manifest.json` (signed with minisign into `manifest.json.minisig`), and
//! the channel's `index.json` lists it; any static HTTP server can then serve `CHANNEL`.
//!
//! The same check the updater makes before writing a byte is made here first
//! ([`bundle::check_uki`]), so a bundle that a machine would refuse is never published: the
//! image must be the one its verity manifest describes, and the UKI must boot exactly that
//! root (`roothash=` on its command line) and name the same IMAGE_ID and IMAGE_VERSION in
//! its `.osrel`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use xorbang_formats::bundle::{
    self, BundleError, BundleFile, ChannelIndex, Manifest, UkiCheckError,
};

use crate::file_error::{FileAction, FileError};
use crate::image::verified::{self, VerifiedImageError};
use crate::output;
use crate::tool::{self, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum BundleBuildError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot bundle the image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: Box<VerifiedImageError>,
    },
    #[error("the image {0} records no IMAGE_ID and IMAGE_VERSION (its os-release must name them)")]
    NoIdentity(PathBuf),
    #[error("the UKI {path}")]
    Uki {
        path: PathBuf,
        #[source]
        source: UkiCheckError,
    },
    #[error("{path}")]
    Format {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("the channel {path} is for {found}, not {wanted}")]
    OtherImage {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// What to bundle, and where.
pub struct BundleSpec<'a> {
    pub image: &'a Path,
    pub uki: &'a Path,
    pub channel: &'a Path,
    /// A minisign secret key to sign the manifest with (`minisign -S`).
    pub sign_key: Option<&'a Path>,
}

/// Writes the bundle and updates the channel's index; returns the manifest.
pub fn write(spec: &BundleSpec) -> Result<Manifest, BundleBuildError> {
    let (image_manifest, root_hash, tree) =
        verified::read_manifest(spec.image).map_err(|source| BundleBuildError::Image {
            path: spec.image.to_owned(),
            source: Box::new(source),
        })?;
    let (Some(image_id), Some(version)) = (image_manifest.image_id, image_manifest.image_version)
    else {
        return Err(BundleBuildError::NoIdentity(spec.image.to_owned()));
    };
    let name = bundle::bundle_dir(&image_id, &version);
    let dir = spec.channel.join(&name);
    let uki_name = format!("{name}.efi");
    let describe = |path: &Path, name: &str| -> Result<BundleFile, BundleBuildError> {
        let bytes = fs::metadata(path)
            .map_err(FileError::of(FileAction::Inspect, path))?
            .len();
        Ok(BundleFile {
            name: name.to_owned(),
            bytes,
            sha256: verified::hex(&verified::file_digest(path)?),
        })
    };
    let manifest = Manifest {
        format: bundle::FORMAT,
        image_id: image_id.clone(),
        version,
        root_hash: root_hash.to_string(),
        root: describe(spec.image, "root.squashfs")?,
        verity: describe(&tree, "root.squashfs.verity")?,
        uki: describe(spec.uki, &uki_name)?,
    };
    let uki = fs::read(spec.uki).map_err(FileError::of(FileAction::Read, spec.uki))?;
    bundle::check_uki(&uki, &manifest).map_err(|source| BundleBuildError::Uki {
        path: spec.uki.to_owned(),
        source,
    })?;
    fs::create_dir_all(&dir).map_err(FileError::of(FileAction::CreateDirectory, &dir))?;
    for (source, name) in [
        (spec.image, "root.squashfs"),
        (tree.as_path(), "root.squashfs.verity"),
        (spec.uki, uki_name.as_str()),
    ] {
        place(source, &dir, name)?;
    }
    let manifest_path = dir.join(bundle::MANIFEST);
    // The old signature goes first: it must never sit beside a manifest it does not sign.
    let signature = dir.join(format!("{}.minisig", bundle::MANIFEST));
    remove_if_present(&signature)?;
    output::write_atomically(&manifest_path, manifest.render().as_bytes())?;
    if let Some(key) = spec.sign_key {
        tool::run(
            Command::new("minisign")
                .args(["-S", "-s"])
                .arg(key)
                .arg("-m")
                .arg(&manifest_path)
                .arg("-x")
                .arg(&signature),
            "minisign",
        )?;
    }
    add_to_index(spec.channel, &image_id, &manifest.version)?;
    Ok(manifest)
}

/// Puts `source` into the bundle directory as `name`: a hard link when it can, else a copy.
fn place(source: &Path, dir: &Path, name: &str) -> Result<(), BundleBuildError> {
    let target = dir.join(name);
    remove_if_present(&target)?;
    if fs::hard_link(source, &target).is_err() {
        fs::copy(source, &target).map_err(FileError::of(FileAction::Read, source))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(FileError::of(FileAction::Remove, path)(error))
        }
        _ => Ok(()),
    }
}

/// Adds `version` to the channel's `index.json` (made when missing).
fn add_to_index(channel: &Path, image_id: &str, version: &str) -> Result<(), BundleBuildError> {
    let path = channel.join(bundle::INDEX);
    let mut index = match fs::read(&path) {
        Ok(bytes) => ChannelIndex::parse(&bytes).map_err(|source| BundleBuildError::Format {
            path: path.clone(),
            source,
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => ChannelIndex {
            format: bundle::FORMAT,
            image_id: image_id.to_owned(),
            versions: Vec::new(),
        },
        Err(error) => return Err(FileError::of(FileAction::Read, &path)(error).into()),
    };
    if index.image_id != image_id {
        return Err(BundleBuildError::OtherImage {
            path,
            found: index.image_id,
            wanted: image_id.to_owned(),
        });
    }
    if !index.versions.iter().any(|known| known == version) {
        index.versions.push(version.to_owned());
        index
            .versions
            .sort_by(|a, b| xorbang_formats::version::compare_versions(a, b));
    }
    Ok(output::write_atomically(&path, index.render().as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_gains_versions_in_order_and_keeps_its_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        for version in ["2", "10", "2", "9"] {
            add_to_index(dir.path(), "demo", version).expect("adds");
        }
        let bytes = fs::read(dir.path().join(bundle::INDEX)).expect("read");
        let index = ChannelIndex::parse(&bytes).expect("parses");
        assert_eq!(index.versions, ["2", "9", "10"]);
        let error = add_to_index(dir.path(), "other", "1").expect_err("other image");
        assert!(
            error.to_string().ends_with("is for demo, not other"),
            "{error}"
        );
    }
}

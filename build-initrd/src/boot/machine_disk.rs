//! A whole machine disk from a verified image: the root and its hash tree as Discoverable
//! Partitions, and optionally an ESP holding a UKI — in the default layout or the one
//! systemd-repart style definitions give. What `xorbang-build disk` and `xorbang-build os`
//! write.

use std::path::{Path, PathBuf};

use super::disk::{self, DiskError};
use super::esp::{self, EspError};
use super::repart::{self, BuildOutputs, RepartError};
use crate::file_error::{FileAction, FileError};
use crate::image::verified::{self, ImageIdentity, VerifiedImageError};
use xorbang_formats::verity::RootHash;

/// The UKI on the disk's ESP.
#[derive(Debug, Clone)]
pub struct EspContents<'a> {
    pub uki: &'a Path,
    /// Its file name under `EFI/Linux/`, without `.efi`.
    pub name: &'a str,
    /// systemd-boot for `EFI/BOOT/BOOTX64.EFI`; without it the UKI itself goes there.
    pub boot_loader: Option<&'a Path>,
    /// Files for its `.extra.d` directories.
    pub extras: &'a [PathBuf],
}

#[derive(Debug, thiserror::Error)]
pub enum MachineDiskError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot put the image {path} on a disk")]
    Image {
        path: PathBuf,
        #[source]
        source: Box<VerifiedImageError>,
    },
    #[error("cannot make the EFI System Partition {path}")]
    Esp {
        path: PathBuf,
        #[source]
        source: EspError,
    },
    #[error("cannot lay out the disk from the definitions in {path}")]
    Repart {
        path: PathBuf,
        #[source]
        source: RepartError,
    },
    #[error("cannot write the disk {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: DiskError,
    },
}

/// How the disk is laid out.
#[derive(Debug, Clone, Copy)]
pub enum Layout<'a> {
    /// [ESP +] root + root-verity, nothing else.
    Single,
    /// The systemd-repart style definitions in a directory.
    Definitions(&'a Path),
    /// The built-in A/B layout (`build-initrd/definitions/`).
    DefaultAb,
}

/// Writes the disk `out` for `image` (made by `xorbang-build image`); returns its size and
/// the image's root hash.
pub fn write(
    image: &Path,
    esp: Option<&EspContents>,
    layout: Layout,
    out: &Path,
) -> Result<(u64, RootHash), MachineDiskError> {
    let (manifest, root_hash, tree) =
        verified::read_manifest(image).map_err(|source| MachineDiskError::Image {
            path: image.to_owned(),
            source: Box::new(source),
        })?;
    let repart_error = |dir: &Path| {
        let path = dir.to_owned();
        move |source| MachineDiskError::Repart { path, source }
    };
    // Read the definitions before making the ESP, so a bad layout fails fast.
    let definitions = match layout {
        Layout::Single => None,
        Layout::Definitions(dir) => Some((
            dir,
            repart::read_definitions(dir).map_err(repart_error(dir))?,
        )),
        Layout::DefaultAb => {
            let dir = Path::new("definitions");
            Some((
                dir,
                repart::default_ab_definitions().map_err(repart_error(dir))?,
            ))
        }
    };
    let esp_image = verified::companion(out, "esp.tmp");
    if let Some(contents) = esp {
        esp::write_esp(
            contents.uki,
            contents.name,
            contents.boot_loader,
            contents.extras,
            &esp_image,
        )
        .map_err(|source| MachineDiskError::Esp {
            path: esp_image.clone(),
            source,
        })?;
    }
    let disk_error = |source| MachineDiskError::Disk {
        path: out.to_owned(),
        source,
    };
    let written = match &definitions {
        Some((dir, definitions)) => {
            let identity = ImageIdentity {
                image_id: manifest.image_id.clone(),
                image_version: manifest.image_version.clone(),
            };
            // The file systems `Format=` makes, gone once they are copied into the disk.
            let scratch = verified::companion(out, "fs.tmp");
            std::fs::create_dir_all(&scratch)
                .map_err(FileError::of(FileAction::CreateDirectory, &scratch))?;
            let outputs = BuildOutputs {
                root_hash: &root_hash,
                identity: &identity,
                image,
                tree: &tree,
                esp: esp.map(|_| esp_image.as_path()),
                scratch: &scratch,
            };
            let written = repart::partitions(dir, definitions, &outputs)
                .map_err(repart_error(dir))
                .and_then(|partitions| disk::write_disk(out, &partitions).map_err(disk_error));
            std::fs::remove_dir_all(&scratch)
                .map_err(FileError::of(FileAction::Remove, &scratch))?;
            written
        }
        None => {
            let mut partitions = disk::verity_root_partitions(&root_hash, image, &tree).to_vec();
            if esp.is_some() {
                partitions.insert(0, disk::esp_partition(&root_hash, &esp_image));
            }
            disk::write_disk(out, &partitions).map_err(disk_error)
        }
    };
    if esp.is_some() {
        std::fs::remove_file(&esp_image).map_err(FileError::of(FileAction::Remove, &esp_image))?;
    }
    Ok((written?, root_hash))
}

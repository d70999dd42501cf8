//! `xorbang-build os`: a whole OS from one profile — the Debian root, the verified root
//! image, the initramfs, the UKI and the disk — each step cached by the hash of its inputs,
//! and the artifacts published into the output directory only when all of them are built,
//! with a `build.json` that says what went in and how long each step took.

pub mod apt_messages;
pub mod cache;
pub mod difference;
pub mod profile;
pub mod steps;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cache::{remove_tree_if_present, StepCache, StepOutput};
use profile::Profile;
use steps::{Recipe, StepError, StepRecord, Steps};

use crate::file_error::{FileAction, FileError};
use xorbang_formats::os_release::ExtensionKind;

/// The tree artifact's name in OUTDIR.
pub const TREE: &str = "tree";

/// What `--only` may name: the artifacts published, and (by what they need) the steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Artifact {
    /// The root as a directory (`tree/`): the profile applied, before packing.
    Tree,
    Image,
    /// The kernel (`vmlinuz`), for booting without firmware (`qemu -kernel`, PXE).
    Kernel,
    Initrd,
    Uki,
    Disk,
}

impl Artifact {
    /// What a build makes unless `--only` says otherwise (the tree is asked for by name).
    pub const ALL: [Artifact; 5] = [
        Self::Image,
        Self::Kernel,
        Self::Initrd,
        Self::Uki,
        Self::Disk,
    ];

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "tree" => Ok(Self::Tree),
            "image" => Ok(Self::Image),
            "kernel" => Ok(Self::Kernel),
            "initrd" => Ok(Self::Initrd),
            "uki" => Ok(Self::Uki),
            "disk" => Ok(Self::Disk),
            "netboot" | "bundle" => Err(format!(
                "{name}: made from this build's outputs by `xorbang-build {name}`; choose \
                 from tree, image, kernel, initrd, uki, disk"
            )),
            other => Err(format!(
                "{other}: unknown; choose from tree, image, kernel, initrd, uki, disk"
            )),
        }
    }
}

/// One OS build: the profile, where its relative paths start, the init to put in the
/// initramfs, the cache and the time stamp.
pub use steps::ImageTools;

pub struct OsBuild<'a> {
    pub profile: &'a Profile,
    /// The profile file, recorded in build.json by path and hash.
    pub profile_path: &'a Path,
    pub init: &'a Path,
    pub tools: ImageTools<'a>,
    pub cache: PathBuf,
    pub epoch: u32,
    pub only: BTreeSet<Artifact>,
}

#[derive(Debug, thiserror::Error)]
pub enum OsBuildError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// What build.json records.
#[derive(Debug, serde::Serialize)]
pub struct BuildRecord {
    pub profile: String,
    pub profile_sha256: String,
    pub image_id: String,
    pub image_version: String,
    /// Absent when only the tree was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_hash: Option<String>,
    pub source_date_epoch: u32,
    pub artifacts: Vec<String>,
    pub steps: Vec<StepRecord>,
}

/// Builds the OS and publishes it into `out`: built in a sibling directory and renamed into
/// place at the end, so `out` never holds half a build.
pub fn build(spec: &OsBuild, out: &Path) -> Result<BuildRecord, OsBuildError> {
    let dir = spec.profile_path.parent().unwrap_or(Path::new("."));
    let recipe = Recipe {
        profile: spec.profile,
        dir,
        init: spec.init,
        tools: spec.tools,
        epoch: spec.epoch,
    };
    let mut steps = Steps::new(recipe, StepCache::new(spec.cache.clone()));
    let rootfs = steps.rootfs()?;
    let mut extensions = Vec::new();
    for extension in &spec.profile.sysexts {
        extensions.push(steps.extension(ExtensionKind::Sysext, extension, &rootfs)?);
    }
    for extension in &spec.profile.confexts {
        extensions.push(steps.extension(ExtensionKind::Confext, extension, &rootfs)?);
    }
    let parent = out.parent().filter(|parent| !parent.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let staging = Staging::new(parent, out)?;
    if spec.only.contains(&Artifact::Tree) {
        steps.tree(&rootfs, &extensions, &staging.dir.join(TREE))?;
    }
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut root_hash = None;
    let wants_image = spec.only.iter().any(|artifact| *artifact != Artifact::Tree);
    if wants_image {
        let image = steps.image(&rootfs, &extensions)?;
        let hash = steps::root_hash(&image, spec.profile.image)?;
        add_images(
            spec,
            &mut steps,
            (&rootfs, &image, &hash),
            &extensions,
            &mut files,
        )?;
        root_hash = Some(hash);
    }
    let text =
        fs::read(spec.profile_path).map_err(FileError::of(FileAction::Read, spec.profile_path))?;
    let record = BuildRecord {
        profile: spec.profile_path.display().to_string(),
        profile_sha256: cache::sha256_hex(&text),
        image_id: spec.profile.os.id.clone(),
        image_version: spec.profile.os.version.clone(),
        root_hash,
        source_date_epoch: spec.epoch,
        artifacts: spec
            .only
            .contains(&Artifact::Tree)
            .then(|| TREE.to_owned())
            .into_iter()
            .chain(files.iter().map(|(_, name)| name.clone()))
            .collect(),
        steps: steps.records,
    };
    staging.publish(&files, &record, out)?;
    Ok(record)
}

/// A fresh sibling of `out` the build fills; removed unless [`Staging::publish`] swapped it
/// in, so a failed build leaves nothing behind.
struct Staging {
    dir: PathBuf,
    published: bool,
}

impl Staging {
    fn new(parent: &Path, out: &Path) -> Result<Self, FileError> {
        fs::create_dir_all(parent).map_err(FileError::of(FileAction::CreateDirectory, parent))?;
        let name = out
            .file_name()
            .map_or_else(|| "out".into(), |name| name.to_string_lossy().into_owned());
        let dir = parent.join(format!(".{name}.partial-{}", std::process::id()));
        remove_tree_if_present(&dir)?;
        fs::create_dir(&dir).map_err(FileError::of(FileAction::CreateDirectory, &dir))?;
        Ok(Self {
            dir,
            published: false,
        })
    }

    /// Links (or copies) `files` in beside what is already there, writes build.json, then
    /// swaps the whole for `out`.
    fn publish(
        mut self,
        files: &[(PathBuf, String)],
        record: &BuildRecord,
        out: &Path,
    ) -> Result<(), FileError> {
        for (from, name) in files {
            let to = self.dir.join(name);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)
                    .map_err(FileError::of(FileAction::CreateDirectory, parent))?;
            }
            if fs::hard_link(from, &to).is_err() {
                fs::copy(from, &to).map_err(FileError::of(FileAction::Read, from))?;
            }
        }
        let record_path = self.dir.join("build.json");
        let write_error = FileError::of(FileAction::Write, &record_path);
        let json =
            serde_json::to_string_pretty(record).map_err(|error| write_error(error.into()))?;
        fs::write(&record_path, json + "\n").map_err(&write_error)?;
        let old = self.dir.with_file_name(
            self.dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replacen(".partial-", ".old-", 1),
        );
        if out.exists() {
            fs::rename(out, &old).map_err(FileError::of(FileAction::RenameTo(old.clone()), out))?;
        }
        fs::rename(&self.dir, out).map_err(FileError::of(
            FileAction::RenameTo(out.to_owned()),
            &self.dir,
        ))?;
        self.published = true;
        remove_tree_if_present(&old)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Err(error) = remove_tree_if_present(&self.dir) {
            eprintln!(
                "warning: {}",
                xorbang_formats::error_chain::error_chain(&error)
            );
        }
    }
}

/// The image and what boots it, as `(step output, name in OUTDIR)` pairs for `--only`.
fn add_images(
    spec: &OsBuild,
    steps: &mut Steps,
    (rootfs, image, root_hash): (&StepOutput, &StepOutput, &str),
    extensions: &[StepOutput],
    files: &mut Vec<(PathBuf, String)>,
) -> Result<(), OsBuildError> {
    if spec.only.contains(&Artifact::Image) {
        for extension in ["", ".verity", ".json"] {
            let name = format!("{}{extension}", spec.profile.image.file_name());
            files.push((image.dir.join(&name), name));
        }
        for kind in [ExtensionKind::Sysext, ExtensionKind::Confext] {
            for path in steps::extension_images(extensions, kind)? {
                let name = format!(
                    "{kind}/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                );
                files.push((path, name));
            }
        }
    }
    let wants_boot = [
        Artifact::Kernel,
        Artifact::Initrd,
        Artifact::Uki,
        Artifact::Disk,
    ]
    .iter()
    .any(|artifact| spec.only.contains(artifact));
    if wants_boot {
        let kernel = steps.kernel(rootfs)?;
        if spec.only.contains(&Artifact::Kernel) {
            files.push((kernel.dir.join(steps::VMLINUZ), steps::VMLINUZ.to_owned()));
        }
        let initrd = steps.initrd(&kernel)?;
        if spec.only.contains(&Artifact::Initrd) {
            files.push((initrd.dir.join(steps::INITRD), steps::INITRD.to_owned()));
        }
        if spec.only.contains(&Artifact::Uki) || spec.only.contains(&Artifact::Disk) {
            let uki = steps.uki(&kernel, &initrd, image, root_hash, extensions)?;
            let name = steps::uki_name(spec.profile);
            if spec.only.contains(&Artifact::Uki) {
                files.push((uki.dir.join(&name), name));
            }
            if spec.only.contains(&Artifact::Disk) {
                let disk = steps.disk(image, &uki)?;
                files.push((disk.dir.join(steps::DISK), steps::DISK.to_owned()));
            }
        }
    }
    Ok(())
}

//! The steps of an OS build. Each is a function of its inputs, kept in the step cache under
//! their hash: the Debian root (mmdebstrap), the kernel taken out of it, the verified root
//! image, the initramfs, the UKI and the disk. A step prints one line when it starts and one
//! when it is done (or found in the cache), with its time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::apt_messages::{self, AptFailure};
use super::cache::{Inputs, StepCache, StepOutput};
use super::difference;
use super::profile::{ExtensionDef, FileContent, Profile};
use crate::boot::machine_disk::{self, EspContents, Layout, MachineDiskError};
use crate::boot::uki::{self, CmdlineSource, Signing, UkiError, UkiSpec};
use crate::file_error::{FileAction, FileError};
use crate::image::root_format::RootFormat;
use crate::image::squashfs::{self, ImageError, SquashfsCompression, MKSQUASHFS};
use crate::image::sysext::{self, ExtensionSpec, ReleaseFields, SysextError, UNSQUASHFS};
use crate::image::verified::{self, VerifiedImageError};
use crate::initrd::assemble::{self as initrd, InitrdError, InitrdSpec};
use crate::initrd::compress::Compression;
use crate::initrd::kernel_modules::DEFAULT_MODULES;
use crate::sorted_dir::sorted_names;
use crate::tool::{self, ToolError};
use xorbang_formats::extension_pins::ExtensionPins;
use xorbang_formats::module_index::ModuleName;
use xorbang_formats::os_release::{self, ExtensionKind};

/// Bumped when a step's recipe changes in a way its inputs do not show (how mksquashfs is
/// called, what the image step changes in the tree), so cached outputs of the old recipe are
/// not taken for the new one. The Debian root has its own, so bumping this one does not
/// mean minutes of mmdebstrap.
const RECIPE_VERSION: &str = "os-steps-6";
/// Packages every root gets: `systemd-boot` brings systemd-bless-boot and its generator
/// (Automatic Boot Assessment); its maintainer script installs nothing without an ESP.
/// `squashfs-tools` is the mksquashfs xorbang-commit-overlay packs extensions with;
/// `dosfstools` and `mtools` make the ESP xorbang-installer writes (as the build tool does).
const LIFECYCLE_PACKAGES: &[&str] = &["systemd-boot", "squashfs-tools", "dosfstools", "mtools"];
const HEALTH_CHECK_PATH: &str = "/usr/lib/xorbang/health-check";
const HEALTH_CHECK: &str = include_str!("../../lifecycle/health-check");
const HEALTH_CHECK_UNIT_PATH: &str = "/usr/lib/systemd/system/xorbang-health-check.service";
const HEALTH_CHECK_UNIT: &str = include_str!("../../lifecycle/xorbang-health-check.service");
const ROOTFS_RECIPE: &str = "rootfs-2";

/// The file names of the artifacts, in a step's directory and in the output directory (the
/// root image's is its format's, [`RootFormat::file_name`]).
pub const INITRD: &str = "initrd.img";
pub const DISK: &str = "disk.img";
const ROOTFS_TAR: &str = "rootfs.tar";
const PACKAGE_LISTS: &str = "var/lib/apt/lists";
pub const VMLINUZ: &str = "vmlinuz";
const MODULES: &str = "modules";
const OS_RELEASE: &str = "os-release";
/// An OS disk has an ESP: the initramfs can read host config from it.
const ESP_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_ascii"];

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("step {step}")]
    Tool {
        step: &'static str,
        #[source]
        source: ToolError,
    },
    #[error("step {step}: {} not in the archive's package lists", quoted(packages))]
    UnknownPackages {
        step: &'static str,
        packages: Vec<String>,
    },
    #[error("step {step}: the archive cannot be reached: {url}: {reason}")]
    Unreachable {
        step: &'static str,
        url: String,
        reason: String,
    },
    #[error("step kernel: {0}")]
    Kernel(String),
    #[error("step image: {0}")]
    Tree(String),
    #[error("step image")]
    Image(#[source] ImageError),
    #[error("step image")]
    Verity(#[source] Box<VerifiedImageError>),
    #[error("step initrd")]
    Initrd(#[source] InitrdError),
    #[error("step uki")]
    Uki(#[source] UkiError),
    #[error("step disk")]
    Disk(#[source] MachineDiskError),
    #[error("step extension")]
    Extension(#[source] Box<SysextError>),
    #[error(
        "extension {name}: its packages change {count} paths an extension cannot carry: {paths}"
    )]
    Refused {
        name: String,
        count: usize,
        paths: String,
    },
}

/// What one step did, for the progress lines and build.json.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepRecord {
    pub name: String,
    pub key: String,
    pub reused: bool,
    pub seconds: f64,
    /// Each input's name and hash.
    pub inputs: std::collections::BTreeMap<String, String>,
}

/// Everything the steps read: the profile (relative paths against `dir`), the init binary
/// and the time stamp every file gets.
#[derive(Clone, Copy)]
pub struct Recipe<'a> {
    pub profile: &'a Profile,
    pub dir: &'a Path,
    pub init: &'a Path,
    pub tools: ImageTools<'a>,
    pub epoch: u32,
}

/// The static programs every image carries in /usr/bin.
#[derive(Clone, Copy)]
pub struct ImageTools<'a> {
    pub update: &'a Path,
    pub commit_overlay: &'a Path,
    pub installer: &'a Path,
}

impl ImageTools<'_> {
    /// Where each goes in the image, and the file it comes from.
    fn installed(&self) -> [(&'static str, &Path); 3] {
        [
            ("/usr/bin/xorbang-update", self.update),
            ("/usr/bin/xorbang-commit-overlay", self.commit_overlay),
            ("/usr/bin/xorbang-installer", self.installer),
        ]
    }
}

pub struct Steps<'a> {
    recipe: Recipe<'a>,
    cache: StepCache,
    pub records: Vec<StepRecord>,
}

impl<'a> Steps<'a> {
    pub fn new(recipe: Recipe<'a>, cache: StepCache) -> Self {
        Self {
            recipe,
            cache,
            records: Vec::new(),
        }
    }

    fn run(
        &mut self,
        name: &str,
        what: &str,
        inputs: Inputs,
        make: impl FnOnce(&Path) -> Result<(), StepError>,
    ) -> Result<StepOutput, StepError> {
        self.run_as(name, name, what, inputs, make)
    }

    /// Runs the step `name` (its cache directory), shown and recorded as `label`.
    fn run_as(
        &mut self,
        name: &str,
        label: &str,
        what: &str,
        inputs: Inputs,
        make: impl FnOnce(&Path) -> Result<(), StepError>,
    ) -> Result<StepOutput, StepError> {
        let started = Instant::now();
        eprintln!("[{label}] {what}");
        let output = self.cache.get_or_make(name, &inputs, make)?;
        let seconds = started.elapsed().as_secs_f64();
        match output.reused {
            true => eprintln!("[{label}] unchanged, from the cache ({})", output.key.0),
            false => eprintln!("[{label}] done in {seconds:.1} s"),
        }
        self.records.push(StepRecord {
            name: label.to_owned(),
            key: output.key.0.clone(),
            reused: output.reused,
            seconds,
            inputs: inputs.parts().iter().cloned().collect(),
        });
        Ok(output)
    }

    fn epoch(&self) -> String {
        self.recipe.epoch.to_string()
    }

    /// The Debian root as mmdebstrap makes it, with the kernel package and apt's package
    /// lists (kept so an extension installs against the same index as the base; the image
    /// step drops them).
    pub fn rootfs(&mut self) -> Result<StepOutput, StepError> {
        let debian = &self.recipe.profile.debian;
        let mut packages = debian.packages.clone();
        packages.push(debian.kernel.clone());
        packages.extend(LIFECYCLE_PACKAGES.iter().map(|package| package.to_string()));
        let hook = debian.hook.as_ref().map(|hook| self.recipe.dir.join(hook));
        let mut inputs = Inputs::new()
            .text("recipe", ROOTFS_RECIPE)
            .text("suite", &debian.suite)
            .text("mirror", debian.mirror.as_deref().unwrap_or(""))
            .text("variant", &debian.variant)
            .text("packages", &packages.join(","))
            .text("source_date_epoch", &self.epoch());
        if let Some(hook) = &hook {
            inputs = inputs.file("hook", hook)?;
        }
        let what = format!(
            "mmdebstrap {} ({} packages; minutes on a cold cache)",
            debian.suite,
            packages.len()
        );
        let epoch = self.epoch();
        self.run("rootfs", &what, inputs, |dir| {
            let mut command = Command::new("mmdebstrap");
            command
                .env("SOURCE_DATE_EPOCH", &epoch)
                .arg(format!("--variant={}", debian.variant))
                .arg(format!("--include={}", packages.join(",")))
                .arg("--skip=cleanup/apt/lists");
            if let Some(hook) = &hook {
                command.arg(format!("--customize-hook={}", hook.display()));
            }
            command.arg(&debian.suite).arg(dir.join(ROOTFS_TAR));
            if let Some(mirror) = &debian.mirror {
                command.arg(mirror);
            }
            tool::run_showing_output(&mut command, "mmdebstrap")
                .map_err(|source| apt_step_error("rootfs", source))
        })
    }

    /// One `[[sysext]]` or `[[confext]]`: the difference its packages make over the base
    /// (see [`super::difference`]) and its directory, as NAME.raw under `sysext/` and, for
    /// what a sysext's packages add under /etc, `confext/`. Their release files match the
    /// base's os-release.
    pub fn extension(
        &mut self,
        kind: ExtensionKind,
        extension: &ExtensionDef,
        base: &StepOutput,
    ) -> Result<StepOutput, StepError> {
        let directory = extension
            .directory
            .as_ref()
            .map(|dir| self.recipe.dir.join(dir));
        let mut inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .text("kind", &kind.to_string())
            .text("name", &extension.name)
            .step("base", &base.key)
            .text("source_date_epoch", &self.epoch());
        if !extension.packages.is_empty() {
            inputs = inputs.text("packages", &extension.packages.join(","));
        }
        if let Some(directory) = &directory {
            inputs = inputs.tree("directory", directory)?;
        }
        let (epoch, epoch_text) = (self.recipe.epoch, self.epoch());
        let label = format!("{kind}:{}", extension.name);
        let what = format!("the {kind} {}", extension.name);
        self.run_as("extension", &label, &what, inputs, |dir| {
            let base_tree = dir.join("base");
            extract(&base.dir.join(ROOTFS_TAR), &base_tree, "extension")?;
            let fields = release_fields(&base_tree)?;
            let (mut sysext, mut confext) = (dir.join("sysext-tree"), dir.join("confext-tree"));
            if kind == ExtensionKind::Confext {
                std::mem::swap(&mut sysext, &mut confext);
            }
            for tree in [&sysext, &confext] {
                fs::create_dir_all(tree)
                    .map_err(FileError::of(FileAction::CreateDirectory, tree))?;
            }
            if !extension.packages.is_empty() {
                let with_tree = dir.join("with");
                extract(&base.dir.join(ROOTFS_TAR), &with_tree, "extension")?;
                install_packages(&with_tree, &extension.packages, &epoch_text)?;
                take_difference(&base_tree, &with_tree, &extension.name, &sysext, &confext)?;
                remove_tree(&with_tree)?;
            }
            remove_tree(&base_tree)?;
            if let Some(directory) = &directory {
                copy_tree(
                    directory,
                    if kind == ExtensionKind::Confext {
                        &confext
                    } else {
                        &sysext
                    },
                )?;
            }
            for (tree, tree_kind) in [
                (&sysext, ExtensionKind::Sysext),
                (&confext, ExtensionKind::Confext),
            ] {
                if is_empty_dir(tree)? {
                    continue;
                }
                let out_dir = dir.join(tree_kind.to_string());
                fs::create_dir_all(&out_dir)
                    .map_err(FileError::of(FileAction::CreateDirectory, &out_dir))?;
                let spec = ExtensionSpec {
                    tree: tree.to_path_buf(),
                    name: extension.name.clone(),
                    kind: tree_kind,
                    fields: fields.clone(),
                    compression: SquashfsCompression::Zstd,
                    mtime: epoch,
                };
                let image = out_dir.join(format!("{}.raw", extension.name));
                sysext::build_extension(Path::new(MKSQUASHFS), &spec, &image)
                    .map_err(|error| StepError::Extension(Box::new(error)))?;
                remove_tree(tree)?;
            }
            Ok(())
        })
    }

    /// The kernel and its modules, out of the root.
    pub fn kernel(&mut self, rootfs: &StepOutput) -> Result<StepOutput, StepError> {
        let inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .step("rootfs", &rootfs.key);
        let tar = rootfs.dir.join(ROOTFS_TAR);
        self.run("kernel", "the kernel and its modules", inputs, |dir| {
            let extract = dir.join("extract");
            fs::create_dir(&extract)
                .map_err(FileError::of(FileAction::CreateDirectory, &extract))?;
            run_tool(
                "kernel",
                Command::new("tar")
                    .arg("-x")
                    .arg("-f")
                    .arg(&tar)
                    .arg("-C")
                    .arg(&extract)
                    .args(["--wildcards", "./boot/vmlinuz-*", "./usr/lib/modules"]),
                "tar",
            )?;
            let release = only_entry(&extract.join("usr/lib/modules"))?;
            let vmlinuz = extract.join(format!("boot/vmlinuz-{release}"));
            rename(&vmlinuz, &dir.join(VMLINUZ))?;
            rename(&extract.join("usr/lib/modules"), &dir.join(MODULES))?;
            remove_tree(&extract)
        })
    }

    /// The verified root image: the Debian root with the profile's hostname, files, users and
    /// units, an empty machine-id, os-release carrying IMAGE_ID and IMAGE_VERSION, no kernel
    /// under /boot (the UKI carries it), packed as the profile's `[image]` says (EROFS lz4hc
    /// unless it says otherwise) with its hash tree and manifest.
    pub fn image(
        &mut self,
        rootfs: &StepOutput,
        extensions: &[StepOutput],
    ) -> Result<StepOutput, StepError> {
        let profile = self.recipe.profile;
        let mut inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .step("rootfs", &rootfs.key)
            .text("os", &format!("{}\0{}", profile.os.id, profile.os.version))
            .text("format", &profile.image.to_string())
            .text("hostname", profile.hostname.as_deref().unwrap_or(""))
            .text("enable", &profile.enable.join(","))
            .text("users", &format!("{:?}", profile.users))
            .file("xorbang-update", self.recipe.tools.update)?
            .file("xorbang-commit-overlay", self.recipe.tools.commit_overlay)?
            .file("xorbang-installer", self.recipe.tools.installer)?
            .text("source_date_epoch", &self.epoch());
        for file in &profile.files {
            inputs = match &file.content {
                FileContent::Inline(text) => {
                    inputs.text(&file.path, &format!("{:o}\0{text}", file.mode))
                }
                FileContent::Source(source) => inputs
                    .text(&file.path, &format!("{:o}", file.mode))
                    .file(&file.path, &self.recipe.dir.join(source))?,
            };
        }
        for extension in extensions {
            inputs = inputs.step("extension", &extension.key);
        }
        let recipe = self.recipe;
        self.run("image", "the verified root image", inputs, |dir| {
            let tree = dir.join("tree");
            let pins = prepare_tree(&recipe, rootfs, extensions, &tree)?;
            let epoch = recipe.epoch;
            let os_release = tree.join("usr/lib/os-release");
            fs::copy(&os_release, dir.join(OS_RELEASE))
                .map_err(FileError::of(FileAction::Read, &os_release))?;
            let image = dir.join(recipe.profile.image.file_name());
            recipe
                .profile
                .image
                .pack(
                    &tree,
                    &image,
                    squashfs::BLOCK_SIZE,
                    epoch,
                    &sysext::pin_manifest(&pins),
                )
                .map_err(StepError::Image)?;
            let verity_error = |error| StepError::Verity(Box::new(error));
            let identity = verified::ImageIdentity::of_tree(&tree).map_err(verity_error)?;
            verified::add_verity(&image, identity).map_err(verity_error)?;
            remove_tree(&tree)
        })
    }

    /// The root as the image step packs it, as a directory at `into` (not cached: it is an
    /// output): the profile applied and the extensions in place, but not pinned (pins are
    /// written when an image is packed, e.g. `xorbang-build image --pin-sysext`).
    pub fn tree(
        &mut self,
        rootfs: &StepOutput,
        extensions: &[StepOutput],
        into: &Path,
    ) -> Result<(), StepError> {
        let started = Instant::now();
        eprintln!("[tree] the root as a directory");
        prepare_tree(&self.recipe, rootfs, extensions, into)?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("[tree] done in {seconds:.1} s");
        self.records.push(StepRecord {
            name: "tree".to_owned(),
            key: String::new(),
            reused: false,
            seconds,
            inputs: [("rootfs".to_owned(), rootfs.key.0.clone())].into(),
        });
        Ok(())
    }

    /// The initramfs: our init and the modules the boot needs from the profile's kernel.
    pub fn initrd(&mut self, kernel: &StepOutput) -> Result<StepOutput, StepError> {
        let mut modules: Vec<String> = DEFAULT_MODULES
            .iter()
            .chain(ESP_MODULES)
            .map(|name| name.to_string())
            .collect();
        modules.extend(
            self.recipe
                .profile
                .image
                .initrd_modules()
                .iter()
                .map(|name| name.to_string()),
        );
        modules.extend(self.recipe.profile.boot.modules.iter().cloned());
        let inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .step("kernel", &kernel.key)
            .file("init", self.recipe.init)?
            .text("modules", &modules.join(","))
            .text("source_date_epoch", &self.epoch());
        let modules_dir = kernel.dir.join(MODULES);
        let (init, epoch) = (self.recipe.init, self.recipe.epoch);
        self.run("initrd", "the initramfs", inputs, |dir| {
            let release = only_entry(&modules_dir)?;
            let spec = InitrdSpec {
                init: init.to_owned(),
                kernel_modules: Some((
                    modules_dir.join(release),
                    modules.iter().map(|name| ModuleName::new(name)).collect(),
                )),
                additions: Vec::new(),
                generated: Vec::new(),
            };
            initrd::build(&spec, &dir.join(INITRD), Compression::Zstd, epoch)
                .map(|_| ())
                .map_err(StepError::Initrd)
        })
    }

    /// The UKI: the kernel, the initramfs and the command line with the image's root hash,
    /// named `<IMAGE_ID>_<IMAGE_VERSION>.efi`; signed when the profile names a key.
    pub fn uki(
        &mut self,
        kernel: &StepOutput,
        initrd: &StepOutput,
        image: &StepOutput,
        root_hash: &str,
        extensions: &[StepOutput],
    ) -> Result<StepOutput, StepError> {
        let profile = self.recipe.profile;
        let cmdline = command_line(&profile.boot.cmdline, root_hash, &selection(extensions)?);
        let signing = self.signing();
        let mut inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .step("kernel", &kernel.key)
            .step("initrd", &initrd.key)
            .step("image", &image.key)
            .text("cmdline", &cmdline)
            .text("source_date_epoch", &self.epoch());
        if let Some(signing) = &signing {
            inputs = inputs
                .file("sign_key", &signing.key)?
                .file("sign_cert", &signing.cert)?;
        }
        let name = uki_name(profile);
        let epoch = self.recipe.epoch;
        self.run("uki", &format!("the UKI {name}"), inputs, |dir| {
            let spec = UkiSpec {
                stub: PathBuf::from(uki::DEFAULT_STUB),
                linux: kernel.dir.join(VMLINUZ),
                initrd: initrd.dir.join(INITRD),
                cmdline: CmdlineSource::Text(cmdline.clone()),
                os_release: image.dir.join(OS_RELEASE),
                uname: None,
                signing,
            };
            uki::build(&spec, &dir.join(&name), epoch)
                .map(|_| ())
                .map_err(StepError::Uki)
        })
    }

    /// The disk: the ESP with systemd-boot and the UKI (three tries to boot), the root and
    /// its hash tree in slot A, in the profile's layout or the built-in A/B one.
    pub fn disk(&mut self, image: &StepOutput, uki: &StepOutput) -> Result<StepOutput, StepError> {
        let profile = self.recipe.profile;
        let definitions = profile
            .disk_definitions
            .as_ref()
            .map(|dir| self.recipe.dir.join(dir));
        let signing = self.signing();
        let mut inputs = Inputs::new()
            .text("recipe", RECIPE_VERSION)
            .step("image", &image.key)
            .step("uki", &uki.key)
            .file("boot_loader", Path::new(uki::SYSTEMD_BOOT))?;
        if let Some(definitions) = &definitions {
            inputs = inputs.tree("definitions", definitions)?;
        }
        if let Some(signing) = &signing {
            inputs = inputs
                .file("sign_key", &signing.key)?
                .file("sign_cert", &signing.cert)?;
        }
        let name = uki_name(profile);
        self.run("disk", "the disk image", inputs, |dir| {
            let uki_file = uki.dir.join(&name);
            let boot_loader = match &signing {
                Some(signing) => {
                    let signed = dir.join("systemd-bootx64.efi");
                    uki::sign_efi(Path::new(uki::SYSTEMD_BOOT), &signed, signing)
                        .map_err(StepError::Uki)?;
                    signed
                }
                None => PathBuf::from(uki::SYSTEMD_BOOT),
            };
            let entry = boot_entry_name(profile, FIRST_BOOT_TRIES);
            let esp = EspContents {
                uki: &uki_file,
                name: &entry,
                boot_loader: Some(&boot_loader),
                extras: &[],
            };
            let layout = match &definitions {
                Some(dir) => Layout::Definitions(dir),
                None => Layout::DefaultAb,
            };
            machine_disk::write(
                &image.dir.join(profile.image.file_name()),
                Some(&esp),
                layout,
                &dir.join(DISK),
            )
            .map_err(StepError::Disk)?;
            if signing.is_some() {
                fs::remove_file(&boot_loader).map_err(|error| {
                    StepError::File(FileError::of(FileAction::Remove, &boot_loader)(error))
                })?;
            }
            Ok(())
        })
    }

    /// The profile's Secure Boot key and certificate, if it names them.
    fn signing(&self) -> Option<Signing> {
        let recipe = self.recipe;
        recipe
            .profile
            .boot
            .signing
            .as_ref()
            .map(|(key, cert)| Signing {
                key: recipe.dir.join(key),
                cert: recipe.dir.join(cert),
            })
    }
}

/// How many boots a freshly installed version gets before systemd-boot gives up on it: the
/// number kernel-install and systemd's documentation use.
pub const FIRST_BOOT_TRIES: u32 = 3;

/// The UKI's entry name on the ESP, with boot counting: `<IMAGE_ID>_<IMAGE_VERSION>+<tries>`.
pub fn boot_entry_name(profile: &Profile, tries: u32) -> String {
    format!("{}_{}+{tries}", profile.os.id, profile.os.version)
}

/// `<IMAGE_ID>_<IMAGE_VERSION>.efi`, the Boot Loader Specification's name for a type #2 entry.
pub fn uki_name(profile: &Profile) -> String {
    format!("{}_{}.efi", profile.os.id, profile.os.version)
}

/// The profile's command line with the image's root hash and the extensions to merge.
pub fn command_line(profile_cmdline: &str, root_hash: &str, selection: &Selection) -> String {
    let mut words: Vec<String> = profile_cmdline
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    words.push(format!("roothash={root_hash}"));
    for (key, names) in [
        ("xorbang.sysext", &selection.sysext),
        ("xorbang.confext", &selection.confext),
    ] {
        if !names.is_empty() {
            words.push(format!("{key}={}", names.join(",")));
        }
    }
    words.join(" ")
}

/// The extension images the build made, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub sysext: Vec<String>,
    pub confext: Vec<String>,
}

/// The extension images in the extension steps' outputs.
pub fn selection(extensions: &[StepOutput]) -> Result<Selection, StepError> {
    let mut selection = Selection::default();
    for (kind, names) in [
        (ExtensionKind::Sysext, &mut selection.sysext),
        (ExtensionKind::Confext, &mut selection.confext),
    ] {
        for image in extension_images(extensions, kind)? {
            let name = image
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned());
            names.extend(name);
        }
    }
    Ok(selection)
}

/// The NAME.raw files of `kind` in the extension steps' outputs.
pub fn extension_images(
    extensions: &[StepOutput],
    kind: ExtensionKind,
) -> Result<Vec<PathBuf>, StepError> {
    let mut images = Vec::new();
    for extension in extensions {
        let dir = extension.dir.join(kind.to_string());
        if !dir.is_dir() {
            continue;
        }
        for name in sorted_names(&dir)? {
            let path = dir.join(name);
            if path.extension().is_some_and(|ext| ext == "raw") {
                images.push(path);
            }
        }
    }
    images.sort();
    Ok(images)
}

/// Copies the extension images into the base (`/usr/lib/extensions`, `/usr/lib/confexts`)
/// and returns their pins for its manifest.
fn install_extensions(tree: &Path, extensions: &[StepOutput]) -> Result<ExtensionPins, StepError> {
    let sysexts = extension_images(extensions, ExtensionKind::Sysext)?;
    let confexts = extension_images(extensions, ExtensionKind::Confext)?;
    for (images, dir) in [
        (&sysexts, "usr/lib/extensions"),
        (&confexts, "usr/lib/confexts"),
    ] {
        let target = tree.join(dir);
        for image in images.iter() {
            fs::create_dir_all(&target)
                .map_err(FileError::of(FileAction::CreateDirectory, &target))?;
            let name = image.file_name().unwrap_or_default();
            fs::copy(image, target.join(name)).map_err(FileError::of(FileAction::Read, image))?;
        }
    }
    sysext::pin_extensions(Path::new(UNSQUASHFS), &sysexts, &confexts)
        .map_err(|error| StepError::Extension(Box::new(error)))
}

/// Installs `packages` into the unpacked root `tree` with the root's own apt, against the
/// package lists the rootfs step kept: the same index as the base, so no base package is
/// upgraded behind its back. It runs chrooted in a mount namespace of its own (proc, a devpts and
/// the host's resolv.conf are mounted there and vanish with it) with services kept from starting
/// (policy-rc.d, as mmdebstrap does), so the tree changes only by what the packages do.
fn install_packages(tree: &Path, packages: &[String], epoch: &str) -> Result<(), StepError> {
    let resolv_conf = tree.join("etc/resolv.conf");
    let regular = fs::symlink_metadata(&resolv_conf).is_ok_and(|meta| meta.is_file());
    if !regular {
        return Err(StepError::Tree(format!(
            "{} is not a regular file: the package install mounts the host's over it for name \
             lookups",
            resolv_conf.display()
        )));
    }
    eprintln!(
        "[extension] apt-get install {} into a copy of the base",
        packages.join(" ")
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--fork", "--"])
        .args(["/bin/sh", "-euc", INSTALL_SCRIPT, "install-packages"])
        .arg(tree)
        .args(packages)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("SOURCE_DATE_EPOCH", epoch);
    for proxy in ["http_proxy", "https_proxy", "no_proxy"] {
        if let Some(value) = std::env::var_os(proxy) {
            command.env(proxy, value);
        }
    }
    tool::run_showing_output(&mut command, "util-linux")
        .map_err(|source| apt_step_error("extension", source))
}

/// A failed mmdebstrap or apt-get, as the package or archive apt named when it did.
fn apt_step_error(step: &'static str, source: ToolError) -> StepError {
    let diagnosis = match &source {
        ToolError::Failed { output, .. } => apt_messages::diagnose(output),
        _ => None,
    };
    match diagnosis {
        Some(AptFailure::UnknownPackages(packages)) => {
            StepError::UnknownPackages { step, packages }
        }
        Some(AptFailure::Unreachable { url, reason }) => {
            StepError::Unreachable { step, url, reason }
        }
        None => StepError::Tool { step, source },
    }
}

fn quoted(packages: &[String]) -> String {
    let names: Vec<String> = packages.iter().map(|name| format!("{name:?}")).collect();
    match names.len() {
        1 => format!("package {} is", names[0]),
        _ => format!("packages {} are", names.join(", ")),
    }
}

/// `$1` is the root, the rest are package names (checked by the profile parser).
const INSTALL_SCRIPT: &str = r#"root=$1; shift
mount -t proc proc "$root/proc"
mount -t devpts -o newinstance devpts "$root/dev/pts"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
chroot "$root" apt-get install --yes --no-install-recommends --quiet -- "$@"
rm "$root/usr/sbin/policy-rc.d"
"#;

/// The difference `with` makes over `base`, copied into the two trees, with the package
/// list in the sysext; refused as a whole when anything cannot be carried.
fn take_difference(
    base: &Path,
    with: &Path,
    name: &str,
    sysext: &Path,
    confext: &Path,
) -> Result<(), StepError> {
    let found = difference::difference(base, with)?;
    if !found.refused.is_empty() {
        let refused_paths = found.refused.iter().map(|refused| refused.path.clone());
        let owners = difference::owners(with, &refused_paths.collect())?;
        let listed: Vec<String> = found
            .refused
            .iter()
            .take(20)
            .map(|refused| match owners.get(&refused.path) {
                Some(package) => format!("{} ({package}) {}", refused.path, refused.reason),
                None => format!(
                    "{} (by a maintainer script) {}",
                    refused.path, refused.reason
                ),
            })
            .collect();
        return Err(StepError::Refused {
            name: name.to_owned(),
            count: found.refused.len(),
            paths: listed.join("; "),
        });
    }
    for dir in &found.dropped_dirs {
        eprintln!("[extension {name}] {dir}: a directory under /var, left for the package to make at runtime");
    }
    for link in &found.kept_alternatives {
        eprintln!("[extension {name}] {link}: the base's alternative stays chosen");
    }

    difference::copy_entries(with, &found.sysext, sysext)?;
    difference::copy_entries(with, &found.confext, confext)?;
    if !found.sysext.is_empty() || !found.confext.is_empty() {
        let packages = difference::added_packages(base, with)?.join("\n") + "\n";
        write_in_tree(
            sysext,
            &format!("/usr/share/xorbang/extensions/{name}.packages"),
            packages.as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// ID and VERSION_ID of the base's os-release, for the extension's release file.
fn release_fields(base: &Path) -> Result<ReleaseFields, StepError> {
    let path = base.join("usr/lib/os-release");
    let text = fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
    let release = os_release::parse(&text)
        .map_err(|error| StepError::Tree(format!("{}: {error}", path.display())))?;
    Ok(ReleaseFields {
        os_id: release.get_nonempty("ID").map(str::to_owned),
        version_id: release.get_nonempty("VERSION_ID").map(str::to_owned),
        level: None,
        architecture: None,
    })
}

/// Unpacks a root tarball with owners, modes and extended attributes.
fn extract(tar: &Path, tree: &Path, step: &'static str) -> Result<(), StepError> {
    fs::create_dir_all(tree).map_err(FileError::of(FileAction::CreateDirectory, tree))?;
    run_tool(
        step,
        Command::new("tar")
            .args(["-x", "--numeric-owner", "--xattrs", "--xattrs-include=*"])
            .arg("-f")
            .arg(tar)
            .arg("-C")
            .arg(tree),
        "tar",
    )
}

/// Copies a directory next to the profile into a tree, as it is (owned by root).
fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    let mut source = from.as_os_str().to_owned();
    source.push("/.");
    run_tool(
        "extension",
        Command::new("cp")
            .args(["-R", "--no-dereference", "--preserve=mode,links"])
            .arg(source)
            .arg(to),
        "coreutils",
    )
}

fn is_empty_dir(dir: &Path) -> Result<bool, StepError> {
    Ok(fs::read_dir(dir)
        .map_err(FileError::of(FileAction::ListDirectory, dir))?
        .next()
        .is_none())
}

/// The root hash in the manifest of an image step that packed `format`.
pub fn root_hash(image: &StepOutput, format: RootFormat) -> Result<String, StepError> {
    verified::read_manifest(&image.dir.join(format.file_name()))
        .map(|(_, root_hash, _)| root_hash.to_string())
        .map_err(|error| StepError::Verity(Box::new(error)))
}

/// The Debian root unpacked into `tree` with the profile applied and the extensions in
/// place; returns their pins.
fn prepare_tree(
    recipe: &Recipe,
    rootfs: &StepOutput,
    extensions: &[StepOutput],
    tree: &Path,
) -> Result<ExtensionPins, StepError> {
    extract(&rootfs.dir.join(ROOTFS_TAR), tree, "image")?;
    install_lifecycle(tree, recipe.tools)?;
    customize(tree, recipe.profile, recipe.dir, recipe.epoch)?;
    install_extensions(tree, extensions)
}

/// What every image carries for its life (A/B updates, committing dev changes), before the profile (which may add health
/// checks): `xorbang-update` and `xorbang-commit-overlay`, the health check that boot-complete.target needs, `/efi` where
/// systemd mounts the ESP (systemd-bless-boot renames the entry there), and
/// systemd-boot-update masked (the boot loader on the ESP is the one the image was
/// installed or updated with, signed for Secure Boot; bootctl would put an unsigned copy there).
fn install_lifecycle(tree: &Path, tools: ImageTools) -> Result<(), StepError> {
    for (path, source) in tools.installed() {
        let binary = fs::read(source).map_err(FileError::of(FileAction::Read, source))?;
        write_in_tree(tree, path, &binary, 0o755)?;
    }
    write_in_tree(tree, HEALTH_CHECK_PATH, HEALTH_CHECK.as_bytes(), 0o755)?;
    write_in_tree(
        tree,
        HEALTH_CHECK_UNIT_PATH,
        HEALTH_CHECK_UNIT.as_bytes(),
        0o644,
    )?;
    let efi = tree.join("efi");
    fs::create_dir_all(&efi).map_err(FileError::of(FileAction::CreateDirectory, &efi))?;
    systemctl_in(tree, &["enable", "xorbang-health-check.service"])?;
    systemctl_in(tree, &["mask", "systemd-boot-update.service"])
}

/// `systemctl --root=TREE ARGS`, with the tree's path made absolute and free of `..`
/// first: systemctl resolves unit links inside the root by that path and fails to find
/// what it just wrote when the path goes up and down again.
fn systemctl_in(tree: &Path, args: &[&str]) -> Result<(), StepError> {
    let root = fs::canonicalize(tree).map_err(FileError::of(FileAction::Inspect, tree))?;
    run_tool(
        "image",
        Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .args(args),
        "systemd",
    )
}

/// The profile applied to the extracted root `tree`.
fn customize(
    tree: &Path,
    profile: &Profile,
    profile_dir: &Path,
    epoch: u32,
) -> Result<(), StepError> {
    if let Some(hostname) = &profile.hostname {
        write_in_tree(
            tree,
            "/etc/hostname",
            format!("{hostname}\n").as_bytes(),
            0o644,
        )?;
    }
    // Empty: systemd makes a machine ID at boot (transient on a read-only root).
    write_in_tree(tree, "/etc/machine-id", b"", 0o444)?;
    set_image_identity(tree, profile)?;
    for file in &profile.files {
        let bytes = match &file.content {
            FileContent::Inline(text) => text.clone().into_bytes(),
            FileContent::Source(source) => {
                let path = profile_dir.join(source);
                fs::read(&path).map_err(FileError::of(FileAction::Read, &path))?
            }
        };
        write_in_tree(tree, &file.path, &bytes, file.mode)?;
    }
    for user in &profile.users {
        add_user(tree, user, epoch)?;
    }
    if !profile.enable.is_empty() {
        let mut args = vec!["enable"];
        args.extend(profile.enable.iter().map(String::as_str));
        systemctl_in(tree, &args)?;
    }
    remove_machine_secrets(tree)?;
    remove_package_lists(tree)?;
    remove_kernel_files(tree)
}

/// apt's package lists, which the rootfs step keeps for extensions: an image would carry tens
/// of megabytes of an index that is stale by its first boot. Its lock and `partial/` stay, as
/// mmdebstrap leaves them.
fn remove_package_lists(tree: &Path) -> Result<(), StepError> {
    let lists = tree.join(PACKAGE_LISTS);
    for name in sorted_names(&lists)? {
        let path = lists.join(&name);
        let meta =
            fs::symlink_metadata(&path).map_err(FileError::of(FileAction::Inspect, &path))?;
        if name != "lock" && !meta.is_dir() {
            fs::remove_file(&path).map_err(FileError::of(FileAction::Remove, &path))?;
        }
    }
    Ok(())
}

/// Keys a package generated at install time (SSH host keys): every machine of the image
/// would share them. A machine gets its own at boot or through host config.
fn remove_machine_secrets(tree: &Path) -> Result<(), StepError> {
    for secret in difference::MACHINE_SECRETS {
        let (dir, prefix) = secret.rsplit_once('/').unwrap_or(("", secret));
        let dir = tree.join(dir);
        if !dir.is_dir() {
            continue;
        }
        for name in sorted_names(&dir)? {
            if name.to_string_lossy().starts_with(prefix) {
                let path = dir.join(name);
                fs::remove_file(&path).map_err(FileError::of(FileAction::Remove, &path))?;
            }
        }
    }
    Ok(())
}

/// IMAGE_ID= and IMAGE_VERSION= in /usr/lib/os-release (replacing any the distribution set):
/// what boot loaders and updaters read.
fn set_image_identity(tree: &Path, profile: &Profile) -> Result<(), StepError> {
    let path = tree.join("usr/lib/os-release");
    let text = fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with("IMAGE_ID=") && !line.starts_with("IMAGE_VERSION="))
        .map(str::to_owned)
        .collect();
    lines.push(format!("IMAGE_ID={}", profile.os.id));
    lines.push(format!("IMAGE_VERSION={}", profile.os.version));
    fs::write(&path, lines.join("\n") + "\n").map_err(FileError::of(FileAction::Write, &path))?;
    Ok(())
}

/// Writes `bytes` at the absolute `path` inside `tree`, creating directories, and refusing
/// to follow a symlink of the tree: this runs as root, and a link could point at the host.
fn write_in_tree(tree: &Path, path: &str, bytes: &[u8], mode: u32) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = tree.to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        at.push(part);
        let last = index + 1 == parts.len();
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StepError::Tree(format!(
                    "{path}: {} is a symlink in the image; write the file where it points",
                    at.strip_prefix(tree).unwrap_or(&at).display()
                )))
            }
            Ok(meta) if last && meta.is_dir() => {
                return Err(StepError::Tree(format!(
                    "{path} is a directory in the image"
                )))
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(StepError::Tree(format!(
                    "{path}: /{} is a file in the image",
                    at.strip_prefix(tree).unwrap_or(&at).display()
                )))
            }
            Ok(_) => {}
            Err(_) if !last => {
                fs::create_dir(&at).map_err(FileError::of(FileAction::CreateDirectory, &at))?
            }
            Err(_) => {}
        }
    }
    fs::write(&at, bytes).map_err(FileError::of(FileAction::Write, &at))?;
    fs::set_permissions(&at, fs::Permissions::from_mode(mode))
        .map_err(FileError::of(FileAction::Write, &at))?;
    Ok(())
}

/// A user made by the root's own useradd (`--root`), with a home, its groups and SSH keys.
fn add_user(tree: &Path, user: &super::profile::ProfileUser, epoch: u32) -> Result<(), StepError> {
    let mut command = Command::new("useradd");
    command
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--root")
        .arg(tree)
        .args(["--create-home", "--user-group"]);
    if !user.groups.is_empty() {
        command.arg("--groups").arg(user.groups.join(","));
    }
    command
        .arg("--shell")
        .arg(user.shell.as_deref().unwrap_or("/bin/bash"));
    run_tool("image", command.arg(&user.name), "passwd")?;
    if user.ssh_authorized_keys.is_empty() {
        return Ok(());
    }
    let (uid, gid) = ids_of(tree, &user.name)?;
    let ssh = format!("/home/{}/.ssh", user.name);
    let keys = user.ssh_authorized_keys.join("\n") + "\n";
    write_in_tree(
        tree,
        &format!("{ssh}/authorized_keys"),
        keys.as_bytes(),
        0o600,
    )?;
    let dir = tree.join(ssh.trim_start_matches('/'));
    for path in [dir.join("authorized_keys"), dir.clone()] {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .map_err(FileError::of(FileAction::Write, &path))?;
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(FileError::of(FileAction::Write, &dir))?;
    Ok(())
}

/// The user's uid and gid from the tree's /etc/passwd.
fn ids_of(tree: &Path, name: &str) -> Result<(u32, u32), StepError> {
    let path = tree.join("etc/passwd");
    let text = fs::read_to_string(&path).map_err(FileError::of(FileAction::Read, &path))?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| StepError::Tree(format!("useradd left no {name} in /etc/passwd")))
}

/// The kernel, its initramfs and the links to them: the UKI carries the kernel.
fn remove_kernel_files(tree: &Path) -> Result<(), StepError> {
    let boot = tree.join("boot");
    if boot.is_dir() {
        for entry in fs::read_dir(&boot).map_err(FileError::of(FileAction::ListDirectory, &boot))? {
            let path = entry
                .map_err(FileError::of(FileAction::ListDirectory, &boot))?
                .path();
            remove_tree(&path)?;
        }
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let path = tree.join(link);
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path).map_err(FileError::of(FileAction::Remove, &path))?;
        }
    }
    Ok(())
}

fn run_tool(
    step: &'static str,
    command: &mut Command,
    package: &'static str,
) -> Result<(), StepError> {
    tool::run(command, package).map_err(|source| StepError::Tool { step, source })
}

/// The one entry of `dir` (the kernel release under lib/modules).
fn only_entry(dir: &Path) -> Result<String, StepError> {
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(FileError::of(FileAction::ListDirectory, dir))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(StepError::Kernel(format!(
            "{} is empty: no kernel installed",
            dir.display()
        ))),
        several => Err(StepError::Kernel(format!(
            "{} holds {} kernels ({}); name one kernel package",
            dir.display(),
            several.len(),
            several.join(", ")
        ))),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StepError> {
    fs::rename(from, to)
        .map_err(|source| FileError::of(FileAction::RenameTo(to.to_owned()), from)(source).into())
}

fn remove_tree(path: &Path) -> Result<(), StepError> {
    super::cache::remove_tree_if_present(path).map_err(StepError::from)
}

//! One install, in order: what runs (the boot report), the target's checks (a whole disk,
//! not the running system's, unused, held exclusively, empty unless `--wipe`), the UKI and
//! host config, the ESP and the plan (and the size check), then the writes — data first,
//! the partition table last — and everything read back. Until the first write, any refusal
//! leaves the disk as it was.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use xorbang_formats::pe::{self, PeError};

use crate::block::{self, BlockDevice, DevNum, Sysfs};
use crate::checks::{self, Refusal, HEAD_BYTES};
use crate::esp::{self, MakeEspError};
use crate::host::{self, HostChoice, HostConfig, HostError};
use crate::plan::{self, EspFile, PlanError};
use crate::running::{RunningError, RunningImage};
use crate::source::{self, Location, SourceError};
use crate::sys;
use crate::target::{Target, TargetError};
use crate::uki::{self, UkiError, MAX_UKI_BYTES};
use crate::units::Size;
use crate::write::{self, WriteError, Written};

/// The UKI a netboot tree offers for disks (`xorbang-build netboot --install-uki`).
pub const INSTALL_UKI: &str = "install.efi";
/// The boot loader a netboot tree offers for disks (`--boot-loader`), signed for the
/// fleet's Secure Boot keys where it needs to be.
pub const TREE_BOOT_LOADER: &str = "systemd-bootx64.efi";
/// systemd-boot is about 100 KiB.
const MAX_BOOT_LOADER_BYTES: u64 = 16 << 20;
/// /proc/swaps and mountinfo are small; a bound keeps a strange procfs from costing memory.
const MAX_PROC_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Running(#[from] RunningError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot inspect {}", .0.display())]
    Inspect(PathBuf, #[source] io::Error),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error(
        "no UKI to install: pass --uki FILE|URL, or --tree URL (its {INSTALL_UKI}), or boot \
         with xorbang.netboot=URL on the kernel command line"
    )]
    NoUki,
    #[error("--tree {0:?}")]
    Tree(String, #[source] SourceError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Uki(#[from] UkiError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Esp(#[from] MakeEspError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "cannot read the boot loader {} (install systemd-boot-efi in the image, or pass \
         --boot-loader FILE)",
        .0.display()
    )]
    BootLoader(PathBuf, #[source] io::Error),
    #[error("the boot loader {} is not an EFI application", .0.display())]
    NotEfi(PathBuf, #[source] PeError),
    #[error("cannot write {}", .0.display())]
    WriteFile(PathBuf, #[source] io::Error),
    #[error("cannot make a scratch directory in {}", .0.display())]
    Scratch(PathBuf, #[source] io::Error),
}

/// Everything the install reads, each replaceable for tests.
#[derive(Debug, Clone)]
pub struct Request {
    pub disk: PathBuf,
    pub tree: Option<String>,
    pub uki: Option<String>,
    pub host: Option<HostChoice>,
    pub wipe: bool,
    pub dry_run: bool,
    pub boot_report: PathBuf,
    /// The kernel command line; `None` reads `<proc>/cmdline`.
    pub cmdline: Option<String>,
    pub sys: PathBuf,
    pub proc_dir: PathBuf,
    /// `--boot-loader`; else the tree's, else the image's own systemd-boot.
    pub boot_loader: Option<PathBuf>,
    pub keys: PathBuf,
    /// Where the scratch directory goes.
    pub scratch: PathBuf,
}

/// Prints one line per step, each with the time it took.
struct Steps {
    started: Instant,
    step: Instant,
}

impl Steps {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            step: Instant::now(),
        }
    }

    fn say(&mut self, text: &str) {
        println!("{text} ({:.1} s)", self.step.elapsed().as_secs_f64());
        self.step = Instant::now();
    }

    fn total(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

pub fn run(request: &Request) -> Result<(), InstallError> {
    let mut steps = Steps::new();
    let image = RunningImage::read(&request.boot_report)?;
    steps.say(&format!(
        "running {} {} (root hash {}): the image is {} on {}, its hash tree {} on {}",
        image.image_id,
        image.version,
        image.root_hash,
        Size(image.image_bytes),
        image.data_device.display(),
        Size(image.hash_bytes),
        image.hash_device.display()
    ));
    let target = claim_disk(request, &image, &mut steps)?;
    let sources = gather_sources(request, &image, &mut steps)?;
    let base = &request.scratch;
    let scratch = tempfile::Builder::new()
        .prefix("xorbang-installer.")
        .tempdir_in(base)
        .map_err(|error| InstallError::Scratch(base.clone(), error))?;
    let (plan, table) = lay_out(
        request,
        &image,
        &target,
        &sources,
        scratch.path(),
        &mut steps,
    )?;
    if request.dry_run {
        for line in plan::render(&plan, &image, &request.disk, target.bytes()) {
            println!("{line}");
        }
        println!("dry run: nothing was written to {}", request.disk.display());
        return Ok(());
    }
    let written = write_all(&target, &plan, &table, &image, &mut steps)?;
    read_back(&target, &plan, &written, &mut steps)?;
    println!(
        "installed {} {} (root hash {}) on {} in {:.1} s",
        image.image_id,
        image.version,
        image.root_hash,
        request.disk.display(),
        steps.total()
    );
    Ok(())
}

/// Checks 1 to 5: the disk, held from here on.
fn claim_disk(
    request: &Request,
    image: &RunningImage,
    steps: &mut Steps,
) -> Result<Target, InstallError> {
    let target = check_target(request, image)?;
    let line = format!(
        "{} is a whole disk of {}, not in use, opened exclusively and locked",
        request.disk.display(),
        Size(target.bytes())
    );
    match existing_contents(&target)? {
        None => steps.say(&format!("{line}; it holds nothing")),
        Some(found) if request.wipe => steps.say(&format!(
            "{line}; it has {found}, to be overwritten (--wipe)"
        )),
        Some(found) => {
            return Err(Refusal::Contents {
                disk: request.disk.clone(),
                found,
            }
            .into())
        }
    }
    Ok(target)
}

/// What goes on the ESP besides what the image provides.
struct Sources {
    uki: Vec<u8>,
    boot_loader: Vec<u8>,
    host_config: Option<HostConfig>,
}

/// Check 7 and the other inputs: the UKI, the host config, the boot loader.
fn gather_sources(
    request: &Request,
    image: &RunningImage,
    steps: &mut Steps,
) -> Result<Sources, InstallError> {
    let tree = tree(request)?;
    let (location, uki) = fetch_uki(request, tree.as_ref(), image)?;
    steps.say(&format!(
        "{location}: {}, boots roothash={}",
        Size(uki.len() as u64),
        image.root_hash
    ));
    let host_config = match &request.host {
        Some(choice) => Some(load_host_config(choice, tree.as_ref(), request, steps)?),
        None => None,
    };
    let boot_loader = boot_loader(request, tree.as_ref(), steps)?;
    Ok(Sources {
        uki,
        boot_loader,
        host_config,
    })
}

/// systemd-boot: `--boot-loader`, else the netboot tree's (a site signs it for its Secure
/// Boot keys), else the one the image carries (unsigned in Debian).
fn boot_loader(
    request: &Request,
    tree: Option<&Location>,
    steps: &mut Steps,
) -> Result<Vec<u8>, InstallError> {
    if let Some(path) = &request.boot_loader {
        return read_boot_loader(path);
    }
    if let Some(tree) = tree {
        let location = tree.join(TREE_BOOT_LOADER)?;
        if let Some(bytes) = location.read_if_present(MAX_BOOT_LOADER_BYTES)? {
            pe::section_names(&bytes).map_err(|error| {
                InstallError::NotEfi(PathBuf::from(location.to_string()), error)
            })?;
            steps.say(&format!(
                "{location}: the boot loader, {}",
                Size(bytes.len() as u64)
            ));
            return Ok(bytes);
        }
    }
    read_boot_loader(Path::new(esp::BOOT_LOADER))
}

/// The ESP, the plan and check 6; returns the plan and the partition table's writes.
fn lay_out(
    request: &Request,
    image: &RunningImage,
    target: &Target,
    sources: &Sources,
    scratch: &Path,
    steps: &mut Steps,
) -> Result<(plan::Plan, Vec<plan::Write>), InstallError> {
    let uki = write_scratch(scratch, "uki.efi", &sources.uki)?;
    let boot_loader = write_scratch(scratch, "systemd-bootx64.efi", &sources.boot_loader)?;
    let entry = esp::entry_name(&image.image_id, &image.version);
    let made = esp::make(
        scratch,
        &uki,
        &entry,
        &boot_loader,
        sources.host_config.as_ref(),
    )?;
    let mut contents = format!("an ESP: systemd-boot, {}", made.entry);
    if made.host_config {
        contents.push_str(&format!(", {}", host::ESP_FILE));
    }
    steps.say(&format!("made {contents}"));
    let esp_file = EspFile {
        image: &made.image,
        contents,
    };
    let plan = plan::plan(image, &esp_file, scratch)?;
    checks::large_enough(&request.disk, target.bytes(), plan.needed_bytes)?;
    let table = plan::table_writes(&plan, target.bytes())?;
    steps.say(&format!(
        "laid out {} partitions: {} of the disk's {}",
        plan.partitions.len(),
        Size(plan.needed_bytes),
        Size(target.bytes())
    ));
    Ok((plan, table))
}

fn write_scratch(scratch: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, InstallError> {
    let path = scratch.join(name);
    fs::write(&path, bytes).map_err(|error| InstallError::WriteFile(path.clone(), error))?;
    Ok(path)
}

/// The data, synced; then the partition table, synced; then the kernel is told.
fn write_all(
    target: &Target,
    plan: &plan::Plan,
    table: &[plan::Write],
    image: &RunningImage,
    steps: &mut Steps,
) -> Result<Vec<Written>, InstallError> {
    let tree = write::read_hash_area(image)?;
    let mut written = Vec::new();
    for data in plan::data_writes(plan, image) {
        written.push(write::write(target, &data, image, &tree)?);
        steps.say(&format!(
            "wrote {}: {}, {}",
            data.name,
            Size(data.length),
            data.about
        ));
    }
    target.sync()?;
    steps.say(&format!("synced {}", target.path().display()));
    for part in table {
        written.push(write::write(target, part, image, &tree)?);
    }
    target.sync()?;
    steps.say("wrote the partition table: the backup at the disk's end, then the primary");
    reread(target, steps);
    Ok(written)
}

/// Every region from the disk itself, and the table through the GPT reader.
fn read_back(
    target: &Target,
    plan: &plan::Plan,
    written: &[Written],
    steps: &mut Steps,
) -> Result<(), InstallError> {
    target.drop_cache()?;
    for made in written {
        write::verify(target, made)?;
    }
    write::verify_table(target, plan)?;
    steps.say(&format!(
        "read back {} regions: each has the SHA-256 written; the partition table reads back as \
         planned",
        written.len()
    ));
    Ok(())
}

/// systemd-boot, read before anything is made: a PE image, bounded in size.
fn read_boot_loader(path: &Path) -> Result<Vec<u8>, InstallError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_BOOT_LOADER_BYTES).read_to_end(&mut bytes))
        .map_err(|error| InstallError::BootLoader(path.to_owned(), error))?;
    pe::section_names(&bytes).map_err(|error| InstallError::NotEfi(path.to_owned(), error))?;
    Ok(bytes)
}

/// Checks 1 to 3, then 4 (the exclusive open and the lock).
fn check_target(request: &Request, image: &RunningImage) -> Result<Target, InstallError> {
    let sys = Sysfs::new(&request.sys);
    let disk = whole_disk(&sys, &request.disk)?;
    let mounts = block::parse_mountinfo(&read_proc(&request.proc_dir.join("self/mountinfo"))?);
    let swaps = match read_proc(&request.proc_dir.join("swaps")) {
        Ok(text) => block::parse_swaps(&text),
        // Without swap support the kernel has no /proc/swaps, and nothing is swap.
        Err(InstallError::Read(_, error)) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    checks::not_running_system(&sys, &disk, &request.disk, &image.system_devices(), &mounts)?;
    checks::not_in_use(&sys, &disk, &mounts, &swaps)?;
    checks::sector_size(&sys, &disk, &request.disk)?;
    Ok(Target::open(&request.disk)?)
}

/// Check 1: a block device, and sysfs says it is a whole disk.
fn whole_disk(sys: &Sysfs, path: &Path) -> Result<BlockDevice, InstallError> {
    let metadata =
        fs::metadata(path).map_err(|error| InstallError::Inspect(path.to_owned(), error))?;
    if !metadata.file_type().is_block_device() {
        return Err(Refusal::NotBlockDevice(path.to_owned()).into());
    }
    Ok(checks::whole_disk(
        sys,
        path,
        DevNum::from_raw(metadata.rdev()),
    )?)
}

fn read_proc(path: &Path) -> Result<String, InstallError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|file| file.take(MAX_PROC_BYTES).read_to_string(&mut text))
        .map_err(|error| InstallError::Read(path.to_owned(), error))?;
    Ok(text)
}

/// Check 5's reads: the disk's head, its last sector, and what they point at.
fn existing_contents(target: &Target) -> Result<Option<checks::Found>, InstallError> {
    let read_error = |error| InstallError::Target(target.error("read", error));
    let head = target.read_at(0, HEAD_BYTES).map_err(read_error)?;
    let tail = target
        .read_at(target.bytes().saturating_sub(512), 512)
        .map_err(read_error)?;
    let mut read_at = |offset: u64, length: usize| target.read_at(offset, length);
    checks::existing_contents(&head, &tail, &mut read_at).map_err(read_error)
}

/// The netboot tree: `--tree`, else `xorbang.netboot=` on the command line.
fn tree(request: &Request) -> Result<Option<Location>, InstallError> {
    let text = match (&request.tree, &request.cmdline) {
        (Some(tree), _) => Some(tree.clone()),
        (None, Some(cmdline)) => source::tree_from_cmdline(cmdline),
        (None, None) => source::tree_from_cmdline(&source::read_cmdline(&request.proc_dir)?),
    };
    text.map(|text| {
        Location::parse_directory(&text).map_err(|error| InstallError::Tree(text.clone(), error))
    })
    .transpose()
}

/// Check 7: the UKI, from `--uki` or the tree, boots the running image from a disk.
fn fetch_uki(
    request: &Request,
    tree: Option<&Location>,
    image: &RunningImage,
) -> Result<(Location, Vec<u8>), InstallError> {
    let location = match (&request.uki, tree) {
        (Some(given), _) => Location::parse(given)?,
        (None, Some(tree)) => tree.join(INSTALL_UKI)?,
        (None, None) => return Err(InstallError::NoUki),
    };
    let bytes = location.read(MAX_UKI_BYTES)?;
    uki::check(&location.to_string(), &bytes, &image.root_hash)?;
    Ok((location, bytes))
}

fn load_host_config(
    choice: &HostChoice,
    tree: Option<&Location>,
    request: &Request,
    steps: &mut Steps,
) -> Result<HostConfig, InstallError> {
    let config = host::load(choice, tree)?;
    let keys = host::pinned_keys(&request.keys);
    let (trust, refused) = host::trust(&config, &keys);
    if refused {
        println!("warning: host config {}: {trust}", config.origin);
    }
    steps.say(&format!("host config {}: {trust}", config.origin));
    Ok(config)
}

/// BLKRRPART, so the kernel (and udev) see the new partitions. The disk is complete without
/// it: a kernel that cannot re-read the table now reads it at the next boot.
fn reread(target: &Target, steps: &mut Steps) {
    match sys::reread_partition_table(target.file()) {
        Ok(()) => steps.say("the kernel re-read the partition table"),
        Err(error) => println!(
            "warning: the kernel did not re-read the partition table of {} ({error}): run \
             `partx -u {}` or reboot before using its partitions",
            target.path().display(),
            target.path().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::running::tests::{fake_image, ROOT_HASH};
    use crate::uki::tests::uki_with;
    use xorbang_formats::error_chain::error_chain;

    fn request(dir: &Path) -> Request {
        Request {
            disk: dir.join("disk.img"),
            tree: None,
            uki: None,
            host: None,
            wipe: false,
            dry_run: true,
            boot_report: fake_image(dir, 8),
            cmdline: Some("console=ttyS0".to_owned()),
            sys: dir.join("sys"),
            proc_dir: dir.join("proc"),
            boot_loader: Some(dir.join("systemd-bootx64.efi")),
            keys: dir.join("keys"),
            scratch: dir.to_owned(),
        }
    }

    #[test]
    fn a_disk_that_is_not_a_block_device_is_refused_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = request(dir.path());
        std::fs::write(&request.disk, vec![0u8; 4096]).expect("disk");
        let error = run(&request).expect_err("a file");
        assert_eq!(
            error_chain(&error),
            format!("{} is not a block device", request.disk.display())
        );
        let missing = Request {
            disk: dir.path().join("nope"),
            ..request
        };
        let error = run(&missing).expect_err("missing");
        assert!(
            error_chain(&error).starts_with(&format!(
                "cannot inspect {}: No such file",
                missing.disk.display()
            )),
            "{}",
            error_chain(&error)
        );
    }

    #[test]
    fn the_boot_loader_must_be_there_and_an_efi_application() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("systemd-bootx64.efi");
        let error = read_boot_loader(&missing).expect_err("missing");
        assert!(
            error_chain(&error).starts_with(&format!(
                "cannot read the boot loader {} (install systemd-boot-efi in the image, or pass \
                 --boot-loader FILE): No such file",
                missing.display()
            )),
            "{}",
            error_chain(&error)
        );
        std::fs::write(&missing, b"#!/bin/sh\n").expect("write");
        let error = read_boot_loader(&missing).expect_err("a script");
        assert!(error_chain(&error).contains("is not an EFI application: not a PE image"));
        std::fs::write(&missing, crate::uki::tests::stub()).expect("write");
        read_boot_loader(&missing).expect("a PE image");
    }

    #[test]
    fn the_uki_comes_from_uki_the_tree_or_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut request = request(dir.path());
        let image = RunningImage::read(&request.boot_report).expect("image");
        let error = fetch_uki(&request, tree(&request).expect("tree").as_ref(), &image)
            .expect_err("no source");
        assert_eq!(
            error.to_string(),
            "no UKI to install: pass --uki FILE|URL, or --tree URL (its install.efi), or boot \
             with xorbang.netboot=URL on the kernel command line"
        );
        let netboot = dir.path().join("netboot");
        std::fs::create_dir(&netboot).expect("tree");
        let good = uki_with(&format!("roothash={ROOT_HASH}"));
        std::fs::write(netboot.join(INSTALL_UKI), &good).expect("uki");
        request.cmdline = Some(format!("quiet xorbang.netboot={}", netboot.display()));
        let tree_location = tree(&request).expect("tree");
        let (location, bytes) =
            fetch_uki(&request, tree_location.as_ref(), &image).expect("from the tree");
        assert_eq!(
            location.to_string(),
            netboot.join(INSTALL_UKI).display().to_string()
        );
        assert_eq!(bytes, good);

        let other = dir.path().join("other.efi");
        std::fs::write(&other, uki_with(&format!("roothash={}", "22".repeat(32)))).expect("uki");
        request.uki = Some(other.display().to_string());
        let error = fetch_uki(&request, tree_location.as_ref(), &image).expect_err("another image");
        assert_eq!(
            error.to_string(),
            format!(
                "{} boots roothash={} but the running image is {ROOT_HASH}",
                other.display(),
                "22".repeat(32)
            )
        );
    }
}

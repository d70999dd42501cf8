//! The boot, stage by stage: API filesystems, command line, modules, root device, mount
//! stack, init check, switch_root. Each stage is timed for the boot report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::discovery::block_devices::{self, BlockError, DeviceScan, Lookup};
use crate::discovery::boot_loader;
use crate::discovery::download::{DownloadError, Downloads};
use crate::discovery::loop_devices::{self, AttachedLoop, LoopError};
use crate::handoff::mounts::{self, DevDirs, MountError, RootSource, ROOT_OVERLAY};
use crate::handoff::switch_root::{self, SwitchRootError};
use crate::kernel::module_loader::{KernelView, KmodError, ModuleLoader};
use crate::layers::dev_layer::{DevLayer, PersistError};
use crate::layers::extensions;
use crate::layers::host_config_trust::PinnedKeys;
use crate::layers::{self, LayersError};
use crate::options::{self, BootOptions, FailurePolicy, OptionError, RootChoice};
use crate::paths::Paths;
use crate::stage_clock::{boot_clock, StageClock};
use crate::verity::activation::{self, VerityRootError};
use xorbang_formats::boot_report::{BootReport, MemoryReport, Mode, RootReport, VerityReport};
use xorbang_formats::cmdline::Cmdline;
use xorbang_formats::devspec::DeviceSpec;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::fs_probe::FsKind;
use xorbang_formats::gpt::Guid;
use xorbang_formats::meminfo::{Kib, MemInfo};
use xorbang_formats::os_release::OsRelease;

/// How often the device wait looks again; well below human notice, well above busy-looping.
const DEVICE_POLL: Duration = Duration::from_millis(10);

/// What the caller of the init (the kernel, or a test) decided.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    /// The command line to use instead of /proc/cmdline.
    pub cmdline: Option<String>,
    /// Mount /proc, /sys, /dev and /run (off when a test provides them).
    pub api_mounts: bool,
    /// Leave the initramfs and exec the target init (off for tests: stop after the report).
    pub switch_root: bool,
    /// Log to /dev/kmsg once /dev is mounted (off for tests: keep logging to stderr).
    pub log_to_kmsg: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot read the kernel command line from {path}")]
    Cmdline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad kernel command line")]
    Options(#[from] OptionError),
    #[error("kernel modules")]
    Modules(#[from] KmodError),
    #[error("{what} {spec} did not appear within {secs} s (block devices seen: {seen})")]
    RootTimeout {
        what: &'static str,
        spec: DeviceSpec,
        secs: f64,
        seen: String,
    },
    #[error("looking for device {spec}")]
    RootLookup {
        spec: DeviceSpec,
        source: BlockError,
    },
    #[error("cannot read the root device {device}")]
    Probe { device: PathBuf, source: BlockError },
    #[error("root device {device} ({spec}) holds no SquashFS or EROFS image (found {found}); set rootfstype= to mount another filesystem")]
    NotRootImage {
        spec: String,
        device: PathBuf,
        found: String,
    },
    #[error("cannot read the device number of {device} to set its read-ahead")]
    RootDeviceNumber {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    SwitchRoot(#[from] SwitchRootError),
    #[error("verity")]
    Verity(#[from] VerityRootError),
    #[error("loop device")]
    Loop(#[from] LoopError),
    #[error("netboot")]
    Download(#[from] DownloadError),
    /// The kernel unpacks the initramfs into a tmpfs of half the memory, and when that is
    /// full it says so once and boots on without the rest.
    #[error(
        "{} is not in the initramfs; if the kernel said \"Initramfs unpacking failed: write \
         error\", the machine has too little memory for the initramfs and the image in it",
        file.display()
    )]
    NotInInitramfs { file: PathBuf },
    #[error(transparent)]
    Layers(#[from] LayersError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("the dev overlay came up read-only: the kernel could not use {} as its upper (see the overlayfs lines above)", upper.display())]
    OverlayReadOnly { upper: PathBuf },
}

/// Runs the boot. With `switch_root` it only returns on failure; without, it returns the
/// report of a boot that stopped just before switch_root. `policy` is updated as soon as
/// the command line says which failure policy applies.
pub fn boot(settings: &Settings, policy: &mut FailurePolicy) -> Result<BootReport, BootError> {
    let paths = &settings.paths;
    let mut clock = StageClock::start();
    let started = Instant::now();
    if settings.api_mounts {
        mounts::execute(&mounts::plan_api_filesystems(paths))?;
    }
    if settings.log_to_kmsg {
        crate::kmsg::log_to_kmsg(paths.kmsg());
    }
    // The boot clock beside the record's own kernel timestamp: what puts the kernel's
    // `Run /init` line on the boot clock of the report (the two clocks drift apart under
    // emulation, by ±50 ms at this point of a TCG boot).
    log::info!(
        "xorbang-init {} starting (boot clock {:.6} s)",
        env!("CARGO_PKG_VERSION"),
        boot_clock().as_secs_f64()
    );
    let options = read_options(settings, policy)?;
    clock.finish_stage("setup");

    let kernel = KernelView::of(paths);
    let mut modules = ModuleLoader::open(&paths.modules(&kernel_release()), kernel)?;
    modules.load_drivers()?;
    // The boot disk is read from efivarfs below, systemd reads EFI variables through it too,
    // and root images need not carry the UKI kernel's modules: provide it, but only on
    // machines booted through UEFI.
    if paths.sys().join("firmware/efi").exists() {
        modules.ensure("efivarfs")?;
    }
    clock.finish_stage("modules");
    // In the background while the init waits for devices (see PinnedKeys).
    let mut pinned_keys = PinnedKeys::start();

    let wait = DeviceWait {
        budget: options.timeout,
        deadline: started + options.timeout,
        boot_esp: boot_loader::loader_partition(paths).map(|esp| esp.0),
    };
    // Loop devices of image files: each clears itself once nothing holds it, so they are
    // held until the root's mapping and mount hold them.
    let mut held = ImageFiles::default();
    // `device` is what gets mounted; `source` the block device the image is read from.
    let (device, source, verity) = match &options.root {
        RootChoice::Plain(spec) => {
            let [device] = locate(
                paths,
                &mut modules,
                &mut held,
                [("root device", spec)],
                &wait,
            )?;
            clock.finish_stage("root-device");
            (device.clone(), device, None)
        }
        RootChoice::Verity(request) => {
            let wanted = [
                ("verity data device", &request.data),
                ("verity hash device", &request.hash),
            ];
            let [data, hash] = locate(paths, &mut modules, &mut held, wanted, &wait)?;
            clock.finish_stage("root-device");
            modules.ensure("dm_verity")?;
            let active = activation::activate(&paths.dev(), request, &data, &hash)?;
            log::info!(
                "verity: {} with its hash tree on {} matches roothash; mapped as {} (status {})",
                system_path(paths, &data),
                system_path(paths, &hash),
                system_path(paths, &active.node),
                active.status
            );
            if is_image_file(&request.data) || is_image_file(&request.hash) {
                mask_root_veritysetup(paths)?;
            }
            let report = VerityReport {
                root_hash: request.root_hash.to_string(),
                data_device: system_path(paths, &data),
                hash_device: system_path(paths, &hash),
                status: active.status,
            };
            (active.node, data, Some(report))
        }
    };
    clock.finish_stage("verity");

    if let Some(readahead) = options.root_readahead {
        set_readahead(paths, &device, readahead)?;
    }
    let fstype = root_fstype(&options, &device)?;
    modules.ensure(&fstype)?;
    let dev = match options.mode {
        Mode::Production => None,
        Mode::Dev => {
            modules.ensure("overlay")?;
            let root_hash = verity.as_ref().map(|verity| verity.root_hash.as_str());
            let layer =
                DevLayer::prepare(paths, options.dev_storage, &source, root_hash, &mut modules)?;
            Some(layer)
        }
    };
    let root = RootSource {
        device: &device,
        fstype: &fstype,
        flags: options.rootflags.as_deref(),
    };
    mounts::execute(&mounts::plan_root(
        paths,
        &root,
        dev.as_ref().map(DevLayer::dirs),
    ))?;
    if let Some(dev) = &dev {
        ensure_writable(&paths.sysroot(), dev.dirs())?;
        if dev.dirs().transient {
            mark_volatile_root(paths, &source)?;
        }
    }
    log::info!(
        "root {} is {} ({fstype}), mounted {}",
        describe(&options.root),
        system_path(paths, &device),
        match &dev {
            None => "read-only",
            Some(DevLayer::Transient(_)) =>
                "read-only under a transient writable overlay (dev mode)",
            Some(DevLayer::Persistent(_)) =>
                "read-only under a writable overlay kept on the state partition (dev mode)",
        }
    );
    let base_dir = mounts::base_dir(paths, options.mode);
    let release = root_identity(&base_dir);
    clock.finish_stage("mount-root");

    let base = layers::Base {
        dir: &base_dir,
        device: &source,
        verified: verity.is_some(),
        release: release.as_ref(),
    };
    // After the root: signatures are checked with the keys the verified base pins, and a
    // config partition or the ESP is looked for once the disks are there.
    pinned_keys.read_keys_of(&base_dir, base.verified);
    let host = layers::load_host_config(paths, &options, base, &mut modules, &mut pinned_keys);
    clock.finish_stage("host-config");

    let layered = layers::merge(paths, &options, base, host, dev.as_ref(), &mut modules)?;
    switch_root::check_init(&paths.sysroot(), &options.init)?;
    // The self-test is long done by now; nothing may run into switch_root.
    pinned_keys.finish();
    clock.finish_stage("layers");

    let report_for = |clock: StageClock, memory: Option<MemoryReport>| {
        let (uptime_start_us, uptime_handoff_us, stages) = clock.into_parts();
        BootReport {
            version: 1,
            mode: options.mode,
            dev: dev.as_ref().map(|dev| dev.report(paths)),
            root: RootReport {
                spec: describe(&options.root),
                device: system_path(paths, &device),
                fstype: fstype.clone(),
                verified: verity.is_some(),
                image_id: image_field(release.as_ref(), "IMAGE_ID"),
                image_version: image_field(release.as_ref(), "IMAGE_VERSION"),
            },
            verity: verity.clone(),
            modules_loaded: modules.loaded_count(),
            extensions: layered.extensions.clone(),
            host_config: layered.host_config.clone(),
            init: options.init.display().to_string(),
            stages,
            uptime_start_us,
            uptime_handoff_us,
            memory,
        }
    };
    // Freeing the initramfs shows in /proc/meminfo only once the kernel folds its per-CPU
    // counters (up to a second later): the figure is taken before.
    let memory = memory_in_use(&paths.proc());
    if !settings.switch_root {
        let report = report_for(clock, memory);
        publish_report(&paths.xorbang_run(), &report)?;
        return Ok(report);
    }
    // From here on /bin/sh is the target root's: in production a failure must not hand
    // anyone a root shell from it (before this point the shell is the signed initramfs's).
    if options.mode == Mode::Production && *policy == FailurePolicy::Shell {
        *policy = FailurePolicy::Reboot;
    }
    switch_root::enter_new_root(paths)?;
    clock.finish_stage("switch-root");
    let report = report_for(clock, memory);
    publish_report(&Paths::default().xorbang_run(), &report)?;
    log::info!("starting {}", options.init.display());
    Err(switch_root::exec_init(&options.init, &options.init_args).into())
}

/// The root's os-release, read once it is mounted: the report names the build that booted,
/// and extensions are matched against it. It is also the boot's first file read from the
/// root, whatever the boot does next. Without one the boot goes on: only extensions need it.
fn root_identity(base: &Path) -> Option<OsRelease> {
    match extensions::base_os_release(base) {
        Ok(release) => {
            log::info!(
                "root image {} {} ({})",
                release.get_nonempty("IMAGE_ID").unwrap_or("(no IMAGE_ID)"),
                release
                    .get_nonempty("IMAGE_VERSION")
                    .unwrap_or("(no IMAGE_VERSION)"),
                release
                    .get_nonempty("PRETTY_NAME")
                    .unwrap_or("no PRETTY_NAME")
            );
            Some(release)
        }
        Err(error) => {
            log::warn!("root image: {}; it cannot be named", error_chain(&error));
            None
        }
    }
}

fn image_field(release: Option<&OsRelease>, key: &str) -> Option<String> {
    release?.get_nonempty(key).map(str::to_owned)
}

fn read_options(settings: &Settings, policy: &mut FailurePolicy) -> Result<BootOptions, BootError> {
    let text = match &settings.cmdline {
        Some(text) => text.clone(),
        None => {
            let path = settings.paths.proc_cmdline();
            std::fs::read_to_string(&path).map_err(|source| BootError::Cmdline { path, source })?
        }
    };
    let cmdline = Cmdline::parse(&text);
    *policy = options::failure_policy_or_default(&cmdline);
    let (options, warnings) = BootOptions::from_cmdline(&cmdline)?;
    if options.debug {
        log::set_max_level(log::LevelFilter::Debug);
    }
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(options)
}

fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// How long devices are waited for, and which disk is preferred.
struct DeviceWait {
    /// The one budget of the boot (`xorbang.timeout=`) and when it runs out.
    budget: Duration,
    deadline: Instant,
    /// The firmware's `LoaderDevicePartUUID`: the ESP the machine booted from.
    boot_esp: Option<Guid>,
}

/// Polls for block devices until all have appeared or the boot's one device budget runs
/// out; each poll reads every disk's partition table once for all of them. On a machine
/// whose firmware named the ESP it booted from, a partition on that ESP's disk wins over a
/// clone elsewhere, and a clone is taken only once the budget is spent.
fn wait_for_devices(
    paths: &Paths,
    wanted: &[(&'static str, &DeviceSpec)],
    wait: &DeviceWait,
) -> Result<Vec<PathBuf>, BootError> {
    let sys_block = paths.sys_class_block();
    let dev = paths.dev();
    let mut found: Vec<Option<PathBuf>> = vec![None; wanted.len()];
    loop {
        let past_deadline = Instant::now() >= wait.deadline;
        let mut scan = DeviceScan::new(&sys_block, &dev);
        for ((what, spec), slot) in wanted.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = look_for(&mut scan, what, spec, wait.boot_esp, past_deadline)?;
            }
        }
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if past_deadline {
            let (what, spec) = wanted
                .iter()
                .zip(&found)
                .find_map(|(wanted, slot)| slot.is_none().then_some(wanted))
                .unwrap_or(&wanted[0]);
            return Err(BootError::RootTimeout {
                what,
                spec: (*spec).clone(),
                secs: wait.budget.as_secs_f64(),
                seen: block_devices_seen(&sys_block),
            });
        }
        std::thread::sleep(DEVICE_POLL);
    }
}

/// One poll's look for `spec`: the node once it is there, `None` to keep waiting.
fn look_for(
    scan: &mut DeviceScan,
    what: &'static str,
    spec: &DeviceSpec,
    boot_esp: Option<Guid>,
    past_deadline: bool,
) -> Result<Option<PathBuf>, BootError> {
    let lookup_error = |source| BootError::RootLookup {
        spec: spec.clone(),
        source,
    };
    match scan.resolve_on_boot_disk(spec, boot_esp) {
        Ok(Lookup::Found { node, passed_over }) => {
            for clone in passed_over {
                log::warn!(
                    "{what} {spec}: {} also matches, on a disk the firmware did not boot \
                     from; passed over",
                    clone.display()
                );
            }
            Ok(Some(node))
        }
        Ok(Lookup::BootDiskUnseen { elsewhere }) if past_deadline => {
            let taken = match <[PathBuf; 1]>::try_from(elsewhere) {
                Ok([node]) => node,
                Err(nodes) => {
                    return Err(lookup_error(BlockError::Ambiguous {
                        spec: spec.clone(),
                        nodes,
                    }))
                }
            };
            log::warn!(
                "{what} {spec}: the disk of the ESP the firmware booted from never \
                 appeared; taking {}",
                taken.display()
            );
            Ok(Some(taken))
        }
        Ok(Lookup::Missing | Lookup::BootDiskUnseen { .. }) => Ok(None),
        // Two devices claiming the root is an attack or a mistake; waiting changes nothing.
        Err(source @ BlockError::Ambiguous { .. }) => Err(lookup_error(source)),
        // A device still being probed, or one we do not care about, may fail to read for a
        // moment: only the deadline ends the wait.
        Err(source) if past_deadline => Err(lookup_error(source)),
        Err(source) => {
            log::debug!(
                "looking for {what} {spec}: {}; still waiting",
                error_chain(&source)
            );
            Ok(None)
        }
    }
}

/// The image files of this boot: the loop devices they are attached to, and the downloads
/// that brought some of them.
#[derive(Debug, Default)]
struct ImageFiles {
    attached: Vec<AttachedLoop>,
    downloads: Downloads,
}

/// The device nodes for `wanted`: block devices waited for together within the budget, and
/// image files of the initramfs or downloaded, attached to loop devices.
fn locate<const N: usize>(
    paths: &Paths,
    modules: &mut ModuleLoader,
    held: &mut ImageFiles,
    wanted: [(&'static str, &DeviceSpec); N],
    wait: &DeviceWait,
) -> Result<[PathBuf; N], BootError> {
    let mut nodes: [Option<PathBuf>; N] = std::array::from_fn(|_| None);
    let mut block_devices = Vec::new();
    for (index, (what, spec)) in wanted.into_iter().enumerate() {
        let file = match spec {
            DeviceSpec::File(file) => {
                let inside = paths.root().join(file.strip_prefix("/").unwrap_or(file));
                if !inside.exists() {
                    return Err(BootError::NotInInitramfs { file: file.clone() });
                }
                inside
            }
            DeviceSpec::Url(url) => held.downloads.fetch(paths, url, wait.deadline)?,
            _ => {
                block_devices.push((index, (what, spec)));
                continue;
            }
        };
        let attached = attach_image_file(paths, modules, &file)?;
        nodes[index] = Some(attached.node.clone());
        held.attached.push(attached);
    }
    let waited: Vec<(&'static str, &DeviceSpec)> =
        block_devices.iter().map(|(_, wanted)| *wanted).collect();
    for ((index, _), node) in block_devices
        .iter()
        .zip(wait_for_devices(paths, &waited, wait)?)
    {
        nodes[*index] = Some(node);
    }
    // Every slot is filled: wait_for_devices returns one node per device asked for.
    Ok(nodes.map(Option::unwrap_or_default))
}

/// An image file (a PXE boot's root) on a read-only loop device, held until the root is
/// mapped and mounted.
fn attach_image_file(
    paths: &Paths,
    modules: &mut ModuleLoader,
    file: &Path,
) -> Result<AttachedLoop, BootError> {
    modules.ensure("loop")?;
    let device = loop_devices::attach_read_only(&paths.dev(), file)?;
    log::info!(
        "attached {} to {}",
        system_path(paths, file),
        system_path(paths, &device.node)
    );
    Ok(device)
}

/// How the command line named the root, for messages and the report.
fn describe(root: &RootChoice) -> String {
    match root {
        RootChoice::Plain(spec) => spec.to_string(),
        RootChoice::Verity(request) => format!("roothash={}", request.root_hash),
    }
}

/// Names under /sys/class/block, for the error that says what was there instead.
fn block_devices_seen(sys_block: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `rootfstype=` if given; otherwise the device must hold one of the read-only image formats
/// we build, SquashFS or EROFS.
fn root_fstype(options: &BootOptions, device: &Path) -> Result<String, BootError> {
    if let Some(fstype) = &options.rootfstype {
        return Ok(fstype.clone());
    }
    let probed = block_devices::probe_device(device).map_err(|source| BootError::Probe {
        device: device.to_owned(),
        source,
    })?;
    match probed {
        Some(info) if matches!(info.kind, FsKind::Squashfs | FsKind::Erofs) => {
            Ok(info.kind.to_string())
        }
        found => Err(BootError::NotRootImage {
            spec: describe(&options.root),
            device: device.to_owned(),
            found: found.map_or("no known filesystem".to_owned(), |info| {
                info.kind.to_string()
            }),
        }),
    }
}

/// The path the booted system knows the device by (`/dev/…`, not the test's dev dir).
fn system_path(paths: &Paths, device: &Path) -> String {
    match device.strip_prefix(paths.root()) {
        Ok(relative) => Path::new("/").join(relative).display().to_string(),
        Err(_) => device.display().to_string(),
    }
}

/// Sets the read-ahead of the block device the root is mounted from, before the mount (files
/// opened later take it from there). Whatever is read ahead through dm-verity is hashed,
/// needed or not.
fn set_readahead(paths: &Paths, device: &Path, readahead: Kib) -> Result<(), BootError> {
    let rdev = rustix::fs::stat(device)
        .map_err(|errno| BootError::RootDeviceNumber {
            device: device.to_owned(),
            source: errno.into(),
        })?
        .st_rdev;
    let knob = paths.sys().join(format!(
        "dev/block/{}:{}/queue/read_ahead_kb",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    ));
    std::fs::write(&knob, readahead.0.to_string()).map_err(|source| BootError::Write {
        path: knob.clone(),
        source,
    })?;
    log::info!(
        "root device {}: read-ahead {} KiB",
        system_path(paths, device),
        readahead.0
    );
    Ok(())
}

/// A dev overlay that could not create its work directory mounts read-only, with no more
/// than a kernel warning: a writable layer that is not writable is an error.
fn ensure_writable(sysroot: &Path, dev: &DevDirs) -> Result<(), BootError> {
    let read_only = rustix::fs::statvfs(sysroot)
        .map(|stat| stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
        .unwrap_or(true);
    match read_only {
        true => Err(BootError::OverlayReadOnly {
            upper: dev.upper(ROOT_OVERLAY),
        }),
        false => Ok(()),
    }
}

fn is_image_file(spec: &DeviceSpec) -> bool {
    matches!(spec, DeviceSpec::File(_) | DeviceSpec::Url(_))
}

/// The root's mapping is made, but systemd reads the same `systemd.verity_root_*=` keys
/// after switch_root and would wait for devices named like the image files (or URLs), which
/// never appear: its unit for the root is masked for this boot, in the runtime directory
/// that comes before its generators'.
fn mask_root_veritysetup(paths: &Paths) -> Result<(), BootError> {
    let dir = paths.run().join("systemd/system");
    let unit = dir.join("systemd-veritysetup@root.service");
    let write = |source| BootError::Write {
        path: unit.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(write)?;
    std::os::unix::fs::symlink("/dev/null", &unit).map_err(write)?;
    log::info!("verity: the root's image files are mapped; systemd-veritysetup@root.service is masked for this boot");
    Ok(())
}

/// systemd's convention for "/ is a volatile overlay": /run/systemd/volatile-root links to
/// the block device under it, so systemd-gpt-auto-generator still finds the root's disk.
/// It parses only `/dev/block/MAJOR:MINOR`, and wants a partition of the disk (the root
/// data partition, not the dm-verity mapping over it).
fn mark_volatile_root(paths: &Paths, partition: &Path) -> Result<(), BootError> {
    let dir = paths.run().join("systemd");
    let link = dir.join("volatile-root");
    let write = |source| BootError::Write {
        path: link.clone(),
        source,
    };
    let rdev = rustix::fs::stat(partition)
        .map_err(|errno| write(errno.into()))?
        .st_rdev;
    let target = format!(
        "/dev/block/{}:{}",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    );
    std::fs::create_dir_all(&dir).map_err(write)?;
    std::os::unix::fs::symlink(target, &link).map_err(write)
}

/// Total and used memory from `proc`/meminfo, for the report; a warning when it cannot be
/// read, since nothing else depends on it.
fn memory_in_use(proc: &Path) -> Option<MemoryReport> {
    let path = proc.join("meminfo");
    let counters = std::fs::read_to_string(&path)
        .map_err(|error| error.to_string())
        .and_then(|text| {
            let info = MemInfo::parse(&text).map_err(|error| error.to_string())?;
            Ok(MemoryReport {
                total_kib: info.kib("MemTotal").map_err(|error| error.to_string())?,
                used_kib: info.used().map_err(|error| error.to_string())?,
            })
        });
    match counters {
        Ok(memory) => Some(memory),
        Err(error) => {
            log::warn!("{}: {error}; the report leaves memory out", path.display());
            None
        }
    }
}

/// Writes boot.json and prints the same JSON as one console line.
fn publish_report(dir: &Path, report: &BootReport) -> Result<(), BootError> {
    let json = serde_json::to_string(report).map_err(|error| BootError::Write {
        path: dir.join("boot.json"),
        source: error.into(),
    })?;
    let path = dir.join("boot.json");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, format!("{json}\n")))
        .map_err(|source| BootError::Write { path, source })?;
    log::info!("boot-report {json}");
    Ok(())
}

//! Everything stacked over the base image before switch_root: the selected sysexts over
//! /usr and /opt, the confexts over /etc, and the host-config layer on top of /etc.
//!
//! Refusals follow one rule: a selected extension that cannot be verified, is not pinned,
//! or does not match the base is never merged; production then fails the boot (the failure
//! policy), dev mode says so and boots without it. A host config that cannot be read,
//! parsed or applied is never applied in part: the boot goes on without it, with one error
//! line and the reason in the boot report.

pub mod dev_layer;
pub mod extensions;
pub mod host_config_layer;
pub mod host_config_source;
pub mod host_config_trust;
pub mod state_partition;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::handoff::mounts::{self, LayerTree, Mount, MountError, MountOp};
use crate::kernel::module_loader::{KmodError, ModuleLoader};
use crate::options::{BootOptions, ExtensionRequest};
use crate::paths::Paths;
use dev_layer::DevLayer;
use extensions::{Activated, Activator, BaseError, Cause, ExtensionError};
use host_config_trust::{Accepted, PinnedKeys};
use rustix::mount::MountFlags;
use state_partition::StatePartition;
use xorbang_formats::boot_report::{ConfigTrust, Mode, Trust};
use xorbang_formats::boot_report::{ExtensionReport, HostConfigReport};
use xorbang_formats::dev_state::CommittedExtensions;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::host_config::{self, EntryKind};
use xorbang_formats::os_release::{ExtensionKind, OsRelease};

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error(transparent)]
    Extension(#[from] ExtensionError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("kernel modules")]
    Modules(#[from] KmodError),
}

/// The host config this boot found: the one accepted, else the first refusal (for the
/// report).
#[derive(Debug)]
pub struct HostConfigState {
    pub accepted: Option<Accepted>,
    pub refused: Option<HostConfigReport>,
}

/// Finds the host config to apply, trying the sources in order of trust until one is
/// accepted (`base` is the mounted base image, whose device tells which disk's ESP to look
/// at; `keys` are the keys it pins, being read). Never fails the boot: a bad config is
/// reported and left out.
pub fn load_host_config(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    modules: &mut ModuleLoader,
    keys: &mut PinnedKeys,
) -> HostConfigState {
    let policy = host_config_trust::Policy {
        mode: options.mode,
        minimum: options.config_trust,
    };
    let mut refused = None;
    let accepted =
        host_config_source::search(paths, &options.config, base.device, modules, |candidate| {
            let (origin, trust) = (candidate.origin.clone(), candidate.trust);
            match host_config_trust::judge(candidate, keys, policy) {
                Ok(accepted) => ControlFlow::Break(accepted),
                Err(reason) => {
                    log::error!("host config {origin}: {reason}; trying the next source");
                    refused.get_or_insert(refused_report(&origin, Some(trust), None, reason));
                    ControlFlow::Continue(())
                }
            }
        });
    if let Some(accepted) = &accepted {
        let signed = match (&accepted.signed_by, accepted.signature_check) {
            (Some(key), Some(took)) => format!(
                " by {key}; signature checked in {:.1} ms",
                took.as_secs_f64() * 1000.0
            ),
            _ => String::new(),
        };
        log::info!(
            "host config from {} ({}{signed})",
            accepted.origin,
            accepted.trust
        );
    }
    HostConfigState { accepted, refused }
}

fn refused_report(
    origin: &str,
    trust: Option<ConfigTrust>,
    signed_by: Option<String>,
    error: String,
) -> HostConfigReport {
    HostConfigReport {
        origin: origin.to_owned(),
        trust,
        signed_by,
        applied: false,
        error: Some(error),
        files: Vec::new(),
    }
}

/// What the layers stage did, for the boot report.
#[derive(Debug, Default)]
pub struct LayersOutcome {
    pub extensions: Vec<ExtensionReport>,
    pub host_config: Option<HostConfigReport>,
}

/// Where the base image is and what it came from.
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    /// Where the base image is mounted: the new root itself in production,
    /// /run/xorbang/base in dev mode.
    pub dir: &'a Path,
    /// The block device the root image is read from (the verity data device): the state
    /// partition is looked for on its disk.
    pub device: &'a Path,
    /// Whether dm-verity covers it: only then do its extension pins and keys count.
    pub verified: bool,
    /// Its os-release as read when it was mounted; `None` when that failed (read again, for
    /// the precise error, only if an extension needs it).
    pub release: Option<&'a OsRelease>,
}

/// Merges the selected extensions and the host config over the base image; in dev mode each
/// hierarchy gets its writable overlay over `dev`'s upper, layers or not.
pub fn merge(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    host: HostConfigState,
    dev: Option<&DevLayer>,
    modules: &mut ModuleLoader,
) -> Result<LayersOutcome, LayersError> {
    let selected = activate_selected(paths, options, base, host.accepted.as_ref(), dev, modules)?;
    let (sysexts, confexts) = (selected.sysexts, selected.confexts);
    // The config's extensions are part of the config: one that cannot be merged refuses it.
    let (accepted, refused) = match (host.accepted, selected.config_refusal) {
        (Some(accepted), Some(error)) => {
            let reason = error_chain(&error);
            log::error!(
                "host config {}: {reason}; booting without it",
                accepted.origin
            );
            let report = refused_report(
                &accepted.origin,
                Some(accepted.trust),
                accepted.signed_by,
                reason,
            );
            (None, Some(report))
        }
        (accepted, _) => (accepted, host.refused),
    };
    let base = base.dir;
    let trees = |activated: &[Activated]| -> Vec<LayerTree> {
        activated
            .iter()
            .map(|extension| LayerTree {
                root: extension.mount.clone(),
                hierarchies: extension.hierarchies.clone(),
            })
            .collect()
    };
    if !sysexts.is_empty() || !confexts.is_empty() || accepted.is_some() {
        modules.ensure("overlay")?;
    }
    let dev_dirs = dev.map(DevLayer::dirs);
    // Sysexts first: the host config's checks look at the merged /usr (a timezone may come
    // from an extension).
    let system = present_in(base, &["usr", "opt"]);
    mounts::execute(&mounts::plan_layers(
        paths,
        base,
        dev_dirs.map(|dirs| (dirs, system.as_slice())),
        &trees(&sysexts),
    ))?;
    let mut etc_layers = trees(&confexts);
    let host_config = match accepted {
        Some(accepted) => {
            let (report, layer) = apply_host_config(paths, &accepted);
            etc_layers.extend(layer);
            Some(report)
        }
        None => refused,
    };
    let config = present_in(base, &["etc"]);
    mounts::execute(&mounts::plan_layers(
        paths,
        base,
        dev_dirs.map(|dirs| (dirs, config.as_slice())),
        &etc_layers,
    ))?;
    let extensions = sysexts
        .iter()
        .chain(&confexts)
        .map(|extension| ExtensionReport {
            kind: extension.kind.to_string(),
            name: extension.name.clone(),
            image: extension.image.clone(),
            root_hash: extension.root_hash.to_string(),
            trust: extension.trust,
        })
        .collect();
    Ok(LayersOutcome {
        extensions,
        host_config,
    })
}

/// The hierarchies the base image has (a dev overlay needs a directory to cover).
fn present_in(base: &Path, hierarchies: &[&'static str]) -> Vec<&'static str> {
    hierarchies
        .iter()
        .copied()
        .filter(|hierarchy| base.join(hierarchy).is_dir())
        .collect()
}

/// The extensions of one kind to merge, and whether the host config (not the command line)
/// selected them.
struct Wanted {
    kind: ExtensionKind,
    requests: Vec<ExtensionRequest>,
    from_config: bool,
}

impl Wanted {
    /// The command line's selection, else the host config's.
    fn of(
        kind: ExtensionKind,
        cmdline: &Option<Vec<ExtensionRequest>>,
        from_config: Option<&[String]>,
    ) -> Self {
        let (requests, from_config) = match (cmdline, from_config) {
            (Some(requests), _) => (requests.clone(), false),
            (None, Some(names)) => (
                names
                    .iter()
                    .map(|name| ExtensionRequest {
                        name: name.clone(),
                        pin: None,
                    })
                    .collect(),
                true,
            ),
            (None, None) => (Vec::new(), false),
        };
        Self {
            kind,
            requests,
            from_config,
        }
    }
}

impl Wanted {
    /// Adds the extensions committed over this base that nothing selected yet: dev mode
    /// merges what `xorbang-commit-overlay` made (unpinned, with dev mode's warning).
    fn add_committed(&mut self, committed: &CommittedExtensions) {
        for name in committed.names(self.kind) {
            if self.requests.iter().all(|request| request.name != name) {
                log::info!(
                    "dev mode: selecting {} {name}, committed over this base",
                    self.kind
                );
                self.requests.push(ExtensionRequest {
                    name: name.to_owned(),
                    pin: None,
                });
            }
        }
    }
}

/// The extensions merged; and when one the host config selected could not be, why (its
/// other extensions are then released too).
#[derive(Default)]
struct Selected {
    sysexts: Vec<Activated>,
    confexts: Vec<Activated>,
    config_refusal: Option<ExtensionError>,
}

fn activate_selected(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    host: Option<&Accepted>,
    dev: Option<&DevLayer>,
    modules: &mut ModuleLoader,
) -> Result<Selected, LayersError> {
    let config = host.map(|accepted| &accepted.config);
    let mut wanted = [
        Wanted::of(
            ExtensionKind::Sysext,
            &options.sysext,
            config.map(|c| c.sysext.as_slice()),
        ),
        Wanted::of(
            ExtensionKind::Confext,
            &options.confext,
            config.map(|c| c.confext.as_slice()),
        ),
    ];
    if let Some(committed) = dev.and_then(DevLayer::committed) {
        for wanted in &mut wanted {
            wanted.add_committed(committed);
        }
    }
    if wanted.iter().all(|wanted| wanted.requests.is_empty()) {
        return Ok(Selected::default());
    }
    for module in ["loop", "dm_verity", "squashfs"] {
        modules.ensure(module)?;
    }
    // Persistent dev mode has the state partition mounted read-write already, for good.
    if let Some(state) = dev.and_then(DevLayer::state) {
        return activate_from(paths, options, base, Some(state), wanted);
    }
    let state = state_partition::mount_read_only(paths, base.device, modules);
    let merged = activate_from(paths, options, base, state.as_ref(), wanted);
    // Images from it were copied into memory: nothing holds the partition any more.
    if let Some(state) = &state {
        state_partition::release(state);
    }
    merged
}

fn activate_from(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    state: Option<&StatePartition>,
    wanted: [Wanted; 2],
) -> Result<Selected, LayersError> {
    let Base {
        dir: base,
        verified,
        release,
        ..
    } = base;
    let read_again;
    let base_release = match release {
        Some(release) => release,
        None => {
            read_again = extensions::base_os_release(base)?;
            &read_again
        }
    };
    let pins = if verified {
        extensions::base_pins(base)?
    } else {
        log::warn!("the base image is not verified: its extension manifest pins nothing");
        Default::default()
    };
    let roots = extensions::SearchRoots {
        initramfs: paths.root(),
        base,
        state: state.map(|state| state.mount.as_path()),
    };
    let mount_dir = paths.xorbang_run().join("extensions");
    let copy_dir = paths.xorbang_run().join("extension-images");
    let dev_dir = paths.dev();
    let activator = Activator {
        dev_dir: &dev_dir,
        mount_dir: &mount_dir,
        base,
        base_release,
        copy_dir: &copy_dir,
    };
    let mut config_refusal = None;
    let mut merged: Vec<Vec<(Activated, bool)>> = Vec::new();
    for wanted in wanted {
        let mut activated = Vec::new();
        let candidates = extensions::discover(wanted.kind, &roots)?;
        for request in &wanted.requests {
            if wanted.from_config && config_refusal.is_some() {
                break;
            }
            match activate_one(
                &activator,
                wanted.kind,
                request,
                &candidates,
                &pins,
                options.mode,
            ) {
                Ok(extension) => activated.push((extension, wanted.from_config)),
                Err(error) if options.mode == Mode::Dev => {
                    log::error!(
                        "{}; not merged (dev mode boots on without it)",
                        error_chain(&error)
                    );
                }
                Err(error) if wanted.from_config => config_refusal = Some(error),
                Err(error) => return Err(error.into()),
            }
        }
        activated.sort_by(|(a, _), (b, _)| extensions::version_order(&a.name, &b.name));
        merged.push(activated);
    }
    let keep = |list: Vec<(Activated, bool)>| -> Vec<Activated> {
        list.into_iter()
            .filter_map(|(extension, from_config)| {
                if from_config && config_refusal.is_some() {
                    activator.release(&extension);
                    None
                } else {
                    Some(extension)
                }
            })
            .collect()
    };
    let confexts = keep(merged.pop().unwrap_or_default());
    let sysexts = keep(merged.pop().unwrap_or_default());
    Ok(Selected {
        sysexts,
        confexts,
        config_refusal,
    })
}

fn activate_one(
    activator: &Activator,
    kind: ExtensionKind,
    request: &ExtensionRequest,
    candidates: &std::collections::BTreeMap<String, extensions::Candidate>,
    pins: &xorbang_formats::extension_pins::ExtensionPins,
    mode: Mode,
) -> Result<Activated, ExtensionError> {
    let refuse = |image: Option<String>, cause: Cause| ExtensionError {
        kind,
        name: request.name.clone(),
        image,
        cause: Box::new(cause),
    };
    let Some(candidate) = candidates.get(&request.name) else {
        let searched = extensions::search_dirs(kind)
            .iter()
            .map(|(place, dir)| place.show(dir))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(refuse(None, Cause::NotFound { searched }));
    };
    let (pin, trust) = extensions::pin_for(kind, request, pins)
        .map_err(|cause| refuse(Some(candidate.shown.clone()), cause))?;
    if trust == Trust::Unpinned {
        if mode == Mode::Production {
            return Err(refuse(Some(candidate.shown.clone()), Cause::Unpinned));
        }
        log::warn!(
            "{kind} {} ({}) is not pinned by the base image or the command line; merging it \
             only because this is dev mode",
            request.name,
            candidate.shown
        );
    }
    let extension = activator.activate(kind, candidate, pin, trust)?;
    log::info!(
        "merging {kind} {} from {} (root hash {}, {})",
        extension.name,
        extension.image,
        extension.root_hash,
        match extension.trust {
            Trust::BaseManifest => "pinned by the base image",
            Trust::Cmdline => "pinned on the command line",
            Trust::Unpinned => "unpinned",
        }
    );
    Ok(extension)
}

/// Writes the generated /etc layer; on any problem nothing of it is used.
fn apply_host_config(paths: &Paths, accepted: &Accepted) -> (HostConfigReport, Option<LayerTree>) {
    let (origin, config) = (accepted.origin.as_str(), &accepted.config);
    let root = paths.xorbang_run().join("host-config");
    let entries = config.etc_layer();
    let files: Vec<String> = entries.iter().map(|entry| entry.path.clone()).collect();
    let sysroot = paths.sysroot();
    let result = check_links(&sysroot, &entries)
        .and_then(|()| check_fits_the_image(&sysroot, &entries))
        .and_then(|()| write_sealed_layer(&root, &entries, &sysroot));
    match result {
        Ok(()) => {
            log::info!(
                "host config from {origin} applied as /etc layer: {}",
                summary(&files)
            );
            let report = HostConfigReport {
                origin: origin.to_owned(),
                trust: Some(accepted.trust),
                signed_by: accepted.signed_by.clone(),
                applied: true,
                error: None,
                files,
            };
            let layer = LayerTree {
                root,
                hierarchies: vec!["etc"],
            };
            (report, Some(layer))
        }
        Err(error) => {
            log::error!("host config {origin}: {error}; booting without it");
            let report = refused_report(
                origin,
                Some(accepted.trust),
                accepted.signed_by.clone(),
                error,
            );
            (report, None)
        }
    }
}

/// At most this many file names in the log line; the report has them all.
const SUMMARY_FILES: usize = 8;

fn summary(files: &[String]) -> String {
    match files.len() {
        count if count > SUMMARY_FILES => format!(
            "{} and {} more",
            files[..SUMMARY_FILES].join(", "),
            count - SUMMARY_FILES
        ),
        _ => files.join(", "),
    }
}

/// Writes the layer into a tmpfs of its own and remounts that read-only, so nothing after
/// the boot (the writable /run included) can change what the config put into /etc. On
/// failure nothing of it stays mounted.
fn write_sealed_layer(
    root: &Path,
    entries: &[host_config::EtcEntry],
    sysroot: &Path,
) -> Result<(), String> {
    let mut tmpfs = Mount::new_tmpfs(root.to_owned(), "mode=0755");
    tmpfs.restricted = true;
    mounts::execute(&[MountOp::Mkdir(root.to_owned()), MountOp::Mount(tmpfs)])
        .map_err(|error| error_chain(&error))?;
    let etc = root.join("etc");
    let written = host_config_layer::write_layer(entries, &etc)
        .map_err(|error| error_chain(&error))
        .and_then(|()| {
            match_directories(&etc, &sysroot.join("etc"), entries).map_err(|error| {
                format!(
                    "cannot copy the image's directory modes: {}",
                    error_chain(&error)
                )
            })
        })
        .and_then(|()| {
            let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
            rustix::mount::mount_remount(root, flags, "")
                .map_err(|errno| format!("cannot seal {} read-only: {errno}", root.display()))
        });
    if written.is_err() {
        let removed = rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH)
            .map_err(std::io::Error::from)
            .and_then(|()| std::fs::remove_dir(root));
        if let Err(error) = removed {
            log::warn!(
                "cannot remove the refused layer {}: {}",
                root.display(),
                error_chain(&error)
            );
        }
    }
    written
}

/// A file of the config may not replace a directory of the image, nor sit below one of the
/// image's symlinks (it would land wherever the link points, or hide what is below it).
fn check_fits_the_image(sysroot: &Path, entries: &[host_config::EtcEntry]) -> Result<(), String> {
    let etc = sysroot.join("etc");
    for entry in entries {
        let mut path = etc.clone();
        let parts: Vec<&str> = entry.path.split('/').collect();
        for (index, part) in parts.iter().enumerate() {
            path.push(part);
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                break;
            };
            let last = index + 1 == parts.len();
            if metadata.file_type().is_symlink() && !last {
                return Err(format!(
                    "/etc/{} would sit below /etc/{}, a symlink in the image",
                    entry.path,
                    parts[..=index].join("/")
                ));
            }
            if metadata.is_dir() && last {
                return Err(format!(
                    "/etc/{} would replace a directory of the image",
                    entry.path
                ));
            }
        }
    }
    Ok(())
}

/// OverlayFS shows a merged directory with the topmost layer's mode and owner: the layer's
/// directories take those of the image's directory of the same name (/etc/sudoers.d stays
/// 0750), so adding a file never loosens its directory.
fn match_directories(
    layer_etc: &Path,
    image_etc: &Path,
    entries: &[host_config::EtcEntry],
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut directories: Vec<&Path> = entries
        .iter()
        .flat_map(|entry| Path::new(&entry.path).ancestors().skip(1))
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    directories.sort();
    directories.dedup();
    directories.insert(0, Path::new(""));
    for dir in directories {
        let Ok(image) = std::fs::metadata(image_etc.join(dir)) else {
            continue;
        };
        if !image.is_dir() {
            continue;
        }
        let ours = layer_etc.join(dir);
        std::os::unix::fs::chown(&ours, Some(image.uid()), Some(image.gid()))?;
        std::fs::set_permissions(&ours, image.permissions())?;
    }
    Ok(())
}

/// A symlink the layer adds (the timezone's /etc/localtime) must point at something the
/// new root has: a link to nowhere would make the config half-applied.
fn check_links(sysroot: &Path, entries: &[host_config::EtcEntry]) -> Result<(), String> {
    for entry in entries {
        if let EntryKind::Symlink { target } = &entry.kind {
            let link_dir = Path::new("etc").join(&entry.path);
            let resolved = resolve_relative(link_dir.parent().unwrap_or(Path::new("")), target);
            if !sysroot.join(&resolved).exists() {
                return Err(format!(
                    "/etc/{} would point to /{}, which the root image does not have",
                    entry.path,
                    resolved.display()
                ));
            }
        }
    }
    Ok(())
}

/// `dir/target` with `..` taken lexically (targets are generated, never absolute).
fn resolve_relative(dir: &Path, target: &str) -> PathBuf {
    let mut parts: Vec<&str> = dir.iter().filter_map(|part| part.to_str()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_from_etc() {
        assert_eq!(
            resolve_relative(Path::new("etc"), "../usr/share/zoneinfo/Europe/Berlin"),
            PathBuf::from("usr/share/zoneinfo/Europe/Berlin")
        );
    }

    #[test]
    fn layer_directories_keep_the_image_modes() {
        use std::os::unix::fs::PermissionsExt;
        let image = tempfile::tempdir().expect("tempdir");
        let layer = tempfile::tempdir().expect("tempdir");
        let sudoers = image.path().join("sudoers.d");
        std::fs::create_dir(&sudoers).expect("mkdir");
        std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let config = host_config::parse(
            "version = 1\n[[files]]\npath = \"/etc/sudoers.d/ops\"\nmode = \"0440\"\ncontent = \"x\"\n\
             [[files]]\npath = \"/etc/new/file\"\ncontent = \"y\"\n",
        )
        .expect("valid");
        let entries = config.etc_layer();
        let etc = layer.path().join("etc");
        host_config_layer::write_layer(&entries, &etc).expect("written");
        match_directories(&etc, image.path(), &entries).expect("matched");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&etc.join("sudoers.d")), 0o750);
        assert_eq!(mode(&etc.join("sudoers.d/ops")), 0o440);
        assert_eq!(
            mode(&etc.join("new")),
            0o755,
            "a directory the image lacks keeps 0755"
        );
        assert_eq!(mode(&etc), mode(image.path()));
    }

    #[test]
    fn the_command_line_selection_overrides_host_config() {
        let named = vec!["gui".to_owned()];
        let cmdline = Some(Vec::new());
        let kind = ExtensionKind::Sysext;
        let overridden = Wanted::of(kind, &cmdline, Some(&named));
        assert!(overridden.requests.is_empty() && !overridden.from_config);
        let from_config = Wanted::of(kind, &None, Some(&named));
        assert_eq!(from_config.requests[0].name, "gui");
        assert!(from_config.from_config);
        assert!(Wanted::of(kind, &None, None).requests.is_empty());
    }
}

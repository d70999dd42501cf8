//! Everything stacked over the base image before switch_root: the selected sysexts over
//! /usr and /opt, the confexts over /etc, and the host-config layer on top of /etc.
//!
//! Refusals follow one rule: a selected extension that cannot be verified, is not pinned,
//! or does not match the base is never merged; production then fails the boot (the failure
//! policy), dev mode says so and boots without it. A host config that cannot be read,
//! parsed or applied is never applied in part: the boot goes on without it, with one error
//! line and the reason in the boot report.

pub mod extensions;
pub mod host_config_layer;
pub mod host_config_source;
pub mod state_partition;

use std::path::{Path, PathBuf};

use crate::handoff::mounts::{self, LayerTree, MountError};
use crate::kernel::module_loader::{KmodError, ModuleLoader};
use crate::options::{BootOptions, ExtensionRequest};
use crate::paths::Paths;
use extensions::{Activated, Activator, BaseError, Cause, ExtensionError};
use host_config_source::ConfigText;
use state_partition::StatePartition;
use xorbang_formats::boot_report::{ExtensionReport, HostConfigReport};
use xorbang_formats::boot_report::{Mode, Trust};
use xorbang_formats::host_config::{self, EntryKind, HostConfig};
use xorbang_formats::os_release::ExtensionKind;

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error(transparent)]
    Extension(#[from] ExtensionError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("kernel modules: {0}")]
    Modules(#[from] KmodError),
}

/// The host config as found at the start of the boot.
#[derive(Debug)]
pub struct HostConfigState {
    pub config: Option<(String, HostConfig)>,
    pub report: Option<HostConfigReport>,
}

/// Finds and parses the host config (`root_device` tells which disk's ESP to look at).
/// Never fails the boot: a bad config is reported and left out.
pub fn load_host_config(
    paths: &Paths,
    options: &BootOptions,
    root_device: &Path,
    modules: &mut ModuleLoader,
) -> HostConfigState {
    let text = match host_config_source::load(paths, &options.config, root_device, modules) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return HostConfigState {
                config: None,
                report: None,
            }
        }
        Err(error) => {
            log::error!("{error}; booting without host config");
            return HostConfigState {
                config: None,
                report: Some(refused_report("unknown", error.to_string())),
            };
        }
    };
    let ConfigText { origin, text } = text;
    match host_config::parse(&text) {
        Ok(config) => {
            log::info!("host config from {origin}");
            HostConfigState {
                config: Some((origin, config)),
                report: None,
            }
        }
        Err(error) => {
            log::error!("host config {origin}: {error}; booting without it");
            HostConfigState {
                config: None,
                report: Some(refused_report(&origin, error.to_string())),
            }
        }
    }
}

fn refused_report(origin: &str, error: String) -> HostConfigReport {
    HostConfigReport {
        origin: origin.to_owned(),
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
}

/// Merges the selected extensions and the host config over the base image.
pub fn merge(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    host: HostConfigState,
    modules: &mut ModuleLoader,
) -> Result<LayersOutcome, LayersError> {
    let (sysexts, confexts) = activate_selected(paths, options, base, &host, modules)?;
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
    if !sysexts.is_empty() || !confexts.is_empty() || host.config.is_some() {
        modules.ensure("overlay")?;
    }
    // Sysexts first: the host config's checks look at the merged /usr (a timezone may come
    // from an extension).
    mounts::execute(&mounts::plan_layers(
        paths,
        base,
        options.mode,
        &trees(&sysexts),
    ))?;
    let mut etc_layers = trees(&confexts);
    let host_config = match host.config {
        Some((origin, config)) => {
            let (report, layer) = apply_host_config(paths, &origin, &config);
            etc_layers.extend(layer);
            Some(report)
        }
        None => host.report,
    };
    mounts::execute(&mounts::plan_layers(paths, base, options.mode, &etc_layers))?;
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

/// The extensions the command line selects, else those the host config selects.
fn requests(
    cmdline: &Option<Vec<ExtensionRequest>>,
    from_config: Option<&[String]>,
) -> Vec<ExtensionRequest> {
    match (cmdline, from_config) {
        (Some(requests), _) => requests.clone(),
        (None, Some(names)) => names
            .iter()
            .map(|name| ExtensionRequest {
                name: name.clone(),
                pin: None,
            })
            .collect(),
        (None, None) => Vec::new(),
    }
}

fn activate_selected(
    paths: &Paths,
    options: &BootOptions,
    base: Base,
    host: &HostConfigState,
    modules: &mut ModuleLoader,
) -> Result<(Vec<Activated>, Vec<Activated>), LayersError> {
    let config = host.config.as_ref().map(|(_, config)| config);
    let wanted = [
        (
            ExtensionKind::Sysext,
            requests(&options.sysext, config.map(|c| c.sysext.as_slice())),
        ),
        (
            ExtensionKind::Confext,
            requests(&options.confext, config.map(|c| c.confext.as_slice())),
        ),
    ];
    if wanted.iter().all(|(_, requests)| requests.is_empty()) {
        return Ok((Vec::new(), Vec::new()));
    }
    for module in ["loop", "dm_verity", "squashfs"] {
        modules.ensure(module)?;
    }
    let state = state_partition::mount_read_only(paths, base.device, modules);
    let merged = activate_from(paths, options, base.dir, state.as_ref(), wanted);
    if let Some(state) = &state {
        let used = merged.as_ref().is_ok_and(|(sysexts, confexts)| {
            sysexts
                .iter()
                .chain(confexts)
                .any(|e| e.place == extensions::Place::State)
        });
        if !used {
            state_partition::release(state);
        }
    }
    merged
}

fn activate_from(
    paths: &Paths,
    options: &BootOptions,
    base: &Path,
    state: Option<&StatePartition>,
    wanted: [(ExtensionKind, Vec<ExtensionRequest>); 2],
) -> Result<(Vec<Activated>, Vec<Activated>), LayersError> {
    let base_release = extensions::base_os_release(base)?;
    let pins = extensions::base_pins(base)?;
    let roots = extensions::SearchRoots {
        initramfs: paths.root(),
        base,
        state: state.map(|state| state.mount.as_path()),
    };
    let mount_dir = paths.xorbang_run().join("extensions");
    let dev_dir = paths.dev();
    let activator = Activator {
        dev_dir: &dev_dir,
        mount_dir: &mount_dir,
        base,
        base_release: &base_release,
    };
    let mut merged = Vec::new();
    for (kind, requests) in wanted {
        let mut activated = Vec::new();
        let candidates = extensions::discover(kind, &roots)?;
        for request in &requests {
            match activate_one(&activator, kind, request, &candidates, &pins, options.mode) {
                Ok(extension) => activated.push(extension),
                Err(error) if options.mode == Mode::Dev => {
                    log::error!("{error}; not merged (dev mode boots on without it)");
                }
                Err(error) => return Err(error.into()),
            }
        }
        activated.sort_by(|a, b| extensions::version_order(&a.name, &b.name));
        merged.push(activated);
    }
    let confexts = merged.pop().unwrap_or_default();
    let sysexts = merged.pop().unwrap_or_default();
    Ok((sysexts, confexts))
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
fn apply_host_config(
    paths: &Paths,
    origin: &str,
    config: &HostConfig,
) -> (HostConfigReport, Option<LayerTree>) {
    let root = paths.xorbang_run().join("host-config");
    let entries = config.etc_layer();
    let files: Vec<String> = entries.iter().map(|entry| entry.path.clone()).collect();
    let etc = root.join("etc");
    let result = check_links(&paths.sysroot(), &entries)
        .and_then(|()| {
            host_config_layer::write_layer(&entries, &etc).map_err(|error| error.to_string())
        })
        .and_then(|()| {
            match_directories(&etc, &paths.sysroot().join("etc"), &entries)
                .map_err(|error| error.to_string())
        });
    match result {
        Ok(()) => {
            log::info!(
                "host config from {origin} applied as /etc layer: {}",
                files.join(", ")
            );
            let report = HostConfigReport {
                origin: origin.to_owned(),
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
            if let Err(cleanup) = remove_partial_layer(&root) {
                log::warn!("cannot remove {}: {cleanup}", root.display());
            }
            (refused_report(origin, error), None)
        }
    }
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

fn remove_partial_layer(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
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
        assert!(requests(&cmdline, Some(&named)).is_empty());
        assert_eq!(requests(&None, Some(&named))[0].name, "gui");
        assert!(requests(&None, None).is_empty());
    }
}

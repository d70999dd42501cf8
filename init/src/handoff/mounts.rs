//! The mount stack: planned as plain data (so the plan is tested without privileges), then
//! carried out by a thin executor.

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::paths::Paths;
use xorbang_formats::boot_report::Mode;

/// One step of a mount plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// `mkdir -p`, mode 0755.
    Mkdir(PathBuf),
    Mount(Mount),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub read_only: bool,
    /// `nosuid,nodev`: for the API filesystems that carry no programs or device nodes.
    pub restricted: bool,
    /// `noexec,nosymfollow` on top: for storage nothing verified, read only for its files.
    pub untrusted: bool,
    pub data: Option<String>,
}

impl Mount {
    fn new(source: &str, target: PathBuf, fstype: &str) -> Self {
        Self {
            source: source.to_owned(),
            target,
            fstype: fstype.to_owned(),
            read_only: false,
            restricted: false,
            untrusted: false,
            data: None,
        }
    }

    /// Storage neither Secure Boot nor dm-verity covers (a config partition, the ESP, the
    /// state partition), mounted only to read files from it:
    /// `ro,nosuid,nodev,noexec,nosymfollow`, and for ext4 `norecovery`, so a read-only mount
    /// never replays a journal onto the disk.
    pub fn untrusted(source: &str, target: PathBuf, fstype: &str) -> Self {
        Self {
            restricted: true,
            untrusted: true,
            data: (fstype == "ext4").then(|| "norecovery".to_owned()),
            ..Self::read_only(source, target, fstype)
        }
    }

    /// Storage the system writes but runs nothing from directly (the state partition under
    /// persistent dev mode's overlays): `nosuid,nodev`.
    pub fn writable_storage(source: &str, target: PathBuf, fstype: &str) -> Self {
        Self {
            restricted: true,
            ..Self::new(source, target, fstype)
        }
    }

    /// A tmpfs at `target` with the given options (`mode=0755`).
    pub fn new_tmpfs(target: PathBuf, options: &str) -> Self {
        Self {
            data: Some(options.to_owned()),
            ..Self::new("tmpfs", target, "tmpfs")
        }
    }

    /// A file system mounted read-only.
    pub fn read_only(source: &str, target: PathBuf, fstype: &str) -> Self {
        Self {
            read_only: true,
            ..Self::new(source, target, fstype)
        }
    }

    fn flags(&self) -> MountFlags {
        let mut flags = MountFlags::empty();
        if self.read_only {
            flags |= MountFlags::RDONLY;
        }
        if self.restricted {
            flags |= MountFlags::NOSUID | MountFlags::NODEV;
        }
        if self.untrusted {
            flags |= MountFlags::NOEXEC | MountFlags::NOSYMFOLLOW;
        }
        flags
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut options = Vec::new();
        if self.read_only {
            options.push("ro");
        }
        if self.restricted {
            options.extend(["nosuid", "nodev"]);
        }
        if self.untrusted {
            options.extend(["noexec", "nosymfollow"]);
        }
        if let Some(data) = &self.data {
            options.push(data);
        }
        write!(f, "mount -t {}", self.fstype)?;
        if !options.is_empty() {
            write!(f, " -o {}", options.join(","))?;
        }
        write!(f, " {} {}", self.source, self.target.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create directory {path}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{mount} failed")]
    Mount {
        mount: Box<Mount>,
        source: rustix::io::Errno,
    },
}

/// /proc, /sys, /dev and /run: what everything after needs.
pub fn plan_api_filesystems(paths: &Paths) -> Vec<MountOp> {
    let api = [
        ("proc", paths.proc(), "proc", None),
        ("sysfs", paths.sys(), "sysfs", None),
        ("devtmpfs", paths.dev(), "devtmpfs", Some("mode=0755")),
        ("tmpfs", paths.run(), "tmpfs", Some("mode=0755")),
    ];
    let mut plan = Vec::new();
    for (source, target, fstype, data) in api {
        plan.push(MountOp::Mkdir(target.clone()));
        let mut mount = Mount::new(source, target, fstype);
        // /dev must allow device nodes; the others carry neither nodes nor setuid programs.
        mount.restricted = fstype != "devtmpfs";
        mount.data = data.map(str::to_owned);
        plan.push(MountOp::Mount(mount));
    }
    plan
}

/// The root filesystem as the system will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSource<'a> {
    pub device: &'a Path,
    pub fstype: &'a str,
    pub flags: Option<&'a str>,
}

/// Where dev mode's overlays keep their upper and work directories: `DIR/NAME/upper` and
/// `DIR/NAME/work` for each overlay, NAME being [`ROOT_OVERLAY`] or the hierarchy it covers
/// (`usr`, `opt`, `etc`). Upper and work of one overlay share a file system, as the kernel
/// requires, and no upper lies inside another, so each overlay owns its upper alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevDirs {
    pub dir: PathBuf,
    /// In a tmpfs the plan mounts (`xorbang.dev=1`), rather than on the state partition.
    pub transient: bool,
}

/// The name of the overlay at `/` among [`DevDirs`]' overlays.
pub const ROOT_OVERLAY: &str = "root";

/// Options that keep an upper valid when its lower changes between boots (a new extension
/// set, offline edits): no redirects, inode index, metacopy or xino, whose records tie an
/// upper to one exact lower (see "Changes to underlying filesystems" in the kernel's
/// overlayfs documentation). Spelled out, so module parameters cannot turn them on.
pub const PORTABLE_UPPER_OPTIONS: &str =
    "redirect_dir=off,index=off,metacopy=off,xino=off,nfs_export=off";

impl DevDirs {
    /// The in-memory directories of `xorbang.dev=1`, under /run/xorbang so that the booted
    /// system can still look at what it changed.
    pub fn transient(paths: &Paths) -> Self {
        Self {
            dir: paths.xorbang_run().join("overlay"),
            transient: true,
        }
    }

    pub fn upper(&self, overlay: &str) -> PathBuf {
        self.dir.join(overlay).join("upper")
    }

    pub fn work(&self, overlay: &str) -> PathBuf {
        self.dir.join(overlay).join("work")
    }

    /// The overlay options with `lowers` (top first) under this overlay's upper.
    fn options(&self, overlay: &str, lowers: &[String]) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={},{PORTABLE_UPPER_OPTIONS}",
            lowers.join(":"),
            self.upper(overlay).display(),
            self.work(overlay).display()
        )
    }

    fn mkdirs(&self, overlay: &str) -> [MountOp; 2] {
        [
            MountOp::Mkdir(self.upper(overlay)),
            MountOp::Mkdir(self.work(overlay)),
        ]
    }
}

/// The new root at `sysroot`: the image read-only in production; in dev mode the image
/// read-only under /run/xorbang/base with a writable overlay over it, whose upper is in `dev`.
pub fn plan_root(paths: &Paths, root: &RootSource, dev: Option<&DevDirs>) -> Vec<MountOp> {
    let device = root.device.to_string_lossy();
    let mut image = Mount::new(&device, paths.sysroot(), root.fstype);
    image.read_only = true;
    image.data = root.flags.map(str::to_owned);
    let Some(dev) = dev else {
        return vec![MountOp::Mkdir(paths.sysroot()), MountOp::Mount(image)];
    };
    let base = base_dir(paths, Mode::Dev);
    image.target = base.clone();
    let mut plan = vec![MountOp::Mkdir(base.clone()), MountOp::Mount(image)];
    if dev.transient {
        plan.push(MountOp::Mkdir(dev.dir.clone()));
        plan.push(MountOp::Mount(Mount::new_tmpfs(
            dev.dir.clone(),
            "mode=0755",
        )));
    }
    plan.extend(dev.mkdirs(ROOT_OVERLAY));
    let mut overlay = Mount::new("overlay", paths.sysroot(), "overlay");
    overlay.data = Some(dev.options(ROOT_OVERLAY, &[base.display().to_string()]));
    plan.push(MountOp::Mkdir(paths.sysroot()));
    plan.push(MountOp::Mount(overlay));
    plan
}

/// Where the base image is mounted: the new root itself in production, under
/// /run/xorbang in dev mode (below the writable overlay).
pub fn base_dir(paths: &Paths, mode: Mode) -> PathBuf {
    match mode {
        Mode::Production => paths.sysroot(),
        Mode::Dev => paths.xorbang_run().join("base"),
    }
}

/// A read-only tree (an extension, the host-config layer) that carries some of the root's
/// top-level directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTree {
    pub root: PathBuf,
    pub hierarchies: Vec<&'static str>,
}

/// Overlays over the new root's /usr, /opt and /etc: for each directory some layer
/// carries, the layers that carry it (the last one on top) over the base image's own.
/// `base` is where the base image is mounted; production's overlays stay read-only. Dev mode
/// mounts every hierarchy of `dev_hierarchies`, layers or not, each over its own upper: what
/// is written under /usr lands in the same upper whatever extensions a boot merges.
pub fn plan_layers(
    paths: &Paths,
    base: &Path,
    dev: Option<(&DevDirs, &[&'static str])>,
    layers: &[LayerTree],
) -> Vec<MountOp> {
    let mut hierarchies: Vec<&'static str> = dev
        .map(|(_, hierarchies)| hierarchies.to_vec())
        .unwrap_or_default();
    for hierarchy in layers.iter().flat_map(|layer| layer.hierarchies.iter()) {
        if !hierarchies.contains(hierarchy) {
            hierarchies.push(hierarchy);
        }
    }
    let mut plan = Vec::new();
    for hierarchy in hierarchies {
        let mut lowers: Vec<String> = layers
            .iter()
            .rev()
            .filter(|layer| layer.hierarchies.contains(&hierarchy))
            .map(|layer| layer.root.join(hierarchy).display().to_string())
            .collect();
        lowers.push(base.join(hierarchy).display().to_string());
        let mut overlay = Mount::new("overlay", paths.sysroot().join(hierarchy), "overlay");
        match dev {
            Some((dev, _)) => {
                plan.extend(dev.mkdirs(hierarchy));
                overlay.data = Some(dev.options(hierarchy, &lowers));
            }
            None => {
                overlay.read_only = true;
                overlay.data = Some(format!("lowerdir={}", lowers.join(":")));
            }
        }
        plan.push(MountOp::Mount(overlay));
    }
    plan
}

pub fn execute(plan: &[MountOp]) -> Result<(), MountError> {
    for op in plan {
        match op {
            MountOp::Mkdir(path) => mkdir(path)?,
            MountOp::Mount(mount) => {
                log::debug!("{mount}");
                let data = mount
                    .data
                    .as_deref()
                    .map(std::ffi::CString::new)
                    .transpose()
                    .map_err(|_| MountError::Mount {
                        mount: Box::new(mount.clone()),
                        source: rustix::io::Errno::INVAL,
                    })?;
                rustix::mount::mount(
                    mount.source.as_str(),
                    &mount.target,
                    mount.fstype.as_str(),
                    mount.flags(),
                    data.as_deref(),
                )
                .map_err(|source| MountError::Mount {
                    mount: Box::new(mount.clone()),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::Mkdir {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(plan: &[MountOp]) -> Vec<String> {
        plan.iter()
            .filter_map(|op| match op {
                MountOp::Mount(mount) => Some(mount.to_string()),
                MountOp::Mkdir(_) => None,
            })
            .collect()
    }

    fn root() -> RootSource<'static> {
        RootSource {
            device: Path::new("/dev/vda2"),
            fstype: "squashfs",
            flags: None,
        }
    }

    #[test]
    fn production_mounts_the_image_read_only_as_the_root() {
        let plan = plan_root(&Paths::default(), &root(), None);
        assert_eq!(
            mounts(&plan),
            ["mount -t squashfs -o ro /dev/vda2 /sysroot"]
        );
    }

    #[test]
    fn transient_dev_layers_a_tmpfs_upper_over_the_read_only_image() {
        let dev = DevDirs::transient(&Paths::default());
        let plan = plan_root(&Paths::default(), &root(), Some(&dev));
        assert_eq!(
            mounts(&plan),
            [
                "mount -t squashfs -o ro /dev/vda2 /run/xorbang/base",
                "mount -t tmpfs -o mode=0755 tmpfs /run/xorbang/overlay",
                "mount -t overlay -o lowerdir=/run/xorbang/base,\
                 upperdir=/run/xorbang/overlay/root/upper,workdir=/run/xorbang/overlay/root/work,\
                 redirect_dir=off,index=off,metacopy=off,xino=off,nfs_export=off \
                 overlay /sysroot",
            ]
        );
        let upper = plan
            .iter()
            .position(|op| *op == MountOp::Mkdir(PathBuf::from("/run/xorbang/overlay/root/upper")));
        let tmpfs = plan
            .iter()
            .position(|op| matches!(op, MountOp::Mount(m) if m.fstype == "tmpfs"));
        assert!(upper > tmpfs, "upper must be made inside the tmpfs");
    }

    #[test]
    fn persistent_dev_mounts_no_tmpfs() {
        let dev = DevDirs {
            dir: PathBuf::from("/run/xorbang/state/xorbang/dev/ab"),
            transient: false,
        };
        let plan = plan_root(&Paths::default(), &root(), Some(&dev));
        let mounted = mounts(&plan);
        assert_eq!(mounted.len(), 2, "{mounted:?}");
        assert!(mounted[1].contains("upperdir=/run/xorbang/state/xorbang/dev/ab/root/upper,"));
    }

    #[test]
    fn rootflags_reach_the_image_mount() {
        let root = RootSource {
            flags: Some("errors=panic"),
            ..root()
        };
        let plan = plan_root(&Paths::under("/x".into()), &root, None);
        assert_eq!(
            mounts(&plan),
            ["mount -t squashfs -o ro,errors=panic /dev/vda2 /x/sysroot"]
        );
    }

    fn layer(root: &str, hierarchies: &[&'static str]) -> LayerTree {
        LayerTree {
            root: PathBuf::from(root),
            hierarchies: hierarchies.to_vec(),
        }
    }

    #[test]
    fn layers_stack_over_the_base_last_on_top() {
        let layers = [
            layer("/run/e/sysext/a", &["usr"]),
            layer("/run/e/sysext/b", &["usr", "opt"]),
            layer("/run/e/confext/c", &["etc"]),
            layer("/run/host", &["etc"]),
        ];
        let plan = plan_layers(&Paths::default(), Path::new("/sysroot"), None, &layers);
        assert_eq!(
            mounts(&plan),
            [
                "mount -t overlay -o ro,lowerdir=/run/e/sysext/b/usr:/run/e/sysext/a/usr:/sysroot/usr \
                 overlay /sysroot/usr",
                "mount -t overlay -o ro,lowerdir=/run/e/sysext/b/opt:/sysroot/opt overlay /sysroot/opt",
                "mount -t overlay -o ro,lowerdir=/run/host/etc:/run/e/confext/c/etc:/sysroot/etc \
                 overlay /sysroot/etc",
            ]
        );
        assert!(plan_layers(&Paths::default(), Path::new("/sysroot"), None, &[]).is_empty());
    }

    #[test]
    fn dev_mounts_each_hierarchy_over_its_own_upper_layers_or_not() {
        let base = Path::new("/run/xorbang/base");
        let dev = DevDirs::transient(&Paths::default());
        let plan = plan_layers(
            &Paths::default(),
            base,
            Some((&dev, &["usr", "opt"])),
            &[layer("/x", &["usr"])],
        );
        assert_eq!(
            mounts(&plan),
            [
                "mount -t overlay -o lowerdir=/x/usr:/run/xorbang/base/usr,\
                 upperdir=/run/xorbang/overlay/usr/upper,workdir=/run/xorbang/overlay/usr/work,\
                 redirect_dir=off,index=off,metacopy=off,xino=off,nfs_export=off overlay /sysroot/usr",
                "mount -t overlay -o lowerdir=/run/xorbang/base/opt,\
                 upperdir=/run/xorbang/overlay/opt/upper,workdir=/run/xorbang/overlay/opt/work,\
                 redirect_dir=off,index=off,metacopy=off,xino=off,nfs_export=off overlay /sysroot/opt",
            ]
        );
        assert_eq!(
            plan[0],
            MountOp::Mkdir(PathBuf::from("/run/xorbang/overlay/usr/upper"))
        );
    }

    #[test]
    fn api_filesystems_come_first_and_only_dev_allows_nodes() {
        let plan = plan_api_filesystems(&Paths::default());
        assert_eq!(
            mounts(&plan),
            [
                "mount -t proc -o nosuid,nodev proc /proc",
                "mount -t sysfs -o nosuid,nodev sysfs /sys",
                "mount -t devtmpfs -o mode=0755 devtmpfs /dev",
                "mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run",
            ]
        );
    }
}

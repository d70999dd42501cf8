//! Loading the modules the initramfs carries, dependencies first, with finit_module.
//!
//! Drivers are loaded up front, since any of them may be what makes the root device appear.
//! Feature modules (a filesystem, overlay, loop, device-mapper targets) are loaded when the
//! boot first needs them, so a production boot never pays for overlay and a boot without
//! verity never pays for device-mapper.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xorbang_formats::error_chain::error_chain;
use xorbang_formats::module_index::{Builtin, DepEntry, ModuleError, ModuleName, ModulesDep};

/// Modules the init asks for by name at the point of need (see [`ModuleLoader::ensure`]).
pub const ON_DEMAND: &[&str] = &[
    "squashfs",
    "erofs",
    "overlay",
    "loop",
    "dm_verity",
    "efivarfs",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}")]
    Index { path: PathBuf, source: ModuleError },
    #[error(
        "this boot needs the kernel module {name}, which is neither in the initramfs nor \
         built into the running kernel; add it with xorbang-build initrd --modules …,{name}"
    )]
    Missing { name: String },
}

/// Where the running kernel shows what it has built in or loaded.
#[derive(Debug, Clone)]
pub struct KernelView {
    /// /sys/module: one directory per loaded module, and per built-in one with parameters.
    pub sys_module: PathBuf,
    /// /proc/filesystems: every file system type the kernel can mount right now.
    pub filesystems: PathBuf,
}

impl KernelView {
    /// The running kernel's view under `paths` (/sys and /proc once they are mounted).
    pub fn of(paths: &crate::paths::Paths) -> Self {
        Self {
            sys_module: paths.sys().join("module"),
            filesystems: paths.proc().join("filesystems"),
        }
    }

    /// Whether the kernel has `name` without loading anything: loaded or built in (shown in
    /// /sys/module), or a file system type it already knows (a built-in file system without
    /// parameters has no /sys/module entry).
    pub fn offers(&self, name: &str) -> bool {
        let as_module = name.replace('-', "_");
        self.sys_module.join(&as_module).is_dir()
            || std::fs::read_to_string(&self.filesystems).is_ok_and(|list| {
                list.lines()
                    .any(|line| line.split_whitespace().last() == Some(name))
            })
    }
}

/// The initramfs's module index and what has been loaded from it.
#[derive(Debug)]
pub struct ModuleLoader {
    kernel: KernelView,
    dir: PathBuf,
    index_path: PathBuf,
    index: ModulesDep,
    loaded: BTreeSet<ModuleName>,
}

impl ModuleLoader {
    /// Reads `modules_dir/modules.dep`, which the build tool trimmed to exactly the modules
    /// the initramfs carries. Without one (a kernel with everything built in) there is
    /// nothing to load.
    pub fn open(modules_dir: &Path, kernel: KernelView) -> Result<Self, KmodError> {
        let index_path = modules_dir.join("modules.dep");
        let index = match std::fs::read_to_string(&index_path) {
            Ok(text) => ModulesDep::parse(&text).map_err(|source| KmodError::Index {
                path: index_path.clone(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                log::debug!("no {}: no modules to load", index_path.display());
                ModulesDep::default()
            }
            Err(source) => {
                return Err(KmodError::Read {
                    path: index_path,
                    source,
                })
            }
        };
        Ok(Self {
            kernel,
            dir: modules_dir.to_owned(),
            index_path,
            index,
            loaded: BTreeSet::new(),
        })
    }

    /// Whether the initramfs has `name` to load.
    pub fn carries(&self, name: &str) -> bool {
        self.index.get(&ModuleName::new(name)).is_some()
    }

    pub fn loaded_count(&self) -> usize {
        self.loaded.len()
    }

    /// Loads every module except the on-demand ones and what only they need.
    pub fn load_drivers(&mut self) -> Result<(), KmodError> {
        let on_demand: Vec<ModuleName> = ON_DEMAND
            .iter()
            .map(|name| ModuleName::new(name))
            .filter(|name| self.index.get(name).is_some())
            .collect();
        let deferred: BTreeSet<ModuleName> =
            self.order(on_demand)?.into_iter().map(entry_name).collect();
        let drivers = self
            .index
            .names()
            .filter(|name| !deferred.contains(name))
            .cloned()
            .collect();
        self.load(drivers)
    }

    /// Loads `name` and what it needs, if the initramfs carries it; otherwise the running
    /// kernel must have it already, or the boot stops here with a line naming the module
    /// (rather than an errno from the ioctl or mount that needed it).
    pub fn ensure(&mut self, name: &str) -> Result<(), KmodError> {
        let module = ModuleName::new(name);
        if self.index.get(&module).is_some() {
            return self.load(vec![module]);
        }
        if self.kernel.offers(name) {
            return Ok(());
        }
        Err(KmodError::Missing {
            name: name.to_owned(),
        })
    }

    /// Whether the kernel can mount `fstype` now, or the initramfs carries its module.
    pub fn can_provide(&self, name: &str) -> bool {
        self.kernel.offers(name) || self.carries(name)
    }

    fn order(&self, wanted: Vec<ModuleName>) -> Result<Vec<&DepEntry>, KmodError> {
        self.index
            .load_order(&wanted, &Builtin::default())
            .map_err(|source| KmodError::Index {
                path: self.index_path.clone(),
                source,
            })
    }

    fn load(&mut self, wanted: Vec<ModuleName>) -> Result<(), KmodError> {
        let order: Vec<DepEntry> = self.order(wanted)?.into_iter().cloned().collect();
        for entry in order {
            let name = entry_name(&entry);
            if self.loaded.contains(&name) {
                continue;
            }
            let path = self.dir.join(&entry.path);
            let started = std::time::Instant::now();
            // A module that fails to load is not fatal by itself: if the boot needed it, the
            // device wait or the mount names what is missing; this line tells why.
            match load_one(&path) {
                Ok(()) => log::debug!("loaded {} in {:?}", entry.path, started.elapsed()),
                Err(LoadError::Open(error)) => log::warn!(
                    "cannot open module {}: {}",
                    path.display(),
                    error_chain(&error)
                ),
                // The file was there: ENOENT from the kernel means a symbol it needs is not.
                Err(LoadError::Kernel(rustix::io::Errno::NOENT)) => log::warn!(
                    "the kernel refused module {}: a symbol it needs is missing (named in the \
                     kernel's line above), most likely a soft dependency modules.dep does not \
                     list, such as crc32c_generic for crc32c; add it with xorbang-build initrd \
                     --modules",
                    path.display()
                ),
                Err(LoadError::Kernel(errno)) => log::warn!(
                    "the kernel refused module {}: {}",
                    path.display(),
                    std::io::Error::from(errno)
                ),
            }
            self.loaded.insert(name);
        }
        Ok(())
    }
}

fn entry_name(entry: &DepEntry) -> ModuleName {
    ModuleName::from_path(&entry.path)
}

/// Loads one module; one the kernel already has counts as loaded.
fn load_one(path: &Path) -> Result<(), LoadError> {
    let file = std::fs::File::open(path).map_err(LoadError::Open)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(errno) => Err(LoadError::Kernel(errno)),
    }
}

/// Why one module did not load: its file, or the kernel's answer to it.
enum LoadError {
    Open(std::io::Error),
    Kernel(rustix::io::Errno),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that has `overlay` loaded, knows `squashfs` as a file system, nothing else.
    fn kernel(dir: &Path) -> KernelView {
        let view = KernelView {
            sys_module: dir.join("sys/module"),
            filesystems: dir.join("proc/filesystems"),
        };
        std::fs::create_dir_all(view.sys_module.join("overlay")).expect("mkdir");
        std::fs::create_dir_all(dir.join("proc")).expect("mkdir");
        std::fs::write(&view.filesystems, "nodev\tsysfs\n\tsquashfs\n").expect("write");
        view
    }

    #[test]
    fn no_modules_dep_means_nothing_to_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut loader = ModuleLoader::open(dir.path(), kernel(dir.path())).expect("fine");
        loader.load_drivers().expect("nothing to do");
        loader.ensure("overlay").expect("loaded in the kernel");
        loader.ensure("squashfs").expect("built in");
        let missing = loader.ensure("dm_verity").expect_err("nowhere").to_string();
        assert_eq!(
            missing,
            "this boot needs the kernel module dm_verity, which is neither in the initramfs nor \
             built into the running kernel; add it with xorbang-build initrd --modules …,dm_verity"
        );
        assert_eq!(loader.loaded_count(), 0);
    }

    #[test]
    fn a_broken_index_names_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "garbage\n").expect("write");
        let error = error_chain(
            &ModuleLoader::open(dir.path(), kernel(dir.path())).expect_err("malformed"),
        );
        assert!(
            error.contains("modules.dep") && error.contains("line 1"),
            "{error}"
        );
    }

    /// The files are not real modules, so the kernel refuses them (a warning each); what
    /// counts here is which ones the loader tried, and when.
    #[test]
    fn drivers_load_up_front_and_features_on_demand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index =
            "d/blk.ko: d/ring.ko\nd/ring.ko:\nfs/overlay.ko: d/ring.ko fs/only.ko\nfs/only.ko:\n";
        std::fs::write(dir.path().join("modules.dep"), index).expect("write");
        let mut loader = ModuleLoader::open(dir.path(), kernel(dir.path())).expect("opens");
        loader.load_drivers().expect("loads");
        let loaded = |loader: &ModuleLoader| -> Vec<String> {
            loader.loaded.iter().map(ToString::to_string).collect()
        };
        assert_eq!(loaded(&loader), ["blk", "ring"]);
        loader.ensure("overlay").expect("loads");
        assert_eq!(loaded(&loader), ["blk", "only", "overlay", "ring"]);
        loader
            .ensure("squashfs")
            .expect("not carried, but built in");
        assert_eq!(loader.loaded_count(), 4);
    }
}

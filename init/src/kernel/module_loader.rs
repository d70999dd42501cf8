//! Loading the modules the initramfs carries, dependencies first, with finit_module.
//!
//! Drivers are loaded up front, since any of them may be what makes the root device appear.
//! Feature modules (a filesystem, overlay, loop, device-mapper targets) are loaded when the
//! boot first needs them, so a production boot never pays for overlay and a boot without
//! verity never pays for device-mapper.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xorbang_formats::module_index::{Builtin, DepEntry, ModuleError, ModuleName, ModulesDep};

/// Modules the init asks for by name at the point of need (see [`ModuleLoader::ensure`]).
pub const ON_DEMAND: &[&str] = &[
    "squashfs",
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
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Index { path: PathBuf, source: ModuleError },
}

/// The initramfs's module index and what has been loaded from it.
#[derive(Debug)]
pub struct ModuleLoader {
    dir: PathBuf,
    index_path: PathBuf,
    index: ModulesDep,
    loaded: BTreeSet<ModuleName>,
}

impl ModuleLoader {
    /// Reads `modules_dir/modules.dep`, which the build tool trimmed to exactly the modules
    /// the initramfs carries. Without one (a kernel with everything built in) there is
    /// nothing to load.
    pub fn open(modules_dir: &Path) -> Result<Self, KmodError> {
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

    /// Loads `name` and what it needs, if the initramfs carries it; a module that is built
    /// in or absent is left to the kernel (the mount that needs it will say if it is
    /// missing).
    pub fn ensure(&mut self, name: &str) -> Result<(), KmodError> {
        let name = ModuleName::new(name);
        if self.index.get(&name).is_none() {
            return Ok(());
        }
        self.load(vec![name])
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
                Err(error) => log::warn!("cannot load module {}: {error}", path.display()),
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
fn load_one(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_modules_dep_means_nothing_to_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut loader = ModuleLoader::open(dir.path()).expect("fine");
        loader.load_drivers().expect("nothing to do");
        loader.ensure("overlay").expect("absent is fine");
        assert_eq!(loader.loaded_count(), 0);
    }

    #[test]
    fn a_broken_index_names_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "garbage\n").expect("write");
        let error = ModuleLoader::open(dir.path())
            .expect_err("malformed")
            .to_string();
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
        let mut loader = ModuleLoader::open(dir.path()).expect("opens");
        loader.load_drivers().expect("loads");
        let loaded = |loader: &ModuleLoader| -> Vec<String> {
            loader.loaded.iter().map(ToString::to_string).collect()
        };
        assert_eq!(loaded(&loader), ["blk", "ring"]);
        loader.ensure("overlay").expect("loads");
        assert_eq!(loaded(&loader), ["blk", "only", "overlay", "ring"]);
        loader
            .ensure("squashfs")
            .expect("not carried: left to the kernel");
        assert_eq!(loader.loaded_count(), 4);
    }
}

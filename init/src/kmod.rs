//! Loading the modules the initramfs carries, dependencies first, with finit_module.

use std::path::{Path, PathBuf};

use crate::modules::{Builtin, ModuleError, ModulesDep};

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

/// Loads every module listed in `modules_dir/modules.dep`; the build tool put exactly the
/// needed closure there. A directory without modules.dep (a kernel with everything built
/// in) loads nothing. Returns how many modules were loaded now.
pub fn load_all(modules_dir: &Path) -> Result<usize, KmodError> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = match std::fs::read_to_string(&dep_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            log::debug!("no {}: no modules to load", dep_path.display());
            return Ok(0);
        }
        Err(source) => {
            return Err(KmodError::Read {
                path: dep_path,
                source,
            })
        }
    };
    let index = |source| KmodError::Index {
        path: dep_path.clone(),
        source,
    };
    let dep = ModulesDep::parse(&dep_text).map_err(index)?;
    let order = dep
        .load_order(dep.names(), &Builtin::default())
        .map_err(index)?;
    let mut loaded = 0;
    for entry in order {
        let path = modules_dir.join(&entry.path);
        // A module that fails to load is not fatal by itself: if the boot needed it, the
        // device wait names what is missing; this line tells why.
        match load_one(&path) {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(error) => log::warn!("cannot load module {}: {error}", path.display()),
        }
    }
    Ok(loaded)
}

/// Loads one module; `Ok(false)` when the kernel already has it.
fn load_one(path: &Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(path)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_modules_dep_means_nothing_to_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_all(dir.path()).expect("fine"), 0);
    }

    #[test]
    fn a_broken_index_names_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("modules.dep"), "garbage\n").expect("write");
        let error = load_all(dir.path()).expect_err("malformed").to_string();
        assert!(
            error.contains("modules.dep") && error.contains("line 1"),
            "{error}"
        );
    }
}

//! The content-addressed cache of build steps: a step's outputs live in a directory named by
//! the hash of everything that went into it (`<root>/<step>/<key>/`), so a step whose inputs
//! did not change is not run again, and two profiles that share a step share its output.
//! A step is made in a `.partial` directory and renamed into place only when it finished, so
//! an interrupted build never leaves something that looks done.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::file_error::{FileAction, FileError};
use crate::image::verified::{self, hex};
use crate::sorted_dir::sorted_names;

/// What a step depends on: named parts, each hashed, in the order they are added.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    parts: Vec<(String, String)>,
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A value given in the profile or by the build (a package list, a command line).
    pub fn text(mut self, name: &str, text: &str) -> Self {
        self.parts
            .push((name.to_owned(), hex(&Sha256::digest(text))));
        self
    }

    /// Another step's key: what that step made is an input of this one.
    pub fn step(mut self, name: &str, key: &StepKey) -> Self {
        self.parts.push((name.to_owned(), key.0.clone()));
        self
    }

    /// A file's bytes.
    pub fn file(mut self, name: &str, path: &Path) -> Result<Self, FileError> {
        let digest = file_digest(path)?;
        self.parts.push((name.to_owned(), digest));
        Ok(self)
    }

    /// A directory tree: every path, type, mode, symlink target and file content, in order.
    pub fn tree(mut self, name: &str, dir: &Path) -> Result<Self, FileError> {
        let mut hasher = Sha256::new();
        hash_tree(dir, Path::new(""), &mut hasher)?;
        self.parts.push((name.to_owned(), hex(&hasher.finalize())));
        Ok(self)
    }

    /// The key of a step with these inputs.
    pub fn key(&self, step: &str) -> StepKey {
        let mut hasher = Sha256::new();
        hasher.update(step);
        for (name, digest) in &self.parts {
            hasher.update([0]);
            hasher.update(name);
            hasher.update([0]);
            hasher.update(digest);
        }
        StepKey(hex(&hasher.finalize()[..16]))
    }

    /// Each input's name and hash, for build.json.
    pub fn parts(&self) -> &[(String, String)] {
        &self.parts
    }
}

/// The hash that names a step's output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepKey(pub String);

/// Where step outputs are kept.
#[derive(Debug, Clone)]
pub struct StepCache {
    root: PathBuf,
}

/// A step's outputs, made now or found from an earlier build.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub dir: PathBuf,
    pub key: StepKey,
    pub reused: bool,
}

impl StepCache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The outputs of `step` for `inputs`: found in the cache, or made by `make` in a fresh
    /// directory that becomes the cache entry once `make` succeeds.
    pub fn get_or_make<E>(
        &self,
        step: &str,
        inputs: &Inputs,
        make: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<StepOutput, E>
    where
        E: From<FileError>,
    {
        let key = inputs.key(step);
        let dir = self.root.join(step).join(&key.0);
        if dir.is_dir() {
            return Ok(StepOutput {
                dir,
                key,
                reused: true,
            });
        }
        let partial =
            self.root
                .join(step)
                .join(format!("{}.partial-{}", key.0, std::process::id()));
        remove_tree_if_present(&partial)?;
        fs::create_dir_all(&partial)
            .map_err(FileError::of(FileAction::CreateDirectory, &partial))?;
        if let Err(error) = make(&partial) {
            // A failed step leaves nothing behind: its half-made trees can be gigabytes.
            if let Err(removal) = remove_tree_if_present(&partial) {
                eprintln!(
                    "warning: {}",
                    xorbang_formats::error_chain::error_chain(&removal)
                );
            }
            return Err(error);
        }
        if let Err(error) = fs::rename(&partial, &dir) {
            // Another build made the same step meanwhile: its output is as good as ours.
            if !dir.is_dir() {
                return Err(
                    FileError::of(FileAction::RenameTo(dir.clone()), &partial)(error).into(),
                );
            }
            remove_tree_if_present(&partial)?;
        }
        Ok(StepOutput {
            dir,
            key,
            reused: false,
        })
    }
}

/// Removes `path` (a directory tree or a file) if it is there.
pub fn remove_tree_if_present(path: &Path) -> Result<(), FileError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    removed.map_err(FileError::of(FileAction::Remove, path))
}

fn file_digest(path: &Path) -> Result<String, FileError> {
    verified::file_digest(path).map(|digest| hex(&digest))
}

fn hash_tree(root: &Path, relative: &Path, hasher: &mut Sha256) -> Result<(), FileError> {
    for name in sorted_names(&root.join(relative))? {
        let path = relative.join(&name);
        let full = root.join(&path);
        let meta =
            fs::symlink_metadata(&full).map_err(FileError::of(FileAction::Inspect, &full))?;
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(meta.permissions().mode().to_le_bytes());
        if meta.is_dir() {
            hash_tree(root, &path, hasher)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(FileError::of(FileAction::Inspect, &full))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else {
            hasher.update(meta.size().to_le_bytes());
            hasher.update(file_digest(&full)?);
        }
        hasher.update([0]);
    }
    Ok(())
}

/// The SHA-256 of `bytes` in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_every_input_and_its_name() {
        let base = Inputs::new().text("packages", "a,b");
        assert_eq!(base.key("rootfs"), base.clone().key("rootfs"));
        assert_ne!(base.key("rootfs"), base.key("image"));
        assert_ne!(
            base.key("rootfs"),
            Inputs::new().text("packages", "a,c").key("rootfs")
        );
        assert_ne!(
            base.key("rootfs"),
            Inputs::new().text("kernel", "a,b").key("rootfs")
        );
    }

    #[test]
    fn a_made_step_is_found_again_and_a_failed_one_is_not_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = StepCache::new(root.path().to_owned());
        let inputs = Inputs::new().text("x", "1");
        let failed: Result<StepOutput, FileError> = cache.get_or_make("step", &inputs, |dir| {
            fs::write(dir.join("half"), "made").expect("write");
            Err(FileError::of(FileAction::Read, Path::new("/x"))(
                io::Error::other("no"),
            ))
        });
        assert!(failed.is_err());
        let left: Vec<_> = fs::read_dir(root.path().join("step"))
            .expect("list")
            .collect();
        assert!(left.is_empty(), "a failed step left {left:?}");
        let made = cache
            .get_or_make::<FileError>("step", &inputs, |dir| {
                fs::write(dir.join("out"), "made").map_err(FileError::of(FileAction::Write, dir))
            })
            .expect("made");
        assert!(!made.reused);
        let again = cache
            .get_or_make::<FileError>("step", &inputs, |_| panic!("not run again"))
            .expect("found");
        assert!(again.reused);
        assert_eq!(
            fs::read_to_string(again.dir.join("out")).expect("read"),
            "made"
        );
    }

    #[test]
    fn tree_hashes_see_contents_modes_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("d")).expect("mkdir");
        fs::write(dir.path().join("d/f"), "one").expect("write");
        let digest = |dir: &Path| Inputs::new().tree("t", dir).expect("hash").key("s");
        let first = digest(dir.path());
        fs::write(dir.path().join("d/f"), "two").expect("write");
        let second = digest(dir.path());
        assert_ne!(first, second);
        fs::set_permissions(dir.path().join("d/f"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert_ne!(second, digest(dir.path()));
        std::os::unix::fs::symlink("f", dir.path().join("d/l")).expect("symlink");
        assert_ne!(second, digest(dir.path()));
    }
}

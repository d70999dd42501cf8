//! `xorbang-build initrd`: the initramfs the init runs from. It holds the static init as
//! `/init`, the mount points the init needs before anything is mounted, `/dev/console` (so the
//! kernel can open the console for the init before devtmpfs exists), kernel modules, and
//! whatever the user adds.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use xorbang_formats::module_index::ModuleName;

use crate::file_error::{FileAction, FileError};
use crate::initrd::compress::{compress, Compression};
use crate::initrd::cpio::{Archive, CpioError};
use crate::initrd::kernel_modules::{add_modules, KernelModulesError};
use crate::initrd::static_elf::{check_static, ElfError};
use crate::output::write_atomically;

/// Mount points and scratch directories the init uses before any file system is mounted.
pub const BASE_DIRECTORIES: &[&str] = &["dev", "proc", "sys", "run", "sysroot", "tmp"];
/// `/dev/console` is character device 5:1.
const CONSOLE: (u32, u32) = (5, 1);

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} cannot be the initramfs's /init")]
    BadInit {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("cannot add kernel modules from {dir}")]
    Modules {
        dir: PathBuf,
        #[source]
        source: KernelModulesError,
    },
    #[error("{path} is neither a regular file, a directory nor a symlink")]
    UnsupportedFileType { path: PathBuf },
    #[error("{path} is not valid UTF-8, which archive paths must be")]
    NonUtf8 { path: PathBuf },
    #[error(transparent)]
    Archive(#[from] CpioError),
    #[error("cannot compress the archive")]
    Compress(#[source] io::Error),
}

/// `--add SRC:DST`: a host file or directory tree and where it goes in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    pub source: PathBuf,
    pub destination: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected SRC:DST with both parts non-empty, found {0:?}")]
pub struct AdditionSyntaxError(String);

impl FromStr for Addition {
    type Err = AdditionSyntaxError;

    /// Splits at the last `:`, since archive destinations are ours to choose while host paths
    /// may contain colons.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.rsplit_once(':') {
            Some((source, destination)) if !source.is_empty() && !destination.is_empty() => {
                Ok(Self {
                    source: PathBuf::from(source),
                    destination: destination.to_owned(),
                })
            }
            _ => Err(AdditionSyntaxError(text.to_owned())),
        }
    }
}

/// Everything that goes into an initramfs.
#[derive(Debug, Clone)]
pub struct InitrdSpec {
    pub init: PathBuf,
    /// A kernel's `lib/modules/<version>` directory, and the modules to take from it.
    pub kernel_modules: Option<(PathBuf, Vec<ModuleName>)>,
    pub additions: Vec<Addition>,
    /// Files made by the build tool itself, as (path in the archive, contents): the fleet's
    /// host configs of `--hosts`.
    pub generated: Vec<(String, Vec<u8>)>,
}

/// What the one-line report says about a written initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entries: usize,
    pub modules: usize,
    pub uncompressed: usize,
    pub compressed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries ({} kernel modules), {} bytes uncompressed, {} bytes compressed",
            self.entries, self.modules, self.uncompressed, self.compressed
        )
    }
}

/// Builds the initramfs of `spec` and writes it to `out` atomically.
pub fn build(
    spec: &InitrdSpec,
    out: &Path,
    compression: Compression,
    mtime: u32,
) -> Result<Summary, InitrdError> {
    let (archive, modules) = assemble(spec)?;
    let bytes = archive.to_bytes(mtime);
    let packed = compress(&bytes, compression).map_err(InitrdError::Compress)?;
    write_atomically(out, &packed)?;
    Ok(Summary {
        entries: archive.len(),
        modules,
        uncompressed: bytes.len(),
        compressed: packed.len(),
    })
}

/// The archive of `spec`, and how many kernel modules it carries.
pub fn assemble(spec: &InitrdSpec) -> Result<(Archive, usize), InitrdError> {
    let mut archive = Archive::new();
    archive.add_file("init", 0o755, read_init(&spec.init)?)?;
    for directory in BASE_DIRECTORIES {
        archive.add_directory(directory, 0o755)?;
    }
    archive.add_char_device("dev/console", 0o600, CONSOLE.0, CONSOLE.1)?;
    let modules = match &spec.kernel_modules {
        Some((dir, wanted)) => {
            add_modules(&mut archive, dir, wanted).map_err(|source| InitrdError::Modules {
                dir: dir.clone(),
                source,
            })?
        }
        None => 0,
    };
    for addition in &spec.additions {
        add_host_path(&mut archive, addition)?;
    }
    for (path, contents) in &spec.generated {
        archive.add_file(path, 0o444, contents.clone())?;
    }
    Ok((archive, modules))
}

fn read_init(path: &Path) -> Result<Vec<u8>, InitrdError> {
    let bytes = fs::read(path).map_err(FileError::of(FileAction::Read, path))?;
    check_static(&bytes).map_err(|source| InitrdError::BadInit {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes)
}

/// Adds `--add SRC:DST`. SRC itself is followed if it is a symlink (naming a symlink on the
/// command line means its target); inside a directory tree symlinks are kept as symlinks.
fn add_host_path(archive: &mut Archive, addition: &Addition) -> Result<(), InitrdError> {
    let metadata = fs::metadata(&addition.source)
        .map_err(FileError::of(FileAction::Inspect, &addition.source))?;
    add_tree(archive, &addition.source, &addition.destination, &metadata)
}

fn add_tree(
    archive: &mut Archive,
    source: &Path,
    destination: &str,
    metadata: &Metadata,
) -> Result<(), InitrdError> {
    let permissions = metadata.permissions().mode() & 0o7777;
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        archive.add_directory(destination, permissions)?;
        for (name, child, child_metadata) in directory_children(source)? {
            add_tree(
                archive,
                &child,
                &format!("{destination}/{name}"),
                &child_metadata,
            )?;
        }
    } else if file_type.is_file() {
        archive.add_file(destination, permissions, read(source)?)?;
    } else if file_type.is_symlink() {
        let target = fs::read_link(source).map_err(FileError::of(FileAction::Read, source))?;
        archive.add_symlink(destination, utf8(&target)?)?;
    } else {
        // Device nodes, sockets and FIFOs from the host are almost certainly a mistake here;
        // the nodes the initramfs needs are created explicitly.
        return Err(InitrdError::UnsupportedFileType {
            path: source.to_owned(),
        });
    }
    Ok(())
}

/// A directory's entries, sorted by name, with their own (not followed) metadata.
fn directory_children(dir: &Path) -> Result<Vec<(String, PathBuf, Metadata)>, InitrdError> {
    let mut children = Vec::new();
    let list = FileError::of(FileAction::ListDirectory, dir);
    for entry in fs::read_dir(dir).map_err(&list)? {
        let entry = entry.map_err(&list)?;
        let path = entry.path();
        let metadata =
            fs::symlink_metadata(&path).map_err(FileError::of(FileAction::Inspect, &path))?;
        let name = utf8(Path::new(&entry.file_name()))?.to_owned();
        children.push((name, path, metadata));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(children)
}

fn read(path: &Path) -> Result<Vec<u8>, InitrdError> {
    Ok(fs::read(path).map_err(FileError::of(FileAction::Read, path))?)
}

fn utf8(path: &Path) -> Result<&str, InitrdError> {
    path.to_str().ok_or_else(|| InitrdError::NonUtf8 {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initrd::cpio::tests::parse;
    use crate::initrd::cpio::Node;
    use crate::initrd::kernel_modules::tests::fake_modules_dir;
    use crate::initrd::static_elf::tests::fake_elf;
    use std::os::unix::fs::symlink;
    use xorbang_formats::error_chain::error_chain;

    const PT_LOAD: u32 = 1;
    const PT_INTERP: u32 = 3;

    fn spec_with_init(dir: &Path, elf: &[u8]) -> InitrdSpec {
        let init = dir.join("init-binary");
        fs::write(&init, elf).expect("write init");
        InitrdSpec {
            init,
            kernel_modules: None,
            additions: Vec::new(),
            generated: Vec::new(),
        }
    }

    #[test]
    fn the_base_layout_is_always_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (archive, modules) =
            assemble(&spec_with_init(dir.path(), &fake_elf(&[PT_LOAD]))).expect("assembles");
        assert_eq!(modules, 0);
        let paths: Vec<&str> = archive.paths().collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "init",
                "proc",
                "run",
                "sys",
                "sysroot",
                "tmp"
            ]
        );
        let console = archive.get("dev/console").expect("console");
        assert_eq!(console.node, Node::CharDevice { major: 5, minor: 1 });
        assert_eq!(console.permissions, 0o600);
        let init = archive.get("init").expect("init");
        assert_eq!(init.permissions, 0o755);
        assert_eq!(init.node, Node::File(fake_elf(&[PT_LOAD])));
    }

    #[test]
    fn a_dynamic_or_non_elf_init_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec_with_init(dir.path(), &fake_elf(&[PT_LOAD, PT_INTERP]));
        let err = assemble(&spec).expect_err("dynamic");
        assert!(matches!(
            err,
            InitrdError::BadInit {
                source: ElfError::Dynamic { .. },
                ..
            }
        ));
        assert!(err.to_string().contains("init-binary"), "{err}");
        let spec = spec_with_init(dir.path(), b"#!/bin/sh\n");
        assert!(matches!(
            assemble(&spec),
            Err(InitrdError::BadInit {
                source: ElfError::NotElf,
                ..
            })
        ));
    }

    #[test]
    fn added_trees_keep_modes_and_symlinks_in_sorted_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).expect("mkdir");
        fs::write(tree.join("sub/b"), "bee").expect("b");
        fs::write(tree.join("a"), "ay").expect("a");
        fs::set_permissions(tree.join("a"), fs::Permissions::from_mode(0o600)).expect("chmod");
        symlink("sub/b", tree.join("link")).expect("symlink");
        let single = dir.path().join("config.toml");
        fs::write(&single, "x = 1\n").expect("config");
        let mut spec = spec_with_init(dir.path(), &fake_elf(&[PT_LOAD]));
        spec.additions = vec![
            format!("{}:/usr/share/tree", tree.display())
                .parse()
                .expect("parses"),
            format!("{}:etc/xorbang/host-config.toml", single.display())
                .parse()
                .expect("parses"),
        ];
        let (archive, _) = assemble(&spec).expect("assembles");
        let records = parse(&archive.to_bytes(0));
        let added: Vec<(&str, u32)> = records
            .iter()
            .filter(|r| r.name.starts_with("usr/share/tree") || r.name.starts_with("etc"))
            .map(|r| (r.name.as_str(), r.mode))
            .collect();
        assert_eq!(
            added,
            [
                ("etc", 0o040_755),
                ("etc/xorbang", 0o040_755),
                ("etc/xorbang/host-config.toml", 0o100_644),
                ("usr/share/tree", 0o040_755),
                ("usr/share/tree/a", 0o100_600),
                ("usr/share/tree/link", 0o120_777),
                ("usr/share/tree/sub", 0o040_755),
                ("usr/share/tree/sub/b", 0o100_644),
            ]
        );
        let link = records
            .iter()
            .find(|r| r.name == "usr/share/tree/link")
            .expect("link");
        assert_eq!(link.data, b"sub/b");
    }

    #[test]
    fn additions_clashing_with_the_base_layout_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_with_init(dir.path(), &fake_elf(&[PT_LOAD]));
        let extra = dir.path().join("extra");
        fs::write(&extra, "x").expect("extra");
        spec.additions = vec![format!("{}:/init", extra.display())
            .parse()
            .expect("parses")];
        assert!(matches!(
            assemble(&spec),
            Err(InitrdError::Archive(CpioError::Duplicate(path))) if path == "init"
        ));
    }

    #[test]
    fn addition_syntax_splits_at_the_last_colon() {
        assert_eq!(
            "a:b:/etc/c".parse(),
            Ok(Addition {
                source: PathBuf::from("a:b"),
                destination: "/etc/c".into()
            })
        );
        for bad in ["nocolon", ":dst", "src:"] {
            assert!(bad.parse::<Addition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn modules_are_carried_and_unknown_ones_fail_the_build() {
        let (_root, modules_dir) = fake_modules_dir(
            "kernel/fs/squashfs/squashfs.ko:\nkernel/a.ko: kernel/b.ko\nkernel/b.ko:\nkernel/c.ko:\n",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_with_init(dir.path(), &fake_elf(&[PT_LOAD]));
        let wanted = vec![ModuleName::new("a"), ModuleName::new("squashfs")];
        spec.kernel_modules = Some((modules_dir.clone(), wanted));
        let out = dir.path().join("initrd.img");
        let summary = build(&spec, &out, Compression::None, 0).expect("builds");
        assert_eq!(summary.modules, 3);
        let records = parse(&fs::read(&out).expect("reads"));
        assert_eq!(records.len(), summary.entries);
        let module_files: Vec<&str> = records
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| n.ends_with(".ko"))
            .collect();
        assert_eq!(
            module_files,
            [
                "lib/modules/6.1.0-test/kernel/a.ko",
                "lib/modules/6.1.0-test/kernel/b.ko",
                "lib/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko",
            ]
        );
        let dep = records
            .iter()
            .find(|r| r.name == "lib/modules/6.1.0-test/modules.dep")
            .expect("trimmed modules.dep");
        assert_eq!(
            String::from_utf8_lossy(&dep.data),
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\nkernel/fs/squashfs/squashfs.ko:\n"
        );

        spec.kernel_modules = Some((modules_dir, vec![ModuleName::new("virtio_gpu")]));
        let failed = dir.path().join("failed.img");
        let err = build(&spec, &failed, Compression::None, 0).expect_err("unknown");
        let chain = error_chain(&err);
        assert!(chain.contains("virtio_gpu"), "{chain}");
        assert!(!failed.exists() && !dir.path().join("failed.img.tmp").exists());
    }

    #[test]
    fn builds_are_byte_identical_and_stamped_with_the_given_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec_with_init(dir.path(), &fake_elf(&[PT_LOAD]));
        let first = dir.path().join("first.img");
        let second = dir.path().join("second.img");
        build(&spec, &first, Compression::Zstd, 1_234_567).expect("first");
        build(&spec, &second, Compression::Zstd, 1_234_567).expect("second");
        let first = fs::read(first).expect("reads");
        assert_eq!(first, fs::read(second).expect("reads"));
        let records = parse(&zstd::decode_all(first.as_slice()).expect("zstd"));
        assert!(records.iter().all(|r| r.mtime == 1_234_567));
    }
}

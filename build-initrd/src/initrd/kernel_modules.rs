//! The kernel modules the initramfs carries: the requested ones and their dependencies, read
//! from a kernel's `lib/modules/<version>` directory as depmod left it, stored under the same
//! relative paths with a `modules.dep` trimmed to exactly what is carried.

use std::fs;
use std::path::{Path, PathBuf};

use xorbang_formats::module_index::{Builtin, DepEntry, ModuleError, ModuleName, ModulesDep};

use crate::file_error::{FileAction, FileError};
use crate::initrd::cpio::{Archive, CpioError};

/// What a QEMU/OVMF guest needs to reach a verified SquashFS root on a virtio disk, plus
/// fw_cfg for host config and efivarfs (loaded by the init on UEFI machines, since root
/// images need not carry the UKI kernel's modules, and systemd reads EFI variables through it). Every module costs boot time (the SCSI stack alone about 130 ms
/// under TCG), so other disk drivers (virtio_scsi, sd_mod, nvme, ahci) are asked for with
/// `--modules` by the images that need them.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "squashfs",
    "overlay",
    "loop",
    "dm_verity",
    "qemu_fw_cfg",
    "efivarfs",
];

#[derive(Debug, thiserror::Error)]
pub enum KernelModulesError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} has no name to take the kernel version from")]
    NoVersion { path: PathBuf },
    #[error("in {path}")]
    Index {
        path: PathBuf,
        #[source]
        source: ModuleError,
    },
    #[error("module file {0} is compressed; the init loads only plain .ko files (Debian ships those), so unpack the modules and rerun depmod")]
    Compressed(String),
    #[error("modules.dep names {0}, which is not a path inside the modules directory")]
    OutsidePath(String),
    #[error(transparent)]
    Archive(#[from] CpioError),
}

/// Adds the `wanted` modules and their dependencies (built-in ones skipped) to `archive`
/// under `lib/modules/<version>/`, with the trimmed `modules.dep` and the kernel's
/// `modules.builtin`. Returns how many module files were added.
pub fn add_modules(
    archive: &mut Archive,
    modules_dir: &Path,
    wanted: &[ModuleName],
) -> Result<usize, KernelModulesError> {
    let version = kernel_version(modules_dir)?;
    let target = format!("lib/modules/{version}");
    let dep_path = modules_dir.join("modules.dep");
    let dep =
        ModulesDep::parse(&read_text(&dep_path)?).map_err(|source| KernelModulesError::Index {
            path: dep_path.clone(),
            source,
        })?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin_text = read_text(&builtin_path)?;
    let order = dep
        .load_order(wanted, &Builtin::parse(&builtin_text))
        .map_err(|source| KernelModulesError::Index {
            path: dep_path,
            source,
        })?;
    for entry in &order {
        let contents = read_module(modules_dir, entry)?;
        archive.add_file(&format!("{target}/{}", entry.path), 0o644, contents)?;
    }
    let trimmed = dep.restricted_to(&order).to_string();
    archive.add_file(
        &format!("{target}/modules.dep"),
        0o644,
        trimmed.into_bytes(),
    )?;
    archive.add_file(
        &format!("{target}/modules.builtin"),
        0o644,
        builtin_text.into_bytes(),
    )?;
    Ok(order.len())
}

/// `lib/modules/6.1.0-56-amd64` → `6.1.0-56-amd64`, resolving `.` and symlinks first so that
/// `--kernel-modules .` works too.
fn kernel_version(modules_dir: &Path) -> Result<String, KernelModulesError> {
    let resolved =
        fs::canonicalize(modules_dir).map_err(FileError::of(FileAction::Inspect, modules_dir))?;
    resolved
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| KernelModulesError::NoVersion {
            path: modules_dir.to_owned(),
        })
}

fn read_module(modules_dir: &Path, entry: &DepEntry) -> Result<Vec<u8>, KernelModulesError> {
    if !entry.path.ends_with(".ko") {
        return Err(KernelModulesError::Compressed(entry.path.clone()));
    }
    let relative = Path::new(&entry.path);
    if relative.is_absolute() || relative.components().any(|c| c.as_os_str() == "..") {
        return Err(KernelModulesError::OutsidePath(entry.path.clone()));
    }
    let path = modules_dir.join(relative);
    Ok(fs::read(&path).map_err(FileError::of(FileAction::Read, &path))?)
}

fn read_text(path: &Path) -> Result<String, KernelModulesError> {
    Ok(fs::read_to_string(path).map_err(FileError::of(FileAction::Read, path))?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::initrd::cpio::Node;

    const DEP: &str = "\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/fs/squashfs/squashfs.ko:
kernel/fs/unwanted/unwanted.ko:
";

    /// A fake `lib/modules/6.1.0-test` tree: each `.ko` contains its own path, so the test
    /// can tell which file landed where.
    pub(crate) fn fake_modules_dir(dep: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("6.1.0-test");
        for line in dep.lines() {
            let (path, _) = line.split_once(':').expect("dep line");
            let file = dir.join(path);
            fs::create_dir_all(file.parent().expect("has parent")).expect("mkdir");
            fs::write(&file, path).expect("write .ko");
        }
        fs::write(dir.join("modules.dep"), dep).expect("modules.dep");
        fs::write(dir.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").expect("builtin");
        fs::write(dir.join("modules.order"), "").expect("order");
        (root, dir)
    }

    fn names(list: &[&str]) -> Vec<ModuleName> {
        list.iter().map(|name| ModuleName::new(name)).collect()
    }

    fn file_text(archive: &Archive, path: &str) -> String {
        match archive.get(path).map(|entry| &entry.node) {
            Some(Node::File(contents)) => String::from_utf8(contents.clone()).expect("UTF-8"),
            other => panic!("{path}: expected a file, found {other:?}"),
        }
    }

    #[test]
    fn the_closure_and_a_trimmed_index_are_added() {
        let (_root, dir) = fake_modules_dir(DEP);
        let mut archive = Archive::new();
        let count = add_modules(
            &mut archive,
            &dir,
            &names(&["dm-verity", "ext4", "virtio_blk"]),
        )
        .expect("adds");
        assert_eq!(count, 5);
        let base = "lib/modules/6.1.0-test";
        let files: Vec<&str> = archive
            .paths()
            .filter(|p| matches!(archive.get(p).map(|e| &e.node), Some(Node::File(_))))
            .collect();
        let expected: Vec<String> = [
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/md/dm-bufio.ko",
            "kernel/drivers/md/dm-mod.ko",
            "kernel/drivers/md/dm-verity.ko",
            "kernel/drivers/virtio/virtio.ko",
            "modules.builtin",
            "modules.dep",
        ]
        .iter()
        .map(|p| format!("{base}/{p}"))
        .collect();
        assert_eq!(files, expected);
        assert_eq!(
            file_text(&archive, &format!("{base}/kernel/drivers/md/dm-mod.ko")),
            "kernel/drivers/md/dm-mod.ko"
        );
        let trimmed = ModulesDep::parse(&file_text(&archive, &format!("{base}/modules.dep")))
            .expect("parses");
        let mut kept: Vec<String> = trimmed.names().map(ToString::to_string).collect();
        kept.sort();
        assert_eq!(
            kept,
            ["dm_bufio", "dm_mod", "dm_verity", "virtio", "virtio_blk"]
        );
        assert_eq!(
            file_text(&archive, &format!("{base}/modules.builtin")),
            "kernel/fs/ext4/ext4.ko\n"
        );
    }

    #[test]
    fn an_unknown_module_is_named() {
        let (_root, dir) = fake_modules_dir(DEP);
        let err = add_modules(
            &mut Archive::new(),
            &dir,
            &names(&["squashfs", "nosuch-mod"]),
        )
        .expect_err("unknown module");
        assert!(matches!(
            &err,
            KernelModulesError::Index { source: ModuleError::Unknown(name), .. } if name.as_str() == "nosuch_mod"
        ));
    }

    #[test]
    fn compressed_modules_are_refused_by_path() {
        let (_root, dir) = fake_modules_dir("kernel/fs/squashfs/squashfs.ko.zst:\n");
        let err =
            add_modules(&mut Archive::new(), &dir, &names(&["squashfs"])).expect_err("compressed");
        assert!(matches!(&err, KernelModulesError::Compressed(p) if p.ends_with(".ko.zst")));
        assert!(err.to_string().contains("squashfs.ko.zst"));
    }

    #[test]
    fn a_missing_module_file_or_index_names_the_path() {
        let (_root, dir) = fake_modules_dir(DEP);
        fs::remove_file(dir.join("kernel/fs/squashfs/squashfs.ko")).expect("remove");
        let err = add_modules(&mut Archive::new(), &dir, &names(&["squashfs"]))
            .expect_err("missing file");
        assert!(
            err.to_string().contains("kernel/fs/squashfs/squashfs.ko"),
            "{err}"
        );
        fs::remove_file(dir.join("modules.builtin")).expect("remove");
        let err = add_modules(&mut Archive::new(), &dir, &[]).expect_err("no builtin");
        assert!(err.to_string().contains("modules.builtin"), "{err}");
    }

    #[test]
    fn paths_leaving_the_modules_directory_are_refused() {
        let (_root, dir) = fake_modules_dir("kernel/a.ko:\n");
        fs::write(dir.join("modules.dep"), "../../evil/a.ko:\n").expect("rewrite");
        let err = add_modules(&mut Archive::new(), &dir, &names(&["a"])).expect_err("outside");
        assert!(matches!(err, KernelModulesError::OutsidePath(_)));
    }
}

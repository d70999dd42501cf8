//! Everything a VM scenario boots, made here and cached outside the repo: Debian's kernel and
//! modules, a Debian bookworm root with systemd (mmdebstrap), the test images built from it
//! with our own `xorbang-build`, a tiny busybox root, and the initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Packages of the test root besides `minbase`: systemd as PID 1, udev so device units
/// (serial getty) work as on a real machine, dmsetup for the agent's verity checks.
const ROOTFS_PACKAGES: &str = "systemd-sysv,udev,dmsetup";
const DEBIAN_SUITE: &str = "bookworm";
const AGENT: &str = include_str!("../guest/xorbang-test-agent");
const AGENT_UNIT: &str = include_str!("../guest/xorbang-test-agent.service");
/// The code behind `xorbang-build image`: cached images are rebuilt when it changes (and
/// not on every change of the init, which the build tool also links).
const IMAGE_RECIPE: &str = include_str!("../../build-initrd/src/image/squashfs.rs");

/// The root partition's label as `xorbang-build disk` writes it (systemd-repart's).
pub const ROOT_PARTLABEL: &str = "root-x86-64";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FixtureError + '_ {
    move |source| FixtureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The kernel built from `kernel-config/` (everything the boot needs built in), cached under
/// `cache/custom-kernel`; the first build takes a while on two cores.
pub fn custom_kernel(cache: &Path) -> Result<PathBuf, FixtureError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/build-kernel");
    let dir = cache.join("custom-kernel");
    eprintln!("fixtures: the custom kernel (kernel-config/build-kernel; slow the first time)");
    run(Command::new(script).arg(&dir))?;
    Ok(dir.join("bzImage"))
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(command: &mut Command) -> Result<String, FixtureError> {
    let printable = crate::qemu::shell_quoted(command);
    let output = command.output().map_err(|error| FixtureError::Command {
        command: printable.clone(),
        detail: error.to_string(),
    })?;
    if !output.status.success() {
        return Err(FixtureError::Command {
            command: printable,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The release binaries of the init and the build tool, built now if stale.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub init: PathBuf,
    pub build: PathBuf,
}

pub fn build_binaries() -> Result<Binaries, FixtureError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    run(Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "xorbang-init",
            "-p",
            "xorbang-build",
        ])
        .arg("--manifest-path")
        .arg(manifest))?;
    // The runner itself is a release binary of the same target directory.
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| FixtureError::Other(format!("{} has no parent", exe.display())))?;
    Ok(Binaries {
        init: dir.join("xorbang-init"),
        build: dir.join("xorbang-build"),
    })
}

#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` with modules.dep.
    pub modules: PathBuf,
}

/// Debian's current `linux-image-amd64` kernel, unpacked (not installed) into the cache. With
/// no package index at hand the newest cached kernel is used.
pub fn debian_kernel(cache: &Path) -> Result<Kernel, FixtureError> {
    let kernels = cache.join("kernel");
    let package = match current_kernel_package() {
        Ok(package) => package,
        Err(error) => newest_cached(&kernels).ok_or(error)?,
    };
    let dir = kernels.join(&package);
    if !dir.join("ready").exists() {
        unpack_kernel(&package, &dir)?;
    }
    kernel_in(&dir)
}

fn current_kernel_package() -> Result<String, FixtureError> {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    depends
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .filter(|package| package.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| {
            FixtureError::Other(
                "apt-cache names no linux-image-* for linux-image-amd64 (run apt-get update)"
                    .into(),
            )
        })
}

fn newest_cached(kernels: &Path) -> Option<String> {
    let mut ready: Vec<String> = std::fs::read_dir(kernels)
        .ok()?
        .flatten()
        .filter(|entry| entry.path().join("ready").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    ready.sort();
    ready.pop()
}

fn unpack_kernel(package: &str, dir: &Path) -> Result<(), FixtureError> {
    eprintln!("fixtures: fetching {package}");
    let staging = dir.with_extension("partial");
    remove_if_present(&staging)?;
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(&staging))?;
    let deb = find_file(&staging, ".deb")?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(staging.join("root")))?;
    std::fs::remove_file(&deb).map_err(io(&deb))?;
    let release = only_entry(&staging.join("root/lib/modules"))?;
    run(Command::new("depmod")
        .arg("-b")
        .arg(staging.join("root"))
        .arg(&release))?;
    std::fs::write(staging.join("ready"), package).map_err(io(&staging))?;
    remove_if_present(dir)?;
    std::fs::rename(&staging, dir).map_err(io(dir))
}

fn kernel_in(dir: &Path) -> Result<Kernel, FixtureError> {
    let root = dir.join("root");
    let release = only_entry(&root.join("lib/modules"))?;
    Ok(Kernel {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        modules: root.join("lib/modules").join(release),
    })
}

fn only_entry(dir: &Path) -> Result<String, FixtureError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => Err(FixtureError::Other(format!(
            "{} holds {n} entries, expected one",
            dir.display()
        ))),
    }
}

fn find_file(dir: &Path, suffix: &str) -> Result<PathBuf, FixtureError> {
    std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| FixtureError::Other(format!("no *{suffix} in {}", dir.display())))
}

fn remove_if_present(path: &Path) -> Result<(), FixtureError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io(path)(error)),
        _ => Ok(()),
    }
}

fn cache_key(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A Debian root with systemd as a tarball, made once by mmdebstrap.
pub fn debian_rootfs(cache: &Path) -> Result<PathBuf, FixtureError> {
    let key = cache_key(&[DEBIAN_SUITE.as_bytes(), ROOTFS_PACKAGES.as_bytes()]);
    let tar = cache.join(format!("rootfs/{DEBIAN_SUITE}-{key}.tar"));
    if tar.exists() {
        return Ok(tar);
    }
    eprintln!("fixtures: building the Debian {DEBIAN_SUITE} root with mmdebstrap (once)");
    let dir = tar.parent().unwrap_or(cache);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = tar.with_extension("partial.tar");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", "--mode=root"])
        .arg(format!("--include={ROOTFS_PACKAGES}"))
        .arg(DEBIAN_SUITE)
        .arg(&partial))?;
    std::fs::rename(&partial, &tar).map_err(io(&tar))?;
    Ok(tar)
}

/// The systemd test image and its variants: the Debian root plus the test agent and a
/// canary file, packed by `xorbang-build image` (SquashFS + hash tree) and laid out by
/// `xorbang-build disk` (root and root-verity partitions, PARTUUIDs from the root hash).
#[derive(Debug, Clone)]
pub struct SystemImage {
    /// The SquashFS; its hash tree and manifest lie beside it.
    pub image: PathBuf,
    pub disk: PathBuf,
    pub root_hash: String,
    /// The disk with one byte of the canary's data flipped.
    pub tampered_data: PathBuf,
    /// The disk with one byte of the canary's digest flipped in the hash tree.
    pub tampered_hash: PathBuf,
    /// The hash tree cut to half its length, to attach as a disk of its own.
    pub truncated_tree: PathBuf,
    /// The extension images (NAME.raw, NAME.roothash) also inside the image, and a
    /// tampered copy of one.
    pub extensions: PathBuf,
}

pub fn system_image(
    cache: &Path,
    rootfs_tar: &Path,
    build: &Path,
) -> Result<SystemImage, FixtureError> {
    let key = cache_key(&[
        rootfs_tar.as_os_str().as_encoded_bytes(),
        AGENT.as_bytes(),
        AGENT_UNIT.as_bytes(),
        IMAGE_RECIPE.as_bytes(),
        crate::tamper::RECIPE.as_bytes(),
        crate::extension_fixtures::RECIPE.as_bytes(),
        crate::extension_fixtures::BUILD_RECIPE.as_bytes(),
    ]);
    let dir = cache.join("images").join(format!("system-{key}"));
    let ready = dir.join("ready");
    if !ready.exists() {
        eprintln!("fixtures: building the systemd test image");
        remove_if_present(&dir)?;
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).map_err(io(&tree))?;
        run(Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .arg("-xf")
            .arg(rootfs_tar))?;
        install_agent(&tree)?;
        crate::tamper::install_canary(&tree)?;
        let extensions = dir.join("extensions");
        std::fs::create_dir_all(&extensions).map_err(io(&extensions))?;
        let pins = crate::extension_fixtures::install(build, &extensions, &tree)?;
        let image = dir.join("root.squashfs");
        pack_tree(build, &tree, &image, &pins)?;
        run(Command::new(build)
            .args(["disk", "--image"])
            .arg(&image)
            .arg("-o")
            .arg(dir.join("disk.img")))?;
        crate::tamper::make_variants(&dir)?;
        std::fs::write(&ready, "").map_err(io(&ready))?;
        prune_other_versions(&dir)?;
    }
    Ok(SystemImage {
        root_hash: root_hash_of(&dir.join("root.squashfs.json"))?,
        image: dir.join("root.squashfs"),
        disk: dir.join("disk.img"),
        tampered_data: dir.join(crate::tamper::TAMPERED_DATA),
        tampered_hash: dir.join(crate::tamper::TAMPERED_HASH),
        truncated_tree: dir.join(crate::tamper::TRUNCATED_TREE),
        extensions: dir.join("extensions"),
    })
}

fn root_hash_of(manifest: &Path) -> Result<String, FixtureError> {
    let text = std::fs::read_to_string(manifest).map_err(io(manifest))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| FixtureError::Other(format!("{}: {error}", manifest.display())))?;
    json["root_hash"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| FixtureError::Other(format!("{} has no root_hash", manifest.display())))
}

/// Removes the other cached versions of an image (`images/system-<other key>`), so the
/// cache does not grow with every change of the image recipe.
fn prune_other_versions(keep: &Path) -> Result<(), FixtureError> {
    let (Some(parent), Some(name)) = (keep.parent(), keep.file_name()) else {
        return Ok(());
    };
    let name = name.to_string_lossy();
    let prefix = name.rsplit_once('-').map_or(&*name, |(prefix, _)| prefix);
    for entry in std::fs::read_dir(parent).map_err(io(parent))?.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other != name && other.rsplit_once('-').is_some_and(|(p, _)| p == prefix) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), FixtureError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, text).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Packs `tree` into a SquashFS with our own build tool, then drops the tree.
fn pack_tree(
    build: &Path,
    tree: &Path,
    image: &Path,
    extra: &[String],
) -> Result<(), FixtureError> {
    run(Command::new(build)
        .arg("image")
        .arg(tree)
        .arg("-o")
        .arg(image)
        .args(extra))?;
    remove_if_present(tree)
}

fn install_agent(tree: &Path) -> Result<(), FixtureError> {
    write_file(
        &tree.join("usr/lib/xorbang-test/xorbang-test-agent"),
        AGENT,
        0o755,
    )?;
    let unit = tree.join("usr/lib/systemd/system/xorbang-test-agent.service");
    write_file(&unit, AGENT_UNIT, 0o644)?;
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(io(&wants))?;
    let link = wants.join("xorbang-test-agent.service");
    std::os::unix::fs::symlink("/usr/lib/systemd/system/xorbang-test-agent.service", &link)
        .map_err(io(&link))?;
    // Root logs in without a password on the demo's serial console.
    let shadow = tree.join("etc/shadow");
    let text = std::fs::read_to_string(&shadow).map_err(io(&shadow))?;
    let text: String = text
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 1 && fields[0] == "root" {
                fields[1] = "";
            }
            fields.join(":") + "\n"
        })
        .collect();
    std::fs::write(&shadow, text).map_err(io(&shadow))
}

/// A tiny root: static busybox and an /sbin/init that reports and powers off. Boots in
/// seconds, for scenarios about the initramfs itself.
/// The busybox root: the SquashFS, its hash tree and root hash (from `xorbang-build image`).
#[derive(Debug, Clone)]
pub struct BusyboxImage {
    pub image: PathBuf,
    pub tree: PathBuf,
    pub root_hash: String,
}

pub fn busybox_image(cache: &Path, build: &Path) -> Result<BusyboxImage, FixtureError> {
    let key = cache_key(&[BUSYBOX_INIT.as_bytes(), IMAGE_RECIPE.as_bytes()]);
    let dir = cache.join("images").join(format!("busybox-{key}"));
    let image = dir.join("root.squashfs");
    if !dir.join("ready").exists() {
        build_busybox_image(&dir, build, &image)?;
    }
    Ok(BusyboxImage {
        root_hash: root_hash_of(&dir.join("root.squashfs.json"))?,
        tree: dir.join("root.squashfs.verity"),
        image,
    })
}

fn build_busybox_image(dir: &Path, build: &Path, image: &Path) -> Result<(), FixtureError> {
    let busybox = Path::new("/bin/busybox");
    let tree = dir.join("tree");
    remove_if_present(dir)?;
    for sub in ["bin", "sbin", "proc", "sys", "dev", "run"] {
        let path = tree.join(sub);
        std::fs::create_dir_all(&path).map_err(io(&path))?;
    }
    let target = tree.join("bin/busybox");
    std::fs::copy(busybox, &target).map_err(io(busybox))?;
    let sh = tree.join("bin/sh");
    std::os::unix::fs::symlink("busybox", &sh).map_err(io(&sh))?;
    write_file(&tree.join("sbin/init"), BUSYBOX_INIT, 0o755)?;
    pack_tree(build, &tree, image, &[])?;
    let ready = dir.join("ready");
    std::fs::write(&ready, "").map_err(io(&ready))?;
    prune_other_versions(dir)
}

/// Reports the scenario as passed, after checking that `/` is the verity mapping when the
/// scenario is about that, and powers off.
const BUSYBOX_INIT: &str = r#"#!/bin/sh
/bin/busybox mount -t proc proc /proc
scenario=$(/bin/busybox sed -n 's/.*xtest\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
case "$scenario" in
    verity-initramfs-file)
        if /bin/busybox grep -q '^/dev/mapper/root / squashfs ro' /proc/mounts; then
            echo "XORBANG-TEST: PASS $scenario"
        else
            echo "XORBANG-TEST: FAIL $scenario: / is not the verity mapping: $(/bin/busybox head -n 3 /proc/mounts)"
        fi ;;
    *) echo "XORBANG-TEST: PASS $scenario" ;;
esac
/bin/busybox poweroff -f
"#;

/// An initramfs of this run, `name` in the work directory: our init, the module closure of
/// `kernel` (none for a kernel with everything built in), and `files` (source, path in the
/// initramfs) added.
pub fn initrd(
    work: &Path,
    name: &str,
    binaries: &Binaries,
    kernel: Option<&Kernel>,
    files: &[(&Path, &str)],
) -> Result<PathBuf, FixtureError> {
    let initrd = work.join(name);
    let mut command = Command::new(&binaries.build);
    command
        .arg("initrd")
        .arg("--init")
        .arg(&binaries.init)
        .arg("-o")
        .arg(&initrd);
    if let Some(kernel) = kernel {
        command.arg("--kernel-modules").arg(&kernel.modules);
    }
    add_files(&mut command, files);
    run(&mut command)?;
    Ok(initrd)
}

/// The initramfs with the default modules and `extra_modules` (and what they need).
pub fn initrd_with_modules(
    work: &Path,
    name: &str,
    binaries: &Binaries,
    kernel: &Kernel,
    extra_modules: &[&str],
) -> Result<PathBuf, FixtureError> {
    let initrd = work.join(name);
    let modules: Vec<&str> = xorbang_build::initrd::kernel_modules::DEFAULT_MODULES
        .iter()
        .chain(extra_modules)
        .copied()
        .collect();
    run(Command::new(&binaries.build)
        .arg("initrd")
        .arg("--init")
        .arg(&binaries.init)
        .arg("--kernel-modules")
        .arg(&kernel.modules)
        .arg("--modules")
        .arg(modules.join(","))
        .arg("-o")
        .arg(&initrd))?;
    Ok(initrd)
}

fn add_files(command: &mut Command, files: &[(&Path, &str)]) {
    for (source, target) in files {
        let mut addition = source.as_os_str().to_owned();
        addition.push(":");
        addition.push(target);
        command.arg("--add").arg(addition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_config(fragment: &str, dotconfig: &str) -> std::process::Output {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fragment"), fragment).expect("write");
        std::fs::write(dir.path().join("config"), dotconfig).expect("write");
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/check-config"))
            .arg(dir.path().join("fragment"))
            .arg(dir.path().join("config"))
            .output()
            .expect("check-config runs")
    }

    #[test]
    fn check_config_names_every_option_kconfig_dropped() {
        let fragment = "# why\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n# CONFIG_D is not set\n";
        let matching = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n# CONFIG_D is not set\n";
        assert!(check_config(fragment, matching).status.success());
        let dropped = check_config(fragment, "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\n");
        assert_eq!(dropped.status.code(), Some(1));
        let text = String::from_utf8_lossy(&dropped.stderr);
        for name in [
            "CONFIG_B: wanted y, got n",
            "CONFIG_C: wanted \"x\", absent",
            "CONFIG_D: wanted n, got y",
        ] {
            assert!(text.contains(name), "{text}");
        }
        assert!(!text.contains("CONFIG_A"), "{text}");
    }

    /// The fragment against the kernel the runner built, once it exists (the build script
    /// runs the same check before it calls a build done).
    #[test]
    fn the_built_kernel_has_every_fragment_option() {
        let Ok(cache) = crate::config::cache_dir() else {
            eprintln!("skipped: no cache directory");
            return;
        };
        let dotconfig = cache.join("custom-kernel/.config");
        if !dotconfig.exists() {
            eprintln!(
                "skipped: no custom kernel built yet ({})",
                dotconfig.display()
            );
            return;
        }
        let fragment =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/xorbang.config");
        let fragment = std::fs::read_to_string(fragment).expect("fragment");
        let dotconfig = std::fs::read_to_string(dotconfig).expect(".config");
        let output = check_config(&fragment, &dotconfig);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

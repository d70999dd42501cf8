//! Privileged tier: the real `xorbang-init` binary builds its mount stack on the host, as
//! root, over a loop-attached SquashFS, inside a private mount namespace (`unshare -m`), and
//! a shell in the same namespace checks what the booted system would see. When not root or
//! when the tools are missing, each test prints `SKIPPED <test>: <reason>` on the terminal
//! (cargo itself has no skipped result) and returns.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

struct LoopImage {
    _dir: tempfile::TempDir,
    device: String,
}

impl Drop for LoopImage {
    fn drop(&mut self) {
        if let Err(error) = Command::new("losetup").arg("-d").arg(&self.device).status() {
            eprintln!("losetup -d {}: {error}", self.device);
        }
    }
}

/// Whether `test` can run here; if not, it is reported as skipped.
fn can_run(test: &str) -> bool {
    support::can_run_privileged(
        test,
        "loop devices and mounts",
        &["mksquashfs", "losetup", "unshare"],
    )
}

/// `dir/root.squashfs`: a root with /etc/hostname, /usr/local and an executable /sbin/init.
fn make_squashfs(dir: &Path, hostname: &str) -> PathBuf {
    let tree = dir.join("tree");
    for sub in ["etc", "usr/local", "sbin", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(tree.join(sub)).expect("mkdir");
    }
    std::fs::write(tree.join("etc/hostname"), format!("{hostname}\n")).expect("write");
    let init = tree.join("sbin/init");
    std::fs::write(&init, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let image = dir.join("root.squashfs");
    let status = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs runs");
    assert!(status.success());
    image
}

/// A SquashFS root with /etc, /usr and an executable /sbin/init, attached read-only.
fn squashfs_on_loop() -> LoopImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = make_squashfs(dir.path(), "base");
    let output = Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&image)
        .output()
        .expect("losetup runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let device = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    LoopImage { _dir: dir, device }
}

/// Runs the init (stopping before switch_root) and then `checks` in one private mount
/// namespace; returns the combined output. `$ROOT` is the fake initramfs root.
fn boot_then(cmdline: &str, checks: &str) -> (bool, String) {
    boot_with_files(&[], cmdline, checks)
}

/// Like [`boot_then`], with `files` (source, name) copied into the fake initramfs root first.
fn boot_with_files(files: &[(&Path, &str)], cmdline: &str, checks: &str) -> (bool, String) {
    let root: PathBuf = tempfile::tempdir().expect("tempdir").keep();
    for (source, name) in files {
        std::fs::copy(source, root.join(name)).expect("copy into the fake initramfs");
    }
    let script = format!(
        "set -e; \"$INIT\" --root \"$ROOT\" --no-switch-root --cmdline \"$CMDLINE\"; {checks}"
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("INIT", env!("CARGO_BIN_EXE_xorbang-init"))
        .env("ROOT", &root)
        .env("CMDLINE", cmdline)
        .output()
        .expect("unshare runs");
    // The mounts died with the namespace; only empty directories are left.
    std::fs::remove_dir_all(&root).expect("clean up");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn production_root_is_read_only() {
    if !can_run("privileged::production_root_is_read_only") {
        return;
    }
    let image = squashfs_on_loop();
    let (ok, text) = boot_then(
        &format!("root={} xorbang.verity=optional", image.device),
        r#"if touch "$ROOT/sysroot/etc/probe" 2>/dev/null; then echo WRITABLE; else echo READ-ONLY; fi
           cat "$ROOT/sysroot/etc/hostname""#,
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("READ-ONLY") && !text.contains("WRITABLE"),
        "{text}"
    );
    assert!(text.contains("\nbase\n"), "{text}");
    assert!(
        text.contains(r#"boot-report {"version":1,"mode":"production""#),
        "{text}"
    );
}

#[test]
fn dev_root_is_writable_and_leaves_the_base_alone() {
    if !can_run("privileged::dev_root_is_writable_and_leaves_the_base_alone") {
        return;
    }
    let image = squashfs_on_loop();
    let (ok, text) = boot_then(
        &format!("root={} xorbang.dev=1", image.device),
        r#"echo changed > "$ROOT/sysroot/etc/hostname"
           echo new > "$ROOT/sysroot/usr/local/file"
           echo "sysroot: $(cat "$ROOT/sysroot/etc/hostname")"
           echo "base: $(cat "$ROOT/run/xorbang/base/etc/hostname")"
           readlink "$ROOT/run/systemd/volatile-root""#,
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("sysroot: changed") && text.contains("base: base"),
        "{text}"
    );
    // systemd-gpt-auto-generator reads only the /dev/block/MAJOR:MINOR form.
    let rdev = std::os::unix::fs::MetadataExt::rdev(
        &std::fs::metadata(&image.device).expect("loop device"),
    );
    let node = format!(
        "/dev/block/{}:{}\n",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    );
    assert!(text.contains(&node), "{text}");
    assert!(
        text.contains(r#""mode":"dev","dev":{"persistent":false"#),
        "{text}"
    );
}

#[test]
fn a_device_without_squashfs_is_refused_by_name() {
    if !can_run("privileged::a_device_without_squashfs_is_refused_by_name") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).expect("write");
    let output = Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&blank)
        .output()
        .expect("losetup runs");
    let device = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let image = LoopImage { _dir: dir, device };
    let (ok, text) = boot_then(
        &format!("root={} xorbang.verity=optional", image.device),
        "true",
    );
    assert!(!ok, "{text}");
    let expected = format!(
        "({}) holds no SquashFS or EROFS image (found no known filesystem)",
        image.device
    );
    assert!(text.contains(&expected), "{text}");
}

/// How a PXE-served initramfs boots: the root image is a file inside it, attached to a loop
/// device by the init itself.
#[test]
fn an_image_file_in_the_initramfs_is_attached_and_mounted() {
    if !can_run("privileged::an_image_file_in_the_initramfs_is_attached_and_mounted") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = make_squashfs(dir.path(), "from-a-file");
    let (ok, text) = boot_with_files(
        &[(&image, "root.squashfs")],
        "root=/root.squashfs xorbang.verity=optional",
        r#"cat "$ROOT/sysroot/etc/hostname"
           device=$(losetup -n -O NAME -j "$ROOT/root.squashfs")
           echo "read-only: $(cat /sys/block/${device#/dev/}/ro)"
           losetup -d "$device""#,
    );
    assert!(ok, "{text}");
    assert!(text.lines().any(|line| line == "from-a-file"), "{text}");
    assert!(
        text.contains("attached /root.squashfs to /dev/loop"),
        "{text}"
    );
    assert!(text.contains("read-only: 1"), "{text}");
}

/// Boots the production root with `config` as /host.toml in the fake initramfs, named by
/// `xorbang.config=`, then runs `checks`.
fn boot_with_host_config(config: &str, checks: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("host-config.toml");
    std::fs::write(&file, config).expect("write");
    let image = squashfs_on_loop();
    boot_with_files(
        &[(&file, "host.toml")],
        &format!(
            "root={} xorbang.verity=optional xorbang.config=/host.toml",
            image.device
        ),
        checks,
    )
}

/// A host config in the initramfs (where a PXE server's appended cpio puts it) becomes a
/// read-only /etc layer over the production root; the image itself is untouched.
#[test]
fn host_config_from_the_initramfs_is_layered_over_etc() {
    if !can_run("privileged::host_config_from_the_initramfs_is_layered_over_etc") {
        return;
    }
    let (ok, text) = boot_with_host_config(
        "version = 1\nhostname = \"from-config\"\n[[network]]\nname = \"en*\"\ndhcp = true\n",
        r#"echo "hostname: $(cat "$ROOT/sysroot/etc/hostname")"
           grep -x 'Name=en\*' "$ROOT/sysroot/etc/systemd/network/10-xorbang-0.network"
           if touch "$ROOT/sysroot/etc/probe" 2>/dev/null; then echo WRITABLE; else echo READ-ONLY; fi
           echo "layer: $(cat "$ROOT/run/xorbang/host-config/etc/hostname")""#,
    );
    assert!(ok, "{text}");
    assert!(text.contains("hostname: from-config"), "{text}");
    assert!(text.contains("\nName=en*\n"), "{text}");
    assert!(
        text.contains("READ-ONLY") && !text.contains("WRITABLE"),
        "{text}"
    );
    assert!(text.contains("layer: from-config"), "{text}");
    assert!(
        text.contains(r#""host_config":{"origin":"initramfs:/host.toml","trust":"signed","signed_by":null,"applied":true"#),
        "{text}"
    );
}

/// A config with one bad value is not applied at all: the hostname of the image stays, no
/// network file appears, and the error names line and column.
#[test]
fn an_invalid_host_config_changes_nothing() {
    if !can_run("privileged::an_invalid_host_config_changes_nothing") {
        return;
    }
    let (ok, text) = boot_with_host_config(
        "version = 1\n[[network]]\nname = \"en*\"\ndhcp = true\n[users.\"bad user\"]\n",
        r#"echo "hostname: $(cat "$ROOT/sysroot/etc/hostname")"
           ls "$ROOT/sysroot/etc/systemd" 2>&1 || true
           ls "$ROOT/run/xorbang/host-config" 2>&1 || true"#,
    );
    assert!(ok, "{text}");
    assert!(text.contains("hostname: base"), "{text}");
    assert!(
        text.contains("host config initramfs:/host.toml: line 5, column "),
        "{text}"
    );
    assert!(text.contains("; trying the next source"), "{text}");
    assert!(
        text.contains(r#""host_config":{"origin":"initramfs:/host.toml","trust":"signed","signed_by":null,"applied":false"#),
        "{text}"
    );
    assert_eq!(
        text.matches("No such file or directory").count(),
        2,
        "{text}"
    );
}

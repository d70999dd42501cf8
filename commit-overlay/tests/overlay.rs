//! Privileged tier: a real OverlayFS upper, written by the kernel (whiteouts, an opaque
//! directory, copied-up files with their `trusted.overlay.origin`), committed by the real
//! binary. Needs root (mounts in a private namespace, trusted xattrs) and squashfs-tools; when
//! either is missing the test prints `SKIPPED …` on the terminal and returns.

// The skip convention of the init's integration tests.
#[path = "../../init/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

const HASH: &str = "ab12";
/// The options the init mounts dev overlays with.
const OPTIONS: &str = "redirect_dir=off,index=off,metacopy=off,xino=off,nfs_export=off";

fn can_run(test: &str) -> bool {
    support::can_run_privileged(
        test,
        "overlay mounts, trusted xattrs",
        &["mksquashfs", "unsquashfs", "unshare"],
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The base a dev boot would have below its overlays.
fn base(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    write(
        &base.join("usr/lib/os-release"),
        "ID=xorbang-test\nVERSION_ID=1\n",
    );
    write(&base.join("usr/bin/old"), "old\n");
    write(&base.join("etc/issue.net"), "Debian\n");
    write(&base.join("etc/keep/a"), "a\n");
    write(
        &base.join("var/lib/dpkg/status"),
        "Package: base-files\nStatus: install ok installed\nVersion: 12\n\n",
    );
    std::fs::create_dir_all(base.join("opt")).expect("opt");
    std::fs::create_dir_all(base.join("root")).expect("root");
    base
}

/// Mounts the root overlay and one per hierarchy over `dev`'s uppers, as a persistent dev
/// boot does, in a namespace of its own, and makes the changes through them.
fn change_through_overlays(base: &Path, dev: &Path, merged: &Path) {
    let script = format!(
        r#"set -e
        m="{merged}"; d="{dev}"; b="{base}"
        for o in root usr opt etc; do mkdir -p "$d/$o/upper" "$d/$o/work"; done
        mount -t overlay overlay -o "lowerdir=$b,upperdir=$d/root/upper,workdir=$d/root/work,{OPTIONS}" "$m"
        for h in usr opt etc; do
            mount -t overlay overlay -o "lowerdir=$b/$h,upperdir=$d/$h/upper,workdir=$d/$h/work,{OPTIONS}" "$m/$h"
        done
        printf '#!/bin/sh\necho tool\n' > "$m/usr/bin/tool" && chmod 755 "$m/usr/bin/tool"
        touch "$m/usr/bin/old"
        echo local > "$m/etc/local.conf"
        rm "$m/etc/issue.net"
        rm -r "$m/etc/keep" && mkdir "$m/etc/keep" && echo b > "$m/etc/keep/b"
        echo notes > "$m/root/notes"
        "#,
        merged = merged.display(),
        dev = dev.display(),
        base = base.display(),
    );
    let output = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn boot_report(dir: &Path, dev: &Path) -> PathBuf {
    let report = dir.join("boot.json");
    let json = format!(
        r#"{{"version":1,"mode":"dev","dev":{{"persistent":true,"dir":"{}","fresh":null,"kept":[]}},
            "root":{{"spec":"x","device":"/dev/vda","fstype":"squashfs","verified":true}},"verity":null,
            "modules_loaded":0,"init":"/sbin/init","stages":[],"uptime_start_us":0,"uptime_handoff_us":0}}"#,
        dev.display()
    );
    std::fs::write(&report, json).expect("report");
    report
}

/// Every xattr name in the tree at `dir`, as `path: name`.
fn xattrs_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let mut names = vec![0u8; 4096];
        let length = rustix::fs::llistxattr(&path, &mut names).expect("listxattr");
        for name in names[..length]
            .split(|byte| *byte == 0)
            .filter(|n| !n.is_empty())
        {
            found.push(format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(name)
            ));
        }
        if std::fs::symlink_metadata(&path).expect("lstat").is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    found
}

/// Unpacks the SquashFS of an extension image.
fn unpack(image: &Path, to: &Path) {
    let extension = xorbang_build::image::sysext::read_extension(image).expect("a valid DDI");
    let output = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(to)
        .arg("-o")
        .arg(extension.data.offset.to_string())
        .arg(image)
        .output()
        .expect("unsquashfs runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_kernel_written_upper_is_committed_without_overlay_xattrs() {
    if !can_run("overlay::a_kernel_written_upper_is_committed_without_overlay_xattrs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base(dir.path());
    let state = dir.path().join("state");
    let dev = state.join("xorbang/dev").join(HASH);
    let merged = dir.path().join("merged");
    std::fs::create_dir_all(&merged).expect("merged");
    change_through_overlays(&base, &dev, &merged);
    // The fixture must have made what the commit has to leave behind.
    let upper_xattrs = xattrs_below(&dev);
    for expected in [
        "usr/upper/bin/old: trusted.overlay.origin",
        "etc/upper/keep: trusted.overlay.opaque",
    ] {
        assert!(
            upper_xattrs.iter().any(|line| line.ends_with(expected)),
            "{expected} not in {upper_xattrs:#?}"
        );
    }

    let output = Command::new(env!("CARGO_BIN_EXE_xorbang-commit-overlay"))
        .args(["--name", "tools", "--base"])
        .arg(&base)
        .arg("--root")
        .arg(&base)
        .arg("--boot-report")
        .arg(boot_report(dir.path(), &dev))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "xorbang-commit-overlay: not committed: /etc/issue.net: deleted here; an extension can only add files, so the base's copy stays",
        "xorbang-commit-overlay: not committed: /etc/keep: replaces the base's directory (1 entries inside, not committed either); an extension can only add to a directory",
        "xorbang-commit-overlay: not committed: /root/notes: outside /usr, /opt and /etc, which extensions merge",
    ] {
        assert!(text.lines().any(|found| found == line), "{line} not in\n{text}");
    }
    assert!(state
        .join(format!("xorbang/dev/{HASH}.set-aside"))
        .is_file());

    let sysext = dir.path().join("sysext");
    unpack(&state.join("lib/extensions/tools.raw"), &sysext);
    assert_eq!(
        std::fs::read_to_string(sysext.join("usr/bin/tool")).expect("tool"),
        "#!/bin/sh\necho tool\n"
    );
    assert!(
        sysext.join("usr/bin/old").is_file(),
        "the copied-up file is committed"
    );
    let confext = dir.path().join("confext");
    unpack(&state.join("lib/confexts/tools.raw"), &confext);
    assert!(confext.join("etc/local.conf").is_file());
    assert!(
        !confext.join("etc/keep").exists(),
        "the opaque directory stays out"
    );
    for tree in [&sysext, &confext] {
        let overlay: Vec<String> = xattrs_below(tree)
            .into_iter()
            .filter(|line| line.contains("trusted.overlay."))
            .collect();
        assert!(
            overlay.is_empty(),
            "overlay xattrs in the image: {overlay:#?}"
        );
    }
}

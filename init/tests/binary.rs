//! The real `xorbang-init` binary, run unprivileged as a test program: every hard-wired input
//! is overridden, and a failed boot exits with status 1 instead of rebooting the machine.

// The privileged tests' gate is theirs alone.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::{Command, Output};

fn init(root: &Path, cmdline: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xorbang-init"))
        .arg("--root")
        .arg(root)
        .args(["--no-api-mounts", "--no-switch-root", "--cmdline", cmdline])
        .output()
        .expect("xorbang-init runs")
}

/// An initramfs root with an empty /sys/class/block: no device will ever appear.
fn empty_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("sys/class/block")).expect("mkdir");
    std::fs::create_dir_all(root.path().join("dev")).expect("mkdir");
    root
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_root_that_never_appears_is_named_within_the_budget() {
    let root = empty_root();
    let started = std::time::Instant::now();
    let output = init(
        root.path(),
        "root=PARTLABEL=nowhere xorbang.timeout=0.3 xorbang.verity=optional",
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("xorbang: root device PARTLABEL=nowhere did not appear within 0.3 s (block devices seen: none)"),
        "{text}"
    );
    assert!(
        text.contains("failure policy reboot (not PID 1: exiting instead)"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn a_malformed_value_is_refused_with_the_chosen_policy() {
    let root = empty_root();
    let output = init(
        root.path(),
        "root=/dev/vda xorbang.timeout=soon xorbang.failure=halt",
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains(
            "xorbang: bad kernel command line: xorbang.timeout=soon: expected a number of seconds"
        ),
        "{text}"
    );
    assert!(text.contains("failure policy halt"), "{text}");
}

#[test]
fn a_root_spec_it_cannot_read_is_refused() {
    let root = empty_root();
    let output = init(root.path(), "root=sda1");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("root=sda1"), "{}", stderr(&output));
}

#[test]
fn unknown_arguments_are_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_xorbang-init"))
        .arg("--frobnicate")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("unknown argument --frobnicate"));
}

#[test]
fn the_binary_is_statically_linked() {
    let Ok(output) = Command::new("file")
        .arg("-L")
        .arg(env!("CARGO_BIN_EXE_xorbang-init"))
        .output()
    else {
        support::skip(
            "binary::the_binary_is_statically_linked",
            "no `file` command here",
        );
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("static-pie linked") || text.contains("statically linked"),
        "{text}"
    );
}

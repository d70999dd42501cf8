//! The `xorbang-build` command line, run as a user would: argument syntax, the environment
//! (`SOURCE_DATE_EPOCH`, set on the child only), the one-line reports and error messages.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn xorbang_build(args: &[&str], epoch: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xorbang-build"));
    command.args(args).env_remove("SOURCE_DATE_EPOCH");
    if let Some(epoch) = epoch {
        command.env("SOURCE_DATE_EPOCH", epoch);
    }
    command.output().expect("xorbang-build runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The smallest file the init check accepts: an ELF64 header with no program headers.
fn write_fake_static_init(path: &Path) {
    let mut elf = vec![0u8; 64];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    fs::write(path, elf).expect("write init");
}

/// The newc mtime field of the first record (`dev`): the sixth field after the magic.
fn first_mtime(archive: &[u8]) -> u32 {
    let field = std::str::from_utf8(&archive[6 + 5 * 8..6 + 6 * 8]).expect("ASCII");
    u32::from_str_radix(field, 16).expect("hex")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn initrd_honours_source_date_epoch_and_reports_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = dir.path().join("init");
    write_fake_static_init(&init);
    let out = dir.path().join("initrd.img");
    let args = ["initrd", "--init", path_str(&init), "-o", path_str(&out)];
    let run = xorbang_build(&args, Some("1700000000"));
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = text(&run.stdout);
    assert!(report.contains("8 entries"), "{report}");
    assert!(report.contains("bytes uncompressed"), "{report}");
    let packed = fs::read(&out).expect("output");
    assert!(
        report.contains(&format!("{} bytes compressed", packed.len())),
        "{report}"
    );
    let archive = zstd::decode_all(packed.as_slice()).expect("zstd is the default");
    assert_eq!(first_mtime(&archive), 1_700_000_000);

    let run = xorbang_build(&args, None);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let archive = zstd::decode_all(fs::read(&out).expect("output").as_slice()).expect("zstd");
    assert_eq!(first_mtime(&archive), 0, "unset SOURCE_DATE_EPOCH means 0");
}

#[test]
fn a_malformed_source_date_epoch_is_an_error() {
    let run = xorbang_build(&["initrd", "--init", "/x", "-o", "/y"], Some("yesterday"));
    assert!(!run.status.success());
    assert!(text(&run.stderr).contains("SOURCE_DATE_EPOCH=\"yesterday\""));
}

#[test]
fn a_dynamic_init_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("initrd.img");
    let run = xorbang_build(
        &[
            "initrd",
            "--init",
            "/bin/ls",
            "-o",
            path_str(&out),
            "--compression",
            "gzip",
        ],
        None,
    );
    assert!(!run.status.success());
    let message = text(&run.stderr);
    assert!(
        message.contains("/bin/ls") && message.contains("PT_INTERP"),
        "{message}"
    );
    assert!(
        message.contains(path_str(&out)),
        "the output is named: {message}"
    );
    assert!(!out.exists());
}

#[test]
fn unknown_modules_are_named_and_modules_need_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = dir.path().join("init");
    write_fake_static_init(&init);
    let modules = dir.path().join("6.1.0-test");
    fs::create_dir_all(modules.join("kernel")).expect("mkdir");
    fs::write(modules.join("kernel/loop.ko"), "ko").expect("ko");
    fs::write(modules.join("modules.dep"), "kernel/loop.ko:\n").expect("dep");
    fs::write(modules.join("modules.builtin"), "").expect("builtin");
    let out = dir.path().join("initrd.img");
    let base = ["initrd", "--init", path_str(&init), "-o", path_str(&out)];

    let with_dir = [&base[..], &["--kernel-modules", path_str(&modules)]].concat();
    let run = xorbang_build(
        &[&with_dir[..], &["--modules", "loop,no_such"]].concat(),
        None,
    );
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("module no_such"),
        "{}",
        text(&run.stderr)
    );

    let run = xorbang_build(
        &[
            &with_dir[..],
            &["--modules", "loop", "--compression", "none"],
        ]
        .concat(),
        None,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("(1 kernel modules)"),
        "{}",
        text(&run.stdout)
    );

    let run = xorbang_build(&[&base[..], &["--modules", "loop"]].concat(), None);
    assert!(!run.status.success(), "--modules without --kernel-modules");
    assert!(
        text(&run.stderr).contains("--kernel-modules"),
        "{}",
        text(&run.stderr)
    );
}

#[test]
fn image_reports_its_size_or_a_missing_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("root.squashfs");
    let missing = dir.path().join("no-rootfs");
    let run = xorbang_build(&["image", path_str(&missing), "-o", path_str(&out)], None);
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("no-rootfs"),
        "{}",
        text(&run.stderr)
    );

    if Command::new("mksquashfs").arg("-version").output().is_err() {
        println!("note: mksquashfs not installed, skipping the image build");
        return;
    }
    let tree = dir.path().join("rootfs");
    fs::create_dir_all(tree.join("etc")).expect("mkdir");
    fs::write(tree.join("etc/hostname"), "xorbang\n").expect("hostname");
    let run = xorbang_build(
        &[
            "image",
            path_str(&tree),
            "-o",
            path_str(&out),
            "--compression",
            "xz",
        ],
        Some("1700000000"),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let size = fs::metadata(&out).expect("image").len();
    assert_eq!(
        text(&run.stdout).trim(),
        format!("{}: {size} bytes", out.display())
    );
}

//! Whole OS builds from `profiles/`: a built disk boots under OVMF with its extension merged
//! and its units running, a build is reproducible, and a bad profile is refused at its line.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use xorbang_formats::boot_report::Trust;
use xorbang_formats::text_position::line_col;

use crate::context::{
    parse_report, pass_line, report_line, Context, MEMORY_MIB, REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use crate::fixtures::os_build::{build_os, profile, BuiltOs};
use crate::harness::qemu::{AfterMarkers, Boot, LineMatch, Network, Vm};

/// `profiles/server.toml` built and booted through OVMF from its disk: the boot report names
/// the profile's IMAGE_ID and IMAGE_VERSION, the UKI's sealed command line selects the
/// `debug-tools` sysext, which the base pins; the init merges it, and systemd starts the
/// profile's units. The image built here is the profile plus one
/// check unit and `printk.time=0` (systemd's own console status lines are cut to the terminal's width): after
/// ssh and networkd it prints the agent's PASS line when both are active and the sysext's
/// strace runs, and powers the machine off as the agent does.
pub fn os_profile_boot(context: &Context) -> Result<(), String> {
    let dir = context.work.join("os-server");
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let server = std::fs::read_to_string(profile("server")).map_err(|error| error.to_string())?;
    // Kernel lines without time stamps, so the init's lines start as the runner reads them.
    let checked = server
        .replacen("enable = [", "enable = [\"xorbang-check.service\", ", 1)
        .replacen(
            "cmdline = \"console=ttyS0",
            "cmdline = \"console=ttyS0 printk.time=0",
            1,
        )
        + CHECK_UNIT;
    let checked_profile = dir.join("server-checked.toml");
    std::fs::write(&checked_profile, checked).map_err(|error| error.to_string())?;
    let built = build_os(
        &context.binaries,
        &context.cache,
        &checked_profile,
        &dir.join("out"),
    )
    .map_err(|error| error.to_string())?;
    let (vm, _) = context.firmware_vm("os-profile-boot", false, vec![built.file("disk.img")])?;
    let expect = [report_line(), pass_line("os-profile-boot")];
    let console = context.boot(&vm, "os-profile-boot", &expect)?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    if !report.root.verified
        || report.verity.map(|verity| verity.root_hash) != Some(built.root_hash.clone())
    {
        return Err(format!(
            "the root is not the built image {}",
            built.root_hash
        ));
    }
    let identity = (
        report.root.image_id.as_deref(),
        report.root.image_version.as_deref(),
    );
    if identity != (Some("xorbang-server"), Some("1")) {
        return Err(format!(
            "the report names the root {identity:?}, not the profile's xorbang-server 1"
        ));
    }
    let merged = report
        .extensions
        .iter()
        .any(|extension| extension.name == "debug-tools" && extension.trust == Trust::BaseManifest);
    match merged {
        true => Ok(()),
        false => Err(format!(
            "the debug-tools sysext was not merged as pinned by the base: {:?}",
            report.extensions
        )),
    }
}

/// The check `os_profile_boot` adds to the server profile.
const CHECK_UNIT: &str = r#"
[[files]]
path = "/etc/systemd/system/xorbang-check.service"
content = '''
[Unit]
Description=xorbang os-profile-boot check
After=ssh.service systemd-networkd.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for unit in ssh.service systemd-networkd.service; do systemctl is-active --quiet $unit || { printf "\\n%%s\\n" "XORBANG-TEST: FAIL os-profile-boot: $unit is $(systemctl is-active $unit)" > /dev/console; exit 1; }; done; /usr/bin/strace -V > /dev/null || { printf "\\n%%s\\n" "XORBANG-TEST: FAIL os-profile-boot: strace from the sysext does not run" > /dev/console; exit 1; }; printf "\\n%%s\\n" "XORBANG-TEST: PASS os-profile-boot" > /dev/console; systemctl poweroff --no-block'

[Install]
WantedBy=multi-user.target
'''
"#;

/// `profiles/demo.toml` booted the way `./tools/demo` boots it (its kernel and initramfs
/// straight from QEMU, its disk): the report names the verified EROFS root `xorbang-demo` 1, and
/// the demo user is logged in on the serial console, where the profile's motd greets them.
pub fn os_profile_demo(context: &Context) -> Result<(), String> {
    let built = build(context, "demo", &context.work.join("os-demo-a"))?;
    let vm = Vm {
        boot: Boot::Direct {
            kernel: built.file("vmlinuz"),
            initrd: built.file("initrd.img"),
            append: context.append(&format!("roothash={}", built.root_hash)),
        },
        disks: vec![built.file("disk.img")],
        fw_cfg: Vec::new(),
        network: Network::Isolated,
        memory_mib: MEMORY_MIB,
        timeout: SYSTEMD_TIMEOUT,
        // The demo has no agent to power it off: the run ends at the greeting.
        after_markers: AfterMarkers::Stop,
        writable_disks: false,
    };
    let expect = [report_line(), LineMatch::Exact(DEMO_GREETING.to_owned())];
    let console = context.boot(&vm, "os-profile-demo", &expect)?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    let identity = (
        report.root.verified,
        report.root.fstype.as_str(),
        report.root.image_id.as_deref(),
        report.root.image_version.as_deref(),
    );
    // The demo takes the default format: EROFS, through Debian's erofs module.
    match identity {
        (true, "erofs", Some("xorbang-demo"), Some("1")) => Ok(()),
        other => Err(format!(
            "the report's root (verified, fstype, IMAGE_ID, IMAGE_VERSION) is {other:?}"
        )),
    }
}

/// The first line of `profiles/demo.toml`'s /etc/motd, which login prints.
const DEMO_GREETING: &str =
    "This is xorbang: the root file system is a read-only EROFS image checked by dm-verity.";

/// `profiles/demo.toml` built twice into different directories, the second time with a cache
/// of its own that shares only the Debian root (mmdebstrap's own reproducibility is
/// mmdebstrap's): the same root hash and byte-identical artifacts.
pub fn os_profile_reproducible(context: &Context) -> Result<(), String> {
    let first = build(context, "demo", &context.work.join("os-demo-a"))?;
    let cache = context.work.join("os-demo-b-cache");
    let shared = context.cache.join("build/rootfs");
    std::fs::create_dir_all(cache.join("build")).map_err(|error| error.to_string())?;
    let link = cache.join("build/rootfs");
    if !link.exists() {
        std::os::unix::fs::symlink(&shared, &link).map_err(|error| error.to_string())?;
    }
    let second = build_os(
        &context.binaries,
        &cache,
        &profile("demo"),
        &context.work.join("os-demo-b"),
    )
    .map_err(|error| error.to_string())?;
    if first.root_hash != second.root_hash {
        return Err(format!(
            "root hashes differ: {} and {}",
            first.root_hash, second.root_hash
        ));
    }
    // The demo takes the default format, EROFS: its image is root.erofs.
    for artifact in [
        "root.erofs",
        "root.erofs.verity",
        "initrd.img",
        "xorbang-demo_1.efi",
        "disk.img",
    ] {
        let (a, b) = (
            digest(&first.file(artifact))?,
            digest(&second.file(artifact))?,
        );
        if a != b {
            return Err(format!("{artifact} differs between the two builds"));
        }
    }
    Ok(())
}

/// Bad profiles: an unknown key is refused with file, line and column before anything is
/// built; a sysext whose packages change /etc/passwd (a user made by a maintainer script) is
/// refused naming the path; a package no archive has and a mirror nothing answers on
/// (127.0.0.1:9) are named at their profile lines; a disk layout whose root partition is
/// smaller than the image is refused naming its definition. No output directory is left
/// behind.
pub fn os_profile_invalid(context: &Context) -> Result<(), String> {
    let dir = context.work.join("os-profile-invalid");
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let demo = std::fs::read_to_string(profile("demo")).map_err(|error| error.to_string())?;
    let unknown = dir.join("unknown-key.toml");
    let text = demo.replace("[system]\n", "[system]\nflavour = \"vanilla\"\n");
    std::fs::write(&unknown, &text).map_err(|error| error.to_string())?;
    let line = text
        .lines()
        .position(|line| line.starts_with("flavour"))
        .map_or(0, |at| at + 1);
    expect_refused_at(
        context,
        &unknown,
        &format!("{}:{line}:1: unknown field `flavour`", unknown.display()),
    )?;
    let etc = dir.join("sysext-writes-etc.toml");
    let text = format!("{demo}\n[[sysext]]\nname = \"sshd\"\npackages = [\"openssh-server\"]\n");
    std::fs::write(&etc, text).map_err(|error| error.to_string())?;
    let output = dir.join("out-sysext-writes-etc");
    let stderr = refused_output(context, &etc, &output)?;
    let expected = "/etc/passwd (by a maintainer script) changes a file the base has in /etc";
    if !stderr.contains("extension sshd: its packages change ") || !stderr.contains(expected) {
        return Err(format!("the refusal does not name /etc/passwd: {stderr}"));
    }
    if output.exists() {
        return Err(format!("{} was left behind", output.display()));
    }
    let unknown = dir.join("unknown-package.toml");
    let text = format!("{demo}\n[[sysext]]\nname = \"tools\"\npackages = [\"strace\", \"xorbang-no-such-package\"]\n");
    std::fs::write(&unknown, &text).map_err(|error| error.to_string())?;
    let (line, column) = position_of(&text, "\"xorbang-no-such-package\"");
    expect_refused_at(
        context,
        &unknown,
        &format!(
            "{}:{line}:{column}: step extension: package \"xorbang-no-such-package\" is not in the archive's package lists",
            unknown.display()
        ),
    )?;
    let mirror = dir.join("unreachable-mirror.toml");
    let text = demo.replace(
        "[debian]\n",
        "[debian]\nmirror = \"http://127.0.0.1:9/debian\"\n",
    );
    std::fs::write(&mirror, &text).map_err(|error| error.to_string())?;
    let (line, column) = position_of(&text, "\"http://127.0.0.1:9/debian\"");
    expect_refused_at(
        context,
        &mirror,
        &format!(
            "{}:{line}:{column}: step rootfs: the archive cannot be reached: http://127.0.0.1:9/debian/",
            mirror.display()
        ),
    )?;
    let layout = dir.join("small-root.d");
    std::fs::create_dir_all(&layout).map_err(|error| error.to_string())?;
    for (name, body) in [
        (
            "10-root.conf",
            "Type=root\nCopyBlocks=root-image\nSizeMaxBytes=1M\n",
        ),
        (
            "20-root-verity.conf",
            "Type=root-verity\nCopyBlocks=root-verity\n",
        ),
    ] {
        std::fs::write(layout.join(name), format!("[Partition]\n{body}"))
            .map_err(|error| error.to_string())?;
    }
    let small = dir.join("small-disk.toml");
    std::fs::write(
        &small,
        format!("{demo}\n[disk]\ndefinitions = \"small-root.d\"\n"),
    )
    .map_err(|error| error.to_string())?;
    expect_refused_at(
        context,
        &small,
        &format!(
            "step disk: cannot lay out the disk from the definitions in {}: {}: CopyBlocks=",
            layout.display(),
            layout.join("10-root.conf").display()
        ),
    )
}

/// Line and column (from 1) of the first `needle` in `text`, as the build names them.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    line_col(text, text.find(needle).unwrap_or(0))
}

/// `profile` is refused with `expected` in what the build printed, and leaves no output.
fn expect_refused_at(context: &Context, profile: &Path, expected: &str) -> Result<(), String> {
    let output = profile.with_extension("out");
    let stderr = refused_output(context, profile, &output)?;
    if !stderr.contains(expected) {
        return Err(format!("expected {expected:?} in: {stderr}"));
    }
    match output.exists() {
        true => Err(format!("{} was left behind", output.display())),
        false => Ok(()),
    }
}

/// Builds a repository profile into `out` (one build at a time in the runner).
fn build(context: &Context, name: &str, out: &Path) -> Result<BuiltOs, String> {
    build_os(&context.binaries, &context.cache, &profile(name), out)
        .map_err(|error| error.to_string())
}

/// What `xorbang-build os` printed when it refused `profile`.
fn refused_output(context: &Context, profile: &Path, output: &Path) -> Result<String, String> {
    let run = Command::new(&context.binaries.build)
        .arg("os")
        .arg(profile)
        .arg("-o")
        .arg(output)
        .arg("--init")
        .arg(&context.binaries.init)
        .arg("--cache")
        .arg(context.cache.join("build"))
        .output()
        .map_err(|error| error.to_string())?;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    match run.status.success() {
        true => Err(format!("{} was built: {stderr}", profile.display())),
        false => Ok(stderr),
    }
}

fn digest(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

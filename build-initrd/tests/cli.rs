//! The `xorbang-build` command line, run as a user would: argument syntax, the environment
//! (`SOURCE_DATE_EPOCH`, set on the child only), the one-line reports and error messages.

use std::fs;
use std::path::{Path, PathBuf};
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
    // The first line of the report; the hash tree's follow it.
    assert_eq!(
        text(&run.stdout).lines().next(),
        Some(format!("{}: {size} bytes", out.display()).as_str())
    );
}

/// A compressor the format does not take is refused before anything is written.
#[test]
fn image_refuses_a_compressor_of_the_other_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("rootfs");
    fs::create_dir_all(&tree).expect("mkdir");
    for (format, compression, takes) in [
        ("erofs", "zstd", "lz4, lz4hc or none"),
        ("squashfs", "lz4hc", "zstd, gzip, xz or lz4"),
    ] {
        let out = dir.path().join(format!("root.{format}"));
        let run = xorbang_build(
            &[
                "image",
                path_str(&tree),
                "-o",
                path_str(&out),
                "--format",
                format,
                "--compression",
                compression,
            ],
            None,
        );
        assert!(!run.status.success());
        assert!(
            text(&run.stderr).contains(&format!(
                "compression \"{compression}\" does not go with {format}, which takes {takes}"
            )),
            "{}",
            text(&run.stderr)
        );
        assert!(!out.exists());
    }
}

/// Where a tool is: in PATH or in an sbin directory a user's PATH may lack.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn have_mksquashfs() -> bool {
    let found = Command::new("mksquashfs").arg("-version").output().is_ok();
    if !found {
        println!("note: mksquashfs not installed, skipping the image build");
    }
    found
}

/// A root tree whose image spans several 4 KiB data blocks: its big file is noise that
/// does not compress.
fn write_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    fs::write(root.join("etc/hostname"), "xorbang\n").expect("hostname");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..48 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(root.join("noise.bin"), noise).expect("noise");
}

/// `PATH.EXTENSION`, where `image` puts its hash tree and manifest.
fn companion(image: &Path, extension: &str) -> PathBuf {
    PathBuf::from(format!("{}.{extension}", image.display()))
}

/// The root hash from `image`'s report, checked to be 64 lower-case hex digits.
fn reported_root_hash(stdout: &str) -> String {
    let hash = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Root hash: "))
        .unwrap_or_else(|| panic!("no root hash line in {stdout:?}"));
    assert_eq!(hash.len(), 64, "{stdout}");
    assert!(
        hash.chars()
            .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)),
        "{stdout}"
    );
    hash.to_owned()
}

/// Builds the verified image of a fresh tree at `out`; returns its root hash.
fn build_verified_image(dir: &Path, out: &Path) -> String {
    let tree = dir.join("rootfs");
    if !tree.exists() {
        write_tree(&tree);
    }
    let run = xorbang_build(&["image", path_str(&tree), "-o", path_str(out)], None);
    assert!(run.status.success(), "{}", text(&run.stderr));
    reported_root_hash(&text(&run.stdout))
}

fn manifest(image: &Path) -> serde_json::Value {
    let json = fs::read(companion(image, "json")).expect("manifest");
    serde_json::from_slice(&json).expect("manifest is JSON")
}

#[test]
fn image_writes_tree_and_manifest_reproducibly() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let outputs = ["a", "b"].map(|name| {
        let sub = dir.path().join(name);
        fs::create_dir(&sub).expect("mkdir");
        sub.join("root.squashfs")
    });
    let root_hash = build_verified_image(dir.path(), &outputs[0]);
    let out = &outputs[0];
    let manifest = manifest(out);
    assert_eq!(manifest["root_hash"], root_hash.as_str());
    assert_eq!(manifest["image"], "root.squashfs");
    assert_eq!(manifest["verity"], "root.squashfs.verity");
    let size = |path: &Path| fs::metadata(path).expect("output").len();
    assert_eq!(manifest["image_bytes"], size(out));
    assert_eq!(manifest["verity_bytes"], size(&companion(out, "verity")));
    assert!(
        manifest["data_blocks"].as_u64().expect("data_blocks") > 8,
        "the image spans several blocks: {manifest}"
    );

    // The same tree elsewhere: the same bytes, manifest included (its paths are relative).
    assert_eq!(build_verified_image(dir.path(), &outputs[1]), root_hash);
    for extension in [None, Some("verity"), Some("json")] {
        let [first, second] = outputs
            .clone()
            .map(|out| extension.map_or(out.clone(), |ext| companion(&out, ext)));
        assert_eq!(
            fs::read(&first).expect("first"),
            fs::read(&second).expect("second"),
            "{} differs between runs",
            first.display()
        );
    }
}

#[test]
fn verity_verify_accepts_the_image_and_names_a_damaged_data_block() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("root.squashfs");
    let root_hash = build_verified_image(dir.path(), &out);
    let tree = companion(&out, "verity");
    let verify = |data: &Path| {
        xorbang_build(
            &[
                "verity",
                "verify",
                path_str(data),
                path_str(&tree),
                &root_hash,
            ],
            None,
        )
    };
    let run = verify(&out);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "Verification succeeded.\n");

    // One byte of data block 1 flipped: block 1 is named, and so is the tree that caught it.
    let mut bytes = fs::read(&out).expect("image");
    bytes[4096 + 17] ^= 0x01;
    let damaged = dir.path().join("damaged.squashfs");
    fs::write(&damaged, bytes).expect("damaged");
    let run = verify(&damaged);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let message = text(&run.stderr);
    assert!(
        message.contains("does not match the digest of data block 1"),
        "{message}"
    );
    assert!(message.contains(path_str(&damaged)), "{message}");
    assert!(text(&run.stdout).is_empty(), "{}", text(&run.stdout));
}

#[test]
fn image_without_verity_writes_no_companions() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("rootfs");
    write_tree(&tree);
    let out = dir.path().join("root.squashfs");
    // An earlier verity build under the same name leaves companions that no longer apply.
    let earlier = xorbang_build(&["image", path_str(&tree), "-o", path_str(&out)], None);
    assert!(earlier.status.success(), "{}", text(&earlier.stderr));
    assert!(companion(&out, "json").exists());
    let args = [
        "image",
        path_str(&tree),
        "-o",
        path_str(&out),
        "--no-verity",
    ];
    let run = xorbang_build(&args, None);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let size = fs::metadata(&out).expect("image").len();
    assert_eq!(
        text(&run.stdout),
        format!("{}: {size} bytes\n", out.display())
    );
    assert!(!companion(&out, "verity").exists());
    assert!(!companion(&out, "json").exists());
}

/// A root hash's first or last 16 bytes as sfdisk prints a PARTUUID: 8-4-4-4-12, upper case.
fn partuuid(hex: &str) -> String {
    [
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32],
    ]
    .join("-")
    .to_uppercase()
}

#[test]
fn disk_holds_the_image_and_tree_as_dps_partitions() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("root.squashfs");
    let root_hash = build_verified_image(dir.path(), &out);
    let disk = dir.path().join("disk.img");
    let run = xorbang_build(
        &["disk", "--image", path_str(&out), "-o", path_str(&disk)],
        None,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = text(&run.stdout);
    let disk_bytes = fs::read(&disk).expect("disk");
    assert!(
        report.contains(&format!("{}: {} bytes", disk.display(), disk_bytes.len())),
        "{report}"
    );
    assert_eq!(reported_root_hash(&report), root_hash);

    let Some(sfdisk) = find_tool("sfdisk") else {
        println!("note: sfdisk not installed, skipping the partition table check");
        return;
    };
    let listing = Command::new(sfdisk)
        .arg("--json")
        .arg(&disk)
        .output()
        .expect("run sfdisk");
    assert!(listing.status.success(), "sfdisk: {listing:?}");
    let json: serde_json::Value = serde_json::from_slice(&listing.stdout).expect("sfdisk JSON");
    let partitions = json["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions");
    assert_eq!(partitions.len(), 2, "{json}");
    let expected = [
        (
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            partuuid(&root_hash[..32]),
            out.clone(),
        ),
        (
            "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
            partuuid(&root_hash[32..]),
            companion(&out, "verity"),
        ),
    ];
    for (partition, (type_guid, uuid, source)) in partitions.iter().zip(expected) {
        assert_eq!(partition["type"], type_guid, "{partition}");
        assert_eq!(partition["uuid"], uuid.as_str(), "{partition}");
        let start = partition["start"].as_u64().expect("start") as usize * 512;
        let contents = fs::read(&source).expect("source");
        assert_eq!(
            &disk_bytes[start..start + contents.len()],
            &contents[..],
            "{} is not at the start of its partition",
            source.display()
        );
    }
}

#[test]
fn disk_refuses_an_image_its_manifest_does_not_describe() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("root.squashfs");
    build_verified_image(dir.path(), &image);
    let recorded = manifest(&image)["image_sha256"]
        .as_str()
        .expect("image_sha256")
        .to_owned();
    let mut bytes = fs::read(&image).expect("image");
    bytes[100] ^= 1;
    fs::write(&image, &bytes).expect("damaged");
    let disk = dir.path().join("disk.img");
    let run = xorbang_build(
        &["disk", "--image", path_str(&image), "-o", path_str(&disk)],
        None,
    );
    assert!(!run.status.success());
    let message = text(&run.stderr);
    assert!(
        message.contains(&format!(
            "{} is not the image its manifest {}.json describes: its SHA-256 is ",
            image.display(),
            image.display()
        )) && message.contains(&format!("the manifest records {recorded}")),
        "{message}"
    );
    assert!(!disk.exists());
}

#[test]
fn disk_without_a_manifest_names_it_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("root.squashfs");
    fs::write(&image, vec![0u8; 4096]).expect("image");
    let disk = dir.path().join("disk.img");
    let run = xorbang_build(
        &["disk", "--image", path_str(&image), "-o", path_str(&disk)],
        None,
    );
    assert!(!run.status.success());
    let message = text(&run.stderr);
    assert!(
        message.contains(path_str(&companion(&image, "json"))),
        "{message}"
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["root.squashfs"], "no disk and no temporary file");
}

#[test]
fn verity_format_writes_what_veritysetup_writes() {
    let Some(veritysetup) = find_tool("veritysetup") else {
        println!("note: veritysetup not installed, skipping the comparison");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.img");
    let contents: Vec<u8> = (0..5 * 4096u32).map(|i| (i * 7 + i / 4096) as u8).collect();
    fs::write(&data, contents).expect("data");
    let args = [
        "format",
        path_str(&data),
        "root.verity",
        "--salt",
        "0011aabbccddeeff",
        "--uuid",
        "954172df-ee9a-4ab2-990a-0ab162ee6bc5",
    ];
    // Each writes root.verity in its own directory, so that the reports name the same path.
    let run_in = |name: &str, program: &Path, args: &[&str]| {
        let cwd = dir.path().join(name);
        fs::create_dir(&cwd).expect("mkdir");
        let run = Command::new(program)
            .args(args)
            .current_dir(&cwd)
            .output()
            .expect("runs");
        assert!(run.status.success(), "{name}: {}", text(&run.stderr));
        (run.stdout, fs::read(cwd.join("root.verity")).expect("hash"))
    };
    let ours = [&["verity"][..], &args[..]].concat();
    let (our_report, our_tree) = run_in(
        "ours",
        Path::new(env!("CARGO_BIN_EXE_xorbang-build")),
        &ours,
    );
    let (their_report, their_tree) = run_in("theirs", &veritysetup, &args);
    assert_eq!(text(&our_report), text(&their_report));
    assert!(
        text(&our_report).contains("Salt:            \t0011aabbccddeeff"),
        "{}",
        text(&our_report)
    );
    assert_eq!(our_tree.len(), their_tree.len());
    assert!(our_tree == their_tree, "the hash files differ");
}

#[test]
fn a_root_hash_that_is_not_hex_is_a_usage_error() {
    let run = xorbang_build(&["verity", "verify", "data", "hash", "nothex"], None);
    assert_eq!(run.status.code(), Some(2), "clap's usage error status");
    let message = text(&run.stderr);
    assert!(
        message.contains("invalid value 'nothex' for '<ROOTHASH>'"),
        "{message}"
    );
    assert!(message.contains("not hex"), "{message}");
}

#[test]
fn host_config_check_lists_the_layer_or_names_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        "version = 1\nhostname = \"web-01\"\n[users.root]\nssh_authorized_keys = \
         [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbXr1SMvPJWLCnmD7O6PHzdJKlWz0LQ4pPFmUCiuTiT me@x\"]\n",
    )
    .expect("write");
    let output = xorbang_build(&["host-config", "check", path_str(&good)], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "/etc/hostname (file, mode 0644)",
        "/etc/ssh/authorized_keys/root (file, mode 0644)",
        "/etc/ssh/sshd_config.d/50-xorbang.conf (file, mode 0644)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} missing in {stdout}"
        );
    }
    assert!(
        stdout.ends_with(": valid host config (signed source)\n"),
        "{stdout}"
    );
    // From an unsigned config partition, root's key makes the whole config refused.
    let output = xorbang_build(
        &["host-config", "check", "--trust", "local", path_str(&good)],
        None,
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("line 3, column 2: \"users\" is not allowed in an unsigned config"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        "version = 1\n\n[[network]]\nname = \"eth0\"\ndhcp = true\nmtu = 9000\n",
    )
    .expect("write");
    let output = xorbang_build(&["host-config", "check", path_str(&bad)], None);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "xorbang-build: error: {}: line 6, column 1: ",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("mtu") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

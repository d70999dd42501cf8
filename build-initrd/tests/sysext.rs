//! `xorbang-build sysext` and `image --pin-sysext/--pin-confext`, run as a user would: the
//! DDI read back with the init's own GPT parser (and sfdisk, veritysetup, unsquashfs and
//! systemd-dissect where installed), every refusal, and a tampered image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xorbang_formats::extension_pins::ExtensionPins;
use xorbang_formats::gpt::{self, GptHeader, GptPartition};
use xorbang_formats::verity::RootHash;

fn xorbang_build(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xorbang-build"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("xorbang-build runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Where a tool is: in PATH or in an sbin directory a user's PATH may lack.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn have_squashfs_tools() -> bool {
    let found = find_tool("mksquashfs").is_some() && find_tool("unsquashfs").is_some();
    if !found {
        println!("note: squashfs-tools not installed, skipping the extension image build");
    }
    found
}

/// Incompressible bytes, so the SquashFS spans several data blocks and has a real tree.
fn noise(bytes: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write_file(root: &Path, path: &str, contents: &[u8]) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, contents).expect("write");
}

/// A system extension tree: a tool in /usr and one in /opt.
fn sysext_tree(root: &Path) -> PathBuf {
    let tree = root.join("gui-tree");
    write_file(&tree, "usr/bin/gui", &noise(40 * 1024));
    write_file(&tree, "opt/gui/README", b"gui\n");
    tree
}

fn confext_tree(root: &Path) -> PathBuf {
    let tree = root.join("site-tree");
    write_file(&tree, "etc/motd", b"welcome\n");
    tree
}

/// Runs `xorbang-build sysext`; on success returns the root hash from the last line.
fn build(tree: &Path, out: &Path, name: &str, extra: &[&str]) -> Result<String, String> {
    let args = [
        &[
            "sysext",
            path_str(tree),
            "--name",
            name,
            "-o",
            path_str(out),
        ],
        extra,
    ]
    .concat();
    let run = xorbang_build(&args);
    if !run.status.success() {
        return Err(text(&run.stderr));
    }
    let stdout = text(&run.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let hash = last
        .strip_prefix("Root hash: ")
        .unwrap_or_else(|| panic!("last line is the root hash: {stdout:?}"));
    assert_eq!(hash.len(), 64, "{stdout}");
    Ok(hash.to_owned())
}

fn build_ok(tree: &Path, out: &Path, name: &str, extra: &[&str]) -> String {
    build(tree, out, name, extra).unwrap_or_else(|err| panic!("sysext fails: {err}"))
}

/// The partitions of a GPT disk image with 512-byte sectors.
fn partitions(disk: &[u8]) -> Vec<GptPartition> {
    let header = GptHeader::parse(&disk[512..1024]).expect("primary GPT header");
    let start = header.entries_lba.0 as usize * 512;
    let entries = &disk[start..start + header.entries_bytes() as usize];
    gpt::parse_entries(&header, entries).expect("GPT entries")
}

fn byte_range(partition: &GptPartition) -> std::ops::Range<usize> {
    partition.first_lba.0 as usize * 512..(partition.last_lba.0 as usize + 1) * 512
}

/// Checks the DDI's partitions against the root hash; returns (data, verity) partitions.
fn check_ddi(disk: &[u8], root_hash: &str) -> (GptPartition, GptPartition) {
    let found = partitions(disk);
    assert_eq!(found.len(), 2, "{found:?}");
    let (data_uuid, verity_uuid) = RootHash::parse_hex(root_hash)
        .expect("hex")
        .partition_uuids();
    let (data, verity) = (found[0].clone(), found[1].clone());
    assert_eq!(data.type_guid, gpt::ROOT_X86_64);
    assert_eq!(data.unique_guid, data_uuid);
    assert_eq!(data.name, "root-x86-64");
    assert_eq!(verity.type_guid, gpt::ROOT_VERITY_X86_64);
    assert_eq!(verity.unique_guid, verity_uuid);
    assert_eq!(verity.name, "root-x86-64-verity");
    assert_eq!(
        &disk[byte_range(&data)][..4],
        b"hsqs",
        "SquashFS in partition 1"
    );
    assert_eq!(
        &disk[byte_range(&verity)][..8],
        b"verity\0\0",
        "superblock in partition 2"
    );
    (data, verity)
}

/// A file of the SquashFS in the DDI's data partition, read by unsquashfs in place.
fn cat_in_ddi(ddi: &Path, data: &GptPartition, file: &str) -> String {
    let offset = (data.first_lba.0 * 512).to_string();
    let run = Command::new("unsquashfs")
        .args(["-offset", &offset, "-cat"])
        .arg(ddi)
        .arg(file)
        .output()
        .expect("unsquashfs runs");
    assert!(run.status.success(), "unsquashfs: {}", text(&run.stderr));
    text(&run.stdout)
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every path under `root`, to show that a build left a tree as it was.
fn tree_listing(root: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    paths
}

#[test]
fn a_sysext_is_a_ddi_named_by_its_root_hash_and_built_reproducibly() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = sysext_tree(dir.path());
    let before = tree_listing(&tree);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("gui.raw");
    let root_hash = build_ok(
        &tree,
        &out,
        "gui",
        &["--os-id", "_any", "--architecture", "x86-64"],
    );

    assert_eq!(tree_listing(&tree), before, "the tree is not modified");
    assert_eq!(
        dir_listing(&out_dir),
        ["gui.raw", "gui.roothash"],
        "no intermediate files"
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("gui.roothash")).expect("sidecar"),
        format!("{root_hash}\n")
    );
    let disk = fs::read(&out).expect("DDI");
    let (data, verity) = check_ddi(&disk, &root_hash);
    assert_eq!(
        cat_in_ddi(
            &out,
            &data,
            "usr/lib/extension-release.d/extension-release.gui"
        ),
        "ID=\"_any\"\nARCHITECTURE=\"x86-64\"\n"
    );

    let again = dir.path().join("again");
    fs::create_dir(&again).expect("mkdir");
    let again = again.join("gui.raw");
    let args = ["--os-id", "_any", "--architecture", "x86-64"];
    assert_eq!(build_ok(&tree, &again, "gui", &args), root_hash);
    assert_eq!(fs::read(&again).expect("DDI"), disk, "byte-identical");

    veritysetup_verifies(dir.path(), &disk, &data, &verity, &root_hash);
    sfdisk_agrees(&out, &root_hash);
}

/// veritysetup, the reference implementation, accepts the partitions with the root hash.
fn veritysetup_verifies(
    dir: &Path,
    disk: &[u8],
    data: &GptPartition,
    verity: &GptPartition,
    root_hash: &str,
) {
    let Some(veritysetup) = find_tool("veritysetup") else {
        println!("note: veritysetup not installed, skipping the reference verification");
        return;
    };
    let data_file = dir.join("data.part");
    let hash_file = dir.join("verity.part");
    fs::write(&data_file, &disk[byte_range(data)]).expect("data");
    fs::write(&hash_file, &disk[byte_range(verity)]).expect("tree");
    let run = Command::new(veritysetup)
        .arg("verify")
        .args([&data_file, &hash_file])
        .arg(root_hash)
        .output()
        .expect("veritysetup runs");
    assert!(run.status.success(), "veritysetup: {}", text(&run.stderr));
}

/// sfdisk, an independent GPT reader, sees the same types and PARTUUIDs.
fn sfdisk_agrees(ddi: &Path, root_hash: &str) {
    let Some(sfdisk) = find_tool("sfdisk") else {
        println!("note: sfdisk not installed, skipping the second partition table check");
        return;
    };
    let run = Command::new(sfdisk)
        .arg("--json")
        .arg(ddi)
        .output()
        .expect("sfdisk runs");
    assert!(run.status.success(), "sfdisk: {}", text(&run.stderr));
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    let found: Vec<(String, String)> = json["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| (p["type"].to_string(), p["uuid"].to_string().to_lowercase()))
        .collect();
    let (data_uuid, verity_uuid) = RootHash::parse_hex(root_hash)
        .expect("hex")
        .partition_uuids();
    assert_eq!(
        found,
        [
            (
                "\"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\"".to_owned(),
                format!("\"{data_uuid}\"")
            ),
            (
                "\"2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5\"".to_owned(),
                format!("\"{verity_uuid}\"")
            ),
        ]
    );
}

#[test]
fn a_confext_carries_its_release_file_under_etc_and_a_tree_may_bring_its_own() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = confext_tree(dir.path());
    let out = dir.path().join("site.raw");
    let args = [
        "--confext",
        "--os-id",
        "debian",
        "--version-id",
        "12",
        "--level",
        "3",
    ];
    let root_hash = build_ok(&tree, &out, "site", &args);
    let disk = fs::read(&out).expect("DDI");
    let (data, _) = check_ddi(&disk, &root_hash);
    assert_eq!(
        cat_in_ddi(
            &out,
            &data,
            "etc/extension-release.d/extension-release.site"
        ),
        "ID=\"debian\"\nVERSION_ID=\"12\"\nCONFEXT_LEVEL=\"3\"\n"
    );
    assert_eq!(cat_in_ddi(&out, &data, "etc/motd"), "welcome\n");

    // A tree with its own release file: packed as it is.
    let own = "# ours\nID=debian\nSYSEXT_LEVEL=1.2\n";
    let tree = sysext_tree(dir.path());
    write_file(
        &tree,
        "usr/lib/extension-release.d/extension-release.gui",
        own.as_bytes(),
    );
    let out = dir.path().join("gui.raw");
    let run = xorbang_build(&[
        "sysext",
        path_str(&tree),
        "--name",
        "gui",
        "-o",
        path_str(&out),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains(": from the tree"),
        "{}",
        text(&run.stdout)
    );
    let disk = fs::read(&out).expect("DDI");
    let (data, _) = check_ddi(&disk, &root_hash_of(&out));
    assert_eq!(
        cat_in_ddi(
            &out,
            &data,
            "usr/lib/extension-release.d/extension-release.gui"
        ),
        own
    );
}

fn root_hash_of(ddi: &Path) -> String {
    let sidecar = ddi.with_extension("roothash");
    fs::read_to_string(sidecar)
        .expect("sidecar")
        .trim()
        .to_owned()
}

type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a [&'a str], &'a str);

#[test]
fn trees_and_options_systemd_would_misread_are_refused_and_nothing_is_written() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let any = ["--os-id", "_any"];
    let release = "usr/lib/extension-release.d/extension-release.gui";
    // (case, files in the tree, --name, options, expected message)
    let cases: [Case; 10] = [
        ("var", &["var/lib/x"], "gui", &any, "top-level directory \"var\" is not merged by a sysext (only usr/ and opt/)"),
        ("etc", &["etc/x"], "gui", &any, "top-level directory \"etc\" is not merged by a sysext"),
        ("file", &["README"], "gui", &any, "top-level file \"README\" is not merged by a sysext"),
        ("usr-in-confext", &["usr/x"], "gui", &["--confext", "--os-id", "_any"], "top-level directory \"usr\" is not merged by a confext (only etc/)"),
        ("os-release", &["usr/lib/os-release"], "gui", &any, "it has usr/lib/os-release: systemd refuses"),
        ("no-id", &["usr/bin/x"], "gui", &[], "sysext release file usr/lib/extension-release.d/extension-release.gui: the tree has none: give --os-id"),
        ("ambiguous", &["usr/bin/x", release], "gui", &["--os-id", "debian", "--level", "2"], "the tree has it, so --os-id, --level would be ambiguous"),
        ("other-release", &["usr/lib/extension-release.d/extension-release.tools"], "gui", &any, "usr/lib/extension-release.d/extension-release.tools is the release file of another extension than \"gui\""),
        ("bad-name", &["usr/bin/x"], "../gui", &any, "extension name \"../gui\": only A-Z a-z 0-9 _ . - are allowed"),
        ("arm64", &["usr/bin/x"], "gui", &["--os-id", "debian", "--architecture", "arm64"], "ARCHITECTURE=\"arm64\" cannot be used in an image of root-x86-64 partitions"),
    ];
    for (case, files, name, args, expected) in cases {
        let root = dir.path().join(case);
        let tree = root.join("tree");
        for file in files {
            write_file(&tree, file, b"ID=_any\n");
        }
        let out = root.join("gui.raw");
        let err = build(&tree, &out, name, args).expect_err(case);
        assert!(err.contains(expected), "{case}: {err}");
        assert!(
            err.starts_with(&format!(
                "xorbang-build: error: cannot build the extension image {}",
                out.display()
            )),
            "{case}: {err}"
        );
        assert_eq!(dir_listing(&root), ["tree"], "{case}: nothing written");
    }
    let tree = sysext_tree(dir.path());
    let err = build(&tree, &dir.path().join("tools.raw"), "gui", &any).expect_err("name");
    assert!(err.contains("tools.raw must be named gui.raw"), "{err}");
}

#[test]
fn symlinked_directories_on_the_way_to_the_release_file_are_refused() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // (case, where the release file really is, the link, its target, what the message names)
    for (case, file, link, target, named) in [
        (
            "lib",
            "usr/real-lib/extension-release.d/extension-release.gui",
            "usr/lib",
            "real-lib",
            "usr/lib is a symlink",
        ),
        (
            "release-dir",
            "usr/lib/real.d/extension-release.gui",
            "usr/lib/extension-release.d",
            "real.d",
            "usr/lib/extension-release.d is a symlink",
        ),
        (
            "usr",
            "../real-usr/lib/extension-release.d/extension-release.gui",
            "usr",
            "../real-usr",
            "top-level \"usr\" is a symlink",
        ),
    ] {
        let root = dir.path().join(case);
        let tree = root.join("tree");
        fs::create_dir_all(&tree).expect("tree");
        write_file(&tree, file, b"ID=_any\n");
        std::os::unix::fs::symlink(target, tree.join(link)).expect("symlink");
        let out = root.join("gui.raw");
        let err = build(&tree, &out, "gui", &[]).expect_err(case);
        assert!(err.contains(named), "{case}: {err}");
        assert!(!out.exists(), "{case}: nothing written");
    }
}

/// Builds `NAME.raw` from a fresh tree of the kind in `dir`; returns its path and root hash.
fn extension(dir: &Path, name: &str, confext: bool) -> (PathBuf, String) {
    fs::create_dir_all(dir).expect("mkdir");
    let (tree, kind) = if confext {
        (confext_tree(dir), &["--confext"][..])
    } else {
        (sysext_tree(dir), &[][..])
    };
    let out = dir.join(format!("{name}.raw"));
    let root_hash = build_ok(&tree, &out, name, &[kind, &["--os-id", "_any"]].concat());
    (out, root_hash)
}

fn base_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("rootfs");
    write_file(&tree, "etc/os-release", b"ID=debian\n");
    write_file(&tree, "usr/bin/sh", b"#!\n");
    tree
}

#[test]
fn image_pins_checked_extensions_without_touching_the_tree() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gui, gui_hash) = extension(&dir.path().join("a"), "gui", false);
    let (site, site_hash) = extension(&dir.path().join("b"), "site", true);
    let tree = base_tree(dir.path());
    let before = tree_listing(&tree);
    let image = dir.path().join("root.squashfs");
    let args = [
        "image",
        path_str(&tree),
        "-o",
        path_str(&image),
        "--pin-sysext",
        path_str(&gui),
        "--pin-confext",
        path_str(&site),
    ];
    let run = xorbang_build(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains(&format!("pinned sysext gui: {gui_hash}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("pinned confext site: {site_hash}\n")),
        "{stdout}"
    );
    assert_eq!(tree_listing(&tree), before, "the tree is not modified");

    let cat = Command::new("unsquashfs")
        .arg("-cat")
        .arg(&image)
        .arg("usr/lib/xorbang/extensions.toml")
        .output()
        .expect("unsquashfs runs");
    assert!(cat.status.success(), "{}", text(&cat.stderr));
    let pins = ExtensionPins::parse(&text(&cat.stdout)).expect("the init reads it");
    assert_eq!(pins.sysext["gui"].to_string(), gui_hash);
    assert_eq!(pins.confext["site"].to_string(), site_hash);
    let listing = Command::new("unsquashfs")
        .args(["-lln"])
        .arg(&image)
        .arg("usr/lib/xorbang/extensions.toml")
        .output()
        .expect("unsquashfs runs");
    assert!(
        text(&listing.stdout).contains("-rw-r--r-- 0/0"),
        "{}",
        text(&listing.stdout)
    );

    let first = fs::read(&image).expect("image");
    let run = xorbang_build(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(fs::read(&image).expect("image"), first, "reproducible");
}

#[test]
fn pins_are_refused_for_a_wrong_kind_a_duplicate_or_a_manifest_in_the_tree() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gui, _) = extension(&dir.path().join("a"), "gui", false);
    let (gui_again, _) = extension(&dir.path().join("b"), "gui", false);
    let tree = base_tree(dir.path());
    let image = dir.path().join("root.squashfs");
    let pin = |flags: &[&str]| {
        let run =
            xorbang_build(&[&["image", path_str(&tree), "-o", path_str(&image)], flags].concat());
        assert!(!run.status.success(), "{flags:?} must fail");
        assert!(!image.exists(), "{flags:?}: no image");
        text(&run.stderr)
    };
    let err = pin(&["--pin-confext", path_str(&gui)]);
    assert!(
        err.contains("cannot read the confext release file etc/extension-release.d/extension-release.gui: the image has no such file"),
        "{err}"
    );
    let err = pin(&[
        "--pin-sysext",
        path_str(&gui),
        "--pin-sysext",
        path_str(&gui_again),
    ]);
    assert!(err.contains("sysext gui is given twice"), "{err}");
    let renamed = dir.path().join("gui.img");
    fs::copy(&gui, &renamed).expect("copy");
    let err = pin(&["--pin-sysext", path_str(&renamed)]);
    assert!(
        err.contains("an extension image must be named NAME.raw"),
        "{err}"
    );
    let renamed = dir.path().join("tools.raw");
    fs::copy(&gui, &renamed).expect("copy");
    let err = pin(&["--pin-sysext", path_str(&renamed)]);
    assert!(
        err.contains(
            "usr/lib/extension-release.d/extension-release.tools: the image has no such file"
        ),
        "{err}"
    );

    write_file(&tree, "usr/lib/xorbang/extensions.toml", b"");
    let err = pin(&["--pin-sysext", path_str(&gui)]);
    assert!(
        err.contains("usr/lib/xorbang/extensions.toml: refusing to replace it"),
        "{err}"
    );
}

#[test]
fn a_tampered_extension_is_not_pinned() {
    if !have_squashfs_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gui, _) = extension(&dir.path().join("a"), "gui", false);
    let tree = base_tree(dir.path());
    let image = dir.path().join("root.squashfs");
    let pin = |ddi: &Path| {
        let args = [
            "image",
            path_str(&tree),
            "-o",
            path_str(&image),
            "--pin-sysext",
            path_str(ddi),
        ];
        let run = xorbang_build(&args);
        assert!(!run.status.success(), "{} must be refused", ddi.display());
        assert!(!image.exists());
        text(&run.stderr)
    };

    let tampered_dir = dir.path().join("tampered");
    fs::create_dir(&tampered_dir).expect("mkdir");
    let tampered = tampered_dir.join("gui.raw");
    let mut disk = fs::read(&gui).expect("DDI");
    let data = partitions(&disk)[0].clone();
    // A byte inside the second data block: covered by the tree's level 0.
    disk[byte_range(&data).start + 4096 + 100] ^= 0x01;
    fs::write(&tampered, &disk).expect("write");
    let err = pin(&tampered);
    assert!(
        err.contains(&format!(
            "{}: partition 1 (root-x86-64) does not verify against the hash tree in partition 2 \
             (root-x86-64-verity)",
            tampered.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("of partition 2 does not match the digest of data block 1"),
        "{err}"
    );

    let Some(sfdisk) = find_tool("sfdisk") else {
        println!("note: sfdisk not installed, skipping the changed PARTUUID");
        return;
    };
    let relabelled = tampered_dir.join("gui.raw");
    fs::copy(&gui, &relabelled).expect("copy");
    let other = "00000000-1111-2222-3333-444444444444";
    let run = Command::new(sfdisk)
        .args(["--quiet", "--part-uuid"])
        .arg(&relabelled)
        .args(["2", other])
        .output()
        .expect("sfdisk runs");
    assert!(run.status.success(), "sfdisk: {}", text(&run.stderr));
    let err = pin(&relabelled);
    assert!(
        err.contains(&format!(
            "partition 2 (root-x86-64-verity) has PARTUUID {other}"
        )),
        "{err}"
    );

    let plain = tampered_dir.join("gui.raw");
    fs::write(&plain, noise(8192)).expect("write");
    let err = pin(&plain);
    assert!(err.contains("no GPT partition table"), "{err}");
}

#[test]
fn systemd_dissect_reads_the_extension_with_its_root_hash() {
    if !have_squashfs_tools() {
        return;
    }
    let Some(dissect) = find_tool("systemd-dissect") else {
        println!("note: systemd-dissect not installed (Debian: systemd-container), skipping");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (gui, root_hash) = extension(&dir.path().join("a"), "gui", false);
    // systemd-dissect attaches the image to a loop device, which needs root.
    let run = Command::new(&dissect)
        .arg("--json=short")
        .arg(&gui)
        .output()
        .expect("systemd-dissect runs");
    let stderr = text(&run.stderr);
    if !run.status.success() && stderr.contains("loop") {
        println!("note: systemd-dissect cannot use loop devices here ({stderr}), skipping");
        return;
    }
    assert!(run.status.success(), "systemd-dissect: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_eq!(json["useSystemExtension"], true, "{json}");
    assert_eq!(json["extensionRelease"][0], "ID=_any", "{json}");
    let root = &json["mounts"][0];
    assert_eq!(root["designator"], "root", "{json}");
    assert_eq!(root["fstype"], "squashfs", "{json}");
    assert_eq!(root["architecture"], "x86-64", "{json}");
    // "yes": it took the root hash from gui.roothash and found the partitions it names.
    assert_eq!(root["verity"], "yes", "{json}");
    assert_eq!(json["mounts"][1]["designator"], "root-verity", "{json}");

    // A root hash the PARTUUIDs do not carry finds no root partition.
    let wrong = format!("00{}", &root_hash[2..]);
    let run = Command::new(&dissect)
        .arg(format!("--root-hash={wrong}"))
        .arg(&gui)
        .output()
        .expect("systemd-dissect runs");
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("No root partition"),
        "{}",
        text(&run.stderr)
    );
}

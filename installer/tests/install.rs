//! Privileged tier: the real binary installs a small "running image" (a SquashFS and its
//! verity tree on read-only loop devices, named by a boot report as the init writes it) onto
//! a 3 GiB loop disk, and refuses what it must. Needs root (loop devices) and the tools the
//! installer and the fixture run; when any is missing the test prints `SKIPPED …` on the
//! terminal and returns.

// The skip convention of the init's integration tests.
#[path = "../../init/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use xorbang_build::boot::uki::{self, UkiParts};
use xorbang_build::image::verity::{self, FormatParams, TreeParams};
use xorbang_formats::fs_probe::{self, FsKind};
use xorbang_formats::gpt::{self, GptHeader, GptPartition, Guid};
use xorbang_formats::verity::{RootHash, Salt};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const IMAGE_ID: &str = "xorbang-test";
const VERSION: &str = "1";
const HOST_CONFIG: &str = "version = 1\nhostname = \"installed\"\n";
/// Where slot B's root starts in the A/B layout: 1 MiB, the ESP, slot A's root and tree.
const SLOT_B_ROOT: u64 = (1 + 64 + 1024 + 16) * MIB;
const TOOLS: &[&str] = &[
    "losetup",
    "partx",
    "mksquashfs",
    "mkfs.vfat",
    "mkfs.ext4",
    "mmd",
    "mcopy",
    "mtype",
    "unshare",
    "mount",
];

fn can_run(test: &str) -> bool {
    if !support::can_run_privileged(test, "loop devices", TOOLS) {
        return false;
    }
    for file in [uki::DEFAULT_STUB, uki::SYSTEMD_BOOT] {
        if !Path::new(file).is_file() {
            support::skip(test, &format!("needs {file} (systemd-boot-efi)"));
            return false;
        }
    }
    true
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Loop devices, detached however the test ends.
#[derive(Default)]
struct Loops(Vec<String>);

impl Loops {
    fn attach(&mut self, file: &Path, options: &[&str]) -> String {
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .args(options)
            .arg(file));
        self.0.push(device.clone());
        device
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for device in &self.0 {
            if let Err(error) = Command::new("losetup").arg("-d").arg(device).status() {
                eprintln!("cannot detach {device}: {error}");
            }
        }
    }
}

fn sparse_file(path: &Path, bytes: u64) {
    File::create(path)
        .and_then(|file| file.set_len(bytes))
        .expect("sparse file");
}

/// The running image: a SquashFS of a small tree with an os-release naming it, and its
/// verity tree; returns their paths and the root hash.
fn running_image(dir: &Path) -> (PathBuf, PathBuf, RootHash) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("usr/lib")).expect("tree");
    std::fs::write(
        tree.join("usr/lib/os-release"),
        format!("ID=debian\nIMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={VERSION}\n"),
    )
    .expect("os-release");
    // Incompressible, so the image spans many verity blocks.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(tree.join("usr/lib/noise"), noise).expect("noise");
    let image = dir.join("root.squashfs");
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args([
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
    let hash = dir.join("root.squashfs.verity");
    let params = FormatParams::new(
        TreeParams::new(Salt::from_array([7; 32])),
        Guid::from_bytes([3; 16]),
    );
    let formatted = verity::format(&image, &hash, &params).expect("verity format");
    (image, hash, formatted.root_hash)
}

fn boot_report(dir: &Path, data: &str, hash: &str, root_hash: &RootHash) -> PathBuf {
    let report = dir.join("boot.json");
    let json = format!(
        r#"{{"version":1,"mode":"production",
            "root":{{"spec":"roothash","device":"/dev/mapper/root","fstype":"squashfs",
                     "verified":true,"image_id":"{IMAGE_ID}","image_version":"{VERSION}"}},
            "verity":{{"root_hash":"{root_hash}","data_device":"{data}","hash_device":"{hash}",
                       "status":"V"}},
            "modules_loaded":0,"init":"/sbin/init","stages":[],
            "uptime_start_us":0,"uptime_handoff_us":0}}"#
    );
    std::fs::write(&report, json).expect("report");
    report
}

fn make_uki(path: &Path, cmdline: &str) -> Vec<u8> {
    let stub = std::fs::read(uki::DEFAULT_STUB).expect("stub");
    let os_release = format!("ID=debian\nIMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={VERSION}\n");
    let parts = UkiParts {
        os_release: os_release.as_bytes(),
        cmdline,
        uname: "6.1.0-test",
        initrd: b"initrd",
        linux: b"a kernel would be here",
    };
    let image = uki::assemble(&stub, &parts, 0).expect("assemble").image;
    std::fs::write(path, &image).expect("uki");
    image
}

/// Everything one run of the installer is given.
struct Fixture {
    dir: tempfile::TempDir,
    report: PathBuf,
    uki: PathBuf,
    host_config: PathBuf,
}

/// The running image a fixture stands for: its files, root hash, data device and the bytes
/// of the UKI that boots it.
struct Running {
    image: PathBuf,
    hash: PathBuf,
    root_hash: RootHash,
    data_device: String,
    uki_bytes: Vec<u8>,
}

impl Fixture {
    /// A running image on read-only loop devices, its boot report, its UKI and a host config.
    fn new(loops: &mut Loops) -> (Self, Running) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (image, hash, root_hash) = running_image(dir.path());
        let data_device = loops.attach(&image, &["--read-only"]);
        let hash_device = loops.attach(&hash, &["--read-only"]);
        let report = boot_report(dir.path(), &data_device, &hash_device, &root_hash);
        let uki = dir.path().join("install.efi");
        let uki_bytes = make_uki(&uki, &format!("console=ttyS0 roothash={root_hash}"));
        let host_config = dir.path().join("host.toml");
        std::fs::write(&host_config, HOST_CONFIG).expect("host config");
        let fixture = Self {
            dir,
            report,
            uki,
            host_config,
        };
        let running = Running {
            image,
            hash,
            root_hash,
            data_device,
            uki_bytes,
        };
        (fixture, running)
    }

    fn installer(&self, disk: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xorbang-installer"));
        command
            .arg("--disk")
            .arg(disk)
            .arg("--boot-report")
            .arg(&self.report)
            .args(["--cmdline", "console=ttyS0"])
            .arg("--keys")
            .arg(self.dir.path().join("keys"))
            .args(extra)
            .env("TMPDIR", self.dir.path());
        command
    }

    fn install(&self, disk: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "--uki".to_owned(),
            self.uki.display().to_string(),
            "--host-config".to_owned(),
            self.host_config.display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.installer(disk, &args)
            .output()
            .expect("installer runs")
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The run failed with exactly one line on stderr: `xorbang-installer: <expected>`.
fn assert_refused(output: &Output, expected: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout(output),
        stderr(output)
    );
    assert_eq!(stderr(output), format!("xorbang-installer: {expected}\n"));
}

/// The SHA-256 of the whole device (sha2 uses the CPU's SHA extensions; coreutils'
/// sha256sum here does not, and takes ten times as long).
fn sha256sum(device: &str) -> [u8; 32] {
    let mut file = File::open(device).expect("open");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 4 << 20];
    loop {
        let count = file.read(&mut buffer).expect("read");
        if count == 0 {
            return hasher.finalize().into();
        }
        hasher.update(&buffer[..count]);
    }
}

fn read_at(device: &str, offset: u64, length: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(length).expect("length")];
    File::open(device)
        .and_then(|file| file.read_exact_at(&mut bytes, offset))
        .expect("read");
    bytes
}

fn read_gpt(device: &str) -> Vec<GptPartition> {
    let header = GptHeader::parse(&read_at(device, 512, 512)).expect("GPT header");
    let entries = read_at(device, header.entries_lba.0 * 512, header.entries_bytes());
    gpt::parse_entries(&header, &entries).expect("GPT entries")
}

fn mtype(esp: &Path, path: &str) -> Vec<u8> {
    let output = Command::new("mtype")
        .arg("-i")
        .arg(esp)
        .arg(path)
        .output()
        .expect("mtype runs");
    assert!(output.status.success(), "{path}: {}", stderr(&output));
    output.stdout
}

#[test]
fn installs_the_running_image_and_refuses_what_it_must() {
    if !can_run("install::installs_the_running_image_and_refuses_what_it_must") {
        return;
    }
    let mut loops = Loops::default();
    let (fixture, running) = Fixture::new(&mut loops);
    let Running {
        image,
        hash,
        root_hash,
        data_device: _,
        uki_bytes,
    } = running;
    let disk_file = fixture.dir.path().join("disk.img");
    sparse_file(&disk_file, 3 * GIB);
    let disk = loops.attach(&disk_file, &["--partscan"]);
    // Stale bytes where slot B's root begins, which the install must clear.
    File::options()
        .write(true)
        .open(&disk)
        .and_then(|file| file.write_all_at(&vec![0xaa; MIB as usize], SLOT_B_ROOT))
        .expect("stale bytes");
    let untouched = sha256sum(&disk);

    // UKIs that would not boot this image from the disk.
    let other = fixture.dir.path().join("other.efi");
    make_uki(&other, &format!("roothash={}", "ab".repeat(32)));
    let output = fixture
        .installer(&disk, &["--uki", &other.display().to_string()])
        .output()
        .expect("runs");
    assert_refused(
        &output,
        &format!(
            "{} boots roothash={} but the running image is {root_hash}",
            other.display(),
            "ab".repeat(32)
        ),
    );
    let netboot = fixture.dir.path().join("netboot.efi");
    make_uki(
        &netboot,
        &format!("roothash={root_hash} systemd.verity_root_data=http://10.0.2.2/root.squashfs"),
    );
    let output = fixture
        .installer(&disk, &["--uki", &netboot.display().to_string()])
        .output()
        .expect("runs");
    assert_refused(
        &output,
        &format!(
            "{} names its root by URL (systemd.verity_root_data=http://10.0.2.2/root.squashfs): \
             it would not boot from the disk",
            netboot.display()
        ),
    );
    let output = fixture.installer(&disk, &[]).output().expect("runs");
    assert_refused(
        &output,
        "no UKI to install: pass --uki FILE|URL, or --tree URL (its install.efi), or boot with \
         xorbang.netboot=URL on the kernel command line",
    );

    // The dry run checks everything, prints the plan and writes nothing.
    let output = fixture.install(&disk, &["--dry-run"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        text.contains(&format!(
            "plan for {disk} (3.0 GiB): a GPT of 6 partitions, 2.3 GiB"
        )),
        "{text}"
    );
    let (data_uuid, hash_uuid) = root_hash.partition_uuids();
    assert!(
        text.lines().any(|line| line.starts_with("2  root-x86-64 ")
            && line.contains(&format!("{IMAGE_ID}_{VERSION} "))
            && line.contains(&data_uuid.to_string())),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("dry run: nothing was written to {disk}\n")),
        "{text}"
    );
    assert_eq!(sha256sum(&disk), untouched, "the dry run wrote to the disk");

    // The install.
    let output = fixture.install(&disk, &[]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "installed {IMAGE_ID} {VERSION} (root hash {root_hash}) on {disk} in "
        )) && last.ends_with(" s"),
        "{text}"
    );
    check_installed(&fixture, &disk, &root_hash, (&image, &hash), &uki_bytes);
    let labels: Vec<String> = read_gpt(&disk).iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        labels,
        [
            "esp",
            "xorbang-test_1",
            "xorbang-test_1_verity",
            "_empty",
            "_empty",
            "var"
        ]
    );
    let partitions = read_gpt(&disk);
    assert_eq!(partitions[1].unique_guid, data_uuid);
    assert_eq!(partitions[2].unique_guid, hash_uuid);

    // A second run finds the disk in use by what it wrote.
    let installed = sha256sum(&disk);
    let output = fixture.install(&disk, &[]);
    assert_refused(
        &output,
        &format!(
            "{disk} has a GPT partition table (6 partitions: vfat on 1, squashfs on 2, ext4 on \
             6); pass --wipe to overwrite it"
        ),
    );
    assert_eq!(
        sha256sum(&disk),
        installed,
        "a refused run wrote to the disk"
    );
    let output = fixture.install(&disk, &["--wipe"]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    check_installed(&fixture, &disk, &root_hash, (&image, &hash), &uki_bytes);

    // Partitions, as the kernel shows them once it reads the table (this host's kernel may
    // have no GPT parser: partx adds them).
    run(Command::new("partx").arg("-a").arg(&disk));
    let partition = format!("{disk}p1");
    let output = fixture.install(&partition, &[]);
    assert_refused(
        &output,
        &format!("{partition} is a partition, not a whole disk (its disk is {disk})"),
    );
    // A mounted partition, in a mount namespace of the installer's own.
    let mount_point = fixture.dir.path().join("mnt");
    std::fs::create_dir(&mount_point).expect("mount point");
    let installer = fixture.install_command_line(&disk);
    let output = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -o ro {disk}p6 {} && exec {installer}",
            mount_point.display()
        ))
        .output()
        .expect("unshare runs");
    assert_refused(
        &output,
        &format!("{disk}p6 is mounted at {}", mount_point.display()),
    );
}

impl Fixture {
    /// The install as one shell command line (every path here is free of spaces and quotes).
    fn install_command_line(&self, disk: &str) -> String {
        format!(
            "{} --disk {disk} --boot-report {} --cmdline console=ttyS0 --uki {} --wipe",
            env!("CARGO_BIN_EXE_xorbang-installer"),
            self.report.display(),
            self.uki.display()
        )
    }
}

/// The disk holds what the install promised, read straight from the disk.
fn check_installed(
    fixture: &Fixture,
    disk: &str,
    root_hash: &RootHash,
    (image, hash): (&Path, &Path),
    uki_bytes: &[u8],
) {
    let partitions = read_gpt(disk);
    assert_eq!(partitions.len(), 6);
    let types: Vec<Guid> = partitions.iter().map(|p| p.type_guid).collect();
    assert_eq!(
        types,
        [
            gpt::ESP,
            gpt::ROOT_X86_64,
            gpt::ROOT_VERITY_X86_64,
            gpt::ROOT_X86_64,
            gpt::ROOT_VERITY_X86_64,
            gpt::VAR
        ]
    );
    let offset = |index: usize| partitions[index].first_lba.0 * 512;
    let size = |index: usize| (partitions[index].last_lba.0 + 1) * 512 - offset(index);
    assert_eq!(offset(0), MIB);
    assert_eq!(offset(3), SLOT_B_ROOT);

    let image_bytes = std::fs::read(image).expect("image");
    assert_eq!(
        read_at(disk, offset(1), image_bytes.len() as u64),
        image_bytes,
        "slot A's root"
    );
    let tree = std::fs::read(hash).expect("tree");
    assert_eq!(
        read_at(disk, offset(2), tree.len() as u64),
        tree,
        "slot A's tree"
    );
    for index in [3, 4] {
        let zeros = vec![0u8; MIB as usize];
        assert_eq!(
            read_at(disk, offset(index), MIB),
            zeros,
            "slot B starts zeroed"
        );
        let end = offset(index) + size(index) - MIB;
        assert_eq!(read_at(disk, end, MIB), zeros, "slot B ends zeroed");
    }

    let esp = fixture.dir.path().join("esp-read-back.img");
    std::fs::write(&esp, read_at(disk, offset(0), size(0))).expect("esp copy");
    assert_eq!(
        mtype(&esp, &format!("::/EFI/Linux/{IMAGE_ID}_{VERSION}+3.efi")),
        uki_bytes
    );
    assert_eq!(
        mtype(&esp, "::/EFI/BOOT/BOOTX64.EFI"),
        std::fs::read(uki::SYSTEMD_BOOT).expect("systemd-boot")
    );
    assert_eq!(mtype(&esp, "::/loader/loader.conf"), b"timeout 0\n");
    assert_eq!(
        mtype(&esp, "::/xorbang/host-config.toml"),
        HOST_CONFIG.as_bytes()
    );

    let var = fs_probe::probe(&read_at(disk, offset(5), fs_probe::PROBE_BYTES as u64))
        .expect("a file system on /var");
    assert_eq!(var.kind, FsKind::Ext4);
    assert_eq!(var.label.as_deref(), Some("var"));
    assert_eq!(size(5), 256 * MIB);
    assert_eq!(size(1), GIB, "slot A keeps room to grow");
    let (data_uuid, _) = root_hash.partition_uuids();
    assert_eq!(partitions[1].unique_guid, data_uuid);
}

#[test]
fn a_disk_smaller_than_the_layout_is_refused() {
    if !can_run("install::a_disk_smaller_than_the_layout_is_refused") {
        return;
    }
    let mut loops = Loops::default();
    let (fixture, running) = Fixture::new(&mut loops);
    let data_device = running.data_device;
    let disk_file = fixture.dir.path().join("small.img");
    sparse_file(&disk_file, GIB);
    let disk = loops.attach(&disk_file, &[]);
    let before = sha256sum(&disk);
    let output = fixture.install(&disk, &[]);
    assert_refused(
        &output,
        &format!("{disk} is 1.0 GiB; the layout needs 2.3 GiB"),
    );
    assert_eq!(sha256sum(&disk), before);
    // The image's own loop device is the running system.
    let output = fixture.install(&data_device, &[]);
    assert_refused(
        &output,
        &format!(
            "{data_device} holds the running system ({data_device}: the running image's verity \
             data device)"
        ),
    );
}

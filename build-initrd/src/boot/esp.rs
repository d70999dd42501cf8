//! The EFI System Partition for a UKI: a FAT32 image holding the UKI as a Boot Loader
//! Specification type #2 entry `EFI/Linux/<name>.efi` (what systemd-boot lists), and at the
//! removable media path `EFI/BOOT/BOOTX64.EFI` (what firmware boots with no boot entries)
//! either systemd-boot, with `loader/loader.conf` saying `timeout 0` (the A/B layout: the
//! boot loader picks the newest entry with tries left), or the UKI itself (one slot, no
//! boot loader).
//!
//! Made with mkfs.vfat (`--invariant`, fixed volume id) and mtools, so the same UKI gives the
//! same bytes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::file_error::{FileAction, FileError};
use crate::output::PendingOutput;
use crate::tool::{self, ToolError};

const MIB: u64 = 1 << 20;
/// FAT32 needs at least 65525 clusters; with 512-byte clusters that is about 33 MiB.
const MIN_BYTES: u64 = 64 * MIB;
/// Room beyond the UKI for FAT metadata and a later UKI beside it.
const SLACK_BYTES: u64 = 16 * MIB;
const VOLUME_ID: &str = "58425200";

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("the entry name {0:?} must be a plain file name")]
    Name(String),
    #[error(
        "the extra files {first} and {second} would both be {name} in the .extra.d \
         directories (FAT file names ignore case)"
    )]
    SameExtraName {
        first: PathBuf,
        second: PathBuf,
        name: String,
    },
}

/// `loader/loader.conf` of the A/B layout: no menu, the default entry boots at once.
/// No `default` line: systemd-boot then takes the newest entry with tries left, and a
/// rollback needs nothing written.
const LOADER_CONF: &str = "timeout 0\n";

/// Writes `out`: a FAT32 ESP with `uki` as `EFI/Linux/<name>.efi` and at
/// `EFI/BOOT/BOOTX64.EFI` `boot_loader` (systemd-boot) or else the UKI itself, and `extras`
/// in each UKI copy's `.extra.d` directory, where systemd-stub picks up `*.raw` system
/// extensions (passed to the initramfs as /.extra/sysext/) and `*.cred` credentials.
pub fn write_esp(
    uki: &Path,
    name: &str,
    boot_loader: Option<&Path>,
    extras: &[PathBuf],
    out: &Path,
) -> Result<u64, EspError> {
    if name.is_empty() || name.contains(['/', '\\', ':']) {
        return Err(EspError::Name(name.to_owned()));
    }
    let mut extra_names: Vec<String> = Vec::new();
    for (index, extra) in extras.iter().enumerate() {
        let file = match extra.file_name().and_then(|name| name.to_str()) {
            Some(file) if !file.starts_with('.') => file.to_owned(),
            _ => return Err(EspError::Name(extra.display().to_string())),
        };
        // mcopy would silently replace (or rename) the first file with the second.
        if let Some(earlier) = extra_names
            .iter()
            .position(|name| name.to_lowercase() == file.to_lowercase())
        {
            return Err(EspError::SameExtraName {
                first: extras[earlier].clone(),
                second: extras[index].clone(),
                name: file,
            });
        }
        extra_names.push(file);
    }
    let size = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.len())
            .map_err(FileError::of(FileAction::Inspect, path))
    };
    let mut payload = size(uki)?;
    if let Some(loader) = boot_loader {
        payload += size(loader)?;
    }
    for extra in extras {
        payload += size(extra)?;
    }
    // Two copies of everything, then slack, in whole MiB.
    let bytes = (2 * payload + SLACK_BYTES)
        .div_ceil(MIB)
        .max(MIN_BYTES / MIB)
        * MIB;
    let pending = PendingOutput::new(out)?;
    let image = pending.temporary();
    pending
        .file()
        .set_len(bytes)
        .map_err(FileError::of(FileAction::Extend(bytes), image))?;
    run(Command::new("mkfs.vfat")
        .args([
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-n",
            "ESP",
            "-i",
            VOLUME_ID,
            "--invariant",
        ])
        .arg(image))?;
    for dir in ["::/EFI", "::/EFI/BOOT", "::/EFI/Linux"] {
        run(Command::new("mmd").arg("-i").arg(image).arg(dir))?;
    }
    let mut uki_targets = vec![format!("::/EFI/Linux/{name}.efi")];
    match boot_loader {
        Some(loader) => install_boot_loader(image, loader, &companion_path(out, "loader.conf"))?,
        None => uki_targets.push("::/EFI/BOOT/BOOTX64.EFI".to_owned()),
    }
    for target in uki_targets {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(image)
            .arg(uki)
            .arg(&target))?;
        if extras.is_empty() {
            continue;
        }
        let extra_dir = format!("{target}.extra.d");
        run(Command::new("mmd").arg("-i").arg(image).arg(&extra_dir))?;
        for (extra, file) in extras.iter().zip(&extra_names) {
            run(Command::new("mcopy")
                .arg("-i")
                .arg(image)
                .arg(extra)
                .arg(format!("{extra_dir}/{file}")))?;
        }
    }
    pending.commit()?;
    Ok(bytes)
}

/// systemd-boot as the removable media path and its `loader.conf` (staged at `conf`).
fn install_boot_loader(image: &Path, loader: &Path, conf: &Path) -> Result<(), EspError> {
    std::fs::write(conf, LOADER_CONF).map_err(FileError::of(FileAction::Write, conf))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(image)
        .arg(loader)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    run(Command::new("mmd").arg("-i").arg(image).arg("::/loader"))?;
    let copied = run(Command::new("mcopy")
        .arg("-i")
        .arg(image)
        .arg(conf)
        .arg("::/loader/loader.conf"));
    std::fs::remove_file(conf).map_err(FileError::of(FileAction::Remove, conf))?;
    copied
}

fn companion_path(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Runs a tool; mtools stamps files with the time unless SOURCE_DATE_EPOCH says otherwise,
/// so it is pinned to the epoch when unset.
fn run(command: &mut Command) -> Result<(), EspError> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        command.env("SOURCE_DATE_EPOCH", OsString::from("0"));
    }
    Ok(tool::run(command, "dosfstools and mtools")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools_present() -> bool {
        ["mkfs.vfat", "mmd", "mcopy", "mdir"].iter().all(|tool| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|output| output.status.success())
        })
    }

    #[test]
    fn holds_the_uki_at_both_paths_and_rebuilds_identically() {
        if !tools_present() {
            eprintln!("skipped: needs dosfstools and mtools");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let uki = dir.path().join("uki.efi");
        std::fs::write(&uki, vec![0x5a; 300_000]).expect("write");
        let esp = dir.path().join("esp.img");
        let size = write_esp(&uki, "xorbang", None, &[], &esp).expect("writes");
        assert_eq!(size, MIN_BYTES);
        for path in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/xorbang.efi"] {
            let copy = dir.path().join("copy.efi");
            let status = Command::new("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(&esp)
                .arg(path)
                .arg(&copy)
                .status()
                .expect("mcopy runs");
            assert!(status.success(), "{path}");
            assert_eq!(
                std::fs::read(&copy).expect("read"),
                vec![0x5a; 300_000],
                "{path}"
            );
        }
        let again = dir.path().join("again.img");
        write_esp(&uki, "xorbang", None, &[], &again).expect("writes");
        assert_eq!(
            std::fs::read(&again).expect("read"),
            std::fs::read(&esp).expect("read"),
            "reproducible"
        );
    }

    fn read_from_esp(esp: &Path, path: &str) -> Option<Vec<u8>> {
        let output = Command::new("mtype")
            .arg("-i")
            .arg(esp)
            .arg(path)
            .output()
            .expect("mtype runs");
        output.status.success().then_some(output.stdout)
    }

    #[test]
    fn with_systemd_boot_the_uki_is_only_an_entry() {
        if !tools_present() {
            eprintln!("skipped: needs dosfstools and mtools");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let uki = dir.path().join("uki.efi");
        std::fs::write(&uki, b"uki").expect("write");
        let loader = dir.path().join("systemd-bootx64.efi");
        std::fs::write(&loader, b"loader").expect("write");
        let esp = dir.path().join("esp.img");
        write_esp(&uki, "os_1+3", Some(&loader), &[], &esp).expect("writes");
        assert_eq!(
            read_from_esp(&esp, "::/EFI/BOOT/BOOTX64.EFI").as_deref(),
            Some(&b"loader"[..])
        );
        assert_eq!(
            read_from_esp(&esp, "::/EFI/Linux/os_1+3.efi").as_deref(),
            Some(&b"uki"[..])
        );
        assert_eq!(
            read_from_esp(&esp, "::/loader/loader.conf").as_deref(),
            Some(LOADER_CONF.as_bytes())
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 3, "nothing staged is left: {left:?}");
    }

    #[test]
    fn extras_sit_in_both_extra_directories() {
        if !tools_present() {
            eprintln!("skipped: needs dosfstools and mtools");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let uki = dir.path().join("uki.efi");
        std::fs::write(&uki, b"uki").expect("write");
        let extra = dir.path().join("gui.raw");
        std::fs::write(&extra, b"extension").expect("write");
        let esp = dir.path().join("esp.img");
        write_esp(&uki, "xorbang", None, &[extra], &esp).expect("writes");
        for path in [
            "::/EFI/BOOT/BOOTX64.EFI.extra.d/gui.raw",
            "::/EFI/Linux/xorbang.efi.extra.d/gui.raw",
        ] {
            let output = Command::new("mtype")
                .arg("-i")
                .arg(&esp)
                .arg(path)
                .output()
                .expect("mtype runs");
            assert_eq!(output.stdout, b"extension", "{path}");
        }
        let hidden = dir.path().join(".hidden");
        std::fs::write(&hidden, b"x").expect("write");
        let error = write_esp(&uki, "xorbang", None, &[hidden], &dir.path().join("no.img"))
            .expect_err("hidden name");
        assert!(error.to_string().contains(".hidden"), "{error}");
    }

    #[test]
    fn extras_whose_names_collide_on_fat_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("esp.img");
        let uki = dir.path().join("uki.efi");
        for (a, b) in [("a/gui.raw", "b/gui.raw"), ("a/gui.raw", "b/GUI.raw")] {
            let (a, b) = (dir.path().join(a), dir.path().join(b));
            let error = write_esp(&uki, "xorbang", None, &[a.clone(), b.clone()], &out)
                .expect_err("same name on FAT");
            let name = b.file_name().and_then(|name| name.to_str()).unwrap_or("");
            assert_eq!(
                error.to_string(),
                format!(
                    "the extra files {} and {} would both be {name} in the .extra.d \
                     directories (FAT file names ignore case)",
                    a.display(),
                    b.display()
                )
            );
        }
        assert!(!out.exists());
    }

    #[test]
    fn refuses_names_with_paths_and_missing_ukis() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("esp.img");
        let error =
            write_esp(&dir.path().join("uki.efi"), "a/b", None, &[], &out).expect_err("name");
        assert!(error.to_string().contains("\"a/b\""), "{error}");
        let error = write_esp(&dir.path().join("nope.efi"), "xorbang", None, &[], &out)
            .expect_err("missing");
        assert!(error.to_string().contains("nope.efi"), "{error}");
        assert!(!out.exists());
    }
}

//! Filesystem identification from a device's first bytes, in place of blkid: which of the
//! filesystems the init can meet a device holds, and its UUID and label for `UUID=`/`LABEL=`.
//!
//! Pure: the caller reads the first [`PROBE_BYTES`] of the device (less if it is smaller).

use std::fmt;

use crate::bytes::{le_u16, le_u32};

/// How much of a device `probe` looks at: every superblock it knows lies within the first
/// 4 KiB, one block. On a dm-verity device each block read is a block hashed, so the probe
/// reads no more than the mount will.
pub const PROBE_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Squashfs,
    /// EROFS, the other read-only image format a root can be built in.
    Erofs,
    /// ext2, ext3 and ext4: the kernel's ext4 driver mounts all three.
    Ext4,
    /// FAT12, FAT16 and FAT32.
    Vfat,
}

/// Kernel filesystem type names, as `mount -t` takes them.
impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Squashfs => "squashfs",
            Self::Erofs => "erofs",
            Self::Ext4 => "ext4",
            Self::Vfat => "vfat",
        })
    }
}

/// What a device holds. `uuid` and `label` are formatted as blkid reports them, so a
/// `UUID=`/`LABEL=` a user copied from blkid matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: FsKind,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

/// Identifies the filesystem at the start of `bytes`; `None` for anything else (including a
/// buffer too short to tell).
pub fn probe(bytes: &[u8]) -> Option<FsInfo> {
    probe_squashfs(bytes)
        .or_else(|| probe_erofs(bytes))
        .or_else(|| probe_ext(bytes))
        .or_else(|| probe_vfat(bytes))
}

/// SquashFS: "hsqs" (the magic 0x73717368 little-endian) at 0. Only version 4 counts: it is
/// the only one the kernel mounts. SquashFS has neither UUID nor label.
fn probe_squashfs(bytes: &[u8]) -> Option<FsInfo> {
    const MAJOR_OFFSET: usize = 28;
    if bytes.get(..4)? != b"hsqs" || le_u16(bytes, MAJOR_OFFSET)? != 4 {
        return None;
    }
    Some(FsInfo {
        kind: FsKind::Squashfs,
        uuid: None,
        label: None,
    })
}

/// The EROFS superblock starts at byte 1024: magic, checksum, features, then the UUID at
/// +48 and the volume name at +64.
pub(crate) const EROFS_MAGIC_OFFSET: usize = 1024;
pub(crate) const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub(crate) const EROFS_UUID_OFFSET: usize = EROFS_MAGIC_OFFSET + 48;
pub(crate) const EROFS_LABEL_OFFSET: usize = EROFS_MAGIC_OFFSET + 64;

fn probe_erofs(bytes: &[u8]) -> Option<FsInfo> {
    if le_u32(bytes, EROFS_MAGIC_OFFSET)? != EROFS_MAGIC {
        return None;
    }
    let uuid: [u8; 16] = bytes
        .get(EROFS_UUID_OFFSET..EROFS_UUID_OFFSET + 16)?
        .try_into()
        .ok()?;
    let label = bytes.get(EROFS_LABEL_OFFSET..EROFS_LABEL_OFFSET + 16)?;
    Some(FsInfo {
        kind: FsKind::Erofs,
        uuid: format_uuid(&uuid),
        label: nul_terminated(label),
    })
}

/// The ext2/3/4 superblock starts at byte 1024.
pub(crate) const EXT_MAGIC_OFFSET: usize = 0x438;
pub(crate) const EXT_MAGIC: u16 = 0xEF53;
const EXT_INCOMPAT_OFFSET: usize = 0x460;
pub(crate) const EXT_UUID_OFFSET: usize = 0x468;
pub(crate) const EXT_LABEL_OFFSET: usize = 0x478;
/// An external journal carries the ext magic but is no filesystem (blkid calls it "jbd").
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;

fn probe_ext(bytes: &[u8]) -> Option<FsInfo> {
    if le_u16(bytes, EXT_MAGIC_OFFSET)? != EXT_MAGIC {
        return None;
    }
    if le_u32(bytes, EXT_INCOMPAT_OFFSET)? & EXT_INCOMPAT_JOURNAL_DEV != 0 {
        return None;
    }
    let uuid: [u8; 16] = bytes
        .get(EXT_UUID_OFFSET..EXT_UUID_OFFSET + 16)?
        .try_into()
        .ok()?;
    let label = bytes.get(EXT_LABEL_OFFSET..EXT_LABEL_OFFSET + 16)?;
    Some(FsInfo {
        kind: FsKind::Ext4,
        uuid: format_uuid(&uuid),
        label: nul_terminated(label),
    })
}

/// A standard lower-case UUID; `None` for the nil UUID, which blkid does not report.
fn format_uuid(bytes: &[u8; 16]) -> Option<String> {
    if bytes.iter().all(|&byte| byte == 0) {
        return None;
    }
    let hex = |range: std::ops::Range<usize>| -> String {
        bytes[range]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    ))
}

/// Text up to the first NUL, without the trailing white space blkid trims; `None` when
/// that leaves nothing.
fn nul_terminated(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&byte| byte == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    non_empty(text.trim_end_matches(is_c_space).to_owned())
}

/// C's `isspace` in the C locale, which blkid trims labels with: ASCII white space and the
/// vertical tab.
fn is_c_space(ch: char) -> bool {
    ch.is_ascii_whitespace() || ch == '\x0b'
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// Offsets of the extended BPB fields: FAT12/16 keep them at 0x24, FAT32 after its larger
/// BPB at 0x40.
struct ExtendedBpb {
    signature: usize,
    volume_id: usize,
    label: usize,
}

const FAT16_EBPB: ExtendedBpb = ExtendedBpb {
    signature: 0x26,
    volume_id: 0x27,
    label: 0x2B,
};
const FAT32_EBPB: ExtendedBpb = ExtendedBpb {
    signature: 0x42,
    volume_id: 0x43,
    label: 0x47,
};
/// Boot signatures saying the volume id and label fields are present (0x28: id only).
const EBPB_FULL: u8 = 0x29;
const EBPB_ID_ONLY: u8 = 0x28;
const FAT_LABEL_LEN: usize = 11;
/// What mkfs and Windows write into the label field of an unlabelled volume.
const FAT_NO_LABEL: &str = "NO NAME";

/// FAT12/16/32: a boot sector whose BPB is plausible. FAT has no magic number, so this checks
/// the fields the kernel's FAT driver also refuses to mount without.
fn probe_vfat(bytes: &[u8]) -> Option<FsInfo> {
    let sector = bytes.get(..512)?;
    if !fat_bpb_is_plausible(sector)? {
        return None;
    }
    // FAT32 is the only kind whose 16-bit sectors-per-FAT is zero.
    let ebpb = if le_u16(sector, 0x16)? == 0 && le_u32(sector, 0x24)? != 0 {
        FAT32_EBPB
    } else {
        FAT16_EBPB
    };
    let signature = sector[ebpb.signature];
    let (uuid, label) = match signature {
        EBPB_FULL | EBPB_ID_ONLY => {
            let id = le_u32(sector, ebpb.volume_id)?;
            let label = (signature == EBPB_FULL)
                .then(|| fat_label(&sector[ebpb.label..ebpb.label + FAT_LABEL_LEN]))
                .flatten();
            (Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)), label)
        }
        _ => (None, None),
    };
    Some(FsInfo {
        kind: FsKind::Vfat,
        uuid,
        label,
    })
}

fn fat_bpb_is_plausible(sector: &[u8]) -> Option<bool> {
    let jump = matches!(sector[0], 0xEB | 0xE9);
    let bytes_per_sector = le_u16(sector, 0x0B)?;
    let sectors_per_cluster = sector[0x0D];
    let reserved_sectors = le_u16(sector, 0x0E)?;
    let fat_count = sector[0x10];
    let media = sector[0x15];
    Some(
        jump && (512..=4096).contains(&bytes_per_sector)
            && bytes_per_sector.is_power_of_two()
            && sectors_per_cluster.is_power_of_two()
            && reserved_sectors >= 1
            && fat_count >= 1
            && (media == 0xF0 || media >= 0xF8),
    )
}

/// The 11-byte label, space-padded, and cut at a NUL as blkid cuts it; "NO NAME" and blank
/// mean unlabelled.
fn fat_label(raw: &[u8]) -> Option<String> {
    nul_terminated(raw).filter(|label| label != FAT_NO_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{erofs_fixture, ext4_fixture, squashfs_fixture};
    use std::path::Path;
    use std::process::Command;

    /// A FAT boot sector as mkfs.fat writes it; `fat32` picks the BPB layout.
    fn vfat_fixture(fat32: bool, volume_id: u32, label: &[u8; 11]) -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        bytes[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        bytes[3..11].copy_from_slice(b"mkfs.fat");
        bytes[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        bytes[0x0D] = 4;
        bytes[0x0E..0x10].copy_from_slice(&1u16.to_le_bytes());
        bytes[0x10] = 2;
        bytes[0x15] = 0xF8;
        let ebpb = if fat32 {
            bytes[0x24..0x28].copy_from_slice(&64u32.to_le_bytes());
            FAT32_EBPB
        } else {
            bytes[0x16..0x18].copy_from_slice(&16u16.to_le_bytes());
            FAT16_EBPB
        };
        bytes[ebpb.signature] = EBPB_FULL;
        bytes[ebpb.volume_id..ebpb.volume_id + 4].copy_from_slice(&volume_id.to_le_bytes());
        bytes[ebpb.label..ebpb.label + 11].copy_from_slice(label);
        bytes[510] = 0x55;
        bytes[511] = 0xAA;
        bytes
    }

    #[test]
    fn kind_names_are_the_kernel_fs_types() {
        assert_eq!(FsKind::Squashfs.to_string(), "squashfs");
        assert_eq!(FsKind::Erofs.to_string(), "erofs");
        assert_eq!(FsKind::Ext4.to_string(), "ext4");
        assert_eq!(FsKind::Vfat.to_string(), "vfat");
    }

    #[test]
    fn squashfs_is_recognised_by_magic_and_version() {
        let info = probe(&squashfs_fixture()).expect("squashfs");
        assert_eq!(info.kind, FsKind::Squashfs);
        assert_eq!((info.uuid, info.label), (None, None));
        let mut v3 = squashfs_fixture();
        v3[28] = 3;
        assert_eq!(probe(&v3), None);
    }

    #[test]
    fn erofs_uuid_and_label() {
        let uuid = [
            0x4d, 0x2f, 0x6a, 0x8c, 0x1b, 0x3d, 0x4f, 0x5e, 0x9a, 0x7c, 0x0e, 0x2d, 0x4f, 0x6a,
            0x8b, 0x1c,
        ];
        let info = probe(&erofs_fixture(uuid, "xorbang-root")).expect("erofs");
        assert_eq!(
            info,
            FsInfo {
                kind: FsKind::Erofs,
                uuid: Some("4d2f6a8c-1b3d-4f5e-9a7c-0e2d4f6a8b1c".to_owned()),
                label: Some("xorbang-root".to_owned()),
            }
        );
        let bare = probe(&erofs_fixture([0; 16], "")).expect("erofs");
        assert_eq!((bare.uuid, bare.label), (None, None));
    }

    #[test]
    fn ext4_uuid_and_label() {
        let uuid = [
            0x95, 0x41, 0x72, 0xdf, 0xee, 0x9a, 0xaa, 0xb2, 0xd9, 0x0a, 0x0a, 0xb1, 0x62, 0xee,
            0x6b, 0xc5,
        ];
        let info = probe(&ext4_fixture(uuid, "rootfs")).expect("ext4");
        assert_eq!(
            info,
            FsInfo {
                kind: FsKind::Ext4,
                uuid: Some("954172df-ee9a-aab2-d90a-0ab162ee6bc5".to_owned()),
                label: Some("rootfs".to_owned()),
            }
        );
        let full = probe(&ext4_fixture(uuid, "sixteen-chars-xx")).expect("ext4");
        assert_eq!(full.label.as_deref(), Some("sixteen-chars-xx"));
        let bare = probe(&ext4_fixture([0; 16], "")).expect("ext4");
        assert_eq!((bare.uuid, bare.label), (None, None));
    }

    #[test]
    fn ext_journal_device_is_not_a_filesystem() {
        let mut journal = ext4_fixture([1; 16], "");
        journal[EXT_INCOMPAT_OFFSET] = EXT_INCOMPAT_JOURNAL_DEV as u8;
        assert_eq!(probe(&journal), None);
    }

    #[test]
    fn vfat_volume_id_and_label_as_blkid_prints_them() {
        for fat32 in [false, true] {
            let info = probe(&vfat_fixture(fat32, 0x1A2B_3C4D, b"EFI SYSTEM ")).expect("vfat");
            assert_eq!(
                info,
                FsInfo {
                    kind: FsKind::Vfat,
                    uuid: Some("1A2B-3C4D".to_owned()),
                    label: Some("EFI SYSTEM".to_owned()),
                },
                "fat32={fat32}"
            );
        }
        let unlabelled = probe(&vfat_fixture(false, 0xABCD, b"NO NAME    ")).expect("vfat");
        assert_eq!(unlabelled.uuid.as_deref(), Some("0000-ABCD"));
        assert_eq!(unlabelled.label, None);
    }

    #[test]
    fn vfat_without_extended_bpb_has_no_id() {
        let mut old = vfat_fixture(false, 0x1234_5678, b"OLD        ");
        old[FAT16_EBPB.signature] = 0;
        let info = probe(&old).expect("vfat");
        assert_eq!((info.uuid, info.label), (None, None));
    }

    #[test]
    fn other_data_is_not_mistaken_for_a_filesystem() {
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&[0u8; PROBE_BYTES]), None);
        assert_eq!(probe(b"hsqs"), None);
        // An MBR boot sector: 0x55AA but no BPB.
        let mut mbr = vec![0u8; 512];
        mbr[0] = 0xEB;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(probe(&mbr), None);
        // Truncated just before the ext label: too short to say.
        assert_eq!(probe(&ext4_fixture([1; 16], "x")[..0x480]), None);
    }

    /// Real images from the host's mkfs tools, checked against blkid where it exists.
    #[test]
    fn real_images_match_blkid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checked = 0;
        for (tool, kind) in [
            ("mkfs.ext4", FsKind::Ext4),
            ("mkfs.vfat", FsKind::Vfat),
            ("mksquashfs", FsKind::Squashfs),
            ("mkfs.erofs", FsKind::Erofs),
        ] {
            if !crate::fixtures::tool_exists(tool) {
                eprintln!("{tool} not installed: skipping");
                continue;
            }
            let image = dir.path().join(format!("{kind}.img"));
            make_image(tool, &image, dir.path());
            let bytes = std::fs::read(&image).expect("read image");
            let info = probe(&bytes[..PROBE_BYTES.min(bytes.len())]).expect("probe real image");
            assert_eq!(info.kind, kind, "{tool}");
            if let Some(expected) = blkid(&image) {
                assert_eq!(info, expected, "{tool} vs blkid");
            }
            checked += 1;
        }
        eprintln!("checked {checked} real images");
    }

    fn make_image(tool: &str, image: &Path, scratch: &Path) {
        let mut command = Command::new(tool);
        match tool {
            "mksquashfs" => {
                let source = scratch.join("squash-src");
                std::fs::create_dir_all(&source).expect("mkdir");
                std::fs::write(source.join("hello"), "hello\n").expect("write");
                command
                    .arg(&source)
                    .arg(image)
                    .args(["-noappend", "-quiet", "-no-progress"]);
            }
            "mkfs.erofs" => {
                let source = scratch.join("erofs-src");
                std::fs::create_dir_all(&source).expect("mkdir");
                std::fs::write(source.join("hello"), "hello\n").expect("write");
                command
                    .arg("-zlz4hc")
                    .arg("-U4d2f6a8c-1b3d-4f5e-9a7c-0e2d4f6a8b1c")
                    .arg("--quiet")
                    .arg(image)
                    .arg(&source);
            }
            _ => {
                let file = std::fs::File::create(image).expect("create");
                file.set_len(4 << 20).expect("size");
                if tool == "mkfs.ext4" {
                    command.args(["-q", "-F", "-L", "xorbang-root"]);
                    command.args(["-U", "954172df-ee9a-aab2-d90a-0ab162ee6bc5"]);
                } else {
                    command.args(["-n", "XORBANG", "-i", "1A2B3C4D"]);
                }
                command.arg(image);
            }
        }
        let output = command.output().expect("run mkfs");
        assert!(output.status.success(), "{tool}: {output:?}");
    }

    /// What `blkid -o export` says, as an FsInfo; `None` when blkid is not installed.
    fn blkid(image: &Path) -> Option<FsInfo> {
        if !crate::fixtures::tool_exists("blkid") {
            return None;
        }
        let output = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(image)
            .output()
            .expect("run blkid");
        assert!(output.status.success(), "blkid: {output:?}");
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let kind = match field("TYPE").as_deref() {
            Some("ext2" | "ext3" | "ext4") => FsKind::Ext4,
            Some("vfat") => FsKind::Vfat,
            Some("squashfs") => FsKind::Squashfs,
            Some("erofs") => FsKind::Erofs,
            other => panic!("blkid TYPE {other:?}"),
        };
        Some(FsInfo {
            kind,
            uuid: field("UUID"),
            label: field("LABEL"),
        })
    }

    #[test]
    fn labels_are_cut_at_a_nul_and_trimmed_as_blkid_does() {
        // blkid 2.39 reports the FAT boot sector label "AB\0CD" as "AB", and trims trailing
        // white space from both kinds of label; these used to come back with the NUL and the
        // spaces in them.
        let fat = probe(&vfat_fixture(false, 1, b"AB\0CD      ")).expect("vfat");
        assert_eq!(fat.label.as_deref(), Some("AB"));
        let spaced = probe(&vfat_fixture(true, 1, b"AB  CD\t    ")).expect("vfat");
        assert_eq!(spaced.label.as_deref(), Some("AB  CD"));
        let blank = probe(&vfat_fixture(false, 1, b"\0NO NAME   ")).expect("vfat");
        assert_eq!(blank.label, None);
        let ext = probe(&ext4_fixture([1; 16], "root  \x0b")).expect("ext4");
        assert_eq!(ext.label.as_deref(), Some("root"));
        let ext = probe(&ext4_fixture([1; 16], "  ")).expect("ext4");
        assert_eq!(ext.label, None);
    }

    /// An ext4 image whose label has trailing spaces, as mkfs.ext4 writes it, against blkid.
    #[test]
    fn trailing_spaces_in_a_real_ext4_label_match_blkid() {
        if !crate::fixtures::tool_exists("mkfs.ext4") {
            eprintln!("mkfs.ext4 not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("spaced.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(4 << 20))
            .expect("create");
        let output = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root  "])
            .arg(&image)
            .output()
            .expect("run mkfs.ext4");
        assert!(output.status.success(), "mkfs.ext4: {output:?}");
        let bytes = std::fs::read(&image).expect("read image");
        assert_eq!(&bytes[EXT_LABEL_OFFSET..EXT_LABEL_OFFSET + 7], b"root  \0");
        let info = probe(&bytes[..PROBE_BYTES]).expect("ext4");
        assert_eq!(info.label.as_deref(), Some("root"));
        if let Some(expected) = blkid(&image) {
            assert_eq!(info, expected);
        }
    }

    use crate::fixtures::XorShift;

    const FUZZ_ITERATIONS: usize = 100_000;
    /// Every byte `probe` reads lies below this (the ext label ends at 0x488); the loop
    /// re-randomises only this head of its 64 KiB buffer, and checks that the rest does not
    /// matter.
    const HEAD: usize = 0x600;

    /// The byte ranges of the fields `probe` reads, where damage is most telling.
    const FIELDS: [std::ops::Range<usize>; 8] = [
        0..4,
        0x0B..0x18,
        0x24..0x60,
        0x1FE..0x200,
        EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2,
        EXT_INCOMPAT_OFFSET..EXT_INCOMPAT_OFFSET + 4,
        EXT_UUID_OFFSET..EXT_UUID_OFFSET + 16,
        EXT_LABEL_OFFSET..EXT_LABEL_OFFSET + 16,
    ];

    /// One random change: a byte anywhere in the head or in a field, a byte a label parser
    /// must handle (NUL, space, invalid UTF-8), or a zeroed run.
    fn mutate(rng: &mut XorShift, head: &mut [u8]) {
        let field = FIELDS[rng.below(FIELDS.len())].clone();
        let at = field.start + rng.below(field.len());
        match rng.below(5) {
            0 => head[rng.below(HEAD)] = rng.next_u64() as u8,
            1 => head[at] ^= 1 << rng.below(8),
            2 => head[at] = *rng.pick(&[0, b' ', b'\t', 0x80, 0xC3, 0xFF, b'A']),
            3 => head[at] = rng.next_u64() as u8,
            _ => {
                let end = (at + rng.below(8)).min(HEAD);
                head[at..end].fill(0);
            }
        }
    }

    fn is_hex_in(text: &str, upper: bool) -> bool {
        text.chars().all(|ch| {
            ch.is_ascii_digit() || (ch.is_ascii_hexdigit() && ch.is_ascii_uppercase() == upper)
        })
    }

    /// What every `probe` answer satisfies, whatever bytes it came from.
    fn assert_consistent(bytes: &[u8], info: &FsInfo) {
        for text in [&info.uuid, &info.label].into_iter().flatten() {
            assert!(!text.is_empty(), "{info:?}");
            assert!(!text.contains('\0'), "NUL in {info:?}");
            assert_eq!(
                text.trim_end_matches(is_c_space),
                text,
                "untrimmed {info:?}"
            );
        }
        match info.kind {
            FsKind::Squashfs => {
                assert_eq!(&bytes[..4], b"hsqs");
                assert_eq!((&info.uuid, &info.label), (&None, &None));
            }
            FsKind::Erofs => {
                assert_eq!(le_u32(bytes, EROFS_MAGIC_OFFSET), Some(EROFS_MAGIC));
                if let Some(uuid) = &info.uuid {
                    assert_eq!(uuid.len(), 36, "{info:?}");
                }
            }
            FsKind::Ext4 => {
                assert_eq!(le_u16(bytes, EXT_MAGIC_OFFSET), Some(EXT_MAGIC));
                let raw = &bytes[EXT_UUID_OFFSET..EXT_UUID_OFFSET + 16];
                match &info.uuid {
                    Some(uuid) => {
                        assert_eq!(uuid.len(), 36, "{info:?}");
                        let digits: String = uuid.split('-').collect();
                        assert_eq!(
                            uuid.split('-').map(str::len).collect::<Vec<_>>(),
                            [8, 4, 4, 4, 12]
                        );
                        assert!(is_hex_in(&digits, false), "{info:?}");
                        let expected: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                        assert_eq!(digits, expected);
                    }
                    None => assert_eq!(raw, [0; 16]),
                }
                if let Some(label) = &info.label {
                    assert!(label.len() <= 16 * 3, "{info:?}");
                }
            }
            FsKind::Vfat => {
                assert!(matches!(bytes[0], 0xEB | 0xE9));
                if let Some(uuid) = &info.uuid {
                    assert_eq!(uuid.len(), 9, "{info:?}");
                    assert_eq!(uuid.as_bytes()[4], b'-', "{info:?}");
                    assert!(is_hex_in(&uuid.replace('-', ""), true), "{info:?}");
                }
                if let Some(label) = &info.label {
                    assert_ne!(label, FAT_NO_LABEL);
                    assert!(label.chars().count() <= FAT_LABEL_LEN, "{info:?}");
                }
            }
        }
    }

    /// Random 64 KiB buffers and damaged copies of the fixtures, cut to random lengths:
    /// `probe` never panics, its answers are consistent with the bytes, and its UUIDs and
    /// labels are non-empty text without NULs or trailing white space.
    #[test]
    fn random_and_damaged_buffers_never_panic_and_answer_clean_text() {
        let mut rng = XorShift(0x510e_527f_ade6_82d1);
        let uuid = [
            0x95, 0x41, 0x72, 0xdf, 0xee, 0x9a, 0xaa, 0xb2, 0xd9, 0x0a, 0x0a, 0xb1, 0x62, 0xee,
            0x6b, 0xc5,
        ];
        let fixtures = [
            squashfs_fixture(),
            erofs_fixture(uuid, "xorbang-root"),
            erofs_fixture([0; 16], ""),
            ext4_fixture(uuid, "rootfs"),
            ext4_fixture([0; 16], "sixteen-chars-xx"),
            vfat_fixture(false, 0x1A2B_3C4D, b"EFI SYSTEM "),
            vfat_fixture(true, 0xABCD, b"NO NAME    "),
        ];
        let mut buffer = vec![0u8; PROBE_BYTES];
        rng.fill(&mut buffer);
        let mut found = std::collections::BTreeMap::new();
        for iteration in 0..FUZZ_ITERATIONS {
            let head = &mut buffer[..HEAD];
            if iteration % 4 == 0 {
                rng.fill(head);
            } else {
                let fixture = &fixtures[rng.below(fixtures.len())];
                head.copy_from_slice(&fixture[..HEAD]);
                for _ in 0..=rng.below(4) {
                    mutate(&mut rng, head);
                }
            }
            let len = match rng.below(8) {
                0 => rng.below(HEAD),
                1 => rng.below(PROBE_BYTES + 1),
                _ => PROBE_BYTES,
            };
            let bytes = &buffer[..len];
            let info = probe(bytes);
            if let Some(info) = &info {
                assert_consistent(bytes, info);
            }
            let key = match &info {
                None => "none".to_owned(),
                Some(info) => format!(
                    "{}{}{}",
                    info.kind,
                    if info.uuid.is_some() { "+uuid" } else { "" },
                    if info.label.is_some() { "+label" } else { "" }
                ),
            };
            *found.entry(key).or_insert(0usize) += 1;
            if iteration % 256 == 0 && len == PROBE_BYTES {
                rng.fill(&mut buffer[HEAD..]);
                assert_eq!(
                    probe(&buffer),
                    info,
                    "bytes past {HEAD:#x} changed the answer"
                );
            }
        }
        eprintln!("probe answers over {FUZZ_ITERATIONS} buffers: {found:?}");
        for expected in [
            "none",
            "squashfs",
            "ext4",
            "ext4+uuid+label",
            "vfat",
            "vfat+uuid",
            "vfat+uuid+label",
        ] {
            assert!(
                found.contains_key(expected),
                "never saw {expected}: {found:?}"
            );
        }
    }
}

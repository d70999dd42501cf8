//! The UKI that goes on the disk's ESP must boot the image being installed, from the disk:
//! its signed command line's `roothash=` is the running image's, and it does not name its
//! root by URL (a netboot UKI fetches its root over HTTP and would not boot from the disk).

use xorbang_formats::cmdline::Cmdline;
use xorbang_formats::pe::{self, PeError};
use xorbang_formats::verity::RootHash;

/// The largest UKI accepted (a kernel, an initramfs with modules, a stub).
pub const MAX_UKI_BYTES: u64 = 256 << 20;

/// Keys that say where the root (or /usr) comes from: none may name a URL.
const ROOT_KEYS: &[&str] = &[
    "root",
    "systemd.verity_root_data",
    "systemd.verity_root_hash",
    "mount.usr",
    "systemd.verity_usr_data",
    "systemd.verity_usr_hash",
];

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("{uki} is not a UKI")]
    Pe {
        uki: String,
        #[source]
        source: PeError,
    },
    #[error("{uki} has no roothash= on its command line; the running image is {expected}")]
    NoRootHash { uki: String, expected: String },
    #[error("{uki} boots roothash={found} but the running image is {expected}")]
    RootHash {
        uki: String,
        found: String,
        expected: String,
    },
    #[error("{uki} names its root by URL ({key}={value}): it would not boot from the disk")]
    UrlRoot {
        uki: String,
        key: String,
        value: String,
    },
}

/// Checks `image` (named `uki` in errors) against the running image's root hash.
pub fn check(uki: &str, image: &[u8], root_hash: &RootHash) -> Result<(), UkiError> {
    let pe_error = |source| UkiError::Pe {
        uki: uki.to_owned(),
        source,
    };
    pe::section(image, ".linux").map_err(pe_error)?;
    let text = String::from_utf8_lossy(pe::section(image, ".cmdline").map_err(pe_error)?)
        .trim_end_matches('\0')
        .to_owned();
    let cmdline = Cmdline::parse(&text);
    if let Some(param) = cmdline.params.iter().find(|param| {
        ROOT_KEYS.contains(&param.key.as_str())
            && param.value.as_deref().is_some_and(|value| {
                let value = value.to_ascii_lowercase();
                value.starts_with("http://") || value.starts_with("https://")
            })
    }) {
        return Err(UkiError::UrlRoot {
            uki: uki.to_owned(),
            key: param.key.clone(),
            value: param.value.clone().unwrap_or_default(),
        });
    }
    let expected = root_hash.to_string();
    match cmdline.last("roothash").flatten() {
        None => Err(UkiError::NoRootHash {
            uki: uki.to_owned(),
            expected,
        }),
        Some(found) if !found.eq_ignore_ascii_case(&expected) => Err(UkiError::RootHash {
            uki: uki.to_owned(),
            found: found.to_owned(),
            expected,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use xorbang_build::boot::uki::{assemble, UkiParts};
    use xorbang_formats::error_chain::error_chain;

    pub const ROOT_HASH: &str = crate::running::tests::ROOT_HASH;

    /// A minimal PE32+ image to append sections to: what the systemd stub is to a real UKI.
    pub fn stub() -> Vec<u8> {
        let mut image = vec![0u8; 0x400];
        image[..2].copy_from_slice(b"MZ");
        image[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        image[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        image[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        // No sections yet; a PE32+ optional header of 240 bytes.
        image[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let optional = coff + 20;
        image[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        // SectionAlignment, FileAlignment, SizeOfImage, SizeOfHeaders.
        image[optional + 32..optional + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        image[optional + 36..optional + 40].copy_from_slice(&0x200u32.to_le_bytes());
        image[optional + 56..optional + 60].copy_from_slice(&0x1000u32.to_le_bytes());
        image[optional + 60..optional + 64].copy_from_slice(&0x400u32.to_le_bytes());
        // Subsystem: an EFI application.
        image[optional + 68..optional + 70].copy_from_slice(&10u16.to_le_bytes());
        // NumberOfRvaAndSizes: the 16 data directories.
        image[optional + 108..optional + 112].copy_from_slice(&16u32.to_le_bytes());
        image
    }

    pub fn uki_with(cmdline: &str) -> Vec<u8> {
        let parts = UkiParts {
            os_release: b"ID=debian\nIMAGE_ID=xorbang-demo\nIMAGE_VERSION=7\n",
            cmdline,
            uname: "6.1.0-test",
            initrd: b"initrd",
            linux: b"not a kernel",
        };
        assemble(&stub(), &parts, 0).expect("assembles").image
    }

    fn root_hash() -> RootHash {
        RootHash::parse_hex(ROOT_HASH).expect("hex")
    }

    #[test]
    fn the_uki_must_boot_the_running_image_from_the_disk() {
        check(
            "install.efi",
            &uki_with(&format!("console=ttyS0 roothash={ROOT_HASH}")),
            &root_hash(),
        )
        .expect("boots it");
        let other = "11".repeat(32);
        let error = check(
            "install.efi",
            &uki_with(&format!("roothash={other}")),
            &root_hash(),
        )
        .expect_err("another image");
        assert_eq!(
            error.to_string(),
            format!("install.efi boots roothash={other} but the running image is {ROOT_HASH}")
        );
        let error = check("install.efi", &uki_with("console=ttyS0"), &root_hash())
            .expect_err("no roothash");
        assert_eq!(
            error.to_string(),
            format!(
                "install.efi has no roothash= on its command line; the running image is {ROOT_HASH}"
            )
        );
        let error = check(
            "uki.efi",
            &uki_with(&format!(
                "roothash={ROOT_HASH} systemd.verity_root_data=http://10.0.2.2/root.squashfs"
            )),
            &root_hash(),
        )
        .expect_err("netboot");
        assert_eq!(
            error.to_string(),
            "uki.efi names its root by URL (systemd.verity_root_data=http://10.0.2.2/root.squashfs): \
             it would not boot from the disk"
        );
    }

    #[test]
    fn a_file_without_the_sections_is_not_a_uki() {
        let error = check("install.efi", &stub(), &root_hash()).expect_err("no sections");
        assert_eq!(
            error_chain(&error),
            "install.efi is not a UKI: the image has no section \".linux\""
        );
        let error = check("install.efi", b"hello", &root_hash()).expect_err("not PE");
        assert!(error_chain(&error).starts_with("install.efi is not a UKI: "));
    }
}

//! The file system a root image is packed as, and its compressor: one choice that
//! `xorbang-build image --format/--compression` and a profile's `[image]` both name, and
//! that decides the image's file name and the kernel modules its initramfs must carry.

use std::fmt;
use std::path::Path;

use crate::image::erofs::{self, ErofsCompression, MKFS_EROFS};
use crate::image::squashfs::{self, AddedFile, ImageError, SquashfsCompression, MKSQUASHFS};

/// What an OS build packs its root as unless the profile says otherwise: EROFS with lz4hc.
/// Measured on the test system (`bench formats delta`, README "Root image formats"): the
/// shortest hand-off tail (exec of systemd → its main()) and a block-level delta after a
/// one-package change of a few percent of the image, where zstd SquashFS re-sends most of
/// it; the price is a larger image.
pub const DEFAULT: RootFormat = RootFormat::Erofs(ErofsCompression::Lz4hc);

/// A root image's file system and compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFormat {
    Squashfs(SquashfsCompression),
    Erofs(ErofsCompression),
}

/// The names `--format` and `format =` take.
pub const FORMAT_NAMES: &[&str] = &["squashfs", "erofs"];

impl RootFormat {
    /// The format named `format` with the compressor named `compression` (its default when
    /// none is named), or why the two do not go together.
    pub fn parse(format: &str, compression: Option<&str>) -> Result<Self, String> {
        match format {
            "squashfs" => match compression.unwrap_or("zstd") {
                "zstd" => Ok(Self::Squashfs(SquashfsCompression::Zstd)),
                "gzip" => Ok(Self::Squashfs(SquashfsCompression::Gzip)),
                "xz" => Ok(Self::Squashfs(SquashfsCompression::Xz)),
                "lz4" => Ok(Self::Squashfs(SquashfsCompression::Lz4)),
                other => Err(format!(
                    "compression {other:?} does not go with squashfs, which takes zstd, gzip, \
                     xz or lz4"
                )),
            },
            "erofs" => match compression.unwrap_or("lz4hc") {
                "lz4hc" => Ok(Self::Erofs(ErofsCompression::Lz4hc)),
                "lz4" => Ok(Self::Erofs(ErofsCompression::Lz4)),
                "none" => Ok(Self::Erofs(ErofsCompression::Uncompressed)),
                other => Err(format!(
                    "compression {other:?} does not go with erofs, which takes lz4, lz4hc or \
                     none"
                )),
            },
            other => Err(format!(
                "format {other:?} is not one of {}",
                FORMAT_NAMES.join(", ")
            )),
        }
    }

    /// `squashfs` or `erofs`, as `--format` and `format =` name it.
    pub fn format_name(self) -> &'static str {
        match self {
            Self::Squashfs(_) => "squashfs",
            Self::Erofs(_) => "erofs",
        }
    }

    /// The compressor's name, as `--compression` and `compression =` name it.
    pub fn compression_name(self) -> &'static str {
        match self {
            Self::Squashfs(compression) => compression.name(),
            Self::Erofs(compression) => compression.name(),
        }
    }

    /// The image's file name in a build's output: `root.squashfs` or `root.erofs`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Squashfs(_) => "root.squashfs",
            Self::Erofs(_) => "root.erofs",
        }
    }

    /// Modules an initramfs for a modular kernel needs to mount the image, besides
    /// `DEFAULT_MODULES` (which has squashfs: extensions are SquashFS whatever the root is).
    /// EROFS checks its superblock with crc32c, which the kernel finds by name in the crypto
    /// API: crc32c_generic is only a soft dependency in modules.dep, so it is named here.
    pub fn initrd_modules(self) -> &'static [&'static str] {
        match self {
            Self::Squashfs(_) => &[],
            Self::Erofs(_) => &["erofs", "crc32c_generic"],
        }
    }

    /// Packs `rootfs`, with `added` files, into `out` (atomically) with the system's
    /// mksquashfs or mkfs.erofs, every timestamp set to `mtime`; SquashFS in `block_size`
    /// blocks. Returns the image size in bytes.
    pub fn pack(
        self,
        rootfs: &Path,
        out: &Path,
        block_size: u32,
        mtime: u32,
        added: &[AddedFile],
    ) -> Result<u64, ImageError> {
        match self {
            Self::Squashfs(compression) => squashfs::build_in_blocks(
                Path::new(MKSQUASHFS),
                rootfs,
                out,
                (compression, block_size),
                mtime,
                added,
            ),
            Self::Erofs(compression) => erofs::build_with_files(
                Path::new(MKFS_EROFS),
                rootfs,
                out,
                compression,
                mtime,
                added,
            ),
        }
    }
}

/// `squashfs/zstd`, `erofs/lz4hc`: how build logs and the bench name a choice.
impl fmt::Display for RootFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.format_name(), self.compression_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_parses_and_prints_back() {
        for (format, compressions) in [
            ("squashfs", &["zstd", "gzip", "xz", "lz4"][..]),
            ("erofs", &["lz4", "lz4hc", "none"][..]),
        ] {
            for compression in compressions {
                let parsed = RootFormat::parse(format, Some(compression))
                    .unwrap_or_else(|error| panic!("{format}/{compression}: {error}"));
                assert_eq!(parsed.to_string(), format!("{format}/{compression}"));
            }
        }
    }

    #[test]
    fn each_format_has_its_default_compressor() {
        assert_eq!(
            RootFormat::parse("squashfs", None),
            Ok(RootFormat::Squashfs(SquashfsCompression::Zstd))
        );
        assert_eq!(RootFormat::parse("erofs", None), Ok(DEFAULT));
    }

    #[test]
    fn mismatches_name_what_the_format_takes() {
        for (format, compression, expected) in [
            (
                "squashfs",
                "lz4hc",
                "squashfs, which takes zstd, gzip, xz or lz4",
            ),
            ("erofs", "zstd", "erofs, which takes lz4, lz4hc or none"),
            (
                "ext4",
                "lz4",
                "format \"ext4\" is not one of squashfs, erofs",
            ),
        ] {
            let error = RootFormat::parse(format, Some(compression))
                .expect_err("a compressor the format does not take");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn erofs_roots_bring_their_modules_and_their_own_name() {
        assert_eq!(DEFAULT.file_name(), "root.erofs");
        assert!(DEFAULT.initrd_modules().contains(&"erofs"));
        let squashfs = RootFormat::Squashfs(SquashfsCompression::Zstd);
        assert_eq!(squashfs.file_name(), "root.squashfs");
        assert!(squashfs.initrd_modules().is_empty());
    }
}

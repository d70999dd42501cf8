//! `xorbang-build`: the command line over the `xorbang_build` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xorbang_formats::boot_report::ConfigTrust;

mod os_command;

use clap::{Parser, Subcommand};
use xorbang_build::boot::machine_disk::{self, EspContents, Layout, MachineDiskError};
use xorbang_build::boot::uki::{self, CmdlineSource, Signing, UkiError, UkiSpec};
use xorbang_build::bundle::{self, BundleBuildError, BundleSpec};
use xorbang_build::file_error::{FileAction, FileError};
use xorbang_build::image::root_format::RootFormat;
use xorbang_build::image::squashfs::{self, ImageError, SquashfsCompression, MKSQUASHFS};
use xorbang_build::image::sysext::{self, ExtensionSpec, ReleaseFields, SysextError, UNSQUASHFS};
use xorbang_build::image::verified::{self, VerifiedImageError};
use xorbang_build::image::verity::{
    self, FormatParams, TreeParams, VerifyParams, VerityBuildError,
};
use xorbang_build::initrd::assemble::{self as initrd, Addition, InitrdError, InitrdSpec};
use xorbang_build::initrd::compress::Compression;
use xorbang_build::initrd::kernel_modules::DEFAULT_MODULES;
use xorbang_build::netboot::{self, NetbootError, NetbootSpec};
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::extension_pins::ExtensionPins;
use xorbang_formats::gpt::Guid;
use xorbang_formats::module_index::ModuleName;
use xorbang_formats::os_release::ExtensionKind;
use xorbang_formats::verity::{
    BlockSize, HashAlgorithm, HashType, RootHash, Salt, SaltError, KERNEL_MAX_DATA_BLOCK_SIZE,
};

#[derive(Debug, Parser)]
#[command(name = "xorbang-build", version, about = "Builds what xorbang boots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the initramfs: the static init as /init, base directories, /dev/console,
    /// kernel modules and extra files, as a reproducible newc cpio archive.
    Initrd(InitrdArgs),
    /// Pack a root file system tree into a reproducible SquashFS image with mksquashfs, with
    /// its dm-verity hash tree (OUT.verity) and a manifest with the root hash (OUT.json).
    Image(ImageArgs),
    /// Write a GPT disk image holding an image and its hash tree as Discoverable Partitions
    /// (root-x86-64 and root-x86-64-verity, PARTUUIDs derived from the root hash), so that
    /// `roothash=` alone boots it; or, with --definitions, the layout in systemd-repart's
    /// partition definition format.
    Disk(DiskArgs),
    /// Pack an extension tree as a UAPI extension image NAME.raw: a GPT with the SquashFS as
    /// root-x86-64 and its dm-verity hash tree as root-x86-64-verity (PARTUUIDs from the root
    /// hash), plus NAME.roothash for systemd-sysext and systemd-dissect.
    Sysext(SysextArgs),
    /// Write a Unified Kernel Image: the systemd EFI stub with the os-release, command line,
    /// kernel release, initramfs and kernel as PE sections, optionally signed for Secure Boot.
    Uki(UkiArgs),
    /// Build a whole OS from a profile (see profiles/): the Debian root (mmdebstrap), the
    /// verified root image, the initramfs, the UKI and the disk, each step cached by the
    /// hash of its inputs; OUTDIR gets the artifacts and build.json.
    Os(os_command::OsArgs),
    /// Write a netboot tree any static TFTP/HTTP server can serve: the kernel, the shared
    /// initramfs, the root image as an initramfs part (and loose, for UKIs that fetch it),
    /// one small part per host of --hosts (keyed by MAC), an iPXE script, a dnsmasq.conf
    /// and netboot.json; every part padded as the kernel needs.
    Netboot(NetbootArgs),
    /// Publish a version as an update bundle in a channel directory: CHANNEL/<IMAGE_ID>_<VERSION>/
    /// with the image, its hash tree, the UKI and a manifest (sizes, SHA-256, root hash)
    /// signed with minisign, and the version added to CHANNEL/index.json.
    Bundle(BundleArgs),
    /// dm-verity hash trees, byte for byte as veritysetup writes them.
    Verity {
        #[command(subcommand)]
        command: VerityCommand,
    },
    /// Host config (host-config.toml), as the init reads it at boot.
    HostConfig {
        #[command(subcommand)]
        command: HostConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum HostConfigCommand {
    /// Check FILE with the init's own parser: prints the /etc files it would generate, or
    /// the first error with its line and column.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Check it as a production host would take it from a source of this trust:
        /// `local` (an unsigned file on a config partition or the ESP) may set only
        /// hostname, timezone and network; `signed` (or `platform`) the whole schema.
        #[arg(long, default_value = "signed", value_parser = parse_trust)]
        trust: ConfigTrust,
    },
}

#[derive(Debug, Subcommand)]
enum VerityCommand {
    /// Write the superblock and hash tree of DATA to HASH (created if missing), as
    /// `veritysetup format` does, and print its report with the root hash.
    Format(VerityFormatArgs),
    /// Check DATA and the hash tree in HASH against ROOTHASH, as `veritysetup verify` does.
    Verify(VerityVerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerityFormatArgs {
    /// The image to protect.
    #[arg(value_name = "DATA")]
    data: PathBuf,
    /// Where the hash area goes; may be DATA itself, with --hash-offset past the data.
    #[arg(value_name = "HASH")]
    hash: PathBuf,
    /// The salt as hex, or - for none [default: 32 random bytes].
    #[arg(long, value_name = "HEX", allow_hyphen_values = true, value_parser = parse_salt)]
    salt: Option<Salt>,
    /// The UUID the superblock records [default: random].
    #[arg(long, value_parser = Guid::parse, conflicts_with = "no_superblock")]
    uuid: Option<Guid>,
    #[arg(long, value_name = "BYTES", default_value_t = BlockSize::DEFAULT)]
    data_block_size: BlockSize,
    #[arg(long, value_name = "BYTES", default_value_t = BlockSize::DEFAULT)]
    hash_block_size: BlockSize,
    /// The hash algorithm.
    #[arg(long = "hash", value_name = "sha256|sha512", default_value_t = HashAlgorithm::Sha256)]
    algorithm: HashAlgorithm,
    /// The hash type: 1 (normal) or 0 (original Chrome OS).
    #[arg(long = "format", value_name = "0|1", default_value = "1")]
    hash_type: HashType,
    /// Where the hash area starts in HASH, in bytes (a multiple of 512).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    hash_offset: u64,
    /// How many data blocks to protect [default: all of DATA, which must be whole blocks].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    data_blocks: Option<u64>,
    /// Write no superblock: verifying then needs every parameter again.
    #[arg(long)]
    no_superblock: bool,
}

/// With a superblock only the hash offset applies: the superblock holds the rest.
#[derive(Debug, clap::Args)]
struct VerityVerifyArgs {
    /// The protected image.
    #[arg(value_name = "DATA")]
    data: PathBuf,
    /// The device or file holding the hash area (may be DATA itself).
    #[arg(value_name = "HASH")]
    hash: PathBuf,
    /// The expected root hash, as hex.
    #[arg(value_name = "ROOTHASH", value_parser = parse_root_hash)]
    root_hash: RootHash,
    /// Where the hash area starts in HASH, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    hash_offset: u64,
    /// HASH has no superblock: give the parameters it was formatted with.
    #[arg(long)]
    no_superblock: bool,
    /// The salt as hex, or - for none; required with --no-superblock.
    #[arg(
        long,
        value_name = "HEX",
        allow_hyphen_values = true,
        value_parser = parse_salt,
        requires = "no_superblock",
        required_if_eq("no_superblock", "true")
    )]
    salt: Option<Salt>,
    /// With --no-superblock [default: 4096].
    #[arg(long, value_name = "BYTES", requires = "no_superblock")]
    data_block_size: Option<BlockSize>,
    /// With --no-superblock [default: 4096].
    #[arg(long, value_name = "BYTES", requires = "no_superblock")]
    hash_block_size: Option<BlockSize>,
    /// With --no-superblock [default: sha256].
    #[arg(
        long = "hash",
        value_name = "sha256|sha512",
        requires = "no_superblock"
    )]
    algorithm: Option<HashAlgorithm>,
    /// With --no-superblock [default: 1].
    #[arg(long = "format", value_name = "0|1", requires = "no_superblock")]
    hash_type: Option<HashType>,
    /// With --no-superblock [default: all of DATA].
    #[arg(long, value_name = "N", requires = "no_superblock", value_parser = clap::value_parser!(u64).range(1..))]
    data_blocks: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct InitrdArgs {
    /// The init binary; it must be a statically linked ELF executable.
    #[arg(long, value_name = "PATH")]
    init: PathBuf,
    /// Where to write the initramfs.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// A kernel's lib/modules/<version> directory, as depmod left it.
    #[arg(long, value_name = "DIR")]
    kernel_modules: Option<PathBuf>,
    /// Modules to carry (with their dependencies) from --kernel-modules.
    #[arg(
        long,
        value_name = "a,b,c",
        value_delimiter = ',',
        requires = "kernel_modules",
        default_values_t = DEFAULT_MODULES.iter().map(|name| name.to_string())
    )]
    modules: Vec<String>,
    /// Add a host file or directory tree at DST in the archive (repeatable).
    #[arg(long = "add", value_name = "SRC:DST")]
    additions: Vec<Addition>,
    /// How to compress the archive (zstd: level 19, one frame, window at most 8 MiB).
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    compression: Compression,
    /// A fleet's host configs (DIR/<name>.toml, each matching its machines' NICs by `mac`):
    /// carried as /etc/xorbang/hosts/<mac>.toml, where the init picks the one for one of
    /// its NICs, trusted as signed (the UKI's signature covers them).
    #[arg(long, value_name = "DIR")]
    hosts: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct NetbootArgs {
    /// The kernel.
    #[arg(long, value_name = "VMLINUZ")]
    kernel: PathBuf,
    /// The shared initramfs (it should carry the NIC's driver, e.g. virtio_net, for the
    /// init to read the machine's MAC addresses).
    #[arg(long, value_name = "INITRD")]
    initrd: PathBuf,
    /// The verified root image (`xorbang-build image`): its .verity and .json lie beside it.
    #[arg(long, value_name = "IMAGE")]
    image: PathBuf,
    /// Kernel command line words besides the root's.
    #[arg(long, value_name = "TEXT", default_value = "")]
    cmdline: String,
    /// The fleet: DIR/<name>.toml host configs, each matching its machines by `mac`; every
    /// MAC gets hosts/<mac>.cpio, a part iPXE appends (trusted as local by the init).
    #[arg(long, value_name = "DIR")]
    hosts: Option<PathBuf>,
    /// A signed UKI of the same image, for UEFI machines (Secure Boot): its command line
    /// must boot the image's root hash.
    #[arg(long, value_name = "EFI")]
    uki: Option<PathBuf>,
    /// The signed UKI that boots the image from a disk (roothash= alone), which
    /// xorbang-installer puts on the disks it installs.
    #[arg(long, value_name = "EFI")]
    install_uki: Option<PathBuf>,
    /// systemd-boot (signed for Secure Boot if need be), which xorbang-installer puts on the
    /// ESP beside the install UKI.
    #[arg(long, value_name = "EFI")]
    boot_loader: Option<PathBuf>,
    /// Where the tree will be served over HTTP (http://HOST[:PORT]/PATH/), for dnsmasq's
    /// boot-file URLs and xorbang.netboot= on the command line (where xorbang-installer
    /// finds the tree); without it dnsmasq names files for TFTP only.
    #[arg(long, value_name = "URL")]
    http_url: Option<String>,
    /// START,END,MASK for dnsmasq to lease; without it dnsmasq.conf is proxy-DHCP.
    #[arg(long, value_name = "RANGE")]
    dhcp_range: Option<String>,
    /// The directory to write.
    #[arg(value_name = "OUTDIR")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// The root file system tree to pack.
    #[arg(value_name = "ROOTFS_DIR")]
    rootfs: PathBuf,
    /// Where to write the image.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// The image's file system; the init mounts either.
    #[arg(long, value_enum, default_value_t = ImageFormat::Squashfs)]
    format: ImageFormat,
    /// The compressor: zstd, gzip, xz or lz4 for SquashFS, lz4, lz4hc or none for EROFS
    /// [default: zstd for SquashFS, lz4hc for EROFS].
    #[arg(long, value_enum)]
    compression: Option<RootCompression>,
    /// SquashFS only: the data block size in bytes, a power of two from 4096 to 1048576.
    #[arg(long, value_name = "BYTES", default_value_t = squashfs::BLOCK_SIZE)]
    block_size: u32,
    /// Skip the hash tree and manifest (for roots booted with xorbang.verity=optional).
    #[arg(long)]
    no_verity: bool,
    /// Trust this system extension image (NAME.raw, checked in full) by its root hash: it is
    /// pinned in /usr/lib/xorbang/extensions.toml in the image (repeatable).
    #[arg(long, value_name = "NAME.raw")]
    pin_sysext: Vec<PathBuf>,
    /// Trust this configuration extension image, as --pin-sysext (repeatable).
    #[arg(long, value_name = "NAME.raw")]
    pin_confext: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ImageFormat {
    Squashfs,
    Erofs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RootCompression {
    Zstd,
    Gzip,
    Xz,
    Lz4,
    Lz4hc,
    None,
}

/// The release file options are checked by `sysext` itself: which are allowed depends on
/// whether DIR has a release file.
#[derive(Debug, clap::Args)]
struct SysextArgs {
    /// The tree: only usr/ and opt/ for a system extension, only etc/ for a configuration
    /// extension.
    #[arg(value_name = "DIR")]
    tree: PathBuf,
    /// The extension's name (its release file is extension-release.NAME).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A configuration extension (merged over /etc) rather than a system extension (/usr,
    /// /opt).
    #[arg(long)]
    confext: bool,
    /// Where to write the image; it must be named NAME.raw.
    #[arg(short, long, value_name = "NAME.raw")]
    output: PathBuf,
    /// ID= of the release file written when DIR has none: the base's ID, or _any.
    #[arg(long, value_name = "ID")]
    os_id: Option<String>,
    /// VERSION_ID= of the written release file.
    #[arg(long, value_name = "V")]
    version_id: Option<String>,
    /// SYSEXT_LEVEL= (CONFEXT_LEVEL= with --confext) of the written release file.
    #[arg(long, value_name = "L")]
    level: Option<String>,
    /// ARCHITECTURE= of the written release file: x86-64 or _any [default: not written].
    #[arg(long, value_name = "A")]
    architecture: Option<String>,
    /// The SquashFS compressor.
    #[arg(long, value_enum, default_value_t = SquashfsCompression::Zstd)]
    compression: SquashfsCompression,
}

#[derive(Debug, clap::Args)]
struct DiskArgs {
    /// Lay the disk out from the systemd-repart style `*.conf` files in DIR (keys Type,
    /// Label, UUID, SizeMinBytes, SizeMaxBytes, CopyBlocks; CopyBlocks=root-image,
    /// root-verity and uki-esp stand for this build's image, hash tree and ESP).
    #[arg(long, value_name = "DIR")]
    definitions: Option<PathBuf>,
    /// An image made by `xorbang-build image`; its .verity and .json files are beside it.
    #[arg(long, value_name = "IMAGE")]
    image: PathBuf,
    /// Also an EFI System Partition in front, holding this UKI as EFI/Linux/NAME.efi and, unless
    /// --boot-loader says otherwise, as EFI/BOOT/BOOTX64.EFI, so firmware boots the disk.
    #[arg(long, value_name = "UKI")]
    uki: Option<PathBuf>,
    /// The UKI's file name under EFI/Linux/, without `.efi`: `IMAGE_ID_VERSION+3` starts
    /// boot counting with three tries.
    #[arg(long, value_name = "NAME", default_value = "xorbang", requires = "uki")]
    uki_name: String,
    /// A boot loader (systemd-boot's systemd-bootx64.efi, signed for Secure Boot if need be)
    /// for EFI/BOOT/BOOTX64.EFI, with loader/loader.conf `timeout 0`: the A/B layout.
    #[arg(long, value_name = "EFI", requires = "uki")]
    boot_loader: Option<PathBuf>,
    /// A file for the UKI's `.extra.d` directories on the ESP: systemd-stub hands `*.raw`
    /// system extensions to the initramfs as /.extra/sysext/ (repeatable).
    #[arg(long, value_name = "FILE", requires = "uki")]
    uki_extra: Vec<PathBuf>,
    /// Where to write the disk image.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// An image made by `xorbang-build image` from a root whose os-release names IMAGE_ID
    /// and IMAGE_VERSION.
    #[arg(long, value_name = "IMAGE")]
    image: PathBuf,
    /// Its UKI: its command line's roothash= must be the image's.
    #[arg(long, value_name = "UKI")]
    uki: PathBuf,
    /// The minisign secret key that signs the manifest (its public half is pinned in the
    /// images that take the update, in /usr/lib/xorbang/keys/).
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// The channel directory.
    #[arg(short, long, value_name = "CHANNEL")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("command_line").required(true).args(["cmdline", "cmdline_file"])))]
struct UkiArgs {
    /// The EFI stub the sections are added to (systemd-boot-efi's).
    #[arg(long, value_name = "PATH", default_value = uki::DEFAULT_STUB)]
    stub: PathBuf,
    /// The kernel: an x86 bzImage with the EFI stub (a vmlinuz).
    #[arg(long, value_name = "VMLINUZ")]
    linux: PathBuf,
    /// The initramfs.
    #[arg(long, value_name = "INITRD")]
    initrd: PathBuf,
    /// The kernel command line, sealed into the image.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// A file holding the kernel command line (surrounding whitespace is dropped).
    #[arg(long, value_name = "FILE")]
    cmdline_file: Option<PathBuf>,
    /// The os-release file boot loaders show the entry by.
    #[arg(long, value_name = "FILE", default_value = uki::DEFAULT_OS_RELEASE)]
    os_release: PathBuf,
    /// The kernel release for .uname [default: the version string in the bzImage's header].
    #[arg(long, value_name = "STR")]
    uname: Option<String>,
    /// Sign the image with this private key (PEM) through sbsign, then check it with sbverify.
    #[arg(long, value_name = "KEY", requires = "sign_cert")]
    sign_key: Option<PathBuf>,
    /// The certificate (PEM) of --sign-key.
    #[arg(long, value_name = "CERT", requires = "sign_key")]
    sign_cert: Option<PathBuf>,
    /// Where to write the UKI.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("SOURCE_DATE_EPOCH={0:?} is not a whole number of seconds that fits in 32 bits")]
    SourceDateEpoch(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot write the bundle")]
    Bundle(#[from] BundleBuildError),
    // The parser's message (line, column, what is wrong) follows the file's name.
    #[error("{}", path.display())]
    HostConfig {
        path: PathBuf,
        #[source]
        error: xorbang_formats::host_config::HostConfigError,
    },
    #[error("cannot build the initramfs {path}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: InitrdError,
    },
    #[error("cannot build the image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("cannot pin the extension images")]
    Pin {
        #[source]
        source: Box<SysextError>,
    },
    #[error("cannot build the extension image {path}")]
    Sysext {
        path: PathBuf,
        #[source]
        source: Box<SysextError>,
    },
    #[error("cannot add a hash tree to the image {path}")]
    VerifiedImage {
        path: PathBuf,
        #[source]
        source: Box<VerifiedImageError>,
    },
    #[error(transparent)]
    MachineDisk(#[from] MachineDiskError),
    #[error(transparent)]
    Os(#[from] os_command::OsCommandError),
    #[error(transparent)]
    Netboot(#[from] NetbootError),
    #[error("cannot build the UKI {path}")]
    Uki {
        path: PathBuf,
        #[source]
        source: UkiError,
    },
    #[error("cannot write the verity hash tree of {data} to {hash}")]
    VerityFormat {
        data: PathBuf,
        hash: PathBuf,
        #[source]
        source: Box<VerityBuildError>,
    },
    #[error("verification of {data} with the hash tree in {hash} failed")]
    VerityVerify {
        data: PathBuf,
        hash: PathBuf,
        #[source]
        source: Box<VerityBuildError>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xorbang-build: error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Initrd(args) => build_initrd(args, source_date_epoch()?),
        Command::Image(args) => build_image(&args, source_date_epoch()?),
        Command::Disk(args) => build_disk(&args),
        Command::Sysext(args) => build_sysext(args, source_date_epoch()?),
        Command::Uki(args) => build_uki(args, source_date_epoch()?),
        Command::Os(args) => Ok(os_command::run(args, source_date_epoch_if_set()?)?),
        Command::Netboot(args) => build_netboot(args, source_date_epoch()?),
        Command::Bundle(args) => build_bundle(&args),
        Command::Verity {
            command: VerityCommand::Format(args),
        } => verity_format(args),
        Command::Verity {
            command: VerityCommand::Verify(args),
        } => verity_verify(args),
        Command::HostConfig {
            command: HostConfigCommand::Check { file, trust },
        } => check_host_config(&file, trust),
    }
}

fn parse_trust(text: &str) -> Result<ConfigTrust, String> {
    ConfigTrust::parse(text).ok_or_else(|| format!("{text}: expected signed, platform or local"))
}

fn check_host_config(file: &Path, trust: ConfigTrust) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file).map_err(FileError::of(FileAction::Read, file))?;
    let refused = |error| CliError::HostConfig {
        path: file.to_owned(),
        error,
    };
    let config = xorbang_formats::host_config::parse(&text).map_err(refused)?;
    if trust == ConfigTrust::Local {
        xorbang_formats::host_config::check_local_keys(&text).map_err(refused)?;
    }
    for entry in config.etc_layer() {
        match entry.kind {
            xorbang_formats::host_config::EntryKind::File { mode, .. } => {
                println!("/etc/{} (file, mode {mode:04o})", entry.path);
            }
            xorbang_formats::host_config::EntryKind::Symlink { target } => {
                println!("/etc/{} -> {target}", entry.path);
            }
        }
    }
    let selected = |kind: &str, names: &[String]| {
        if !names.is_empty() {
            println!("{kind}: {}", names.join(", "));
        }
    };
    selected("sysext", &config.sysext);
    selected("confext", &config.confext);
    println!("{}: valid host config ({trust} source)", file.display());
    Ok(())
}

/// The reproducible-builds timestamp: `SOURCE_DATE_EPOCH` if set, else the epoch itself, so
/// that builds without it are reproducible too.
fn source_date_epoch() -> Result<u32, CliError> {
    Ok(source_date_epoch_if_set()?.unwrap_or(0))
}

fn source_date_epoch_if_set() -> Result<Option<u32>, CliError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .parse()
            .map(Some)
            .map_err(|_| CliError::SourceDateEpoch(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(CliError::SourceDateEpoch(
            value.to_string_lossy().into_owned(),
        )),
    }
}

fn build_initrd(args: InitrdArgs, mtime: u32) -> Result<(), CliError> {
    let wanted = args
        .modules
        .iter()
        .map(|name| ModuleName::new(name))
        .collect();
    let spec = InitrdSpec {
        init: args.init,
        kernel_modules: args.kernel_modules.map(|dir| (dir, wanted)),
        additions: args.additions,
        generated: match &args.hosts {
            Some(dir) => netboot::initramfs_host_files(&netboot::read_hosts(dir)?),
            None => Vec::new(),
        },
    };
    let summary =
        initrd::build(&spec, &args.output, args.compression, mtime).map_err(|source| {
            CliError::Initrd {
                path: args.output.clone(),
                source,
            }
        })?;
    println!("{}: {summary}", args.output.display());
    Ok(())
}

fn build_netboot(args: NetbootArgs, mtime: u32) -> Result<(), CliError> {
    let spec = NetbootSpec {
        kernel: args.kernel,
        initrd: args.initrd,
        image: args.image,
        cmdline: args.cmdline,
        hosts: match &args.hosts {
            Some(dir) => netboot::read_hosts(dir)?,
            None => Vec::new(),
        },
        uki: args.uki,
        install_uki: args.install_uki,
        boot_loader: args.boot_loader,
        http_url: args.http_url,
        dhcp_range: args.dhcp_range,
        mtime,
    };
    let record = netboot::build(&spec, &args.out)?;
    let bytes: u64 = record.files.iter().map(|file| file.bytes).sum();
    println!(
        "{}: root hash {}, {} hosts, {} files, {bytes} bytes",
        args.out.display(),
        record.root_hash,
        record.hosts.len(),
        record.files.len()
    );
    Ok(())
}

/// The format `--format` and `--compression` name, or why the two do not go together.
fn root_format(args: &ImageArgs) -> Result<RootFormat, CliError> {
    let compression = args.compression.map(value_name);
    RootFormat::parse(&value_name(args.format), compression.as_deref()).map_err(CliError::Usage)
}

/// The name clap shows for `value`, which is the one the library parses.
fn value_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or(String::new(), |value| value.get_name().to_owned())
}

fn build_image(args: &ImageArgs, mtime: u32) -> Result<(), CliError> {
    let format = root_format(args)?;
    if matches!(format, RootFormat::Erofs(_)) && args.block_size != squashfs::BLOCK_SIZE {
        return Err(CliError::Usage(
            "--block-size is for --format squashfs; EROFS packs 4 KiB blocks".into(),
        ));
    }
    let pins = sysext::pin_extensions(Path::new(UNSQUASHFS), &args.pin_sysext, &args.pin_confext)
        .map_err(|source| CliError::Pin {
        source: Box::new(source),
    })?;
    print_pins(&pins);
    // The old image's hash tree and manifest go first: whatever happens next, no manifest
    // is left describing an image that is no longer there, and --no-verity leaves none.
    verified::remove_companions(&args.output)?;
    let added = sysext::pin_manifest(&pins);
    let size = format
        .pack(&args.rootfs, &args.output, args.block_size, mtime, &added)
        .map_err(|source| CliError::Image {
            path: args.output.clone(),
            source,
        })?;
    println!("{}: {size} bytes", args.output.display());
    if args.no_verity {
        return Ok(());
    }
    let verified_image_error = |source| CliError::VerifiedImage {
        path: args.output.clone(),
        source: Box::new(source),
    };
    let identity = verified::ImageIdentity::of_tree(&args.rootfs).map_err(verified_image_error)?;
    let manifest = verified::add_verity(&args.output, identity).map_err(verified_image_error)?;
    println!(
        "{}: {} bytes of hash tree",
        verified::companion(&args.output, "verity").display(),
        manifest.verity_bytes
    );
    println!("Root hash: {}", manifest.root_hash);
    Ok(())
}

fn print_pins(pins: &ExtensionPins) {
    for (kind, map) in [
        (ExtensionKind::Sysext, &pins.sysext),
        (ExtensionKind::Confext, &pins.confext),
    ] {
        for (name, root_hash) in map {
            println!("pinned {kind} {name}: {root_hash}");
        }
    }
}

fn build_sysext(args: SysextArgs, mtime: u32) -> Result<(), CliError> {
    let kind = if args.confext {
        ExtensionKind::Confext
    } else {
        ExtensionKind::Sysext
    };
    let spec = ExtensionSpec {
        tree: args.tree,
        name: args.name,
        kind,
        fields: ReleaseFields {
            os_id: args.os_id,
            version_id: args.version_id,
            level: args.level,
            architecture: args.architecture,
        },
        compression: args.compression,
        mtime,
    };
    let built =
        sysext::build_extension(Path::new(MKSQUASHFS), &spec, &args.output).map_err(|source| {
            CliError::Sysext {
                path: args.output.clone(),
                source: Box::new(source),
            }
        })?;
    let release = kind.release_path(&spec.name);
    let origin = if built.release_generated {
        "written from the options"
    } else {
        "from the tree"
    };
    println!(
        "{}: {kind} {}, {} bytes (SquashFS {} bytes, hash tree {} bytes)",
        args.output.display(),
        spec.name,
        built.image_bytes,
        built.squashfs_bytes,
        built.verity_bytes
    );
    println!("release file /{release}: {origin}");
    println!("{}: the root hash, for systemd", built.sidecar.display());
    println!("Root hash: {}", built.root_hash);
    Ok(())
}

fn build_disk(args: &DiskArgs) -> Result<(), CliError> {
    let esp = args.uki.as_deref().map(|uki| EspContents {
        uki,
        name: &args.uki_name,
        boot_loader: args.boot_loader.as_deref(),
        extras: &args.uki_extra,
    });
    let layout = match &args.definitions {
        Some(dir) => Layout::Definitions(dir),
        None => Layout::Single,
    };
    let (size, root_hash) = machine_disk::write(&args.image, esp.as_ref(), layout, &args.output)?;
    println!("{}: {size} bytes", args.output.display());
    println!("Root hash: {root_hash}");
    Ok(())
}

fn build_bundle(args: &BundleArgs) -> Result<(), CliError> {
    let spec = BundleSpec {
        image: &args.image,
        uki: &args.uki,
        channel: &args.output,
        sign_key: args.sign_key.as_deref(),
    };
    let manifest = bundle::write(&spec)?;
    let dir = args.output.join(manifest.bundle_dir());
    println!(
        "{}: {} {} ({} + {} + {} bytes), root hash {}{}",
        dir.display(),
        manifest.image_id,
        manifest.version,
        manifest.root.bytes,
        manifest.verity.bytes,
        manifest.uki.bytes,
        manifest.root_hash,
        if args.sign_key.is_some() {
            ", signed"
        } else {
            ", NOT signed: machines refuse it"
        }
    );
    Ok(())
}

fn build_uki(args: UkiArgs, timestamp: u32) -> Result<(), CliError> {
    let cmdline = match (args.cmdline, args.cmdline_file) {
        (Some(text), _) => CmdlineSource::Text(text),
        // clap requires exactly one of the two.
        (None, file) => CmdlineSource::File(file.unwrap_or_default()),
    };
    let signing = match (args.sign_key, args.sign_cert) {
        (Some(key), Some(cert)) => Some(Signing { key, cert }),
        _ => None,
    };
    let spec = UkiSpec {
        stub: args.stub,
        linux: args.linux,
        initrd: args.initrd,
        cmdline,
        os_release: args.os_release,
        uname: args.uname,
        signing,
    };
    let summary = uki::build(&spec, &args.output, timestamp).map_err(|source| CliError::Uki {
        path: args.output.clone(),
        source,
    })?;
    println!("{}: {summary}", args.output.display());
    Ok(())
}

fn verity_format(args: VerityFormatArgs) -> Result<(), CliError> {
    let params = verity_format_params(&args).map_err(|source| CliError::VerityFormat {
        data: args.data.clone(),
        hash: args.hash.clone(),
        source: Box::new(source),
    })?;
    if args.data_block_size.bytes() > KERNEL_MAX_DATA_BLOCK_SIZE {
        // veritysetup's own warning: it formats such an image all the same.
        eprintln!(
            "WARNING: Kernel cannot activate device if data block size exceeds page size \
             ({KERNEL_MAX_DATA_BLOCK_SIZE})."
        );
    }
    let result = verity::format(&args.data, &args.hash, &params).map_err(|source| {
        CliError::VerityFormat {
            data: args.data.clone(),
            hash: args.hash.clone(),
            source: Box::new(source),
        }
    })?;
    print!("{}", result.summary(&args.hash));
    Ok(())
}

/// The options, with veritysetup's random salt and UUID where none were given.
fn verity_format_params(args: &VerityFormatArgs) -> Result<FormatParams, VerityBuildError> {
    let salt = match &args.salt {
        Some(salt) => salt.clone(),
        None => verity::random_salt()?,
    };
    let uuid = match args.uuid {
        Some(uuid) => uuid,
        None => verity::random_uuid()?,
    };
    let tree = TreeParams {
        hash_type: args.hash_type,
        algorithm: args.algorithm,
        data_block_size: args.data_block_size,
        hash_block_size: args.hash_block_size,
        salt,
    };
    Ok(FormatParams {
        hash_offset: args.hash_offset,
        data_blocks: args.data_blocks,
        superblock: !args.no_superblock,
        ..FormatParams::new(tree, uuid)
    })
}

fn verity_verify(args: VerityVerifyArgs) -> Result<(), CliError> {
    let params = match &args.salt {
        // clap requires the salt exactly when there is no superblock.
        Some(salt) if args.no_superblock => VerifyParams::NoSuperblock {
            tree: TreeParams {
                hash_type: args.hash_type.unwrap_or(HashType::Normal),
                algorithm: args.algorithm.unwrap_or(HashAlgorithm::Sha256),
                data_block_size: args.data_block_size.unwrap_or(BlockSize::DEFAULT),
                hash_block_size: args.hash_block_size.unwrap_or(BlockSize::DEFAULT),
                salt: salt.clone(),
            },
            hash_offset: args.hash_offset,
            data_blocks: args.data_blocks,
        },
        _ => VerifyParams::Superblock {
            hash_offset: args.hash_offset,
        },
    };
    verity::verify(&args.data, &args.hash, &args.root_hash, &params).map_err(|source| {
        CliError::VerityVerify {
            data: args.data.clone(),
            hash: args.hash.clone(),
            source: Box::new(source),
        }
    })?;
    println!("Verification succeeded.");
    Ok(())
}

// clap shows only an error's own message: these keep the causes (which hex digit).
fn parse_salt(text: &str) -> Result<Salt, String> {
    text.parse().map_err(|err: SaltError| error_chain(&err))
}

fn parse_root_hash(text: &str) -> Result<RootHash, String> {
    RootHash::parse_hex(text).map_err(|err| error_chain(&err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["xorbang-build"].iter().chain(args)).map(|cli| cli.command)
    }

    fn path_str(path: &Path) -> &str {
        path.to_str().expect("UTF-8 temp path")
    }

    #[test]
    fn verity_format_then_verify_round_trip_through_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("root.img");
        let hash = dir.path().join("root.verity");
        fs::write(&data, vec![0x5a; 8 * 4096]).expect("data");
        let (data, hash) = (path_str(&data), path_str(&hash));
        let format = parse(&["verity", "format", data, hash, "--salt", "-"]).expect("args");
        run(format).expect("format");
        let superblock = fs::read(hash).expect("hash");
        let superblock = xorbang_formats::verity::VeritySuperblock::parse(&superblock).expect("sb");
        assert!(superblock.salt.is_empty());
        // The root hash `veritysetup format --salt -` gives for this data (2.6.1).
        let root = "5cc1a89c2ab5c2d8b1f431d1ce33ce8c4fbd5d7b2410e20a71f51e84f9a51cb5";
        let verify = parse(&["verity", "verify", data, hash, root]).expect("args");
        run(verify).expect("verifies");

        let wrong = "00".repeat(32);
        let verify = parse(&["verity", "verify", data, hash, &wrong]).expect("args");
        let err = error_chain(&run(verify).expect_err("not this root"));
        assert_eq!(
            err,
            format!(
                "verification of {data} with the hash tree in {hash} failed: the tree's root \
                 hash is {root}, expected {wrong}"
            )
        );
    }

    #[test]
    fn verify_options_other_than_the_offset_need_no_superblock() {
        let base = ["verity", "verify", "d", "h", &"ab".repeat(32)];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&[]).is_ok());
        assert!(with(&["--hash-offset", "4096"]).is_ok());
        for extra in [
            &["--salt", "00"][..],
            &["--hash", "sha512"],
            &["--data-blocks", "3"],
        ] {
            let err = with(extra).expect_err("needs --no-superblock");
            assert!(err.to_string().contains("--no-superblock"), "{err}");
        }
        let err = with(&["--no-superblock"]).expect_err("needs the salt");
        assert!(err.to_string().contains("--salt"), "{err}");
        let Ok(Command::Verity {
            command: VerityCommand::Verify(args),
        }) = with(&["--no-superblock", "--salt", "-", "--format", "0"])
        else {
            panic!("parses");
        };
        assert!(args.salt.is_some_and(|salt| salt.is_empty()));
        assert_eq!(args.hash_type, Some(HashType::ChromeOs));
    }

    #[test]
    fn uki_takes_exactly_one_command_line_and_a_key_only_with_its_certificate() {
        let base = [
            "uki",
            "--linux",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "-o",
            "uki.efi",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let Ok(Command::Uki(args)) = with(&["--cmdline", "console=ttyS0"]) else {
            panic!("parses");
        };
        assert_eq!(args.stub, Path::new(uki::DEFAULT_STUB));
        assert_eq!(args.os_release, Path::new("/etc/os-release"));
        assert!(with(&["--cmdline-file", "cmdline"]).is_ok());
        let err = with(&[]).expect_err("needs a command line");
        assert!(err.to_string().contains("--cmdline"), "{err}");
        assert!(with(&["--cmdline", "a", "--cmdline-file", "f"]).is_err());
        let err = with(&["--cmdline", "a", "--sign-key", "k"]).expect_err("needs the cert");
        assert!(err.to_string().contains("--sign-cert"), "{err}");
        assert!(with(&["--cmdline", "a", "--sign-key", "k", "--sign-cert", "c"]).is_ok());
    }

    #[test]
    fn verity_format_values_are_checked_by_their_parsers() {
        for (option, value, message) in [
            ("--data-block-size", "1000", "not a power of two"),
            ("--hash", "sha1", "expected sha256 or sha512"),
            ("--salt", "abc", "even number of hex digits"),
            ("--uuid", "nope", "not a GUID"),
            ("--format", "2", "expected 0 (Chrome OS) or 1 (normal)"),
            ("--data-blocks", "0", "0"),
        ] {
            let err = parse(&["verity", "format", "d", "h", option, value]).expect_err(option);
            assert!(err.to_string().contains(message), "{option}: {err}");
        }
        let err = parse(&["verity", "format", "d", "h", "--uuid", &"1".repeat(36)]);
        assert!(err.is_err());
        let err = parse(&["verity", "format", "d", "h", "--no-superblock", "--uuid"]);
        assert!(err.is_err());
    }

    #[test]
    fn sysext_needs_a_name_and_an_output_and_pins_repeat() {
        let err = parse(&["sysext", "tree", "-o", "gui.raw"]).expect_err("no name");
        assert!(err.to_string().contains("--name"), "{err}");
        let Ok(Command::Sysext(args)) = parse(&[
            "sysext",
            "tree",
            "--name",
            "site",
            "--confext",
            "-o",
            "site.raw",
            "--level",
            "2",
        ]) else {
            panic!("parses");
        };
        assert!(args.confext && args.os_id.is_none());
        assert_eq!(args.level.as_deref(), Some("2"));
        let Ok(Command::Image(args)) = parse(&[
            "image",
            "root",
            "-o",
            "root.img",
            "--pin-sysext",
            "a.raw",
            "--pin-sysext",
            "b.raw",
            "--pin-confext",
            "c.raw",
        ]) else {
            panic!("parses");
        };
        assert_eq!(args.pin_sysext, [Path::new("a.raw"), Path::new("b.raw")]);
        assert_eq!(args.pin_confext, [Path::new("c.raw")]);
        assert!(sysext::pin_manifest(&ExtensionPins::default()).is_empty());
    }
}

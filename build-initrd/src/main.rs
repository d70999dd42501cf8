//! `xorbang-build`: the command line over the `xorbang_build` library.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xorbang_build::compress::Compression;
use xorbang_build::image::{self, ImageError, SquashfsCompression, MKSQUASHFS};
use xorbang_build::initrd::{self, Addition, InitrdError, InitrdSpec};
use xorbang_build::kernel_modules::DEFAULT_MODULES;
use xorbang_init::modules::ModuleName;

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
    /// Pack a root file system tree into a reproducible SquashFS image with mksquashfs.
    Image(ImageArgs),
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
}

#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// The root file system tree to pack.
    #[arg(value_name = "ROOTFS_DIR")]
    rootfs: PathBuf,
    /// Where to write the SquashFS image.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// The SquashFS compressor.
    #[arg(long, value_enum, default_value_t = SquashfsCompression::Zstd)]
    compression: SquashfsCompression,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("SOURCE_DATE_EPOCH={0:?} is not a whole number of seconds that fits in 32 bits")]
    SourceDateEpoch(String),
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
    let mtime = source_date_epoch()?;
    match command {
        Command::Initrd(args) => build_initrd(args, mtime),
        Command::Image(args) => build_image(&args, mtime),
    }
}

/// The reproducible-builds timestamp: `SOURCE_DATE_EPOCH` if set, else the epoch itself, so
/// that builds without it are reproducible too.
fn source_date_epoch() -> Result<u32, CliError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value.parse().map_err(|_| CliError::SourceDateEpoch(value)),
        Err(std::env::VarError::NotPresent) => Ok(0),
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

fn build_image(args: &ImageArgs, mtime: u32) -> Result<(), CliError> {
    let size = image::build(
        Path::new(MKSQUASHFS),
        &args.rootfs,
        &args.output,
        args.compression,
        mtime,
    )
    .map_err(|source| CliError::Image {
        path: args.output.clone(),
        source,
    })?;
    println!("{}: {size} bytes", args.output.display());
    Ok(())
}

/// The error and its causes on one line, outermost first.
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! `xorbang-build os PROFILE.toml`: the command line of [`xorbang_build::os`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xorbang_build::file_error::{FileAction, FileError};
use xorbang_build::os::profile::{self, ProfileError};
use xorbang_build::os::steps::StepError;
use xorbang_build::os::{self, Artifact, ImageTools, OsBuild, OsBuildError};

/// The time stamp of every file when SOURCE_DATE_EPOCH is not set: Debian 12's release day
/// (2023-06-10). A fixed value keeps builds reproducible; a recent one keeps useradd's
/// "last password change" meaningful (0 would mean "change it at the next login").
pub const DEFAULT_EPOCH: u32 = 1_686_355_200;

#[derive(Debug, clap::Args)]
pub struct OsArgs {
    /// The build profile (see profiles/).
    #[arg(value_name = "PROFILE.toml")]
    profile: PathBuf,
    /// Where the artifacts and build.json go [default: out/<IMAGE_ID>].
    #[arg(short, long, value_name = "OUTDIR")]
    output: Option<PathBuf>,
    /// Only these artifacts, and the steps they need: tree (the root as a directory, before
    /// packing), image, kernel, initrd, uki, disk [default: all but tree]..
    #[arg(long, value_name = "a,b", value_delimiter = ',', value_parser = Artifact::parse)]
    only: Vec<Artifact>,
    /// The static init for the initramfs [default: xorbang-init beside this program].
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// The static xorbang-update for the image [default: xorbang-update beside this program].
    #[arg(long, value_name = "PATH")]
    update: Option<PathBuf>,
    /// The static xorbang-commit-overlay for the image [default: beside this program].
    #[arg(long, value_name = "PATH")]
    commit_overlay: Option<PathBuf>,
    /// The static xorbang-installer for the image [default: beside this program].
    #[arg(long, value_name = "PATH")]
    installer: Option<PathBuf>,
    /// The step cache [default: $XDG_CACHE_HOME/xorbang/build, else ~/.cache/xorbang/build].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OsCommandError {
    #[error(transparent)]
    File(#[from] FileError),
    // The profile is named with the parser's line and column, as editors jump to it.
    #[error("{}:{}", path.display(), error)]
    Profile { path: PathBuf, error: ProfileError },
    #[error(
        "no {name} given and none beside {program} (build it with cargo build --release, or \
         pass --{option})"
    )]
    NoBinary {
        name: &'static str,
        option: &'static str,
        program: PathBuf,
    },
    #[error("no cache directory given and neither XDG_CACHE_HOME nor HOME is set")]
    NoCache,
    #[error("cannot build {}", profile.display())]
    Build {
        profile: PathBuf,
        #[source]
        source: Box<OsBuildError>,
    },
}

pub fn run(args: OsArgs, epoch: Option<u32>) -> Result<(), OsCommandError> {
    let text = std::fs::read_to_string(&args.profile)
        .map_err(FileError::of(FileAction::Read, &args.profile))?;
    let profile = profile::parse(&text).map_err(|error| OsCommandError::Profile {
        path: args.profile.clone(),
        error,
    })?;
    let out = args
        .output
        .unwrap_or_else(|| Path::new("out").join(&profile.os.id));
    let only: BTreeSet<Artifact> = match args.only.is_empty() {
        true => Artifact::ALL.into_iter().collect(),
        false => args.only.into_iter().collect(),
    };
    let init = match args.init {
        Some(init) => init,
        None => beside_this_program("xorbang-init", "init")?,
    };
    let update = match args.update {
        Some(update) => update,
        None => beside_this_program("xorbang-update", "update")?,
    };
    let commit_overlay = match args.commit_overlay {
        Some(path) => path,
        None => beside_this_program("xorbang-commit-overlay", "commit-overlay")?,
    };
    let installer = match args.installer {
        Some(path) => path,
        None => beside_this_program("xorbang-installer", "installer")?,
    };
    let spec = OsBuild {
        profile: &profile,
        profile_path: &args.profile,
        init: &init,
        tools: ImageTools {
            update: &update,
            commit_overlay: &commit_overlay,
            installer: &installer,
        },
        cache: match args.cache {
            Some(cache) => cache,
            None => default_cache()?,
        },
        epoch: epoch.unwrap_or(DEFAULT_EPOCH),
        only,
    };
    let record =
        os::build(&spec, &out).map_err(|error| at_profile_line(&args.profile, &text, error))?;
    for artifact in &record.artifacts {
        println!("{}", out.join(artifact).display());
    }
    println!("{}", out.join("build.json").display());
    if let Some(root_hash) = &record.root_hash {
        println!("Root hash: {root_hash}");
    }
    Ok(())
}

/// A build that failed on a package or on the mirror, told at the profile's line that names
/// it (as a bad value would be); any other failure as it is.
fn at_profile_line(path: &Path, text: &str, error: OsBuildError) -> OsCommandError {
    let position = match &error {
        OsBuildError::Step(StepError::UnknownPackages { packages, .. }) => packages
            .iter()
            .find_map(|package| profile::package_position(text, package)),
        OsBuildError::Step(StepError::Unreachable { .. }) => profile::mirror_position(text),
        _ => None,
    };
    match position {
        Some((line, column)) => OsCommandError::Profile {
            path: path.to_owned(),
            error: ProfileError {
                line,
                column,
                message: error.to_string(),
            },
        },
        None => OsCommandError::Build {
            profile: path.to_owned(),
            source: Box::new(error),
        },
    }
}

fn beside_this_program(
    name: &'static str,
    option: &'static str,
) -> Result<PathBuf, OsCommandError> {
    let program = std::env::current_exe().map_err(FileError::of(
        FileAction::Inspect,
        Path::new("/proc/self/exe"),
    ))?;
    let binary = program.with_file_name(name);
    match binary.is_file() {
        true => Ok(binary),
        false => Err(OsCommandError::NoBinary {
            name,
            option,
            program,
        }),
    }
}

fn default_cache() -> Result<PathBuf, OsCommandError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or(OsCommandError::NoCache)?;
    Ok(base.join("xorbang/build"))
}

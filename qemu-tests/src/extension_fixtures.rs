//! The extension images the layer scenarios merge, built with `xorbang-build sysext` and put
//! into the system image's /usr/lib/extensions and /usr/lib/confexts; all but `extra` are
//! pinned by the image's manifest (`xorbang-build image --pin-sysext/--pin-confext`).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{run, FixtureError};

/// This file's source: the cached system image is rebuilt when the recipe changes.
pub const RECIPE: &str = include_str!("extension_fixtures.rs");
/// The code behind `xorbang-build sysext`.
pub const BUILD_RECIPE: &str = include_str!("../../build-initrd/src/image/sysext.rs");

/// The copy of `hello` with one flipped byte, for an initramfs to carry.
pub const TAMPERED_HELLO: &str = "hello-tampered.raw";

/// One extension image of the fixtures.
struct Spec {
    name: &'static str,
    confext: bool,
    os_id: &'static str,
    version_id: &'static str,
    pinned: bool,
    /// Files, relative to the extension's root, and their text.
    files: &'static [(&'static str, &'static str)],
    /// Copied into the base image's extension directory (else it only goes onto the state
    /// partition the `sysext-state` scenario makes).
    in_base: bool,
    /// Bytes of incompressible noise in `usr/share/xorbang-test/<name>-noise`: enough makes
    /// the SquashFS span several verity blocks, so it has a hash tree to check against.
    noise_bytes: usize,
}

/// Debian 12's os-release says ID=debian, VERSION_ID="12" (and no SYSEXT_LEVEL).
const SPECS: &[Spec] = &[
    Spec {
        name: "hello",
        confext: false,
        os_id: "debian",
        version_id: "12",
        pinned: true,
        files: &[(
            "usr/share/xorbang-test/sysext-hello",
            "hello from a sysext\n",
        )],
        in_base: true,
        noise_bytes: 64 * 1024,
    },
    Spec {
        name: "world",
        confext: false,
        os_id: "debian",
        version_id: "12",
        pinned: true,
        files: &[
            (
                "usr/share/xorbang-test/sysext-world",
                "world from a sysext\n",
            ),
            ("opt/xorbang-world/README", "/opt from a sysext\n"),
        ],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "unused",
        confext: false,
        os_id: "debian",
        version_id: "12",
        pinned: true,
        files: &[("usr/share/xorbang-test/sysext-unused", "never selected\n")],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "fedora",
        confext: false,
        os_id: "fedora",
        version_id: "39",
        pinned: true,
        files: &[("usr/share/xorbang-test/sysext-fedora", "wrong OS\n")],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "oldstable",
        confext: false,
        os_id: "debian",
        version_id: "11",
        pinned: true,
        files: &[("usr/share/xorbang-test/sysext-oldstable", "wrong release\n")],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "extra",
        confext: false,
        os_id: "debian",
        version_id: "12",
        pinned: false,
        files: &[("usr/share/xorbang-test/sysext-extra", "unpinned\n")],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "site",
        confext: true,
        os_id: "debian",
        version_id: "12",
        pinned: true,
        files: &[("etc/xorbang-site.conf", "site=confext\n")],
        in_base: true,
        noise_bytes: 0,
    },
    Spec {
        name: "state-tool",
        confext: false,
        os_id: "debian",
        version_id: "12",
        pinned: true,
        files: &[(
            "usr/share/xorbang-test/sysext-state-tool",
            "from the state partition\n",
        )],
        in_base: false,
        noise_bytes: 0,
    },
];

fn other(message: String) -> FixtureError {
    FixtureError::Other(message)
}

/// Builds every extension into `dir` (NAME.raw beside NAME.roothash), copies them into the
/// image tree, and returns the `xorbang-build image` arguments that pin them.
pub fn install(build: &Path, dir: &Path, tree: &Path) -> Result<Vec<String>, FixtureError> {
    let mut pin_args = Vec::new();
    for spec in SPECS {
        let image = build_one(build, dir, spec)?;
        if spec.pinned {
            let flag = if spec.confext {
                "--pin-confext"
            } else {
                "--pin-sysext"
            };
            pin_args.push(flag.to_owned());
            pin_args.push(image.display().to_string());
        }
        if !spec.in_base {
            continue;
        }
        let target_dir = tree.join(if spec.confext {
            "usr/lib/confexts"
        } else {
            "usr/lib/extensions"
        });
        std::fs::create_dir_all(&target_dir)
            .map_err(|error| other(format!("{}: {error}", target_dir.display())))?;
        let target = target_dir.join(format!("{}.raw", spec.name));
        std::fs::copy(&image, &target)
            .map_err(|error| other(format!("{}: {error}", target.display())))?;
    }
    tamper(&dir.join("hello.raw"), &dir.join(TAMPERED_HELLO))?;
    Ok(pin_args)
}

fn build_one(build: &Path, dir: &Path, spec: &Spec) -> Result<PathBuf, FixtureError> {
    let tree = dir.join(format!("{}.tree", spec.name));
    for (path, text) in spec.files {
        let file = tree.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| other(format!("{}: {error}", parent.display())))?;
        }
        std::fs::write(&file, text)
            .map_err(|error| other(format!("{}: {error}", file.display())))?;
    }
    if spec.noise_bytes > 0 {
        let file = tree.join(format!("usr/share/xorbang-test/{}-noise", spec.name));
        std::fs::write(
            &file,
            crate::tamper::noise(0x2545_f491_4f6c_dd1d, spec.noise_bytes),
        )
        .map_err(|error| other(format!("{}: {error}", file.display())))?;
    }
    let image = dir.join(format!("{}.raw", spec.name));
    let mut command = Command::new(build);
    command
        .arg("sysext")
        .arg(&tree)
        .args([
            "--name",
            spec.name,
            "--os-id",
            spec.os_id,
            "--version-id",
            spec.version_id,
        ])
        .arg("-o")
        .arg(&image);
    if spec.confext {
        command.arg("--confext");
    }
    run(&mut command)?;
    std::fs::remove_dir_all(&tree)
        .map_err(|error| other(format!("{}: {error}", tree.display())))?;
    Ok(image)
}

/// The root hash `xorbang-build sysext` wrote beside an image.
pub fn root_hash(dir: &Path, name: &str) -> Result<String, FixtureError> {
    let path = dir.join(format!("{name}.roothash"));
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_owned())
        .map_err(|error| other(format!("{}: {error}", path.display())))
}

/// A copy of `image` with one byte of its SquashFS flipped: inside the first data block,
/// which dm-verity covers.
fn tamper(image: &Path, out: &Path) -> Result<(), FixtureError> {
    std::fs::copy(image, out).map_err(|error| other(format!("{}: {error}", out.display())))?;
    let partitions = xorbang_init::discovery::block_devices::read_gpt_from(
        out,
        xorbang_formats::gpt::SectorSize::BYTES_512,
    )
    .map_err(|error| other(format!("{}: {error}", out.display())))?;
    let data = partitions
        .iter()
        .find(|partition| partition.type_guid == xorbang_formats::gpt::ROOT_X86_64)
        .ok_or_else(|| other(format!("{} has no root partition", out.display())))?;
    let offset = data.first_lba.0 * 512 + 100;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(|error| other(format!("{}: {error}", out.display())))?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)
        .and_then(|()| file.write_all_at(&[byte[0] ^ 0x01], offset))
        .map_err(|error| other(format!("{}: {error}", out.display())))
}

//! Root image formats side by side. `formats`: the test system packed each way, its size,
//! and boots of it (the hand-off tail: exec of systemd → its main() and → the agent, where
//! systemd and the units are read from the image). `delta`: the demo OS and the same with one
//! package more, packed each way: what a block-level delta (an index of the old image's
//! 4 KiB block hashes, as RAUC's adaptive updates keep) would have to send for the update.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::figures::{Figures, Spread, SpreadMs};
use super::measured_boot;
use crate::context::{Context, SYSTEMD_TIMEOUT};
use crate::fixtures::command::{remove_if_present, run};
use crate::fixtures::os_build;
use crate::fixtures::system::ROOT_PARTLABEL;

/// One way to pack a root in the comparison: its name and the `xorbang-build image` flags.
struct FormatCase {
    name: &'static str,
    args: &'static [&'static str],
}

const FORMATS: &[FormatCase] = &[
    FormatCase {
        name: "squashfs-zstd-128k",
        args: &["--compression", "zstd"],
    },
    FormatCase {
        name: "squashfs-zstd-32k",
        args: &["--compression", "zstd", "--block-size", "32768"],
    },
    FormatCase {
        name: "squashfs-zstd-1m",
        args: &["--compression", "zstd", "--block-size", "1048576"],
    },
    FormatCase {
        name: "squashfs-lz4-128k",
        args: &["--compression", "lz4"],
    },
    FormatCase {
        name: "squashfs-gzip-128k",
        args: &["--compression", "gzip"],
    },
    FormatCase {
        name: "squashfs-xz-128k",
        args: &["--compression", "xz"],
    },
    FormatCase {
        name: "erofs-lz4",
        args: &["--format", "erofs", "--compression", "lz4"],
    },
    EROFS_LZ4HC,
    EROFS_NONE,
];

/// The profiles' default format, which the read-ahead comparison boots.
const EROFS_LZ4HC: FormatCase = FormatCase {
    name: "erofs-lz4hc",
    args: &["--format", "erofs", "--compression", "lz4hc"],
};

/// The floor: what the tail costs when nothing is decompressed.
const EROFS_NONE: FormatCase = FormatCase {
    name: "erofs-none",
    args: &["--format", "erofs", "--compression", "none"],
};

/// How a boot of the comparison finds and checks its root.
enum RootCheck {
    /// `roothash=`, the production boot.
    Verified,
    /// `roothash=` with the root device's read-ahead set to this many KiB.
    VerifiedReadahead(u32),
    /// The data partition mounted as it is (`xorbang.verity=optional`): what the tail costs
    /// when dm-verity hashes nothing.
    Unverified,
}

/// One boot of the comparison: a format and how its root is checked.
struct BootCase {
    name: &'static str,
    format: &'static FormatCase,
    check: RootCheck,
}

/// Every format verified as in production, then the tail's floor: nothing decompressed and
/// nothing hashed.
fn format_cases() -> Vec<BootCase> {
    let verified = FORMATS.iter().map(|format| BootCase {
        name: format.name,
        format,
        check: RootCheck::Verified,
    });
    let floor = BootCase {
        name: "erofs-none-unverified",
        format: &EROFS_NONE,
        check: RootCheck::Unverified,
    };
    verified.chain([floor]).collect()
}

impl BootCase {
    fn cmdline(&self, root_hash: &str) -> String {
        let root = match self.check {
            RootCheck::Verified => format!("roothash={root_hash}"),
            RootCheck::VerifiedReadahead(kib) => {
                format!("roothash={root_hash} xorbang.root_readahead_kb={kib}")
            }
            RootCheck::Unverified => {
                format!("root=PARTLABEL={ROOT_PARTLABEL} xorbang.verity=optional")
            }
        };
        format!("{root} xtest.scenario=bench")
    }
}

/// The block size of the delta's index: dm-verity's and EROFS's block.
const DELTA_BLOCK: usize = 4096;

/// Boots each case, interleaved so the machine's noise spreads over all of them, and prints
/// their figures under `title`. Returns the `key=value` pairs.
fn compare_boots(context: &Context, title: &str, cases: &[BootCase]) -> Result<String, String> {
    let dir = context.work.join("bench-formats");
    let tree = unpacked_test_tree(context, &dir)?;
    let initrd = context.erofs_initrd()?;
    let mut disks = Vec::new();
    let packed = FORMATS
        .iter()
        .filter(|format| cases.iter().any(|case| case.format.name == format.name));
    for format in packed {
        // Booted with roothash= or without it: one disk serves every case of the format.
        let out = dir.join(format.name);
        let (image, root_hash) = pack(context, &tree, &out, format)?;
        let disk = out.join("disk.img");
        run(Command::new(&context.binaries.build)
            .args(["disk", "--image"])
            .arg(&image)
            .arg("-o")
            .arg(&disk))
        .map_err(|error| error.to_string())?;
        disks.push((format.name, (size_of(&image)?, disk, root_hash)));
    }
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    for index in 1..=context.config.bench_runs {
        for (case, runs) in cases.iter().zip(runs.iter_mut()) {
            let (_, disk, root_hash) = disk_of(&disks, case)?;
            let vm = context.vm_with_initrd(
                &initrd,
                vec![disk.clone()],
                &case.cmdline(root_hash),
                SYSTEMD_TIMEOUT,
            );
            let figures = measured_boot(context, &vm, &format!("bench-format-{}", case.name))?;
            println!("{} run {index}: {}", case.name, figures.line());
            runs.push(figures);
        }
    }
    println!(
        "{title}, the test system ({} runs each, medians (min–max), ms):",
        context.config.bench_runs
    );
    let mut pairs = Vec::new();
    for (case, runs) in cases.iter().zip(&runs) {
        let (bytes, _, _) = disk_of(&disks, case)?;
        let spread = |pick: fn(&Figures) -> u64| Spread::of(runs.iter().map(pick).collect());
        let (Some(main), Some(agent), Some(total), Some(init)) = (
            spread(|f| f.exec_to_systemd_main),
            spread(|f| f.exec_to_agent),
            spread(|f| f.run_init_to_systemd),
            spread(|f| f.run_init_to_exec),
        ) else {
            return Err(format!("{}: no runs", case.name));
        };
        println!(
            "  {:<22} {bytes:>10} bytes; exec → systemd main {}, → agent {}; Run /init → exec {}, → systemd main {}",
            case.name,
            SpreadMs(main),
            SpreadMs(agent),
            SpreadMs(init),
            SpreadMs(total)
        );
        let key = case.name.replace('-', "_");
        pairs.push(format!(
            "{key}_bytes={bytes} {key}_tail_main_ms={:.1} {key}_tail_agent_ms={:.1} {key}_to_systemd_ms={:.1}",
            main.median as f64 / 1000.0,
            agent.median as f64 / 1000.0,
            total.median as f64 / 1000.0
        ));
    }
    Ok(pairs.join(" "))
}

/// The read-ahead of the verified root device: the kernel's 128 KiB against less, where
/// less reads (and hashes) fewer blocks no one asked for.
fn readahead_cases() -> Vec<BootCase> {
    [
        ("erofs-lz4hc-ra128", RootCheck::Verified),
        ("erofs-lz4hc-ra32", RootCheck::VerifiedReadahead(32)),
        ("erofs-lz4hc-ra8", RootCheck::VerifiedReadahead(8)),
    ]
    .into_iter()
    .map(|(name, check)| BootCase {
        name,
        format: &EROFS_LZ4HC,
        check,
    })
    .collect()
}

/// Boots the test system packed in each format (interleaved, so the machine's noise spreads
/// over all of them). Returns the `key=value` pairs.
pub fn formats_bench(context: &Context) -> Result<String, String> {
    compare_boots(context, "root formats", &format_cases())
}

/// Boots the test system's EROFS root with several read-aheads. Returns the `key=value`
/// pairs.
pub fn readahead_bench(context: &Context) -> Result<String, String> {
    compare_boots(context, "root read-ahead", &readahead_cases())
}

/// The packed image of `case`'s format: its size, its disk and its root hash.
fn disk_of<'a>(
    disks: &'a [(&str, (u64, PathBuf, String))],
    case: &BootCase,
) -> Result<&'a (u64, PathBuf, String), String> {
    disks
        .iter()
        .find(|(name, _)| *name == case.format.name)
        .map(|(_, packed)| packed)
        .ok_or_else(|| format!("{}: format {} was not packed", case.name, case.format.name))
}

/// The demo OS and the same with `less` added (the demo's own version 2), each packed in
/// every format: the size and what a block-level delta would send. Returns the `key=value`
/// pairs.
pub fn delta_bench(context: &Context) -> Result<String, String> {
    let dir = context.work.join("bench-delta");
    let demo =
        std::fs::read_to_string(os_build::profile("demo")).map_err(|error| error.to_string())?;
    let one_more = demo.replace(
        "packages = [\"systemd-sysv\", \"udev\", \"dmsetup\"]",
        "packages = [\"systemd-sysv\", \"udev\", \"dmsetup\", \"less\"]",
    );
    if one_more == demo {
        return Err("profiles/demo.toml no longer lists the packages the delta adds to".into());
    }
    let mut trees = Vec::new();
    for (name, text) in [("old", demo), ("new", one_more)] {
        let profile = dir.join(format!("{name}.toml"));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        std::fs::write(&profile, text).map_err(|error| error.to_string())?;
        let out = dir.join(format!("os-{name}"));
        remove_if_present(&out).map_err(|error| error.to_string())?;
        let tree = os_build::build_tree(&context.binaries, &context.cache, &profile, &out)
            .map_err(|error| error.to_string())?;
        trees.push(tree);
    }
    println!("block-level delta, demo → demo + less (4 KiB block-hash index of the old image):");
    let mut pairs = Vec::new();
    for format in FORMATS {
        let out = dir.join(format.name);
        let (old, _) = pack(context, &trees[0], &out.join("old"), format)?;
        let (new, _) = pack(context, &trees[1], &out.join("new"), format)?;
        let delta = Delta::between(&old, &new)?;
        println!(
            "  {:<20} {:>10} bytes; {} of {} blocks new ({:.1} %, {} bytes to send)",
            format.name,
            size_of(&new)?,
            delta.new_blocks,
            delta.blocks,
            delta.percent(),
            delta.new_blocks * DELTA_BLOCK as u64
        );
        let key = format.name.replace('-', "_");
        pairs.push(format!(
            "{key}_demo_bytes={} {key}_delta_percent={:.1}",
            size_of(&new)?,
            delta.percent()
        ));
        remove_if_present(&out).map_err(|error| error.to_string())?;
    }
    for tree in &trees {
        if let Some(out) = tree.parent() {
            remove_if_present(out).map_err(|error| error.to_string())?;
        }
    }
    Ok(pairs.join(" "))
}

/// How much of the new image a holder of the old one lacks, in whole blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delta {
    blocks: u64,
    new_blocks: u64,
}

impl Delta {
    fn between(old: &Path, new: &Path) -> Result<Self, String> {
        let mut known = HashSet::new();
        for_each_block(old, |block| {
            known.insert(Sha256::digest(block));
        })?;
        let mut delta = Self {
            blocks: 0,
            new_blocks: 0,
        };
        for_each_block(new, |block| {
            delta.blocks += 1;
            if !known.contains(&Sha256::digest(block)) {
                delta.new_blocks += 1;
            }
        })?;
        Ok(delta)
    }

    fn percent(&self) -> f64 {
        match self.blocks {
            0 => 0.0,
            blocks => self.new_blocks as f64 * 100.0 / blocks as f64,
        }
    }
}

/// Calls `each` with every [`DELTA_BLOCK`] of `path` (the last one zero-padded).
fn for_each_block(path: &Path, mut each: impl FnMut(&[u8])) -> Result<(), String> {
    let error = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(error)?);
    let mut block = vec![0u8; DELTA_BLOCK];
    loop {
        let mut filled = 0;
        while filled < DELTA_BLOCK {
            match file.read(&mut block[filled..]).map_err(error)? {
                0 => break,
                read => filled += read,
            }
        }
        if filled == 0 {
            return Ok(());
        }
        block[filled..].fill(0);
        each(&block);
        if filled < DELTA_BLOCK {
            return Ok(());
        }
    }
}

/// The test system's tree, unpacked from its image (ownership and xattrs kept) once.
fn unpacked_test_tree(context: &Context, dir: &Path) -> Result<PathBuf, String> {
    let tree = dir.join("tree");
    let stamp = dir.join("tree.root-hash");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if current == context.system.root_hash && tree.is_dir() {
        return Ok(tree);
    }
    remove_if_present(dir).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
    run(Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(&tree)
        .arg(&context.system.image))
    .map_err(|error| error.to_string())?;
    std::fs::write(&stamp, &context.system.root_hash).map_err(|error| error.to_string())?;
    Ok(tree)
}

/// Packs `tree` into `out/root.img` as `format` says; returns the image and its root hash.
fn pack(
    context: &Context,
    tree: &Path,
    out: &Path,
    format: &FormatCase,
) -> Result<(PathBuf, String), String> {
    std::fs::create_dir_all(out).map_err(|error| error.to_string())?;
    let image = out.join("root.img");
    let report = run(Command::new(&context.binaries.build)
        .arg("image")
        .arg(tree)
        .arg("-o")
        .arg(&image)
        .args(format.args)
        .env("SOURCE_DATE_EPOCH", "1700000000"))
    .map_err(|error| error.to_string())?;
    let root_hash = report
        .lines()
        .find_map(|line| line.strip_prefix("Root hash: "))
        .ok_or_else(|| {
            format!(
                "xorbang-build image printed no root hash for {}",
                format.name
            )
        })?;
    Ok((image, root_hash.to_owned()))
}

fn size_of(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(|error| format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_image_is_all_new_and_a_block_aligned_insert_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks: Vec<u8> = (0..8u8)
            .flat_map(|index| vec![index; DELTA_BLOCK])
            .collect();
        let old = dir.path().join("old");
        std::fs::write(&old, &blocks).expect("write");
        // One byte in front: every block's contents move, nothing is found.
        let shifted = dir.path().join("shifted");
        std::fs::write(&shifted, [&[0xff][..], &blocks].concat()).expect("write");
        let delta = Delta::between(&old, &shifted).expect("delta");
        assert_eq!(
            delta,
            Delta {
                blocks: 9,
                new_blocks: 9
            }
        );
        // A whole block in the middle: only it is new.
        let inserted = dir.path().join("inserted");
        let middle = 4 * DELTA_BLOCK;
        std::fs::write(
            &inserted,
            [&blocks[..middle], &[0xee; DELTA_BLOCK], &blocks[middle..]].concat(),
        )
        .expect("write");
        let delta = Delta::between(&old, &inserted).expect("delta");
        assert_eq!(
            delta,
            Delta {
                blocks: 9,
                new_blocks: 1
            }
        );
        assert!((delta.percent() - 100.0 / 9.0).abs() < 1e-9);
    }
}

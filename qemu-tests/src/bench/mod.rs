//! `bench`: boots the production image, dev mode, a layered boot and the custom kernel
//! several times each and reports, as medians with min–max: the kernel's `Run /init` → exec
//! of systemd (the init's time), → systemd's main() (the figure dracut is measured by), the
//! init's own stages, exec of systemd → its main() and → the agent (the hand-off tail), and
//! the memory in use at the hand-off; then the sizes of what the boot loads, firmware and
//! netboot boots, the OS build, and `xorbang-build verity format` against `veritysetup
//! format` on the same 1 GiB file. Its last line is `key=value` pairs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod figures;
mod formats;

use figures::{summarize, Figures, Timing, TIMING_PREFIX};

use crate::context::{
    parse_report, pass_line, report_line, same_contents, Context, REPORT_PREFIX, SYSTEMD_TIMEOUT,
};
use crate::fixtures::command::{remove_if_present, run};
use crate::fixtures::host_config::{host_config, sign, FW_CFG_NAME};
use crate::fixtures::os_build;
use crate::fixtures::system::TEST_SECRET_KEY;
use crate::fixtures::{boot_chain, dev};
use crate::harness::qemu::{Boot, Console, LineMatch, Vm};
use xorbang_formats::boot_report::BootReport;
use xorbang_formats::host_config::MAX_ENTRIES;

/// One measurement: its name on the command line, and what it runs.
struct Part {
    name: &'static str,
    run: fn(&Context) -> Result<String, String>,
}

/// In the order they run; each returns its `key=value` pairs.
const PARTS: &[Part] = &[
    Part {
        name: "boot",
        run: |context| boot_bench(context, &context.binaries.init),
    },
    Part {
        name: "layers",
        run: layers_bench,
    },
    Part {
        name: "host-config",
        run: host_config_bench,
    },
    Part {
        name: "dev",
        run: dev_bench,
    },
    Part {
        name: "formats",
        run: formats::formats_bench,
    },
    Part {
        name: "readahead",
        run: formats::readahead_bench,
    },
    Part {
        name: "delta",
        run: formats::delta_bench,
    },
    Part {
        name: "firmware",
        run: firmware_bench,
    },
    Part {
        name: "netboot",
        run: crate::scenarios::netboot_bench,
    },
    Part {
        name: "custom-kernel",
        run: custom_kernel_bench,
    },
    Part {
        name: "build",
        run: build_bench,
    },
    Part {
        name: "verity-format",
        run: |context| verity_format_bench(&context.work, &context.binaries.build),
    },
];

/// Whether `name` is a part of the bench.
pub fn is_part(name: &str) -> bool {
    PARTS.iter().any(|part| part.name == name)
}

/// Runs the parts named in `only` (all when empty) and prints their `key=value` pairs on
/// one line.
pub fn bench(context: &Context, only: &[String]) -> Result<(), String> {
    let mut pairs = Vec::new();
    for part in PARTS {
        if only.is_empty() || only.iter().any(|name| name == part.name) {
            pairs.push((part.run)(context)?);
        }
    }
    println!("{}", pairs.join(" "));
    Ok(())
}

/// The production boot with the kernel built from kernel-config/ and an initramfs without
/// modules (direct kernel boot, like `boot`), then the same through OVMF and its UKI.
/// Returns the `key=value` pairs.
fn custom_kernel_bench(context: &Context) -> Result<String, String> {
    let (bzimage, initrd) = context.custom_kernel_parts()?;
    let mut runs = Vec::new();
    for index in 1..=context.config.bench_runs {
        let mut vm = context.vm_with_initrd(
            &initrd,
            vec![context.system.disk.clone()],
            &format!("{} xtest.scenario=bench", context.production_root()),
            SYSTEMD_TIMEOUT,
        );
        if let Boot::Direct { kernel, .. } = &mut vm.boot {
            kernel.clone_from(&bzimage);
        }
        let figures = measured_boot(context, &vm, "bench-custom-kernel")?;
        println!("custom kernel run {index}: {}", figures.line());
        runs.push(figures);
    }
    let direct = summarize("production, custom kernel", "custom", &runs)?;
    let disk = boot_chain::uki_disk(
        &context.work,
        "uki-custom-kernel",
        &context.binaries,
        &bzimage,
        &initrd,
        &context.system,
    )
    .map_err(|error| error.to_string())?;
    let console = context.boot_uki_disk(&disk)?;
    let ovmf_s = console.last_marker.as_secs_f64();
    let initrd_bytes = size_of(&initrd)?;
    let kernel_bytes = size_of(&bzimage)?;
    println!("custom kernel: OVMF power-on to marker {ovmf_s:.1} s; bzImage {kernel_bytes} bytes, initramfs without modules {initrd_bytes} bytes");
    Ok(format!("{direct} custom_ovmf_marker_s={ovmf_s:.1} custom_bzimage_bytes={kernel_bytes} initramfs_no_modules_bytes={initrd_bytes}"))
}

/// The production boot with two sysexts, a confext and a host config from fw_cfg: what the
/// layers cost on top of the plain boot. Returns the `key=value` pairs.
fn layers_bench(context: &Context) -> Result<String, String> {
    let config = context.write_work_file("host-config-bench.toml", &host_config("bench"))?;
    let mut runs = Vec::new();
    for index in 1..=context.config.bench_runs {
        let mut vm = context.vm(
            vec![context.system.disk.clone()],
            &format!(
                "{} xorbang.sysext=hello,world xorbang.confext=site xtest.scenario=bench",
                context.production_root()
            ),
            SYSTEMD_TIMEOUT,
        );
        vm.fw_cfg.push((FW_CFG_NAME.to_owned(), config.clone()));
        let (figures, report, _) = measured_boot_with_report(context, &vm, "bench-layers")?;
        if report.extensions.len() != 3
            || !report.host_config.as_ref().is_some_and(|host| host.applied)
        {
            return Err("the layered bench boot did not merge everything".to_owned());
        }
        println!("layers run {index}: {}", figures.line());
        runs.push(figures);
    }
    summarize(
        "layered: 2 sysexts, 1 confext, host config from fw_cfg",
        "layered",
        &runs,
    )
}

/// Production, `xorbang.dev=1` and `xorbang.dev=persist` boots of one disk with a state
/// partition (and the initramfs with ext4 that persist needs), interleaved: what each dev
/// mode costs. Returns the `key=value` pairs.
fn dev_bench(context: &Context) -> Result<String, String> {
    let dir = context.work.join("bench-dev");
    let disk = dev::disk_with_state(&context.binaries.build, &context.system, &dir, &[])
        .map_err(|error| error.to_string())?;
    let initrd = context.ext4_initrd()?;
    let root = context.production_root();
    let modes = [
        ("production", "dev_production", root.clone()),
        ("dev", "dev_transient", format!("{root} xorbang.dev=1")),
        (
            "persist",
            "dev_persist",
            format!("{root} xorbang.dev=persist"),
        ),
    ];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
    for index in 1..=context.config.bench_runs {
        for ((mode, _, append), runs) in modes.iter().zip(runs.iter_mut()) {
            let mut vm = context.vm_with_initrd(
                &initrd,
                vec![disk.clone()],
                &format!("{append} xtest.scenario=bench"),
                SYSTEMD_TIMEOUT,
            );
            vm.writable_disks = true;
            let figures = measured_boot(context, &vm, "bench-dev")?;
            println!("dev run {index}, {mode}: {}", figures.line());
            runs.push(figures);
        }
    }
    let mut pairs = Vec::new();
    for ((mode, prefix, _), runs) in modes.iter().zip(&runs) {
        pairs.push(summarize(
            &format!("{mode} (disk with a state partition, ext4 initramfs)"),
            prefix,
            runs,
        )?);
    }
    Ok(pairs.join(" "))
}

/// The host-config stage for the same config through fw_cfg: unsigned (`platform`), with a
/// detached signature by the pinned test key (`signed`: what the signature check costs), and
/// a config at the size limit (64 KiB, 256 files: what deciding the largest config costs),
/// interleaved. Returns the `key=value` pairs.
fn host_config_bench(context: &Context) -> Result<String, String> {
    let text = host_config("bench-signed");
    let config = context.write_work_file("host-config-bench-signed.toml", &text)?;
    let signature = sign(&config, TEST_SECRET_KEY).map_err(|error| error.to_string())?;
    let mut large = host_config("bench-large");
    let filler = "x".repeat(180);
    for index in 0..MAX_ENTRIES {
        large.push_str(&format!(
            "\n[[files]]\npath = \"/etc/xorbang-bench/{index:03}\"\ncontent = \"{filler}\"\n"
        ));
    }
    let large_bytes = large.len();
    let large = context.write_work_file("host-config-bench-large.toml", &large)?;
    let variants = [
        ("unsigned", vec![(FW_CFG_NAME.to_owned(), config.clone())]),
        (
            "signed",
            vec![
                (FW_CFG_NAME.to_owned(), config.clone()),
                (format!("{FW_CFG_NAME}.minisig"), signature),
            ],
        ),
        ("size-limit", vec![(FW_CFG_NAME.to_owned(), large)]),
    ];
    let mut stage_us: Vec<Vec<u64>> = vec![Vec::new(); variants.len()];
    let mut init_us: Vec<Vec<u64>> = vec![Vec::new(); variants.len()];
    let mut check_us = Vec::new();
    for index in 1..=context.config.bench_runs {
        for (variant, (name, fw_cfg)) in variants.iter().enumerate() {
            let append = format!("{} xtest.scenario=bench", context.production_root());
            let mut vm = context.vm(vec![context.system.disk.clone()], &append, SYSTEMD_TIMEOUT);
            vm.fw_cfg = fw_cfg.clone();
            let log_name = format!("bench-host-config-{name}");
            let (figures, report, console) = measured_boot_with_report(context, &vm, &log_name)?;
            if !report.host_config.as_ref().is_some_and(|host| host.applied) {
                return Err(format!("the {name} host config was not applied"));
            }
            println!(
                "host config run {index} ({name}): host-config stage {:.1} ms, layers {:.1} ms, \
                 init stage {:.1} ms",
                figures.stage("host-config") as f64 / 1000.0,
                figures.stage("layers") as f64 / 1000.0,
                figures.init_stage as f64 / 1000.0
            );
            stage_us[variant].push(figures.stage("host-config"));
            init_us[variant].push(figures.init_stage);
            if *name == "signed" {
                check_us.push(signature_check_us(&console)?);
            }
        }
    }
    let check = median(check_us) as f64 / 1000.0;
    let [init_unsigned, init_signed] = [0, 1].map(|i| median(init_us[i].clone()) as f64 / 1000.0);
    println!(
        "median: init stage {init_unsigned:.1} ms with the unsigned config, {init_signed:.1} ms \
         with the signed one (+{:.1} ms)",
        init_signed - init_unsigned
    );
    let [unsigned, signed, limit] = [0, 1, 2].map(|i| median(stage_us[i].clone()) as f64 / 1000.0);
    println!(
        "median: host-config stage {unsigned:.1} ms unsigned, {signed:.1} ms signed (+{:.1} ms \
         for the signature; keys and check in the init {check:.1} ms), {limit:.1} ms for a \
         {large_bytes}-byte config of {MAX_ENTRIES} files",
        signed - unsigned
    );
    Ok(format!(
        "host_config_unsigned_ms={unsigned:.1} host_config_signed_ms={signed:.1} \
         signature_check_ms={check:.1} host_config_size_limit_ms={limit:.1} \
         init_unsigned_config_ms={init_unsigned:.1} init_signed_config_ms={init_signed:.1}"
    ))
}

/// What the init says reading the pinned keys and checking the signature took.
fn signature_check_us(console: &Console) -> Result<u64, String> {
    const MARK: &str = "signature checked in ";
    console
        .lines
        .iter()
        .find_map(|line| {
            let rest = &line[line.find(MARK)? + MARK.len()..];
            rest.strip_suffix(" ms)")?.parse::<f64>().ok()
        })
        .map(|ms| (ms * 1000.0) as u64)
        .ok_or_else(|| format!("no \"{MARK}… ms\" line on the console"))
}

/// OVMF power-on to the agent's marker through the UKI on the ESP (the whole chain a
/// machine runs), and the UKI's size. Returns the `key=value` pairs.
fn firmware_bench(context: &Context) -> Result<String, String> {
    let mut marker_ms = Vec::new();
    for index in 1..=context.config.bench_runs {
        let console = context.boot_uki_disk(&context.chain.unsigned_disk)?;
        let ms = u64::try_from(console.last_marker.as_millis()).unwrap_or(u64::MAX);
        println!(
            "ovmf run {index}: power-on to marker {:.1} s",
            ms as f64 / 1000.0
        );
        marker_ms.push(ms);
    }
    let median_s = median(marker_ms) as f64 / 1000.0;
    let uki_bytes = size_of(&context.chain.unsigned_uki)?;
    println!("median: OVMF power-on to marker {median_s:.1} s; UKI {uki_bytes} bytes");
    Ok(format!("ovmf_marker_s={median_s:.1} uki_bytes={uki_bytes}"))
}

/// The production boot with Debian's kernel, and the sizes of what it loads. Returns the
/// `key=value` pairs.
fn boot_bench(context: &Context, init_binary: &Path) -> Result<String, String> {
    let mut runs = Vec::new();
    for index in 1..=context.config.bench_runs {
        let vm = context.vm(
            vec![context.system.disk.clone()],
            &format!("{} xtest.scenario=bench", context.production_root()),
            SYSTEMD_TIMEOUT,
        );
        let figures = measured_boot(context, &vm, "bench")?;
        println!("run {index}: {}", figures.line());
        runs.push(figures);
    }
    let figures = summarize("production, Debian kernel", "production", &runs)?;
    let initrd_bytes = size_of(&context.initrd)?;
    let init_bytes = size_of(init_binary)?;
    println!(
        "initramfs {initrd_bytes} bytes, init binary {init_bytes} bytes ({})",
        context.config.accel.as_str()
    );
    Ok(format!(
        "runs={} accel={} {figures} initramfs_bytes={initrd_bytes} init_binary_bytes={init_bytes}",
        runs.len(),
        context.config.accel.as_str()
    ))
}

/// Boots a bench VM (the agent's `bench` check) and takes its figures.
fn measured_boot(context: &Context, vm: &Vm, log_name: &str) -> Result<Figures, String> {
    measured_boot_with_report(context, vm, log_name).map(|(figures, _, _)| figures)
}

fn measured_boot_with_report(
    context: &Context,
    vm: &Vm,
    log_name: &str,
) -> Result<(Figures, BootReport, Console), String> {
    let expect = [
        report_line(),
        LineMatch::Prefix(TIMING_PREFIX.to_owned()),
        pass_line("bench"),
    ];
    let console = context.boot(vm, log_name, &expect)?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    let timing = console
        .lines
        .iter()
        .find(|line| line.starts_with(TIMING_PREFIX))
        .ok_or("no timing line")
        .map_err(str::to_owned)
        .and_then(|line| Timing::parse(line))?;
    let marker_ms = u64::try_from(console.last_marker.as_millis()).unwrap_or(u64::MAX);
    Ok((Figures::of(&report, &timing, marker_ms), report, console))
}

/// `xorbang-build os` on a cache of its own: `profiles/demo.toml` with one sysext added,
/// cold; again with nothing changed; with the command line changed; with the sysext's
/// package list changed. Returns the `key=value` pairs.
fn build_bench(context: &Context) -> Result<String, String> {
    // The step cache is `dir/build`, empty at the start.
    let dir = context.work.join("bench-build");
    remove_if_present(&dir).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let demo =
        std::fs::read_to_string(os_build::profile("demo")).map_err(|error| error.to_string())?;
    let with_sysext =
        |packages: &str| format!("{demo}\n[[sysext]]\nname = \"tools\"\npackages = [{packages}]\n");
    let cases = [
        ("cold", with_sysext("\"strace\"")),
        ("unchanged", with_sysext("\"strace\"")),
        (
            "cmdline",
            with_sysext("\"strace\"").replace(
                "cmdline = \"console=ttyS0\"",
                "cmdline = \"console=ttyS0 quiet\"",
            ),
        ),
        (
            "sysext",
            with_sysext("\"strace\", \"less\"").replace(
                "cmdline = \"console=ttyS0\"",
                "cmdline = \"console=ttyS0 quiet\"",
            ),
        ),
    ];
    let mut pairs = Vec::new();
    for (name, text) in cases {
        let profile = dir.join(format!("{name}.toml"));
        std::fs::write(&profile, text).map_err(|error| error.to_string())?;
        let started = Instant::now();
        os_build::build_os(
            &context.binaries,
            &dir,
            &profile,
            &dir.join(format!("out-{name}")),
        )
        .map_err(|error| error.to_string())?;
        let seconds = started.elapsed().as_secs_f64();
        println!("build ({name}): {seconds:.1} s");
        pairs.push(format!("build_{name}_s={seconds:.1}"));
    }
    Ok(pairs.join(" "))
}

const VERITY_BENCH_BYTES: u64 = 1 << 30;
const VERITY_BENCH_ROUNDS: usize = 3;
/// Fixed salt and UUID, so both tools must write the same bytes.
const SALT: &str = "7c1e5a0f9b3d2c4e6a8b0d1f3e5c7a9b1d3f5e7c9a0b2d4f6e8a1c3b5d7f9e0a";
const UUID: &str = "2f4e6a8c-1b3d-4f5e-9a7c-0e2d4f6a8b1c";

/// Formats the same 1 GiB (held in the page cache) with both tools, alternating, and
/// checks they wrote the same tree. Returns the `key=value` pairs.
fn verity_format_bench(work: &Path, build: &Path) -> Result<String, String> {
    let data = work.join("verity-bench.data");
    write_bench_data(&data)?;
    let ours_tree = work.join("verity-bench.ours");
    let theirs_tree = work.join("verity-bench.veritysetup");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..VERITY_BENCH_ROUNDS {
        theirs.push(timed(
            Command::new("veritysetup")
                .arg("format")
                .args(["--salt", SALT, "--uuid", UUID])
                .arg(&data)
                .arg(&theirs_tree),
        )?);
        ours.push(timed(
            Command::new(build)
                .args(["verity", "format", "--salt", SALT, "--uuid", UUID])
                .arg(&data)
                .arg(&ours_tree),
        )?);
    }
    if !same_contents(&ours_tree, &theirs_tree)? {
        return Err(format!(
            "{} and {} differ",
            ours_tree.display(),
            theirs_tree.display()
        ));
    }
    for path in [&data, &ours_tree, &theirs_tree] {
        std::fs::remove_file(path).map_err(|error| format!("{}: {error}", path.display()))?;
    }
    let ours = median_duration(ours);
    let theirs = median_duration(theirs);
    let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
    println!(
        "verity format of 1 GiB, median of {VERITY_BENCH_ROUNDS}: xorbang-build {:.2} s, veritysetup {:.2} s, {ratio:.2}x, identical output",
        ours.as_secs_f64(),
        theirs.as_secs_f64()
    );
    Ok(format!(
        "verity_format_s={:.2} veritysetup_format_s={:.2} verity_format_speedup={ratio:.2}",
        ours.as_secs_f64(),
        theirs.as_secs_f64()
    ))
}

/// 1 GiB of noise (xorshift), written once per benchmark run.
fn write_bench_data(path: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|error| format!("{}: {error}", path.display()))?,
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..VERITY_BENCH_BYTES >> 20 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    file.flush()
        .map_err(|error| format!("{}: {error}", path.display()))
}

fn timed(command: &mut Command) -> Result<Duration, String> {
    let started = Instant::now();
    run(command).map_err(|error| error.to_string())?;
    Ok(started.elapsed())
}

fn median_duration(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn size_of(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(|error| format!("{}: {error}", path.display()))
}

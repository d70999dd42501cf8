//! `bench`: boots the production image several times and reports the init stage (kernel
//! starts /init → exec of systemd, from the boot report), the time to the agent's marker,
//! and the sizes of what the boot loads. Its last line is `key=value` pairs.

use std::path::Path;

use crate::qemu::LineMatch;
use crate::scenarios::{parse_report, Context, REPORT_PREFIX};

struct Run {
    init_us: u64,
    stages: Vec<(String, u64)>,
    marker_ms: u64,
}

pub fn bench(context: &Context, init_binary: &Path) -> Result<(), String> {
    let mut runs = Vec::new();
    for index in 1..=context.config.bench_runs {
        let console = context.boot_system(
            "bench",
            &format!(
                "root=PARTUUID={} xorbang.verity=optional",
                crate::fixtures::ROOT_PARTUUID
            ),
            &[LineMatch::Prefix(REPORT_PREFIX.to_owned())],
        )?;
        let report = parse_report(&console, REPORT_PREFIX)?;
        let run = Run {
            init_us: report.total().0,
            stages: report
                .stages
                .iter()
                .map(|stage| (stage.name.clone(), stage.us.0))
                .collect(),
            marker_ms: u64::try_from(console.last_marker.as_millis()).unwrap_or(u64::MAX),
        };
        let stages: Vec<String> = run
            .stages
            .iter()
            .map(|(name, us)| format!("{name} {:.1} ms", *us as f64 / 1000.0))
            .collect();
        println!(
            "run {index}: init stage {:.1} ms ({}); QEMU start to marker {:.1} s",
            run.init_us as f64 / 1000.0,
            stages.join(", "),
            run.marker_ms as f64 / 1000.0
        );
        runs.push(run);
    }
    let init_ms = median(runs.iter().map(|run| run.init_us).collect()) as f64 / 1000.0;
    let marker_s = median(runs.iter().map(|run| run.marker_ms).collect()) as f64 / 1000.0;
    let initrd_bytes = size_of(&context.initrd)?;
    let init_bytes = size_of(init_binary)?;
    println!(
        "median of {}: init stage {init_ms:.1} ms, QEMU start to marker {marker_s:.1} s; initramfs {initrd_bytes} bytes, init binary {init_bytes} bytes ({})",
        runs.len(),
        context.config.accel.as_str()
    );
    println!(
        "runs={} accel={} init_stage_ms={init_ms:.1} marker_s={marker_s:.1} initramfs_bytes={initrd_bytes} init_binary_bytes={init_bytes}",
        runs.len(),
        context.config.accel.as_str()
    );
    Ok(())
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

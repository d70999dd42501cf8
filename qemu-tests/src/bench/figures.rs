//! The figures of one bench boot, all on the guest's boot clock, and their summary over
//! several boots (median with min–max).
//!
//! The kernel stamps its log with its own clock (`local_clock`), which under emulation runs
//! tens of milliseconds apart from the boot clock that the init's report and systemd use.
//! The init's first line carries both (its kernel timestamp and the boot clock it read just
//! before), so the kernel's `Run /init` moves onto the boot clock by that offset.

use std::fmt;

use xorbang_formats::boot_report::BootReport;

/// What the agent's `XORBANG-TIMING:` line says (see `say_timing` in the agent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Kernel clock, seconds.
    pub run_init: f64,
    /// Kernel clock, seconds: the init's first line.
    pub init_start: f64,
    /// Boot clock, seconds: read by the init just before that line.
    pub init_start_boot_clock: f64,
    /// Monotonic clock: systemd's `UserspaceTimestampMonotonic`.
    pub systemd_main_us: u64,
    /// Boot clock, seconds, 10 ms steps (/proc/uptime): when the agent ran.
    pub agent: f64,
}

pub const TIMING_PREFIX: &str = "XORBANG-TIMING: ";

impl Timing {
    pub fn parse(line: &str) -> Result<Self, String> {
        let field = |name: &str| -> Result<&str, String> {
            line.split(' ')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("no {name}= in the timing line {line:?}"))
        };
        let seconds = |name: &str| -> Result<f64, String> {
            let text = field(name)?;
            text.parse()
                .map_err(|_| format!("{name}={text} is no number of seconds"))
        };
        let micros = |name: &str| -> Result<u64, String> {
            let text = field(name)?;
            text.parse()
                .map_err(|_| format!("{name}={text} is no number of µs"))
        };
        Ok(Self {
            run_init: seconds("run-init")?,
            init_start: seconds("init-start")?,
            init_start_boot_clock: seconds("init-start-boot-clock")?,
            systemd_main_us: micros("systemd-main-us")?,
            agent: seconds("agent")?,
        })
    }

    /// The kernel's `Run /init` on the boot clock, µs.
    pub fn run_init_us(&self) -> u64 {
        let offset = self.init_start_boot_clock - self.init_start;
        seconds_to_us(self.run_init + offset)
    }
}

fn seconds_to_us(seconds: f64) -> u64 {
    (seconds * 1e6).round().max(0.0) as u64
}

/// One boot's figures, µs unless named otherwise.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The init's own stage clock: its start → exec of systemd.
    pub init_stage: u64,
    /// Kernel `Run /init` → exec of systemd: the init's time including the kernel's exec.
    pub run_init_to_exec: u64,
    /// Kernel `Run /init` → systemd's main(): the figure dracut is measured by.
    pub run_init_to_systemd: u64,
    /// Exec of systemd → its main(): loading systemd from the root image.
    pub exec_to_systemd_main: u64,
    /// Exec of systemd → the agent (multi-user.target reached), 10 ms steps.
    pub exec_to_agent: u64,
    /// Memory in use just before switch_root, KiB (0 when the report has none).
    pub memory_kib: u64,
    /// QEMU's start → the agent's marker, ms.
    pub marker_ms: u64,
    pub stages: Vec<(String, u64)>,
}

impl Figures {
    pub fn of(report: &BootReport, timing: &Timing, marker_ms: u64) -> Self {
        let run_init = timing.run_init_us();
        let exec = report.uptime_handoff_us.0;
        Self {
            init_stage: report.total().0,
            run_init_to_exec: exec.saturating_sub(run_init),
            run_init_to_systemd: timing.systemd_main_us.saturating_sub(run_init),
            exec_to_systemd_main: timing.systemd_main_us.saturating_sub(exec),
            exec_to_agent: seconds_to_us(timing.agent).saturating_sub(exec),
            memory_kib: report.memory.as_ref().map_or(0, |memory| memory.used_kib.0),
            marker_ms,
            stages: report
                .stages
                .iter()
                .map(|stage| (stage.name.clone(), stage.us.0))
                .collect(),
        }
    }

    pub fn stage(&self, name: &str) -> u64 {
        self.stages
            .iter()
            .find(|(stage, _)| stage == name)
            .map_or(0, |(_, us)| *us)
    }

    /// One line for one boot.
    pub fn line(&self) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, us)| format!("{name} {}", ms(*us)))
            .collect();
        format!(
            "Run /init → exec {} ms, → systemd main {} ms; init stage {} ms ({}); exec → systemd main {} ms, → agent {} ms; memory {} KiB; QEMU start → marker {:.1} s",
            ms(self.run_init_to_exec),
            ms(self.run_init_to_systemd),
            ms(self.init_stage),
            stages.join(", "),
            ms(self.exec_to_systemd_main),
            ms(self.exec_to_agent),
            self.memory_kib,
            self.marker_ms as f64 / 1000.0
        )
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Median, smallest and largest of one figure over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub median: u64,
    pub min: u64,
    pub max: u64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(mut values: Vec<u64>) -> Option<Self> {
        values.sort_unstable();
        Some(Self {
            median: *values.get(values.len() / 2)?,
            min: *values.first()?,
            max: *values.last()?,
        })
    }
}

/// µs shown as ms: `412.3 (398.0–430.9)`.
pub struct SpreadMs(pub Spread);

impl fmt::Display for SpreadMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Spread { median, min, max } = self.0;
        write!(f, "{} ({}–{})", ms(median), ms(min), ms(max))
    }
}

/// A figure's name on the screen, its key, and how it is taken from one run.
type Figure = (&'static str, &'static str, fn(&Figures) -> u64);

/// The summary of one configuration's runs: printed lines and `key=value` pairs, each key
/// starting with `prefix`.
pub fn summarize(label: &str, prefix: &str, runs: &[Figures]) -> Result<String, String> {
    let spread = |pick: fn(&Figures) -> u64| {
        Spread::of(runs.iter().map(pick).collect())
            .ok_or_else(|| format!("{label}: no runs to summarize"))
    };
    let figures: [Figure; 5] = [
        ("Run /init → exec of systemd", "init_ms", |f| {
            f.run_init_to_exec
        }),
        (
            "Run /init → systemd main() (dracut's figure)",
            "to_systemd_ms",
            |f| f.run_init_to_systemd,
        ),
        ("init stage (the init's own clock)", "init_stage_ms", |f| {
            f.init_stage
        }),
        ("exec of systemd → its main()", "tail_main_ms", |f| {
            f.exec_to_systemd_main
        }),
        ("exec of systemd → agent", "tail_agent_ms", |f| {
            f.exec_to_agent
        }),
    ];
    let mut pairs = Vec::new();
    println!("{label}, {} runs, median (min–max):", runs.len());
    for (name, key, pick) in figures {
        let value = spread(pick)?;
        println!("  {name}: {} ms", SpreadMs(value));
        pairs.push(format!("{prefix}_{key}={}", ms(value.median)));
    }
    let memory = spread(|f| f.memory_kib)?;
    println!(
        "  memory in use at switch_root: {} KiB ({}–{})",
        memory.median, memory.min, memory.max
    );
    pairs.push(format!("{prefix}_memory_kib={}", memory.median));
    let stage_names: Vec<&str> = runs[0]
        .stages
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let stages: Vec<String> = stage_names
        .iter()
        .map(|name| {
            let value = Spread::of(runs.iter().map(|run| run.stage(name)).collect())
                .map_or_else(String::new, |value| ms(value.median));
            format!("{name} {value}")
        })
        .collect();
    println!("  stages (medians, ms): {}", stages.join(", "));
    let marker = spread(|f| f.marker_ms)?;
    println!(
        "  QEMU start → marker: {:.1} s ({:.1}–{:.1})",
        marker.median as f64 / 1000.0,
        marker.min as f64 / 1000.0,
        marker.max as f64 / 1000.0
    );
    pairs.push(format!(
        "{prefix}_marker_s={:.1}",
        marker.median as f64 / 1000.0
    ));
    Ok(pairs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorbang_formats::boot_report::{Micros, Mode, RootReport, Stage};

    const LINE: &str = "XORBANG-TIMING: run-init=3.370625 init-start=3.473410 init-start-boot-clock=3.520648 systemd-main-us=4900000 agent=30.50";

    #[test]
    fn moves_run_init_onto_the_boot_clock() {
        let timing = Timing::parse(LINE).expect("parses");
        assert_eq!(timing.systemd_main_us, 4_900_000);
        // The kernel's clock is 47.238 ms behind the boot clock here.
        assert_eq!(timing.run_init_us(), 3_417_863);
    }

    #[test]
    fn names_what_the_timing_line_lacks() {
        let missing = Timing::parse("XORBANG-TIMING: run-init=1.0");
        assert!(
            missing
                .as_ref()
                .is_err_and(|error| error.contains("init-start=")),
            "{missing:?}"
        );
        let bad = Timing::parse(&LINE.replace("agent=30.50", "agent=soon"));
        assert!(
            bad.as_ref()
                .is_err_and(|error| error.contains("agent=soon")),
            "{bad:?}"
        );
    }

    fn report(start_us: u64, handoff_us: u64) -> BootReport {
        BootReport {
            version: 1,
            mode: Mode::Production,
            dev: None,
            root: RootReport {
                spec: "roothash=…".into(),
                device: "/dev/mapper/root".into(),
                fstype: "squashfs".into(),
                verified: true,
                image_id: None,
                image_version: None,
            },
            verity: None,
            modules_loaded: 0,
            extensions: Vec::new(),
            host_config: None,
            init: "/sbin/init".into(),
            stages: vec![Stage {
                name: "setup".into(),
                us: Micros(handoff_us - start_us),
            }],
            uptime_start_us: Micros(start_us),
            uptime_handoff_us: Micros(handoff_us),
            memory: None,
        }
    }

    #[test]
    fn figures_split_the_boot_at_the_exec() {
        let timing = Timing::parse(LINE).expect("parses");
        let figures = Figures::of(&report(3_520_000, 3_700_000), &timing, 31_000);
        assert_eq!(figures.init_stage, 180_000);
        assert_eq!(figures.run_init_to_exec, 3_700_000 - 3_417_863);
        assert_eq!(figures.run_init_to_systemd, 4_900_000 - 3_417_863);
        assert_eq!(figures.exec_to_systemd_main, 1_200_000);
        assert_eq!(figures.exec_to_agent, 30_500_000 - 3_700_000);
        assert_eq!(figures.stage("setup"), 180_000);
        assert_eq!(figures.stage("absent"), 0);
    }

    #[test]
    fn spreads_take_the_middle_and_the_ends() {
        assert_eq!(
            Spread::of(vec![30, 10, 20]),
            Some(Spread {
                median: 20,
                min: 10,
                max: 30
            })
        );
        assert_eq!(Spread::of(Vec::new()), None);
        let shown = SpreadMs(Spread {
            median: 412_300,
            min: 398_000,
            max: 430_960,
        })
        .to_string();
        assert_eq!(shown, "412.3 (398.0–431.0)");
    }
}

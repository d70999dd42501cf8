//! The init's stage clock: consecutive stages on the kernel's boot clock, for the boot report.

use std::time::Duration;

use xorbang_formats::boot_report::{Micros, Stage};

/// Measures consecutive stages on the kernel's boot clock (the clock of /proc/uptime and of
/// the kernel's log timestamps), so the report lines up with the console.
#[derive(Debug)]
pub struct StageClock {
    start: Duration,
    last: Duration,
    stages: Vec<Stage>,
}

impl StageClock {
    pub fn start() -> Self {
        let now = boot_clock();
        Self {
            start: now,
            last: now,
            stages: Vec::new(),
        }
    }

    /// Ends the current stage under `name` and starts the next.
    pub fn finish_stage(&mut self, name: &str) {
        let now = boot_clock();
        self.stages.push(Stage {
            name: name.to_owned(),
            us: Micros::from(now.saturating_sub(self.last)),
        });
        self.last = now;
    }

    /// Uptime at start, uptime at the end of the last stage, and the stages.
    pub fn into_parts(self) -> (Micros, Micros, Vec<Stage>) {
        (self.start.into(), self.last.into(), self.stages)
    }
}

/// Now on the boot clock (CLOCK_BOOTTIME: /proc/uptime's clock, CLOCK_MONOTONIC's while the
/// machine has not been suspended).
pub fn boot_clock() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_to_the_uptime_difference() {
        let mut clock = StageClock::start();
        std::thread::sleep(Duration::from_millis(2));
        clock.finish_stage("one");
        clock.finish_stage("two");
        let (start, end, stages) = clock.into_parts();
        let sum: u64 = stages.iter().map(|stage| stage.us.0).sum();
        // Each stage is rounded down to whole microseconds on its own.
        assert!(end.0 - start.0 - sum <= stages.len() as u64);
        assert!(stages[0].us.0 >= 2000);
    }
}

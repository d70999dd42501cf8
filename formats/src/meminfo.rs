//! `/proc/meminfo`: one `Name:   value[ kB]` line per counter. The init reads it at
//! switch_root for the boot report (how much memory the boot used); the type keeps every
//! line, so it writes back the text it was parsed from.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Kibibytes, the unit of /proc/meminfo's `kB` counters and of the boot report's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kib(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemInfo {
    lines: Vec<Counter>,
}

/// One line: the name, the spaces that align the value (kept, so the text round-trips),
/// the value, and whether it is in kB (the `HugePages_*` counts are not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counter {
    name: String,
    padding: usize,
    value: u64,
    in_kib: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemInfoError {
    #[error("line {line}: {reason}: {text:?}")]
    BadLine {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("no {0} line")]
    Missing(&'static str),
}

impl MemInfo {
    pub fn parse(text: &str) -> Result<Self, MemInfoError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| {
                Counter::parse(line).map_err(|reason| MemInfoError::BadLine {
                    line: index + 1,
                    reason,
                    text: line.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { lines })
    }

    /// The value of a `kB` counter.
    pub fn kib(&self, name: &'static str) -> Result<Kib, MemInfoError> {
        self.lines
            .iter()
            .find(|counter| counter.in_kib && counter.name == name)
            .map(|counter| Kib(counter.value))
            .ok_or(MemInfoError::Missing(name))
    }

    /// Memory in use: all of it but what the kernel could hand out without swapping
    /// (`MemTotal - MemAvailable`, as `free` counts it). Files in a tmpfs or ramfs, such as
    /// an initramfs not yet freed, are in use; clean page cache is not.
    pub fn used(&self) -> Result<Kib, MemInfoError> {
        let total = self.kib("MemTotal")?;
        let available = self.kib("MemAvailable")?;
        Ok(Kib(total.0.saturating_sub(available.0)))
    }
}

impl Counter {
    fn parse(line: &str) -> Result<Self, &'static str> {
        let (name, rest) = line.split_once(':').ok_or("no colon")?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err("not a counter name");
        }
        let value_text = rest.trim_start_matches(' ');
        let padding = rest.len() - value_text.len();
        let (digits, in_kib) = match value_text.strip_suffix(" kB") {
            Some(digits) => (digits, true),
            None => (value_text, false),
        };
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err("the value is not a whole number");
        }
        if digits.len() > 1 && digits.starts_with('0') {
            return Err("the value has a leading zero");
        }
        let value = digits.parse().map_err(|_| "the value is too large")?;
        Ok(Self {
            name: name.to_owned(),
            padding,
            value,
            in_kib,
        })
    }
}

impl fmt::Display for MemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for counter in &self.lines {
            let unit = if counter.in_kib { " kB" } else { "" };
            writeln!(
                f,
                "{}:{:width$}{}{unit}",
                counter.name,
                "",
                counter.value,
                width = counter.padding
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start and end of a real 6.1 guest's /proc/meminfo.
    const SAMPLE: &str = "MemTotal:         479640 kB\nMemFree:          401312 kB\nMemAvailable:     415168 kB\nBuffers:               0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

    #[test]
    fn parses_counters_and_round_trips() {
        let info = MemInfo::parse(SAMPLE).expect("parse");
        assert_eq!(info.kib("MemTotal"), Ok(Kib(479_640)));
        assert_eq!(info.kib("Hugepagesize"), Ok(Kib(2048)));
        assert_eq!(info.used(), Ok(Kib(479_640 - 415_168)));
        assert_eq!(info.to_string(), SAMPLE);
    }

    #[test]
    fn counts_are_not_kibibytes() {
        let info = MemInfo::parse(SAMPLE).expect("parse");
        assert_eq!(
            info.kib("HugePages_Total"),
            Err(MemInfoError::Missing("HugePages_Total"))
        );
    }

    #[test]
    fn a_missing_counter_is_named() {
        let info = MemInfo::parse("MemTotal:  10 kB\n").expect("parse");
        assert_eq!(info.used(), Err(MemInfoError::Missing("MemAvailable")));
    }

    #[test]
    fn refuses_lines_that_are_no_counters() {
        for (text, reason) in [
            ("MemTotal 10 kB", "no colon"),
            (": 10 kB", "not a counter name"),
            ("Mem Total: 10 kB", "not a counter name"),
            ("MemTotal: ten kB", "the value is not a whole number"),
            ("MemTotal:  kB", "the value is not a whole number"),
            ("MemTotal: -1 kB", "the value is not a whole number"),
            ("MemTotal: 010 kB", "the value has a leading zero"),
            (
                "MemTotal: 99999999999999999999999 kB",
                "the value is too large",
            ),
        ] {
            assert_eq!(
                MemInfo::parse(&format!("MemFree: 1 kB\n{text}\n")),
                Err(MemInfoError::BadLine {
                    line: 2,
                    reason,
                    text: text.to_owned()
                })
            );
        }
    }

    /// Seeded noise over the sample never panics, and whatever parses writes back the same.
    #[test]
    fn fuzzed_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % bytes.len() as u64) as usize;
                bytes[at] = b" :k\n0Z9"[(state >> 32) as usize % 7];
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(info) = MemInfo::parse(&text) {
                assert_eq!(
                    info.to_string(),
                    text.lines().map(|l| format!("{l}\n")).collect::<String>()
                );
            }
        }
    }
}

//! A `log::Log` that writes one `<N>xorbang: …` record per write to /dev/kmsg, so our lines
//! land in the kernel log (and on the console, by loglevel) between the kernel's own. Until
//! /dev is mounted, or when the init runs as a test program, records go to stderr.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::RwLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// syslog facility LOG_DAEMON, as systemd uses for its own kmsg records.
const FACILITY_DAEMON: u8 = 3;

pub struct KmsgLogger {
    kmsg: RwLock<Option<PathBuf>>,
}

static LOGGER: KmsgLogger = KmsgLogger {
    kmsg: RwLock::new(None),
};

/// Installs the logger (stderr until [`log_to_kmsg`] is called).
pub fn install(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    log::set_logger(&LOGGER)?;
    log::set_max_level(level);
    Ok(())
}

/// Sends the following records to this kmsg device.
pub fn log_to_kmsg(path: PathBuf) {
    match LOGGER.kmsg.write() {
        Ok(mut guard) => *guard = Some(path),
        Err(poisoned) => *poisoned.into_inner() = Some(path),
    }
}

/// The most text one record carries: /dev/kmsg refuses a write longer than a printk
/// record (1024 bytes with its prefix in 6.1), and the whole line would be lost.
const MAX_RECORD_TEXT: usize = 900;
/// Starts every record that continues the one before (a long line, such as a boot report).
pub const CONTINUATION: &str = "+";

/// The records for one log line: `<priority>xorbang: message`, split into pieces the kernel
/// accepts, each one after the first starting with [`CONTINUATION`]. Control characters are
/// escaped (`\xNN`), so a file name cannot end the line or forge another one.
pub fn kmsg_records(level: Level, message: &str) -> Vec<String> {
    let priority = FACILITY_DAEMON * 8 + severity(level);
    let escaped = escape(message);
    let mut records = Vec::new();
    let mut rest = escaped.as_str();
    loop {
        let mut cut = rest.len().min(MAX_RECORD_TEXT);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, after) = rest.split_at(cut);
        let marker = if records.is_empty() { "" } else { CONTINUATION };
        records.push(format!("<{priority}>xorbang: {marker}{piece}\n"));
        if after.is_empty() {
            return records;
        }
        rest = after;
    }
}

/// Control characters (and a leading [`CONTINUATION`], which would pass for a piece of the
/// line before) as `\xNN`. Backslashes stay as they are: the boot report's JSON escapes
/// must reach the console unchanged, and a literal `\x0a` forges no line.
pub fn escape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (index, c) in message.chars().enumerate() {
        match c {
            c if c.is_control() || (index == 0 && CONTINUATION.starts_with(c)) => {
                for byte in c.to_string().bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// syslog severities: err 3, warning 4, info 6, debug 7.
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl KmsgLogger {
    fn kmsg_path(&self) -> Option<PathBuf> {
        match self.kmsg.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Opens kmsg for each record: the kernel rate-limits writers per open file (10 records
    /// per 5 s), and a boot that fails wants every one of its lines on the console.
    fn write_kmsg(path: &PathBuf, record: &str) -> std::io::Result<()> {
        let mut kmsg = OpenOptions::new().write(true).open(path)?;
        kmsg.write_all(record.as_bytes())
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let written = self.kmsg_path().map(|path| {
            kmsg_records(record.level(), &message)
                .iter()
                .try_for_each(|piece| Self::write_kmsg(&path, piece))
        });
        if !matches!(written, Some(Ok(()))) {
            fallback_to_stderr(&escape(&message));
        }
    }

    fn flush(&self) {}
}

fn fallback_to_stderr(message: &str) {
    if writeln!(std::io::stderr().lock(), "xorbang: {message}").is_err() {
        // The console was the last place left to say it: nobody can be told.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_facility_and_severity() {
        assert_eq!(kmsg_records(Level::Error, "boom"), ["<27>xorbang: boom\n"]);
        assert_eq!(kmsg_records(Level::Warn, "hm"), ["<28>xorbang: hm\n"]);
        assert_eq!(kmsg_records(Level::Info, "ok"), ["<30>xorbang: ok\n"]);
        assert_eq!(kmsg_records(Level::Debug, "x"), ["<31>xorbang: x\n"]);
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let forged = "sysext a\nxorbang: boot-report {}\r\x1b[2K\\";
        assert_eq!(
            kmsg_records(Level::Info, forged),
            ["<30>xorbang: sysext a\\x0axorbang: boot-report {}\\x0d\\x1b[2K\\\n"]
        );
        assert_eq!(escape("+1"), "\\x2b1");
        assert_eq!(escape("1+"), "1+");
        assert_eq!(escape("\u{85}é"), "\\xc2\\x85é");
    }

    #[test]
    fn long_lines_are_split_into_records_the_kernel_accepts() {
        let line = format!("boot-report {}", "é".repeat(1000));
        let records = kmsg_records(Level::Info, &line);
        assert_eq!(records.len(), 3);
        let mut joined = String::new();
        for (index, record) in records.iter().enumerate() {
            assert!(record.len() <= 1000, "{}", record.len());
            let text = record
                .strip_prefix("<30>xorbang: ")
                .and_then(|text| text.strip_suffix('\n'))
                .expect("framed");
            let text = match index {
                0 => text,
                _ => text.strip_prefix(CONTINUATION).expect("continued"),
            };
            joined.push_str(text);
        }
        assert_eq!(joined, line);
    }

    #[test]
    fn writes_one_record_per_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kmsg");
        KmsgLogger::write_kmsg(&path, "<30>xorbang: one\n").expect_err("kmsg must exist");
        std::fs::write(&path, "").expect("create");
        KmsgLogger::write_kmsg(&path, "<30>xorbang: one\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "<30>xorbang: one\n"
        );
    }
}

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

/// The record for one log line: `<priority>xorbang: message`.
pub fn kmsg_record(level: Level, message: &str) -> String {
    format!(
        "<{}>xorbang: {message}\n",
        FACILITY_DAEMON * 8 + severity(level)
    )
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
        let written = self
            .kmsg_path()
            .map(|path| Self::write_kmsg(&path, &kmsg_record(record.level(), &message)));
        if !matches!(written, Some(Ok(()))) {
            fallback_to_stderr(&message);
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
        assert_eq!(kmsg_record(Level::Error, "boom"), "<27>xorbang: boom\n");
        assert_eq!(kmsg_record(Level::Warn, "hm"), "<28>xorbang: hm\n");
        assert_eq!(kmsg_record(Level::Info, "ok"), "<30>xorbang: ok\n");
        assert_eq!(kmsg_record(Level::Debug, "x"), "<31>xorbang: x\n");
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

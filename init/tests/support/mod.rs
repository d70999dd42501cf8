//! What the integration tests share: saying that a test did not run, and whether a privileged
//! one can.
//!
//! Cargo has no "skipped" result for a test that finds at run time that it cannot run here, so
//! such a test reports itself on the terminal and returns. The line goes to stderr directly:
//! `eprintln!` would be captured, and the skip would look like a pass.

use std::io::Write;

/// Reports that `test` did not run, and why.
pub fn skip(test: &str, reason: &str) {
    if writeln!(std::io::stderr(), "SKIPPED {test}: {reason}").is_err() {
        // The terminal is gone: there is no one left to tell.
    }
}

/// Whether a privileged test can run here: as root (`root_for` says what for) with every
/// program of `tools` on the PATH. If not, the test is reported as skipped.
pub fn can_run_privileged(test: &str, root_for: &str, tools: &[&str]) -> bool {
    if !rustix::process::geteuid().is_root() {
        skip(test, &format!("needs root ({root_for})"));
        return false;
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            !std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .collect();
    if !missing.is_empty() {
        skip(test, &format!("needs {}", missing.join(", ")));
    }
    missing.is_empty()
}

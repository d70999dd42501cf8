//! What the integration tests share: saying that a test did not run.
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

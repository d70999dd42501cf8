//! The one way every xorbang binary prints an error: the error and its causes on one line,
//! outermost first, joined by `: `.
//!
//! The convention across the crates: an error's message says what failed and names the
//! path, device or field, but never repeats its cause; the cause is returned by `source()`
//! (thiserror's `source` field or `#[from]`), and only this function joins them. So nothing
//! is printed twice, and nothing is lost as long as errors are printed through here.

use std::error::Error;

pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::assert_said_once;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Outer {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn causes_follow_the_message_once_each() {
        let error = Outer {
            path: "/etc/x",
            source: std::io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            error_chain(&error),
            "cannot read /etc/x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_crate_s_errors_leave_their_causes_to_the_chain() {
        use crate::os_release::OsRelease;
        use crate::verity::VerityTable;
        let release = OsRelease::parse("A=1\nB=\"x").expect_err("unterminated");
        assert_said_once(&release);
        assert_eq!(
            error_chain(&release),
            "line 2: unterminated double quote in B=\"x"
        );
        let table = VerityTable::parse(
            "2 /dev/sda1 /dev/sda2 4096 4096 262144 1 sha256 \
             4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076 -",
        )
        .expect_err("version 2");
        assert!(table.source().is_some());
        assert_said_once(&table);
        assert_eq!(
            error_chain(&table),
            format!("verity table version: {}", table.source().expect("cause"))
        );
    }
}

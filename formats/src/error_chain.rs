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
}

//! What apt's `E:` lines say went wrong when mmdebstrap or apt-get failed: a package name
//! the archive does not have, or an archive that cannot be reached. The build turns them
//! into a line that names the profile's package or mirror.

/// A failure apt explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptFailure {
    /// Names no package list has.
    UnknownPackages(Vec<String>),
    /// The first index or package that could not be fetched, and why.
    Unreachable { url: String, reason: String },
}

/// The failure in `errors` (apt's `E: ` lines, one per line), if apt said which.
pub fn diagnose(errors: &str) -> Option<AptFailure> {
    let unknown: Vec<String> = errors
        .lines()
        .filter_map(|line| line.strip_prefix("E: Unable to locate package "))
        .map(|name| name.trim().to_owned())
        .collect();
    if !unknown.is_empty() {
        return Some(AptFailure::UnknownPackages(unknown));
    }
    let fetch = errors
        .lines()
        .find_map(|line| line.strip_prefix("E: Failed to fetch "))?;
    // apt separates the URL from the reason with two spaces.
    let (url, reason) = fetch.split_once("  ").unwrap_or((fetch, ""));
    Some(AptFailure::Unreachable {
        url: url.trim().to_owned(),
        reason: reason.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_packages_are_named() {
        let errors = "E: Unable to locate package nosuch\nE: Unable to locate package other\n\
                      E: setup failed: E: apt-get … install nosuch failed";
        assert_eq!(
            diagnose(errors),
            Some(AptFailure::UnknownPackages(vec![
                "nosuch".into(),
                "other".into()
            ]))
        );
    }

    #[test]
    fn an_unreachable_archive_is_named_with_the_reason() {
        let errors = "E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  \
                      Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n\
                      E: Some index files failed to download.";
        assert_eq!(
            diagnose(errors),
            Some(AptFailure::Unreachable {
                url: "http://127.0.0.1:9/debian/dists/bookworm/InRelease".into(),
                reason: "Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)".into(),
            })
        );
    }

    #[test]
    fn other_failures_are_left_as_they_are() {
        assert_eq!(diagnose("E: mmdebstrap failed to run"), None);
        assert_eq!(diagnose(""), None);
    }
}

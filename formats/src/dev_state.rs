//! Persistent dev mode's records on the state partition, shared by the init (which reads them
//! at boot) and `xorbang-commit-overlay` (which writes them on a running machine).
//!
//! Under [`DEV_DIR`] each base has a directory named by its root hash holding the overlays'
//! uppers. An upper is never changed while it is mounted, so the running system asks for
//! changes with marker files beside it that the init acts on before the next mount:
//! `HASH.discard` (delete the upper) and `HASH.set-aside` (keep it as `HASH.kept-N` and start
//! empty). `HASH.extensions` lists the extensions committed over that base, which a dev-mode
//! boot of it merges without being asked.

use std::fmt;

use crate::extension_pins::valid_name;
use crate::os_release::ExtensionKind;

/// Where the dev-mode uppers live, relative to the state partition's root.
pub const DEV_DIR: &str = "xorbang/dev";
/// The largest committed-extensions list the init reads.
pub const MAX_COMMITTED_BYTES: u64 = 64 * 1024;

/// The records kept beside one base's upper directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The upper directory itself.
    Upper,
    /// Marker: delete the upper at the next boot.
    Discard,
    /// Marker: set the upper aside at the next boot.
    SetAside,
    /// The extensions committed over this base.
    Committed,
}

impl Record {
    /// The entry's name in [`DEV_DIR`] for the base with `root_hash` (lowercase hex).
    pub fn name(self, root_hash: &str) -> String {
        match self {
            Record::Upper => root_hash.to_owned(),
            Record::Discard => format!("{root_hash}.discard"),
            Record::SetAside => format!("{root_hash}.set-aside"),
            Record::Committed => format!("{root_hash}.extensions"),
        }
    }
}

/// The name an upper set aside gets: the `n`th kept upper of that base.
pub fn kept_name(root_hash: &str, n: u32) -> String {
    format!("{root_hash}.kept-{n}")
}

/// The extensions committed over one base, in the order they were committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedExtensions {
    entries: Vec<(ExtensionKind, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct CommittedError {
    pub line: usize,
    pub problem: String,
}

impl CommittedExtensions {
    /// Lines of `KIND NAME` (`sysext local-tools`); blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, CommittedError> {
        let mut committed = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line_error = |problem: String| CommittedError {
                line: index + 1,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, name) = line
                .split_once(' ')
                .ok_or_else(|| line_error(format!("expected KIND NAME, found {line:?}")))?;
            let kind = match kind {
                "sysext" => ExtensionKind::Sysext,
                "confext" => ExtensionKind::Confext,
                other => return Err(line_error(format!("{other:?} is not sysext or confext"))),
            };
            if !valid_name(name) {
                return Err(line_error(format!("{name:?} is not an extension name")));
            }
            committed.add(kind, name);
        }
        Ok(committed)
    }

    /// Adds an extension unless it is listed already.
    pub fn add(&mut self, kind: ExtensionKind, name: &str) {
        if !self.contains(kind, name) {
            self.entries.push((kind, name.to_owned()));
        }
    }

    pub fn contains(&self, kind: ExtensionKind, name: &str) -> bool {
        self.entries.iter().any(|(k, n)| *k == kind && n == name)
    }

    /// The names of one kind, in commit order.
    pub fn names(&self, kind: ExtensionKind) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, name)| name.as_str())
    }
}

impl fmt::Display for CommittedExtensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, name) in &self.entries {
            writeln!(f, "{kind} {name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_extensions_round_trip() {
        let text = "# committed by xorbang-commit-overlay\nsysext local-tools\n\nconfext local-tools\nsysext more\n";
        let committed = CommittedExtensions::parse(text).expect("valid");
        assert_eq!(
            committed.names(ExtensionKind::Sysext).collect::<Vec<_>>(),
            ["local-tools", "more"]
        );
        assert_eq!(
            committed.to_string(),
            "sysext local-tools\nconfext local-tools\nsysext more\n"
        );
        assert_eq!(
            CommittedExtensions::parse(&committed.to_string()).expect("again"),
            committed
        );
    }

    #[test]
    fn adding_twice_lists_once() {
        let mut committed = CommittedExtensions::default();
        committed.add(ExtensionKind::Confext, "site");
        committed.add(ExtensionKind::Confext, "site");
        committed.add(ExtensionKind::Sysext, "site");
        assert_eq!(committed.to_string(), "confext site\nsysext site\n");
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, expected) in [
            ("sysext", "line 1: expected KIND NAME"),
            (
                "\nportable x",
                "line 2: \"portable\" is not sysext or confext",
            ),
            ("sysext ../x", "line 1: \"../x\" is not an extension name"),
        ] {
            let error = CommittedExtensions::parse(text)
                .expect_err(text)
                .to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn record_names_sit_beside_the_upper() {
        assert_eq!(Record::Upper.name("ab"), "ab");
        assert_eq!(Record::SetAside.name("ab"), "ab.set-aside");
        assert_eq!(Record::Discard.name("ab"), "ab.discard");
        assert_eq!(Record::Committed.name("ab"), "ab.extensions");
        assert_eq!(kept_name("ab", 2), "ab.kept-2");
    }
}

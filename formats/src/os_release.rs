//! os-release(5) files and the UAPI rules that decide whether an extension image fits the
//! base image it is about to be merged onto.
//!
//! # The file format
//!
//! `/etc/os-release`, `/usr/lib/os-release` and an extension's `extension-release.NAME` are
//! all one format: lines of `KEY=VALUE` that a POSIX shell could `source`. Blank lines and
//! lines whose first non-blank character is `#` are comments. We accept exactly the subset of
//! shell syntax in which a shell and this parser can never disagree about a value, and refuse
//! everything else with the line number and what is wrong, because a release file decides
//! what gets merged into a booted system and guessing is worse than stopping:
//!
//! - `KEY` is `[A-Za-z_][A-Za-z0-9_]*`, written at the start of the line (blanks before it are
//!   allowed), directly followed by `=`;
//! - the value is one of: double-quoted (`\"`, `\\`, `\$` and `` \` `` are escapes, any other
//!   backslash is kept literally, and an unescaped `$` or `` ` `` is refused because a shell
//!   would expand it); single-quoted (taken literally, no escapes); or unquoted, where a
//!   backslash escapes the next character and whitespace, control characters, quotes, `$`,
//!   `` ` ``, `~` and the shell operators `; & | < > ( )` must be escaped or quoted;
//! - after the value only blanks (spaces, tabs) may follow: no second word, no text after a
//!   closing quote, no trailing comment; a quote must close on its own line (no continuation
//!   lines) and a value cannot hold NUL;
//! - a `\r` right before the line break is part of the line break (CRLF files are read as
//!   systemd reads them); anywhere else outside quotes it is refused;
//! - a key given twice keeps its first position and takes the last value, as a shell would.
//!
//! [`OsRelease`]'s `Display` writes the canonical form (every value double-quoted), which
//! [`OsRelease::parse`] reads back to the same value.
//!
//! # Matching an extension to the base
//!
//! A system extension (sysext: `/usr`, `/opt`) or configuration extension (confext: `/etc`)
//! carries its own release file, [`ExtensionKind::release_path`]. Its binaries and
//! configuration were built against one particular OS, so before it is merged
//! [`check_extension`] applies systemd-sysext's rules, in its order:
//!
//! 1. `SYSEXT_SCOPE=`/`CONFEXT_SCOPE=`, if set (even empty), lists where the extension may be
//!    used; we merge into the booted system, so it must list `system`;
//! 2. `ARCHITECTURE=`, if non-empty, must be `_any` or this machine's ([`HOST_ARCHITECTURE`]);
//! 3. `ID=` must be set; `ID=_any` declares an extension that depends on nothing from the OS
//!    (static binaries, scripts, plain configuration) and matches without further checks;
//! 4. otherwise it must equal the base's `ID=`; a base without `ID=` fits only `_any`
//!    extensions (systemd-sysext goes further and merges nothing onto such a base);
//! 5. a base without `VERSION_ID=` and without the level key is a rolling release: matching
//!    `ID=` is all one can ask;
//! 6. if both sides set the level key (`SYSEXT_LEVEL=`/`CONFEXT_LEVEL=`), the levels decide:
//!    the level is the OS's promise of a compatible interface across versions, so it
//!    overrides a `VERSION_ID=` difference;
//! 7. otherwise a base with `VERSION_ID=` needs the same `VERSION_ID=` in the extension;
//! 8. otherwise (the base has only a level, the extension none) it matches.
//!
//! Empty values count as absent, except for the scope key, where systemd reads an empty
//! list as "no scope at all". [`validate_extension_release`] is the build tool's stricter
//! check of a release file it is about to put into an image.

use std::fmt::{self, Write as _};
use std::str::FromStr;

/// systemd's name for the architecture this init runs on (the `ARCHITECTURE=` value of an
/// extension built for it).
pub const HOST_ARCHITECTURE: &str = "x86-64";

/// Every architecture name systemd knows (its `architecture_table`), as `ARCHITECTURE=` may
/// use them, plus `_any`.
pub const ARCHITECTURES: &[&str] = &[
    "_any",
    "alpha",
    "arc",
    "arc-be",
    "arm",
    "arm-be",
    "arm64",
    "arm64-be",
    "cris",
    "ia64",
    "loongarch64",
    "m68k",
    "mips",
    "mips-le",
    "mips64",
    "mips64-le",
    "nios2",
    "parisc",
    "parisc64",
    "ppc",
    "ppc-le",
    "ppc64",
    "ppc64-le",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "sh",
    "sh64",
    "sparc",
    "sparc64",
    "tilegx",
    "x86",
    "x86-64",
];

/// The scopes `SYSEXT_SCOPE=`/`CONFEXT_SCOPE=` may list.
pub const SCOPES: &[&str] = &["initrd", "system", "portable"];

/// The scope this init merges into.
const OUR_SCOPE: &str = "system";

/// What systemd splits scope lists on.
const SCOPE_SEPARATORS: [char; 4] = [' ', '\t', '\n', '\r'];

/// Error messages quote at most this much of a line.
const SHOWN_CHARS: usize = 160;

/// The contents of an os-release or extension-release file: keys in file order, each with the
/// value a shell would give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// Unique keys in order of first appearance; no value holds `\n` or NUL.
    entries: Vec<(String, String)>,
}

/// A release file refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}")]
pub struct OsReleaseError {
    /// 1-based.
    pub line: usize,
    #[source]
    pub problem: OsReleaseProblem,
}

/// What is wrong with one line (or with a value given to [`OsRelease::set`]). Quoted line text
/// is shown with control characters escaped, so every message is a single line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsReleaseProblem {
    #[error("expected KEY=VALUE, a comment or a blank line, found {text}")]
    NotAssignment { text: String },
    #[error("invalid variable name {name:?} (only A-Z a-z 0-9 _, not starting with a digit)")]
    BadName { name: String },
    #[error("unterminated double quote in {text}")]
    UnterminatedDoubleQuote { text: String },
    #[error("unterminated single quote in {text}")]
    UnterminatedSingleQuote { text: String },
    #[error("text after the closing quote in {text}")]
    AfterClosingQuote { text: String },
    #[error("{found:?} in an unquoted value must be quoted or escaped, in {text}")]
    MustQuote { found: char, text: String },
    #[error("{found:?} must be escaped inside double quotes (write \\{found}), in {text}")]
    MustEscape { found: char, text: String },
    #[error("backslash at the end of the line (continuation lines are not supported) in {text}")]
    TrailingBackslash { text: String },
    #[error("the value of {key} contains {found:?}, which an os-release line cannot hold")]
    Unrepresentable { key: String, found: char },
}

impl OsRelease {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads os-release(5) text; see the module documentation for what is accepted.
    pub fn parse(text: &str) -> Result<Self, OsReleaseError> {
        let mut release = Self::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = parse_assignment(trimmed).map_err(|problem| OsReleaseError {
                line: index + 1,
                problem,
            })?;
            release.insert(key, value);
        }
        Ok(release)
    }

    /// The value of `key` (unquoted and unescaped), if the file sets it, even to "".
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `key` if it is set to something other than "": what the matching rules
    /// mean by "present".
    pub fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|value| !value.is_empty())
    }

    /// Sets `key` (keeping its position if it is already there). Refuses a key outside
    /// `[A-Za-z_][A-Za-z0-9_]*` and a value the file format cannot hold (`\n`, NUL).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OsReleaseProblem> {
        if !valid_name(key) {
            return Err(OsReleaseProblem::BadName {
                name: key.to_owned(),
            });
        }
        check_representable(key, value)?;
        self.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The entries, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, key: String, value: String) {
        match self.entries.iter_mut().find(|(name, _)| *name == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }
}

/// Reads os-release(5) text: the same as [`OsRelease::parse`].
pub fn parse(text: &str) -> Result<OsRelease, OsReleaseError> {
    OsRelease::parse(text)
}

impl FromStr for OsRelease {
    type Err = OsReleaseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The canonical file: one `KEY="VALUE"` line per entry, in order, `"`, `\`, `$` and `` ` ``
/// escaped with a backslash.
impl fmt::Display for OsRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.entries {
            f.write_str(key)?;
            f.write_str("=\"")?;
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    f.write_char('\\')?;
                }
                f.write_char(c)?;
            }
            f.write_str("\"\n")?;
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_representable(key: &str, value: &str) -> Result<(), OsReleaseProblem> {
    match value.chars().find(|c| matches!(c, '\n' | '\0')) {
        Some(found) => Err(OsReleaseProblem::Unrepresentable {
            key: key.to_owned(),
            found,
        }),
        None => Ok(()),
    }
}

/// `text` as an error message quotes it: control characters escaped, long lines cut.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One non-comment line, without leading blanks and line break.
fn parse_assignment(text: &str) -> Result<(String, String), OsReleaseProblem> {
    let Some((name, rest)) = text.split_once('=') else {
        return Err(OsReleaseProblem::NotAssignment { text: shown(text) });
    };
    if !valid_name(name) {
        return Err(OsReleaseProblem::BadName {
            name: name.to_owned(),
        });
    }
    let value = if let Some(body) = rest.strip_prefix('"') {
        double_quoted(body, text)?
    } else if let Some(body) = rest.strip_prefix('\'') {
        single_quoted(body, text)?
    } else {
        unquoted(rest, text)?
    };
    check_representable(name, &value)?;
    Ok((name.to_owned(), value))
}

fn only_blanks(rest: &str) -> bool {
    rest.trim_start_matches([' ', '\t']).is_empty()
}

fn after_closing_quote(rest: &str, text: &str) -> Result<(), OsReleaseProblem> {
    if only_blanks(rest) {
        Ok(())
    } else {
        Err(OsReleaseProblem::AfterClosingQuote { text: shown(text) })
    }
}

fn double_quoted(body: &str, text: &str) -> Result<String, OsReleaseProblem> {
    let unterminated = || OsReleaseProblem::UnterminatedDoubleQuote { text: shown(text) };
    let mut value = String::new();
    let mut chars = body.char_indices();
    loop {
        let Some((index, c)) = chars.next() else {
            return Err(unterminated());
        };
        match c {
            '"' => {
                after_closing_quote(&body[index + 1..], text)?;
                return Ok(value);
            }
            '\\' => match chars.clone().next() {
                Some((_, escaped @ ('"' | '\\' | '$' | '`'))) => {
                    chars.next();
                    value.push(escaped);
                }
                // Any other backslash stays, as in a shell.
                Some(_) => value.push('\\'),
                None => return Err(unterminated()),
            },
            '$' | '`' => {
                return Err(OsReleaseProblem::MustEscape {
                    found: c,
                    text: shown(text),
                })
            }
            _ => value.push(c),
        }
    }
}

fn single_quoted(body: &str, text: &str) -> Result<String, OsReleaseProblem> {
    let Some((value, rest)) = body.split_once('\'') else {
        return Err(OsReleaseProblem::UnterminatedSingleQuote { text: shown(text) });
    };
    after_closing_quote(rest, text)?;
    Ok(value.to_owned())
}

/// Characters an unquoted shell word cannot hold literally (`~` only at the start or after a
/// `:`, where an assignment expands it to a home directory, but refusing it everywhere keeps
/// the rule simple).
fn must_quote(c: char) -> bool {
    c.is_ascii_control()
        || matches!(
            c,
            ' ' | '"' | '\'' | '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '~'
        )
}

fn unquoted(body: &str, text: &str) -> Result<String, OsReleaseProblem> {
    let mut value = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => value.push(escaped),
                None => return Err(OsReleaseProblem::TrailingBackslash { text: shown(text) }),
            },
            ' ' | '\t' if only_blanks(chars.as_str()) => return Ok(value),
            _ if must_quote(c) => {
                return Err(OsReleaseProblem::MustQuote {
                    found: c,
                    text: shown(text),
                })
            }
            _ => value.push(c),
        }
    }
    Ok(value)
}

/// The two kinds of extension image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionKind {
    /// A system extension: merged over `/usr` and `/opt`.
    Sysext,
    /// A configuration extension: merged over `/etc`.
    Confext,
}

impl ExtensionKind {
    pub const ALL: [ExtensionKind; 2] = [ExtensionKind::Sysext, ExtensionKind::Confext];

    /// The directory holding the release files, relative to the image's root.
    pub fn release_dir(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "usr/lib/extension-release.d",
            ExtensionKind::Confext => "etc/extension-release.d",
        }
    }

    /// Where extension `name`'s release file is, relative to the image's root (no leading
    /// `/`).
    pub fn release_path(self, name: &str) -> String {
        format!("{}/extension-release.{name}", self.release_dir())
    }

    /// The API level key, in the base's os-release and the extension's release file.
    pub fn level_key(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "SYSEXT_LEVEL",
            ExtensionKind::Confext => "CONFEXT_LEVEL",
        }
    }

    /// The key listing where the extension may be used.
    pub fn scope_key(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "SYSEXT_SCOPE",
            ExtensionKind::Confext => "CONFEXT_SCOPE",
        }
    }

    /// The top-level directories an extension of this kind may merge (and nothing else).
    pub fn hierarchies(self) -> &'static [&'static str] {
        match self {
            ExtensionKind::Sysext => &["usr", "opt"],
            ExtensionKind::Confext => &["etc"],
        }
    }
}

impl fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtensionKind::Sysext => "sysext",
            ExtensionKind::Confext => "confext",
        })
    }
}

/// A value as messages show it: bare if it is plain, else quoted with escapes (so the message
/// stays one unambiguous line).
fn shown_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '+' | '@' | '~')
        });
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// Why an extension does not fit the base. Each names the field ([`MatchError::field`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("{key}={} does not include {OUR_SCOPE}", shown_value(.value))]
    Scope { key: &'static str, value: String },
    #[error("ARCHITECTURE={} is not this machine's {machine}", shown_value(.value))]
    Architecture { value: String, machine: String },
    #[error("no ID= (use ID=_any for an extension that fits every OS)")]
    NoId,
    #[error("the base's os-release has no ID= to match ID={} against", shown_value(.extension))]
    BaseNoId { extension: String },
    #[error("ID={} does not match the base's ID={}", shown_value(.extension), shown_value(.base))]
    Id { extension: String, base: String },
    #[error("{key}={} does not match the base's {key}={}", shown_value(.extension), shown_value(.base))]
    Level {
        key: &'static str,
        extension: String,
        base: String,
    },
    #[error(
        "no VERSION_ID, but the base has VERSION_ID={} (and {level_key} is not set in both)",
        shown_value(.base)
    )]
    NoVersionId {
        base: String,
        level_key: &'static str,
    },
    #[error("VERSION_ID={} does not match the base's VERSION_ID={}", shown_value(.extension), shown_value(.base))]
    VersionId { extension: String, base: String },
}

impl MatchError {
    /// The release file field the mismatch is about.
    pub fn field(&self) -> &'static str {
        match self {
            MatchError::Scope { key, .. } | MatchError::Level { key, .. } => key,
            MatchError::Architecture { .. } => "ARCHITECTURE",
            MatchError::NoId | MatchError::BaseNoId { .. } | MatchError::Id { .. } => "ID",
            MatchError::NoVersionId { .. } | MatchError::VersionId { .. } => "VERSION_ID",
        }
    }
}

/// Whether `extension` (its release file) may be merged onto the base described by `host`
/// (its os-release), on this machine: systemd-sysext's rules, see the module documentation.
pub fn check_extension(
    host: &OsRelease,
    extension: &OsRelease,
    kind: ExtensionKind,
) -> Result<(), MatchError> {
    check_extension_for(host, extension, kind, HOST_ARCHITECTURE)
}

/// [`check_extension`] for a machine whose systemd architecture name is `machine`.
pub fn check_extension_for(
    host: &OsRelease,
    extension: &OsRelease,
    kind: ExtensionKind,
    machine: &str,
) -> Result<(), MatchError> {
    // a. Scope: set (even to "") means a list, which must name us.
    if let Some(scope) = extension.get(kind.scope_key()) {
        if !scope.split(SCOPE_SEPARATORS).any(|word| word == OUR_SCOPE) {
            return Err(MatchError::Scope {
                key: kind.scope_key(),
                value: scope.to_owned(),
            });
        }
    }
    // b. Architecture.
    if let Some(architecture) = extension.get_nonempty("ARCHITECTURE") {
        if architecture != "_any" && architecture != machine {
            return Err(MatchError::Architecture {
                value: architecture.to_owned(),
                machine: machine.to_owned(),
            });
        }
    }
    // c. The extension's ID; _any fits everything.
    let id = extension.get_nonempty("ID").ok_or(MatchError::NoId)?;
    if id == "_any" {
        return Ok(());
    }
    // d. The same OS.
    let base_id = host
        .get_nonempty("ID")
        .ok_or_else(|| MatchError::BaseNoId {
            extension: id.to_owned(),
        })?;
    if id != base_id {
        return Err(MatchError::Id {
            extension: id.to_owned(),
            base: base_id.to_owned(),
        });
    }
    // e. A rolling release has nothing more to compare.
    let level_key = kind.level_key();
    let base_level = host.get_nonempty(level_key);
    let base_version = host.get_nonempty("VERSION_ID");
    if base_level.is_none() && base_version.is_none() {
        return Ok(());
    }
    // f. Levels, when both sides have one, decide.
    if let (Some(base), Some(level)) = (base_level, extension.get_nonempty(level_key)) {
        if level != base {
            return Err(MatchError::Level {
                key: level_key,
                extension: level.to_owned(),
                base: base.to_owned(),
            });
        }
        return Ok(());
    }
    // g. Else the OS version.
    if let Some(base) = base_version {
        let Some(version) = extension.get_nonempty("VERSION_ID") else {
            return Err(MatchError::NoVersionId {
                base: base.to_owned(),
                level_key,
            });
        };
        if version != base {
            return Err(MatchError::VersionId {
                extension: version.to_owned(),
                base: base.to_owned(),
            });
        }
    }
    // h.
    Ok(())
}

/// What [`validate_extension_release`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("no ID= (use ID=_any for an extension that fits every OS)")]
    NoId,
    #[error("ID={} may contain only a-z 0-9 . _ - (os-release(5))", shown_value(.value))]
    BadId { value: String },
    #[error(
        "ARCHITECTURE={} is not an architecture name systemd knows (such as x86-64, arm64, or _any)",
        shown_value(.value)
    )]
    UnknownArchitecture { value: String },
    #[error("{key}= is empty: an extension with no scope is merged nowhere")]
    EmptyScope { key: &'static str },
    #[error("{key}={}: {} is not a scope (use initrd, system or portable)", shown_value(.value), shown_value(.scope))]
    UnknownScope {
        key: &'static str,
        value: String,
        scope: String,
    },
    #[error("{key}={} may contain only A-Z a-z 0-9 . _ -", shown_value(.value))]
    BadLevel { key: &'static str, value: String },
}

impl ReleaseError {
    /// The release file field the problem is about.
    pub fn field(&self) -> &'static str {
        match self {
            ReleaseError::NoId | ReleaseError::BadId { .. } => "ID",
            ReleaseError::UnknownArchitecture { .. } => "ARCHITECTURE",
            ReleaseError::EmptyScope { key }
            | ReleaseError::UnknownScope { key, .. }
            | ReleaseError::BadLevel { key, .. } => key,
        }
    }
}

/// Checks a release file the build tool is about to put into an extension image of `kind`:
/// `ID=` set (lower-case a-z 0-9 `.` `_` `-`, which includes `_any`); `ARCHITECTURE=`, if
/// non-empty, one of [`ARCHITECTURES`]; the scope key, if set, a non-empty list of
/// [`SCOPES`]; the level key, if non-empty, of A-Z a-z 0-9 `.` `_` `-`. Empty `ARCHITECTURE=`
/// and level values are accepted (matching ignores them).
pub fn validate_extension_release(
    release: &OsRelease,
    kind: ExtensionKind,
) -> Result<(), ReleaseError> {
    let id = release.get_nonempty("ID").ok_or(ReleaseError::NoId)?;
    let id_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if !id.chars().all(id_char) {
        return Err(ReleaseError::BadId {
            value: id.to_owned(),
        });
    }
    if let Some(architecture) = release.get_nonempty("ARCHITECTURE") {
        if !ARCHITECTURES.contains(&architecture) {
            return Err(ReleaseError::UnknownArchitecture {
                value: architecture.to_owned(),
            });
        }
    }
    let scope_key = kind.scope_key();
    if let Some(value) = release.get(scope_key) {
        let mut scopes = value
            .split(SCOPE_SEPARATORS)
            .filter(|word| !word.is_empty())
            .peekable();
        if scopes.peek().is_none() {
            return Err(ReleaseError::EmptyScope { key: scope_key });
        }
        if let Some(scope) = scopes.find(|scope| !SCOPES.contains(scope)) {
            return Err(ReleaseError::UnknownScope {
                key: scope_key,
                value: value.to_owned(),
                scope: scope.to_owned(),
            });
        }
    }
    let level_key = kind.level_key();
    if let Some(level) = release.get_nonempty(level_key) {
        let level_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !level.chars().all(level_char) {
            return Err(ReleaseError::BadLevel {
                key: level_key,
                value: level.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::error_chain;
    use crate::fixtures::XorShift;

    /// /usr/lib/os-release of Debian 12, verbatim.
    const DEBIAN_BOOKWORM: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"#;

    fn release(text: &str) -> OsRelease {
        OsRelease::parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
    }

    fn refusal(text: &str) -> OsReleaseError {
        match OsRelease::parse(text) {
            Ok(parsed) => panic!("{text:?} accepted as {parsed:?}"),
            Err(error) => error,
        }
    }

    // ---- parsing ----

    #[test]
    fn debian_bookworm() {
        let parsed = release(DEBIAN_BOOKWORM);
        let keys: Vec<&str> = parsed.iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "PRETTY_NAME",
                "NAME",
                "VERSION_ID",
                "VERSION",
                "VERSION_CODENAME",
                "ID",
                "HOME_URL",
                "SUPPORT_URL",
                "BUG_REPORT_URL"
            ]
        );
        assert_eq!(
            parsed.get("PRETTY_NAME"),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(parsed.get("VERSION_ID"), Some("12"));
        assert_eq!(parsed.get("VERSION_CODENAME"), Some("bookworm"));
        assert_eq!(parsed.get("ID"), Some("debian"));
        assert_eq!(parsed.get("HOME_URL"), Some("https://www.debian.org/"));
        assert_eq!(parsed.get("SYSEXT_LEVEL"), None);
        assert_eq!(parsed.get("id"), None, "keys are case-sensitive");
        assert_eq!(parsed.len(), 9);
        assert_eq!(release(&parsed.to_string()), parsed);
        assert_eq!(
            DEBIAN_BOOKWORM.parse::<OsRelease>().as_ref(),
            Ok(&parsed),
            "FromStr is parse"
        );
        assert_eq!(parse(DEBIAN_BOOKWORM), Ok(parsed));
    }

    #[test]
    fn values_quoting_and_escapes() {
        let cases: &[(&str, &str)] = &[
            ("K=plain", "plain"),
            ("K=", ""),
            ("K=\"\"", ""),
            ("K=''", ""),
            ("K=\"a b\"", "a b"),
            ("K='a b'", "a b"),
            (r#"K="q\" bs\\ dollar\$ tick\`""#, r#"q" bs\ dollar$ tick`"#),
            (r#"K="kept\n\a\ \'""#, r#"kept\n\a\ \'"#),
            (
                r#"K='no \escapes $HOME "x" `y`'"#,
                r#"no \escapes $HOME "x" `y`"#,
            ),
            (r#"K=a\ b\$c\"d\'e\\f\;g\x"#, r#"a b$c"d'e\f;gx"#),
            ("K=a#b", "a#b"),
            ("K=\\~/x", "~/x"),
            ("K=\"~/x\"", "~/x"),
            ("K=#", "#"),
            ("K=https://example.org/x?y=1", "https://example.org/x?y=1"),
            ("K=a=b", "a=b"),
            ("K=ünïcödé日本", "ünïcödé日本"),
            ("K=\"ünï cödé 🦀\"", "ünï cödé 🦀"),
            ("K=\"'single' inside\"", "'single' inside"),
            ("K='\"double\" inside'", "\"double\" inside"),
            ("K=\"#not a comment\"", "#not a comment"),
            ("K=\"tab\there\"", "tab\there"),
            ("K=\"cr\rinside\"", "cr\rinside"),
            ("K=x   ", "x"),
            ("K=x\t", "x"),
            ("K=\"x\"  \t", "x"),
            ("K='x' ", "x"),
            ("   K=indented", "indented"),
            ("\tK=\"tabbed\"", "tabbed"),
            ("_K=underscore", "underscore"),
        ];
        for (text, value) in cases {
            let parsed = release(text);
            let key = if text.contains("_K=") { "_K" } else { "K" };
            assert_eq!(parsed.get(key), Some(*value), "{text:?}");
            assert_eq!(parsed.len(), 1, "{text:?}");
            assert_eq!(release(&parsed.to_string()), parsed, "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_line_ends() {
        let parsed = release(
            "# leading comment\n\n   # indented comment\n\t\n  \nA=1\n#B=2\nC='3' \n# trailing",
        );
        assert_eq!(parsed.iter().collect::<Vec<_>>(), [("A", "1"), ("C", "3")]);
        assert_eq!(release(""), OsRelease::new());
        assert!(release("\n\n# only comments\n").is_empty());
        // No final newline, CRLF line ends (as systemd reads them).
        assert_eq!(release("A=1"), release("A=1\n"));
        let crlf = release("A=1\r\nB=\"two words\"\r\n# c\r\n\r\nC='x'\r\n");
        assert_eq!(
            crlf.iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "two words"), ("C", "x")]
        );
    }

    #[test]
    fn last_duplicate_wins_in_first_position() {
        let parsed = release("A=1\nB=2\nA=3\nC=4\nA=\n");
        assert_eq!(
            parsed.iter().collect::<Vec<_>>(),
            [("A", ""), ("B", "2"), ("C", "4")]
        );
        assert_eq!(parsed.get("A"), Some(""));
        assert_eq!(parsed.get_nonempty("A"), None);
        assert_eq!(parsed.get_nonempty("B"), Some("2"));
        assert_eq!(parsed.get_nonempty("Z"), None);
    }

    #[test]
    fn refusals_name_the_line_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "A=1\nB=2\nVERSION_ID=\"12\n",
                r#"line 3: unterminated double quote in VERSION_ID="12"#,
            ),
            (
                "X='abc\nY=1\n",
                "line 1: unterminated single quote in X='abc",
            ),
            ("# c\n\nX=\"ends with backslash\\\"\n", r#"line 3: unterminated double quote in X="ends with backslash\""#),
            (
                "A=1\nA=\"x\"y\n",
                r#"line 2: text after the closing quote in A="x"y"#,
            ),
            (
                "A='x' # comment",
                "line 1: text after the closing quote in A='x' # comment",
            ),
            (
                "A=\"x\"\"y\"",
                r#"line 1: text after the closing quote in A="x""y""#,
            ),
            (
                "ID=debian\nNAME=Debian GNU/Linux\n",
                "line 2: ' ' in an unquoted value must be quoted or escaped, in NAME=Debian GNU/Linux",
            ),
            (
                "A=x\tb",
                r"line 1: '\t' in an unquoted value must be quoted or escaped, in A=x\tb",
            ),
            (
                "A=a\rb\n",
                r"line 1: '\r' in an unquoted value must be quoted or escaped, in A=a\rb",
            ),
            (
                "\n\n\n\nHOME=$HOME",
                "line 5: '$' in an unquoted value must be quoted or escaped, in HOME=$HOME",
            ),
            (
                "A=`id`",
                "line 1: '`' in an unquoted value must be quoted or escaped, in A=`id`",
            ),
            (
                "A=it's",
                r#"line 1: '\'' in an unquoted value must be quoted or escaped, in A=it's"#,
            ),
            (
                "A=say\"hi\"",
                r#"line 1: '"' in an unquoted value must be quoted or escaped, in A=say"hi""#,
            ),
            (
                "A=a;b",
                "line 1: ';' in an unquoted value must be quoted or escaped, in A=a;b",
            ),
            (
                "A=a|b",
                "line 1: '|' in an unquoted value must be quoted or escaped, in A=a|b",
            ),
            (
                "A=a&b",
                "line 1: '&' in an unquoted value must be quoted or escaped, in A=a&b",
            ),
            (
                "A=a>b",
                "line 1: '>' in an unquoted value must be quoted or escaped, in A=a>b",
            ),
            (
                "A=(x)",
                "line 1: '(' in an unquoted value must be quoted or escaped, in A=(x)",
            ),
            (
                "HOME_DIR=~/x",
                "line 1: '~' in an unquoted value must be quoted or escaped, in HOME_DIR=~/x",
            ),
            (
                "A=\"$HOME\"",
                r#"line 1: '$' must be escaped inside double quotes (write \$), in A="$HOME""#,
            ),
            (
                "A=\"`id`\"",
                r#"line 1: '`' must be escaped inside double quotes (write \`), in A="`id`""#,
            ),
            (
                "A=x\\",
                r"line 1: backslash at the end of the line (continuation lines are not supported) in A=x\",
            ),
            (
                "A=1\njunk\n",
                "line 2: expected KEY=VALUE, a comment or a blank line, found junk",
            ),
            (
                "1A=x",
                r#"line 1: invalid variable name "1A" (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "A-B=x",
                r#"line 1: invalid variable name "A-B" (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "=x",
                r#"line 1: invalid variable name "" (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "A =x",
                r#"line 1: invalid variable name "A " (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "export A=x",
                r#"line 1: invalid variable name "export A" (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "\u{feff}ID=debian",
                r#"line 1: invalid variable name "\u{feff}ID" (only A-Z a-z 0-9 _, not starting with a digit)"#,
            ),
            (
                "A=\"nul\0here\"",
                r"line 1: the value of A contains '\0', which an os-release line cannot hold",
            ),
            (
                "A=\"tab\there",
                r#"line 1: unterminated double quote in A="tab\there"#,
            ),
        ];
        for (text, message) in cases {
            let error = error_chain(&refusal(text));
            assert_eq!(error, *message, "{text:?}");
            assert!(!error.contains('\n'));
        }
        // Long lines are cut in the message.
        let long = format!("A=\"{}", "x".repeat(500));
        let message = error_chain(&refusal(&long));
        assert!(
            message.ends_with('…') && message.chars().count() < 220,
            "{message}"
        );
    }

    #[test]
    fn set_and_display() {
        let mut built = OsRelease::new();
        built.set("ID", "debian").expect("set");
        built.set("X", "a\"b$c`d\\e 'f'").expect("set");
        built.set("ID", "fedora").expect("set");
        assert_eq!(
            built.to_string(),
            "ID=\"fedora\"\nX=\"a\\\"b\\$c\\`d\\\\e 'f'\"\n"
        );
        assert_eq!(release(&built.to_string()), built);
        assert_eq!(
            built.set("9", "x"),
            Err(OsReleaseProblem::BadName { name: "9".into() })
        );
        assert_eq!(
            built
                .set("A", "two\nlines")
                .map_err(|error| error.to_string()),
            Err(r"the value of A contains '\n', which an os-release line cannot hold".into())
        );
        assert!(built.set("A", "nul\0").is_err());
        assert_eq!(built.len(), 2);
        assert_eq!(OsRelease::new().to_string(), "");
    }

    // ---- extension kinds ----

    #[test]
    fn extension_kinds() {
        let sysext = ExtensionKind::Sysext;
        let confext = ExtensionKind::Confext;
        assert_eq!(
            sysext.release_path("tools"),
            "usr/lib/extension-release.d/extension-release.tools"
        );
        assert_eq!(
            confext.release_path("site.v2"),
            "etc/extension-release.d/extension-release.site.v2"
        );
        assert_eq!(sysext.level_key(), "SYSEXT_LEVEL");
        assert_eq!(confext.level_key(), "CONFEXT_LEVEL");
        assert_eq!(sysext.scope_key(), "SYSEXT_SCOPE");
        assert_eq!(confext.scope_key(), "CONFEXT_SCOPE");
        assert_eq!(sysext.hierarchies(), ["usr", "opt"]);
        assert_eq!(confext.hierarchies(), ["etc"]);
        assert_eq!(sysext.to_string(), "sysext");
        assert_eq!(confext.to_string(), "confext");
        assert_eq!(ExtensionKind::ALL, [sysext, confext]);
    }

    // ---- matching ----

    /// `{LEVEL}`, `{SCOPE}` become the kind's keys, `{OTHER_LEVEL}`, `{OTHER_SCOPE}` the other
    /// kind's.
    fn for_kind(text: &str, kind: ExtensionKind) -> String {
        let other = match kind {
            ExtensionKind::Sysext => ExtensionKind::Confext,
            ExtensionKind::Confext => ExtensionKind::Sysext,
        };
        text.replace("{LEVEL}", kind.level_key())
            .replace("{SCOPE}", kind.scope_key())
            .replace("{OTHER_LEVEL}", other.level_key())
            .replace("{OTHER_SCOPE}", other.scope_key())
    }

    const DEBIAN_12: &str = "ID=debian\nVERSION_ID=12\n";

    #[test]
    fn matching_rules_table() {
        // (what, base, extension, Ok(()) or Err((field, message)))
        type Expected = Result<(), (&'static str, &'static str)>;
        let cases: &[(&str, &str, &str, Expected)] = &[
            ("same ID and VERSION_ID", DEBIAN_12, DEBIAN_12, Ok(())),
            ("real Debian os-release", DEBIAN_BOOKWORM, "ID=debian\nVERSION_ID=\"12\"", Ok(())),
            // a. scope
            ("scope system", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=system", Ok(())),
            ("scope list with system", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=\"initrd system portable\"", Ok(())),
            ("scope with odd blanks", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=\"\t system  \"", Ok(())),
            ("scope without system", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=\"initrd portable\"",
                Err(("{SCOPE}", "{SCOPE}=\"initrd portable\" does not include system"))),
            ("scope initrd only", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=initrd",
                Err(("{SCOPE}", "{SCOPE}=initrd does not include system"))),
            ("empty scope", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=",
                Err(("{SCOPE}", "{SCOPE}=\"\" does not include system"))),
            ("scope words, not substrings", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{SCOPE}=systemd",
                Err(("{SCOPE}", "{SCOPE}=systemd does not include system"))),
            ("scope checked first", DEBIAN_12, "ARCHITECTURE=arm64\n{SCOPE}=portable",
                Err(("{SCOPE}", "{SCOPE}=portable does not include system"))),
            ("the other kind's scope is ignored", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{OTHER_SCOPE}=initrd", Ok(())),
            // b. architecture
            ("ARCHITECTURE=x86-64", DEBIAN_12, "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64", Ok(())),
            ("ARCHITECTURE=_any", DEBIAN_12, "ID=debian\nVERSION_ID=12\nARCHITECTURE=_any", Ok(())),
            ("empty ARCHITECTURE", DEBIAN_12, "ID=debian\nVERSION_ID=12\nARCHITECTURE=", Ok(())),
            ("ARCHITECTURE=arm64", DEBIAN_12, "ID=debian\nVERSION_ID=12\nARCHITECTURE=arm64",
                Err(("ARCHITECTURE", "ARCHITECTURE=arm64 is not this machine's x86-64"))),
            ("ARCHITECTURE=x86_64 (not systemd's spelling)", DEBIAN_12, "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86_64",
                Err(("ARCHITECTURE", "ARCHITECTURE=x86_64 is not this machine's x86-64"))),
            ("architecture before ID", DEBIAN_12, "ID=fedora\nARCHITECTURE=x86",
                Err(("ARCHITECTURE", "ARCHITECTURE=x86 is not this machine's x86-64"))),
            ("architecture applies to _any", DEBIAN_12, "ID=_any\nARCHITECTURE=arm64",
                Err(("ARCHITECTURE", "ARCHITECTURE=arm64 is not this machine's x86-64"))),
            ("the base's ARCHITECTURE is ignored", "ID=debian\nVERSION_ID=12\nARCHITECTURE=arm64", DEBIAN_12, Ok(())),
            // c. the extension's ID
            ("no ID", DEBIAN_12, "VERSION_ID=12",
                Err(("ID", "no ID= (use ID=_any for an extension that fits every OS)"))),
            ("empty ID", DEBIAN_12, "ID=\nVERSION_ID=12",
                Err(("ID", "no ID= (use ID=_any for an extension that fits every OS)"))),
            ("_any skips version checks", DEBIAN_12, "ID=_any\nVERSION_ID=99\n{LEVEL}=7", Ok(())),
            ("_any on a base with a level", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", "ID=_any\n{LEVEL}=2", Ok(())),
            ("_any on a base without ID", "VERSION_ID=12", "ID=_any", Ok(())),
            // d. same OS
            ("other OS", DEBIAN_12, "ID=fedora\nVERSION_ID=12",
                Err(("ID", "ID=fedora does not match the base's ID=debian"))),
            ("IDs are case-sensitive", DEBIAN_12, "ID=Debian\nVERSION_ID=12",
                Err(("ID", "ID=Debian does not match the base's ID=debian"))),
            ("base without ID", "VERSION_ID=12", DEBIAN_12,
                Err(("ID", "the base's os-release has no ID= to match ID=debian against"))),
            ("base with empty ID", "ID=\nVERSION_ID=12", DEBIAN_12,
                Err(("ID", "the base's os-release has no ID= to match ID=debian against"))),
            // e. rolling base
            ("rolling base", "ID=arch", "ID=arch\nVERSION_ID=2020", Ok(())),
            ("rolling base, bare extension", "ID=arch\nBUILD_ID=rolling", "ID=arch", Ok(())),
            ("rolling base with empty VERSION_ID and level", "ID=arch\nVERSION_ID=\n{LEVEL}=", "ID=arch\n{LEVEL}=3", Ok(())),
            ("rolling base ignores the other kind's level", "ID=arch\n{OTHER_LEVEL}=1", "ID=arch", Ok(())),
            // f. levels
            ("levels match, versions differ", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", "ID=debian\nVERSION_ID=11\n{LEVEL}=1", Ok(())),
            ("levels match, extension without VERSION_ID", "ID=debian\nVERSION_ID=12\n{LEVEL}=1.0", "ID=debian\n{LEVEL}=1.0", Ok(())),
            ("levels differ", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", "ID=debian\nVERSION_ID=12\n{LEVEL}=2",
                Err(("{LEVEL}", "{LEVEL}=2 does not match the base's {LEVEL}=1"))),
            ("levels differ, base without VERSION_ID", "ID=debian\n{LEVEL}=1", "ID=debian\n{LEVEL}=2",
                Err(("{LEVEL}", "{LEVEL}=2 does not match the base's {LEVEL}=1"))),
            // g. VERSION_ID when levels are not on both sides
            ("level only on the base, same VERSION_ID", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", DEBIAN_12, Ok(())),
            ("level only on the base, other VERSION_ID", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", "ID=debian\nVERSION_ID=11",
                Err(("VERSION_ID", "VERSION_ID=11 does not match the base's VERSION_ID=12"))),
            ("level only on the extension, same VERSION_ID", DEBIAN_12, "ID=debian\nVERSION_ID=12\n{LEVEL}=1", Ok(())),
            ("level only on the extension, no VERSION_ID", DEBIAN_12, "ID=debian\n{LEVEL}=1",
                Err(("VERSION_ID", "no VERSION_ID, but the base has VERSION_ID=12 (and {LEVEL} is not set in both)"))),
            ("empty level on the extension", "ID=debian\nVERSION_ID=12\n{LEVEL}=1", "ID=debian\nVERSION_ID=11\n{LEVEL}=",
                Err(("VERSION_ID", "VERSION_ID=11 does not match the base's VERSION_ID=12"))),
            ("the other kind's level does not count", "ID=debian\nVERSION_ID=12\n{OTHER_LEVEL}=1", "ID=debian\nVERSION_ID=11\n{OTHER_LEVEL}=1",
                Err(("VERSION_ID", "VERSION_ID=11 does not match the base's VERSION_ID=12"))),
            ("no VERSION_ID", DEBIAN_12, "ID=debian",
                Err(("VERSION_ID", "no VERSION_ID, but the base has VERSION_ID=12 (and {LEVEL} is not set in both)"))),
            ("empty VERSION_ID", DEBIAN_12, "ID=debian\nVERSION_ID=",
                Err(("VERSION_ID", "no VERSION_ID, but the base has VERSION_ID=12 (and {LEVEL} is not set in both)"))),
            ("other VERSION_ID", DEBIAN_12, "ID=debian\nVERSION_ID=11",
                Err(("VERSION_ID", "VERSION_ID=11 does not match the base's VERSION_ID=12"))),
            ("VERSION_ID is compared as text", DEBIAN_12, "ID=debian\nVERSION_ID=12.0",
                Err(("VERSION_ID", "VERSION_ID=12.0 does not match the base's VERSION_ID=12"))),
            ("odd values are quoted in messages", "ID=debian\nVERSION_ID=\"1 2\"", "ID=debian\nVERSION_ID='x\"y'",
                Err(("VERSION_ID", "VERSION_ID=\"x\\\"y\" does not match the base's VERSION_ID=\"1 2\""))),
            // h. base with a level only, extension without
            ("base level only, extension without level", "ID=debian\n{LEVEL}=1", "ID=debian\nVERSION_ID=11", Ok(())),
        ];
        let mut checked = 0;
        for kind in ExtensionKind::ALL {
            for (what, base, extension, expected) in cases {
                let base = release(&for_kind(base, kind));
                let extension = release(&for_kind(extension, kind));
                let got = check_extension(&base, &extension, kind);
                match (expected, got) {
                    (Ok(()), Ok(())) => {}
                    (Err((field, message)), Err(error)) => {
                        assert_eq!(error.field(), for_kind(field, kind), "{kind} {what}");
                        assert_eq!(error.to_string(), for_kind(message, kind), "{kind} {what}");
                        assert!(error.to_string().contains(error.field()), "{kind} {what}");
                    }
                    (expected, got) => panic!("{kind} {what}: expected {expected:?}, got {got:?}"),
                }
                checked += 1;
            }
        }
        eprintln!("osrelease matching table: {checked} cases");
    }

    #[test]
    fn architecture_is_a_parameter() {
        let base = release(DEBIAN_12);
        let arm = release("ID=debian\nVERSION_ID=12\nARCHITECTURE=arm64");
        let sysext = ExtensionKind::Sysext;
        assert_eq!(check_extension_for(&base, &arm, sysext, "arm64"), Ok(()));
        assert_eq!(
            check_extension_for(&base, &release(DEBIAN_12), sysext, "arm64"),
            Ok(())
        );
        let error = check_extension_for(
            &base,
            &release("ID=debian\nARCHITECTURE=x86-64"),
            sysext,
            "arm64",
        )
        .expect_err("x86-64 on arm64");
        assert_eq!(
            error.to_string(),
            "ARCHITECTURE=x86-64 is not this machine's arm64"
        );
        assert!(check_extension(&base, &arm, sysext).is_err());
    }

    // ---- validation for the build tool ----

    #[test]
    fn validate_release_files() {
        let good = [
            "ID=debian\nVERSION_ID=12",
            "ID=_any",
            "ID=debian\nSYSEXT_LEVEL=1.0_rc-2\nARCHITECTURE=x86-64\nSYSEXT_SCOPE=\"system portable\"",
            "ID=debian\nARCHITECTURE=_any\nSYSEXT_SCOPE=initrd",
            "ID=fedora-coreos\nARCHITECTURE=\nSYSEXT_LEVEL=",
            "ID=debian\nCONFEXT_SCOPE=bogus\nCONFEXT_LEVEL=\"not checked for a sysext\"",
        ];
        for text in good {
            assert_eq!(
                validate_extension_release(&release(text), ExtensionKind::Sysext),
                Ok(()),
                "{text}"
            );
            // The same file for a confext: swap the kind-specific keys.
            let swapped = text
                .replace("SYSEXT_", "TMP_")
                .replace("CONFEXT_", "SYSEXT_")
                .replace("TMP_", "CONFEXT_");
            assert_eq!(
                validate_extension_release(&release(&swapped), ExtensionKind::Confext),
                Ok(()),
                "{swapped}"
            );
        }
        for architecture in ARCHITECTURES {
            let text = format!("ID=debian\nARCHITECTURE={architecture}");
            assert_eq!(
                validate_extension_release(&release(&text), ExtensionKind::Sysext),
                Ok(())
            );
        }
        let bad: &[(ExtensionKind, &str, &str, &str)] = &[
            (ExtensionKind::Sysext, "VERSION_ID=12", "ID", "no ID= (use ID=_any for an extension that fits every OS)"),
            (ExtensionKind::Confext, "ID=", "ID", "no ID= (use ID=_any for an extension that fits every OS)"),
            (ExtensionKind::Sysext, "ID=Debian", "ID", "ID=Debian may contain only a-z 0-9 . _ - (os-release(5))"),
            (ExtensionKind::Sysext, "ID=\"my os\"", "ID", "ID=\"my os\" may contain only a-z 0-9 . _ - (os-release(5))"),
            (ExtensionKind::Sysext, "ID=debian\nARCHITECTURE=x86_64", "ARCHITECTURE",
                "ARCHITECTURE=x86_64 is not an architecture name systemd knows (such as x86-64, arm64, or _any)"),
            (ExtensionKind::Sysext, "ID=debian\nARCHITECTURE=amd64", "ARCHITECTURE",
                "ARCHITECTURE=amd64 is not an architecture name systemd knows (such as x86-64, arm64, or _any)"),
            (ExtensionKind::Sysext, "ID=debian\nSYSEXT_SCOPE=", "SYSEXT_SCOPE",
                "SYSEXT_SCOPE= is empty: an extension with no scope is merged nowhere"),
            (ExtensionKind::Confext, "ID=debian\nCONFEXT_SCOPE=\"  \"", "CONFEXT_SCOPE",
                "CONFEXT_SCOPE= is empty: an extension with no scope is merged nowhere"),
            (ExtensionKind::Sysext, "ID=debian\nSYSEXT_SCOPE=\"system host\"", "SYSEXT_SCOPE",
                "SYSEXT_SCOPE=\"system host\": host is not a scope (use initrd, system or portable)"),
            (ExtensionKind::Confext, "ID=debian\nCONFEXT_SCOPE=System", "CONFEXT_SCOPE",
                "CONFEXT_SCOPE=System: System is not a scope (use initrd, system or portable)"),
            (ExtensionKind::Sysext, "ID=debian\nSYSEXT_LEVEL=\"1 2\"", "SYSEXT_LEVEL",
                "SYSEXT_LEVEL=\"1 2\" may contain only A-Z a-z 0-9 . _ -"),
            (ExtensionKind::Confext, "ID=debian\nCONFEXT_LEVEL=1/2", "CONFEXT_LEVEL",
                "CONFEXT_LEVEL=1/2 may contain only A-Z a-z 0-9 . _ -"),
        ];
        for (kind, text, field, message) in bad {
            let error = validate_extension_release(&release(text), *kind).expect_err(text);
            assert_eq!(error.field(), *field, "{text}");
            assert_eq!(error.to_string(), *message, "{text}");
        }
    }

    // ---- properties ----

    /// Characters that exercise every branch of the parser.
    const NASTY: &[char] = &[
        'a', 'Z', '_', '9', '=', '=', '"', '"', '\'', '\'', '\\', '\\', '$', '`', '#', ' ', ' ',
        '\t', '\n', '\n', '\r', ';', '|', '&', '(', '<', '\0', '\u{1}', '\u{7f}', 'é', '日', '🦀',
        '\u{a0}', '\u{feff}',
    ];

    const VALUE_CHARS: &[char] = &[
        'a', 'b', 'Z', '0', '9', '.', '-', '_', '/', ':', ' ', ' ', '\t', '\r', '"', '\'', '\\',
        '\\', '$', '`', '#', '=', ';', '&', '|', '(', ')', '<', '>', '*', '~', '!', '{', 'é', '日',
        '🦀', '\u{a0}', '\u{1}', '\u{7f}', '\u{feff}',
    ];

    fn random_key(rng: &mut XorShift) -> String {
        const FIRST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
        const REST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789";
        let mut key = String::from(char::from(*rng.pick(FIRST)));
        for _ in 0..rng.below(10) {
            key.push(char::from(*rng.pick(REST)));
        }
        key
    }

    fn random_value(rng: &mut XorShift) -> String {
        (0..rng.below(24)).map(|_| *rng.pick(VALUE_CHARS)).collect()
    }

    fn random_release(rng: &mut XorShift) -> OsRelease {
        let mut built = OsRelease::new();
        for _ in 0..rng.below(9) {
            let key = if built.is_empty() || rng.percent(80) {
                random_key(rng)
            } else {
                // Overwrite an existing key now and then.
                let index = rng.below(built.len());
                built.entries[index].0.clone()
            };
            built
                .set(&key, &random_value(rng))
                .expect("generated entries are valid");
        }
        built
    }

    fn mutate(rng: &mut XorShift, seed: &str) -> String {
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(chars.len() + 1);
            match rng.below(4) {
                0 => chars.insert(at, *rng.pick(NASTY)),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                2 if at < chars.len() => chars[at] = *rng.pick(NASTY),
                _ => {
                    // Duplicate a stretch (a line, part of a value).
                    let end = (at + rng.below(20)).min(chars.len());
                    let stretch: Vec<char> = chars[at..end].to_vec();
                    let to = rng.below(chars.len() + 1);
                    chars.splice(to..to, stretch);
                }
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn fuzz_parse_never_panics_and_errors_point_into_the_text() {
        const INPUTS: usize = 100_000;
        let mut rng = XorShift(0x51e1_ea5e);
        let seeds = [
            DEBIAN_BOOKWORM,
            "ID=debian\nVERSION_ID=12\nSYSEXT_LEVEL=1\n",
            "# comment\n\nA='single'\nB=\"dq \\\" \\$ x\"\nC=un\\ quoted\n",
            "ID=_any\r\nARCHITECTURE=x86-64\r\n",
        ];
        let (mut errors, mut accepted) = (0, 0);
        for _ in 0..INPUTS {
            let text = match rng.below(4) {
                0 => (0..rng.below(60)).map(|_| *rng.pick(NASTY)).collect(),
                1 => random_release(&mut rng).to_string(),
                _ => {
                    let seed = if rng.percent(50) {
                        rng.pick(&seeds).to_string()
                    } else {
                        random_release(&mut rng).to_string()
                    };
                    mutate(&mut rng, &seed)
                }
            };
            match OsRelease::parse(&text) {
                Ok(parsed) => {
                    accepted += 1;
                    // Whatever is accepted survives the canonical form.
                    assert_eq!(
                        OsRelease::parse(&parsed.to_string()),
                        Ok(parsed),
                        "{text:?}"
                    );
                }
                Err(error) => {
                    errors += 1;
                    let lines = text.split('\n').count();
                    assert!(
                        (1..=lines).contains(&error.line),
                        "{text:?}: line {} of {lines}",
                        error.line
                    );
                    let message = error_chain(&error);
                    assert!(
                        message.starts_with(&format!("line {}: ", error.line)),
                        "{message}"
                    );
                    assert!(!message.contains('\n'), "{message:?}");
                }
            }
        }
        assert!(
            errors > INPUTS / 10 && accepted > INPUTS / 10,
            "{errors} errors, {accepted} accepted"
        );
        eprintln!("osrelease fuzz: {INPUTS} inputs, {errors} errors, {accepted} accepted");
    }

    #[test]
    fn display_parse_round_trip() {
        const RELEASES: usize = 20_000;
        let mut rng = XorShift(0x2047_d15b);
        let mut entries = 0;
        for _ in 0..RELEASES {
            let original = random_release(&mut rng);
            entries += original.len();
            let text = original.to_string();
            assert_eq!(OsRelease::parse(&text).as_ref(), Ok(&original), "{text:?}");
        }
        eprintln!("osrelease round trip: {RELEASES} releases, {entries} entries");
    }

    // Matching against a reference: the rules as a decision table over facts about the pair.

    const FACTS: usize = 14;

    /// The facts the table looks at, each from the raw generated values, not through
    /// `OsRelease`.
    #[allow(clippy::too_many_arguments)]
    fn facts(
        scope: Option<&str>,
        architecture: Option<&str>,
        ext_id: Option<&str>,
        base_id: Option<&str>,
        base_version: Option<&str>,
        base_level: Option<&str>,
        ext_level: Option<&str>,
        ext_version: Option<&str>,
    ) -> [bool; FACTS] {
        let set = |value: Option<&str>| value.is_some_and(|value| !value.is_empty());
        [
            scope.is_some(),
            scope.is_some_and(|scope| {
                scope
                    .split(|c: char| " \t\r\n".contains(c))
                    .any(|word| word == "system")
            }),
            set(architecture),
            matches!(architecture, Some("x86-64" | "_any")),
            set(ext_id),
            ext_id == Some("_any"),
            set(base_id),
            ext_id == base_id,
            set(base_version),
            set(base_level),
            set(ext_level),
            ext_level == base_level,
            set(ext_version),
            ext_version == base_version,
        ]
    }

    /// First matching row wins; `1`/`0` must hold/not hold, `-` is "don't care".
    const DECISIONS: &[(&str, Option<&str>)] = &[
        // sc sys ar aok eid any bid ideq bv bl el leq ev veq
        ("1 0 - - - - - - - - - - - -", Some("SCOPE")),
        ("- - 1 0 - - - - - - - - - -", Some("ARCHITECTURE")),
        ("- - - - 0 - - - - - - - - -", Some("ID")),
        ("- - - - 1 1 - - - - - - - -", None),
        ("- - - - - - 0 - - - - - - -", Some("ID")),
        ("- - - - - - - 0 - - - - - -", Some("ID")),
        ("- - - - - - - - 0 0 - - - -", None),
        ("- - - - - - - - - 1 1 1 - -", None),
        ("- - - - - - - - - 1 1 0 - -", Some("LEVEL")),
        ("- - - - - - - - 1 - - - 0 -", Some("VERSION_ID")),
        ("- - - - - - - - 1 - - - 1 0", Some("VERSION_ID")),
        ("- - - - - - - - - - - - - -", None),
    ];

    fn decide(facts: [bool; FACTS]) -> Option<&'static str> {
        for (row, outcome) in DECISIONS {
            let conditions: Vec<&str> = row.split(' ').collect();
            assert_eq!(conditions.len(), FACTS);
            let applies = conditions
                .iter()
                .zip(facts)
                .all(|(condition, fact)| match *condition {
                    "1" => fact,
                    "0" => !fact,
                    _ => true,
                });
            if applies {
                return *outcome;
            }
        }
        unreachable!("the last row matches everything")
    }

    /// One `KEY=value` line in a random (valid) quoting.
    fn line(rng: &mut XorShift, key: &str, value: &str) -> String {
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        match rng.below(3) {
            0 if plain => format!("{key}={value}\n"),
            1 => format!("{key}='{value}'\n"),
            _ => format!("{key}=\"{value}\"\n"),
        }
    }

    #[test]
    fn matching_agrees_with_a_decision_table() {
        const PAIRS: usize = 60_000;
        // Weighted pools: failures of the early rules must not drown the later ones.
        let ids = [
            None,
            Some(""),
            Some("debian"),
            Some("debian"),
            Some("debian"),
            Some("fedora"),
        ];
        let ext_ids = [
            None,
            Some(""),
            Some("debian"),
            Some("debian"),
            Some("debian"),
            Some("debian"),
            Some("fedora"),
            Some("_any"),
        ];
        let versions = [None, Some(""), Some("11"), Some("12"), Some("12")];
        let levels = [None, None, Some(""), Some("1"), Some("1"), Some("2")];
        let architectures = [
            None,
            None,
            None,
            None,
            Some(""),
            Some("x86-64"),
            Some("_any"),
            Some("arm64"),
            Some("x86"),
        ];
        let scopes = [
            None,
            None,
            None,
            None,
            None,
            None,
            Some(""),
            Some("system"),
            Some("initrd"),
            Some("initrd portable"),
            Some(" portable\tsystem "),
            Some("systemd"),
        ];
        let mut rng = XorShift(0x7ab1e);
        let mut outcomes: std::collections::BTreeMap<&str, usize> = Default::default();
        for _ in 0..PAIRS {
            let kind = *rng.pick(&ExtensionKind::ALL);
            let other = if kind == ExtensionKind::Sysext {
                ExtensionKind::Confext
            } else {
                ExtensionKind::Sysext
            };
            let (base_id, base_version, base_level) =
                (*rng.pick(&ids), *rng.pick(&versions), *rng.pick(&levels));
            let (ext_id, ext_version, ext_level) = (
                *rng.pick(&ext_ids),
                *rng.pick(&versions),
                *rng.pick(&levels),
            );
            let (architecture, scope) = (*rng.pick(&architectures), *rng.pick(&scopes));
            // Noise that must not matter: the other kind's keys, the base's scope and
            // architecture, unrelated keys.
            let noise = [
                (other.level_key(), *rng.pick(&levels)),
                (other.scope_key(), *rng.pick(&scopes)),
                ("NAME", Some("Some OS")),
            ];
            let base_noise = [
                (kind.scope_key(), *rng.pick(&scopes)),
                ("ARCHITECTURE", *rng.pick(&architectures)),
                (other.level_key(), *rng.pick(&levels)),
            ];
            let mut base_lines: Vec<String> = [
                ("ID", base_id),
                ("VERSION_ID", base_version),
                (kind.level_key(), base_level),
            ]
            .into_iter()
            .chain(base_noise)
            .filter_map(|(key, value)| value.map(|value| line(&mut rng, key, value)))
            .collect();
            let mut ext_lines: Vec<String> = [
                ("ID", ext_id),
                ("VERSION_ID", ext_version),
                (kind.level_key(), ext_level),
                ("ARCHITECTURE", architecture),
                (kind.scope_key(), scope),
            ]
            .into_iter()
            .chain(noise)
            .filter_map(|(key, value)| value.map(|value| line(&mut rng, key, value)))
            .collect();
            // Order must not matter either.
            for lines in [&mut base_lines, &mut ext_lines] {
                for index in (1..lines.len()).rev() {
                    lines.swap(index, rng.below(index + 1));
                }
            }
            let base = release(&base_lines.concat());
            let extension = release(&ext_lines.concat());

            let expected = decide(facts(
                scope,
                architecture,
                ext_id,
                base_id,
                base_version,
                base_level,
                ext_level,
                ext_version,
            ))
            .map(|field| match field {
                "SCOPE" => kind.scope_key(),
                "LEVEL" => kind.level_key(),
                field => field,
            });
            let got = check_extension(&base, &extension, kind);
            assert_eq!(
                got.as_ref().err().map(MatchError::field),
                expected,
                "{kind}\nbase:\n{base}extension:\n{extension}got {got:?}"
            );
            if let Err(error) = &got {
                let message = error.to_string();
                assert!(
                    message.contains(error.field()) && !message.contains('\n'),
                    "{message}"
                );
            }
            *outcomes.entry(expected.unwrap_or("match")).or_default() += 1;
        }
        // Every outcome is exercised.
        assert_eq!(outcomes.len(), 8, "{outcomes:?}");
        eprintln!("osrelease matching: {PAIRS} pairs, outcomes {outcomes:?}");
    }
}

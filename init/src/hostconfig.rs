//! Host configuration (`host-config.toml`), applied at boot as a generated /etc layer.
//!
//! Images are shared by many hosts, so what makes a host itself (its name, network, keys)
//! never goes into an image. The init parses this file ([`parse`]), renders what it asks
//! for as files ([`HostConfig::etc_layer`]), writes them to a fresh directory
//! ([`write_layer`]) and stacks that directory over /etc as the topmost layer. It is all or
//! nothing: one error and no part of the config is applied. Every error names a line and
//! column (1-based) and the offending value, on one line.
//!
//! # Schema, version 1
//!
//! ```toml
//! version = 1                      # required; this build reads version 1 only
//! hostname = "web-01"              # -> /etc/hostname
//! timezone = "Europe/Berlin"       # -> /etc/localtime (symlink), /etc/timezone
//! modules = ["br_netfilter"]       # -> /etc/modules-load.d/xorbang.conf
//!
//! [extensions]                     # images to merge unless the kernel command line
//! sysext = ["gui", "monitoring"]   # names some (xorbang.sysext=, xorbang.confext=)
//! confext = ["site"]
//!
//! [sysctl]                         # -> /etc/sysctl.d/90-xorbang.conf
//! "net.ipv4.ip_forward" = 1        # quote keys: unquoted dots make nested tables
//!
//! [[network]]                      # -> /etc/systemd/network/10-xorbang-<n>.network
//! mac = "52:54:00:12:34:56"        # match by `mac` or by `name`, never both
//! addresses = ["192.0.2.10/24", "2001:db8::10/64"]
//! gateways = ["192.0.2.1", "2001:db8::1"]
//! dns = ["192.0.2.53"]
//!
//! [[network]]
//! name = "en*"                     # interface name or networkd glob
//! dhcp = true
//!
//! [users.root]                     # -> /etc/ssh/authorized_keys/root + an sshd drop-in
//! ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... me@laptop"]
//!
//! [[files]]                        # -> the file itself
//! path = "/etc/motd"
//! mode = "0644"                    # octal string, default "0644"
//! content = "hello\n"
//! ```
//!
//! Everything but `version` is optional; unknown keys are errors. The rules:
//!
//! - `hostname`: as systemd's `hostname_is_valid`: at most 64 bytes of dot-separated labels,
//!   each 1–63 of `A-Z a-z 0-9 -`, not starting or ending with `-`; no trailing dot.
//! - `timezone`: a zoneinfo name: relative, `/`-separated components of `A-Z a-z 0-9 _ + -`,
//!   at most 255 bytes. The init refuses the config if the merged root lacks
//!   `/usr/share/zoneinfo/<timezone>` (the /etc/localtime link would point nowhere).
//! - `extensions.sysext`, `extensions.confext`: image names of `A-Z a-z 0-9 _ . -`, not
//!   starting with `.`, at most 128 bytes, each listed once.
//! - `[[network]]`: `name` (1–15 bytes, no `/`, `:`, whitespace or control characters; `*?[]`
//!   globs and networkd's leading `!` work as in `Name=`) or `mac` (six `:`-separated pairs
//!   of hex digits); `dhcp` (default false); `addresses` (CIDR, the prefix is required);
//!   `gateways` and `dns` (lists of plain IPv4 or IPv6 addresses; `gateways` is a list so a
//!   dual-stack host can name one of each). A section must set `dhcp = true` or give
//!   `addresses`, and no two sections may match the same name or MAC. Sections are numbered
//!   in file order and networkd uses the first file that matches an interface, so put
//!   specific matches before globs.
//! - `[users.<name>]`: `<name>` of `[A-Za-z_][A-Za-z0-9_-]*`, at most 32 bytes;
//!   `ssh_authorized_keys` is a non-empty list of one-line keys `<type> <base64> [comment]`
//!   with `<type>` one of `ssh-ed25519`, `ssh-rsa`, `ssh-dss`, `ecdsa-sha2-nistp256`,
//!   `ecdsa-sha2-nistp384`, `ecdsa-sha2-nistp521`, `sk-ssh-ed25519@openssh.com`,
//!   `sk-ecdsa-sha2-nistp256@openssh.com`, and the base64 data holding a key of that type.
//!   authorized_keys options (`from="…"`, `command="…"`) are deliberately not accepted. The
//!   keys go to `/etc/ssh/authorized_keys/<name>` and an sshd drop-in adds that file to
//!   `AuthorizedKeysFile` (the user's own ~/.ssh/authorized_keys keeps working).
//! - `modules`: kernel module names of `A-Z a-z 0-9 _ -`, at most 64 bytes, each listed once
//!   (`-` and `_` count as the same, as for the kernel).
//! - `sysctl`: keys of `A-Z a-z 0-9 _ . / -` (no leading, trailing or doubled `.` or `/`);
//!   values are integers or one-line, non-empty strings without leading or trailing
//!   whitespace. Lines are written sorted by key.
//! - `[[files]]`: `path` is absolute, under `/etc/` (not /etc itself), normalized (no `.`,
//!   `..` or empty components, no trailing `/`), without control characters, at most 4096
//!   bytes with components of at most 255; `mode` is a string of 1–4 octal digits (default
//!   `"0644"`); `content` a string. No two files may have the same path, a file may not sit
//!   inside another, and none may collide with what the other settings generate.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The only schema version this build reads.
pub const VERSION: i64 = 1;

/// First line of every generated file whose format has comments: says where it came from.
const HEADER: &str = "# generated by xorbang-init from host-config.toml\n";
const DEFAULT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const AUTHORIZED_KEYS_DIR: &str = "ssh/authorized_keys";
const SSHD_DROP_IN: &str = "ssh/sshd_config.d/50-xorbang.conf";
const MODULES_FILE: &str = "modules-load.d/xorbang.conf";
const SYSCTL_FILE: &str = "sysctl.d/90-xorbang.conf";
const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

// ---------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------

/// A parsed and validated host config. [`parse`] is the only way the init builds one; the
/// fields are public for reading (and tests), and hold only values that passed the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub timezone: Option<String>,
    /// `[extensions] sysext`: the system extensions to merge, in the order given.
    pub sysext: Vec<String>,
    /// `[extensions] confext`: the configuration extensions to merge, in the order given.
    pub confext: Vec<String>,
    pub networks: Vec<Network>,
    pub users: BTreeMap<String, User>,
    pub modules: Vec<String>,
    pub sysctl: BTreeMap<String, SysctlValue>,
    pub files: Vec<EtcFile>,
}

/// One `[[network]]` section: a systemd-networkd `.network` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub matching: InterfaceMatch,
    pub dhcp: bool,
    pub addresses: Vec<Cidr>,
    pub gateways: Vec<IpAddr>,
    pub dns: Vec<IpAddr>,
}

/// Which interface a `[[network]]` section configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceMatch {
    /// An interface name or a networkd `Name=` glob.
    Name(String),
    Mac([u8; 6]),
}

/// An address with its prefix length, as networkd's `Address=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub ssh_authorized_keys: Vec<String>,
}

/// A sysctl value: TOML integers and strings only (a boolean has no sysctl meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlValue {
    String(String),
    Integer(i64),
}

/// One `[[files]]` entry; `path` is absolute (`/etc/…`), as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFile {
    pub path: String,
    pub mode: u32,
    pub content: String,
}

/// One entry of the generated /etc layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcEntry {
    /// Relative to /etc, e.g. `hostname` or `systemd/network/10-xorbang-0.network`.
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { mode: u32, content: String },
    Symlink { target: String },
}

/// A refused host config: where (1-based line and column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct HostConfigError {
    pub line: usize,
    pub column: usize,
    /// One line: the boot log and the boot report show it as is.
    pub message: String,
}

/// Why the generated layer could not be written; names the path.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("host config layer entry {path:?} is not a plain relative path")]
    BadEntry { path: String },
    #[error("{}: {problem}", path.display())]
    Refused {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(text) => f.write_str(text),
            Self::Integer(number) => write!(f, "{number}"),
        }
    }
}

impl fmt::Display for InterfaceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "interface name {name:?}"),
            Self::Mac(mac) => write!(f, "MAC address {}", mac_text(mac)),
        }
    }
}

/// Lowercase, colon-separated: the form networkd and `ip link` print.
fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// Parses and validates `host-config.toml`: syntax, schema (unknown keys, types) and every
/// semantic rule of the module documentation.
pub fn parse(text: &str) -> Result<HostConfig, HostConfigError> {
    match toml::from_str::<RawConfig>(text) {
        Ok(raw) => {
            check_version(raw.version.as_ref()).map_err(|refusal| refusal.place(text))?;
            raw.validate().map_err(|refusal| refusal.place(text))
        }
        Err(error) => {
            // A newer or foreign file fails the schema; saying that its version is not one
            // this build reads is the more useful message than its first unknown key.
            if let Ok(probe) = toml::from_str::<VersionProbe>(text) {
                check_version(probe.version.as_ref()).map_err(|refusal| refusal.place(text))?;
            }
            Err(toml_error(text, &error))
        }
    }
}

/// 1-based line and column (in characters) of a byte offset; offsets past the end or inside
/// a character are clamped rather than trusted, since they come from another crate.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = 1 + before.iter().filter(|&&byte| byte == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&byte| byte & 0xC0 != 0x80)
        .count();
    (line, column)
}

/// Makes any message one line: the boot log writes one record per line, and a key name in
/// a toml message may hold a newline.
fn one_line(message: &str) -> String {
    message
        .split(['\n', '\r', '\u{2028}', '\u{2029}'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn toml_error(text: &str, error: &toml::de::Error) -> HostConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    locate(text, offset, error.message())
}

fn locate(text: &str, offset: usize, message: &str) -> HostConfigError {
    let (line, column) = line_col(text, offset);
    HostConfigError {
        line,
        column,
        message: one_line(message),
    }
}

/// A value as shown in a message: quoted and escaped, and cut short (an RSA key is ~700
/// bytes, and the message is one log line).
fn shown(value: &str) -> String {
    const LIMIT: usize = 60;
    match value.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A semantic error before it is placed in the text: a byte offset and the message, and
/// for conflicts the offset of the other value involved.
#[derive(Debug)]
struct Refusal {
    at: usize,
    message: String,
    other: Option<(&'static str, usize)>,
}

impl Refusal {
    fn new(at: usize, message: String) -> Self {
        Self {
            at,
            message,
            other: None,
        }
    }

    /// `label` introduces the other position: "first at" for duplicates.
    fn conflict(at: usize, message: String, label: &'static str, other: usize) -> Self {
        Self {
            at,
            message,
            other: Some((label, other)),
        }
    }

    fn place(self, text: &str) -> HostConfigError {
        let message = match self.other {
            Some((label, other)) => {
                let (line, column) = line_col(text, other);
                format!("{} ({label} line {line}, column {column})", self.message)
            }
            None => self.message,
        };
        locate(text, self.at, &message)
    }
}

/// Keeps the refusal that comes first in the text, so a config with several mistakes
/// reports them top to bottom whatever order the sections are checked in.
#[derive(Default)]
struct Earliest(Option<Refusal>);

impl Earliest {
    fn keep<T: Default>(&mut self, result: Result<T, Refusal>) -> T {
        match result {
            Ok(value) => value,
            Err(refusal) => {
                let earlier = match &self.0 {
                    Some(kept) => refusal.at < kept.at,
                    None => true,
                };
                if earlier {
                    self.0 = Some(refusal);
                }
                T::default()
            }
        }
    }

    fn finish(self) -> Result<(), Refusal> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Runs `check` on a spanned string; a refusal names what the value is, the value and why.
fn checked<T>(
    value: &Spanned<String>,
    what: &str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, Refusal> {
    check(value.get_ref()).map_err(|reason| {
        Refusal::new(
            value.span().start,
            format!("invalid {what} {}: {reason}", shown(value.get_ref())),
        )
    })
}

fn checked_list<T>(
    values: &[Spanned<String>],
    what: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Refusal> {
    values
        .iter()
        .map(|value| checked(value, what, &check))
        .collect()
}

/// Reads only `version` (other keys are ignored): used when the schema refuses a file.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<Spanned<Version>>,
}

/// `version` with a message that says what this build reads when the type is wrong.
struct Version(i64);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "the integer {VERSION} (the host-config version this build reads)"
                )
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Version, E> {
                Ok(Version(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Version, E> {
                i64::try_from(value)
                    .map(Version)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }
        }
        deserializer.deserialize_any(VersionVisitor)
    }
}

fn check_version(version: Option<&Spanned<Version>>) -> Result<(), Refusal> {
    match version {
        None => Err(Refusal::new(
            0,
            format!(
                "`version = {VERSION}` is missing; this build reads host-config version {VERSION}"
            ),
        )),
        Some(version) if version.get_ref().0 != VERSION => Err(Refusal::new(
            version.span().start,
            format!(
                "unsupported version {}: this build reads host-config version {VERSION} only",
                version.get_ref().0
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<Spanned<Version>>,
    hostname: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    extensions: Option<RawExtensions>,
    #[serde(default)]
    network: Vec<Spanned<RawNetwork>>,
    // Table values are not `Spanned`: a table made by dotted keys (`users.root.x = …`) has
    // no span, and toml cannot deserialize it as `Spanned`. Errors use the key's span.
    #[serde(default)]
    users: BTreeMap<Spanned<String>, RawUser>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
    /// Values are checked while deserializing, so their errors carry the value's span.
    #[serde(default)]
    sysctl: BTreeMap<Spanned<String>, SysctlValue>,
    #[serde(default)]
    files: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtensions {
    #[serde(default)]
    sysext: Vec<Spanned<String>>,
    #[serde(default)]
    confext: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    #[serde(default)]
    dhcp: bool,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    #[serde(default)]
    gateways: Vec<Spanned<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    ssh_authorized_keys: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    mode: Option<Spanned<ModeText>>,
    content: String,
}

/// `mode` must be a string: a TOML integer `644` would be decimal, a silent wrong mode.
struct ModeText(String);

impl<'de> Deserialize<'de> for ModeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = ModeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string of octal digits such as \"0644\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ModeText, E> {
                Ok(ModeText(value.to_owned()))
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SysctlVisitor;
        impl<'de> Visitor<'de> for SysctlVisitor {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Integer(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<SysctlValue, E> {
                i64::try_from(value)
                    .map(SysctlValue::Integer)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<SysctlValue, E> {
                check_sysctl_text(value).map_err(|reason| {
                    E::custom(format!("invalid sysctl value {}: {reason}", shown(value)))
                })?;
                Ok(SysctlValue::String(value.to_owned()))
            }
            // The common mistake: unquoted, `net.ipv4.ip_forward = 1` is a nested table.
            // (toml hands dates over as maps too, hence "or date".)
            fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<SysctlValue, A::Error> {
                Err(de::Error::custom(
                    "expected a string or an integer, not a table or date; quote sysctl keys \
                     that contain dots, e.g. \"net.ipv4.ip_forward\" = 1",
                ))
            }
        }
        deserializer.deserialize_any(SysctlVisitor)
    }
}

impl RawConfig {
    fn validate(self) -> Result<HostConfig, Refusal> {
        let mut earliest = Earliest::default();
        let (sysext, confext) = match &self.extensions {
            Some(extensions) => (
                earliest.keep(extension_list(&extensions.sysext, "sysext")),
                earliest.keep(extension_list(&extensions.confext, "confext")),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let (files, file_spans) = earliest.keep(files(&self.files));
        let config = HostConfig {
            hostname: earliest.keep(optional(&self.hostname, "hostname", check_hostname)),
            timezone: earliest.keep(optional(&self.timezone, "timezone", check_timezone)),
            sysext,
            confext,
            networks: earliest.keep(networks(&self.network)),
            users: earliest.keep(users(&self.users)),
            modules: earliest.keep(modules(&self.modules)),
            sysctl: earliest.keep(sysctl(&self.sysctl)),
            files,
        };
        earliest.finish()?;
        check_collisions(&config, &file_spans)?;
        Ok(config)
    }
}

fn optional(
    value: &Option<Spanned<String>>,
    what: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Option<String>, Refusal> {
    value
        .as_ref()
        .map(|value| checked(value, what, check).map(|()| value.get_ref().clone()))
        .transpose()
}

/// The offset of an earlier equal item, if any: duplicates are refused at the second one.
fn earlier<T: PartialEq>(seen: &[(T, usize)], item: &T) -> Option<usize> {
    seen.iter()
        .find(|(other, _)| other == item)
        .map(|(_, offset)| *offset)
}

// ---------------------------------------------------------------------------------------
// Value rules: each returns why a value is refused, the caller says where
// ---------------------------------------------------------------------------------------

fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a hostname must not be empty".into());
    }
    if name.len() > 64 {
        return Err(format!("{} bytes, at most 64 are allowed", name.len()));
    }
    if name.ends_with('.') {
        return Err("a hostname must not end with '.'".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (a leading or doubled '.')".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only A-Z, a-z, 0-9 and '-' are allowed in a label".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
    }
    Ok(())
}

fn check_timezone(zone: &str) -> Result<(), String> {
    if zone.is_empty() {
        return Err("a timezone must not be empty".into());
    }
    if zone.len() > 255 {
        return Err(format!("{} bytes, at most 255 are allowed", zone.len()));
    }
    if zone.starts_with('/') {
        return Err("a timezone is relative to /usr/share/zoneinfo, like \"Europe/Berlin\"".into());
    }
    for component in zone.split('/') {
        if component.is_empty() {
            return Err("empty path component (a doubled or trailing '/')".into());
        }
        if component == "." || component == ".." {
            return Err(format!("{component:?} components are not allowed"));
        }
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-');
        if !component.bytes().all(plain) {
            return Err("only A-Z, a-z, 0-9, '_', '+', '-' and '/' are allowed".into());
        }
    }
    Ok(())
}

/// The same rule the pin manifest and the command line apply, so any name given here can
/// also be pinned.
fn check_extension_name(name: &str) -> Result<(), String> {
    if crate::pins::valid_name(name) {
        Ok(())
    } else {
        Err(
            "a name has 1 to 128 bytes of A-Z, a-z, 0-9, '_', '.' and '-', not starting with '.'"
                .into(),
        )
    }
}

fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 bytes".into());
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("'/', ':', whitespace and control characters are not allowed".into());
    }
    Ok(())
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let wrong =
        || "expected six ':'-separated pairs of hex digits, like \"52:54:00:12:34:56\"".to_owned();
    let mut mac = [0u8; 6];
    let mut groups = text.split(':');
    for byte in &mut mac {
        let group = groups.next().ok_or_else(wrong)?;
        if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        *byte = u8::from_str_radix(group, 16).map_err(|_| wrong())?;
    }
    if groups.next().is_some() {
        return Err(wrong());
    }
    Ok(mac)
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| "not an IPv4 or IPv6 address".to_owned())
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or("the prefix length is missing, as in \"192.0.2.10/24\"")?;
    let address = parse_ip(address)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix.parse::<u8>() {
        Ok(len) if prefix.bytes().all(|b| b.is_ascii_digit()) && len <= max => len,
        _ => {
            return Err(format!(
                "the prefix length must be a number from 0 to {max} for {}",
                if address.is_ipv4() { "IPv4" } else { "IPv6" }
            ))
        }
    };
    Ok(Cidr {
        address,
        prefix_len,
    })
}

fn check_user_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("a user name is [A-Za-z_][A-Za-z0-9_-]*".into());
    }
    if name.len() > 32 {
        return Err("a user name has at most 32 bytes".into());
    }
    Ok(())
}

/// Strict on purpose: a key sshd would skip makes a host unreachable without a word, so
/// the type must be known and the base64 data must actually hold a key of that type.
fn check_ssh_key(key: &str) -> Result<(), String> {
    if key.contains(['\n', '\r']) {
        return Err("a key must be one line; give each key as its own list entry".into());
    }
    let mut words = key.split(' ');
    let kind = words.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "expected \"<type> <base64 data> [comment]\" with type one of {} \
             (authorized_keys options are not supported)",
            KEY_TYPES.join(", ")
        ));
    }
    let data = words.next().unwrap_or_default();
    let blob = decode_base64(data).ok_or("the key data after the type is not base64")?;
    if !blob_has_type(&blob, kind) {
        return Err(format!("the key data is not a {kind} key"));
    }
    Ok(())
}

/// The key blob starts with its type as an SSH string: a 32-bit big-endian length, then
/// the name.
fn blob_has_type(blob: &[u8], kind: &str) -> bool {
    let Some((length, rest)) = blob.split_first_chunk::<4>() else {
        return false;
    };
    u32::from_be_bytes(*length) as usize == kind.len() && rest.starts_with(kind.as_bytes())
}

/// Standard padded base64 (RFC 4648, as ssh-keygen writes it); `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 4 != 0 {
        return None;
    }
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits = 0u32;
    let mut count = 0;
    for byte in body.bytes() {
        bits = (bits << 6) | u32::from(base64_value(byte)?);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    // Leftover bits must be zero padding, as every encoder writes them.
    (bits == 0).then_some(out)
}

fn base64_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn check_module(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a module name has 1 to 64 bytes".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("only A-Z, a-z, 0-9, '_' and '-' are allowed".into());
    }
    Ok(())
}

fn check_sysctl_key(key: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-');
    if key.is_empty() || !key.bytes().all(allowed) {
        return Err("a sysctl key is made of A-Z, a-z, 0-9, '_', '.', '/' and '-'".into());
    }
    let separator = |c: char| c == '.' || c == '/';
    if key.split(separator).any(str::is_empty) {
        return Err("'.' and '/' separate names: none leading, trailing or doubled".into());
    }
    Ok(())
}

fn check_sysctl_text(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("the value is empty".into());
    }
    if value.contains(['\n', '\r']) {
        return Err("the value must be one line".into());
    }
    if value.trim() != value {
        return Err("leading or trailing whitespace (systemd-sysctl would drop it)".into());
    }
    Ok(())
}

fn check_file_path(path: &str) -> Result<(), String> {
    if path == "/etc" || path == "/etc/" {
        return Err("a file cannot replace /etc itself".into());
    }
    let Some(relative) = path.strip_prefix("/etc/") else {
        return Err("files must be under /etc/ (the layer covers /etc only)".into());
    };
    if path.len() > 4096 {
        return Err(format!("{} bytes, at most 4096 are allowed", path.len()));
    }
    if path.chars().any(char::is_control) {
        return Err("control characters are not allowed in a path".into());
    }
    for component in relative.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(
                "the path must be normalized: no '.', '..' or empty components, \
                        no trailing '/'"
                    .into(),
            );
        }
        if component.len() > 255 {
            return Err("a path component has at most 255 bytes".into());
        }
    }
    Ok(())
}

fn parse_mode(text: &str) -> Result<u32, String> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("a mode is 1 to 4 octal digits, like \"0644\"".into());
    }
    u32::from_str_radix(text, 8).map_err(|error| error.to_string())
}

// ---------------------------------------------------------------------------------------
// Section rules
// ---------------------------------------------------------------------------------------

fn extension_list(names: &[Spanned<String>], kind: &str) -> Result<Vec<String>, Refusal> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for name in names {
        checked(name, &format!("{kind} name"), check_extension_name)?;
        let at = name.span().start;
        if let Some(first) = earlier(&seen, &name.get_ref().as_str()) {
            let message = format!("{kind} {} is listed twice", shown(name.get_ref()));
            return Err(Refusal::conflict(at, message, "first at", first));
        }
        seen.push((name.get_ref(), at));
    }
    Ok(seen.into_iter().map(|(name, _)| name.to_owned()).collect())
}

fn networks(sections: &[Spanned<RawNetwork>]) -> Result<Vec<Network>, Refusal> {
    let mut seen: Vec<(InterfaceMatch, usize)> = Vec::new();
    let mut networks = Vec::new();
    for section in sections {
        let (network, at) = network(section)?;
        if let Some(first) = earlier(&seen, &network.matching) {
            let message = format!(
                "{} is matched by two [[network]] sections",
                network.matching
            );
            return Err(Refusal::conflict(at, message, "first at", first));
        }
        seen.push((network.matching.clone(), at));
        networks.push(network);
    }
    Ok(networks)
}

/// One section, and where its match is written (for the duplicate check).
fn network(section: &Spanned<RawNetwork>) -> Result<(Network, usize), Refusal> {
    let raw = section.get_ref();
    let (matching, at) = match (&raw.name, &raw.mac) {
        (Some(name), None) => (
            InterfaceMatch::Name(checked(name, "interface name", |text| {
                check_interface_name(text).map(|()| text.to_owned())
            })?),
            name.span().start,
        ),
        (None, Some(mac)) => (
            InterfaceMatch::Mac(checked(mac, "MAC address", parse_mac)?),
            mac.span().start,
        ),
        (Some(name), Some(mac)) => {
            return Err(Refusal::new(
                name.span().start.max(mac.span().start),
                format!(
                    "a [[network]] section matches by `name` or by `mac`, not both \
                 (name {}, mac {})",
                    shown(name.get_ref()),
                    shown(mac.get_ref())
                ),
            ))
        }
        (None, None) => {
            return Err(Refusal::new(
                section.span().start,
                "a [[network]] section needs `name` or `mac` to say which interface it is for"
                    .into(),
            ))
        }
    };
    let network = Network {
        dhcp: raw.dhcp,
        addresses: checked_list(&raw.addresses, "address", parse_cidr)?,
        gateways: checked_list(&raw.gateways, "gateway", parse_ip)?,
        dns: checked_list(&raw.dns, "DNS server", parse_ip)?,
        matching,
    };
    if !network.dhcp && network.addresses.is_empty() {
        return Err(Refusal::new(
            section.span().start,
            format!(
                "the [[network]] section for {} has neither `dhcp = true` nor `addresses`, \
                 so it would do nothing",
                network.matching
            ),
        ));
    }
    Ok((network, at))
}

/// Map entries in the order they are written, so the first mistake is reported first.
fn in_text_order<V>(map: &BTreeMap<Spanned<String>, V>) -> Vec<(&Spanned<String>, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn users(raw: &BTreeMap<Spanned<String>, RawUser>) -> Result<BTreeMap<String, User>, Refusal> {
    let mut users = BTreeMap::new();
    for (name, user) in in_text_order(raw) {
        checked(name, "user name", check_user_name)?;
        let keys = match &user.ssh_authorized_keys {
            Some(keys) if !keys.is_empty() => keys,
            _ => {
                return Err(Refusal::new(
                    name.span().start,
                    format!(
                        "user {} has no ssh_authorized_keys, so the section would do nothing",
                        shown(name.get_ref())
                    ),
                ))
            }
        };
        let keys = checked_list(keys, "SSH key", |key| {
            check_ssh_key(key).map(|()| key.to_owned())
        })?;
        users.insert(
            name.get_ref().clone(),
            User {
                ssh_authorized_keys: keys,
            },
        );
    }
    Ok(users)
}

fn modules(names: &[Spanned<String>]) -> Result<Vec<String>, Refusal> {
    // The kernel treats '-' and '_' in module names alike: compare in its form.
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut modules = Vec::new();
    for name in names {
        checked(name, "module name", check_module)?;
        let canonical = name.get_ref().replace('-', "_");
        if let Some(first) = earlier(&seen, &canonical) {
            let message = format!(
                "module {} is listed twice ('-' and '_' are the same in module names)",
                shown(name.get_ref())
            );
            return Err(Refusal::conflict(
                name.span().start,
                message,
                "first at",
                first,
            ));
        }
        seen.push((canonical, name.span().start));
        modules.push(name.get_ref().clone());
    }
    Ok(modules)
}

fn sysctl(
    raw: &BTreeMap<Spanned<String>, SysctlValue>,
) -> Result<BTreeMap<String, SysctlValue>, Refusal> {
    let mut settings = BTreeMap::new();
    for (key, value) in in_text_order(raw) {
        checked(key, "sysctl key", check_sysctl_key)?;
        settings.insert(key.get_ref().clone(), value.clone());
    }
    Ok(settings)
}

/// The files, and where each path is written (for the collision check that follows).
fn files(raw: &[RawFile]) -> Result<(Vec<EtcFile>, Vec<usize>), Refusal> {
    let mut files: Vec<EtcFile> = Vec::new();
    let mut spans = Vec::new();
    for raw in raw {
        checked(&raw.path, "file path", check_file_path)?;
        let path = raw.path.get_ref();
        let at = raw.path.span().start;
        for (other, other_at) in files.iter().zip(&spans) {
            if let Some(overlap) = Overlap::of(path, &other.path) {
                let (message, label) = match overlap {
                    Overlap::Same => (format!("file {} is given twice", shown(path)), "first at"),
                    Overlap::Inside => (
                        format!(
                            "file {} would be inside the file {}",
                            shown(path),
                            other.path
                        ),
                        "that one at",
                    ),
                    Overlap::Contains => (
                        format!(
                            "file {} would have to be a directory for the file {}",
                            shown(path),
                            other.path
                        ),
                        "that one at",
                    ),
                };
                return Err(Refusal::conflict(at, message, label, *other_at));
            }
        }
        let mode = match &raw.mode {
            None => DEFAULT_MODE,
            Some(mode) => parse_mode(&mode.get_ref().0).map_err(|reason| {
                Refusal::new(
                    mode.span().start,
                    format!(
                        "invalid mode {} for {path}: {reason}",
                        shown(&mode.get_ref().0)
                    ),
                )
            })?,
        };
        files.push(EtcFile {
            path: path.clone(),
            mode,
            content: raw.content.clone(),
        });
        spans.push(at);
    }
    Ok((files, spans))
}

/// How two layer paths conflict: the same path, or one inside the other (which would need
/// the outer one to be a directory).
enum Overlap {
    Same,
    Inside,
    Contains,
}

impl Overlap {
    fn of(path: &str, other: &str) -> Option<Self> {
        let inside = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        if path == other {
            Some(Self::Same)
        } else if inside(path, other) {
            Some(Self::Inside)
        } else if inside(other, path) {
            Some(Self::Contains)
        } else {
            None
        }
    }
}

/// A `[[files]]` entry must not replace or shadow what another setting generates: the
/// result would depend on which one the writer happened to write first.
fn check_collisions(config: &HostConfig, file_spans: &[usize]) -> Result<(), Refusal> {
    let generated = config.generated();
    for (file, at) in config.files.iter().zip(file_spans) {
        for (entry, source) in &generated {
            let other = format!("/etc/{}", entry.path);
            let problem = match Overlap::of(&file.path, &other) {
                None => continue,
                Some(Overlap::Same) => "collides with",
                Some(Overlap::Inside) => "would be inside",
                Some(Overlap::Contains) => "would have to be a directory for",
            };
            return Err(Refusal::new(
                *at,
                format!(
                    "file {} {problem} {other}, which `{source}` generates",
                    shown(&file.path)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

impl HostConfig {
    /// Everything the layer holds, sorted by path (so the same config always gives the
    /// same layer and the same boot report).
    pub fn etc_layer(&self) -> Vec<EtcEntry> {
        let mut entries: Vec<EtcEntry> = self
            .generated()
            .into_iter()
            .map(|(entry, _)| entry)
            .collect();
        entries.extend(self.files.iter().map(|file| {
            EtcEntry {
                path: file
                    .path
                    .strip_prefix("/etc/")
                    .unwrap_or(&file.path)
                    .to_owned(),
                kind: EntryKind::File {
                    mode: file.mode,
                    content: file.content.clone(),
                },
            }
        }));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries
    }

    /// The entries the settings generate (all but `[[files]]`), each with its setting.
    fn generated(&self) -> Vec<(EtcEntry, &'static str)> {
        let mut entries = Vec::new();
        if let Some(name) = &self.hostname {
            entries.push((file("hostname", format!("{name}\n")), "hostname"));
        }
        if let Some(zone) = &self.timezone {
            let target = format!("../usr/share/zoneinfo/{zone}");
            let link = EtcEntry {
                path: "localtime".into(),
                kind: EntryKind::Symlink { target },
            };
            entries.push((link, "timezone"));
            entries.push((file("timezone", format!("{zone}\n")), "timezone"));
        }
        entries.extend(
            self.network_files()
                .into_iter()
                .map(|entry| (entry, "network")),
        );
        entries.extend(self.user_files().into_iter().map(|entry| (entry, "users")));
        if !self.modules.is_empty() {
            let lines: String = self
                .modules
                .iter()
                .map(|name| format!("{name}\n"))
                .collect();
            entries.push((file(MODULES_FILE, format!("{HEADER}{lines}")), "modules"));
        }
        if !self.sysctl.is_empty() {
            let lines: String = self
                .sysctl
                .iter()
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect();
            entries.push((file(SYSCTL_FILE, format!("{HEADER}{lines}")), "sysctl"));
        }
        entries
    }

    /// `10-xorbang-<n>.network`, numbered in file order. networkd reads .network files in
    /// lexical order, so past ten sections the numbers are zero-padded to keep that order.
    fn network_files(&self) -> Vec<EtcEntry> {
        let width = self.networks.len().saturating_sub(1).to_string().len();
        self.networks
            .iter()
            .enumerate()
            .map(|(index, network)| {
                file(
                    &format!("systemd/network/10-xorbang-{index:0width$}.network"),
                    network_text(network),
                )
            })
            .collect()
    }

    /// Keys live under /etc because /etc is all the layer can provide; the drop-in makes
    /// sshd read them there as well as from the user's home.
    fn user_files(&self) -> Vec<EtcEntry> {
        let mut entries: Vec<EtcEntry> = self
            .users
            .iter()
            .map(|(name, user)| {
                let keys: String = user
                    .ssh_authorized_keys
                    .iter()
                    .map(|key| format!("{key}\n"))
                    .collect();
                file(&format!("{AUTHORIZED_KEYS_DIR}/{name}"), keys)
            })
            .collect();
        if !self.users.is_empty() {
            let text = format!(
                "{HEADER}AuthorizedKeysFile .ssh/authorized_keys /etc/{AUTHORIZED_KEYS_DIR}/%u\n"
            );
            entries.push(file(SSHD_DROP_IN, text));
        }
        entries
    }
}

fn file(path: &str, content: String) -> EtcEntry {
    EtcEntry {
        path: path.to_owned(),
        kind: EntryKind::File {
            mode: DEFAULT_MODE,
            content,
        },
    }
}

fn network_text(network: &Network) -> String {
    let matching = match &network.matching {
        InterfaceMatch::Name(name) => format!("Name={name}"),
        InterfaceMatch::Mac(mac) => format!("MACAddress={}", mac_text(mac)),
    };
    let mut text = format!("{HEADER}[Match]\n{matching}\n\n[Network]\n");
    if network.dhcp {
        text.push_str("DHCP=yes\n");
    }
    let lines = network
        .addresses
        .iter()
        .map(|address| format!("Address={address}\n"))
        .chain(
            network
                .gateways
                .iter()
                .map(|gateway| format!("Gateway={gateway}\n")),
        )
        .chain(network.dns.iter().map(|server| format!("DNS={server}\n")));
    text.extend(lines);
    text
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Writes the layer under `etc_dir`, which must not exist yet or be an empty directory:
/// nothing existing is followed or overwritten (files are created with `create_new`,
/// symlinks fail on existing paths). Directories get 0755 and files their exact mode, set
/// explicitly so the umask does not matter.
pub fn write_layer(entries: &[EtcEntry], etc_dir: &Path) -> Result<(), LayerError> {
    prepare_root(etc_dir)?;
    for entry in entries {
        let relative = entry_path(&entry.path)?;
        if let Some(parent) = relative.parent() {
            make_dirs(etc_dir, parent)?;
        }
        let path = etc_dir.join(relative);
        match &entry.kind {
            EntryKind::File { mode, content } => write_file(&path, *mode, content)?,
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &path)
                .map_err(|source| io_error("create the symlink", &path, source))?,
        }
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> LayerError {
    LayerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `EtcEntry` is public, so its path is checked rather than trusted: plain components only.
fn entry_path(path: &str) -> Result<&Path, LayerError> {
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if plain {
        Ok(Path::new(path))
    } else {
        Err(LayerError::BadEntry {
            path: path.to_owned(),
        })
    }
}

fn prepare_root(etc_dir: &Path) -> Result<(), LayerError> {
    std::fs::create_dir_all(etc_dir)
        .map_err(|source| io_error("create the directory", etc_dir, source))?;
    let metadata = std::fs::symlink_metadata(etc_dir)
        .map_err(|source| io_error("inspect", etc_dir, source))?;
    if !metadata.is_dir() {
        return Err(LayerError::Refused {
            path: etc_dir.to_owned(),
            problem: "is not a directory",
        });
    }
    let mut listing =
        std::fs::read_dir(etc_dir).map_err(|source| io_error("list", etc_dir, source))?;
    if listing.next().is_some() {
        return Err(LayerError::Refused {
            path: etc_dir.to_owned(),
            problem: "is not empty; the host config layer is written only into a fresh directory",
        });
    }
    set_mode(etc_dir, DIR_MODE)
}

/// Creates each missing directory of `relative` under `etc_dir`. One that exists already
/// (made for an earlier entry) must be a real directory, never a symlink to follow.
fn make_dirs(etc_dir: &Path, relative: &Path) -> Result<(), LayerError> {
    let mut path = etc_dir.to_owned();
    for component in relative.components() {
        path.push(component);
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
            Ok(()) => set_mode(&path, DIR_MODE)?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let metadata = std::fs::symlink_metadata(&path)
                    .map_err(|source| io_error("inspect", &path, source))?;
                if !metadata.is_dir() {
                    return Err(LayerError::Refused {
                        path,
                        problem: "exists and is not a directory",
                    });
                }
            }
            Err(source) => return Err(io_error("create the directory", &path, source)),
        }
    }
    Ok(())
}

fn write_file(path: &Path, mode: u32, content: &str) -> Result<(), LayerError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error("create", path, source))?;
    file.write_all(content.as_bytes())
        .map_err(|source| io_error("write", path, source))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("set the mode of", path, source))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LayerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("set the mode of", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const KEY1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcUIS47SFVib3yJlqOwvcrX5PH+CxglMj9MWWZzgI2a";
    const KEY2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA4bKDVCT1xpdoOQnaq3xNHe6/gFEh8sOUZTYG16h5Sh";

    fn example() -> String {
        format!(
            r#"# host-config for web-01
version = 1
hostname = "web-01"
timezone = "Europe/Berlin"
modules = ["br_netfilter", "wireguard"]

[extensions]
sysext = ["gui", "monitoring"]
confext = ["site"]

[sysctl]
"net.ipv4.ip_forward" = 1
"kernel.printk" = "4 4 1 7"

[[network]]
name = "eth0"
dhcp = true

[[network]]
mac = "52:54:00:AB:cd:56"
addresses = ["192.0.2.10/24", "2001:db8::10/64"]
gateways = ["192.0.2.1", "2001:db8::1"]
dns = ["192.0.2.53"]

[users.root]
ssh_authorized_keys = ["{KEY1} me@laptop", "{KEY2}"]

[[files]]
path = "/etc/motd"
mode = "0644"
content = "hello\n"

[[files]]
path = "/etc/xorbang/site.conf"
mode = "0600"
content = "a = 1\n"
"#
        )
    }

    fn text_file(path: &str, mode: u32, content: &str) -> EtcEntry {
        EtcEntry {
            path: path.to_owned(),
            kind: EntryKind::File {
                mode,
                content: content.to_owned(),
            },
        }
    }

    #[test]
    fn the_example_parses_to_typed_values() {
        let config = parse(&example()).expect("the example is valid");
        assert_eq!(config.hostname.as_deref(), Some("web-01"));
        assert_eq!(config.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(config.sysext, ["gui", "monitoring"]);
        assert_eq!(config.confext, ["site"]);
        assert_eq!(config.modules, ["br_netfilter", "wireguard"]);
        assert_eq!(
            config.sysctl["net.ipv4.ip_forward"],
            SysctlValue::Integer(1)
        );
        assert_eq!(
            config.networks[1],
            Network {
                matching: InterfaceMatch::Mac([0x52, 0x54, 0, 0xab, 0xcd, 0x56]),
                dhcp: false,
                addresses: vec![
                    Cidr {
                        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                        prefix_len: 24
                    },
                    Cidr {
                        address: "2001:db8::10".parse().expect("ip"),
                        prefix_len: 64
                    },
                ],
                gateways: vec![
                    "192.0.2.1".parse().expect("ip"),
                    "2001:db8::1".parse().expect("ip")
                ],
                dns: vec!["192.0.2.53".parse().expect("ip")],
            }
        );
        assert_eq!(
            config.users["root"].ssh_authorized_keys,
            [format!("{KEY1} me@laptop"), KEY2.to_owned()]
        );
        assert_eq!(config.files[1].mode, 0o600);
    }

    #[test]
    fn the_example_renders_exactly_these_entries() {
        let config = parse(&example()).expect("the example is valid");
        let expected = vec![
            text_file("hostname", 0o644, "web-01\n"),
            EtcEntry {
                path: "localtime".into(),
                kind: EntryKind::Symlink {
                    target: "../usr/share/zoneinfo/Europe/Berlin".into(),
                },
            },
            text_file(
                "modules-load.d/xorbang.conf",
                0o644,
                "# generated by xorbang-init from host-config.toml\nbr_netfilter\nwireguard\n",
            ),
            text_file("motd", 0o644, "hello\n"),
            text_file(
                "ssh/authorized_keys/root",
                0o644,
                &format!("{KEY1} me@laptop\n{KEY2}\n"),
            ),
            text_file(
                "ssh/sshd_config.d/50-xorbang.conf",
                0o644,
                "# generated by xorbang-init from host-config.toml\n\
                 AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n",
            ),
            text_file(
                "sysctl.d/90-xorbang.conf",
                0o644,
                "# generated by xorbang-init from host-config.toml\n\
                 kernel.printk = 4 4 1 7\n\
                 net.ipv4.ip_forward = 1\n",
            ),
            text_file(
                "systemd/network/10-xorbang-0.network",
                0o644,
                "# generated by xorbang-init from host-config.toml\n\
                 [Match]\n\
                 Name=eth0\n\
                 \n\
                 [Network]\n\
                 DHCP=yes\n",
            ),
            text_file(
                "systemd/network/10-xorbang-1.network",
                0o644,
                "# generated by xorbang-init from host-config.toml\n\
                 [Match]\n\
                 MACAddress=52:54:00:ab:cd:56\n\
                 \n\
                 [Network]\n\
                 Address=192.0.2.10/24\n\
                 Address=2001:db8::10/64\n\
                 Gateway=192.0.2.1\n\
                 Gateway=2001:db8::1\n\
                 DNS=192.0.2.53\n",
            ),
            text_file("timezone", 0o644, "Europe/Berlin\n"),
            text_file("xorbang/site.conf", 0o600, "a = 1\n"),
        ];
        assert_eq!(config.etc_layer(), expected);
    }

    #[test]
    fn a_minimal_config_is_empty() {
        let config = parse("version = 1\n").expect("valid");
        assert_eq!(config, HostConfig::default());
        assert!(config.etc_layer().is_empty());
    }

    #[test]
    fn the_test_runner_configs_parse() {
        // The config the VM scenarios send (qemu-tests/src/layer_scenarios.rs).
        let text =
            "# written by the xorbang test runner\nversion = 1\nhostname = \"xorbang-fwcfg\"\n\n\
                    [[network]]\nname = \"en*\"\ndhcp = true\n";
        let config = parse(text).expect("valid");
        let paths: Vec<String> = config.etc_layer().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["hostname", "systemd/network/10-xorbang-0.network"]);
    }

    #[test]
    fn past_ten_networks_the_numbers_are_padded_to_keep_file_order() {
        let mut text = String::from("version = 1\n");
        for index in 0..11 {
            write!(text, "[[network]]\nname = \"eth{index}\"\ndhcp = true\n").expect("write");
        }
        let config = parse(&text).expect("valid");
        let layer = config.etc_layer();
        assert_eq!(layer[0].path, "systemd/network/10-xorbang-00.network");
        assert_eq!(layer[10].path, "systemd/network/10-xorbang-10.network");
        let EntryKind::File { content, .. } = &layer[2].kind else {
            panic!("a file")
        };
        assert!(content.contains("Name=eth2\n"), "{content}");
    }

    // ---- refusals --------------------------------------------------------------------

    /// Refuses `text` and checks what every refusal must be: one line, prefixed with its
    /// position.
    fn refused(text: &str) -> HostConfigError {
        let error = parse(text).expect_err("must be refused");
        let shown = error.to_string();
        assert!(!shown.contains(['\n', '\r']), "not one line: {shown:?}");
        let prefix = format!("line {}, column {}: ", error.line, error.column);
        assert!(shown.starts_with(&prefix), "{shown}");
        error
    }

    #[track_caller]
    fn assert_refused(text: &str, line: usize, column: usize, needles: &[&str]) {
        let error = refused(text);
        assert_eq!((error.line, error.column), (line, column), "{error}");
        for needle in needles {
            assert!(
                error.message.contains(needle),
                "{error:?} does not say {needle:?}"
            );
        }
    }

    #[test]
    fn malformed_toml_gives_its_position() {
        assert_refused("version = 1\nhostname = \"x", 2, 14, &["string"]);
        assert_refused(
            "version = 1\nhostname = \"unterminated\n",
            2,
            25,
            &["string"],
        );
        assert_refused("version = 1\n[network\n", 2, 9, &[]);
        assert_refused(
            "version = 1\nversion = 1\n",
            2,
            1,
            &["duplicate key `version`"],
        );
    }

    #[test]
    fn unknown_keys_give_the_position_of_the_key() {
        assert_refused(
            "version = 1\ncolour = \"blue\"\n",
            2,
            1,
            &["unknown field `colour`"],
        );
        assert_refused(
            "version = 1\n[[network]]\nname = \"eth0\"\ndhcp = true\nmtu = 1400\n",
            5,
            1,
            &["unknown field `mtu`", "`gateways`"],
        );
        assert_refused(
            &format!(
                "version = 1\n[users.root]\nssh_authorized_keys = [\"{KEY1}\"]\n  \
                 shell = \"/bin/sh\"\n"
            ),
            4,
            3,
            &["unknown field `shell`"],
        );
        assert_refused(
            "version = 1\n[extensions]\nsysexts = []\n",
            3,
            1,
            &["`sysexts`"],
        );
        // The one key the old schema draft had: the list is called `gateways`.
        assert_refused(
            "version = 1\n[[network]]\nname = \"eth0\"\ndhcp = true\ngateway = \"192.0.2.1\"\n",
            5,
            1,
            &["unknown field `gateway`"],
        );
    }

    #[test]
    fn a_key_with_a_newline_still_gives_one_line() {
        let error = refused("version = 1\n\"col\\nour\" = 1\n");
        assert_eq!((error.line, error.column), (2, 1));
        assert!(error.message.contains("col"), "{error}");
    }

    #[test]
    fn wrong_types_give_the_position_of_the_value() {
        assert_refused(
            "version = 1\nhostname = 7\n",
            2,
            12,
            &["invalid type: integer `7`"],
        );
        assert_refused(
            "version = 1\n[[network]]\nname = \"e\"\ndhcp = \"yes\"\n",
            4,
            8,
            &["bool"],
        );
        assert_refused("version = 1\nmodules = \"loop\"\n", 2, 11, &["sequence"]);
    }

    #[test]
    fn the_version_must_be_one() {
        assert_refused(
            "version = 2\nhostname = \"x\"\nfuture = true\n",
            1,
            11,
            &["unsupported version 2", "version 1"],
        );
        assert_refused("hostname = \"x\"\n", 1, 1, &["`version = 1` is missing"]);
        assert_refused(
            "\n\nversion = \"1\"\n",
            3,
            11,
            &["string \"1\"", "the integer 1"],
        );
    }

    #[test]
    fn invalid_hostnames_give_the_position_of_the_value() {
        // The case the VM scenario checks: a comment line first, as the runner writes.
        assert_refused(
            "# x\nversion = 1\nhostname = \"bad_host!\"\n",
            3,
            12,
            &[
                "invalid hostname \"bad_host!\"",
                "only A-Z, a-z, 0-9 and '-'",
            ],
        );
        for bad in [
            "",
            "-web",
            "web-",
            "web..01",
            "web.",
            &"a".repeat(65),
            &"a".repeat(64),
        ] {
            let text = format!("version = 1\nhostname = \"{bad}\"\n");
            let start: String = bad.chars().take(10).collect();
            assert_refused(
                &text,
                2,
                12,
                &[format!("invalid hostname {start:?}").trim_end_matches('"')],
            );
        }
        for good in ["WEB-01", "a", "web-01.example.org", &"a".repeat(63)] {
            parse(&format!("version = 1\nhostname = \"{good}\"\n")).expect(good);
        }
    }

    #[test]
    fn invalid_timezones_are_refused() {
        for bad in [
            "/Europe/Berlin",
            "Europe/../Berlin",
            "Europe//Berlin",
            "Europe/",
            "Eu rope",
            "..",
            "",
        ] {
            let text = format!("version = 1\ntimezone = \"{bad}\"\n");
            assert_refused(&text, 2, 12, &[&format!("invalid timezone {bad:?}")]);
        }
        for good in [
            "UTC",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+1",
            "America/Port-au-Prince",
        ] {
            parse(&format!("version = 1\ntimezone = \"{good}\"\n")).expect(good);
        }
    }

    #[test]
    fn extension_names_are_plain_and_listed_once() {
        assert_refused(
            "version = 1\n[extensions]\nsysext = [\"gui\", \"../x\"]\n",
            3,
            18,
            &["invalid sysext name \"../x\""],
        );
        assert_refused(
            "version = 1\n[extensions]\nconfext = [\"site\", \"site\"]\n",
            3,
            20,
            &[
                "confext \"site\" is listed twice",
                "first at line 3, column 12",
            ],
        );
    }

    #[test]
    fn file_paths_must_be_new_normalized_and_under_etc() {
        let one =
            |path: &str| format!("version = 1\n[[files]]\npath = \"{path}\"\ncontent = \"\"\n");
        assert_refused(
            &one("/usr/bin/sh"),
            3,
            8,
            &["\"/usr/bin/sh\"", "under /etc/"],
        );
        assert_refused(
            &one("/etc/ssh/../shadow"),
            3,
            8,
            &["\"/etc/ssh/../shadow\"", "'..'"],
        );
        assert_refused(&one("/etc/./motd"), 3, 8, &["normalized"]);
        assert_refused(&one("/etc//motd"), 3, 8, &["normalized"]);
        assert_refused(&one("/etc/motd/"), 3, 8, &["trailing"]);
        assert_refused(&one("/etc"), 3, 8, &["/etc itself"]);
        assert_refused(&one("etc/motd"), 3, 8, &["under /etc/"]);
        assert_refused(&one("/etc/mo\\ttd"), 3, 8, &["control"]);
        let twice = "version = 1\n[[files]]\npath = \"/etc/motd\"\ncontent = \"a\"\n\
                     [[files]]\npath = \"/etc/motd\"\ncontent = \"b\"\n";
        assert_refused(
            twice,
            6,
            8,
            &["\"/etc/motd\" is given twice", "first at line 3, column 8"],
        );
        let nested = "version = 1\n[[files]]\npath = \"/etc/a\"\ncontent = \"a\"\n\
                      [[files]]\npath = \"/etc/a/b\"\ncontent = \"b\"\n";
        assert_refused(
            nested,
            6,
            8,
            &["\"/etc/a/b\" would be inside the file /etc/a"],
        );
    }

    #[test]
    fn files_must_not_collide_with_generated_ones() {
        let text = "version = 1\nhostname = \"web\"\n\
                    [[files]]\npath = \"/etc/hostname\"\ncontent = \"x\\n\"\n";
        assert_refused(
            text,
            4,
            8,
            &["\"/etc/hostname\" collides with /etc/hostname, which `hostname` generates"],
        );
        let text = format!(
            "version = 1\n[users.root]\nssh_authorized_keys = [\"{KEY1}\"]\n\
             [[files]]\npath = \"/etc/ssh/authorized_keys\"\ncontent = \"\"\n"
        );
        assert_refused(
            &text,
            5,
            8,
            &[
                "would have to be a directory for /etc/ssh/authorized_keys/root",
                "`users`",
            ],
        );
        let text = "version = 1\ntimezone = \"UTC\"\n\
                    [[files]]\npath = \"/etc/localtime/x\"\ncontent = \"\"\n";
        assert_refused(
            text,
            4,
            8,
            &["would be inside /etc/localtime", "`timezone`"],
        );
        // Next to generated files is fine.
        let text = "version = 1\n[[network]]\nname = \"e*\"\ndhcp = true\n\
                    [[files]]\npath = \"/etc/systemd/network/20-mine.network\"\ncontent = \"\"\n";
        parse(text).expect("a sibling of a generated file");
    }

    #[test]
    fn modes_are_octal_strings() {
        let one = |mode: &str| {
            format!("version = 1\n[[files]]\npath = \"/etc/x\"\nmode = {mode}\ncontent = \"\"\n")
        };
        assert_refused(
            &one("\"0999\""),
            4,
            8,
            &["invalid mode \"0999\" for /etc/x", "octal"],
        );
        assert_refused(&one("\"10644\""), 4, 8, &["\"10644\""]);
        assert_refused(&one("\"\""), 4, 8, &["invalid mode \"\""]);
        assert_refused(&one("644"), 4, 8, &["integer `644`", "octal digits"]);
        let config = parse(&one("\"4755\"")).expect("setuid is a mode");
        assert_eq!(config.files[0].mode, 0o4755);
        let config = parse(&one("\"0\"")).expect("no permissions is a mode");
        assert_eq!(config.files[0].mode, 0);
    }

    #[test]
    fn network_sections_are_checked() {
        let section = |body: &str| format!("version = 1\n[[network]]\n{body}\n");
        assert_refused(
            &section("mac = \"52:54:00:12:34\"\ndhcp = true"),
            3,
            7,
            &["invalid MAC address \"52:54:00:12:34\""],
        );
        assert_refused(
            &section("mac = \"52:54:00:12:34:5g\"\ndhcp = true"),
            3,
            7,
            &["5g"],
        );
        assert_refused(
            &section("name = \"eth0\"\naddresses = [\"192.0.2.10/24\", \"192.0.2.11/33\"]"),
            4,
            31,
            &["invalid address \"192.0.2.11/33\"", "0 to 32 for IPv4"],
        );
        assert_refused(
            &section("name = \"eth0\"\naddresses = [\"2001:db8::1/129\"]"),
            4,
            14,
            &["\"2001:db8::1/129\"", "0 to 128 for IPv6"],
        );
        assert_refused(
            &section("name = \"eth0\"\naddresses = [\"192.0.2.10\"]"),
            4,
            14,
            &["\"192.0.2.10\"", "prefix length is missing"],
        );
        assert_refused(
            &section("name = \"eth0\"\naddresses = [\"192.0.2/24\"]"),
            4,
            14,
            &["\"192.0.2/24\"", "not an IPv4 or IPv6 address"],
        );
        assert_refused(
            &section("name = \"eth0\"\ndhcp = true\ngateways = [\"192.0.2.300\"]"),
            5,
            13,
            &["invalid gateway \"192.0.2.300\""],
        );
        assert_refused(
            &section("name = \"eth0\"\ndhcp = true\ndns = [\"dns.example\"]"),
            5,
            8,
            &["invalid DNS server \"dns.example\""],
        );
        assert_refused(
            &section("name = \"eth0\"\ngateways = [\"192.0.2.1\"]"),
            2,
            1,
            &["interface name \"eth0\" has neither `dhcp = true` nor `addresses`"],
        );
        assert_refused(
            &section("name = \"eth0\"\nmac = \"52:54:00:12:34:56\"\ndhcp = true"),
            4,
            7,
            &["not both", "\"eth0\"", "\"52:54:00:12:34:56\""],
        );
        assert_refused(&section("dhcp = true"), 2, 1, &["needs `name` or `mac`"]);
        assert_refused(
            &section("name = \"a-very-long-name0\"\ndhcp = true"),
            3,
            8,
            &["invalid interface name \"a-very-long-name0\"", "1 to 15"],
        );
        assert_refused(
            &section("name = \"eth 0\"\ndhcp = true"),
            3,
            8,
            &["whitespace"],
        );
        let twice = "version = 1\n[[network]]\nmac = \"52:54:00:12:34:56\"\ndhcp = true\n\
                     [[network]]\nmac = \"52:54:00:12:34:56\"\naddresses = [\"192.0.2.1/24\"]\n";
        assert_refused(
            twice,
            6,
            7,
            &[
                "MAC address 52:54:00:12:34:56 is matched by two",
                "first at line 3, column 7",
            ],
        );
    }

    #[test]
    fn ssh_keys_are_checked() {
        let user =
            |key: &str| format!("version = 1\n[users.root]\nssh_authorized_keys = [\"{key}\"]\n");
        assert_refused(
            &user("ssh-ed25519 !!!notbase64"),
            3,
            24,
            &["invalid SSH key \"ssh-ed25519 !!!", "not base64"],
        );
        assert_refused(
            &user("ssh-foo AAAA"),
            3,
            24,
            &["\"ssh-foo AAAA\"", "ssh-ed25519, ssh-rsa"],
        );
        assert_refused(
            &user("from=\\\"10.0.0.1\\\" ssh-ed25519 AAAA"),
            3,
            24,
            &["options are not supported"],
        );
        let wrong_type = KEY1.replace("ssh-ed25519", "ssh-rsa");
        assert_refused(&user(&wrong_type), 3, 24, &["not a ssh-rsa key"]);
        assert_refused(&user("ssh-ed25519"), 3, 24, &["not base64"]);
        assert_refused(&user(""), 3, 24, &["invalid SSH key \"\""]);
        // Two keys pasted into one entry.
        assert_refused(
            &user(&format!("{KEY1}\\n{KEY2}")),
            3,
            24,
            &["must be one line", "\"ssh-ed25519 AAAA"],
        );
        assert_refused(&user(&format!("{KEY1}\\r")), 3, 24, &["one line"]);
        parse(&user(&format!("{KEY1} comment with spaces"))).expect("a comment");
    }

    #[test]
    fn users_are_checked() {
        assert_refused(
            &format!("version = 1\n[users.0day]\nssh_authorized_keys = [\"{KEY1}\"]\n"),
            2,
            8,
            &["invalid user name \"0day\""],
        );
        assert_refused(
            &format!("version = 1\n[users.\"ro ot\"]\nssh_authorized_keys = [\"{KEY1}\"]\n"),
            2,
            8,
            &["\"ro ot\""],
        );
        assert_refused(
            "version = 1\n[users.root]\n",
            2,
            8,
            &["user \"root\" has no ssh_authorized_keys"],
        );
        assert_refused(
            "version = 1\n[users.root]\nssh_authorized_keys = []\n",
            2,
            8,
            &["would do nothing"],
        );
    }

    #[test]
    fn modules_and_sysctl_are_checked() {
        assert_refused(
            "version = 1\nmodules = [\"a b\"]\n",
            2,
            12,
            &["invalid module name \"a b\""],
        );
        assert_refused(
            "version = 1\nmodules = [\"br_netfilter\", \"br-netfilter\"]\n",
            2,
            28,
            &[
                "module \"br-netfilter\" is listed twice",
                "first at line 2, column 12",
            ],
        );
        assert_refused(
            "version = 1\n[sysctl]\nnet.ipv4.ip_forward = 1\n",
            3,
            1,
            &["quote sysctl keys"],
        );
        assert_refused(
            "version = 1\n[sysctl]\n\"vm.swappiness\" = true\n",
            3,
            19,
            &["boolean", "string or an integer"],
        );
        assert_refused(
            "version = 1\n[sysctl]\n\"vm..x\" = 1\n",
            3,
            1,
            &["invalid sysctl key \"vm..x\""],
        );
        assert_refused(
            "version = 1\n[sysctl]\n\"/vm/x\" = 1\n",
            3,
            1,
            &["\"/vm/x\""],
        );
        assert_refused("version = 1\n[sysctl]\n\"vm x\" = 1\n", 3, 1, &["\"vm x\""]);
        assert_refused(
            "version = 1\n[sysctl]\n\"kernel.x\" = \"a\\nb\"\n",
            3,
            14,
            &["invalid sysctl value \"a\\nb\"", "one line"],
        );
        assert_refused(
            "version = 1\n[sysctl]\n\"kernel.x\" = \" \"\n",
            3,
            14,
            &["empty"],
        );
        assert_refused(
            "version = 1\n[sysctl]\n\"kernel.x\" = \"1 \"\n",
            3,
            14,
            &["whitespace"],
        );
        let config =
            parse("version = 1\n[sysctl]\n\"kernel.perf_event_paranoid\" = -1\n").expect("valid");
        let layer = config.etc_layer();
        let EntryKind::File { content, .. } = &layer[0].kind else {
            panic!("a file")
        };
        assert!(
            content.ends_with("\nkernel.perf_event_paranoid = -1\n"),
            "{content}"
        );
    }

    #[test]
    fn dotted_keys_and_inline_tables_work_like_sections() {
        let sections = parse(&format!(
            "version = 1\n[users.root]\nssh_authorized_keys = [\"{KEY1}\"]\n\
             [[network]]\nname = \"e*\"\ndhcp = true\n"
        ))
        .expect("sections");
        let dotted = parse(&format!(
            "version = 1\nusers.root.ssh_authorized_keys = [\"{KEY1}\"]\n\
             network = [{{ name = \"e*\", dhcp = true }}]\n"
        ))
        .expect("dotted keys and inline tables");
        assert_eq!(sections, dotted);
        assert_refused(
            "version = 1\nnetwork = [{ name = \"e*\" }]\n",
            2,
            12,
            &["has neither `dhcp = true` nor `addresses`"],
        );
        assert_refused(
            "version = 1\nusers.root.shell = \"sh\"\n",
            2,
            12,
            &["unknown field `shell`"],
        );
    }

    #[test]
    fn the_first_mistake_in_the_text_is_reported() {
        // Files are checked before the hostname, but the hostname comes first in the text.
        let text =
            "version = 1\nhostname = \"bad_host\"\n[[files]]\npath = \"/usr/x\"\ncontent = \"\"\n";
        assert_refused(text, 2, 12, &["bad_host"]);
        let text = "version = 1\n[users.b0]\n[users.a0]\n";
        assert_refused(text, 2, 8, &["\"b0\""]);
    }

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("äö = 1", 5), (1, 4));
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_col("ä", 1), (1, 2));
        assert_eq!(one_line("a\n  b\r\n\nc\td"), "a; b; c d");
    }

    // ---- writing -----------------------------------------------------------------------

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn the_layer_is_written_with_exact_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("host-config/etc");
        let mut entries = parse(&example()).expect("valid").etc_layer();
        entries.push(text_file("wide-open", 0o666, "x"));
        write_layer(&entries, &etc).expect("written");
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).expect("read"),
            "web-01\n"
        );
        assert_eq!(
            std::fs::read_link(etc.join("localtime")).expect("link"),
            Path::new("../usr/share/zoneinfo/Europe/Berlin")
        );
        assert_eq!(mode_of(&etc.join("xorbang/site.conf")), 0o600);
        assert_eq!(mode_of(&etc.join("ssh/authorized_keys/root")), 0o644);
        // Past a umask of 022, which would have cleared the group and other write bits.
        assert_eq!(mode_of(&etc.join("wide-open")), 0o666);
        for directory in ["", "ssh", "ssh/authorized_keys", "systemd/network"] {
            assert_eq!(mode_of(&etc.join(directory)), 0o755, "{directory}");
        }
        let network = etc.join("systemd/network/10-xorbang-0.network");
        assert!(std::fs::read_to_string(network)
            .expect("read")
            .contains("DHCP=yes"));
    }

    #[test]
    fn the_layer_goes_only_into_a_fresh_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        let entries = [text_file("hostname", 0o644, "a\n")];
        write_layer(&entries, &etc).expect("written");
        let error = write_layer(&entries, &etc).expect_err("not empty");
        assert!(error.to_string().contains("is not empty"), "{error}");
        let other = dir.path().join("other");
        let twice = [text_file("x", 0o644, "a"), text_file("x", 0o644, "b")];
        let error = write_layer(&twice, &other).expect_err("exists");
        assert!(error.to_string().starts_with("cannot create "), "{error}");
        assert!(error.to_string().contains("other/x"), "{error}");
        for bad in ["../x", "/x", "a//b", "a/./b", ""] {
            let fresh = dir.path().join(format!("fresh-{}", bad.len()));
            let error = write_layer(&[text_file(bad, 0o644, "")], &fresh).expect_err(bad);
            assert!(matches!(error, LayerError::BadEntry { .. }), "{error}");
        }
        let nested = [text_file("a", 0o644, ""), text_file("a/b", 0o644, "")];
        let error = write_layer(&nested, &dir.path().join("nested")).expect_err("a is a file");
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    // ---- property tests ----------------------------------------------------------------

    /// xorshift64: a fixed seed makes every run the same, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn range(&mut self, low: usize, high: usize) -> usize {
            low + self.below(high - low + 1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn text(&mut self, alphabet: &[char], low: usize, high: usize) -> String {
            let length = self.range(low, high);
            (0..length).map(|_| *self.pick(alphabet)).collect()
        }
    }

    fn chars(ranges: &str) -> Vec<char> {
        let mut out = Vec::new();
        let mut iter = ranges.chars().peekable();
        while let Some(c) = iter.next() {
            if iter.peek() == Some(&'~') {
                iter.next();
                let end = iter.next().expect("range end");
                out.extend(c..=end);
            } else {
                out.push(c);
            }
        }
        out
    }

    const TOKENS: &[&str] = &[
        "=",
        "[",
        "]",
        "[[",
        "]]",
        "\"",
        "'",
        "\"\"\"",
        "\n",
        ",",
        "{",
        "}",
        "#",
        ".",
        "\\",
        " ",
        "version",
        "hostname",
        "timezone",
        "network",
        "users",
        "sysctl",
        "files",
        "path",
        "mode",
        "content",
        "name",
        "mac",
        "dhcp",
        "addresses",
        "gateways",
        "dns",
        "modules",
        "extensions",
        "sysext",
        "confext",
        "ssh_authorized_keys",
        "true",
        "1",
        "-1",
        "0x7f",
        "1e9",
        "/etc/",
        "..",
        "ä",
        "\u{0}",
        "\r",
        "\t",
        "/",
        ":",
        "*",
        "2",
        "0644",
        "\"/etc/x\"",
        "1979-05-27T07:32:00Z",
    ];

    fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        let mut bytes = base.to_vec();
        for _ in 0..rng.range(1, 6) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if at < bytes.len() => {
                    let end = (at + rng.range(1, 8)).min(bytes.len());
                    bytes.drain(at..end);
                }
                1 if at < bytes.len() => bytes[at] = rng.next() as u8,
                2 => {
                    let token = rng.pick(TOKENS).as_bytes();
                    bytes.splice(at..at, token.iter().copied());
                }
                _ => bytes.insert(at, rng.next() as u8),
            }
        }
        bytes
    }

    /// Every error of `parse` stays inside the text and on one line.
    fn check_outcome(text: &str) -> bool {
        match parse(text) {
            Err(error) => {
                let lines = text.matches('\n').count() + 1;
                assert!(
                    error.line >= 1 && error.line <= lines,
                    "{error} in {text:?}"
                );
                let line_text = text.split('\n').nth(error.line - 1).unwrap_or_default();
                assert!(
                    error.column >= 1 && error.column <= line_text.chars().count() + 1,
                    "{error} in {text:?}"
                );
                assert!(!error.to_string().contains(['\n', '\r']), "{error:?}");
                false
            }
            Ok(config) => {
                let layer = config.etc_layer();
                assert!(
                    layer.windows(2).all(|pair| pair[0].path < pair[1].path),
                    "{layer:?}"
                );
                assert!(layer.iter().all(|entry| entry_path(&entry.path).is_ok()));
                let again = parse(&to_toml(&config)).expect("an accepted config renders back");
                assert_eq!(again, config);
                true
            }
        }
    }

    /// Mutated inputs from `seeds` (and some plain random bytes); counts (rejected, accepted).
    fn fuzz_worker(mut rng: Rng, runs: usize, example: &str, seeds: &[String]) -> (usize, usize) {
        let (mut rejected, mut accepted) = (0, 0);
        for run in 0..runs {
            let bytes = match run % 50 {
                0..=4 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                5 => mutate(&mut rng, example.as_bytes()),
                _ => {
                    let seed = rng.pick(seeds);
                    mutate(&mut rng, seed.as_bytes())
                }
            };
            if check_outcome(&String::from_utf8_lossy(&bytes)) {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        (rejected, accepted)
    }

    #[test]
    fn fuzz_parse_never_panics_and_errors_stay_in_the_text() {
        // Seeds: the whole example, and each of its blocks as a config of its own. A debug
        // build of toml spends ~20 µs per key, so small seeds and a few threads keep 100k
        // inputs within seconds; the worker count is fixed so every run sees the same inputs.
        const RUNS: usize = 100_000;
        const WORKERS: usize = 4;
        let example = example();
        let seeds: Vec<String> = example
            .split("\n\n")
            .skip(1)
            .map(|block| format!("version = 1\n{block}\n"))
            .collect();
        let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..WORKERS as u64)
                .map(|worker| {
                    let rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker << 32 | worker));
                    let (example, seeds) = (&example, &seeds);
                    scope.spawn(move || fuzz_worker(rng, RUNS / WORKERS, example, seeds))
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a fuzz worker panicked"))
                .collect()
        });
        let rejected: usize = counts.iter().map(|(rejected, _)| rejected).sum();
        let accepted: usize = counts.iter().map(|(_, accepted)| accepted).sum();
        eprintln!(
            "hostconfig fuzz: {RUNS} mutated inputs, {rejected} rejected, {accepted} accepted"
        );
        assert_eq!(rejected + accepted, RUNS);
        assert!(accepted > 0 && rejected > 0);
    }

    // A tiny TOML writer for configs, test-only (the init never writes TOML).
    fn toml_string(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => write!(out, "\\u{:04X}", u32::from(c)).expect("write"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn toml_list<T: ToString>(items: &[T]) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|item| toml_string(&item.to_string()))
            .collect();
        format!("[{}]", items.join(", "))
    }

    fn to_toml(config: &HostConfig) -> String {
        let mut out = String::from("version = 1\n");
        if let Some(name) = &config.hostname {
            writeln!(out, "hostname = {}", toml_string(name)).expect("write");
        }
        if let Some(zone) = &config.timezone {
            writeln!(out, "timezone = {}", toml_string(zone)).expect("write");
        }
        if !config.modules.is_empty() {
            writeln!(out, "modules = {}", toml_list(&config.modules)).expect("write");
        }
        if !config.sysext.is_empty() || !config.confext.is_empty() {
            write!(
                out,
                "[extensions]\nsysext = {}\nconfext = {}\n",
                toml_list(&config.sysext),
                toml_list(&config.confext)
            )
            .expect("write");
        }
        if !config.sysctl.is_empty() {
            out.push_str("[sysctl]\n");
            for (key, value) in &config.sysctl {
                let value = match value {
                    SysctlValue::Integer(number) => number.to_string(),
                    SysctlValue::String(text) => toml_string(text),
                };
                writeln!(out, "{} = {value}", toml_string(key)).expect("write");
            }
        }
        for network in &config.networks {
            out.push_str("[[network]]\n");
            match &network.matching {
                InterfaceMatch::Name(name) => writeln!(out, "name = {}", toml_string(name)),
                InterfaceMatch::Mac(mac) => {
                    writeln!(out, "mac = \"{}\"", mac_text(mac).to_uppercase())
                }
            }
            .expect("write");
            write!(
                out,
                "dhcp = {}\naddresses = {}\ngateways = {}\ndns = {}\n",
                network.dhcp,
                toml_list(&network.addresses),
                toml_list(&network.gateways),
                toml_list(&network.dns)
            )
            .expect("write");
        }
        for (name, user) in &config.users {
            write!(
                out,
                "[users.{}]\nssh_authorized_keys = {}\n",
                toml_string(name),
                toml_list(&user.ssh_authorized_keys)
            )
            .expect("write");
        }
        for file in &config.files {
            write!(
                out,
                "[[files]]\npath = {}\nmode = \"{:04o}\"\ncontent = {}\n",
                toml_string(&file.path),
                file.mode,
                toml_string(&file.content)
            )
            .expect("write");
        }
        out
    }

    fn encode_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut group = [0u8; 3];
            group[..chunk.len()].copy_from_slice(chunk);
            let bits = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
            for index in 0..4 {
                if index <= chunk.len() {
                    out.push(char::from(
                        ALPHABET[(bits >> (18 - 6 * index) & 63) as usize],
                    ));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Names of `alphabet`, unique after `canonical`.
    fn unique<F: Fn(&mut Rng) -> String>(
        rng: &mut Rng,
        count: usize,
        canonical: fn(&str) -> String,
        make: F,
    ) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for _ in 0..count {
            let name = make(rng);
            if seen.insert(canonical(&name)) {
                out.push(name);
            }
        }
        out
    }

    fn random_ip(rng: &mut Rng) -> IpAddr {
        if rng.chance(50) {
            IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
        } else {
            // Zero some groups so `::` shortening gets exercised.
            let mut groups = [0u16; 8];
            for group in &mut groups {
                if rng.chance(60) {
                    *group = rng.next() as u16;
                }
            }
            IpAddr::V6(Ipv6Addr::from(groups))
        }
    }

    fn random_key(rng: &mut Rng) -> String {
        let kind = *rng.pick(&KEY_TYPES);
        let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(kind.as_bytes());
        blob.extend((0..rng.below(80)).map(|_| rng.next() as u8));
        let mut key = format!("{kind} {}", encode_base64(&blob));
        if rng.chance(50) {
            let comment = rng.text(&chars(" ~~äé€"), 1, 20);
            write!(key, " {comment}").expect("write");
        }
        key
    }

    fn random_network(rng: &mut Rng, index: usize) -> Network {
        let matching = if rng.chance(50) {
            let name = rng.text(&chars("a~z0~9*?[]!-_."), 1, 12);
            InterfaceMatch::Name(format!("{name}{index}"))
        } else {
            let mut mac = [0u8; 6];
            mac.iter_mut().for_each(|byte| *byte = rng.next() as u8);
            mac[0] = index as u8;
            InterfaceMatch::Mac(mac)
        };
        let dhcp = rng.chance(50);
        let mut addresses: Vec<Cidr> = (0..rng.below(4))
            .map(|_| {
                let address = random_ip(rng);
                let max = if address.is_ipv4() { 33 } else { 129 };
                Cidr {
                    address,
                    prefix_len: rng.below(max) as u8,
                }
            })
            .collect();
        if !dhcp && addresses.is_empty() {
            addresses.push(Cidr {
                address: random_ip(rng),
                prefix_len: 0,
            });
        }
        Network {
            matching,
            dhcp,
            addresses,
            gateways: (0..rng.below(3)).map(|_| random_ip(rng)).collect(),
            dns: (0..rng.below(3)).map(|_| random_ip(rng)).collect(),
        }
    }

    fn random_config(rng: &mut Rng) -> HostConfig {
        let alnum = chars("a~zA~Z0~9");
        let ldh = chars("a~zA~Z0~9-");
        let hostname = rng.chance(70).then(|| {
            let labels: Vec<String> = (0..rng.range(1, 3))
                .map(|_| {
                    let middle = rng.text(&ldh, 0, 10);
                    format!("{}{middle}{}", rng.pick(&alnum), rng.pick(&alnum))
                })
                .collect();
            labels.join(".")
        });
        let zone_chars = chars("a~zA~Z0~9_+-");
        let timezone = rng.chance(70).then(|| {
            let parts: Vec<String> = (0..rng.range(1, 3))
                .map(|_| rng.text(&zone_chars, 1, 10))
                .collect();
            parts.join("/")
        });
        let extension_chars = chars("a~zA~Z0~9_.-");
        let extension =
            |rng: &mut Rng| format!("{}{}", rng.pick(&alnum), rng.text(&extension_chars, 0, 12));
        let count = rng.below(4);
        let sysext = unique(rng, count, str::to_owned, extension);
        let count = rng.below(4);
        let confext = unique(rng, count, str::to_owned, extension);
        let networks = (0..rng.below(4))
            .map(|index| random_network(rng, index))
            .collect();
        let user_chars = chars("a~zA~Z0~9_-");
        let count = rng.below(3);
        let user_names = unique(rng, count, str::to_owned, |rng| {
            format!(
                "{}{}",
                rng.pick(&chars("a~zA~Z_")),
                rng.text(&user_chars, 0, 31)
            )
        });
        let users = user_names
            .into_iter()
            .map(|name| {
                let keys = (0..rng.range(1, 3)).map(|_| random_key(rng)).collect();
                (
                    name,
                    User {
                        ssh_authorized_keys: keys,
                    },
                )
            })
            .collect();
        let count = rng.below(4);
        let modules = unique(
            rng,
            count,
            |name| name.replace('-', "_"),
            |rng| rng.text(&user_chars, 1, 20),
        );
        let key_chars = chars("a~z0~9_-");
        let value_chars = chars(" ~~äé€");
        let sysctl = (0..rng.below(4))
            .map(|_| {
                let parts: Vec<String> = (0..rng.range(1, 4))
                    .map(|_| rng.text(&key_chars, 1, 8))
                    .collect();
                let key = parts.join(if rng.chance(80) { "." } else { "/" });
                let value = if rng.chance(50) {
                    SysctlValue::Integer(rng.next() as i64)
                } else {
                    SysctlValue::String(format!(
                        "{}{}",
                        rng.pick(&alnum),
                        rng.text(&value_chars, 0, 12).trim_end()
                    ))
                };
                (key, value)
            })
            .collect();
        let content_chars = chars("\0\t\n\r\"\\\u{7f}\u{85} ~~äé€😀");
        let files = (0..rng.below(4))
            .map(|index| EtcFile {
                path: format!(
                    "/etc/xorbang-fuzz/{index}-{}",
                    rng.text(&extension_chars, 1, 20)
                ),
                mode: rng.below(0o10000) as u32,
                content: rng.text(&content_chars, 0, 40),
            })
            .collect();
        HostConfig {
            hostname,
            timezone,
            sysext,
            confext,
            networks,
            users,
            modules,
            sysctl,
            files,
        }
    }

    #[test]
    fn fuzz_generated_configs_render_and_parse_back() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        const RUNS: usize = 1_000;
        let mut entries = 0;
        for _ in 0..RUNS {
            let config = random_config(&mut rng);
            let text = to_toml(&config);
            let parsed = parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
            assert_eq!(parsed, config, "{text}");
            let layer = parsed.etc_layer();
            assert!(layer.windows(2).all(|pair| pair[0].path < pair[1].path));
            entries += layer.len();
        }
        eprintln!(
            "hostconfig fuzz: {RUNS} generated configs parsed back equal ({entries} layer entries)"
        );
    }

    #[test]
    fn base64_decodes_what_is_encoded() {
        let mut rng = Rng(7);
        for length in 0..200 {
            let bytes: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
            let text = encode_base64(&bytes);
            if length == 0 {
                assert_eq!(decode_base64(&text), None);
            } else {
                assert_eq!(decode_base64(&text).as_deref(), Some(&bytes[..]), "{text}");
            }
        }
        for bad in ["A", "AB=C", "A===", "AB*D", "QQ=", "QR=="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
        assert_eq!(decode_base64("QQ==").as_deref(), Some(&b"A"[..]));
    }
}

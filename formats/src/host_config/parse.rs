//! From TOML text to a validated [`HostConfig`], with line and column on every refusal.

use super::*;
use crate::text_position::{line_col, one_line};

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

pub(super) fn toml_error(text: &str, error: &toml::de::Error) -> HostConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    locate(text, offset, error.message())
}

pub(super) fn locate(text: &str, offset: usize, message: &str) -> HostConfigError {
    let (line, column) = line_col(text, offset);
    HostConfigError {
        line,
        column,
        message: one_line(message),
    }
}

/// A value as shown in a message: quoted and escaped, and cut short (an RSA key is ~700
/// bytes, and the message is one log line).
pub(super) fn shown(value: &str) -> String {
    const LIMIT: usize = 60;
    match value.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// A semantic error before it is placed in the text: a byte offset and the message, and
/// for conflicts the offset of the other value involved.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) at: usize,
    pub(super) message: String,
    pub(super) other: Option<(&'static str, usize)>,
}

impl Refusal {
    pub(super) fn new(at: usize, message: String) -> Self {
        Self {
            at,
            message,
            other: None,
        }
    }

    /// `label` introduces the other position: "first at" for duplicates.
    pub(super) fn conflict(at: usize, message: String, label: &'static str, other: usize) -> Self {
        Self {
            at,
            message,
            other: Some((label, other)),
        }
    }

    pub(super) fn place(self, text: &str) -> HostConfigError {
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
pub(super) struct Earliest(Option<Refusal>);

impl Earliest {
    pub(super) fn keep<T: Default>(&mut self, result: Result<T, Refusal>) -> T {
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

    pub(super) fn finish(self) -> Result<(), Refusal> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Runs `check` on a spanned string; a refusal names what the value is, the value and why.
pub(super) fn checked<T>(
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

pub(super) fn checked_list<T>(
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
pub(super) struct VersionProbe {
    pub(super) version: Option<Spanned<Version>>,
}

/// `version` with a message that says what this build reads when the type is wrong.
pub(super) struct Version(i64);

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

pub(super) fn check_version(version: Option<&Spanned<Version>>) -> Result<(), Refusal> {
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
pub(super) struct RawConfig {
    pub(super) version: Option<Spanned<Version>>,
    pub(super) hostname: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) extensions: Option<RawExtensions>,
    #[serde(default)]
    pub(super) network: Vec<Spanned<RawNetwork>>,
    // Table values are not `Spanned`: a table made by dotted keys (`users.root.x = …`) has
    // no span, and toml cannot deserialize it as `Spanned`. Errors use the key's span.
    #[serde(default)]
    pub(super) users: BTreeMap<Spanned<String>, RawUser>,
    #[serde(default)]
    pub(super) modules: Vec<Spanned<String>>,
    /// Values are checked while deserializing, so their errors carry the value's span.
    #[serde(default)]
    pub(super) sysctl: BTreeMap<Spanned<String>, SysctlValue>,
    #[serde(default)]
    pub(super) files: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExtensions {
    #[serde(default)]
    pub(super) sysext: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) confext: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) name: Option<Spanned<String>>,
    pub(super) mac: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) dhcp: bool,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) gateways: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) ssh_authorized_keys: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) path: Spanned<String>,
    pub(super) mode: Option<Spanned<ModeText>>,
    pub(super) content: String,
}

/// `mode` must be a string: a TOML integer `644` would be decimal, a silent wrong mode.
pub(super) struct ModeText(pub(super) String);

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
    pub(super) fn validate(self) -> Result<HostConfig, Refusal> {
        self.check_counts()?;
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

/// The most entries of each kind a config may have: far above a real host, and what keeps
/// deciding a config at the size limit well under a second of init time.
pub const MAX_ENTRIES: usize = 256;

impl RawConfig {
    /// Refuses a list longer than [`MAX_ENTRIES`] at its first entry past the limit.
    fn check_counts(&self) -> Result<(), Refusal> {
        let too_many = |what: &str, at: usize| {
            Err(Refusal::new(
                at,
                format!("more than {MAX_ENTRIES} {what}; a host config is small by design"),
            ))
        };
        if let Some(file) = self.files.get(MAX_ENTRIES) {
            return too_many("[[files]]", file.path.span().start);
        }
        if let Some(network) = self.network.get(MAX_ENTRIES) {
            return too_many("[[network]] sections", network.span().start);
        }
        if let Some(module) = self.modules.get(MAX_ENTRIES) {
            return too_many("modules", module.span().start);
        }
        if let Some((key, _)) = self.users.iter().nth(MAX_ENTRIES) {
            return too_many("users", key.span().start);
        }
        if let Some((key, _)) = self.sysctl.iter().nth(MAX_ENTRIES) {
            return too_many("sysctl keys", key.span().start);
        }
        Ok(())
    }
}

pub(super) fn optional(
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
pub(super) fn earlier<T: PartialEq>(seen: &[(T, usize)], item: &T) -> Option<usize> {
    seen.iter()
        .find(|(other, _)| other == item)
        .map(|(_, offset)| *offset)
}

// ---------------------------------------------------------------------------------------

/// The top-level keys an unsigned config from local storage may set in production: what a
/// machine needs to be reachable, nothing that grants access or runs code.
pub const LOCAL_KEYS: [&str; 4] = ["version", "hostname", "timezone", "network"];

/// Refuses a config (already accepted by [`parse`]) that sets anything beyond [`LOCAL_KEYS`],
/// naming the first such key where it is written.
pub fn check_local_keys(text: &str) -> Result<(), HostConfigError> {
    let keys: BTreeMap<Spanned<String>, de::IgnoredAny> =
        toml::from_str(text).map_err(|error| toml_error(text, &error))?;
    let mut refused: Vec<&Spanned<String>> = keys
        .keys()
        .filter(|key| !LOCAL_KEYS.contains(&key.get_ref().as_str()))
        .collect();
    refused.sort_by_key(|key| key.span().start);
    match refused.first() {
        None => Ok(()),
        Some(key) => Err(locate(
            text,
            key.span().start,
            &format!(
                "{} is not allowed in an unsigned config from local storage (only {}); sign it \
                 with a key the image pins",
                shown(key.get_ref()),
                LOCAL_KEYS[1..].join(", ")
            ),
        )),
    }
}

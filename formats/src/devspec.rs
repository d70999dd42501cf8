//! The kernel's `root=` value: which block device to boot from, named the ways users and
//! boot loaders name it.

use std::fmt;
use std::path::PathBuf;

use crate::gpt::{Guid, GuidError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `PARTUUID=`: the GPT entry's unique GUID.
    PartUuid(Guid),
    /// `PARTLABEL=`: the GPT entry's name, compared exactly.
    PartLabel(String),
    /// `UUID=`: the filesystem UUID as blkid prints it, compared ignoring case.
    Uuid(String),
    /// `LABEL=`: the filesystem label, compared exactly.
    Label(String),
    /// `/dev/...`: a device node path.
    Path(PathBuf),
    /// Any other absolute path: an image file inside the initramfs (how a PXE-served
    /// initramfs carries its root), attached to a loop device.
    File(PathBuf),
    /// `http://…`: an image file a netbooted machine downloads into memory (a UKI under
    /// Secure Boot cannot be handed its root as another initramfs part), then as [`Self::File`].
    /// What arrives is trusted only as far as `roothash=` verifies it.
    Url(String),
}

const EXPECTED: &str = "expected PARTUUID=, PARTLABEL=, UUID=, LABEL=, a /dev path, the path \
     of an image file or its http:// URL";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeviceSpecError {
    #[error("{EXPECTED}")]
    Unrecognized,
    #[error("{prefix} needs a value")]
    Empty { prefix: &'static str },
    #[error(transparent)]
    PartUuid(#[from] GuidError),
    #[error("/PARTNROFF= is not supported; name the partition itself by its PARTUUID")]
    PartNrOff,
}

const PARTUUID: &str = "PARTUUID=";
const PARTLABEL: &str = "PARTLABEL=";
const UUID: &str = "UUID=";
const LABEL: &str = "LABEL=";
const DEV: &str = "/dev/";
const HTTP: &str = "http://";

impl DeviceSpec {
    /// Parses a `root=` value.
    pub fn parse(value: &str) -> Result<Self, DeviceSpecError> {
        if let Some(guid) = value.strip_prefix(PARTUUID) {
            return parse_partuuid(guid);
        }
        let named = [
            (PARTLABEL, DeviceSpec::PartLabel as fn(String) -> Self),
            (UUID, DeviceSpec::Uuid),
            (LABEL, DeviceSpec::Label),
        ];
        for (prefix, make) in named {
            if let Some(name) = value.strip_prefix(prefix) {
                return non_empty(prefix, name).map(make);
            }
        }
        if let Some(rest) = value.strip_prefix(HTTP) {
            return non_empty(HTTP, rest).map(|_| Self::Url(value.to_owned()));
        }
        match value.strip_prefix(DEV) {
            Some(node) if !node.is_empty() => Ok(Self::Path(PathBuf::from(value))),
            None if value.len() > 1 && value.starts_with('/') => {
                Ok(Self::File(PathBuf::from(value)))
            }
            _ => Err(DeviceSpecError::Unrecognized),
        }
    }
}

fn parse_partuuid(guid: &str) -> Result<DeviceSpec, DeviceSpecError> {
    // The kernel's PARTUUID=<guid>/PARTNROFF=<n> picks a sibling partition; refusing it is
    // clearer than guessing, and DPS disks never need it.
    if guid.contains("/PARTNROFF=") {
        return Err(DeviceSpecError::PartNrOff);
    }
    Ok(DeviceSpec::PartUuid(Guid::parse(guid)?))
}

fn non_empty(prefix: &'static str, name: &str) -> Result<String, DeviceSpecError> {
    if name.is_empty() {
        return Err(DeviceSpecError::Empty { prefix });
    }
    Ok(name.to_owned())
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PartUuid(guid) => write!(f, "{PARTUUID}{guid}"),
            Self::PartLabel(name) => write!(f, "{PARTLABEL}{name}"),
            Self::Uuid(uuid) => write!(f, "{UUID}{uuid}"),
            Self::Label(label) => write!(f, "{LABEL}{label}"),
            Self::Path(path) | Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(url) => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> DeviceSpec {
        DeviceSpec::parse(value).expect("valid root=")
    }

    fn error(value: &str) -> String {
        DeviceSpec::parse(value)
            .expect_err("invalid root=")
            .to_string()
    }

    #[test]
    fn each_form_parses_and_round_trips() {
        let cases = [
            (
                "PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5",
                DeviceSpec::PartUuid(
                    Guid::parse("954172df-ee9a-aab2-d90a-0ab162ee6bc5").expect("guid"),
                ),
            ),
            (
                "PARTLABEL=root-x86-64",
                DeviceSpec::PartLabel("root-x86-64".into()),
            ),
            ("UUID=1A2B-3C4D", DeviceSpec::Uuid("1A2B-3C4D".into())),
            (
                "LABEL=xorbang root",
                DeviceSpec::Label("xorbang root".into()),
            ),
            ("/dev/vda1", DeviceSpec::Path("/dev/vda1".into())),
            (
                "http://10.14.0.1:8080/root.squashfs",
                DeviceSpec::Url("http://10.14.0.1:8080/root.squashfs".into()),
            ),
        ];
        for (text, spec) in cases {
            assert_eq!(parse(text), spec, "{text}");
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn partuuid_is_case_insensitive_and_displays_lower_case() {
        let spec = parse("PARTUUID=954172DF-EE9A-AAB2-D90A-0AB162EE6BC5");
        assert_eq!(
            spec.to_string(),
            "PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5"
        );
    }

    #[test]
    fn errors_say_what_was_expected() {
        assert_eq!(error("sda1"), EXPECTED);
        assert_eq!(error("/dev/"), EXPECTED);
        assert_eq!(error("http://"), "http:// needs a value");
        assert_eq!(
            parse("/boot/root.img"),
            DeviceSpec::File("/boot/root.img".into())
        );
        assert_eq!(error("UUID="), "UUID= needs a value");
        assert_eq!(
            error("PARTUUID=1234"),
            "\"1234\" is not a GUID: expected 36 characters \
             (8-4-4-4-12), found 4"
        );
        assert_eq!(
            error("PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5/PARTNROFF=1"),
            "/PARTNROFF= is not \
             supported; name the partition itself by its PARTUUID"
        );
    }

    use crate::fixtures::XorShift;

    const FUZZ_ITERATIONS: usize = 100_000;

    /// A `root=` value: random printable ASCII (quotes, spaces, '=' and '/' weighted in),
    /// mostly behind one of the prefixes the parser looks for, and for `PARTUUID=` often a
    /// GUID with a few characters changed.
    fn random_value(rng: &mut XorShift) -> String {
        let prefix = *rng.pick(&[
            "",
            "PARTUUID=",
            "PARTUUID=",
            "PARTLABEL=",
            "UUID=",
            "LABEL=",
            "/dev/",
            "/",
            "/dev",
            "http://",
        ]);
        let mut rest = crate::cmdline::tests::random_text(rng, true);
        if prefix == PARTUUID && rng.below(3) != 0 {
            let mut guid: Vec<char> = "954172df-ee9a-aab2-d90a-0ab162ee6bc5".chars().collect();
            for _ in 0..rng.below(3) {
                let at = rng.below(guid.len());
                guid[at] = *rng.pick(&['A', 'f', 'g', '-', '0', ' ', '"', '/']);
            }
            rest = guid.into_iter().collect();
            if rng.one_in(8) {
                rest.push_str("/PARTNROFF=1");
            }
        }
        format!("{prefix}{rest}")
    }

    /// The variant's name, to show which ones the loop reached.
    fn kind<T: std::fmt::Debug>(value: &T) -> String {
        let debug = format!("{value:?}");
        debug
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Random `root=` values: parsing never panics, errors have a message, and whatever
    /// parses prints back to the text it came from (a PARTUUID in lower case) and parses
    /// again to the same device.
    #[test]
    fn random_values_never_panic_and_what_parses_round_trips() {
        let mut rng = XorShift(0x1f83_d9ab_fb41_bd6b);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..FUZZ_ITERATIONS {
            let text = random_value(&mut rng);
            let outcome = match DeviceSpec::parse(&text) {
                Ok(spec) => {
                    let printed = spec.to_string();
                    match &spec {
                        DeviceSpec::PartUuid(_) => {
                            assert_eq!(
                                printed,
                                format!("{PARTUUID}{}", text[PARTUUID.len()..].to_lowercase())
                            )
                        }
                        _ => assert_eq!(printed, text),
                    }
                    assert_eq!(DeviceSpec::parse(&printed).as_ref(), Ok(&spec), "{text:?}");
                    kind(&spec)
                }
                Err(error) => {
                    assert!(!error.to_string().is_empty());
                    if let DeviceSpecError::Empty { prefix } = error {
                        assert_eq!(text, prefix);
                    }
                    format!("error {}", kind(&error))
                }
            };
            *kinds.entry(outcome).or_insert(0usize) += 1;
        }
        eprintln!("root= outcomes over {FUZZ_ITERATIONS} values: {kinds:?}");
        for expected in [
            "PartUuid",
            "PartLabel",
            "Uuid",
            "Label",
            "Path",
            "File",
            "error Unrecognized",
            "error Empty",
            "error PartUuid",
            "error PartNrOff",
        ] {
            assert!(
                kinds.contains_key(expected),
                "never saw {expected}: {kinds:?}"
            );
        }
    }
}

//! Boot counting in the file name of a Boot Loader Specification Type #2 entry (a UKI in
//! `EFI/Linux/`): `<stem>[+LEFT[-DONE]].efi`. systemd-boot renames the file before each try
//! of an entry that has a counter (`+3`, then `+2-1`, `+1-2`, `+0-3`), sorts an entry with
//! no tries left last, and systemd-bless-boot drops the counter once a boot was good. The
//! counter is the only record of whether an image is good, being tried, or has failed, so
//! this module reads a name exactly as systemd-boot does (`config_entry_parse_tries()`):
//!
//! - the counter is what follows the last `+` of the name, when all of it up to `.efi` is
//!   `LEFT` or `LEFT-DONE`: decimal digits (leading zeros allowed), at most `INT_MAX` each;
//! - anything else after the last `+` (`foo+bar`, `foo+3-`, a number above `INT_MAX`)
//!   means there is no counter, and the whole of it belongs to the stem.
//!
//! Unlike systemd-boot, which matches `.efi` in any case (the ESP is FAT), only the
//! lower-case suffix the tools write is accepted here, so a name parsed and printed back is
//! the name on disk. That round trip is byte for byte: a counter spelled `+3-0` or `+03`
//! prints as it was spelled (systemd reads both as three tries left), while the counters
//! this module writes ([`BootEntryFile::with_tries`]) are spelled the short way, `+3`.

use std::fmt;
use std::str::FromStr;

/// The suffix of a Type #2 entry.
pub const EFI_SUFFIX: &str = ".efi";
/// The largest count systemd-boot reads; a larger number is no counter at all.
pub const MAX_COUNT: u32 = i32::MAX as u32;

/// The tries an entry has left and has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootCounter {
    pub left: u32,
    pub done: u32,
}

impl fmt::Display for BootCounter {
    /// The short spelling: `+3` when no try was used, `+2-1` after one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.left)?;
        if self.done != 0 {
            write!(f, "-{}", self.done)?;
        }
        Ok(())
    }
}

/// The file name of a Type #2 entry: a stem and, while it is being tried, a counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BootEntryFile {
    stem: String,
    counter: Option<BootCounter>,
    /// The counter as the name spells it, `+` included; empty without a counter.
    counter_text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootEntryError {
    #[error("boot entry file name {name:?} contains a NUL")]
    Nul { name: String },
    #[error("boot entry file name {name:?} is a path, not a file name")]
    Path { name: String },
    #[error("boot entry file name {name:?} does not end in \".efi\"")]
    NotEfi { name: String },
    #[error("boot entry file name {name:?} has nothing before its counter and \".efi\"")]
    EmptyStem { name: String },
}

impl BootEntryFile {
    /// Reads a file name (not a path) of `EFI/Linux/`.
    pub fn parse(name: &str) -> Result<Self, BootEntryError> {
        let error_name = || name.to_owned();
        if name.contains('\0') {
            return Err(BootEntryError::Nul { name: error_name() });
        }
        if name.contains(['/', '\\']) {
            return Err(BootEntryError::Path { name: error_name() });
        }
        let body = name
            .strip_suffix(EFI_SUFFIX)
            .ok_or_else(|| BootEntryError::NotEfi { name: error_name() })?;
        let (stem, counter, counter_text) = match body.rfind('+') {
            Some(plus) => match parse_counter(&body[plus + 1..]) {
                Some(counter) => (&body[..plus], Some(counter), &body[plus..]),
                None => (body, None, ""),
            },
            None => (body, None, ""),
        };
        if stem.is_empty() {
            return Err(BootEntryError::EmptyStem { name: error_name() });
        }
        Ok(Self {
            stem: stem.to_owned(),
            counter,
            counter_text: counter_text.to_owned(),
        })
    }

    /// The name without counter and suffix: `xorbang_7` for `xorbang_7+2-1.efi`.
    pub fn stem(&self) -> &str {
        &self.stem
    }

    pub fn counter(&self) -> Option<BootCounter> {
        self.counter
    }

    /// No tries left: systemd-boot sorts the entry after all others and boots it only when
    /// nothing else is there.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|counter| counter.left == 0)
    }

    /// No counter: the entry booted well (or was never counted).
    pub fn is_blessed(&self) -> bool {
        self.counter.is_none()
    }

    /// The same entry with `tries` tries left and none used, as an installer names a new
    /// image; a count above [`MAX_COUNT`], which systemd-boot would not read as a counter,
    /// is written as [`MAX_COUNT`].
    pub fn with_tries(&self, tries: u32) -> Self {
        let counter = BootCounter {
            left: tries.min(MAX_COUNT),
            done: 0,
        };
        Self {
            stem: self.stem.clone(),
            counter: Some(counter),
            counter_text: counter.to_string(),
        }
    }

    /// The same entry without its counter, as systemd-bless-boot renames a good one. Like
    /// bless-boot's, the result of `foo+3+1.efi` is `foo+3.efi`, which counts again (and
    /// that of `+3+1.efi` is `+3.efi`, which [`parse`](Self::parse) refuses): a stem that
    /// ends in a counter is the installer's mistake, not one this rename can mend.
    pub fn blessed(&self) -> Self {
        Self {
            stem: self.stem.clone(),
            counter: None,
            counter_text: String::new(),
        }
    }
}

/// `LEFT` or `LEFT-DONE` and nothing else, as systemd-boot reads it.
fn parse_counter(text: &str) -> Option<BootCounter> {
    let (left, done) = match text.split_once('-') {
        Some((left, done)) => (count(left)?, count(done)?),
        None => (count(text)?, 0),
    };
    Some(BootCounter { left, done })
}

/// One or more decimal digits worth at most [`MAX_COUNT`].
fn count(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are allowed, so the length alone does not bound the value.
    let value = digits.trim_start_matches('0');
    if value.is_empty() {
        return Some(0);
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|&value| value <= MAX_COUNT)
}

impl FromStr for BootEntryFile {
    type Err = BootEntryError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

impl fmt::Display for BootEntryFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{EFI_SUFFIX}", self.stem, self.counter_text)
    }
}

/// The version in a stem named `<image_id>_<version>`, the way UKIs of an image are named
/// (`xorbang_7`), when the version is not empty.
pub fn image_version<'a>(stem: &'a str, image_id: &str) -> Option<&'a str> {
    if image_id.is_empty() {
        return None;
    }
    let version = stem.strip_prefix(image_id)?.strip_prefix('_')?;
    (!version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::XorShift;

    fn parse(name: &str) -> BootEntryFile {
        BootEntryFile::parse(name).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    fn counter(left: u32, done: u32) -> Option<BootCounter> {
        Some(BootCounter { left, done })
    }

    #[test]
    fn systemd_boots_series_of_names_parse_and_print_back() {
        let series = [
            ("foobar+3.efi", counter(3, 0)),
            ("foobar+2-1.efi", counter(2, 1)),
            ("foobar+1-2.efi", counter(1, 2)),
            ("foobar+0-3.efi", counter(0, 3)),
            ("foobar+4-0.efi", counter(4, 0)),
            ("foobar+03-001.efi", counter(3, 1)),
            ("foobar.efi", None),
        ];
        for (name, expected) in series {
            let entry = parse(name);
            assert_eq!(entry.stem(), "foobar", "{name}");
            assert_eq!(entry.counter(), expected, "{name}");
            assert_eq!(entry.to_string(), name);
            assert_eq!(name.parse(), Ok(entry));
        }
        assert!(parse("foobar+0-3.efi").is_bad());
        assert!(parse("foobar+0.efi").is_bad());
        assert!(!parse("foobar+1-2.efi").is_bad());
        assert!(!parse("foobar+1-2.efi").is_blessed());
        assert!(parse("foobar.efi").is_blessed());
        assert!(!parse("foobar.efi").is_bad());
    }

    #[test]
    fn only_a_whole_counter_after_the_last_plus_counts() {
        for (name, stem, expected) in [
            ("foo+bar.efi", "foo+bar", None),
            ("foo+bar+2.efi", "foo+bar", counter(2, 0)),
            ("foo+2+bar.efi", "foo+2+bar", None),
            ("foo+2-1+1.efi", "foo+2-1", counter(1, 0)),
            ("foo+.efi", "foo+", None),
            ("foo+3-.efi", "foo+3-", None),
            ("foo+-3.efi", "foo+-3", None),
            ("foo+3-1-1.efi", "foo+3-1-1", None),
            ("foo+3x.efi", "foo+3x", None),
            ("foo+ 3.efi", "foo+ 3", None),
            ("foo-3.efi", "foo-3", None),
            (
                "foo+2147483647-2147483647.efi",
                "foo",
                counter(MAX_COUNT, MAX_COUNT),
            ),
            ("foo+2147483648.efi", "foo+2147483648", None),
            ("foo+1-2147483648.efi", "foo+1-2147483648", None),
            ("foo+4294967296.efi", "foo+4294967296", None),
            ("foo+00000000000000000000007.efi", "foo", counter(7, 0)),
            (
                "foo+99999999999999999999999.efi",
                "foo+99999999999999999999999",
                None,
            ),
            ("xorbang_1.2~rc1+3.efi", "xorbang_1.2~rc1", counter(3, 0)),
        ] {
            let entry = parse(name);
            assert_eq!((entry.stem(), entry.counter()), (stem, expected), "{name}");
            assert_eq!(entry.to_string(), name);
        }
    }

    #[test]
    fn names_that_are_not_entries_are_refused_with_the_reason() {
        let refused = |name: &str| BootEntryFile::parse(name).expect_err(name).to_string();
        assert_eq!(
            refused("foo.EFI"),
            "boot entry file name \"foo.EFI\" does not end in \".efi\""
        );
        assert_eq!(
            refused("foo+3.conf"),
            "boot entry file name \"foo+3.conf\" does not end in \".efi\""
        );
        assert_eq!(
            refused("EFI/Linux/foo.efi"),
            "boot entry file name \"EFI/Linux/foo.efi\" is a path, not a file name"
        );
        assert!(matches!(
            BootEntryFile::parse("Linux\\foo.efi"),
            Err(BootEntryError::Path { .. })
        ));
        assert_eq!(
            refused("fo\0o.efi"),
            "boot entry file name \"fo\\0o.efi\" contains a NUL"
        );
        for empty in [".efi", "+3.efi", "+2-1.efi"] {
            assert_eq!(
                BootEntryFile::parse(empty),
                Err(BootEntryError::EmptyStem {
                    name: empty.to_owned()
                })
            );
        }
        // A `+` with no counter after it is part of the stem, so this one is not empty.
        assert_eq!(parse("+.efi").stem(), "+");
    }

    #[test]
    fn tries_are_set_in_the_short_spelling_and_blessing_drops_them() {
        let entry = parse("xorbang_7+0-3.efi");
        let retried = entry.with_tries(3);
        assert_eq!(retried.to_string(), "xorbang_7+3.efi");
        assert_eq!(retried.counter(), counter(3, 0));
        assert_eq!(parse("xorbang_7+3-0.efi").with_tries(3), retried);
        let blessed = entry.blessed();
        assert_eq!(blessed.to_string(), "xorbang_7.efi");
        assert!(blessed.is_blessed());
        assert_eq!(blessed.stem(), "xorbang_7");
        assert_eq!(parse("xorbang_7.efi"), blessed);
        assert_eq!(blessed.with_tries(0).to_string(), "xorbang_7+0.efi");
        assert!(blessed.with_tries(0).is_bad());
        assert_eq!(
            blessed.with_tries(u32::MAX).to_string(),
            "xorbang_7+2147483647.efi"
        );
        // Equal counters, different names: the spelling is part of the name.
        assert_ne!(parse("foo+3.efi"), parse("foo+3-0.efi"));
        // As systemd-bless-boot does: the rest of the stem counts again.
        assert_eq!(parse("foo+3+1.efi").blessed().to_string(), "foo+3.efi");
    }

    #[test]
    fn the_version_follows_the_image_id_and_an_underscore() {
        assert_eq!(image_version("xorbang_7", "xorbang"), Some("7"));
        assert_eq!(image_version("xorbang_1.2_3", "xorbang"), Some("1.2_3"));
        assert_eq!(image_version("my_os_2", "my_os"), Some("2"));
        assert_eq!(image_version("xorbang_", "xorbang"), None);
        assert_eq!(image_version("xorbang", "xorbang"), None);
        assert_eq!(image_version("xorbang-7", "xorbang"), None);
        assert_eq!(image_version("xorbangx_7", "xorbang"), None);
        assert_eq!(image_version("other_7", "xorbang"), None);
        assert_eq!(image_version("_7", ""), None);
    }

    /// systemd-boot's `config_entry_parse_tries()` restated the way its C reads, on bytes:
    /// the counter after the last `+`, numbers up to `INT_MAX`, then the suffix.
    fn systemd_boot_tries(name: &str) -> Option<(usize, u64, u64)> {
        let bytes = name.as_bytes();
        let plus = bytes.iter().rposition(|&byte| byte == b'+')?;
        let number = |mut at: usize| -> Option<(u64, usize)> {
            let start = at;
            let mut value: u64 = 0;
            while let Some(digit) = bytes.get(at).filter(|byte| byte.is_ascii_digit()) {
                value = value
                    .checked_mul(10)?
                    .checked_add(u64::from(digit - b'0'))?;
                at += 1;
            }
            (at > start && value <= i32::MAX as u64).then_some((value, at))
        };
        let (left, mut at) = number(plus + 1)?;
        let mut done = 0;
        if bytes.get(at) == Some(&b'-') {
            (done, at) = number(at + 1)?;
        }
        (&name[at..] == EFI_SUFFIX).then_some((plus, left, done))
    }

    /// Random names from the characters that matter: parsing never panics, agrees with
    /// systemd-boot's reading, and prints back byte for byte; the renames round trip.
    #[test]
    fn fuzz_names_never_panic_agree_with_systemd_boot_and_round_trip() {
        let mut rng = XorShift(0xb007_c0de_5eed_0002);
        let alphabet: Vec<char> = "ab_+-+-0123456789.~é".chars().collect();
        let refused = ['/', '\\', '\0'];
        let suffixes = [".efi", ".efi", ".efi", ".EFI", ".conf", ""];
        let mut counted = 0;
        for _ in 0..50_000 {
            let mut name = rng.text(&alphabet, 0, 12);
            if rng.one_in(20) {
                name.push(*rng.pick(&refused));
            }
            for _ in 0..rng.below(3) {
                let digits = rng.next_u64().to_string();
                let len = rng.range(1, 12).min(digits.len());
                name.push(*rng.pick(&['+', '+', '-']));
                name.push_str(&digits[..len]);
            }
            let suffix = *rng.pick(&suffixes);
            name.push_str(suffix);
            let Ok(entry) = BootEntryFile::parse(&name) else {
                continue;
            };
            assert_eq!(entry.to_string(), name);
            let expected = systemd_boot_tries(&name)
                .map(|(plus, left, done)| (&name[..plus], counter(left as u32, done as u32)));
            let expected = expected.unwrap_or((&name[..name.len() - 4], None));
            assert_eq!((entry.stem(), entry.counter()), expected, "{name:?}");
            if entry.counter().is_some() {
                counted += 1;
            }
            let tries = rng.next_u64() as u32 >> rng.below(32);
            let retried = entry.with_tries(tries);
            assert_eq!(BootEntryFile::parse(&retried.to_string()), Ok(retried));
            // The blessed name prints back too, unless the stem was a bare counter.
            let blessed = entry.blessed().to_string();
            match BootEntryFile::parse(&blessed) {
                Ok(reparsed) => assert_eq!(reparsed.to_string(), blessed),
                Err(error) => {
                    assert_eq!(error, BootEntryError::EmptyStem { name: blessed });
                    assert_eq!(
                        parse_counter(&entry.stem()[1..]).map(|_| '+'),
                        entry.stem().chars().next()
                    );
                }
            }
        }
        assert!(counted > 5_000, "{counted} names with a counter");
    }
}

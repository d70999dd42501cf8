//! Version comparison as the UAPI Version Format Specification defines it and systemd
//! implements it (`strverscmp_improved()`): systemd-boot sorts Type #2 entries by it and
//! boots the newest by default, so the updater must order images exactly as systemd-boot
//! will, or the image it believes newest is not the one that boots.
//!
//! Both strings are read as segments: runs of ASCII digits (compared as numbers, leading
//! zeros ignored) and runs of ASCII letters (compared byte by byte, so `A < a`), each
//! possibly prefixed by one of `~-^.`. Other characters (`_`, `+`, non-ASCII letters and
//! digits) only separate segments. A prefix sorts its string lower than a string without
//! one at that point: `~` lower than anything, even the end of the string (`1~rc1 < 1`),
//! then `-`, `^` and `.`, each checked in that order; a number sorts higher than a word;
//! and otherwise the string with segments left is the newer (`1.0 < 1.0.1`, `1.0 < 1.0^`).
//!
//! Where the specification's prose and examples disagree with systemd's code, this follows
//! the code, since that is what sorts the entries: the specification checks for the end of
//! a string before `~` and lists `'' < '~'` and `0 < ~`, while systemd (and its tests) put
//! `~` first, so `~ < ''` and `~ < 0` here, consistently with `1~rc1 < 1`. A NUL ends a
//! string, as it does in C.

use std::cmp::Ordering;

/// How `a` compares to `b`: `Less` when `a` is the older version.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut a = up_to_nul(a.as_bytes());
    let mut b = up_to_nul(b.as_bytes());
    loop {
        skip_separators(&mut a);
        skip_separators(&mut b);
        if let Some(order) = compare_prefix(&mut a, &mut b, b'~') {
            return order;
        }
        if a.is_empty() || b.is_empty() {
            // The one with segments left is newer.
            return a.is_empty().cmp(&b.is_empty()).reverse();
        }
        for prefix in [b'-', b'^', b'.'] {
            if let Some(order) = compare_prefix(&mut a, &mut b, prefix) {
                return order;
            }
        }
        let order = if starts_with_digit(a) || starts_with_digit(b) {
            compare_numbers(
                take_while(&mut a, u8::is_ascii_digit),
                take_while(&mut b, u8::is_ascii_digit),
            )
        } else {
            // Byte order on the common length, then the longer is newer: `abc < abcd`.
            take_while(&mut a, u8::is_ascii_alphabetic)
                .cmp(take_while(&mut b, u8::is_ascii_alphabetic))
        };
        if order.is_ne() {
            return order;
        }
    }
}

fn up_to_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&byte| byte == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

fn is_version_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'~' | b'-' | b'^' | b'.')
}

fn skip_separators(text: &mut &[u8]) {
    let start = text
        .iter()
        .position(|&byte| is_version_char(byte))
        .unwrap_or(text.len());
    *text = &text[start..];
}

fn starts_with_digit(text: &[u8]) -> bool {
    text.first().is_some_and(u8::is_ascii_digit)
}

/// When either string starts with `prefix`, the one without it wins (`Some`); when both do,
/// both lose it and the comparison goes on (`None`).
fn compare_prefix(a: &mut &[u8], b: &mut &[u8], prefix: u8) -> Option<Ordering> {
    let a_has = a.first() == Some(&prefix);
    let b_has = b.first() == Some(&prefix);
    if !a_has && !b_has {
        return None;
    }
    if a_has != b_has {
        return Some(if a_has {
            Ordering::Less
        } else {
            Ordering::Greater
        });
    }
    *a = &a[1..];
    *b = &b[1..];
    None
}

/// The leading bytes of `text` that satisfy `keep`, which `text` then no longer holds.
fn take_while<'a>(text: &mut &'a [u8], keep: fn(&u8) -> bool) -> &'a [u8] {
    let end = text
        .iter()
        .position(|byte| !keep(byte))
        .unwrap_or(text.len());
    let (taken, rest) = text.split_at(end);
    *text = rest;
    taken
}

/// Digit runs as numbers of any length: a number is newer than none (a word), then the
/// one with more significant digits, then the larger.
fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let present = (!a.is_empty()).cmp(&!b.is_empty());
    if present.is_ne() {
        return present;
    }
    let a = strip_zeros(a);
    let b = strip_zeros(b);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn strip_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&digit| digit != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::XorShift;
    use Ordering::{Equal, Greater, Less};

    #[track_caller]
    fn check(a: &str, b: &str, expected: Ordering) {
        assert_eq!(compare_versions(a, b), expected, "{a:?} vs {b:?}");
        assert_eq!(compare_versions(b, a), expected.reverse(), "{b:?} vs {a:?}");
    }

    #[test]
    fn the_specifications_examples() {
        for (a, b, expected) in [
            ("11", "11", Equal),
            ("systemd-123", "systemd-123", Equal),
            ("bar-123", "foo-123", Less),
            ("123a", "123", Greater),
            ("123.a", "123", Greater),
            ("123.a", "123.b", Less),
            ("123a", "123.a", Greater),
            ("11α", "11β", Equal),
            ("A", "a", Less),
            ("", "0", Less),
            ("0.", "0", Greater),
            ("0.0", "0", Greater),
            ("1_", "1", Equal),
            ("_1", "1", Equal),
            ("1_", "1.2", Less),
            ("1_2_3", "1.3.3", Greater),
            ("1+", "1", Equal),
            ("+1", "1", Equal),
            ("1+", "1.2", Less),
            ("1+2+3", "1.3.3", Greater),
        ] {
            check(a, b, expected);
        }
        // The two examples where systemd's code (and its tests) and the specification's
        // list disagree: `~` is older than anything, as in `1~rc1 < 1`.
        check("~", "0", Less);
        check("~", "", Less);
    }

    #[test]
    fn the_examples_of_the_brief() {
        check("11", "102", Less);
        check("1.0~rc1", "1.0", Less);
        check("1.0", "1.0.1", Less);
        check("1.0^", "1.0", Greater);
        check("1.0^", "1.0.1", Less);
        check("a", "b", Less);
        check("1_0", "10", Less);
    }

    /// systemd's `test-string-util.c`, `TEST(strverscmp_improved)`: each is older than
    /// every one after it.
    const SYSTEMD_ORDER: [&str; 24] = [
        "~1",
        "",
        "ab",
        "abb",
        "abc",
        "0001",
        "002",
        "12",
        "122",
        "122.9",
        "123~rc1",
        "123",
        "123-a",
        "123-a.1",
        "123-a1",
        "123-a1.1",
        "123-3",
        "123-3.1",
        "123^patch1",
        "123^1",
        "123.a-1",
        "123.1-1",
        "123a-1",
        "124",
    ];

    #[test]
    fn systemds_own_tests() {
        for (index, older) in SYSTEMD_ORDER.iter().enumerate() {
            check(older, older, Equal);
            for newer in &SYSTEMD_ORDER[index + 1..] {
                check(older, newer, Less);
            }
        }
        for (older, newer) in [
            ("123.45-67.88", "123.45-67.89"),
            ("123.45-67.89", "123.45-67.89a"),
            ("123.45-67.ab", "123.45-67.89"),
            ("123.45-67.9", "123.45-67.89"),
            ("123.45-67", "123.45-67.89"),
            ("123.45-66.89", "123.45-67.89"),
            ("123.45-9.99", "123.45-67.89"),
            ("123.42-99.99", "123.45-67.89"),
            ("123-99.99", "123.45-67.89"),
            ("123~rc1-99.99", "123.45-67.89"),
            ("123~rc1-99.99", "123-45.67.89"),
            ("123~rc1-99.99", "123~rc2-67.89"),
            ("123~rc1-99.99", "123^aa2-67.89"),
            ("123~rc1-99.99", "123aa2-67.89"),
            ("123-99.99", "123^aa2-67.89"),
            ("123-99.99", "123aa2-67.89"),
            ("123^45-67.89", "123.45-67.89"),
            ("123^aa1-99.99", "123^aa2-67.89"),
            ("123^aa2-67.89", "123aa2-67.89"),
            ("123.aa2-67.89", "123aa2-67.89"),
            ("123.aa2-67.89", "123.ab2-67.89"),
        ] {
            check(older, newer, Less);
        }
        check("123_aa2-67.89", "123aa+2-67.89", Equal);
        check("123.", "123", Greater);
        check("12_3", "123", Less);
        check("12_3", "12", Greater);
        check("12_3", "12.3", Greater);
        check("123.0", "123", Greater);
        check("123_0", "123", Greater);
        check("123..0", "123.0", Less);
        for (a, b) in [("0_", "0"), ("_0_", "0"), ("_0", "0"), ("0", "0___")] {
            check(a, b, Equal);
        }
        check("", "_", Equal);
        check("_", "_", Equal);
        check("~", "~", Equal);
        check("1٠١٢٣٤٥٦٧٨٩", "1", Equal);
        check("1๐๑๒๓๔๕๖๗๘๙", "1", Equal);
    }

    /// rpm's `rpmvercmp.at` cases as systemd's `TEST(strverscmp_improved_rpm)` keeps them,
    /// with its notes where the two differ.
    #[test]
    fn rpms_cases_as_systemd_keeps_them() {
        for (a, b, expected) in [
            ("1.0", "2.0", Less),
            ("2.0", "2.0.1", Less),
            ("2.0.1a", "2.0.1", Greater),
            ("5.5p1", "5.5p2", Less),
            ("5.5p1", "5.5p10", Less),
            ("10xyz", "10.1xyz", Greater), // reversed from rpm
            ("xyz10", "xyz10.1", Less),
            ("xyz.4", "8", Less),
            ("xyz.4", "2", Less),
            ("5.5p2", "5.6p1", Less),
            ("5.6p1", "6.5p1", Less),
            ("6.0.rc1", "6.0", Greater),
            ("10b2", "10a1", Greater),
            ("10a2", "10b2", Less),
            ("1.0a", "1.0aa", Less),
            ("10.0001", "10.1", Equal),
            ("10.0001", "10.0039", Less),
            ("4.999.9", "5.0", Less),
            ("20101121", "20101122", Less),
            ("2.0", "2_0", Less), // equal in rpm
            ("a+", "a_", Equal),
            ("+a", "_a", Equal),
            ("_+", "+_", Equal),
            ("+", "_", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~rc1~git123", "1.0~rc1", Less),
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0^git2", Less),
            ("1.0^git1", "1.01", Less),
            ("1.0^20160101", "1.0.1", Less),
            ("1.0^20160102", "1.0^20160101^git1", Greater),
            ("1.0~rc1^git1", "1.0~rc1", Greater),
            ("1.0^git1", "1.0^git1~pre", Greater),
            ("1b.fc17", "1.fc17", Greater), // reversed from rpm
            ("1g.fc17", "1.fc17", Greater),
            ("1.1.α", "1.1.β", Equal),
            ("1.1.αα", "1.1.α", Equal),
            ("1.1.ββ", "1.1.αα", Equal),
        ] {
            check(a, b, expected);
            check(a, a, Equal);
        }
    }

    #[test]
    fn numbers_of_any_length_compare_by_value() {
        check("18446744073709551616", "18446744073709551615", Greater);
        check("0000000000000000000000001", "1", Equal);
        check(
            "99999999999999999999999999",
            "100000000000000000000000000",
            Less,
        );
        check("1\0x", "1", Equal);
    }

    fn random_version(rng: &mut XorShift) -> String {
        let alphabet: Vec<char> = "0012789aAbz~-^._+é\0".chars().collect();
        rng.text(&alphabet, 0, 10)
    }

    /// Random strings: the comparison is reflexive and antisymmetric, never panics, and is
    /// a total order (sorting a set leaves every pair in order).
    #[test]
    fn fuzz_the_comparison_is_a_total_order() {
        let mut rng = XorShift(0x7e55_1011_ab1e_0003);
        for _ in 0..100_000 {
            let a = random_version(&mut rng);
            let b = random_version(&mut rng);
            assert_eq!(compare_versions(&a, &a), Equal, "{a:?}");
            assert_eq!(
                compare_versions(&a, &b),
                compare_versions(&b, &a).reverse(),
                "{a:?} vs {b:?}"
            );
        }
        for _ in 0..200 {
            let mut versions: Vec<String> = (0..40).map(|_| random_version(&mut rng)).collect();
            versions.sort_by(|a, b| compare_versions(a, b));
            for (index, older) in versions.iter().enumerate() {
                for newer in &versions[index + 1..] {
                    assert_ne!(
                        compare_versions(older, newer),
                        Greater,
                        "{older:?} vs {newer:?} in {versions:?}"
                    );
                }
            }
        }
    }
}

//! Detached minisign signatures (`FILE.minisig`) checked against the public keys the verified
//! base image pins (`/usr/lib/xorbang/keys/*.pub`, minisign's own `.pub` format). This is
//! what lifts a file from untrusted storage (a config partition, the ESP, fw_cfg, an update
//! bundle) to `signed`. The cryptography is `minisign-verify`'s (Ed25519 over BLAKE2b-512,
//! no dependencies); this module adds the key set and errors that say which key and why.

use std::fmt;

use minisign_verify::{Error as MinisignError, PublicKey, Signature};

/// Where the verified base image keeps the keys it trusts.
pub const KEYS_DIR: &str = "usr/lib/xorbang/keys";
/// The suffix of a detached signature, as minisign writes it.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// Far above a real `.pub` (two lines, about 100 bytes) or `.minisig` (four lines, about 300).
pub const MAX_KEY_OR_SIGNATURE_BYTES: u64 = 4096;

/// A public key and the file name it was pinned under (`release.pub`), for messages.
#[derive(Clone)]
pub struct PinnedKey {
    pub name: String,
    key: PublicKey,
}

impl fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedKey")
            .field("name", &self.name)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {name}: not a minisign public key (an untrusted comment line, then the base64 key)")]
pub struct KeyError {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is not in minisign's format")]
    Malformed,
    #[error("the base image pins no keys in /{KEYS_DIR}")]
    NoKeys,
    #[error("signed by a key the base image does not pin (pinned: {pinned})")]
    UnknownKey { pinned: String },
    #[error("the signature by key {key} does not match the file")]
    Mismatch { key: String },
    #[error("legacy (not prehashed) minisign signatures are not accepted")]
    Legacy,
}

impl PinnedKey {
    /// Parses a `.pub` file's text.
    pub fn parse(name: &str, text: &str) -> Result<Self, KeyError> {
        let error = || KeyError {
            name: name.to_owned(),
        };
        let mut lines = text.lines();
        let comment = lines.next().ok_or_else(error)?;
        if !comment.starts_with("untrusted comment:") {
            return Err(error());
        }
        let key =
            PublicKey::from_base64(lines.next().ok_or_else(error)?.trim()).map_err(|_| error())?;
        if lines.any(|line| !line.trim().is_empty()) {
            return Err(error());
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

/// Checks `signature` (a `.minisig` file's text) over `data` against every pinned key, and
/// returns the name of the key that made it.
pub fn verify<'k>(
    keys: &'k [PinnedKey],
    data: &[u8],
    signature: &str,
) -> Result<&'k str, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let signature = Signature::decode(signature).map_err(|_| SignatureError::Malformed)?;
    for pinned in keys {
        match pinned.key.verify(data, &signature, false) {
            Ok(()) => return Ok(&pinned.name),
            Err(MinisignError::UnexpectedKeyId) => continue,
            Err(MinisignError::UnexpectedAlgorithm) => return Err(SignatureError::Legacy),
            Err(_) => {
                return Err(SignatureError::Mismatch {
                    key: pinned.name.clone(),
                })
            }
        }
    }
    Err(SignatureError::UnknownKey {
        pinned: keys
            .iter()
            .map(|key| key.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A known answer: a signature made with minisign over a fixed message by a key whose secret
/// half was thrown away. [`self_test`] checks that it verifies and that a changed message
/// does not; a build whose signature code fails it must not trust any signature.
const SELF_TEST_KEY: &str = include_str!("../testdata/test.pub");
const SELF_TEST_MESSAGE: &[u8] = include_bytes!("../testdata/msg");
const SELF_TEST_SIGNATURE: &str = include_str!("../testdata/msg.minisig");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelfTestError {
    #[error("the known-answer signature does not verify")]
    Rejected(#[source] SignatureError),
    #[error("a signature over a changed message verifies")]
    Accepted,
    #[error("the known-answer key does not parse")]
    Key(#[source] KeyError),
}

/// Checks the signature code against the known answer.
pub fn self_test() -> Result<(), SelfTestError> {
    let keys = [PinnedKey::parse("self-test.pub", SELF_TEST_KEY).map_err(SelfTestError::Key)?];
    verify(&keys, SELF_TEST_MESSAGE, SELF_TEST_SIGNATURE).map_err(SelfTestError::Rejected)?;
    let mut changed = SELF_TEST_MESSAGE.to_vec();
    changed[0] ^= 1;
    match verify(&keys, &changed, SELF_TEST_SIGNATURE) {
        Ok(_) => Err(SelfTestError::Accepted),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::XorShift;

    // Made with `minisign -G -W -p test.pub -s test.key` and `minisign -S -s test.key -m msg`
    // where msg is MESSAGE; the secret key is not kept.
    const KEY: &str = include_str!("../testdata/test.pub");
    const OTHER_KEY: &str = include_str!("../testdata/other.pub");
    const MESSAGE: &[u8] = include_bytes!("../testdata/msg");
    const SIGNATURE: &str = include_str!("../testdata/msg.minisig");

    fn keys() -> Vec<PinnedKey> {
        vec![
            PinnedKey::parse("other.pub", OTHER_KEY).expect("other"),
            PinnedKey::parse("test.pub", KEY).expect("test"),
        ]
    }

    #[test]
    fn the_self_test_passes() {
        assert_eq!(self_test(), Ok(()));
    }

    #[test]
    fn a_valid_signature_names_its_key() {
        assert_eq!(verify(&keys(), MESSAGE, SIGNATURE), Ok("test.pub"));
    }

    #[test]
    fn a_changed_byte_unknown_key_or_no_keys_are_refused() {
        let mut changed = MESSAGE.to_vec();
        changed[0] ^= 1;
        assert_eq!(
            verify(&keys(), &changed, SIGNATURE),
            Err(SignatureError::Mismatch {
                key: "test.pub".into()
            })
        );
        let only_other = &keys()[..1];
        assert_eq!(
            verify(only_other, MESSAGE, SIGNATURE),
            Err(SignatureError::UnknownKey {
                pinned: "other.pub".into()
            })
        );
        assert_eq!(verify(&[], MESSAGE, SIGNATURE), Err(SignatureError::NoKeys));
        assert_eq!(
            verify(&keys(), MESSAGE, "garbage"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn keys_must_be_minisign_public_keys() {
        for bad in [
            "",
            "untrusted comment: x\n",
            "hello\nRWQ\n",
            "untrusted comment: x\n!!!\n",
        ] {
            assert!(PinnedKey::parse("bad.pub", bad).is_err(), "{bad:?}");
        }
        let trailing = format!("{KEY}extra line\n");
        assert!(PinnedKey::parse("t.pub", &trailing).is_err());
    }

    /// Each run verifies up to two Ed25519 signatures: slow in a debug build.
    const FUZZ_RUNS: usize = 2_000;

    /// Mutated signatures, keys and messages: never a panic, and never accepted unless the
    /// mutation left the signed bytes as they were.
    #[test]
    fn fuzz_mutations_are_refused_without_panics() {
        let mut rng = XorShift(0x243f_6a88_85a3_08d3);
        let keys = keys();
        let mut accepted = 0;
        for _ in 0..FUZZ_RUNS {
            let mut signature = SIGNATURE.as_bytes().to_vec();
            let mut message = MESSAGE.to_vec();
            let target = if rng.one_in(2) {
                &mut signature
            } else {
                &mut message
            };
            for _ in 0..rng.range(1, 4) {
                let at = rng.below(target.len());
                match rng.below(3) {
                    0 => target[at] ^= 1 << rng.below(8),
                    1 => {
                        target.remove(at);
                    }
                    _ => target.insert(at, *rng.pick(b"\n =+/AZaz09")),
                }
            }
            let text = String::from_utf8_lossy(&signature);
            if verify(&keys, &message, &text).is_ok() {
                assert_eq!(message, MESSAGE, "a changed message was accepted");
                accepted += 1;
            }
            let mut key = KEY.as_bytes().to_vec();
            let at = rng.below(key.len());
            key[at] ^= 1 << rng.below(8);
            // A flipped bit in the comment or the final newline may keep the key; one in the key
            // itself must not verify.
            if let Ok(parsed) = PinnedKey::parse("fuzz.pub", &String::from_utf8_lossy(&key)) {
                // The first three base64 characters carry the algorithm, where minisign
                // accepts both `Ed` and `ED`: a flip there may name the same key.
                let key_line = KEY.find('\n').expect("two lines") + 4..KEY.trim_end().len();
                if key_line.contains(&at) {
                    assert!(verify(&[parsed], MESSAGE, SIGNATURE).is_err());
                }
            }
        }
        // Only mutations of the untrusted comment (or a no-op) keep a signature valid.
        assert!(accepted < FUZZ_RUNS / 2, "{accepted}");
    }
}

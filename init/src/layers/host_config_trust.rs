//! Which host config this boot may apply (PRODUCT.md's trust model). Production accepts a
//! source at least as trusted as `xorbang.config.trust=` (default `local`); a valid detached
//! signature by a key the verified base pins lifts any source to `signed`; `signed` and
//! `platform` configs may use the whole schema, a `local` one only hostname, timezone and
//! network. Dev mode accepts everything, saying what production would refuse.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::host_config_source::Candidate;
use crate::untrusted;
use xorbang_formats::boot_report::{ConfigTrust, Mode};
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::host_config::{self, HostConfig};
use xorbang_formats::signature::{
    self, PinnedKey, SelfTestError, KEYS_DIR, MAX_KEY_OR_SIGNATURE_BYTES,
};

/// What the command line allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub minimum: ConfigTrust,
}

/// A host config this boot applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub origin: String,
    pub trust: ConfigTrust,
    pub signed_by: Option<String>,
    /// What reading the pinned keys and checking the signature took (the bench reports it).
    pub signature_check: Option<Duration>,
    pub config: HostConfig,
}

/// What checking a signature needs: the keys the verified base pins, read when the first
/// signature needs them (a boot without one never reads them), and the signature code's
/// known-answer self-test, started in the background while the init waits for devices when
/// the machine has a CPU to spare (on one CPU the thread would only take its time from the
/// boot, so the test runs before the first signature check instead). Under emulation most
/// of a first check's cost is running its code for the first time, which the self-test does
/// off the critical path; a failed self-test trusts no signature.
/// [`PinnedKeys::finish`] (or dropping it) waits for the self-test, which the boot does after
/// the layers stage, so no thread reaches switch_root.
pub struct PinnedKeys {
    self_test: Option<Background<Result<(), SelfTestError>>>,
    /// The verified base's root; `None` when it is not verified (its keys count for
    /// nothing).
    base: Option<PathBuf>,
    ready: Option<Vec<PinnedKey>>,
}

/// Work started on a thread, or to do when it is needed when no thread could be started.
enum Background<T> {
    Running(JoinHandle<T>),
    Later(Box<dyn FnOnce() -> T + Send>),
}

impl<T: Send + 'static> Background<T> {
    /// On a thread when there is more than one CPU; otherwise when it is needed.
    fn start(name: &str, work: impl FnOnce() -> T + Send + Clone + 'static) -> Self {
        // The CPUs this process may run on; std's available_parallelism would also parse
        // the cgroup files for a quota, which PID 1 of an initramfs has none of.
        let cpus = rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count());
        if cpus < 2 {
            return Self::Later(Box::new(work));
        }
        match std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(work.clone())
        {
            Ok(handle) => Self::Running(handle),
            Err(error) => {
                log::warn!("cannot start the {name} thread ({error}); doing it when needed");
                Self::Later(Box::new(work))
            }
        }
    }

    /// The result; `None` when the thread panicked.
    fn wait(self) -> Option<T> {
        match self {
            Self::Running(handle) => handle.join().ok(),
            Self::Later(work) => Some(work()),
        }
    }
}

impl PinnedKeys {
    /// Starts the self-test; the keys' place comes with [`Self::read_keys_of`].
    pub fn start() -> Self {
        Self {
            self_test: Some(Background::start(
                "signature-self-test",
                signature::self_test,
            )),
            base: None,
            ready: None,
        }
    }

    /// The base mounted at `base` holds the keys; an unverified base's keys count for
    /// nothing.
    pub fn read_keys_of(&mut self, base: &Path, verified: bool) {
        self.base = verified.then(|| base.to_owned());
    }

    fn get(&mut self) -> &[PinnedKey] {
        if self.ready.is_none() {
            let keys = match self.self_test_passed() {
                true => self.read_keys(),
                false => Vec::new(),
            };
            self.ready = Some(keys);
        }
        self.ready.as_deref().unwrap_or_default()
    }

    fn read_keys(&self) -> Vec<PinnedKey> {
        match &self.base {
            Some(base) => pinned_keys(base),
            None => {
                log::warn!("the base image is not verified: its keys sign no host config");
                Vec::new()
            }
        }
    }

    /// Waits for the self-test (once); says why no signature is trusted when it failed.
    fn self_test_passed(&mut self) -> bool {
        let Some(self_test) = self.self_test.take() else {
            return true;
        };
        match self_test.wait() {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                log::error!(
                    "signature self-test: {}; no signature is trusted",
                    error_chain(&error)
                );
                false
            }
            None => {
                log::error!("signature self-test panicked; no signature is trusted");
                false
            }
        }
    }

    /// Waits for the self-test if it still runs: before switch_root, nothing may be left.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for PinnedKeys {
    fn drop(&mut self) {
        if let Some(Background::Running(handle)) = self.self_test.take() {
            if handle.join().is_err() {
                log::error!("signature self-test panicked");
            }
        }
    }
}

/// Decides one candidate: accepted, or the one-line reason it is refused.
pub fn judge(
    candidate: Candidate,
    keys: &mut PinnedKeys,
    policy: Policy,
) -> Result<Accepted, String> {
    let mut trust = candidate.trust;
    let mut signed_by = None;
    let mut signature_check = None;
    if let Some(signature) = &candidate.signature {
        let started = Instant::now();
        let verified = signature::verify(keys.get(), candidate.text.as_bytes(), signature);
        signature_check = Some(started.elapsed());
        match verified {
            Ok(key) => {
                trust = ConfigTrust::Signed;
                signed_by = Some(key.to_owned());
            }
            Err(error) => waive(policy, format!("signature: {}", error_chain(&error)))?,
        }
    }
    let config = host_config::parse(&candidate.text).map_err(|error| error_chain(&error))?;
    if trust < policy.minimum {
        waive(
            policy,
            format!(
                "a {trust} source, and xorbang.config.trust={} accepts only {} ones",
                policy.minimum,
                at_least(policy.minimum)
            ),
        )?;
    }
    if trust == ConfigTrust::Local {
        if let Err(error) = host_config::check_local_keys(&candidate.text) {
            waive(policy, error_chain(&error))?;
        }
    }
    Ok(Accepted {
        origin: candidate.origin,
        trust,
        signed_by,
        signature_check,
        config,
    })
}

/// A refusal production keeps; dev mode logs it and goes on.
fn waive(policy: Policy, reason: String) -> Result<(), String> {
    match policy.mode {
        Mode::Production => Err(reason),
        Mode::Dev => {
            log::warn!("host config: {reason}; accepted only because this is dev mode");
            Ok(())
        }
    }
}

fn at_least(minimum: ConfigTrust) -> &'static str {
    match minimum {
        ConfigTrust::Local => "local, platform or signed",
        ConfigTrust::Platform => "platform or signed",
        ConfigTrust::Signed => "signed",
    }
}

/// The keys the verified base image pins. An unreadable or malformed key file is logged and
/// left out: it can only make fewer configs signed.
fn pinned_keys(base: &Path) -> Vec<PinnedKey> {
    let dir = base.join(KEYS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            log::error!(
                "cannot list {}: {}; no pinned keys",
                dir.display(),
                error_chain(&error)
            );
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".pub"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let parsed =
                untrusted::read_beneath(&dir, Path::new(&name), MAX_KEY_OR_SIGNATURE_BYTES)
                    .map_err(|error| error_chain(&error))
                    .and_then(|bytes| {
                        let text = String::from_utf8(bytes.unwrap_or_default())
                            .map_err(|_| format!("{name} is not text"))?;
                        PinnedKey::parse(&name, &text).map_err(|error| error_chain(&error))
                    });
            parsed
                .map_err(|error| log::error!("pinned key {}: {error}; left out", dir.display()))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../../formats/testdata/test.pub");
    const SIGNED: &str = include_str!("../../../formats/testdata/msg");
    const SIGNATURE: &str = include_str!("../../../formats/testdata/msg.minisig");
    const FULL: &str =
        "version = 1\nhostname = \"h\"\n[[files]]\npath = \"/etc/motd\"\ncontent = \"x\"\n";

    fn candidate(text: &str, trust: ConfigTrust, signature: Option<&str>) -> Candidate {
        Candidate {
            origin: "test".into(),
            trust,
            text: text.into(),
            signature: signature.map(str::to_owned),
        }
    }

    fn production(minimum: ConfigTrust) -> Policy {
        Policy {
            mode: Mode::Production,
            minimum,
        }
    }

    /// The test key, as a verified base that pins it gives it.
    fn keys() -> PinnedKeys {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join(KEYS_DIR);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("test.pub"), KEY).expect("write");
        let mut keys = PinnedKeys::start();
        keys.read_keys_of(base.path(), true);
        keys.get();
        keys
    }

    /// An unverified base: whatever it holds signs nothing.
    fn no_keys() -> PinnedKeys {
        let mut keys = PinnedKeys::start();
        keys.read_keys_of(Path::new("/nonexistent"), false);
        keys
    }

    #[test]
    fn local_configs_are_restricted_in_production_only() {
        let refused = judge(
            candidate(FULL, ConfigTrust::Local, None),
            &mut keys(),
            production(ConfigTrust::Local),
        )
        .expect_err("files");
        assert!(
            refused.starts_with("line 3, column 3: \"files\" is not allowed"),
            "{refused}"
        );
        let platform = judge(
            candidate(FULL, ConfigTrust::Platform, None),
            &mut keys(),
            production(ConfigTrust::Local),
        )
        .expect("platform may use everything");
        assert_eq!(platform.trust, ConfigTrust::Platform);
        let dev = Policy {
            mode: Mode::Dev,
            minimum: ConfigTrust::Signed,
        };
        assert!(judge(candidate(FULL, ConfigTrust::Local, None), &mut keys(), dev).is_ok());
    }

    #[test]
    fn a_valid_signature_makes_any_source_signed() {
        let accepted = judge(
            candidate(SIGNED, ConfigTrust::Local, Some(SIGNATURE)),
            &mut keys(),
            production(ConfigTrust::Signed),
        )
        .expect("signed");
        assert_eq!(
            (accepted.trust, accepted.signed_by.as_deref()),
            (ConfigTrust::Signed, Some("test.pub"))
        );
        let mut flipped = SIGNED.to_owned();
        flipped.insert(0, ' ');
        let refused = judge(
            candidate(&flipped, ConfigTrust::Local, Some(SIGNATURE)),
            &mut keys(),
            production(ConfigTrust::Local),
        )
        .expect_err("changed");
        assert_eq!(
            refused,
            "signature: the signature by key test.pub does not match the file"
        );
        let no_keys = judge(
            candidate(SIGNED, ConfigTrust::Local, Some(SIGNATURE)),
            &mut no_keys(),
            production(ConfigTrust::Local),
        )
        .expect_err("no keys");
        assert!(no_keys.contains("pins no keys"), "{no_keys}");
    }

    #[test]
    fn the_command_line_narrows_the_accepted_sources() {
        let refused = judge(
            candidate(SIGNED, ConfigTrust::Platform, None),
            &mut keys(),
            production(ConfigTrust::Signed),
        )
        .expect_err("platform");
        assert_eq!(
            refused,
            "a platform source, and xorbang.config.trust=signed accepts only signed ones"
        );
    }

    #[test]
    fn keys_come_from_the_base_image() {
        let base = tempfile::tempdir().expect("tempdir");
        assert!(pinned_keys(base.path()).is_empty());
        let dir = base.path().join(KEYS_DIR);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("release.pub"), KEY).expect("write");
        std::fs::write(dir.join("broken.pub"), "nonsense").expect("write");
        std::fs::write(dir.join("README"), "not a key").expect("write");
        let keys = pinned_keys(base.path());
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].name, "release.pub");
    }

    /// Mutated configs and signatures from every source under every policy: never a panic,
    /// and nothing production accepts breaks the rules (signed only for the signed bytes,
    /// never below the minimum, a local config only with local keys).
    #[test]
    fn fuzz_decisions_keep_the_trust_rules() {
        use xorbang_formats::fixtures::XorShift;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut keys = keys();
        let sources = [
            ConfigTrust::Local,
            ConfigTrust::Platform,
            ConfigTrust::Signed,
        ];
        let texts = [SIGNED, FULL];
        let mut accepted = 0;
        for _ in 0..400 {
            let mut text = rng.pick(&texts).as_bytes().to_vec();
            if rng.one_in(2) {
                let at = rng.below(text.len());
                text[at] = *rng.pick(b"\n =\"[]ab1");
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            let mut signature = SIGNATURE.as_bytes().to_vec();
            if rng.one_in(3) {
                let at = rng.below(signature.len());
                signature[at] ^= 1 << rng.below(8);
            }
            let signature = rng
                .one_in(2)
                .then(|| String::from_utf8_lossy(&signature).into_owned());
            let policy = production(*rng.pick(&sources));
            let source = *rng.pick(&sources);
            let Ok(decided) = judge(
                candidate(&text, source, signature.as_deref()),
                &mut keys,
                policy,
            ) else {
                continue;
            };
            accepted += 1;
            assert!(decided.trust >= policy.minimum, "{text:?}");
            if decided.signed_by.is_some() {
                assert_eq!(text, SIGNED);
            }
            if decided.trust == ConfigTrust::Local {
                assert!(host_config::check_local_keys(&text).is_ok(), "{text:?}");
            }
        }
        assert!(accepted > 0);
    }
}

//! The runner's configuration, all from the environment so CI and people set it the same way.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `XORBANG_CACHE` | kernel, rootfs and image cache (outside the repo) | `$XDG_CACHE_HOME/xorbang` or `~/.cache/xorbang` |
//! | `XORBANG_ACCEL` | `kvm`, `tcg` or `auto` (probe KVM, fall back to TCG) | `auto` |
//! | `XORBANG_QEMU` | QEMU binary | `qemu-system-x86_64` |
//! | `XORBANG_TIMEOUT_SCALE` | multiplies every VM timeout (slow machines) | `1` |
//! | `XORBANG_JOBS` | VMs run at once | `2` |
//! | `XORBANG_BENCH_RUNS` | boots per benchmark | `3` |
//! | `XORBANG_NETBOOT` | `rig` (a private network namespace) or `user` (QEMU's user-mode network, the fallback where namespaces cannot be made) | `rig` |
//! | `XORBANG_KERNEL` | the kernel every scenario boots: `debian` (Debian's, with its modules in the initramfs) or `custom` (the one kernel-config/ builds, everything built in) | `debian` |

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub qemu: String,
    pub accel: Accel,
    pub timeout_scale: f64,
    pub jobs: usize,
    pub bench_runs: usize,
    /// Netboot scenarios on QEMU's user-mode network even where a rig could be made.
    pub netboot_user_mode: bool,
}

/// Which kernel the scenarios boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    Debian,
    Custom,
}

/// `XORBANG_KERNEL`.
pub fn requested_kernel() -> Result<KernelChoice, String> {
    match std::env::var("XORBANG_KERNEL").as_deref() {
        Err(_) | Ok("" | "debian") => Ok(KernelChoice::Debian),
        Ok("custom") => Ok(KernelChoice::Custom),
        Ok(other) => Err(format!("XORBANG_KERNEL={other}: expected debian or custom")),
    }
}

/// The accelerator as asked for; `None` means "probe".
pub fn requested_accel() -> Result<Option<Accel>, String> {
    match std::env::var("XORBANG_ACCEL").as_deref() {
        Err(_) | Ok("" | "auto") => Ok(None),
        Ok("kvm") => Ok(Some(Accel::Kvm)),
        Ok("tcg") => Ok(Some(Accel::Tcg)),
        Ok(other) => Err(format!("XORBANG_ACCEL={other}: expected kvm, tcg or auto")),
    }
}

impl Config {
    /// Everything but the accelerator, which needs a kernel to probe with, and the cache.
    pub fn from_env(accel: Accel) -> Result<Self, String> {
        Ok(Self {
            qemu: Self::qemu_from_env(),
            accel,
            timeout_scale: number("XORBANG_TIMEOUT_SCALE", 1.0)?,
            jobs: number("XORBANG_JOBS", 2.0)?.max(1.0) as usize,
            bench_runs: number("XORBANG_BENCH_RUNS", 3.0)?.max(1.0) as usize,
            netboot_user_mode: match std::env::var("XORBANG_NETBOOT").as_deref() {
                Err(_) | Ok("rig") => false,
                Ok("user") => true,
                Ok(other) => return Err(format!("XORBANG_NETBOOT={other}: expected rig or user")),
            },
        })
    }

    pub fn qemu_from_env() -> String {
        std::env::var("XORBANG_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
    }
}

pub fn cache_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("XORBANG_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(dir) = std::env::var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("xorbang"));
    }
    std::env::var("HOME")
        .map(|home| PathBuf::from(home).join(".cache/xorbang"))
        .map_err(|_| "set XORBANG_CACHE, XDG_CACHE_HOME or HOME for the fixture cache".to_owned())
}

fn number(name: &str, default: f64) -> Result<f64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .filter(|value| value.is_finite() && *value > 0.0)
            .ok_or_else(|| format!("{name}={text}: expected a positive number")),
    }
}

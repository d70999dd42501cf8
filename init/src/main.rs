//! `xorbang-init`: PID 1 of the initramfs. Run by the kernel it takes no arguments; run by
//! hand or by a test, flags replace every hard-wired input:
//!
//! ```text
//! xorbang-init [--cmdline TEXT] [--root DIR] [--no-api-mounts] [--no-switch-root]
//! ```

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use xorbang_init::boot::{self, Settings};
use xorbang_init::options::FailurePolicy;
use xorbang_init::paths::Paths;
use xorbang_init::{failure, kmsg};

use xorbang_formats::error_chain::error_chain;

fn main() {
    let is_pid1 = std::process::id() == 1;
    if let Err(error) = kmsg::install(log::LevelFilter::Info) {
        // SetLoggerError implements no std::error::Error here: a leaf, shown as it is.
        eprintln!("xorbang: cannot install the logger: {error}");
    }
    // The kernel passes PID 1 words of its command line it did not understand: not ours.
    let settings = if is_pid1 {
        Ok(default_settings())
    } else {
        settings_from_args(std::env::args().skip(1))
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(usage) => {
            eprintln!("xorbang-init: {usage}");
            std::process::exit(2);
        }
    };
    std::panic::set_hook(Box::new(|info| log::error!("internal error: {info}")));
    let mut policy = FailurePolicy::Reboot;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| boot::boot(&settings, &mut policy)));
    match result {
        Ok(Ok(report)) => {
            log::info!(
                "stopped before switch_root as asked ({} µs)",
                report.total().0
            );
        }
        Ok(Err(error)) => {
            log::error!("{}", error_chain(&error));
            failure::apply(policy, is_pid1, &settings.paths.rescue_shell());
        }
        // The panic hook already logged it.
        Err(_) => failure::apply(policy, is_pid1, &settings.paths.rescue_shell()),
    }
}

fn default_settings() -> Settings {
    Settings {
        paths: Paths::default(),
        cmdline: None,
        api_mounts: true,
        switch_root: true,
        log_to_kmsg: true,
    }
}

fn settings_from_args(mut args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        log_to_kmsg: false,
        ..default_settings()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cmdline" => settings.cmdline = Some(args.next().ok_or("--cmdline needs a value")?),
            "--root" => {
                let root = args.next().ok_or("--root needs a directory")?;
                settings.paths = Paths::under(PathBuf::from(root));
            }
            "--no-api-mounts" => settings.api_mounts = false,
            "--no-switch-root" => settings.switch_root = false,
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: xorbang-init [--cmdline TEXT] [--root DIR] \
                     [--no-api-mounts] [--no-switch-root]"
                ))
            }
        }
    }
    Ok(settings)
}

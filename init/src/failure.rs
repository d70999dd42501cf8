//! What happens after a failed boot. PID 1 must never exit (the kernel would panic), so
//! every path ends in reboot, power-off, halt, a rescue shell, or sleeping forever.

use std::path::Path;
use std::time::Duration;

use rustix::system::RebootCommand;

use crate::options::FailurePolicy;
use xorbang_formats::error_chain::error_chain;

/// Carries out the failure policy. As PID 1 this never returns; as a test program it exits
/// with status 1 instead of touching the machine.
pub fn apply(policy: FailurePolicy, is_pid1: bool, rescue_shell: &Path) -> ! {
    if !is_pid1 {
        log::error!("failure policy {policy} (not PID 1: exiting instead)");
        std::process::exit(1);
    }
    log::error!("failure policy: {policy}");
    let command = match policy {
        FailurePolicy::Reboot => RebootCommand::Restart,
        FailurePolicy::Poweroff => RebootCommand::PowerOff,
        FailurePolicy::Halt => RebootCommand::Halt,
        FailurePolicy::Shell => {
            run_rescue_shell(rescue_shell);
            RebootCommand::Restart
        }
    };
    rustix::fs::sync();
    if let Err(errno) = rustix::system::reboot(command) {
        log::error!("reboot({command:?}) failed: {errno}; halting here");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs the shell until it exits; without one, says so and lets the caller reboot.
fn run_rescue_shell(shell: &Path) {
    match std::process::Command::new(shell).status() {
        Ok(status) => log::error!("rescue shell exited ({status}); rebooting"),
        Err(error) => log::error!(
            "no rescue shell: cannot run {}: {}; rebooting instead",
            shell.display(),
            error_chain(&error)
        ),
    }
}

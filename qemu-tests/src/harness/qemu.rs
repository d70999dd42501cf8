//! One QEMU run: build the command line, drain the serial console into a log while watching
//! for marker lines, and decide pass or fail by exact lines, never by time.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::harness::config::Config;

/// Lines that end a run as failed the moment they appear.
const FATAL_LINES: &[&str] = &["Kernel panic", "Attempted to kill init"];
/// The guest agent's verdict on a failed check; its reason becomes the run's.
const AGENT_FAIL: &str = "XORBANG-TEST: FAIL ";

/// How long a guest may take to power off after its last marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Vm {
    pub boot: Boot,
    /// Raw disk images, attached as virtio disks in order (vda, vdb, …): read-only unless
    /// `writable_disks`, so no scenario changes a shared fixture.
    pub disks: Vec<PathBuf>,
    /// For scenarios whose guest must write a disk: only ever a copy of their own.
    pub writable_disks: bool,
    /// Files handed to the guest through QEMU's fw_cfg, by name (`opt/…`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    pub network: Network,
    pub memory_mib: u32,
    /// Give up after this long without the expected lines.
    pub timeout: Duration,
    /// What the run waits for once every expected line is in.
    pub after_markers: AfterMarkers,
}

/// How many VMs run right now: every run takes a slot, and at most `XORBANG_JOBS` (the
/// worker count) exist, so a scenario that boots machines side by side (the netboot fleet)
/// waits for a free one rather than putting a third VM on a two-core host.
static RUNNING_VMS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One VM's share of the host, given back when dropped.
struct VmSlot;

impl VmSlot {
    fn take(limit: usize) -> Self {
        let (count, freed) = &RUNNING_VMS;
        let mut running = count.lock().unwrap_or_else(PoisonError::into_inner);
        while *running >= limit.max(1) {
            running = freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        Self
    }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING_VMS;
        let mut running = count.lock().unwrap_or_else(PoisonError::into_inner);
        *running = running.saturating_sub(1);
        freed.notify_one();
    }
}

/// The guest's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// None at all.
    Isolated,
    /// A virtio NIC on QEMU's user-mode network, where the host's 127.0.0.1 is 10.0.2.2 (the
    /// runner's HTTP server).
    User,
    /// A NIC the caller describes (`-netdev … -device …`), with the words QEMU itself must
    /// run under (`ip netns exec NS`, so that it opens a tap of the runner's namespace).
    Attached {
        prefix: Vec<String>,
        args: Vec<String>,
    },
}

/// How a run ends once every expected line has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterMarkers {
    /// The guest must power off (or reset) within the grace period.
    PowerOff,
    /// Stop at once: for boots whose rest does not matter to the scenario.
    Stop,
    /// Keep draining the console for this long (or until QEMU exits), so the caller can
    /// check what came after: for machines the firmware refused, which then wait forever.
    Watch(Duration),
}

/// How the machine starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// QEMU loads the kernel and initramfs itself: no firmware, the fastest way in.
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// OVMF boots from the disks like a real machine.
    Firmware(Firmware),
    /// SeaBIOS boots from the network (`-boot n`): the NIC's option ROM (iPXE) does the rest.
    Network,
}

#[derive(Debug, Clone)]
pub struct Firmware {
    pub code: PathBuf,
    /// A writable copy of the variable store (the firmware writes boot entries to it).
    pub vars: PathBuf,
    /// Secure Boot enforced: SMM and a secure flash, as OVMF's secboot builds need.
    pub secure_boot: bool,
    /// An image QEMU hands the firmware to start, with the options a boot loader would pass
    /// (`-kernel`/`-append` under OVMF): how a command line is supplied from outside a UKI.
    pub loader_image: Option<(PathBuf, String)>,
}

/// What must appear on the console, in this order, for the run to pass.
#[derive(Debug, Clone)]
pub enum LineMatch {
    Exact(String),
    Prefix(String),
    /// A line that starts with the first text and ends with the second.
    Between(String, String),
}

impl LineMatch {
    pub fn matches(&self, line: &str) -> bool {
        match self {
            Self::Exact(text) => line == text,
            Self::Prefix(text) => line.starts_with(text.as_str()),
            Self::Between(start, end) => {
                line.starts_with(start.as_str()) && line.ends_with(end.as_str())
            }
        }
    }
}

impl fmt::Display for LineMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(text) => write!(f, "{text:?}"),
            Self::Prefix(text) => write!(f, "{text:?}…"),
            Self::Between(start, end) => write!(f, "{start:?}…{end:?}"),
        }
    }
}

/// The console of a finished run.
#[derive(Debug)]
pub struct Console {
    pub lines: Vec<String>,
    /// From QEMU's start to the last expected line.
    pub last_marker: Duration,
}

impl Console {
    /// The first line starting with `prefix`, without the prefix.
    pub fn find(&self, prefix: &str) -> Option<&str> {
        self.lines.iter().find_map(|line| line.strip_prefix(prefix))
    }

    /// [`Self::find`] for a line the init may have split into several kmsg records: the
    /// pieces that follow (`xorbang: +…`) are joined on; other kernel lines in between are
    /// passed over, and the next `xorbang:` line ends it.
    pub fn find_joined(&self, prefix: &str) -> Option<String> {
        let start = self
            .lines
            .iter()
            .position(|line| line.starts_with(prefix))?;
        let mut joined = self.lines[start][prefix.len()..].to_owned();
        for line in &self.lines[start + 1..] {
            match line.strip_prefix(INIT_CONTINUATION) {
                Some(piece) => joined.push_str(piece),
                None if line.starts_with("xorbang: ") => break,
                None => {}
            }
        }
        Some(joined)
    }
}

/// How the init's kmsg logger starts a record that continues the line before.
const INIT_CONTINUATION: &str = "xorbang: +";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{reason}\n  console log: {log}\n  qemu: {command}\n  last console lines:\n{tail}")]
    Failed {
        reason: String,
        log: String,
        command: String,
        tail: String,
    },
}

impl Vm {
    /// The QEMU command. `interactive` puts the console and QEMU's monitor on the terminal
    /// (Ctrl-A X quits) instead of a pipe the runner reads.
    pub fn command(&self, config: &Config, interactive: bool) -> Command {
        let mut command = match &self.network {
            Network::Attached { prefix, .. } if !prefix.is_empty() => {
                let mut command = Command::new(&prefix[0]);
                command.args(&prefix[1..]).arg(&config.qemu);
                command
            }
            _ => Command::new(&config.qemu),
        };
        let secure_boot = matches!(&self.boot, Boot::Firmware(firmware) if firmware.secure_boot);
        let machine = if secure_boot { "q35,smm=on" } else { "q35" };
        command.args(["-machine", machine, "-cpu", "max", "-smp", "1"]);
        command.args(["-accel", config.accel.as_str()]);
        command.args(["-m", &self.memory_mib.to_string()]);
        command.args(["-nodefaults", "-display", "none", "-no-reboot"]);
        if interactive {
            command.args(["-serial", "mon:stdio"]);
        } else {
            command.args(["-serial", "stdio", "-monitor", "none"]);
        }
        match &self.boot {
            Boot::Direct {
                kernel,
                initrd,
                append,
            } => {
                command.arg("-kernel").arg(kernel);
                command.arg("-initrd").arg(initrd);
                command.args(["-append", append]);
            }
            Boot::Firmware(firmware) => add_firmware(&mut command, firmware),
            Boot::Network => {
                command.args(["-boot", "n"]);
            }
        }
        match &self.network {
            Network::Isolated => {}
            Network::User => {
                command.args(["-nic", "user,model=virtio-net-pci"]);
            }
            Network::Attached { args, .. } => {
                command.args(args);
            }
        }
        for (name, file) in &self.fw_cfg {
            command
                .arg("-fw_cfg")
                .arg(format!("name={name},file={}", file.display()));
        }
        let access = if self.writable_disks {
            ""
        } else {
            ",readonly=on"
        };
        for disk in &self.disks {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio{access}",
                disk.display()
            ));
        }
        command
    }

    /// Boots, drains the console into `log`, and passes once every expected line has been
    /// seen in order and the guest has powered off (or reset: `-no-reboot` turns both into
    /// QEMU exiting).
    pub fn run(
        &self,
        config: &Config,
        expect: &[LineMatch],
        log: &Path,
    ) -> Result<Console, RunError> {
        let _slot = VmSlot::take(config.jobs);
        let mut command = self.command(config, false);
        let printable = shell_quoted(&command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| RunError::Spawn {
            program: config.qemu.clone(),
            source,
        })?;
        let lines = drain(&mut child);
        let mut log_file = std::fs::File::create(log).ok();
        let started = Instant::now();
        let deadline = started + self.timeout.mul_f64(config.timeout_scale);
        let mut seen = Vec::new();
        let mut pending = expect.iter().peekable();
        let mut outcome: Result<(), String> = Ok(());
        let mut exited = false;
        let mut last_marker = Duration::ZERO;
        // Set when the last expected line arrives: how long the rest may take.
        let mut after_deadline = None;
        loop {
            let wait_until = after_deadline.unwrap_or(deadline);
            let timeout = wait_until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(timeout) {
                Ok(line) => {
                    if let Some(file) = log_file.as_mut() {
                        if writeln!(file, "{line}").is_err() {
                            log_file = None;
                        }
                    }
                    if let Some(fatal) = FATAL_LINES.iter().find(|fatal| line.contains(*fatal)) {
                        outcome = Err(format!("the guest printed {fatal:?}"));
                        seen.push(line);
                        break;
                    }
                    if let Some(reason) = line.strip_prefix(AGENT_FAIL) {
                        outcome = Err(format!("the agent failed: {reason}"));
                        seen.push(line);
                        break;
                    }
                    if pending.peek().is_some_and(|want| want.matches(&line)) {
                        pending.next();
                        last_marker = started.elapsed();
                        if pending.peek().is_none() {
                            let rest = match self.after_markers {
                                AfterMarkers::PowerOff => POWEROFF_GRACE,
                                AfterMarkers::Stop => {
                                    seen.push(line);
                                    break;
                                }
                                AfterMarkers::Watch(time) => time.mul_f64(config.timeout_scale),
                            };
                            after_deadline = Some(Instant::now() + rest);
                        }
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    exited = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    outcome = match (pending.peek(), self.after_markers) {
                        (Some(want), _) => Err(format!(
                            "timed out after {:.0} s waiting for {want}",
                            started.elapsed().as_secs_f64()
                        )),
                        (None, AfterMarkers::PowerOff) => {
                            Err("the guest did not power off after its last marker".to_owned())
                        }
                        (None, AfterMarkers::Stop | AfterMarkers::Watch(_)) => Ok(()),
                    };
                    break;
                }
            }
        }
        let status = finish(&mut child, exited);
        if outcome.is_ok() {
            if let Some(want) = pending.next() {
                outcome = Err(format!(
                    "QEMU exited ({status}) before the guest printed {want}"
                ));
            }
        }
        match outcome {
            Ok(()) => Ok(Console {
                lines: seen,
                last_marker,
            }),
            Err(reason) => Err(RunError::Failed {
                reason,
                log: log.display().to_string(),
                command: printable,
                tail: tail(&seen, 15),
            }),
        }
    }
}

fn add_firmware(command: &mut Command, firmware: &Firmware) {
    if firmware.secure_boot {
        command.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    let mut code = std::ffi::OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
    code.push(&firmware.code);
    let mut vars = std::ffi::OsString::from("if=pflash,format=raw,unit=1,file=");
    vars.push(&firmware.vars);
    command.arg("-drive").arg(code).arg("-drive").arg(vars);
    if let Some((image, append)) = &firmware.loader_image {
        command.arg("-kernel").arg(image).args(["-append", append]);
    }
}

/// Reads stdout (the serial console) and stderr line by line on their own threads, so QEMU
/// never blocks on a full pipe; the channel closes when QEMU closes its output.
fn drain(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        spawn_reader(stdout, sender.clone(), "");
    }
    if let Some(stderr) = child.stderr.take() {
        spawn_reader(stderr, sender, "qemu: ");
    }
    receiver
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    sender: mpsc::Sender<String>,
    tag: &'static str,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        while let Ok(count) = reader.read_until(b'\n', &mut buffer) {
            if count == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buffer);
            let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
            if sender.send(format!("{tag}{line}")).is_err() {
                break;
            }
            buffer.clear();
        }
    });
}

/// Waits for QEMU if it is exiting anyway, kills it otherwise; returns how it ended.
fn finish(child: &mut Child, exited: bool) -> String {
    if !exited {
        if let Err(error) = child.kill() {
            return format!("could not be killed: {error}");
        }
    }
    match child.wait() {
        Ok(status) => status.to_string(),
        Err(error) => format!("wait failed: {error}"),
    }
}

fn tail(lines: &[String], count: usize) -> String {
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| format!("    | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The command as one line a person can paste into a shell.
pub fn shell_quoted(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| {
            let word = word.to_string_lossy();
            if word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
            {
                word.into_owned()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether KVM really runs guests here: /dev/kvm can exist on machines where a guest under
/// KVM never prints a line. Boots the kernel alone for a few seconds and looks for its
/// banner.
pub fn kvm_works(qemu: &str, kernel: &Path) -> bool {
    let mut command = Command::new(qemu);
    command.args([
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
    ]);
    command.args([
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]);
    command.arg("-kernel").arg(kernel);
    command.args(["-append", "console=ttyS0 panic=-1"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    let lines = drain(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut banner = false;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("Linux version") {
            banner = true;
            break;
        }
    }
    finish(&mut child, false);
    banner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_are_joined_across_kernel_noise() {
        let console = Console {
            lines: [
                "xorbang: boot-report {\"a\":",
                "random: crng init done",
                "xorbang: +1}",
                "xorbang: starting /sbin/init",
                "xorbang: +not ours",
            ]
            .map(str::to_owned)
            .to_vec(),
            last_marker: Duration::ZERO,
        };
        assert_eq!(
            console.find_joined("xorbang: boot-report ").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(console.find_joined("nothing"), None);
    }

    #[test]
    fn markers_match_whole_lines_or_prefixes() {
        let exact = LineMatch::Exact("XORBANG-TEST: PASS boot-prod".into());
        assert!(exact.matches("XORBANG-TEST: PASS boot-prod"));
        assert!(!exact.matches("XORBANG-TEST: PASS boot-prod2"));
        assert!(!exact.matches("echo XORBANG-TEST: PASS boot-prod"));
        let prefix = LineMatch::Prefix("xorbang: root device".into());
        assert!(prefix.matches("xorbang: root device X did not appear"));
        assert!(!prefix.matches("[ 1.0] xorbang: root device"));
        let between = LineMatch::Between("device-mapper: verity: ".into(), "is corrupted".into());
        assert!(between.matches("device-mapper: verity: 254:1: data block 7 is corrupted"));
        assert!(!between.matches("device-mapper: verity: sha256 using implementation"));
    }

    #[test]
    fn printed_commands_paste_back_into_a_shell() {
        let mut command = Command::new("qemu-system-x86_64");
        command.args(["-append", "console=ttyS0 root=PARTLABEL=it's", "-m", "512"]);
        assert_eq!(
            shell_quoted(&command),
            r#"qemu-system-x86_64 -append 'console=ttyS0 root=PARTLABEL=it'\''s' -m 512"#
        );
    }

    /// A stand-in for QEMU that prints a console and exits: the runner's line handling,
    /// ordering and failure reasons, without booting anything.
    pub(super) fn fake_vm(script: &str) -> (Vm, Config, tempfile::TempDir) {
        let vm = Vm {
            boot: Boot::Direct {
                kernel: PathBuf::from("/dev/null"),
                initrd: PathBuf::from("/dev/null"),
                append: String::new(),
            },
            disks: Vec::new(),
            fw_cfg: Vec::new(),
            network: Network::Isolated,
            memory_mib: 64,
            timeout: Duration::from_secs(5),
            after_markers: AfterMarkers::PowerOff,
            writable_disks: false,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qemu");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let config = Config {
            qemu: path.display().to_string(),
            accel: crate::harness::config::Accel::Tcg,
            timeout_scale: 1.0,
            jobs: 1,
            bench_runs: 1,
            netboot_user_mode: false,
        };
        (vm, config, dir)
    }

    #[test]
    fn passes_on_markers_in_order_then_exit() {
        let (vm, config, dir) = fake_vm("printf 'boot\\r\\nA\\nB\\n'");
        let expect = [LineMatch::Exact("A".into()), LineMatch::Exact("B".into())];
        let console = vm
            .run(&config, &expect, &dir.path().join("log"))
            .expect("passes");
        assert_eq!(console.lines, ["boot", "A", "B"]);
    }

    #[test]
    fn fails_on_missing_marker_and_on_panic_lines() {
        let (vm, config, dir) = fake_vm("echo B; echo A");
        let expect = [LineMatch::Exact("A".into()), LineMatch::Exact("B".into())];
        let log = dir.path().join("log");
        let error = vm
            .run(&config, &expect, &log)
            .expect_err("B came first")
            .to_string();
        assert!(error.contains("before the guest printed \"B\""), "{error}");
        let (vm, config, dir) =
            fake_vm("echo 'Kernel panic - not syncing: Attempted to kill init!'; echo A");
        let error = vm
            .run(
                &config,
                &[LineMatch::Exact("A".into())],
                &dir.path().join("log"),
            )
            .expect_err("panic")
            .to_string();
        assert!(error.contains("Kernel panic"), "{error}");
        assert!(error.contains("qemu: "), "the command is printed: {error}");
    }
}

#[cfg(test)]
mod agent_and_watch_tests {
    use super::tests::fake_vm;
    use super::*;

    #[test]
    fn an_agent_failure_ends_the_run_with_its_reason() {
        let (vm, config, dir) =
            fake_vm("echo 'XORBANG-TEST: FAIL boot-prod: / is ext4, expected squashfs'; sleep 30");
        let started = Instant::now();
        let error = vm
            .run(
                &config,
                &[LineMatch::Exact("XORBANG-TEST: PASS boot-prod".into())],
                &dir.path().join("log"),
            )
            .expect_err("the agent failed")
            .to_string();
        assert!(
            error.starts_with("the agent failed: boot-prod: / is ext4, expected squashfs\n"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no wait for the timeout"
        );
    }

    #[test]
    fn watching_keeps_the_lines_after_the_last_marker() {
        let (mut vm, config, dir) =
            fake_vm("echo denied; sleep 1; echo 'Linux version 6.1'; sleep 30");
        vm.after_markers = AfterMarkers::Watch(Duration::from_secs(3));
        let console = vm
            .run(
                &config,
                &[LineMatch::Exact("denied".into())],
                &dir.path().join("log"),
            )
            .expect("watching ends without an error");
        assert_eq!(console.lines, ["denied", "Linux version 6.1"]);
        let (mut vm, config, dir) = fake_vm("echo denied; echo more; sleep 30");
        vm.after_markers = AfterMarkers::Stop;
        let console = vm
            .run(
                &config,
                &[LineMatch::Exact("denied".into())],
                &dir.path().join("log"),
            )
            .expect("stops at the marker");
        assert_eq!(console.lines, ["denied"]);
    }
}

//! A private network for netboot scenarios: one network namespace per rig, holding a bridge
//! with the server's address, a tap per guest that may run at once, dnsmasq (DHCP, and TFTP
//! if the scenario's configuration enables it) and our HTTP server (the runner's `serve`
//! subcommand). Nothing links the namespace to the host's network, so every rig uses the
//! same addresses: the server is [`SERVER_ADDRESS`]/24 on `br0`, HTTP on [`HTTP_PORT`].
//!
//! QEMU opens a tap by name in its own namespace, so it must run under
//! [`NetbootNet::qemu_prefix`] (`ip netns exec NAME`) with [`NetbootNet::netdev_args`].
//!
//! Teardown, when the rig is dropped and, for every live rig, when the runner gets SIGINT or
//! SIGTERM (it then exits with 128 + the signal's number): the daemons are stopped by their
//! own PIDs (SIGTERM, SIGKILL after [`STOP_GRACE`], reaped), anything else still in the
//! namespace (a QEMU left behind) is killed and named on stderr, then `ip netns del`. In that
//! order: `ip netns del` only removes the name, and the namespace with its bridge and taps
//! lives on while any process is still in it.
//!
//! Where namespaces cannot be made here, [`NetbootNet::create`] fails with an error for
//! which [`NetError::cannot_run_here`] holds, and a scenario may fall back to
//! [`user_mode_args`]: QEMU's user-mode network with its own DHCP and TFTP, and the
//! in-process [`HttpServer`](crate::harness::http_server::HttpServer) on 127.0.0.1, which
//! guests reach as 10.0.2.2.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitIdOptions, WaitOptions};

use crate::harness::http_server::{self, LogError};
use crate::harness::sys;

/// The bridge the taps are enslaved to; dnsmasq listens on it.
pub const BRIDGE: &str = "br0";
/// The server's address on [`BRIDGE`], the same in every rig (each namespace is private).
pub const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 14, 0, 1);
pub const PREFIX_LENGTH: u8 = 24;
/// Where the HTTP server listens, on [`SERVER_ADDRESS`].
pub const HTTP_PORT: u16 = 8080;
/// Debian's dnsmasq (package `dnsmasq-base`, which unlike `dnsmasq` starts no service).
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// How long dnsmasq and the HTTP server may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The dnsmasq options the rig sets itself (after the scenario's lines): a scenario that sets
/// one is refused, since dnsmasq refuses most of them repeated. `log-dhcp` is also set, but
/// may be repeated.
pub const RIG_OPTIONS: &[&str] = &[
    "interface",
    "except-interface",
    "listen-address",
    "bind-interfaces",
    "bind-dynamic",
    "port",
    "pid-file",
    "user",
    "dhcp-leasefile",
    "log-facility",
    "keep-in-foreground",
    "no-daemon",
];

/// What a rig is made of.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// Part of the namespace's name (`xbq-TAG-PID-N`): the scenario, say.
    pub tag: String,
    /// The netboot tree: what HTTP serves, and TFTP's root if the configuration enables TFTP
    /// without naming one.
    pub tree: PathBuf,
    /// The rig's own files: `dnsmasq.conf`, `dnsmasq.log`, `leases`, `http.log` (one line per
    /// answer, see [`http_server`]) and `http.out` (the server's own output).
    pub run_dir: PathBuf,
    /// Guests that may run at once: taps `tap0` to `tap{taps-1}`.
    pub taps: usize,
    /// The scenario's dnsmasq configuration (DHCP range, boot files, tags), without the
    /// options in [`RIG_OPTIONS`].
    pub dnsmasq_conf: String,
    /// The runner binary, whose `serve` subcommand is the HTTP server.
    pub server: PathBuf,
}

impl NetSpec {
    /// Two taps, and this runner as the server.
    pub fn new(tag: &str, tree: &Path, run_dir: &Path, dnsmasq_conf: String) -> io::Result<Self> {
        Ok(Self {
            tag: tag.to_owned(),
            tree: tree.to_owned(),
            run_dir: run_dir.to_owned(),
            taps: 2,
            dnsmasq_conf,
            server: std::env::current_exe()?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Namespaces (or taps) cannot be made on this host.
    #[error("no network namespace for the netboot rig: {reason}")]
    NotPermitted { reason: String },
    #[error("the netboot rig needs {program} (Debian package {package})")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
    },
    #[error("dnsmasq configuration line {line}: `{text}` is the rig's to set (see RIG_OPTIONS)")]
    RigOption { line: usize, text: String },
    #[error("the rig has taps tap0..tap{}, not tap{index}", .taps.saturating_sub(1))]
    NoTap { index: usize, taps: usize },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
    #[error("netns {namespace}: {what} {outcome}; its output ({log}) ends:\n{tail}")]
    Start {
        namespace: String,
        what: &'static str,
        outcome: String,
        log: String,
        tail: String,
    },
}

impl NetError {
    /// Whether this host cannot have a rig at all (rather than the rig failing): the case
    /// for falling back to QEMU's user-mode network, and saying so.
    pub fn cannot_run_here(&self) -> bool {
        matches!(
            self,
            Self::NotPermitted { .. } | Self::MissingProgram { .. }
        )
    }
}

/// A live rig; dropping it tears it down.
#[derive(Debug)]
pub struct NetbootNet {
    name: String,
    taps: usize,
    run_dir: PathBuf,
    /// For the report line; [`Pid::INIT`] until started, and never signalled through these
    /// fields (the teardown takes the PIDs from the registry of live rigs).
    dnsmasq: Pid,
    http: Pid,
}

impl NetbootNet {
    /// Makes the namespace, its bridge and taps, starts dnsmasq and the HTTP server in it,
    /// waits until both are ready, and reports the rig on stderr in one line.
    pub fn create(spec: &NetSpec) -> Result<Self, NetError> {
        if spec.taps == 0 {
            return Err(NetError::NoTap { index: 0, taps: 0 });
        }
        preflight()?;
        let io_error = |path: &Path| {
            let path = path.display().to_string();
            move |error| NetError::Io { path, error }
        };
        // Absolute, since dnsmasq works from /.
        let tree = std::path::absolute(&spec.tree).map_err(io_error(&spec.tree))?;
        let run_dir = std::path::absolute(&spec.run_dir).map_err(io_error(&spec.run_dir))?;
        let config = dnsmasq_config(&spec.dnsmasq_conf, &tree, &run_dir)?;
        fs::create_dir_all(&run_dir).map_err(io_error(&run_dir))?;
        let conf = run_dir.join("dnsmasq.conf");
        fs::write(&conf, config).map_err(io_error(&conf))?;
        // Each run starts with no leases and no answers logged.
        for stale in ["leases", "http.log"] {
            let path = run_dir.join(stale);
            match fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(&path)(error))
                }
                _ => {}
            }
        }
        catch_signals();
        let name = unique_name(&spec.tag);
        // Registered before it exists, so a signal from here on removes it too.
        live().push(Live {
            name: name.clone(),
            pids: Vec::new(),
        });
        if let Err(error) = ip(&["netns", "add", &name]) {
            live().retain(|entry| entry.name != name);
            return Err(match error {
                NetError::Command { detail, .. } => NetError::NotPermitted {
                    reason: format!("`ip netns add` failed: {detail}"),
                },
                other => other,
            });
        }
        // From here on, an error drops the half-made rig, which tears it down.
        let mut net = Self {
            name,
            taps: spec.taps,
            run_dir,
            dnsmasq: Pid::INIT,
            http: Pid::INIT,
        };
        for command in link_commands(&net.name, spec.taps) {
            ip(&command)?;
        }
        let mut dnsmasq = vec![OsString::from(DNSMASQ), "-C".into(), conf.into()];
        dnsmasq.push("--keep-in-foreground".into());
        net.dnsmasq = net.start("dnsmasq", &dnsmasq, &net.dnsmasq_log())?;
        let listen = format!("{SERVER_ADDRESS}:{HTTP_PORT}");
        let server = [
            spec.server.as_os_str(),
            "serve".as_ref(),
            "--root".as_ref(),
            tree.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--log".as_ref(),
            net.http_log().as_os_str(),
        ]
        .map(OsString::from);
        let http_out = net.run_dir.join("http.out");
        net.http = net.start("the HTTP server", &server, &http_out)?;
        let started = |line: &str| line.contains("started, version");
        wait_ready(
            &net.name,
            "dnsmasq",
            net.dnsmasq,
            &net.dnsmasq_log(),
            started,
        )?;
        let listening = format!("listening on {listen}");
        wait_ready(&net.name, "the HTTP server", net.http, &http_out, |line| {
            line == listening
        })?;
        let taps = match spec.taps {
            1 => "tap0".to_owned(),
            taps => format!("tap0..tap{}", taps - 1),
        };
        eprintln!(
            "netns {}: bridge {BRIDGE} {SERVER_ADDRESS}/{PREFIX_LENGTH}, taps {taps}, \
             dnsmasq pid {}, http pid {}",
            net.name,
            net.dnsmasq.as_raw_nonzero(),
            net.http.as_raw_nonzero()
        );
        Ok(net)
    }

    /// The namespace's name (`ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address, for the URLs guests are given.
    pub fn server_address(&self) -> Ipv4Addr {
        SERVER_ADDRESS
    }

    /// `http://10.14.0.1:8080/PATH`: known before any rig exists, so a scenario can write it
    /// into its dnsmasq configuration and iPXE script.
    pub fn url(path: &str) -> String {
        format!(
            "http://{SERVER_ADDRESS}:{HTTP_PORT}/{}",
            path.trim_start_matches('/')
        )
    }

    /// The words before the QEMU program, so QEMU runs in the namespace and finds its tap.
    pub fn qemu_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// QEMU's arguments for a virtio NIC on tap `tap` with `mac`, tried first by the
    /// firmware (`bootindex=0`). The NIC keeps its default ROM, efi-virtio.rom, which carries
    /// iPXE for both BIOS and UEFI.
    pub fn netdev_args(&self, tap: usize, mac: &str) -> Result<Vec<String>, NetError> {
        if tap >= self.taps {
            return Err(NetError::NoTap {
                index: tap,
                taps: self.taps,
            });
        }
        Ok(vec![
            "-netdev".into(),
            format!("tap,id=n0,ifname=tap{tap},script=no,downscript=no"),
            "-device".into(),
            nic(mac),
        ])
    }

    /// The body bytes the HTTP server sent to each guest (by its address) so far.
    pub fn served_bytes(&self) -> Result<BTreeMap<IpAddr, u64>, LogError> {
        http_server::bytes_served_by_client(&self.http_log())
    }

    /// One line per HTTP answer: `<client ip> <status> <bytes sent> <path>`.
    pub fn http_log(&self) -> PathBuf {
        self.run_dir.join("http.log")
    }

    /// dnsmasq's log: with `log-dhcp`, every DHCP exchange and the tags it matched.
    pub fn dnsmasq_log(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.log")
    }

    /// Starts `command` in the namespace with its output to `log`, and registers its PID.
    fn start(&self, what: &'static str, command: &[OsString], log: &Path) -> Result<Pid, NetError> {
        let output = File::create(log).map_err(|error| NetError::Io {
            path: log.display().to_string(),
            error,
        })?;
        let errors = output.try_clone().map_err(|error| NetError::Io {
            path: log.display().to_string(),
            error,
        })?;
        // `ip netns exec` execs the command in place: the child's PID is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|error| NetError::Start {
                namespace: self.name.clone(),
                what,
                outcome: format!("cannot be started: {error}"),
                log: log.display().to_string(),
                tail: String::new(),
            })?;
        // Reaped by the teardown (with waitpid), not through `child`.
        let pid = Pid::from_child(&child);
        if let Some(entry) = live().iter_mut().find(|entry| entry.name == self.name) {
            entry.pids.push(pid);
        }
        Ok(pid)
    }
}

impl Drop for NetbootNet {
    fn drop(&mut self) {
        // Held through the teardown, so a signal now waits for it instead of exiting halfway.
        let mut live = live();
        let Some(index) = live.iter().position(|entry| entry.name == self.name) else {
            return;
        };
        let entry = live.remove(index);
        for problem in tear_down(&entry) {
            eprintln!("netns {}: {problem}", entry.name);
        }
    }
}

/// QEMU's arguments for the fallback: user-mode networking, whose built-in DHCP hands out
/// `bootfile` (a name below `tree`, which its TFTP serves, or a URL for iPXE) and where the
/// host's 127.0.0.1 is 10.0.2.2 (so the HTTP server must listen on 127.0.0.1 only, as
/// [`HttpServer::serve`](crate::harness::http_server::HttpServer::serve) does).
pub fn user_mode_args(tree: &Path, bootfile: &str, mac: &str) -> Vec<String> {
    // QEMU's option syntax escapes a comma by doubling it.
    let escape = |text: &str| text.replace(',', ",,");
    vec![
        "-netdev".into(),
        format!(
            "user,id=n0,tftp={},bootfile={}",
            escape(&tree.display().to_string()),
            escape(bootfile)
        ),
        "-device".into(),
        nic(mac),
    ]
}

fn nic(mac: &str) -> String {
    format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=0")
}

/// Root, taps and dnsmasq: what a rig needs that this host may lack.
fn preflight() -> Result<(), NetError> {
    if !rustix::process::geteuid().is_root() {
        return Err(NetError::NotPermitted {
            reason: "not root (namespaces, bridges and taps need CAP_NET_ADMIN and CAP_SYS_ADMIN)"
                .into(),
        });
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(NetError::NotPermitted {
            reason: "/dev/net/tun is missing (no tun/tap driver)".into(),
        });
    }
    if !Path::new(DNSMASQ).exists() {
        return Err(NetError::MissingProgram {
            program: DNSMASQ,
            package: "dnsmasq-base",
        });
    }
    Ok(())
}

/// The scenario's configuration with the rig's options after it: the bridge, no DNS, no
/// PID file (a second dnsmasq would fail with "File exists"), leases and the log in the run
/// directory, and TFTP's root if TFTP is enabled without one. dnsmasq runs as root: the
/// namespace is the sandbox, and a tree below /root stays readable to its TFTP.
fn dnsmasq_config(scenario: &str, tree: &Path, run_dir: &Path) -> Result<String, NetError> {
    let mut tftp = false;
    let mut tftp_root = false;
    for (index, line) in scenario.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or_default().trim();
        if RIG_OPTIONS.contains(&key) {
            return Err(NetError::RigOption {
                line: index + 1,
                text: line.to_owned(),
            });
        }
        tftp |= key == "enable-tftp";
        tftp_root |= key == "tftp-root";
    }
    let mut config = scenario.to_owned();
    if !config.is_empty() && !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(&format!(
        "# The netboot rig's own options (qemu-tests/src/harness/netns.rs):\n\
         interface={BRIDGE}\n\
         bind-interfaces\n\
         port=0\n\
         pid-file=\n\
         user=root\n\
         dhcp-leasefile={}\n\
         log-facility=-\n\
         log-dhcp\n",
        run_dir.join("leases").display()
    ));
    if tftp && !tftp_root {
        config.push_str(&format!("tftp-root={}\n", tree.display()));
    }
    Ok(config)
}

/// The `ip` commands after `ip netns add NAME`: loopback up, the bridge with the server's
/// address, and the taps on it.
fn link_commands(name: &str, taps: usize) -> Vec<Vec<String>> {
    let address = format!("{SERVER_ADDRESS}/{PREFIX_LENGTH}");
    let mut plan = vec![
        vec!["link", "set", "lo", "up"],
        vec!["link", "add", BRIDGE, "type", "bridge"],
        vec!["addr", "add", &address, "dev", BRIDGE],
        vec!["link", "set", BRIDGE, "up"],
    ]
    .into_iter()
    .map(|words| words.into_iter().map(str::to_owned).collect::<Vec<_>>())
    .collect::<Vec<_>>();
    for tap in (0..taps).map(|index| format!("tap{index}")) {
        plan.push(words(&["tuntap", "add", "dev", &tap, "mode", "tap"]));
        plan.push(words(&["link", "set", &tap, "master", BRIDGE]));
        plan.push(words(&["link", "set", &tap, "up"]));
    }
    for command in &mut plan {
        command.splice(0..0, words(&["-n", name]));
    }
    plan
}

fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[impl AsRef<str>]) -> Result<(), NetError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => NetError::MissingProgram {
                program: "ip",
                package: "iproute2",
            },
            _ => NetError::Command {
                command: command.clone(),
                detail: error.to_string(),
            },
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        command,
        detail: format!(
            "{} ({})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ),
    })
}

/// `xbq-TAG-PID-N`: unique among this host's live rigs.
fn unique_name(tag: &str) -> String {
    static RIGS: AtomicUsize = AtomicUsize::new(0);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    let number = RIGS.fetch_add(1, Ordering::SeqCst);
    format!("xbq-{tag}-{}-{number}", std::process::id())
}

/// Waits until `log` has a line for which `ready` holds, while the process (`what` in
/// namespace `name`) is alive.
fn wait_ready(
    name: &str,
    what: &'static str,
    pid: Pid,
    log: &Path,
    ready: impl Fn(&str) -> bool,
) -> Result<(), NetError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let output = fs::read_to_string(log).unwrap_or_default();
        if output.lines().any(&ready) {
            return Ok(());
        }
        let failed = |outcome: String| NetError::Start {
            namespace: name.to_owned(),
            what,
            outcome,
            log: log.display().to_string(),
            tail: output
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(|line| format!("    | {line}\n"))
                .collect(),
        };
        // NOWAIT: the teardown still reaps it, so its PID stays ours until then.
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        if let Ok(Some(status)) =
            rustix::process::waitid(rustix::process::WaitId::Pid(pid), options)
        {
            let outcome = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => format!("exited with status {code} while starting"),
                (_, Some(signal)) => format!("was killed by signal {signal} while starting"),
                _ => "ended while starting".to_owned(),
            };
            return Err(failed(outcome));
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "was not ready within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rig as the teardown sees it: the name, and the PIDs of our children in it.
#[derive(Debug)]
struct Live {
    name: String,
    pids: Vec<Pid>,
}

/// Every rig of this process not yet torn down.
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Live>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// From the first rig on, SIGINT and SIGTERM tear down every live rig and exit with
/// 128 + the signal (130 for Ctrl-C). QEMU, in the terminal's process group, gets a Ctrl-C
/// itself; a QEMU still in a namespace is killed by the teardown.
fn catch_signals() {
    static CATCHING: Once = Once::new();
    CATCHING.call_once(|| {
        let started = sys::signals_to_pipe().and_then(|pipe| {
            std::thread::Builder::new()
                .name("netns-signals".into())
                .spawn(move || on_signal(&pipe))
        });
        if let Err(error) = started {
            eprintln!(
                "netns: cannot catch SIGINT and SIGTERM ({error}): \
                 an interrupted run will leave its namespaces behind"
            );
        }
    });
}

fn on_signal(pipe: &OwnedFd) {
    let mut byte = [0];
    loop {
        match rustix::io::read(pipe, &mut byte) {
            Ok(1) => break,
            Err(rustix::io::Errno::INTR) => continue,
            // The write end is never closed; nothing to wait for if it were.
            _ => return,
        }
    }
    let signal = i32::from(byte[0]);
    let mut live = live();
    for entry in live.drain(..) {
        eprintln!("netns {}: signal {signal}, removing it", entry.name);
        for problem in tear_down(&entry) {
            eprintln!("netns {}: {problem}", entry.name);
        }
    }
    std::process::exit(128 + signal);
}

/// Stops the rig's daemons, kills what else is in the namespace, deletes it; returns what
/// went wrong or had to be killed.
fn tear_down(entry: &Live) -> Vec<String> {
    let mut problems = Vec::new();
    for pid in entry.pids.iter().rev() {
        problems.extend(stop(*pid));
    }
    problems.extend(kill_leftovers(&entry.name));
    if let Err(error) = ip(&["netns", "del", &entry.name]) {
        problems.push(error.to_string());
    }
    problems
}

/// SIGTERM, up to [`STOP_GRACE`] for it to end, then SIGKILL; reaps it either way.
fn stop(pid: Pid) -> Option<String> {
    let raw = pid.as_raw_nonzero();
    match rustix::process::kill_process(pid, Signal::TERM) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(error) => return Some(format!("cannot stop pid {raw}: {error}")),
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::CHILD) => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Some(format!("cannot wait for pid {raw}: {error}")),
        }
    }
    if let Err(error) = rustix::process::kill_process(pid, Signal::KILL) {
        return Some(format!("cannot kill pid {raw}: {error}"));
    }
    match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
        Ok(_) | Err(rustix::io::Errno::CHILD) => {
            Some(format!("pid {raw} ignored SIGTERM and was killed"))
        }
        Err(error) => Some(format!("cannot wait for pid {raw}: {error}")),
    }
}

/// Kills every process still in namespace `name` (but this one), as `ip netns pids` would
/// find them, and waits up to [`STOP_GRACE`] for them to leave it; names each on the way.
fn kill_leftovers(name: &str) -> Vec<String> {
    let Ok(namespace) = fs::metadata(Path::new("/run/netns").join(name)) else {
        return Vec::new();
    };
    let identity = (namespace.dev(), namespace.ino());
    let inside = |pid: i32| {
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|found| (found.dev(), found.ino()) == identity)
    };
    let Ok(processes) = fs::read_dir("/proc") else {
        return vec!["cannot list /proc for processes left in the namespace".into()];
    };
    let me = i32::try_from(std::process::id()).unwrap_or_default();
    let mut killed = Vec::new();
    let mut reports = Vec::new();
    for pid in processes
        .filter_map(|process| process.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
    {
        let Some(target) = Pid::from_raw(pid).filter(|_| inside(pid)) else {
            continue;
        };
        // Through a pidfd checked after opening, so a PID reused meanwhile is left alone.
        let Ok(pidfd) = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
        else {
            continue;
        };
        if !inside(pid) {
            continue;
        }
        let command = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        match rustix::process::pidfd_send_signal(&pidfd, Signal::KILL) {
            Ok(()) => {
                reports.push(format!("killed pid {pid} ({}), left in it", command.trim()));
                killed.push(pid);
            }
            Err(error) => reports.push(format!("cannot kill pid {pid} left in it: {error}")),
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while killed.iter().any(|pid| inside(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    reports
}

/// The `rig` subcommand: brings a rig up and keeps it until Ctrl-C, to rerun a netboot
/// scenario's QEMU command by hand.
pub fn hold(spec: &NetSpec) -> Result<(), String> {
    let net = NetbootNet::create(spec).map_err(|error| {
        if error.cannot_run_here() {
            format!("{error} (a netboot scenario falls back to QEMU's user-mode network)")
        } else {
            error.to_string()
        }
    })?;
    let nic = net
        .netdev_args(0, "52:54:00:14:00:01")
        .map_err(|error| error.to_string())?;
    println!(
        "netns {}: guests run as `{} qemu-system-x86_64 … {}`",
        net.name(),
        net.qemu_prefix().join(" "),
        nic.join(" ")
    );
    println!(
        "netns {}: HTTP {} (its log {}), dnsmasq at {} (its log {}); Ctrl-C removes it",
        net.name(),
        NetbootNet::url(""),
        net.http_log().display(),
        net.server_address(),
        net.dnsmasq_log().display()
    );
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
#[path = "../../../init/tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::AsFd;
    use std::sync::OnceLock;

    #[test]
    fn the_scenarios_config_gets_the_rigs_options_after_it() {
        let tree = Path::new("/srv/tree");
        let run = Path::new("/run/xb");
        let config = dnsmasq_config(
            "dhcp-range=10.14.0.100,10.14.0.199,1h\n# port=53 in a comment\nenable-tftp\nlog-dhcp",
            tree,
            run,
        )
        .expect("accepted");
        assert_eq!(
            config,
            "dhcp-range=10.14.0.100,10.14.0.199,1h\n# port=53 in a comment\nenable-tftp\n\
             log-dhcp\n# The netboot rig's own options (qemu-tests/src/harness/netns.rs):\n\
             interface=br0\nbind-interfaces\nport=0\npid-file=\nuser=root\n\
             dhcp-leasefile=/run/xb/leases\nlog-facility=-\nlog-dhcp\ntftp-root=/srv/tree\n"
        );
        let own_root =
            dnsmasq_config("enable-tftp\ntftp-root=/elsewhere\n", tree, run).expect("accepted");
        assert_eq!(own_root.matches("tftp-root=").count(), 1, "{own_root}");
        let no_tftp = dnsmasq_config("dhcp-range=10.14.0.0,proxy\n", tree, run).expect("ok");
        assert!(!no_tftp.contains("tftp-root"), "{no_tftp}");
        for refused in [
            "port=0",
            " pid-file=",
            "interface=br0",
            "bind-interfaces",
            "user=nobody",
        ] {
            let text = format!("dhcp-range=10.14.0.100,10.14.0.199,1h\n{refused}\n");
            match dnsmasq_config(&text, tree, run) {
                Err(NetError::RigOption { line: 2, text }) => assert_eq!(text, refused.trim()),
                other => panic!("{refused}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_links_are_a_bridge_with_the_server_and_taps_on_it() {
        let plan: Vec<String> = link_commands("xbq-t-1-0", 2)
            .iter()
            .map(|words| words.join(" "))
            .collect();
        assert_eq!(
            plan,
            [
                "-n xbq-t-1-0 link set lo up",
                "-n xbq-t-1-0 link add br0 type bridge",
                "-n xbq-t-1-0 addr add 10.14.0.1/24 dev br0",
                "-n xbq-t-1-0 link set br0 up",
                "-n xbq-t-1-0 tuntap add dev tap0 mode tap",
                "-n xbq-t-1-0 link set tap0 master br0",
                "-n xbq-t-1-0 link set tap0 up",
                "-n xbq-t-1-0 tuntap add dev tap1 mode tap",
                "-n xbq-t-1-0 link set tap1 master br0",
                "-n xbq-t-1-0 link set tap1 up",
            ]
        );
        let name = unique_name("PXE boot/uefi");
        assert!(
            name.starts_with(&format!("xbq-pxe-boot-uefi-{}-", std::process::id())),
            "{name}"
        );
    }

    #[test]
    fn qemu_arguments_name_the_tap_or_the_user_network() {
        let net = NetbootNet {
            name: "xbq-t-1-0".into(),
            taps: 2,
            run_dir: PathBuf::from("/run/xb"),
            dnsmasq: Pid::INIT,
            http: Pid::INIT,
        };
        assert_eq!(net.qemu_prefix(), ["ip", "netns", "exec", "xbq-t-1-0"]);
        assert_eq!(
            net.netdev_args(1, "52:54:00:14:00:02").expect("tap1"),
            [
                "-netdev",
                "tap,id=n0,ifname=tap1,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:14:00:02,bootindex=0"
            ]
        );
        let error = net
            .netdev_args(2, "52:54:00:14:00:03")
            .expect_err("no tap2");
        assert_eq!(error.to_string(), "the rig has taps tap0..tap1, not tap2");
        // Not registered, so dropping it tears nothing down.
        drop(net);
        assert_eq!(
            user_mode_args(Path::new("/srv/a,b"), "boot.ipxe", "52:54:00:14:00:01"),
            [
                "-netdev",
                "user,id=n0,tftp=/srv/a,,b,bootfile=boot.ipxe",
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:14:00:01,bootindex=0"
            ]
        );
        assert_eq!(
            NetbootNet::url("/boot.ipxe"),
            "http://10.14.0.1:8080/boot.ipxe"
        );
    }

    const PRIVILEGED: &[&str] = &["ip", DNSMASQ];

    /// The runner binary, built now (the test binary has no `serve` subcommand), in the
    /// profile and target directory of this test.
    fn runner() -> &'static Path {
        static RUNNER: OnceLock<PathBuf> = OnceLock::new();
        RUNNER.get_or_init(|| {
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
            let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("debug") => "dev",
                Some(other) => other,
                None => panic!("{} has no profile directory", exe.display()),
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--profile", profile])
                .args(["-p", "xorbang-qemu-tests", "--bin", "xorbang-qemu-tests"])
                .arg("--manifest-path")
                .arg(manifest)
                .status()
                .expect("runs cargo");
            assert!(status.success(), "cargo build: {status}");
            profile_dir.join("xorbang-qemu-tests")
        })
    }

    fn spec(dir: &Path, taps: usize) -> NetSpec {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("hosts")).expect("mkdir");
        fs::write(tree.join("hello.txt"), b"hello, guest\n").expect("write");
        fs::write(tree.join("hosts/default.cpio"), vec![7; 100_000]).expect("write");
        NetSpec {
            tag: "rig-test".into(),
            tree,
            run_dir: dir.join("run"),
            taps,
            dnsmasq_conf: "dhcp-range=10.14.0.100,10.14.0.199,255.255.255.0,1h\nenable-tftp\n"
                .into(),
            server: runner().to_owned(),
        }
    }

    /// Runs `work` on a thread that entered namespace `name`.
    fn inside<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = File::open(Path::new("/run/netns").join(name)).expect("netns");
                    rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("setns");
                    work()
                })
                .join()
                .expect("the thread in the namespace")
        })
    }

    fn http(head: &str) -> String {
        let mut stream = TcpStream::connect((SERVER_ADDRESS, HTTP_PORT)).expect("connects");
        stream.write_all(head.as_bytes()).expect("writes");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("reads");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The first block of `file` by TFTP (RFC 1350): a read request, and the DATA packet.
    fn tftp_first_block(file: &str) -> Vec<u8> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let request = [&[0, 1], file.as_bytes(), b"\0octet\0"].concat();
        socket
            .send_to(&request, (SERVER_ADDRESS, 69))
            .expect("sends");
        let mut packet = [0; 600];
        let (length, _) = socket.recv_from(&mut packet).expect("a TFTP answer");
        packet[..length].to_vec()
    }

    /// Whether `ip netns list` shows `name` (its lines are `NAME` or `NAME (id: N)`).
    fn listed(name: &str) -> bool {
        let output = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.split_whitespace().next() == Some(name))
    }

    fn gone(pid: Pid) -> bool {
        rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
    }

    #[test]
    fn a_rig_serves_inside_its_namespace_and_leaves_nothing_behind() {
        if !support::can_run_privileged(
            "harness::netns::tests::a_rig_serves_inside_its_namespace_and_leaves_nothing_behind",
            "network namespaces",
            PRIVILEGED,
        ) {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let net = NetbootNet::create(&spec(dir.path(), 2)).expect("the rig comes up");
        let name = net.name().to_owned();
        assert!(listed(&name));
        let links = Command::new("ip")
            .args(["-n", &name, "-o", "link", "show"])
            .output()
            .expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        for tap in ["tap0", "tap1"] {
            assert!(
                links.lines().any(|line| line.contains(&format!(": {tap}: "))
                    && line.contains("master br0")),
                "{tap} on br0: {links}"
            );
        }
        // A stand-in for a QEMU the scenario forgot: the teardown must kill it.
        let mut straggler = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "600"])
            .spawn()
            .expect("sleep in the namespace");

        let (hello, head, part, missing, block) = inside(&name, || {
            (
                http("GET /hello.txt HTTP/1.1\r\n\r\n"),
                http("HEAD /hosts/default.cpio HTTP/1.1\r\n\r\n"),
                http("GET /hosts/default.cpio HTTP/1.1\r\nRange: bytes=99990-\r\n\r\n"),
                http("GET /hosts/52-54-00-14-00-02.cpio HTTP/1.1\r\n\r\n"),
                tftp_first_block("hello.txt"),
            )
        });
        assert!(hello.starts_with("HTTP/1.1 200 OK\r\n"), "{hello}");
        assert!(hello.ends_with("\r\n\r\nhello, guest\n"), "{hello}");
        assert!(head.contains("\r\nContent-Length: 100000\r\n"), "{head}");
        assert!(
            part.contains("\r\nContent-Range: bytes 99990-99999/100000\r\n"),
            "{part}"
        );
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        assert_eq!(
            block,
            [&[0, 3, 0, 1], &b"hello, guest\n"[..]].concat(),
            "TFTP DATA 1"
        );
        // dnsmasq's DHCP socket (port 67), in the namespace.
        let udp = fs::read_to_string(format!("/proc/{}/net/udp", net.dnsmasq.as_raw_nonzero()))
            .expect("dnsmasq's sockets");
        assert!(udp.contains(":0043 "), "{udp}");
        let dnsmasq_log = fs::read_to_string(net.dnsmasq_log()).expect("log");
        assert!(
            dnsmasq_log.contains("DHCP, IP range 10.14.0.100 -- 10.14.0.199"),
            "{dnsmasq_log}"
        );
        assert_eq!(
            net.served_bytes().expect("the log"),
            BTreeMap::from([(IpAddr::from(SERVER_ADDRESS), 13 + 10)])
        );

        let pids = [net.dnsmasq, net.http];
        drop(net);
        assert!(!listed(&name));
        assert!(!Path::new("/run/netns").join(&name).exists());
        for pid in pids {
            assert!(gone(pid), "pid {} is still there", pid.as_raw_nonzero());
        }
        let status = straggler.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    #[test]
    fn a_daemon_that_fails_to_start_is_named_and_its_rig_removed() {
        if !support::can_run_privileged(
            "harness::netns::tests::a_daemon_that_fails_to_start_is_named_and_its_rig_removed",
            "network namespaces",
            PRIVILEGED,
        ) {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec(dir.path(), 1);
        spec.dnsmasq_conf = "dhcp-range=nowhere\n".into();
        let error = NetbootNet::create(&spec)
            .expect_err("dnsmasq refuses")
            .to_string();
        let name = error
            .strip_prefix("netns ")
            .and_then(|rest| rest.split(':').next())
            .expect(&error);
        assert!(
            error.starts_with(&format!(
                "netns {name}: dnsmasq exited with status 1 while starting; its output ("
            )),
            "{error}"
        );
        assert!(error.contains("bad dhcp-range at line 1"), "{error}");
        assert!(!listed(name), "{name} is left");
    }

    #[test]
    fn without_root_the_rig_is_not_permitted() {
        if !support::can_run_privileged(
            "harness::netns::tests::without_root_the_rig_is_not_permitted",
            "to drop it",
            &["setpriv"],
        ) {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("scenario.conf");
        fs::write(&conf, "dhcp-range=10.14.0.100,10.14.0.199,1h\n").expect("write");
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(runner())
            .arg("rig")
            .arg("--tree")
            .arg(dir.path())
            .arg("--dnsmasq-conf")
            .arg(&conf)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .output()
            .expect("runs the runner as nobody");
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "xorbang-qemu-tests: no network namespace for the netboot rig: not root \
             (namespaces, bridges and taps need CAP_NET_ADMIN and CAP_SYS_ADMIN) \
             (a netboot scenario falls back to QEMU's user-mode network)\n"
        );
        assert!(!dir.path().join("run").exists(), "nothing was made");
    }

    #[test]
    fn sigterm_removes_the_rigs_of_the_runner() {
        if !support::can_run_privileged(
            "harness::netns::tests::sigterm_removes_the_rigs_of_the_runner",
            "network namespaces",
            PRIVILEGED,
        ) {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(dir.path(), 1);
        let conf = dir.path().join("scenario.conf");
        fs::write(&conf, &spec.dnsmasq_conf).expect("write");
        let mut runner = Command::new(runner())
            .arg("rig")
            .arg("--tree")
            .arg(&spec.tree)
            .arg("--dnsmasq-conf")
            .arg(&conf)
            .arg("--run-dir")
            .arg(&spec.run_dir)
            .args(["--taps", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs the runner");
        let mut errors = runner.stderr.take().expect("stderr");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut byte = [0];
            while errors.read(&mut byte).is_ok_and(|count| count == 1) {
                if byte[0] == b'\n' {
                    if sender.send(std::mem::take(&mut text)).is_err() {
                        break;
                    }
                } else {
                    text.push(char::from(byte[0]));
                }
            }
        });
        let report = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the rig's report line");
        // netns NAME: bridge br0 10.14.0.1/24, taps tap0, dnsmasq pid P, http pid Q
        let field = |before: &str, after: &str| -> String {
            let rest = report.split_once(before).expect(&report).1;
            rest.split(after).next().expect(&report).to_owned()
        };
        let (name, dnsmasq, http) = (
            field("netns ", ":"),
            field("dnsmasq pid ", ","),
            field("http pid ", "\n"),
        );
        assert_eq!(
            report,
            format!(
                "netns {name}: bridge br0 10.14.0.1/24, taps tap0, \
                 dnsmasq pid {dnsmasq}, http pid {http}"
            )
        );
        let pid = |text: &str| Pid::from_raw(text.parse().expect(&report)).expect(&report);
        let daemons = [pid(&dnsmasq), pid(&http)];
        assert!(listed(&name));
        rustix::process::kill_process(Pid::from_child(&runner), Signal::TERM).expect("SIGTERM");
        let status = runner.wait().expect("the runner ends");
        assert_eq!(status.code(), Some(128 + 15), "{status}");
        assert!(!listed(&name));
        for daemon in daemons {
            assert!(
                gone(daemon),
                "pid {} is still there",
                daemon.as_raw_nonzero()
            );
        }
    }
}

//! Privileged tier of the DHCP client: a veth pair between two network namespaces, dnsmasq
//! serving leases on one end, and the init's own code (`network::bring_up`, or
//! `network::configure_interface` on a named interface) on the other, run from a thread that
//! has entered the client's namespace. The kernel's view afterwards (`ip -n … addr`, `route`)
//! is the oracle. When not root or when `ip` or `dnsmasq` is missing, each test prints
//! `SKIPPED <test>: <reason>` on the terminal and returns.

mod support;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use xorbang_formats::dhcp::Mac;
use xorbang_formats::error_chain::error_chain;
use xorbang_init::network::{self, Interface, Lease, NetworkError};
use xorbang_init::paths::Paths;

const SERVER_END: &str = "xbs0";
const CLIENT_END: &str = "xbc0";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const BUDGET: Duration = Duration::from_secs(20);

/// Whether `test` can run here; if not, it is reported as skipped.
fn can_run(test: &str) -> bool {
    support::can_run_privileged(test, "network namespaces", &["ip", "dnsmasq"])
}

/// Runs `ip args`, which must succeed.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two network namespaces joined by a veth pair: the server's end has 10.77.0.1/24 (and,
/// when started, dnsmasq); the client's end is down and unconfigured. Everything goes with
/// the value, also when a test fails half-way.
struct Lab {
    server_ns: String,
    client_ns: String,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let base = format!("xbt-dhcp-{}-{tag}", std::process::id());
        let lab = Self {
            server_ns: format!("{base}-s"),
            client_ns: format!("{base}-c"),
            dir: tempfile::tempdir().expect("tempdir"),
            dnsmasq: None,
        };
        ip(&["netns", "add", &lab.server_ns]);
        ip(&["netns", "add", &lab.client_ns]);
        let (s, c) = (lab.server_ns.as_str(), lab.client_ns.as_str());
        ip(&[
            "-n", s, "link", "add", SERVER_END, "type", "veth", "peer", "name", CLIENT_END,
            "netns", c,
        ]);
        ip(&["-n", s, "addr", "add", "10.77.0.1/24", "dev", SERVER_END]);
        ip(&["-n", s, "link", "set", SERVER_END, "up"]);
        // A new namespace may inherit a reverse-path filter from the host's; the initramfs
        // has the kernel's default, none (see the network module).
        lab.in_client(|| {
            for scope in ["all", "default", CLIENT_END] {
                let path = format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter");
                std::fs::write(&path, "0\n").expect("rp_filter");
            }
        });
        lab
    }

    /// Starts dnsmasq on the server's end, leasing 10.77.0.50 to .60 with 10.77.0.1 as
    /// the router.
    fn with_dnsmasq(mut self) -> Self {
        let log = File::create(self.dnsmasq_log()).expect("log file");
        let leases = self.dir.path().join("leases");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "dnsmasq", "--no-daemon"])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                "--pid-file=",
            ])
            .arg(format!("--interface={SERVER_END}"))
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
            .arg("--dhcp-option=3,10.77.0.1")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(["--log-dhcp", "--log-facility=-"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("dnsmasq runs");
        self.dnsmasq = Some(child);
        self
    }

    fn dnsmasq_log(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    /// What dnsmasq said, for a failure message.
    fn server_side(&self) -> String {
        let log = std::fs::read_to_string(self.dnsmasq_log()).unwrap_or_default();
        format!("dnsmasq said:\n{log}")
    }

    /// Runs `work` on a thread inside the client's network namespace.
    fn in_client<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let namespace = Path::new("/run/netns").join(&self.client_ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&namespace).expect("open the namespace");
                    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                        .expect("setns");
                    work()
                })
                .join()
                .expect("the client thread")
        })
    }

    /// The client end's MAC, as the kernel shows it.
    fn client_mac(&self) -> Mac {
        let text = ip(&[
            "-n",
            &self.client_ns,
            "-o",
            "link",
            "show",
            "dev",
            CLIENT_END,
        ]);
        let mac = text
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .expect("link/ether in ip's output");
        mac.parse().expect("a MAC")
    }

    /// Checks `lease` against what dnsmasq was told to lease and what the kernel shows.
    fn assert_applied(&self, lease: &Lease) {
        let context = self.server_side();
        assert_eq!(lease.interface, CLIENT_END, "{context}");
        assert_eq!(lease.mac, self.client_mac(), "{context}");
        let last = lease.address.octets()[3];
        assert!(
            lease.address.octets()[..3] == [10, 77, 0] && (50..=60).contains(&last),
            "{lease:?} {context}"
        );
        assert_eq!(lease.prefix_len, 24, "{context}");
        assert_eq!(lease.router, Some(SERVER), "{context}");
        assert_eq!(lease.server, SERVER, "{context}");
        assert_eq!(
            lease.lease_time,
            Some(Duration::from_secs(3600)),
            "{context}"
        );
        let c = self.client_ns.as_str();
        let addresses = ip(&["-n", c, "-4", "-o", "addr", "show", "dev", CLIENT_END]);
        assert!(
            addresses.contains(&format!("inet {}/24 brd 10.77.0.255", lease.address)),
            "{addresses}"
        );
        let routes = ip(&["-n", c, "-4", "route", "show"]);
        assert!(
            routes.contains(&format!("default via 10.77.0.1 dev {CLIENT_END}")),
            "{routes}"
        );
        assert!(
            routes.contains(&format!("10.77.0.0/24 dev {CLIENT_END}")),
            "{routes}"
        );
        let leases = std::fs::read_to_string(self.dir.path().join("leases")).unwrap_or_default();
        assert!(
            leases.contains(&format!("{} {}", lease.mac, lease.address)),
            "dnsmasq's leases: {leases:?}"
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut dnsmasq) = self.dnsmasq.take() {
            if let Err(error) = dnsmasq.kill().and_then(|()| dnsmasq.wait().map(drop)) {
                eprintln!("stopping dnsmasq: {error}");
            }
        }
        // Deleting a namespace deletes the veth pair in it.
        for namespace in [&self.client_ns, &self.server_ns] {
            match Command::new("ip")
                .args(["netns", "del", namespace])
                .status()
            {
                Ok(status) if status.success() => {}
                other => eprintln!("ip netns del {namespace}: {other:?}"),
            }
        }
    }
}

/// A sysfs of the thread's network namespace mounted at `root/sys` while it lives, so the
/// interface scan sees the client's interfaces (sysfs shows those of the namespace of
/// whoever mounts it).
struct Sysfs(PathBuf);

impl Sysfs {
    fn mount(root: &Path) -> Self {
        let target = root.join("sys");
        std::fs::create_dir_all(&target).expect("mkdir");
        rustix::mount::mount(
            "sysfs",
            &target,
            "sysfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .expect("mount sysfs");
        Self(target)
    }
}

impl Drop for Sysfs {
    fn drop(&mut self) {
        if let Err(error) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("umount {}: {error}", self.0.display());
        }
    }
}

fn shown(result: &Result<Lease, NetworkError>) -> String {
    match result {
        Ok(lease) => format!("{lease:?}"),
        Err(error) => error_chain(error),
    }
}

#[test]
fn bring_up_finds_the_interface_and_applies_dnsmasqs_lease() {
    if !can_run("dhcp::bring_up_finds_the_interface_and_applies_dnsmasqs_lease") {
        return;
    }
    let lab = Lab::new("up").with_dnsmasq();
    let root = lab.dir.path().join("root");
    let result = lab.in_client(|| {
        let _sysfs = Sysfs::mount(&root);
        network::bring_up(&Paths::under(root.clone()), BUDGET)
    });
    let lease = result
        .as_ref()
        .unwrap_or_else(|_| panic!("{} {}", shown(&result), lab.server_side()));
    lab.assert_applied(lease);
}

#[test]
fn configure_interface_applies_dnsmasqs_lease_to_a_named_interface() {
    if !can_run("dhcp::configure_interface_applies_dnsmasqs_lease_to_a_named_interface") {
        return;
    }
    let lab = Lab::new("named").with_dnsmasq();
    let interface = Interface {
        name: CLIENT_END.to_owned(),
        mac: lab.client_mac(),
    };
    let result = lab.in_client(|| network::configure_interface(&interface, BUDGET));
    let lease = result
        .as_ref()
        .unwrap_or_else(|_| panic!("{} {}", shown(&result), lab.server_side()));
    lab.assert_applied(lease);
}

#[test]
fn without_a_server_the_client_gives_up_within_its_budget() {
    if !can_run("dhcp::without_a_server_the_client_gives_up_within_its_budget") {
        return;
    }
    let lab = Lab::new("silent");
    let interface = Interface {
        name: CLIENT_END.to_owned(),
        mac: lab.client_mac(),
    };
    let started = std::time::Instant::now();
    let result =
        lab.in_client(|| network::configure_interface(&interface, Duration::from_millis(2500)));
    let took = started.elapsed();
    let Err(error) = &result else {
        panic!("a lease without a server: {}", shown(&result));
    };
    // Sent at 0 s and 1 s, then the wait of 2 s is cut at the budget.
    let message = error_chain(error);
    assert!(
        message.starts_with(&format!("no DHCP offer on {CLIENT_END} after 2 tries (2.")),
        "{message}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    let addresses = ip(&[
        "-n",
        &lab.client_ns,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        CLIENT_END,
    ]);
    assert_eq!(addresses.trim(), "", "no address without a lease");
}

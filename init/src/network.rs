//! Bringing up one network interface with DHCP (IPv4), so that a netbooted machine can
//! download its root image: find the Ethernet interfaces in sysfs, bring them up, take the
//! first with carrier, get a lease (DISCOVER, OFFER, REQUEST, ACK; `dhcp` in
//! `xorbang-formats` writes and checks the messages) and configure it: the address, its
//! prefix and a default route through the first router.
//!
//! The client listens on a plain UDP socket bound to 0.0.0.0:68 and to the interface, and
//! asks for broadcast replies: the kernel delivers those before the interface has an
//! address. It relies on the kernel's default of no reverse-path filter (`rp_filter` 0),
//! which would otherwise drop replies from a source it has no route to yet.
//!
//! The lease is not renewed: the initramfs lives for seconds, and the booted system's own
//! network manager takes the interface over. Without a subnet mask in the lease the address
//! is a /32 (see [`Reply::prefix_len`]) and the router, outside it, gets a host route of its
//! own before the default route goes through it.
//!
//! Errors name the interface and the cause and leave the stage to the caller's context
//! (`netboot: no DHCP offer on eth0 after 4 tries (10 s)`).

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{ipproto, sockopt, AddressFamily, SocketFlags, SocketType};
use xorbang_formats::dhcp::{self, Mac, MacError, Reply, ReplyError, ReplyKind};
use xorbang_formats::error_chain::error_chain;

use crate::paths::Paths;
use crate::sys::{self, InterfaceName, Route};

/// `type` of an Ethernet interface in sysfs (ARPHRD_ETHER, include/uapi/linux/if_arp.h).
const ARPHRD_ETHER: u32 = 1;
/// `IFF_UP` of include/uapi/linux/if.h.
const IFF_UP: u16 = 0x1;
/// How often the carrier wait looks again.
const CARRIER_POLL: Duration = Duration::from_millis(20);
/// How long the first DISCOVER or REQUEST waits for its answer; each retransmission waits
/// twice as long as the one before, up to [`MAX_WAIT`]. RFC 2131 section 4.1 starts at 4 s,
/// but a netboot's budget is seconds and lost packets are rare on a LAN: answers come in
/// milliseconds.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(8);
/// How many times a DHCPNAK sends the client back to DISCOVER before it gives up.
const NAK_RESTARTS: usize = 1;
/// Refused replies logged per exchange: enough to diagnose a broken server, too few to
/// flood the console from a hostile one.
const LOGGED_REFUSALS: usize = 3;
/// Above the largest reply the client accepts (option 57, [`dhcp::MAX_MESSAGE_SIZE`]).
const RECEIVE_BUFFER: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot read {}", path.display())]
    Sysfs { path: PathBuf, source: io::Error },
    #[error(
        "no Ethernet interface in {} (is the NIC driver, e.g. virtio_net, in the initramfs?)",
        dir.display()
    )]
    NoEthernet { dir: PathBuf },
    #[error("{}", path.display())]
    Mac { path: PathBuf, source: MacError },
    #[error("{interface:?}")]
    Name {
        interface: String,
        source: io::Error,
    },
    #[error("cannot open a socket for the interface ioctls")]
    Control(#[source] io::Error),
    #[error("cannot bring {interface} up")]
    LinkUp {
        interface: String,
        source: io::Error,
    },
    #[error(
        "no carrier on {interfaces} after {secs} s (is the cable plugged in, the switch port up?)"
    )]
    NoCarrier { interfaces: String, secs: f64 },
    #[error("cannot set up the DHCP socket on {interface} ({what})")]
    Socket {
        interface: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot send the {what} on {interface}")]
    Send {
        interface: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot receive DHCP replies on {interface}")]
    Receive {
        interface: String,
        source: io::Error,
    },
    #[error(
        "no {what} on {interface} after {tries} tries ({secs} s){}",
        refused_note(*refused)
    )]
    NoReply {
        interface: String,
        what: String,
        tries: usize,
        secs: f64,
        refused: usize,
    },
    #[error(
        "DHCP server {server} refused the lease of {address} on {interface} {times} times \
         (DHCPNAK{})",
        message.as_ref().map(|text| format!(": {text:?}")).unwrap_or_default()
    )]
    Nak {
        interface: String,
        server: Ipv4Addr,
        address: Ipv4Addr,
        times: usize,
        message: Option<String>,
    },
    #[error("cannot set the {what} on {interface}")]
    Configure {
        interface: String,
        what: String,
        source: io::Error,
    },
}

fn refused_note(refused: usize) -> String {
    match refused {
        0 => String::new(),
        1 => "; 1 reply refused (see the warning above)".to_owned(),
        _ => format!("; {refused} replies refused (see the warnings above)"),
    }
}

/// An Ethernet interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Mac,
}

/// The configuration an interface got from DHCP, as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub mac: Mac,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's gateway, when the server named a router.
    pub router: Option<Ipv4Addr>,
    /// The server that leased the address (option 54 of its offer).
    pub server: Ipv4Addr,
    /// `siaddr`: the server of the next boot stage, 0.0.0.0 when none.
    pub next_server: Ipv4Addr,
    pub dns_servers: Vec<Ipv4Addr>,
    /// How long the lease lasts; it is not renewed (see the module's documentation).
    pub lease_time: Option<Duration>,
}

/// Brings up the first Ethernet interface (by name) of `paths.sys()/class/net` to get
/// carrier within `budget`, gets a DHCP lease for it and configures it, all within `budget`.
/// Logs one line with the interface, its address and how long it took.
pub fn bring_up(paths: &Paths, budget: Duration) -> Result<Lease, NetworkError> {
    let started = Instant::now();
    let deadline = started + budget;
    let class_net = paths.sys().join("class/net");
    let candidates = ethernet_interfaces(&class_net)?;
    let control = control_socket()?;
    let mut up = Vec::new();
    let mut first_error = None;
    for interface in candidates {
        match set_link_up(control.as_fd(), &interface.name) {
            Ok(()) => up.push(interface),
            Err(error) => {
                log::warn!("network: {}", error_chain(&error));
                first_error.get_or_insert(error);
            }
        }
    }
    if let (true, Some(error)) = (up.is_empty(), first_error) {
        return Err(error);
    }
    let interface =
        wait_for_carrier(&class_net, &up, deadline).ok_or_else(|| NetworkError::NoCarrier {
            interfaces: up
                .iter()
                .map(|interface| interface.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            secs: seconds(budget),
        })?;
    let lease = configure_interface(
        interface,
        deadline.saturating_duration_since(Instant::now()),
    )?;
    log::info!(
        "network: {} ({}) {}/{} from DHCP server {} in {} ms",
        lease.interface,
        lease.mac,
        lease.address,
        lease.prefix_len,
        lease.server,
        started.elapsed().as_millis()
    );
    Ok(lease)
}

/// The Ethernet interfaces (`type` 1) of `class_net` (a sysfs `class/net`), sorted by name:
/// not `lo`, not wireless ones (they have no carrier before a supplicant associates), not
/// entries that are no interface (`bonding_masters`).
pub fn ethernet_interfaces(class_net: &Path) -> Result<Vec<Interface>, NetworkError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| NetworkError::Sysfs { path, source }
    };
    let mut interfaces = Vec::new();
    for entry in fs::read_dir(class_net).map_err(read_error(class_net))? {
        let entry = entry.map_err(read_error(class_net))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        let is_ethernet = fs::read_to_string(dir.join("type"))
            .is_ok_and(|text| text.trim().parse() == Ok(ARPHRD_ETHER));
        if name == "lo" || !is_ethernet || dir.join("wireless").exists() {
            continue;
        }
        let path = dir.join("address");
        let text = fs::read_to_string(&path).map_err(read_error(&path))?;
        let mac = text
            .trim()
            .parse()
            .map_err(|source| NetworkError::Mac { path, source })?;
        interfaces.push(Interface { name, mac });
    }
    if interfaces.is_empty() {
        return Err(NetworkError::NoEthernet {
            dir: class_net.to_owned(),
        });
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

/// The first of `interfaces` (in their order) whose `carrier` reads 1, looking every
/// [`CARRIER_POLL`] until `deadline`.
pub fn wait_for_carrier<'a>(
    class_net: &Path,
    interfaces: &'a [Interface],
    deadline: Instant,
) -> Option<&'a Interface> {
    loop {
        // An interface that is down has no readable carrier: it is not there yet.
        let with_carrier = interfaces.iter().find(|interface| {
            fs::read_to_string(class_net.join(&interface.name).join("carrier"))
                .is_ok_and(|text| text.trim() == "1")
        });
        if with_carrier.is_some() {
            return with_carrier;
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(CARRIER_POLL.min(deadline - now));
    }
}

/// Sets `IFF_UP` on the interface `name` (`ip link set NAME up`).
fn set_link_up(control: BorrowedFd<'_>, name: &str) -> Result<(), NetworkError> {
    let ifname = interface_name(name)?;
    let link_up = |source| NetworkError::LinkUp {
        interface: name.to_owned(),
        source,
    };
    let flags = sys::interface_flags(control, &ifname).map_err(link_up)?;
    if flags & IFF_UP == 0 {
        sys::set_interface_flags(control, &ifname, flags | IFF_UP).map_err(link_up)?;
    }
    Ok(())
}

/// Gets a DHCP lease for `interface` within `budget` and configures it: brings it up (if it
/// is not), sets the address and netmask, and adds a default route through the first router.
pub fn configure_interface(interface: &Interface, budget: Duration) -> Result<Lease, NetworkError> {
    let deadline = Instant::now() + budget;
    let name = interface_name(&interface.name)?;
    let control = control_socket()?;
    set_link_up(control.as_fd(), &interface.name)?;
    let socket = dhcp_socket(interface, &name)?;
    let servers = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    let (ack, server) = negotiate(&socket, servers, interface, deadline)?;
    let address = ack.your_address;
    let prefix_len = ack.prefix_len();
    let configure = |what: String| {
        let interface = interface.name.clone();
        move |source| NetworkError::Configure {
            interface,
            what,
            source,
        }
    };
    sys::set_interface_address(control.as_fd(), &name, address)
        .map_err(configure(format!("address {address}")))?;
    let mask = netmask(prefix_len);
    sys::set_interface_netmask(control.as_fd(), &name, mask)
        .map_err(configure(format!("netmask {mask} of {address}")))?;
    let router = ack.routers.iter().copied().find(|router| {
        !(router.is_unspecified() || router.is_broadcast() || router.is_multicast())
            && *router != address
    });
    if let Some(router) = router {
        for route in routes_through(router, address, prefix_len, name) {
            let what = match route.gateway {
                Some(_) => format!("default route via {router}"),
                None => format!("host route to the router {router}"),
            };
            sys::add_route(control.as_fd(), &route).map_err(configure(what))?;
        }
    }
    Ok(Lease {
        interface: interface.name.clone(),
        mac: interface.mac,
        address,
        prefix_len,
        router,
        server,
        next_server: ack.next_server,
        dns_servers: ack.dns_servers,
        lease_time: ack.lease,
    })
}

/// The routes for a default route through `router`: a host route to it first when it is
/// outside the interface's subnet (a /32 lease), then the default route.
fn routes_through(
    router: Ipv4Addr,
    address: Ipv4Addr,
    prefix_len: u8,
    device: InterfaceName,
) -> Vec<Route> {
    let mask = u32::from(netmask(prefix_len));
    let on_link = u32::from(router) & mask == u32::from(address) & mask;
    let host_route = Route {
        destination: router,
        mask: Ipv4Addr::BROADCAST,
        gateway: None,
        device,
    };
    let default_route = Route {
        destination: Ipv4Addr::UNSPECIFIED,
        mask: Ipv4Addr::UNSPECIFIED,
        gateway: Some(router),
        device,
    };
    if on_link {
        vec![default_route]
    } else {
        vec![host_route, default_route]
    }
}

/// The mask of a prefix of `prefix_len` bits (at most 32).
fn netmask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len.min(32)))
            .unwrap_or(0),
    )
}

fn interface_name(name: &str) -> Result<InterfaceName, NetworkError> {
    InterfaceName::new(name).map_err(|source| NetworkError::Name {
        interface: name.to_owned(),
        source,
    })
}

/// An AF_INET datagram socket: what the interface ioctls go through.
fn control_socket() -> Result<OwnedFd, NetworkError> {
    rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|errno| NetworkError::Control(errno.into()))
}

/// The client's socket: UDP on 0.0.0.0:68, bound to `interface`, allowed to broadcast.
fn dhcp_socket(interface: &Interface, name: &InterfaceName) -> Result<UdpSocket, NetworkError> {
    let error = |what| {
        move |source| NetworkError::Socket {
            interface: interface.name.clone(),
            what,
            source,
        }
    };
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(ipproto::UDP),
    )
    .map_err(|errno| error("socket")(errno.into()))?;
    sockopt::set_socket_reuseaddr(&socket, true)
        .map_err(|errno| error("SO_REUSEADDR")(errno.into()))?;
    sockopt::set_socket_broadcast(&socket, true)
        .map_err(|errno| error("SO_BROADCAST")(errno.into()))?;
    sys::bind_to_device(socket.as_fd(), name).map_err(error("SO_BINDTODEVICE"))?;
    let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT);
    rustix::net::bind(&socket, &local)
        .map_err(|errno| error("bind to 0.0.0.0:68")(errno.into()))?;
    Ok(UdpSocket::from(socket))
}

/// A transaction id no other client on the link is likely to pick: std's random hash keys
/// (from getrandom, which never blocks for them) over the MAC.
fn transaction_id(mac: Mac) -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write(&mac.0);
    hasher.finish() as u32
}

/// DISCOVER, OFFER, REQUEST, ACK through `socket`, to `servers` (the broadcast address, or
/// a test's server), by `deadline`: the ACK and the server that sent it. A NAK starts over
/// with a new transaction, [`NAK_RESTARTS`] times.
fn negotiate(
    socket: &UdpSocket,
    servers: SocketAddrV4,
    interface: &Interface,
    deadline: Instant,
) -> Result<(Reply, Ipv4Addr), NetworkError> {
    let mac = interface.mac;
    let mut xid = transaction_id(mac);
    let mut naks = 0;
    loop {
        let exchange = Exchange {
            socket,
            servers,
            interface,
            xid,
            deadline,
        };
        let discover = dhcp::discover(xid, mac);
        let (offer, server) = exchange.run(&discover, "DHCPDISCOVER", "DHCP offer", |reply| {
            let server = reply.server_id?;
            (reply.kind == ReplyKind::Offer).then_some((reply, server))
        })?;
        let request = dhcp::request(xid, mac, offer.your_address, server);
        let answer = exchange.run(
            &request,
            "DHCPREQUEST",
            &format!("DHCP acknowledgement from {server}"),
            // Answers of other servers (whose offers this REQUEST declined) are not ours.
            |reply| {
                let ours = reply.server_id.map_or(true, |id| id == server);
                (ours && reply.kind != ReplyKind::Offer).then_some(reply)
            },
        )?;
        if answer.kind == ReplyKind::Ack {
            return Ok((answer, server));
        }
        naks += 1;
        if naks > NAK_RESTARTS {
            return Err(NetworkError::Nak {
                interface: interface.name.clone(),
                server,
                address: offer.your_address,
                times: naks,
                message: answer.message,
            });
        }
        log::warn!(
            "network: DHCP server {server} refused the lease of {} on {} (DHCPNAK{}); starting over",
            offer.your_address,
            interface.name,
            answer
                .message
                .map(|text| format!(": {text:?}"))
                .unwrap_or_default()
        );
        xid = xid.wrapping_add(1);
    }
}

/// One message and the wait for its answer, retransmitted until `deadline`.
struct Exchange<'a> {
    socket: &'a UdpSocket,
    servers: SocketAddrV4,
    interface: &'a Interface,
    xid: u32,
    deadline: Instant,
}

impl Exchange<'_> {
    /// Sends `message` (a `sent`) and returns what `accept` makes of the first reply it
    /// takes; replies for other clients are ignored, those that do not parse are logged and
    /// ignored. `expected` names the reply in the error when none came.
    fn run<T>(
        &self,
        message: &[u8],
        sent: &'static str,
        expected: &str,
        accept: impl Fn(Reply) -> Option<T>,
    ) -> Result<T, NetworkError> {
        let name = &self.interface.name;
        let started = Instant::now();
        let mut wait = FIRST_WAIT;
        let mut tries = 0;
        let mut refused = 0;
        let mut buffer = [0u8; RECEIVE_BUFFER];
        loop {
            tries += 1;
            self.socket
                .send_to(message, self.servers)
                .map_err(|source| NetworkError::Send {
                    interface: name.clone(),
                    what: sent,
                    source,
                })?;
            let try_deadline = (Instant::now() + wait).min(self.deadline);
            while let Some(left) = remaining(try_deadline) {
                let Some((length, peer)) = self.receive(&mut buffer, left)? else {
                    break;
                };
                match dhcp::parse_reply(&buffer[..length], self.xid, self.interface.mac) {
                    Ok(reply) => {
                        if let Some(found) = accept(reply) {
                            return Ok(found);
                        }
                    }
                    Err(ReplyError::ForSomeoneElse { .. }) => {}
                    Err(error) => {
                        refused += 1;
                        if refused <= LOGGED_REFUSALS {
                            log::warn!(
                                "network: {name}: ignoring a DHCP reply from {peer}: {error}"
                            );
                        }
                    }
                }
            }
            if remaining(self.deadline).is_none() {
                return Err(NetworkError::NoReply {
                    interface: name.clone(),
                    what: expected.to_owned(),
                    tries,
                    secs: seconds(started.elapsed()),
                    refused,
                });
            }
            wait = (wait * 2).min(MAX_WAIT);
        }
    }

    /// The next datagram within `left`, or None when none came.
    fn receive(
        &self,
        buffer: &mut [u8],
        left: Duration,
    ) -> Result<Option<(usize, std::net::SocketAddr)>, NetworkError> {
        let receive_error = |source| NetworkError::Receive {
            interface: self.interface.name.clone(),
            source,
        };
        self.socket
            .set_read_timeout(Some(left))
            .map_err(receive_error)?;
        match self.socket.recv_from(buffer) {
            Ok(received) => Ok(Some(received)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(receive_error(source)),
        }
    }
}

/// The time left until `deadline`, None when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
}

/// Seconds for a message: tenths at most.
fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use xorbang_formats::fixtures::{assert_said_once, DhcpClientMessage, DhcpServerReply};

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 14, 0, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 14, 0, 101);

    fn interface(class_net: &Path, name: &str, kind: &str, address: &str) -> PathBuf {
        let dir = class_net.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("type"), format!("{kind}\n")).expect("write type");
        fs::write(dir.join("address"), format!("{address}\n")).expect("write address");
        dir
    }

    #[test]
    fn ethernet_interfaces_are_found_sorted_without_lo_wireless_or_other_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class_net = dir.path();
        interface(class_net, "lo", "772", "00:00:00:00:00:00");
        interface(class_net, "lo2", "1", "02:00:00:00:00:09");
        interface(class_net, "eth1", "1", "52:54:00:12:34:57");
        interface(class_net, "eth0", "1", "52:54:00:12:34:56");
        interface(class_net, "sit0", "776", "00:00:00:00");
        let wlan = interface(class_net, "wlan0", "1", "02:00:00:00:00:01");
        fs::create_dir(wlan.join("wireless")).expect("mkdir");
        fs::write(class_net.join("bonding_masters"), "\n").expect("write");
        let found = ethernet_interfaces(class_net).expect("interfaces");
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "lo2"]);
        assert_eq!(found[0].mac, MAC);
    }

    #[test]
    fn no_interface_or_a_bad_address_is_said_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class_net = dir.path().join("sys/class/net");
        fs::create_dir_all(&class_net).expect("mkdir");
        interface(&class_net, "lo", "772", "00:00:00:00:00:00");
        let error = ethernet_interfaces(&class_net).expect_err("none");
        assert_eq!(
            error.to_string(),
            format!(
                "no Ethernet interface in {} (is the NIC driver, e.g. virtio_net, in the \
                 initramfs?)",
                class_net.display()
            )
        );
        interface(&class_net, "eth0", "1", "52:54:00:12:34");
        let error = ethernet_interfaces(&class_net).expect_err("bad MAC");
        assert_said_once(&error);
        let chain = error_chain(&error);
        assert!(
            chain.contains("eth0/address: \"52:54:00:12:34\" is not a MAC address"),
            "{chain}"
        );
        let missing = dir.path().join("nowhere");
        let error = ethernet_interfaces(&missing).expect_err("no sysfs");
        assert!(matches!(error, NetworkError::Sysfs { .. }), "{error:?}");
    }

    #[test]
    fn bring_up_without_interfaces_fails_before_touching_the_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("sys/class/net")).expect("mkdir");
        let paths = Paths::under(dir.path().to_owned());
        let error = bring_up(&paths, Duration::from_secs(1)).expect_err("no NIC");
        assert!(
            matches!(error, NetworkError::NoEthernet { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn the_carrier_wait_takes_the_first_interface_with_carrier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let class_net = dir.path();
        let eth0 = interface(class_net, "eth0", "1", "52:54:00:12:34:56");
        let eth1 = interface(class_net, "eth1", "1", "52:54:00:12:34:57");
        fs::write(eth0.join("carrier"), "0\n").expect("write");
        let found = ethernet_interfaces(class_net).expect("interfaces");
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(wait_for_carrier(class_net, &found, soon), None);
        fs::write(eth1.join("carrier"), "1\n").expect("write");
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            wait_for_carrier(class_net, &found, later).map(|i| i.name.as_str()),
            Some("eth1")
        );
        // Carrier that comes while waiting is seen within a poll or two.
        fs::write(eth1.join("carrier"), "0\n").expect("write");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::write(eth0.join("carrier"), "1\n").expect("write");
        });
        let started = Instant::now();
        let found_later = wait_for_carrier(class_net, &found, later).map(|i| i.name.clone());
        writer.join().expect("writer");
        assert_eq!(found_later.as_deref(), Some("eth0"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn masks_and_routes_follow_the_prefix() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        let device = interface_name("eth0").expect("name");
        let on_link = routes_through(SERVER, OFFERED, 24, device);
        assert_eq!(on_link.len(), 1);
        assert_eq!(on_link[0].gateway, Some(SERVER));
        assert_eq!(on_link[0].mask, Ipv4Addr::UNSPECIFIED);
        let host = routes_through(SERVER, OFFERED, 32, device);
        assert_eq!(host.len(), 2);
        assert_eq!(
            (host[0].destination, host[0].mask, host[0].gateway),
            (SERVER, Ipv4Addr::BROADCAST, None)
        );
        assert_eq!(host[1].gateway, Some(SERVER));
    }

    #[test]
    fn interface_names_the_kernel_would_refuse_are_refused_here() {
        for bad in ["", "sixteen-bytes-xx", "a/b", "nul\0"] {
            let error = interface_name(bad).expect_err(bad);
            assert_said_once(&error);
        }
        let error = interface_name("a/b").expect_err("a slash");
        assert_eq!(
            error_chain(&error),
            "\"a/b\": not an interface name (1 to 15 bytes, no NUL or '/')"
        );
        assert!(interface_name("enp0s31f6").is_ok());
    }

    #[test]
    fn errors_are_one_line_and_name_the_interface() {
        let no_reply = NetworkError::NoReply {
            interface: "eth0".into(),
            what: "DHCP offer".into(),
            tries: 4,
            secs: 10.0,
            refused: 0,
        };
        assert_eq!(
            no_reply.to_string(),
            "no DHCP offer on eth0 after 4 tries (10 s)"
        );
        let refused = NetworkError::NoReply {
            interface: "eth0".into(),
            what: "DHCP offer".into(),
            tries: 4,
            secs: 2.5,
            refused: 2,
        };
        assert_eq!(
            refused.to_string(),
            "no DHCP offer on eth0 after 4 tries (2.5 s); 2 replies refused (see the warnings above)"
        );
        let carrier = NetworkError::NoCarrier {
            interfaces: "eth0, eth1".into(),
            secs: 10.0,
        };
        assert_eq!(
            carrier.to_string(),
            "no carrier on eth0, eth1 after 10 s (is the cable plugged in, the switch port up?)"
        );
        let nak = NetworkError::Nak {
            interface: "eth0".into(),
            server: SERVER,
            address: OFFERED,
            times: 2,
            message: Some("wrong network".into()),
        };
        assert_eq!(
            nak.to_string(),
            "DHCP server 10.14.0.1 refused the lease of 10.14.0.101 on eth0 2 times \
             (DHCPNAK: \"wrong network\")"
        );
        let configure = NetworkError::Configure {
            interface: "eth0".into(),
            what: "default route via 10.14.0.1".into(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        assert_said_once(&configure);
        assert_eq!(
            error_chain(&configure),
            "cannot set the default route via 10.14.0.1 on eth0: Network is unreachable (os \
             error 101)"
        );
        for error in [&carrier, &nak, &configure] {
            assert!(!error_chain(error).contains('\n'));
        }
    }

    /// What the test server does with each message it receives.
    enum Answer {
        Drop,
        Reply(Vec<Vec<u8>>),
    }

    /// A DHCP server on 127.0.0.1 that answers by `script` (given the message and how many
    /// it has received), for as long as the client sends.
    fn test_server(
        script: impl Fn(&DhcpClientMessage, usize) -> Answer + Send + 'static,
    ) -> (SocketAddrV4, std::thread::JoinHandle<usize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind server");
        let SocketAddr::V4(address) = socket.local_addr().expect("address") else {
            unreachable!("bound to IPv4");
        };
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let handle = std::thread::spawn(move || {
            let mut received = 0;
            let mut buffer = [0u8; 2048];
            while let Ok((length, client)) = socket.recv_from(&mut buffer) {
                let message = DhcpClientMessage::read(&buffer[..length]);
                received += 1;
                if let Answer::Reply(replies) = script(&message, received) {
                    for reply in replies {
                        socket.send_to(&reply, client).expect("send");
                    }
                }
            }
            received
        });
        (address, handle)
    }

    fn client_socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").expect("bind client")
    }

    fn test_interface() -> Interface {
        Interface {
            name: "eth0".into(),
            mac: MAC,
        }
    }

    #[test]
    fn the_exchange_retransmits_ignores_strangers_and_starts_over_after_a_nak() {
        let (server, handle) = test_server(|message, received| {
            let answer = |kind| DhcpServerReply::answer(message, kind, SERVER, OFFERED);
            match (message.message_type(), received) {
                // The first DISCOVER is lost.
                (Some(1), 1) => Answer::Drop,
                // Another client's offer, a broken one of ours, then ours.
                (Some(1), 2) => {
                    let mut stranger = answer(2);
                    stranger.xid ^= 1;
                    let mut broken = answer(2);
                    broken.cookie = [0; 4];
                    Answer::Reply(vec![stranger.bytes(), broken.bytes(), answer(2).bytes()])
                }
                // A late second offer from another server is not the answer to a REQUEST;
                // the first REQUEST is refused.
                (Some(3), 3) => {
                    let other = DhcpServerReply::answer(message, 2, OFFERED, OFFERED);
                    Answer::Reply(vec![other.bytes(), answer(6).bytes()])
                }
                (Some(1), 4) => Answer::Reply(vec![answer(2).bytes()]),
                (Some(3), 5) => {
                    assert_eq!(message.option(50), Some(&OFFERED.octets()[..]));
                    assert_eq!(message.option(54), Some(&SERVER.octets()[..]));
                    Answer::Reply(vec![answer(5).bytes()])
                }
                other => panic!("unexpected message {other:?}"),
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let (ack, from) =
            negotiate(&client_socket(), server, &test_interface(), deadline).expect("lease");
        assert_eq!(from, SERVER);
        assert_eq!(ack.kind, ReplyKind::Ack);
        assert_eq!(ack.your_address, OFFERED);
        assert_eq!(ack.prefix_len(), 24);
        // One retransmission after FIRST_WAIT, nothing else waited for.
        let took = started.elapsed();
        assert!(took >= FIRST_WAIT && took < FIRST_WAIT * 2, "{took:?}");
        assert_eq!(handle.join().expect("server"), 5);
    }

    #[test]
    fn a_silent_server_is_a_timeout_that_counts_tries_and_refusals() {
        let (server, handle) = test_server(|message, _| {
            let mut broken = DhcpServerReply::answer(message, 2, SERVER, OFFERED);
            broken.yiaddr = Ipv4Addr::BROADCAST;
            Answer::Reply(vec![broken.bytes()])
        });
        let deadline = Instant::now() + Duration::from_millis(1500);
        let error = negotiate(&client_socket(), server, &test_interface(), deadline)
            .expect_err("no usable offer");
        let NetworkError::NoReply { tries, refused, .. } = &error else {
            panic!("{error:?}");
        };
        // Sent at 0 s and 1 s; the second wait is cut by the deadline.
        assert_eq!((*tries, *refused), (2, 2), "{error}");
        let message = error.to_string();
        assert!(
            message.starts_with("no DHCP offer on eth0 after 2 tries (1."),
            "{message}"
        );
        assert!(
            message.ends_with(" s); 2 replies refused (see the warnings above)"),
            "{message}"
        );
        assert_eq!(handle.join().expect("server"), 2);
    }

    #[test]
    fn a_second_nak_is_the_end() {
        let (server, handle) = test_server(|message, _| {
            let kind = if message.message_type() == Some(1) {
                2
            } else {
                6
            };
            Answer::Reply(vec![DhcpServerReply::answer(
                message, kind, SERVER, OFFERED,
            )
            .bytes()])
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let error =
            negotiate(&client_socket(), server, &test_interface(), deadline).expect_err("refused");
        assert!(
            matches!(&error, NetworkError::Nak { times: 2, message: Some(text), .. } if text == "wrong network"),
            "{error:?}"
        );
        assert_eq!(handle.join().expect("server"), 4);
    }
}

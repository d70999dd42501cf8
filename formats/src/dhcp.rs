//! DHCPv4 client messages (RFC 2131, options from RFC 2132): the DHCPDISCOVER and
//! DHCPREQUEST PID 1 broadcasts to bring up one interface during a netboot, and the parser
//! of the servers' replies, which are bytes from the network and may be hostile.
//!
//! The client has no address yet and listens on a plain UDP socket, so every message sets
//! the broadcast flag: servers must broadcast their replies, which the kernel delivers to a
//! socket bound to 0.0.0.0:68 (a unicast reply to an address the interface does not have
//! yet would be dropped).
//!
//! Pure: the caller does the I/O and the timing, and picks the transaction id.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use crate::bytes::Block;

/// The servers' port, where DISCOVER and REQUEST go.
pub const SERVER_PORT: u16 = 67;
/// The clients' port, where replies come.
pub const CLIENT_PORT: u16 = 68;
/// Option 60: how the servers' configuration can tell this client apart.
pub const VENDOR_CLASS: &str = "xorbang";
/// Option 57: what the client's receive buffer takes, an Ethernet MTU.
pub const MAX_MESSAGE_SIZE: u16 = 1500;
/// BOOTP (RFC 951) relays and old servers drop shorter messages: requests are padded.
pub const BOOTP_MIN_SIZE: usize = 300;

const OP_BOOTREQUEST: u8 = 1;
const OP_BOOTREPLY: u8 = 2;
/// ARPHRD_ETHER, and the length of its addresses.
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
/// RFC 2131 figure 2: the leftmost bit of `flags`.
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

// The fixed header (RFC 2131 figure 1) and where its fields are.
const XID_OFFSET: usize = 4;
const FLAGS_OFFSET: usize = 10;
const YIADDR_OFFSET: usize = 16;
const SIADDR_OFFSET: usize = 20;
const CHADDR_OFFSET: usize = 28;
const COOKIE_OFFSET: usize = 236;
/// The header and the cookie: where the options start.
const OPTIONS_OFFSET: usize = 240;

/// Option codes (RFC 2132), those the client sends or reads.
mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS_SERVERS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const BROADCAST_ADDRESS: u8 = 28;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// Option 53 values (RFC 2132 section 9.6) the client sends or accepts.
const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const DHCPREQUEST: u8 = 3;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;

/// What the client asks the servers for (option 55).
const PARAMETERS: [u8; 8] = [
    code::SUBNET_MASK,
    code::ROUTER,
    code::DNS_SERVERS,
    code::HOST_NAME,
    code::DOMAIN_NAME,
    code::BROADCAST_ADDRESS,
    code::LEASE_TIME,
    code::SERVER_ID,
];

/// Bound on the server's text (option 56) kept for messages; it is untrusted.
const MAX_MESSAGE_CHARS: usize = 120;

/// An Ethernet MAC address, as the client's hardware address and identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    /// Lowercase, colon-separated: the form sysfs, networkd and `ip link` print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a MAC address: {reason}")]
pub struct MacError {
    pub text: String,
    pub reason: String,
}

impl FromStr for Mac {
    type Err = MacError;

    /// Six colon-separated hex pairs, either case (sysfs's `address` file, trimmed).
    fn from_str(text: &str) -> Result<Self, MacError> {
        crate::host_config::parse_mac(text)
            .map(Self)
            .map_err(|reason| MacError {
                text: text.to_owned(),
                reason,
            })
    }
}

/// The message types a server may answer a client with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplyKind {
    /// DHCPOFFER: an address the server would lease, in answer to a DISCOVER.
    Offer,
    /// DHCPACK: the lease is the client's, with its parameters.
    Ack,
    /// DHCPNAK: the server refuses the REQUEST; the client starts over.
    Nak,
}

impl fmt::Display for ReplyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Offer => "DHCPOFFER",
            Self::Ack => "DHCPACK",
            Self::Nak => "DHCPNAK",
        })
    }
}

/// A server's reply, checked: it answers this client's transaction, an OFFER or ACK gives a
/// usable unicast address, an OFFER names its server, and a subnet mask is contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// `yiaddr`: the address offered or leased (0.0.0.0 in a NAK).
    pub your_address: Ipv4Addr,
    /// `siaddr`: the server of the next boot stage (TFTP/HTTP), 0.0.0.0 when none.
    pub next_server: Ipv4Addr,
    /// Option 54: which server answered; the REQUEST names it to accept its OFFER.
    pub server_id: Option<Ipv4Addr>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3, in the server's order of preference.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 51; `u32::MAX` seconds is "infinite" (RFC 2132 section 9.2).
    pub lease: Option<Duration>,
    /// Option 56, the server's explanation of a NAK: untrusted text, control characters
    /// replaced and cut to a line's length, for a log line.
    pub message: Option<String>,
}

impl Reply {
    /// The prefix length of the subnet mask. Without option 1 the client assumes /32: the
    /// classful default is obsolete and could put a whole /8 on-link, while /32 is always
    /// safe (nothing is taken for on-link that is not; the init then reaches its router
    /// through a host route of its own).
    pub fn prefix_len(&self) -> u8 {
        // A contiguous mask (the parser checks) is its count of ones.
        self.subnet_mask
            .map_or(32, |mask| u32::from(mask).count_ones() as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("DHCP reply is {found} bytes, shorter than the {OPTIONS_OFFSET} bytes of header and magic cookie")]
    TooShort { found: usize },
    #[error("op (offset 0) is {found}, expected 2 (BOOTREPLY)")]
    NotReply { found: u8 },
    /// The transaction or the hardware address is another client's: the caller ignores the
    /// reply and keeps waiting for its own.
    #[error("the reply is for transaction {xid:#010x} of hardware address {chaddr} (htype {htype}, hlen {hlen}), not this client's")]
    ForSomeoneElse {
        xid: u32,
        htype: u8,
        hlen: u8,
        chaddr: Mac,
    },
    #[error("magic cookie (offset {COOKIE_OFFSET}) is {found:02x?}, expected [63, 82, 53, 63]")]
    Cookie { found: [u8; 4] },
    #[error("option {code} at offset {offset} runs past the end of the {size}-byte reply")]
    OptionTruncated {
        code: u8,
        offset: usize,
        size: usize,
    },
    #[error("the options end at offset {offset} without the end option (255)")]
    Unterminated { offset: usize },
    #[error("option 52 (overload) at offset {offset}: options in the sname and file fields are not supported")]
    Overload { offset: usize },
    #[error("option {code} at offset {offset} is {length} bytes, expected {expected}")]
    OptionLength {
        code: u8,
        offset: usize,
        length: usize,
        expected: usize,
    },
    #[error("option {code} at offset {offset} is {length} bytes, not a list of 4-byte addresses")]
    AddressList {
        code: u8,
        offset: usize,
        length: usize,
    },
    #[error("the reply has no message type (option 53)")]
    NoMessageType,
    #[error("message type (option 53 at offset {offset}) is {found}, not a reply to a client (2 OFFER, 5 ACK or 6 NAK)")]
    MessageType { offset: usize, found: u8 },
    #[error("the {kind} has no server identifier (option 54)")]
    NoServerId { kind: ReplyKind },
    #[error("the {kind} gives the address {found} (yiaddr, offset {YIADDR_OFFSET}), which no host can have")]
    Address { kind: ReplyKind, found: Ipv4Addr },
    #[error(
        "subnet mask (option 1 at offset {offset}) {found} is not a contiguous mask of /1 to /32"
    )]
    SubnetMask { offset: usize, found: Ipv4Addr },
}

/// The DHCPDISCOVER of transaction `xid`: any server may answer with an OFFER.
pub fn discover(xid: u32, mac: Mac) -> Vec<u8> {
    message(xid, mac, DHCPDISCOVER, &[])
}

/// The DHCPREQUEST of transaction `xid` that accepts the offer of `requested` by the server
/// `server` (RFC 2131 section 4.3.2, "SELECTING" state); the other servers withdraw theirs.
pub fn request(xid: u32, mac: Mac, requested: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    message(
        xid,
        mac,
        DHCPREQUEST,
        &[
            (code::REQUESTED_ADDRESS, &requested.octets()),
            (code::SERVER_ID, &server.octets()),
        ],
    )
}

/// A BOOTREQUEST with the options every message of this client carries, then `extra`.
/// `secs` stays 0 and `ciaddr` 0.0.0.0, as RFC 2131 table 5 allows in both messages.
fn message(xid: u32, mac: Mac, kind: u8, extra: &[(u8, &[u8])]) -> Vec<u8> {
    let mut bytes = vec![0u8; OPTIONS_OFFSET];
    bytes[0] = OP_BOOTREQUEST;
    bytes[1] = HTYPE_ETHERNET;
    bytes[2] = HLEN_ETHERNET;
    bytes[XID_OFFSET..XID_OFFSET + 4].copy_from_slice(&xid.to_be_bytes());
    bytes[FLAGS_OFFSET..FLAGS_OFFSET + 2].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    bytes[CHADDR_OFFSET..CHADDR_OFFSET + 6].copy_from_slice(&mac.0);
    bytes[COOKIE_OFFSET..OPTIONS_OFFSET].copy_from_slice(&MAGIC_COOKIE);
    let mut client_id = [HTYPE_ETHERNET; 7];
    client_id[1..].copy_from_slice(&mac.0);
    let common: [(u8, &[u8]); 5] = [
        (code::MESSAGE_TYPE, &[kind]),
        (code::PARAMETER_REQUEST_LIST, &PARAMETERS),
        (code::CLIENT_ID, &client_id),
        (code::MAX_MESSAGE_SIZE, &MAX_MESSAGE_SIZE.to_be_bytes()),
        (code::VENDOR_CLASS, VENDOR_CLASS.as_bytes()),
    ];
    for (code, value) in common.iter().chain(extra) {
        // Every value above is a constant or an address: far below 256 bytes.
        bytes.push(*code);
        bytes.push(value.len() as u8);
        bytes.extend_from_slice(value);
    }
    bytes.push(code::END);
    if bytes.len() < BOOTP_MIN_SIZE {
        bytes.resize(BOOTP_MIN_SIZE, code::PAD);
    }
    bytes
}

/// One option's value and the offset of its (first) instance, for messages.
struct Value {
    offset: usize,
    bytes: Vec<u8>,
}

/// Parses `bytes`, a datagram received on the client port, as a reply to this client's
/// transaction `xid` from the interface with address `mac`.
pub fn parse_reply(bytes: &[u8], xid: u32, mac: Mac) -> Result<Reply, ReplyError> {
    let header: &[u8; OPTIONS_OFFSET] = bytes
        .first_chunk()
        .ok_or(ReplyError::TooShort { found: bytes.len() })?;
    let header = Block(header);
    let [op, htype, hlen] = header.array::<0, 3>();
    if op != OP_BOOTREPLY {
        return Err(ReplyError::NotReply { found: op });
    }
    let found_xid = u32::from_be_bytes(header.array::<XID_OFFSET, 4>());
    let chaddr = Mac(header.array::<CHADDR_OFFSET, 6>());
    if found_xid != xid || htype != HTYPE_ETHERNET || hlen != HLEN_ETHERNET || chaddr != mac {
        return Err(ReplyError::ForSomeoneElse {
            xid: found_xid,
            htype,
            hlen,
            chaddr,
        });
    }
    let cookie = header.array::<COOKIE_OFFSET, 4>();
    if cookie != MAGIC_COOKIE {
        return Err(ReplyError::Cookie { found: cookie });
    }
    let options = parse_options(bytes)?;
    if let Some(overload) = options.get(&code::OVERLOAD) {
        return Err(ReplyError::Overload {
            offset: overload.offset,
        });
    }
    let kind = message_type(&options)?;
    let your_address = Ipv4Addr::from(header.array::<YIADDR_OFFSET, 4>());
    let server_id = address(&options, code::SERVER_ID)?;
    if kind != ReplyKind::Nak {
        if !is_host_address(your_address) {
            return Err(ReplyError::Address {
                kind,
                found: your_address,
            });
        }
        if kind == ReplyKind::Offer && server_id.is_none() {
            return Err(ReplyError::NoServerId { kind });
        }
    }
    let subnet_mask = address(&options, code::SUBNET_MASK)?;
    if let (Some(mask), Some(value)) = (subnet_mask, options.get(&code::SUBNET_MASK)) {
        let bits = u32::from(mask);
        if bits == 0 || bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(ReplyError::SubnetMask {
                offset: value.offset,
                found: mask,
            });
        }
    }
    let lease = match options.get(&code::LEASE_TIME) {
        Some(value) => {
            let seconds: [u8; 4] = exact(code::LEASE_TIME, value)?;
            Some(Duration::from_secs(u32::from_be_bytes(seconds).into()))
        }
        None => None,
    };
    Ok(Reply {
        kind,
        your_address,
        next_server: Ipv4Addr::from(header.array::<SIADDR_OFFSET, 4>()),
        server_id,
        subnet_mask,
        routers: addresses(&options, code::ROUTER)?,
        dns_servers: addresses(&options, code::DNS_SERVERS)?,
        lease,
        message: options
            .get(&code::MESSAGE)
            .map(|value| printable(&value.bytes)),
    })
}

/// The options after the cookie up to the end option. An option given several times is one
/// option whose value is the concatenation (RFC 3396), so a repeated fixed-size option fails
/// its length check instead of silently replacing the first.
fn parse_options(bytes: &[u8]) -> Result<BTreeMap<u8, Value>, ReplyError> {
    let mut options = BTreeMap::<u8, Value>::new();
    let mut at = OPTIONS_OFFSET;
    loop {
        let code = *bytes
            .get(at)
            .ok_or(ReplyError::Unterminated { offset: at })?;
        match code {
            code::PAD => at += 1,
            code::END => return Ok(options),
            _ => {
                let truncated = ReplyError::OptionTruncated {
                    code,
                    offset: at,
                    size: bytes.len(),
                };
                let length = usize::from(*bytes.get(at + 1).ok_or(truncated.clone())?);
                let value = bytes.get(at + 2..at + 2 + length).ok_or(truncated)?;
                options
                    .entry(code)
                    .or_insert(Value {
                        offset: at,
                        bytes: Vec::new(),
                    })
                    .bytes
                    .extend_from_slice(value);
                at += 2 + length;
            }
        }
    }
}

fn message_type(options: &BTreeMap<u8, Value>) -> Result<ReplyKind, ReplyError> {
    let value = options
        .get(&code::MESSAGE_TYPE)
        .ok_or(ReplyError::NoMessageType)?;
    let [found] = exact(code::MESSAGE_TYPE, value)?;
    match found {
        DHCPOFFER => Ok(ReplyKind::Offer),
        DHCPACK => Ok(ReplyKind::Ack),
        DHCPNAK => Ok(ReplyKind::Nak),
        _ => Err(ReplyError::MessageType {
            offset: value.offset,
            found,
        }),
    }
}

/// The value of an option of fixed size `N`.
fn exact<const N: usize>(code: u8, value: &Value) -> Result<[u8; N], ReplyError> {
    value
        .bytes
        .as_slice()
        .try_into()
        .map_err(|_| ReplyError::OptionLength {
            code,
            offset: value.offset,
            length: value.bytes.len(),
            expected: N,
        })
}

/// An option holding one address.
fn address(options: &BTreeMap<u8, Value>, code: u8) -> Result<Option<Ipv4Addr>, ReplyError> {
    options
        .get(&code)
        .map(|value| exact::<4>(code, value).map(Ipv4Addr::from))
        .transpose()
}

/// An option holding a list of addresses.
fn addresses(options: &BTreeMap<u8, Value>, code: u8) -> Result<Vec<Ipv4Addr>, ReplyError> {
    let Some(value) = options.get(&code) else {
        return Ok(Vec::new());
    };
    if value.bytes.len() % 4 != 0 {
        return Err(ReplyError::AddressList {
            code,
            offset: value.offset,
            length: value.bytes.len(),
        });
    }
    Ok(value
        .bytes
        .chunks_exact(4)
        .map(|octets| Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        .collect())
}

/// Whether an interface can be given `address`: not in 0.0.0.0/8 ("this network", RFC 1122
/// section 3.2.1.3), not broadcast, multicast, loopback or the reserved class E.
fn is_host_address(address: Ipv4Addr) -> bool {
    !(address.octets()[0] == 0
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_loopback()
        || address.octets()[0] >= 240)
}

/// Untrusted text for a log line: lossy UTF-8, control characters as `?`, cut short.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{DhcpClientMessage, DhcpServerReply, XorShift};
    use std::collections::BTreeSet;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const XID: u32 = 0x1a2b_3c4d;
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 14, 0, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 14, 0, 101);

    /// The test server's answer, with two routers, a DNS server and a next server of its own.
    fn answer(client: &DhcpClientMessage, kind: u8) -> DhcpServerReply {
        let mut reply = DhcpServerReply::answer(client, kind, SERVER, OFFERED);
        reply.siaddr = Ipv4Addr::new(10, 14, 0, 2);
        if kind == DHCPNAK {
            return reply;
        }
        reply
            .set(3, &[10, 14, 0, 1, 10, 14, 0, 2])
            .set(6, &[10, 14, 0, 53])
    }

    fn offer() -> DhcpServerReply {
        answer(&DhcpClientMessage::read(&discover(XID, MAC)), DHCPOFFER)
    }

    trait Parse {
        fn parse(&self) -> Result<Reply, ReplyError>;
    }

    impl Parse for DhcpServerReply {
        fn parse(&self) -> Result<Reply, ReplyError> {
            parse_reply(&self.bytes(), XID, MAC)
        }
    }

    #[test]
    fn discover_carries_the_fields_and_options_of_the_brief() {
        let message = DhcpClientMessage::read(&discover(XID, MAC));
        assert_eq!(message.xid, XID);
        assert_eq!(message.flags, 0x8000, "broadcast flag");
        assert_eq!(&message.chaddr[..6], &MAC.0);
        assert!(message.chaddr[6..].iter().all(|&b| b == 0));
        assert_eq!(message.option(53), Some(&[1][..]));
        assert_eq!(message.option(55), Some(&[1, 3, 6, 12, 15, 28, 51, 54][..]));
        assert_eq!(
            message.option(61),
            Some(&[1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56][..])
        );
        assert_eq!(message.option(57), Some(&[0x05, 0xdc][..]));
        assert_eq!(message.option(60), Some(&b"xorbang"[..]));
        assert_eq!(message.option(50), None);
        assert_eq!(message.option(54), None);
        assert_eq!(message.options.len(), 5);
        assert!(message.end_offset < BOOTP_MIN_SIZE);
    }

    #[test]
    fn discover_offer_request_ack_round_trip() {
        let discover = DhcpClientMessage::read(&discover(XID, MAC));
        let offer = answer(&discover, DHCPOFFER).bytes();
        let offer = parse_reply(&offer, XID, MAC).expect("offer");
        assert_eq!(
            offer,
            Reply {
                kind: ReplyKind::Offer,
                your_address: OFFERED,
                next_server: Ipv4Addr::new(10, 14, 0, 2),
                server_id: Some(SERVER),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                routers: vec![Ipv4Addr::new(10, 14, 0, 1), Ipv4Addr::new(10, 14, 0, 2)],
                dns_servers: vec![Ipv4Addr::new(10, 14, 0, 53)],
                lease: Some(Duration::from_secs(3600)),
                message: None,
            }
        );
        assert_eq!(offer.prefix_len(), 24);

        let server = offer.server_id.expect("an offer names its server");
        let request = DhcpClientMessage::read(&request(XID, MAC, offer.your_address, server));
        assert_eq!(request.xid, XID);
        assert_eq!(request.flags, 0x8000);
        assert_eq!(request.option(53), Some(&[3][..]));
        assert_eq!(request.option(50), Some(&OFFERED.octets()[..]));
        assert_eq!(request.option(54), Some(&SERVER.octets()[..]));
        assert_eq!(request.option(61), discover.option(61));
        assert_eq!(request.option(55), discover.option(55));
        assert_eq!(request.options.len(), 7);

        let ack = parse_reply(&answer(&request, DHCPACK).bytes(), XID, MAC);
        assert_eq!(ack.map(|ack| ack.kind), Ok(ReplyKind::Ack));
        let nak = parse_reply(&answer(&request, DHCPNAK).bytes(), XID, MAC).expect("nak");
        assert_eq!(nak.kind, ReplyKind::Nak);
        assert_eq!(nak.your_address, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.message.as_deref(), Some("wrong network"));
    }

    #[test]
    fn an_ack_without_mask_router_or_server_id_is_a_host_route_lease() {
        let ack = offer()
            .set(53, &[DHCPACK])
            .without(1)
            .without(3)
            .without(54)
            .without(51)
            .parse()
            .expect("ack");
        assert_eq!(ack.prefix_len(), 32);
        assert!(ack.routers.is_empty());
        assert_eq!(ack.server_id, None);
        assert_eq!(ack.lease, None);
    }

    #[test]
    fn pads_repeated_options_and_bytes_after_the_end_are_read_as_rfc_3396_says() {
        let mut reply = offer().without(3);
        reply.options.insert(0, (3, vec![10, 14, 0, 1]));
        reply.options.push((3, vec![10, 14, 0, 9]));
        let mut bytes = reply.bytes();
        bytes.insert(240, 0);
        bytes.extend_from_slice(&[0xde, 0xad, 1, 2, 3]);
        let parsed = parse_reply(&bytes, XID, MAC).expect("offer");
        assert_eq!(
            parsed.routers,
            [Ipv4Addr::new(10, 14, 0, 1), Ipv4Addr::new(10, 14, 0, 9)]
        );
        // A repeated fixed-size option is one value of the wrong length.
        let mut twice = offer();
        twice.options.push((54, vec![10, 14, 0, 7]));
        assert_eq!(
            twice.parse(),
            Err(ReplyError::OptionLength {
                code: 54,
                offset: 243,
                length: 8,
                expected: 4
            })
        );
    }

    #[test]
    fn every_refusal_names_what_is_wrong() {
        let offer = offer();
        let bytes = offer.bytes();
        let with = |edit: &dyn Fn(&mut DhcpServerReply)| {
            let mut reply = offer.clone();
            edit(&mut reply);
            reply.parse()
        };
        assert_eq!(
            parse_reply(&bytes[..239], XID, MAC),
            Err(ReplyError::TooShort { found: 239 })
        );
        assert_eq!(with(&|r| r.op = 1), Err(ReplyError::NotReply { found: 1 }));
        let someone_else = ReplyError::ForSomeoneElse {
            xid: XID,
            htype: 1,
            hlen: 6,
            chaddr: MAC,
        };
        assert_eq!(parse_reply(&bytes, XID + 1, MAC), Err(someone_else.clone()));
        assert_eq!(
            parse_reply(&bytes, XID, Mac([2, 0, 0, 0, 0, 1])),
            Err(someone_else)
        );
        assert!(matches!(
            with(&|r| r.hlen = 16),
            Err(ReplyError::ForSomeoneElse { hlen: 16, .. })
        ));
        assert_eq!(
            with(&|r| r.cookie = [99, 130, 83, 98]),
            Err(ReplyError::Cookie {
                found: [99, 130, 83, 98]
            })
        );
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() - 3);
        assert!(matches!(
            parse_reply(&truncated, XID, MAC),
            Err(ReplyError::OptionTruncated { code: 6, .. })
        ));
        assert_eq!(
            with(&|r| r.end = false),
            Err(ReplyError::Unterminated {
                offset: bytes.len() - 1
            })
        );
        assert_eq!(
            with(&|r| r.options.push((52, vec![3]))),
            Err(ReplyError::Overload {
                offset: bytes.len() - 1
            })
        );
        assert_eq!(
            with(&|r| *r = r.clone().without(53)),
            Err(ReplyError::NoMessageType)
        );
        assert_eq!(
            with(&|r| *r = r.clone().set(53, &[DHCPREQUEST])),
            Err(ReplyError::MessageType {
                offset: bytes.len() - 4,
                found: 3
            })
        );
        assert!(matches!(
            with(&|r| *r = r.clone().set(53, &[2, 2])),
            Err(ReplyError::OptionLength { code: 53, .. })
        ));
        assert!(matches!(
            with(&|r| *r = r.clone().set(3, &[10, 0, 0])),
            Err(ReplyError::AddressList {
                code: 3,
                length: 3,
                ..
            })
        ));
        assert!(matches!(
            with(&|r| *r = r.clone().set(51, &[0, 1])),
            Err(ReplyError::OptionLength { code: 51, .. })
        ));
        assert_eq!(
            with(&|r| *r = r.clone().without(54)),
            Err(ReplyError::NoServerId {
                kind: ReplyKind::Offer
            })
        );
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "240.0.0.1",
        ] {
            let found: Ipv4Addr = bad.parse().expect("address");
            assert_eq!(
                with(&|r| r.yiaddr = found),
                Err(ReplyError::Address {
                    kind: ReplyKind::Offer,
                    found
                })
            );
        }
        for bad in [[255, 0, 255, 0], [0, 0, 0, 0], [255, 255, 255, 253]] {
            assert!(matches!(
                with(&|r| *r = r.clone().set(1, &bad)),
                Err(ReplyError::SubnetMask { found, .. }) if found == Ipv4Addr::from(bad)
            ));
        }
        let error = with(&|r| r.cookie = [0; 4]).expect_err("cookie");
        assert_eq!(
            error.to_string(),
            "magic cookie (offset 236) is [00, 00, 00, 00], expected [63, 82, 53, 63]"
        );
    }

    #[test]
    fn masks_give_their_prefix_lengths() {
        for prefix in 1..=32u8 {
            let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)));
            let reply = offer().set(1, &mask.octets()).parse().expect("contiguous");
            assert_eq!(reply.prefix_len(), prefix, "{mask}");
        }
    }

    #[test]
    fn macs_parse_from_sysfs_and_print_as_they_came() {
        let mac: Mac = "52:54:00:12:34:56".parse().expect("mac");
        assert_eq!(mac, MAC);
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(
            "AA:bb:00:00:00:01".parse(),
            Ok(Mac([0xaa, 0xbb, 0, 0, 0, 1]))
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    /// The error's variant name, to show which checks a fuzz loop reached.
    fn kind(error: &ReplyError) -> String {
        format!("{error:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// What every accepted reply satisfies, restated independently of the parser.
    fn assert_consistent(reply: &Reply) {
        if reply.kind != ReplyKind::Nak {
            let first = reply.your_address.octets()[0];
            assert!(first != 0 && first != 127 && first < 224, "{reply:?}");
        }
        if reply.kind == ReplyKind::Offer {
            assert!(reply.server_id.is_some(), "{reply:?}");
        }
        if let Some(mask) = reply.subnet_mask {
            let prefix = reply.prefix_len();
            assert!((1..=32).contains(&prefix), "{reply:?}");
            assert_eq!(u32::from(mask), u32::MAX << (32 - u32::from(prefix)));
        }
        if let Some(message) = &reply.message {
            assert!(message.chars().count() <= MAX_MESSAGE_CHARS);
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
    }

    const FUZZ_ITERATIONS: usize = 100_000;
    const OPTION_CODES: [u8; 14] = [0, 1, 3, 6, 12, 50, 51, 52, 53, 54, 56, 61, 200, 255];

    /// Valid offers, ACKs and NAKs with random edits (bit flips in the header, options of
    /// random codes and lengths, truncation, extension) and plain noise: the parser never
    /// panics, reaches every refusal, and what it accepts is consistent.
    #[test]
    fn fuzz_replies_never_panic_and_reach_every_refusal() {
        let mut rng = XorShift(0x510e_527f_ade6_82d1);
        let mut kinds = BTreeSet::new();
        let mut accepted = 0;
        let client = DhcpClientMessage::read(&discover(XID, MAC));
        for _ in 0..FUZZ_ITERATIONS {
            let mut reply = answer(&client, *rng.pick(&[2, 5, 6, 5, 2, 3, 7]));
            if rng.one_in(20) {
                reply.op = rng.below(4) as u8;
            }
            if rng.one_in(20) {
                reply.xid ^= 1 << rng.below(32);
            }
            if rng.one_in(20) {
                reply.chaddr[rng.below(16)] ^= 1 << rng.below(8);
            }
            if rng.one_in(20) {
                reply.cookie[rng.below(4)] ^= 1 << rng.below(8);
            }
            if rng.one_in(8) {
                reply.yiaddr = Ipv4Addr::from(rng.next_u64() as u32);
            }
            if rng.one_in(20) {
                reply.end = false;
            }
            for _ in 0..rng.below(3) {
                let code = *rng.pick(&OPTION_CODES);
                let length = *rng.pick(&[0, 1, 2, 3, 4, 8, 9, 255]);
                let value = match code {
                    1 if rng.one_in(2) => {
                        let prefix = rng.below(33) as u32;
                        u32::MAX
                            .checked_shl(32 - prefix)
                            .unwrap_or(0)
                            .to_be_bytes()
                            .to_vec()
                    }
                    _ => rng.bytes(length),
                };
                if rng.one_in(2) {
                    reply = reply.set(code, &value);
                } else {
                    let at = rng.below(reply.options.len() + 1);
                    reply.options.insert(at, (code, value));
                }
            }
            if rng.one_in(10) {
                reply = reply.without(*rng.pick(&OPTION_CODES));
            }
            let mut bytes = reply.bytes();
            match rng.below(10) {
                0 => bytes.truncate(rng.below(bytes.len() + 1)),
                1 => {
                    let at = rng.range(240, bytes.len() - 1);
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let length = rng.below(600);
                    bytes = rng.bytes(length);
                }
                3 => {
                    let length = rng.below(64);
                    bytes.extend(rng.bytes(length));
                }
                _ => {}
            }
            match parse_reply(&bytes, XID, MAC) {
                Ok(reply) => {
                    accepted += 1;
                    assert_consistent(&reply);
                }
                Err(error) => {
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!("{accepted} of {FUZZ_ITERATIONS} replies parsed; errors: {kinds:?}");
        assert!(accepted > FUZZ_ITERATIONS / 10, "{accepted} parsed");
        for expected in [
            "TooShort",
            "NotReply",
            "ForSomeoneElse",
            "Cookie",
            "OptionTruncated",
            "Unterminated",
            "Overload",
            "OptionLength",
            "AddressList",
            "NoMessageType",
            "MessageType",
            "NoServerId",
            "Address",
            "SubnetMask",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }
}

//! The validated configuration: the types a parsed host config is made of.

use super::*;

// ---------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------

/// A parsed and validated host config. [`parse`] is the only way the init builds one; the
/// fields are public for reading (and tests), and hold only values that passed the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub timezone: Option<String>,
    /// `[extensions] sysext`: the system extensions to merge, in the order given.
    pub sysext: Vec<String>,
    /// `[extensions] confext`: the configuration extensions to merge, in the order given.
    pub confext: Vec<String>,
    pub networks: Vec<Network>,
    pub users: BTreeMap<String, User>,
    pub modules: Vec<String>,
    pub sysctl: BTreeMap<String, SysctlValue>,
    pub files: Vec<EtcFile>,
}

/// One `[[network]]` section: a systemd-networkd `.network` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub matching: InterfaceMatch,
    pub dhcp: bool,
    pub addresses: Vec<Cidr>,
    pub gateways: Vec<IpAddr>,
    pub dns: Vec<IpAddr>,
}

/// Which interface a `[[network]]` section configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceMatch {
    /// An interface name or a networkd `Name=` glob.
    Name(String),
    Mac([u8; 6]),
}

/// An address with its prefix length, as networkd's `Address=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub ssh_authorized_keys: Vec<String>,
}

/// A sysctl value: TOML integers and strings only (a boolean has no sysctl meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlValue {
    String(String),
    Integer(i64),
}

/// One `[[files]]` entry; `path` is absolute (`/etc/…`), as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFile {
    pub path: String,
    pub mode: u32,
    pub content: String,
}

/// One entry of the generated /etc layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcEntry {
    /// Relative to /etc, e.g. `hostname` or `systemd/network/10-xorbang-0.network`.
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { mode: u32, content: String },
    Symlink { target: String },
}

/// A refused host config: where (1-based line and column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct HostConfigError {
    pub line: usize,
    pub column: usize,
    /// One line: the boot log and the boot report show it as is.
    pub message: String,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(text) => f.write_str(text),
            Self::Integer(number) => write!(f, "{number}"),
        }
    }
}

impl fmt::Display for InterfaceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "interface name {name:?}"),
            Self::Mac(mac) => write!(f, "MAC address {}", mac_text(mac)),
        }
    }
}

/// Lowercase, colon-separated: the form networkd and `ip link` print.
pub(super) fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------

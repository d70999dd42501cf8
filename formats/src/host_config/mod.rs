//! Host configuration (`host-config.toml`), applied at boot as a generated /etc layer.
//!
//! Images are shared by many hosts, so what makes a host itself (its name, network, keys)
//! never goes into an image. The init parses this file ([`parse`]), renders what it asks
//! for as files ([`HostConfig::etc_layer`]), writes them to a fresh directory
//! ([`write_layer`]) and stacks that directory over /etc as the topmost layer. It is all or
//! nothing: one error and no part of the config is applied. Every error names a line and
//! column (1-based) and the offending value, on one line.
//!
//! # Schema, version 1
//!
//! ```toml
//! version = 1                      # required; this build reads version 1 only
//! hostname = "web-01"              # -> /etc/hostname
//! timezone = "Europe/Berlin"       # -> /etc/localtime (symlink), /etc/timezone
//! modules = ["br_netfilter"]       # -> /etc/modules-load.d/xorbang.conf
//!
//! [extensions]                     # images to merge unless the kernel command line
//! sysext = ["gui", "monitoring"]   # names some (xorbang.sysext=, xorbang.confext=)
//! confext = ["site"]
//!
//! [sysctl]                         # -> /etc/sysctl.d/90-xorbang.conf
//! "net.ipv4.ip_forward" = 1        # quote keys: unquoted dots make nested tables
//!
//! [[network]]                      # -> /etc/systemd/network/10-xorbang-<n>.network
//! mac = "52:54:00:12:34:56"        # match by `mac` or by `name`, never both
//! addresses = ["192.0.2.10/24", "2001:db8::10/64"]
//! gateways = ["192.0.2.1", "2001:db8::1"]
//! dns = ["192.0.2.53"]
//!
//! [[network]]
//! name = "en*"                     # interface name or networkd glob
//! dhcp = true
//!
//! [users.root]                     # -> /etc/ssh/authorized_keys/root + an sshd drop-in
//! ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... me@laptop"]
//!
//! [[files]]                        # -> the file itself
//! path = "/etc/motd"
//! mode = "0644"                    # octal string, default "0644"
//! content = "hello\n"
//! ```
//!
//! Everything but `version` is optional; unknown keys are errors. The rules:
//!
//! - `hostname`: as systemd's `hostname_is_valid`: at most 64 bytes of dot-separated labels,
//!   each 1–63 of `A-Z a-z 0-9 -`, not starting or ending with `-`; no trailing dot.
//! - `timezone`: a zoneinfo name: relative, `/`-separated components of `A-Z a-z 0-9 _ + -`,
//!   at most 255 bytes. The init refuses the config if the merged root lacks
//!   `/usr/share/zoneinfo/<timezone>` (the /etc/localtime link would point nowhere).
//! - `extensions.sysext`, `extensions.confext`: image names of `A-Z a-z 0-9 _ . -`, not
//!   starting with `.`, at most 119 bytes (its device-mapper name must fit), each listed once.
//! - `[[network]]`: `name` (1–15 bytes, no `/`, `:`, whitespace or control characters; `*?[]`
//!   globs and networkd's leading `!` work as in `Name=`) or `mac` (six `:`-separated pairs
//!   of hex digits); `dhcp` (default false); `addresses` (CIDR, the prefix is required);
//!   `gateways` and `dns` (lists of plain IPv4 or IPv6 addresses; `gateways` is a list so a
//!   dual-stack host can name one of each). A section must set `dhcp = true` or give
//!   `addresses`, and no two sections may match the same name or MAC. Sections are numbered
//!   in file order and networkd uses the first file that matches an interface, so put
//!   specific matches before globs.
//! - `[users.<name>]`: `<name>` of `[A-Za-z_][A-Za-z0-9_-]*`, at most 32 bytes;
//!   `ssh_authorized_keys` is a non-empty list of one-line keys `<type> <base64> [comment]`
//!   with `<type>` one of `ssh-ed25519`, `ssh-rsa`, `ssh-dss`, `ecdsa-sha2-nistp256`,
//!   `ecdsa-sha2-nistp384`, `ecdsa-sha2-nistp521`, `sk-ssh-ed25519@openssh.com`,
//!   `sk-ecdsa-sha2-nistp256@openssh.com`, and the base64 data holding a key of that type.
//!   authorized_keys options (`from="…"`, `command="…"`) are deliberately not accepted. The
//!   keys go to `/etc/ssh/authorized_keys/<name>` and an sshd drop-in adds that file to
//!   `AuthorizedKeysFile` (the user's own ~/.ssh/authorized_keys keeps working).
//! - `modules`: kernel module names of `A-Z a-z 0-9 _ -`, at most 64 bytes, each listed once
//!   (`-` and `_` count as the same, as for the kernel).
//! - `sysctl`: keys of `A-Z a-z 0-9 _ . / -` (no leading, trailing or doubled `.` or `/`);
//!   values are integers or one-line, non-empty strings without leading or trailing
//!   whitespace. Lines are written sorted by key.
//! - `[[files]]`: `path` is absolute, under `/etc/` (not /etc itself), normalized (no `.`,
//!   `..` or empty components, no trailing `/`), without control characters, at most 4096
//!   bytes with components of at most 255; `mode` is a string of 1–4 octal digits (default
//!   `"0644"`); `content` a string. No two files may have the same path, a file may not sit
//!   inside another, and none may collide with what the other settings generate.

mod parse;
mod render;
mod rules;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use parse::*;
pub use parse::{check_local_keys, parse, LOCAL_KEYS, MAX_ENTRIES};
use rules::*;
pub use rules::{check_hostname, parse_mac};
pub use schema::*;

/// The only schema version this build reads.
pub const VERSION: i64 = 1;

/// First line of every generated file whose format has comments: says where it came from.
const HEADER: &str = "# generated by xorbang-init from host-config.toml\n";
const DEFAULT_MODE: u32 = 0o644;
const AUTHORIZED_KEYS_DIR: &str = "ssh/authorized_keys";
const SSHD_DROP_IN: &str = "ssh/sshd_config.d/50-xorbang.conf";
const MODULES_FILE: &str = "modules-load.d/xorbang.conf";
const SYSCTL_FILE: &str = "sysctl.d/90-xorbang.conf";
const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

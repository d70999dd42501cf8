//! The rules a host config must meet: single values, then whole sections.

use super::*;

// Value rules: each returns why a value is refused, the caller says where
// ---------------------------------------------------------------------------------------

pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a hostname must not be empty".into());
    }
    if name.len() > 64 {
        return Err(format!("{} bytes, at most 64 are allowed", name.len()));
    }
    if name.ends_with('.') {
        return Err("a hostname must not end with '.'".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (a leading or doubled '.')".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only A-Z, a-z, 0-9 and '-' are allowed in a label".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
    }
    Ok(())
}

pub(super) fn check_timezone(zone: &str) -> Result<(), String> {
    if zone.is_empty() {
        return Err("a timezone must not be empty".into());
    }
    if zone.len() > 255 {
        return Err(format!("{} bytes, at most 255 are allowed", zone.len()));
    }
    if zone.starts_with('/') {
        return Err("a timezone is relative to /usr/share/zoneinfo, like \"Europe/Berlin\"".into());
    }
    for component in zone.split('/') {
        if component.is_empty() {
            return Err("empty path component (a doubled or trailing '/')".into());
        }
        if component == "." || component == ".." {
            return Err(format!("{component:?} components are not allowed"));
        }
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-');
        if !component.bytes().all(plain) {
            return Err("only A-Z, a-z, 0-9, '_', '+', '-' and '/' are allowed".into());
        }
    }
    Ok(())
}

/// The same rule the pin manifest and the command line apply, so any name given here can
/// also be pinned.
pub(super) fn check_extension_name(name: &str) -> Result<(), String> {
    if crate::extension_pins::valid_name(name) {
        Ok(())
    } else {
        Err(
            "a name has 1 to 119 bytes of A-Z, a-z, 0-9, '_', '.' and '-', not starting with '.'"
                .into(),
        )
    }
}

pub(super) fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 bytes".into());
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("'/', ':', whitespace and control characters are not allowed".into());
    }
    Ok(())
}

pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let wrong =
        || "expected six ':'-separated pairs of hex digits, like \"52:54:00:12:34:56\"".to_owned();
    let mut mac = [0u8; 6];
    let mut groups = text.split(':');
    for byte in &mut mac {
        let group = groups.next().ok_or_else(wrong)?;
        if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        *byte = u8::from_str_radix(group, 16).map_err(|_| wrong())?;
    }
    if groups.next().is_some() {
        return Err(wrong());
    }
    Ok(mac)
}

pub(super) fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| "not an IPv4 or IPv6 address".to_owned())
}

pub(super) fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or("the prefix length is missing, as in \"192.0.2.10/24\"")?;
    let address = parse_ip(address)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix.parse::<u8>() {
        Ok(len) if prefix.bytes().all(|b| b.is_ascii_digit()) && len <= max => len,
        _ => {
            return Err(format!(
                "the prefix length must be a number from 0 to {max} for {}",
                if address.is_ipv4() { "IPv4" } else { "IPv6" }
            ))
        }
    };
    Ok(Cidr {
        address,
        prefix_len,
    })
}

pub(super) fn check_user_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("a user name is [A-Za-z_][A-Za-z0-9_-]*".into());
    }
    if name.len() > 32 {
        return Err("a user name has at most 32 bytes".into());
    }
    Ok(())
}

/// Strict on purpose: a key sshd would skip makes a host unreachable without a word, so
/// the type must be known and the base64 data must actually hold a key of that type.
pub(super) fn check_ssh_key(key: &str) -> Result<(), String> {
    if key.contains(['\n', '\r']) {
        return Err("a key must be one line; give each key as its own list entry".into());
    }
    let mut words = key.split(' ');
    let kind = words.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "expected \"<type> <base64 data> [comment]\" with type one of {} \
             (authorized_keys options are not supported)",
            KEY_TYPES.join(", ")
        ));
    }
    let data = words.next().unwrap_or_default();
    let blob = decode_base64(data).ok_or("the key data after the type is not base64")?;
    if !blob_has_type(&blob, kind) {
        return Err(format!("the key data is not a {kind} key"));
    }
    Ok(())
}

/// The key blob starts with its type as an SSH string: a 32-bit big-endian length, then
/// the name.
pub(super) fn blob_has_type(blob: &[u8], kind: &str) -> bool {
    let Some((length, rest)) = blob.split_first_chunk::<4>() else {
        return false;
    };
    u32::from_be_bytes(*length) as usize == kind.len() && rest.starts_with(kind.as_bytes())
}

/// Standard padded base64 (RFC 4648, as ssh-keygen writes it); `None` if it is not.
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 4 != 0 {
        return None;
    }
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits = 0u32;
    let mut count = 0;
    for byte in body.bytes() {
        bits = (bits << 6) | u32::from(base64_value(byte)?);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    // Leftover bits must be zero padding, as every encoder writes them.
    (bits == 0).then_some(out)
}

pub(super) fn base64_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

pub(super) fn check_module(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a module name has 1 to 64 bytes".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("only A-Z, a-z, 0-9, '_' and '-' are allowed".into());
    }
    Ok(())
}

pub(super) fn check_sysctl_key(key: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-');
    if key.is_empty() || !key.bytes().all(allowed) {
        return Err("a sysctl key is made of A-Z, a-z, 0-9, '_', '.', '/' and '-'".into());
    }
    let separator = |c: char| c == '.' || c == '/';
    if key.split(separator).any(str::is_empty) {
        return Err("'.' and '/' separate names: none leading, trailing or doubled".into());
    }
    Ok(())
}

pub(super) fn check_sysctl_text(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("the value is empty".into());
    }
    if value.contains(['\n', '\r']) {
        return Err("the value must be one line".into());
    }
    if value.trim() != value {
        return Err("leading or trailing whitespace (systemd-sysctl would drop it)".into());
    }
    Ok(())
}

pub(super) fn check_file_path(path: &str) -> Result<(), String> {
    if path == "/etc" || path == "/etc/" {
        return Err("a file cannot replace /etc itself".into());
    }
    let Some(relative) = path.strip_prefix("/etc/") else {
        return Err("files must be under /etc/ (the layer covers /etc only)".into());
    };
    if path.len() > 4096 {
        return Err(format!("{} bytes, at most 4096 are allowed", path.len()));
    }
    if path.chars().any(char::is_control) {
        return Err("control characters are not allowed in a path".into());
    }
    for component in relative.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(
                "the path must be normalized: no '.', '..' or empty components, \
                        no trailing '/'"
                    .into(),
            );
        }
        if component.len() > 255 {
            return Err("a path component has at most 255 bytes".into());
        }
    }
    Ok(())
}

pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("a mode is 1 to 4 octal digits, like \"0644\"".into());
    }
    u32::from_str_radix(text, 8).map_err(|error| error.to_string())
}

// ---------------------------------------------------------------------------------------
// Section rules
// ---------------------------------------------------------------------------------------

pub(super) fn extension_list(
    names: &[Spanned<String>],
    kind: &str,
) -> Result<Vec<String>, Refusal> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for name in names {
        checked(name, &format!("{kind} name"), check_extension_name)?;
        let at = name.span().start;
        if let Some(first) = earlier(&seen, &name.get_ref().as_str()) {
            let message = format!("{kind} {} is listed twice", shown(name.get_ref()));
            return Err(Refusal::conflict(at, message, "first at", first));
        }
        seen.push((name.get_ref(), at));
    }
    Ok(seen.into_iter().map(|(name, _)| name.to_owned()).collect())
}

pub(super) fn networks(sections: &[Spanned<RawNetwork>]) -> Result<Vec<Network>, Refusal> {
    let mut seen: Vec<(InterfaceMatch, usize)> = Vec::new();
    let mut networks = Vec::new();
    for section in sections {
        let (network, at) = network(section)?;
        if let Some(first) = earlier(&seen, &network.matching) {
            let message = format!(
                "{} is matched by two [[network]] sections",
                network.matching
            );
            return Err(Refusal::conflict(at, message, "first at", first));
        }
        seen.push((network.matching.clone(), at));
        networks.push(network);
    }
    Ok(networks)
}

/// One section, and where its match is written (for the duplicate check).
pub(super) fn network(section: &Spanned<RawNetwork>) -> Result<(Network, usize), Refusal> {
    let raw = section.get_ref();
    let (matching, at) = match (&raw.name, &raw.mac) {
        (Some(name), None) => (
            InterfaceMatch::Name(checked(name, "interface name", |text| {
                check_interface_name(text).map(|()| text.to_owned())
            })?),
            name.span().start,
        ),
        (None, Some(mac)) => (
            InterfaceMatch::Mac(checked(mac, "MAC address", parse_mac)?),
            mac.span().start,
        ),
        (Some(name), Some(mac)) => {
            return Err(Refusal::new(
                name.span().start.max(mac.span().start),
                format!(
                    "a [[network]] section matches by `name` or by `mac`, not both \
                 (name {}, mac {})",
                    shown(name.get_ref()),
                    shown(mac.get_ref())
                ),
            ))
        }
        (None, None) => {
            return Err(Refusal::new(
                section.span().start,
                "a [[network]] section needs `name` or `mac` to say which interface it is for"
                    .into(),
            ))
        }
    };
    let network = Network {
        dhcp: raw.dhcp,
        addresses: checked_list(&raw.addresses, "address", parse_cidr)?,
        gateways: checked_list(&raw.gateways, "gateway", parse_ip)?,
        dns: checked_list(&raw.dns, "DNS server", parse_ip)?,
        matching,
    };
    if !network.dhcp && network.addresses.is_empty() {
        return Err(Refusal::new(
            section.span().start,
            format!(
                "the [[network]] section for {} has neither `dhcp = true` nor `addresses`, \
                 so it would do nothing",
                network.matching
            ),
        ));
    }
    Ok((network, at))
}

/// Map entries in the order they are written, so the first mistake is reported first.
pub(super) fn in_text_order<V>(map: &BTreeMap<Spanned<String>, V>) -> Vec<(&Spanned<String>, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

pub(super) fn users(
    raw: &BTreeMap<Spanned<String>, RawUser>,
) -> Result<BTreeMap<String, User>, Refusal> {
    let mut users = BTreeMap::new();
    for (name, user) in in_text_order(raw) {
        checked(name, "user name", check_user_name)?;
        let keys = match &user.ssh_authorized_keys {
            Some(keys) if !keys.is_empty() => keys,
            _ => {
                return Err(Refusal::new(
                    name.span().start,
                    format!(
                        "user {} has no ssh_authorized_keys, so the section would do nothing",
                        shown(name.get_ref())
                    ),
                ))
            }
        };
        let keys = checked_list(keys, "SSH key", |key| {
            check_ssh_key(key).map(|()| key.to_owned())
        })?;
        users.insert(
            name.get_ref().clone(),
            User {
                ssh_authorized_keys: keys,
            },
        );
    }
    Ok(users)
}

pub(super) fn modules(names: &[Spanned<String>]) -> Result<Vec<String>, Refusal> {
    // The kernel treats '-' and '_' in module names alike: compare in its form.
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut modules = Vec::new();
    for name in names {
        checked(name, "module name", check_module)?;
        let canonical = name.get_ref().replace('-', "_");
        if let Some(first) = earlier(&seen, &canonical) {
            let message = format!(
                "module {} is listed twice ('-' and '_' are the same in module names)",
                shown(name.get_ref())
            );
            return Err(Refusal::conflict(
                name.span().start,
                message,
                "first at",
                first,
            ));
        }
        seen.push((canonical, name.span().start));
        modules.push(name.get_ref().clone());
    }
    Ok(modules)
}

pub(super) fn sysctl(
    raw: &BTreeMap<Spanned<String>, SysctlValue>,
) -> Result<BTreeMap<String, SysctlValue>, Refusal> {
    let mut settings = BTreeMap::new();
    for (key, value) in in_text_order(raw) {
        checked(key, "sysctl key", check_sysctl_key)?;
        settings.insert(key.get_ref().clone(), value.clone());
    }
    Ok(settings)
}

/// The files, and where each path is written (for the collision check that follows).
pub(super) fn files(raw: &[RawFile]) -> Result<(Vec<EtcFile>, Vec<usize>), Refusal> {
    let mut files: Vec<EtcFile> = Vec::new();
    let mut spans = Vec::new();
    for raw in raw {
        checked(&raw.path, "file path", check_file_path)?;
        let path = raw.path.get_ref();
        let at = raw.path.span().start;
        for (other, other_at) in files.iter().zip(&spans) {
            if let Some(overlap) = Overlap::of(path, &other.path) {
                let (message, label) = match overlap {
                    Overlap::Same => (format!("file {} is given twice", shown(path)), "first at"),
                    Overlap::Inside => (
                        format!(
                            "file {} would be inside the file {}",
                            shown(path),
                            other.path
                        ),
                        "that one at",
                    ),
                    Overlap::Contains => (
                        format!(
                            "file {} would have to be a directory for the file {}",
                            shown(path),
                            other.path
                        ),
                        "that one at",
                    ),
                };
                return Err(Refusal::conflict(at, message, label, *other_at));
            }
        }
        let mode = match &raw.mode {
            None => DEFAULT_MODE,
            Some(mode) => parse_mode(&mode.get_ref().0).map_err(|reason| {
                Refusal::new(
                    mode.span().start,
                    format!(
                        "invalid mode {} for {path}: {reason}",
                        shown(&mode.get_ref().0)
                    ),
                )
            })?,
        };
        files.push(EtcFile {
            path: path.clone(),
            mode,
            content: raw.content.clone(),
        });
        spans.push(at);
    }
    Ok((files, spans))
}

/// How two layer paths conflict: the same path, or one inside the other (which would need
/// the outer one to be a directory).
pub(super) enum Overlap {
    Same,
    Inside,
    Contains,
}

impl Overlap {
    pub(super) fn of(path: &str, other: &str) -> Option<Self> {
        let inside = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        if path == other {
            Some(Self::Same)
        } else if inside(path, other) {
            Some(Self::Inside)
        } else if inside(other, path) {
            Some(Self::Contains)
        } else {
            None
        }
    }
}

/// A `[[files]]` entry must not replace or shadow what another setting generates: the
/// result would depend on which one the writer happened to write first.
pub(super) fn check_collisions(config: &HostConfig, file_spans: &[usize]) -> Result<(), Refusal> {
    let generated = config.generated();
    for (file, at) in config.files.iter().zip(file_spans) {
        for (entry, source) in &generated {
            let other = format!("/etc/{}", entry.path);
            let problem = match Overlap::of(&file.path, &other) {
                None => continue,
                Some(Overlap::Same) => "collides with",
                Some(Overlap::Inside) => "would be inside",
                Some(Overlap::Contains) => "would have to be a directory for",
            };
            return Err(Refusal::new(
                *at,
                format!(
                    "file {} {problem} {other}, which `{source}` generates",
                    shown(&file.path)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

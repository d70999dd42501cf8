//! What a host config generates: the entries of its /etc layer.

use super::*;

// Rendering
// ---------------------------------------------------------------------------------------

impl HostConfig {
    /// Everything the layer holds, sorted by path (so the same config always gives the
    /// same layer and the same boot report).
    pub fn etc_layer(&self) -> Vec<EtcEntry> {
        let mut entries: Vec<EtcEntry> = self
            .generated()
            .into_iter()
            .map(|(entry, _)| entry)
            .collect();
        entries.extend(self.files.iter().map(|file| {
            EtcEntry {
                path: file
                    .path
                    .strip_prefix("/etc/")
                    .unwrap_or(&file.path)
                    .to_owned(),
                kind: EntryKind::File {
                    // Permission bits only: no config makes a setuid, setgid or sticky file.
                    mode: file.mode & 0o777,
                    content: file.content.clone(),
                },
            }
        }));
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries
    }

    /// The entries the settings generate (all but `[[files]]`), each with its setting.
    pub(super) fn generated(&self) -> Vec<(EtcEntry, &'static str)> {
        let mut entries = Vec::new();
        if let Some(name) = &self.hostname {
            entries.push((file("hostname", format!("{name}\n")), "hostname"));
        }
        if let Some(zone) = &self.timezone {
            let target = format!("../usr/share/zoneinfo/{zone}");
            let link = EtcEntry {
                path: "localtime".into(),
                kind: EntryKind::Symlink { target },
            };
            entries.push((link, "timezone"));
            entries.push((file("timezone", format!("{zone}\n")), "timezone"));
        }
        entries.extend(
            self.network_files()
                .into_iter()
                .map(|entry| (entry, "network")),
        );
        entries.extend(self.user_files().into_iter().map(|entry| (entry, "users")));
        if !self.modules.is_empty() {
            let lines: String = self
                .modules
                .iter()
                .map(|name| format!("{name}\n"))
                .collect();
            entries.push((file(MODULES_FILE, format!("{HEADER}{lines}")), "modules"));
        }
        if !self.sysctl.is_empty() {
            let lines: String = self
                .sysctl
                .iter()
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect();
            entries.push((file(SYSCTL_FILE, format!("{HEADER}{lines}")), "sysctl"));
        }
        entries
    }

    /// `10-xorbang-<n>.network`, numbered in file order. networkd reads .network files in
    /// lexical order, so past ten sections the numbers are zero-padded to keep that order.
    pub(super) fn network_files(&self) -> Vec<EtcEntry> {
        let width = self.networks.len().saturating_sub(1).to_string().len();
        self.networks
            .iter()
            .enumerate()
            .map(|(index, network)| {
                file(
                    &format!("systemd/network/10-xorbang-{index:0width$}.network"),
                    network_text(network),
                )
            })
            .collect()
    }

    /// Keys live under /etc because /etc is all the layer can provide; the drop-in makes
    /// sshd read them there as well as from the user's home.
    pub(super) fn user_files(&self) -> Vec<EtcEntry> {
        let mut entries: Vec<EtcEntry> = self
            .users
            .iter()
            .map(|(name, user)| {
                let keys: String = user
                    .ssh_authorized_keys
                    .iter()
                    .map(|key| format!("{key}\n"))
                    .collect();
                file(&format!("{AUTHORIZED_KEYS_DIR}/{name}"), keys)
            })
            .collect();
        if !self.users.is_empty() {
            let text = format!(
                "{HEADER}AuthorizedKeysFile .ssh/authorized_keys /etc/{AUTHORIZED_KEYS_DIR}/%u\n"
            );
            entries.push(file(SSHD_DROP_IN, text));
        }
        entries
    }
}

pub(super) fn file(path: &str, content: String) -> EtcEntry {
    EtcEntry {
        path: path.to_owned(),
        kind: EntryKind::File {
            mode: DEFAULT_MODE,
            content,
        },
    }
}

pub(super) fn network_text(network: &Network) -> String {
    let matching = match &network.matching {
        InterfaceMatch::Name(name) => format!("Name={name}"),
        InterfaceMatch::Mac(mac) => format!("MACAddress={}", mac_text(mac)),
    };
    let mut text = format!("{HEADER}[Match]\n{matching}\n\n[Network]\n");
    if network.dhcp {
        text.push_str("DHCP=yes\n");
    }
    let lines = network
        .addresses
        .iter()
        .map(|address| format!("Address={address}\n"))
        .chain(
            network
                .gateways
                .iter()
                .map(|gateway| format!("Gateway={gateway}\n")),
        )
        .chain(network.dns.iter().map(|server| format!("DNS={server}\n")));
    text.extend(lines);
    text
}

// ---------------------------------------------------------------------------------------

//! What `xorbang-build netboot` and the init agree on for per-host config on netbooted
//! machines: the configs a signed initramfs carries for every host of a fleet, named by MAC
//! address (the init picks the one matching one of its NICs), and the file of the small
//! per-host part a netboot loader appends for one host (unsigned: trusted as `local`).

use crate::host_config::{HostConfig, InterfaceMatch};

/// The kernel command line key naming the URL of the netboot tree a machine was booted from
/// (`xorbang.netboot=http://…/`): where xorbang-installer finds the install UKI and the
/// fleet's host configs by name.
pub const TREE_KEY: &str = "xorbang.netboot";

/// In the initramfs: one `<mac key>.toml` per host (with its `.minisig` when signed).
pub const HOSTS_DIR: &str = "etc/xorbang/hosts";
/// In the per-host part the loader appends. Never written into a signed initramfs, so a
/// file here came from the network, not from whoever signed the UKI.
pub const HOST_PART_FILE: &str = "netboot/host-config.toml";

/// How a MAC address names a host's files: lowercase hex pairs joined by `-`, as iPXE's
/// `${net0/mac:hexhyp}` prints it, so the same name works in URLs and file names.
pub fn mac_key(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// The host file of `mac` in [`HOSTS_DIR`].
pub fn host_file_name(mac: &[u8; 6]) -> String {
    format!("{}.toml", mac_key(mac))
}

/// The MAC addresses a host config names in its `[[network]]` sections, in order:
/// the machines it is for.
pub fn macs_of(config: &HostConfig) -> Vec<[u8; 6]> {
    // The parser refuses two sections for one MAC, so each appears once.
    config
        .networks
        .iter()
        .filter_map(|network| match network.matching {
            InterfaceMatch::Mac(mac) => Some(mac),
            InterfaceMatch::Name(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_config;

    #[test]
    fn a_mac_key_is_what_ipxe_hexhyp_prints() {
        let mac = [0x52, 0x54, 0x00, 0x14, 0x0a, 0xff];
        assert_eq!(mac_key(&mac), "52-54-00-14-0a-ff");
        assert_eq!(host_file_name(&mac), "52-54-00-14-0a-ff.toml");
    }

    #[test]
    fn a_config_is_for_the_macs_its_networks_match() {
        let text = "version = 1\n\
                    [[network]]\nmac = \"52:54:00:14:00:01\"\ndhcp = true\n\
                    [[network]]\nname = \"en*\"\ndhcp = true\n\
                    [[network]]\nmac = \"52:54:00:14:00:02\"\ndhcp = true\n";
        let config = host_config::parse(text).expect("valid config");
        assert_eq!(
            macs_of(&config),
            vec![[0x52, 0x54, 0, 0x14, 0, 1], [0x52, 0x54, 0, 0x14, 0, 2]]
        );
        let by_name = host_config::parse("version = 1\n[[network]]\nname = \"en*\"\ndhcp = true\n")
            .expect("valid config");
        assert!(macs_of(&by_name).is_empty());
    }
}

//! `xorbang-build netboot`: a directory any static TFTP/HTTP server can serve to netboot a
//! fleet from one image.
//!
//! ```text
//! vmlinuz                 the kernel
//! initrd.img              the shared initramfs
//! root.cpio               the root image and its hash tree as an (uncompressed) initramfs part
//! root.squashfs[.verity]  the same two files loose, for an init that fetches them (UKI boots)
//! hosts/<mac>.cpio        one small part per host: its host config at netboot/host-config.toml
//! hosts/<name>.toml       each host's config by name (and .minisig), for xorbang-installer --host
//! boot.ipxe               the iPXE script: kernel, initramfs, root, the host's part if any
//! uki.efi                 (--uki) the signed UKI, for UEFI machines and Secure Boot
//! install.efi             (--install-uki) the signed UKI xorbang-installer puts on disks
//! systemd-bootx64.efi     (--boot-loader) the boot loader it puts beside it (signed for
//!                         Secure Boot machines)
//! dnsmasq.conf            DHCP + TFTP for the tree, boot file by client architecture
//! netboot.json            what is in it: root hash, command line, hosts, sizes, SHA-256
//! ```
//!
//! Every initramfs part is padded with zeros to a multiple of 4 KiB: the kernel finds an
//! uncompressed archive only at a 4-byte aligned offset of what the boot loader concatenated,
//! and EFI loaders concatenate without padding (a misaligned part is silently dropped).
//! The iPXE script names everything relatively, so the tree works from any URL or TFTP root.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::file_error::{FileAction, FileError};
use crate::image::verified::{self, VerifiedImageError};
use crate::initrd::cpio::{Archive, CpioError};
use crate::sorted_dir;
use xorbang_formats::cmdline::Cmdline;
use xorbang_formats::error_chain::error_chain;
use xorbang_formats::host_config;
use xorbang_formats::netboot::{self as contract, mac_key, HOST_PART_FILE};
use xorbang_formats::pe;
use xorbang_formats::signature::SIGNATURE_SUFFIX;

pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const ROOT_PART: &str = "root.cpio";
pub const ROOT_IMAGE: &str = "root.squashfs";
pub const ROOT_TREE: &str = "root.squashfs.verity";
pub const HOSTS: &str = "hosts";
pub const SCRIPT: &str = "boot.ipxe";
pub const UKI: &str = "uki.efi";
pub const INSTALL_UKI: &str = "install.efi";
pub const BOOT_LOADER: &str = "systemd-bootx64.efi";
pub const DNSMASQ: &str = "dnsmasq.conf";
pub const MANIFEST: &str = "netboot.json";
/// What iPXE and the EFI stub pad or must be padded to (iPXE's own initrd alignment).
pub const PART_ALIGN: usize = 4096;
/// Far above a real host config, as the init's own bound says.
const MAX_HOST_CONFIG_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Image(#[from] VerifiedImageError),
    #[error("packing {what}")]
    Cpio {
        what: String,
        #[source]
        source: CpioError,
    },
    #[error("{path}: {source}")]
    HostConfig {
        path: PathBuf,
        #[source]
        source: host_config::HostConfigError,
    },
    #[error(
        "{path}: no [[network]] section matches an interface by mac, so no machine would \
         get this config (netboot hosts are keyed by MAC address)"
    )]
    NoMac { path: PathBuf },
    #[error("{path} and {other} both claim MAC address {mac}")]
    SameMac {
        path: PathBuf,
        other: PathBuf,
        mac: String,
    },
    #[error("{path} is {size} bytes; a host config may have at most {MAX_HOST_CONFIG_BYTES}")]
    HostConfigTooLarge { path: PathBuf, size: u64 },
    #[error("{path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("--uki {path}: {reason}")]
    Uki { path: PathBuf, reason: String },
    #[error("--uki {path} boots roothash={found}, but {image} has root hash {expected}")]
    UkiRootHash {
        path: PathBuf,
        image: PathBuf,
        found: String,
        expected: String,
    },
    #[error("--http-url {0:?}: expected an http:// URL ending in /")]
    HttpUrl(String),
}

/// One host of the fleet: a `hosts/<name>.toml` and the MACs of the machines it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub path: PathBuf,
    pub macs: Vec<[u8; 6]>,
    pub text: String,
    /// Its detached minisign signature (`<name>.toml.minisig`), when there is one.
    pub signature: Option<Vec<u8>>,
}

/// Reads every `*.toml` in `dir` (sorted by name) as a host config: each must parse, name at
/// least one MAC address, and share none with another host.
pub fn read_hosts(dir: &Path) -> Result<Vec<Host>, NetbootError> {
    let mut hosts: Vec<Host> = Vec::new();
    for file_name in sorted_dir::sorted_names(dir)? {
        let Some(name) = file_name
            .to_str()
            .and_then(|name| name.strip_suffix(".toml"))
        else {
            continue;
        };
        let path = dir.join(&file_name);
        let host = read_host(name, &path)?;
        for mac in &host.macs {
            if let Some(other) = hosts.iter().find(|other| other.macs.contains(mac)) {
                return Err(NetbootError::SameMac {
                    path: path.clone(),
                    other: other.path.clone(),
                    mac: mac_key(mac),
                });
            }
        }
        hosts.push(host);
    }
    Ok(hosts)
}

fn read_host(name: &str, path: &Path) -> Result<Host, NetbootError> {
    let size = fs::metadata(path)
        .map_err(FileError::of(FileAction::Inspect, path))?
        .len();
    if size > MAX_HOST_CONFIG_BYTES {
        return Err(NetbootError::HostConfigTooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let bytes = fs::read(path).map_err(FileError::of(FileAction::Read, path))?;
    let text = String::from_utf8(bytes).map_err(|_| NetbootError::NotText {
        path: path.to_owned(),
    })?;
    let config = host_config::parse(&text).map_err(|source| NetbootError::HostConfig {
        path: path.to_owned(),
        source,
    })?;
    let macs = contract::macs_of(&config);
    if macs.is_empty() {
        return Err(NetbootError::NoMac {
            path: path.to_owned(),
        });
    }
    let signature_path = PathBuf::from(format!("{}{SIGNATURE_SUFFIX}", path.display()));
    let signature = match fs::read(&signature_path) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(FileError::of(FileAction::Read, &signature_path)(error).into()),
    };
    Ok(Host {
        name: name.to_owned(),
        path: path.to_owned(),
        macs,
        text,
        signature,
    })
}

/// The files `hosts` puts into a signed initramfs (`initrd --hosts`): each host's config
/// (and signature) once per MAC, under [`contract::HOSTS_DIR`].
pub fn initramfs_host_files(hosts: &[Host]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for host in hosts {
        for mac in &host.macs {
            let file = format!("{}/{}", contract::HOSTS_DIR, contract::host_file_name(mac));
            files.push((file.clone(), host.text.clone().into_bytes()));
            if let Some(signature) = &host.signature {
                files.push((format!("{file}{SIGNATURE_SUFFIX}"), signature.clone()));
            }
        }
    }
    files
}

/// What a netboot tree is made from.
#[derive(Debug, Clone)]
pub struct NetbootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The verified root image; its `.verity` and `.json` lie beside it.
    pub image: PathBuf,
    /// Kernel command line words besides the root's (console=…).
    pub cmdline: String,
    pub hosts: Vec<Host>,
    pub uki: Option<PathBuf>,
    /// The UKI of the same image that boots it from a disk, for xorbang-installer.
    pub install_uki: Option<PathBuf>,
    /// systemd-boot for the disks xorbang-installer writes (signed where Secure Boot is on).
    pub boot_loader: Option<PathBuf>,
    /// Where the tree will be served over HTTP (`http://…/`): the boot-file URLs in
    /// dnsmasq.conf; without it dnsmasq hands out TFTP names only.
    pub http_url: Option<String>,
    /// `START,END,MASK` for dnsmasq to lease addresses; without it dnsmasq runs as a
    /// proxy-DHCP server beside the site's own DHCP server.
    pub dhcp_range: Option<String>,
    pub mtime: u32,
}

/// What netboot.json records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetbootRecord {
    pub root_hash: String,
    /// The command line boot.ipxe gives the kernel (without its `initrd=` words).
    pub cmdline: String,
    /// Host name → its part, by MAC key.
    pub hosts: BTreeMap<String, Vec<String>>,
    pub files: Vec<FileRecord>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileRecord {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes the tree for `spec` into `out` (created; files there are replaced).
pub fn build(spec: &NetbootSpec, out: &Path) -> Result<NetbootRecord, NetbootError> {
    if let Some(url) = &spec.http_url {
        if !(url.starts_with("http://") && url.ends_with('/')) {
            return Err(NetbootError::HttpUrl(url.clone()));
        }
    }
    let (_, root_hash, tree) = verified::read_manifest(&spec.image)?;
    let hash = root_hash.to_string();
    for uki in spec.uki.iter().chain(&spec.install_uki) {
        check_uki(uki, &spec.image, &hash)?;
    }
    fs::create_dir_all(out.join(HOSTS)).map_err(FileError::of(FileAction::CreateDirectory, out))?;
    let mut files = vec![
        copy(&spec.kernel, out, KERNEL, false)?,
        copy(&spec.initrd, out, INITRD, true)?,
        copy(&spec.image, out, ROOT_IMAGE, false)?,
        copy(&tree, out, ROOT_TREE, false)?,
        write_part(out, ROOT_PART, root_part(&spec.image, &tree, spec.mtime)?)?,
    ];
    let mut hosts = BTreeMap::new();
    for host in &spec.hosts {
        let mut parts = Vec::new();
        for mac in &host.macs {
            let name = format!("{HOSTS}/{}.cpio", mac_key(mac));
            files.push(write_part(out, &name, host_part(host, spec.mtime)?)?);
            parts.push(name);
        }
        let by_name = format!("{HOSTS}/{}.toml", host.name);
        files.push(write_bytes(out, &by_name, host.text.as_bytes())?);
        if let Some(signature) = &host.signature {
            files.push(write_bytes(
                out,
                &format!("{by_name}{SIGNATURE_SUFFIX}"),
                signature,
            )?);
        }
        hosts.insert(host.name.clone(), parts);
    }
    if let Some(uki) = &spec.uki {
        files.push(copy(uki, out, UKI, false)?);
    }
    if let Some(uki) = &spec.install_uki {
        files.push(copy(uki, out, INSTALL_UKI, false)?);
    }
    if let Some(loader) = &spec.boot_loader {
        files.push(copy(loader, out, BOOT_LOADER, false)?);
    }
    let mut cmdline = root_cmdline(&hash, &spec.cmdline);
    if let Some(url) = &spec.http_url {
        cmdline.push_str(&format!(" {}={url}", contract::TREE_KEY));
    }
    files.push(write_text(out, SCRIPT, &ipxe_script(&hash, &cmdline))?);
    let dnsmasq = dnsmasq_conf(out, spec);
    files.push(write_text(out, DNSMASQ, &dnsmasq)?);
    let record = NetbootRecord {
        root_hash: hash,
        cmdline,
        hosts,
        files,
    };
    let path = out.join(MANIFEST);
    let json = serde_json::to_string_pretty(&record)
        .map_err(|error| FileError::of(FileAction::Write, &path)(error.into()))?;
    crate::output::write_atomically(&path, (json + "\n").as_bytes())?;
    Ok(record)
}

/// The root hash the UKI's signed command line boots must be the image's.
fn check_uki(uki: &Path, image: &Path, expected: &str) -> Result<(), NetbootError> {
    let bytes = fs::read(uki).map_err(FileError::of(FileAction::Read, uki))?;
    let fail = |reason: String| NetbootError::Uki {
        path: uki.to_owned(),
        reason,
    };
    let section = pe::section(&bytes, ".cmdline").map_err(|error| fail(error_chain(&error)))?;
    let text = String::from_utf8_lossy(section);
    let cmdline = Cmdline::parse(text.trim_end_matches('\0'));
    match cmdline.last("roothash") {
        Some(Some(found)) if found == expected => Ok(()),
        Some(Some(found)) => Err(NetbootError::UkiRootHash {
            path: uki.to_owned(),
            image: image.to_owned(),
            found: found.to_owned(),
            expected: expected.to_owned(),
        }),
        _ => Err(fail("its command line has no roothash=".to_owned())),
    }
}

/// The words that boot the root from the files in [`ROOT_PART`], then the caller's.
pub fn root_cmdline(root_hash: &str, extra: &str) -> String {
    let root = format!(
        "roothash={root_hash} systemd.verity_root_data=/{ROOT_IMAGE} \
         systemd.verity_root_hash=/{ROOT_TREE}"
    );
    match extra.trim() {
        "" => root,
        extra => format!("{root} {extra}"),
    }
}

/// The root image and its tree at `/root.squashfs` and `/root.squashfs.verity`.
fn root_part(image: &Path, tree: &Path, mtime: u32) -> Result<Vec<u8>, NetbootError> {
    let mut archive = Archive::new();
    for (path, name) in [(image, ROOT_IMAGE), (tree, ROOT_TREE)] {
        let bytes = fs::read(path).map_err(FileError::of(FileAction::Read, path))?;
        archive
            .add_file(name, 0o400, bytes)
            .map_err(|source| NetbootError::Cpio {
                what: name.to_owned(),
                source,
            })?;
    }
    Ok(archive.to_bytes(mtime))
}

/// A host's config (and signature) at [`HOST_PART_FILE`].
fn host_part(host: &Host, mtime: u32) -> Result<Vec<u8>, NetbootError> {
    let mut archive = Archive::new();
    let cpio = |source| NetbootError::Cpio {
        what: host.path.display().to_string(),
        source,
    };
    archive
        .add_file(HOST_PART_FILE, 0o400, host.text.clone().into_bytes())
        .map_err(cpio)?;
    if let Some(signature) = &host.signature {
        archive
            .add_file(
                &format!("{HOST_PART_FILE}{SIGNATURE_SUFFIX}"),
                0o400,
                signature.clone(),
            )
            .map_err(cpio)?;
    }
    Ok(archive.to_bytes(mtime))
}

/// Zeros up to the next multiple of [`PART_ALIGN`].
pub fn pad(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len().next_multiple_of(PART_ALIGN), 0);
}

fn write_part(out: &Path, name: &str, mut bytes: Vec<u8>) -> Result<FileRecord, NetbootError> {
    pad(&mut bytes);
    write_bytes(out, name, &bytes)
}

fn write_text(out: &Path, name: &str, text: &str) -> Result<FileRecord, NetbootError> {
    write_bytes(out, name, text.as_bytes())
}

fn write_bytes(out: &Path, name: &str, bytes: &[u8]) -> Result<FileRecord, NetbootError> {
    crate::output::write_atomically(&out.join(name), bytes)?;
    Ok(record_of(name, bytes))
}

/// Copies `from` to `out/name`, padded when it is an initramfs part.
fn copy(from: &Path, out: &Path, name: &str, part: bool) -> Result<FileRecord, NetbootError> {
    let mut bytes = fs::read(from).map_err(FileError::of(FileAction::Read, from))?;
    if part {
        pad(&mut bytes);
    }
    write_bytes(out, name, &bytes)
}

fn record_of(name: &str, bytes: &[u8]) -> FileRecord {
    FileRecord {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(bytes)),
    }
}

/// The iPXE script. Under BIOS iPXE hands the kernel every image it loaded, in order; under
/// UEFI the EFI stub loads only those its `initrd=` words name, so both are given. A MAC
/// without a part (a 404) boots with the image's defaults.
pub fn ipxe_script(root_hash: &str, cmdline: &str) -> String {
    let parts = format!("initrd={INITRD} initrd={ROOT_PART}");
    format!(
        "#!ipxe\n\
         # xorbang netboot of root hash {root_hash}; paths are relative to this script's URL.\n\
         echo xorbang netboot: ${{net0/mac}}\n\
         kernel --name {KERNEL} {KERNEL} || goto failed\n\
         initrd --name {INITRD} {INITRD} || goto failed\n\
         initrd --name {ROOT_PART} {ROOT_PART} || goto failed\n\
         initrd --name host.cpio {HOSTS}/${{net0/mac:hexhyp}}.cpio || goto defaults\n\
         imgargs {KERNEL} {cmdline} {parts} initrd=host.cpio\n\
         boot || goto failed\n\
         :defaults\n\
         echo xorbang netboot: no host config for ${{net0/mac}}, booting with the image defaults\n\
         imgargs {KERNEL} {cmdline} {parts}\n\
         boot || goto failed\n\
         :failed\n\
         echo xorbang netboot: failed\n\
         exit 1\n"
    )
}

/// dnsmasq's configuration for the tree: DHCP (or proxy-DHCP) and TFTP, the boot file by
/// client: iPXE (the NIC's ROM, or one chainloaded) gets the script, UEFI firmware the
/// signed UKI when there is one (TFTP, or HTTP for UEFI HTTP boot), a BIOS PXE ROM iPXE's
/// undionly.kpxe and UEFI PXE without a UKI iPXE's snponly.efi (copy those two from
/// /usr/lib/ipxe for machines whose NIC ROM is not iPXE).
pub fn dnsmasq_conf(out: &Path, spec: &NetbootSpec) -> String {
    let mut lines = vec![
        "# dnsmasq for this netboot tree: dnsmasq -C dnsmasq.conf (add interface=… for your NIC)"
            .to_owned(),
        "port=0".to_owned(),
        "enable-tftp".to_owned(),
        format!("tftp-root={}", out.display()),
        "dhcp-userclass=set:ipxe,iPXE".to_owned(),
        "dhcp-match=set:ipxe,175".to_owned(),
        "dhcp-match=set:bios,option:client-arch,0".to_owned(),
        "dhcp-match=set:efi64,option:client-arch,7".to_owned(),
        "dhcp-match=set:efi64,option:client-arch,9".to_owned(),
        "dhcp-match=set:efihttp,option:client-arch,16".to_owned(),
    ];
    let url = |name: &str| match &spec.http_url {
        Some(base) => format!("{base}{name}"),
        None => name.to_owned(),
    };
    let script = url(SCRIPT);
    let (efi_ipxe, efi_pxe) = match &spec.uki {
        Some(_) => (url(UKI), UKI),
        None => (script.clone(), "snponly.efi"),
    };
    match &spec.dhcp_range {
        Some(range) => {
            lines.push(format!("dhcp-range={range},1h"));
            lines.push(format!("dhcp-boot=tag:ipxe,tag:!efi64,{script}"));
            lines.push(format!("dhcp-boot=tag:ipxe,tag:efi64,{efi_ipxe}"));
            lines.push("dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe".to_owned());
            lines.push(format!("dhcp-boot=tag:!ipxe,tag:efi64,{efi_pxe}"));
        }
        None => {
            lines.push(
                "# proxy-DHCP beside the site's DHCP server: set the network address".to_owned(),
            );
            lines.push(format!("dhcp-range={},proxy", proxy_network(spec)));
            lines.push("pxe-prompt=\"xorbang\",0".to_owned());
            lines.push(format!("pxe-service=tag:ipxe,x86PC,\"xorbang\",{script}"));
            lines.push(format!(
                "pxe-service=tag:ipxe,x86-64_EFI,\"xorbang\",{efi_ipxe}"
            ));
            lines.push("pxe-service=tag:!ipxe,x86PC,\"iPXE\",undionly.kpxe".to_owned());
            lines.push(format!(
                "pxe-service=tag:!ipxe,x86-64_EFI,\"xorbang\",{efi_pxe}"
            ));
        }
    }
    if spec.uki.is_some() && spec.http_url.is_some() {
        lines.push("dhcp-option-force=tag:efihttp,option:vendor-class,HTTPClient".to_owned());
        lines.push(format!("dhcp-boot=tag:efihttp,{}", url(UKI)));
    }
    lines.join("\n") + "\n"
}

/// The server's address from `--http-url`, for a proxy-DHCP range (dnsmasq takes the
/// network from the interface that has it); a placeholder when the URL names no address.
fn proxy_network(spec: &NetbootSpec) -> String {
    spec.http_url
        .as_deref()
        .and_then(|url| url.strip_prefix("http://"))
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|host| host.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or("0.0.0.0")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_padded_to_whole_pages() {
        let mut bytes = vec![1u8; 5];
        pad(&mut bytes);
        assert_eq!(bytes.len(), PART_ALIGN);
        assert_eq!(&bytes[..6], &[1, 1, 1, 1, 1, 0]);
        let mut exact = vec![1u8; PART_ALIGN];
        pad(&mut exact);
        assert_eq!(exact.len(), PART_ALIGN);
    }

    #[test]
    fn the_script_names_every_part_for_the_efi_stub_and_falls_back_without_a_host() {
        let script = ipxe_script("ab", "roothash=ab console=ttyS0");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains(
            "imgargs vmlinuz roothash=ab console=ttyS0 initrd=initrd.img initrd=root.cpio \
             initrd=host.cpio\n"
        ));
        assert!(script
            .contains("initrd --name host.cpio hosts/${net0/mac:hexhyp}.cpio || goto defaults\n"));
        let defaults = script
            .split(":defaults\n")
            .nth(1)
            .expect("a defaults label");
        assert!(defaults.contains(
            "imgargs vmlinuz roothash=ab console=ttyS0 initrd=initrd.img initrd=root.cpio\n"
        ));
    }

    fn host_file(dir: &Path, name: &str, mac: Option<&str>) {
        let network = match mac {
            Some(mac) => format!("[[network]]\nmac = \"{mac}\"\ndhcp = true\n"),
            None => "[[network]]\nname = \"en*\"\ndhcp = true\n".to_owned(),
        };
        let text = format!("version = 1\nhostname = \"{name}\"\n{network}");
        fs::write(dir.join(format!("{name}.toml")), text).expect("write");
    }

    #[test]
    fn hosts_are_keyed_by_mac_and_carried_once_per_mac() {
        let dir = tempfile::tempdir().expect("tempdir");
        host_file(dir.path(), "web-02", Some("52:54:00:14:00:02"));
        host_file(dir.path(), "web-01", Some("52:54:00:14:00:01"));
        fs::write(dir.path().join("web-01.toml.minisig"), "sig").expect("write");
        fs::write(dir.path().join("README"), "not a host").expect("write");
        let hosts = read_hosts(dir.path()).expect("hosts");
        let names: Vec<&str> = hosts.iter().map(|host| host.name.as_str()).collect();
        assert_eq!(names, ["web-01", "web-02"]);
        let files: Vec<String> = initramfs_host_files(&hosts)
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(
            files,
            [
                "etc/xorbang/hosts/52-54-00-14-00-01.toml",
                "etc/xorbang/hosts/52-54-00-14-00-01.toml.minisig",
                "etc/xorbang/hosts/52-54-00-14-00-02.toml",
            ]
        );
    }

    #[test]
    fn a_host_without_a_mac_or_with_another_hosts_mac_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        host_file(dir.path(), "web-01", None);
        let error = read_hosts(dir.path()).expect_err("no mac");
        assert!(
            error.to_string().ends_with(
                "web-01.toml: no [[network]] section matches an \
             interface by mac, so no machine would get this config (netboot hosts are keyed by \
             MAC address)"
            ),
            "{error}"
        );
        host_file(dir.path(), "web-01", Some("52:54:00:14:00:01"));
        host_file(dir.path(), "web-02", Some("52:54:00:14:00:01"));
        let error = read_hosts(dir.path()).expect_err("same mac");
        assert!(
            error
                .to_string()
                .ends_with("web-01.toml both claim MAC address 52-54-00-14-00-01"),
            "{error}"
        );
        fs::write(
            dir.path().join("web-02.toml"),
            "version = 1\nhostname = 5\n",
        )
        .expect("write");
        let error = read_hosts(dir.path()).expect_err("bad config");
        assert!(
            error.to_string().contains("web-02.toml: line 2, column"),
            "{error}"
        );
    }

    #[test]
    fn the_root_command_line_comes_first() {
        assert_eq!(
            root_cmdline("ab", " console=ttyS0 "),
            "roothash=ab systemd.verity_root_data=/root.squashfs \
             systemd.verity_root_hash=/root.squashfs.verity console=ttyS0"
        );
    }
}

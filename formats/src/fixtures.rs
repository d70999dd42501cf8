//! Test fixtures shared by the crates' tests: a seeded generator for the fuzz loops, GPT disk
//! images and filesystem superblocks. Built for this crate's tests and, with the `fixtures`
//! feature, for the other crates' (never for a shipped binary).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::fs_probe::{
    EROFS_LABEL_OFFSET, EROFS_MAGIC, EROFS_MAGIC_OFFSET, EROFS_UUID_OFFSET, EXT_LABEL_OFFSET,
    EXT_MAGIC, EXT_MAGIC_OFFSET, EXT_UUID_OFFSET,
};
use crate::gpt::{
    GptImage, Guid, Lba, PartitionSpec, ESP, ROOT_VERITY_SIG_X86_64, ROOT_VERITY_X86_64,
    ROOT_X86_64, USR_VERITY_X86_64, USR_X86_64, VAR,
};

/// xorshift64: small and seeded, so every fuzz run is the same and a failure reproduces.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.fill(&mut bytes);
        bytes
    }

    /// `low..=high` characters drawn from `alphabet`.
    pub fn text(&mut self, alphabet: &[char], low: usize, high: usize) -> String {
        let length = self.range(low, high);
        (0..length).map(|_| *self.pick(alphabet)).collect()
    }
}

/// A DPS-style disk: ESP, root, root-verity, root-verity-sig, /usr, usr-verity, /var.
pub fn dps_partitions() -> Vec<PartitionSpec> {
    let types = [
        (ESP, "esp"),
        (ROOT_X86_64, "root-x86-64"),
        (ROOT_VERITY_X86_64, "root-x86-64-verity"),
        (ROOT_VERITY_SIG_X86_64, "root-x86-64-verity-sig"),
        (USR_X86_64, "usr-x86-64"),
        (USR_VERITY_X86_64, "usr-x86-64-verity"),
        (VAR, "var"),
    ];
    types
        .iter()
        .zip(0u64..)
        .map(|(&(type_guid, name), index)| PartitionSpec {
            type_guid,
            unique_guid: Guid::from_bytes([index as u8 + 1; 16]),
            name: name.to_owned(),
            first_lba: Lba(2048 + index * 2048),
            last_lba: Lba(2048 + index * 2048 + 2047),
            attributes: if index == 2 { 1 << 60 } else { 0 },
        })
        .collect()
}

pub fn tool_exists(name: &str) -> bool {
    let dirs = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(dirs.iter().map(PathBuf::from))
        .any(|dir| dir.join(name).is_file())
}

/// A sparse file of `size` bytes holding the GPT regions of `image`.
pub fn write_image(path: &Path, size: u64, image: &GptImage) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("create image");
    file.set_len(size).expect("size image");
    file.write_all_at(&image.primary, 0).expect("write primary");
    file.write_all_at(&image.backup, image.backup_offset)
        .expect("write backup");
}

/// A SquashFS 4.0 superblock (only the fields `probe` reads).
pub fn squashfs_fixture() -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    bytes[..4].copy_from_slice(b"hsqs");
    bytes[28..30].copy_from_slice(&4u16.to_le_bytes());
    bytes
}

/// An EROFS superblock (only the fields `probe` reads).
pub fn erofs_fixture(uuid: [u8; 16], label: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    bytes[EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
    bytes[EROFS_UUID_OFFSET..EROFS_UUID_OFFSET + 16].copy_from_slice(&uuid);
    bytes[EROFS_LABEL_OFFSET..EROFS_LABEL_OFFSET + label.len()].copy_from_slice(label.as_bytes());
    bytes
}

pub fn ext4_fixture(uuid: [u8; 16], label: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; 8192];
    bytes[EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
    bytes[EXT_UUID_OFFSET..EXT_UUID_OFFSET + 16].copy_from_slice(&uuid);
    bytes[EXT_LABEL_OFFSET..EXT_LABEL_OFFSET + label.len()].copy_from_slice(label.as_bytes());
    bytes
}

/// Each message of an error chain is said once: no error's message repeats its source's
/// (the workspace's error convention; `error_chain` joins them).
pub fn assert_said_once(error: &dyn std::error::Error) {
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = current {
        if let Some(source) = error.source() {
            assert!(
                !error.to_string().contains(&source.to_string()),
                "{error:?} repeats its source {source:?}"
            );
        }
        current = error.source();
    }
}

/// A host-config layer entry for a plain file.
pub fn text_entry(path: &str, mode: u32, content: &str) -> crate::host_config::EtcEntry {
    crate::host_config::EtcEntry {
        path: path.to_owned(),
        kind: crate::host_config::EntryKind::File {
            mode,
            content: content.to_owned(),
        },
    }
}

/// A DHCP client's message as a test server reads it: the fields and the options, parsed
/// independently of `dhcp`'s parser (which only reads replies), asserting the layout every
/// message of the client has.
#[derive(Debug)]
pub struct DhcpClientMessage {
    pub xid: u32,
    pub flags: u16,
    pub chaddr: [u8; 16],
    pub options: Vec<(u8, Vec<u8>)>,
    pub end_offset: usize,
}

impl DhcpClientMessage {
    pub fn read(bytes: &[u8]) -> Self {
        assert!(bytes.len() >= 300, "{} bytes", bytes.len());
        assert_eq!(&bytes[..4], &[1, 1, 6, 0], "op, htype, hlen, hops");
        assert_eq!(&bytes[8..10], &[0, 0], "secs");
        assert!(bytes[12..28].iter().all(|&b| b == 0), "ciaddr..giaddr");
        assert!(bytes[44..236].iter().all(|&b| b == 0), "sname, file");
        assert_eq!(&bytes[236..240], &[99, 130, 83, 99], "magic cookie");
        let mut options = Vec::new();
        let mut at = 240;
        while bytes[at] != 255 {
            let length = usize::from(bytes[at + 1]);
            options.push((bytes[at], bytes[at + 2..at + 2 + length].to_vec()));
            at += 2 + length;
        }
        assert!(bytes[at + 1..].iter().all(|&b| b == 0), "padding");
        Self {
            xid: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
            flags: u16::from_be_bytes([bytes[10], bytes[11]]),
            chaddr: bytes[28..44].try_into().expect("16 bytes"),
            options,
            end_offset: at,
        }
    }

    /// The value of option `code`, which the client sends at most once.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        let mut found = self.options.iter().filter(|(c, _)| *c == code);
        let value = found.next().map(|(_, value)| value.as_slice());
        assert!(found.next().is_none(), "option {code} twice");
        value
    }

    /// Option 53: 1 DISCOVER, 3 REQUEST.
    pub fn message_type(&self) -> Option<u8> {
        self.option(53).and_then(|value| value.first().copied())
    }
}

/// A DHCP server's reply, built field by field as a server writes it; tests break it on
/// purpose through its fields or the bytes.
#[derive(Debug, Clone)]
pub struct DhcpServerReply {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub cookie: [u8; 4],
    pub options: Vec<(u8, Vec<u8>)>,
    pub end: bool,
}

impl DhcpServerReply {
    /// The answer of `server` to `client`, echoing its xid and chaddr: `kind` 2 (OFFER) or 5
    /// (ACK) of `offered`/24 for an hour, `server` as router, DNS server and next server; 6
    /// (NAK) with a message.
    pub fn answer(
        client: &DhcpClientMessage,
        kind: u8,
        server: Ipv4Addr,
        offered: Ipv4Addr,
    ) -> Self {
        let nak = kind == 6;
        let mut options = vec![(53, vec![kind]), (54, server.octets().to_vec())];
        if nak {
            options.push((56, b"wrong network".to_vec()));
        } else {
            options.extend([
                (51, 3600u32.to_be_bytes().to_vec()),
                (1, vec![255, 255, 255, 0]),
                (3, server.octets().to_vec()),
                (6, server.octets().to_vec()),
            ]);
        }
        Self {
            op: 2,
            htype: 1,
            hlen: 6,
            xid: client.xid,
            yiaddr: if nak { Ipv4Addr::UNSPECIFIED } else { offered },
            siaddr: server,
            chaddr: client.chaddr,
            cookie: [99, 130, 83, 99],
            options,
            end: true,
        }
    }

    /// Option `code` set to `value`, moved after the others.
    pub fn set(mut self, code: u8, value: &[u8]) -> Self {
        self.options.retain(|(c, _)| *c != code);
        self.options.push((code, value.to_vec()));
        self
    }

    pub fn without(mut self, code: u8) -> Self {
        self.options.retain(|(c, _)| *c != code);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; 240];
        bytes[..3].copy_from_slice(&[self.op, self.htype, self.hlen]);
        bytes[4..8].copy_from_slice(&self.xid.to_be_bytes());
        bytes[16..20].copy_from_slice(&self.yiaddr.octets());
        bytes[20..24].copy_from_slice(&self.siaddr.octets());
        bytes[28..44].copy_from_slice(&self.chaddr);
        bytes[44..50].copy_from_slice(b"server");
        bytes[236..240].copy_from_slice(&self.cookie);
        for (code, value) in &self.options {
            bytes.push(*code);
            bytes.push(value.len() as u8);
            bytes.extend_from_slice(value);
        }
        if self.end {
            bytes.push(255);
        }
        bytes
    }
}

//! Device-mapper through its ioctl interface, without libdevmapper: create a mapped device,
//! load its table, resume it, read its status, remove it, and give it a /dev/mapper node
//! (there is no udev in the initramfs).
//!
//! Every call goes through [`DeviceMapper::do_ioctl`]: a `struct dm_ioctl` header, then the
//! command's data at `data_start`, in one buffer that grows while the kernel answers
//! DM_BUFFER_FULL_FLAG. Building payloads and decoding replies are pure functions, tested on
//! byte fixtures, because the host that builds xorbang has no device-mapper.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::sys::{
    self, DmCommand, DmIoctl, DmTargetSpec, DM_BUFFER_FULL_FLAG, DM_DEV_CREATE, DM_DEV_REMOVE,
    DM_DEV_SUSPEND, DM_IOCTL_SIZE, DM_MAX_TYPE_NAME, DM_NAME_LEN, DM_READONLY_FLAG, DM_TABLE_LOAD,
    DM_TABLE_STATUS, DM_TARGET_SPEC_SIZE, DM_VERSION, DM_VERSION_MAJOR, REQUEST_VERSION,
};

/// The kernel aligns `data_start` and every `dm_target_spec` to 8 bytes (ALIGN_MASK in
/// dm-ioctl.c) and, since Linux 6.5, rejects table loads whose specs are not aligned.
const ALIGNMENT: usize = 8;
/// Where the data area starts: right after the header, aligned (312 is already aligned).
const DATA_START: usize = align(DM_IOCTL_SIZE);
/// First buffer size, as libdevmapper starts: status replies of a few targets fit easily.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Upper bound for regrowing on DM_BUFFER_FULL_FLAG, so a misbehaving reply cannot make
/// PID 1 allocate without end.
const MAX_BUFFER: usize = 16 * 1024 * 1024;

/// An open /dev/mapper/control.
#[derive(Debug)]
pub struct DeviceMapper {
    control: OwnedFd,
}

/// A length or offset in 512-byte sectors, the unit of device-mapper tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sectors(pub u64);

/// The block device number of a mapped device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

/// One line of a table to load: `<start> <length> <target_type> <params>` in dmsetup syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: Sectors,
    pub length: Sectors,
    pub target_type: String,
    /// Passed verbatim: the kernel splits it at whitespace, with backslash escapes.
    pub params: String,
}

/// One target's line of DM_TABLE_STATUS (the STATUSTYPE_INFO text, e.g. `V` for verity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub start: Sectors,
    pub length: Sectors,
    pub target_type: String,
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open the device-mapper control device {path}")]
    Open { path: PathBuf, source: Errno },
    #[error("{op}{}", on_device(.name))]
    Ioctl {
        op: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("{op}{}: unexpected reply from the kernel: {detail}", on_device(.name))]
    Reply {
        op: &'static str,
        name: String,
        detail: String,
    },
    #[error("invalid device-mapper {what} {value:?}: {reason}")]
    Name {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid device-mapper table for {name}: {detail}")]
    Table { name: String, detail: String },
    #[error("the kernel's device-mapper ioctl interface is {}.{}.{}, not version 4", .found[0], .found[1], .found[2])]
    Version { found: [u32; 3] },
    #[error("cannot create the device node {path}")]
    Node { path: PathBuf, source: Errno },
}

/// " <name>" for messages about one device, nothing for DM_VERSION, which has no device.
fn on_device(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" {name}")
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevId {
    /// Decodes `dm_ioctl.dev`, which the kernel fills with `huge_encode_dev()`, i.e.
    /// `new_encode_dev()` (include/linux/kdev_t.h): 12-bit major, 20-bit minor, in 32 bits.
    /// This is `new_decode_dev()`:
    /// ```c
    /// unsigned major = (dev & 0xfff00) >> 8;
    /// unsigned minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    /// ```
    fn from_kernel(dev: u64) -> Self {
        Self {
            major: ((dev & 0xfff00) >> 8) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32,
        }
    }
}

/// Everything one ioctl sends besides the header fields that are always the same.
struct Request<'a> {
    command: DmCommand,
    /// Empty only for DM_VERSION. The kernel looks devices up by name or by uuid, never
    /// both, so `uuid` is set only when creating.
    name: &'a str,
    uuid: Option<&'a str>,
    flags: u32,
    target_count: u32,
    payload: &'a [u8],
}

impl<'a> Request<'a> {
    fn new(command: DmCommand, name: &'a str) -> Self {
        Self {
            command,
            name,
            uuid: None,
            flags: 0,
            target_count: 0,
            payload: &[],
        }
    }

    fn reply_error(&self, detail: impl Into<String>) -> DmError {
        DmError::Reply {
            op: self.command.name(),
            name: self.name.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The kernel's answer: its header, and the whole buffer for the data area.
#[derive(Debug)]
struct Reply {
    header: DmIoctl,
    buffer: Vec<u8>,
}

impl DeviceMapper {
    /// Opens the control device (`/dev/mapper/control`, made by devtmpfs once dm-mod is in).
    pub fn open(control: &Path) -> Result<Self, DmError> {
        let control = rustix::fs::open(control, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|source| DmError::Open {
                path: control.to_owned(),
                source,
            })?;
        Ok(Self { control })
    }

    /// The kernel's ioctl interface version (DM_VERSION); only major 4 exists.
    pub fn version(&self) -> Result<[u32; 3], DmError> {
        let reply = self.do_ioctl(&Request::new(DM_VERSION, ""))?;
        check_version(reply.header.version)
    }

    /// Creates an empty, suspended device (DM_DEV_CREATE); a table and a resume follow.
    pub fn create(&self, name: &str, uuid: Option<&str>) -> Result<DevId, DmError> {
        check_name(name)?;
        let mut request = Request::new(DM_DEV_CREATE, name);
        request.uuid = uuid;
        let reply = self.do_ioctl(&request)?;
        Ok(DevId::from_kernel(reply.header.dev))
    }

    /// Loads `targets` into the device's inactive slot (DM_TABLE_LOAD). `read_only` opens
    /// the underlying devices read-only and makes the device read-only on resume; dm-verity
    /// refuses to load without it ("Device must be readonly").
    pub fn load_table(
        &self,
        name: &str,
        targets: &[Target],
        read_only: bool,
    ) -> Result<(), DmError> {
        check_name(name)?;
        let table_error = |detail| DmError::Table {
            name: name.to_owned(),
            detail,
        };
        let payload = encode_targets(targets).map_err(table_error)?;
        let target_count = u32::try_from(targets.len())
            .map_err(|_| table_error(format!("{} targets are too many", targets.len())))?;
        let mut request = Request::new(DM_TABLE_LOAD, name);
        request.flags = if read_only { DM_READONLY_FLAG } else { 0 };
        request.target_count = target_count;
        request.payload = &payload;
        self.do_ioctl(&request)?;
        Ok(())
    }

    /// Makes the loaded table live and resumes I/O: DM_DEV_SUSPEND without DM_SUSPEND_FLAG.
    pub fn resume(&self, name: &str) -> Result<DevId, DmError> {
        check_name(name)?;
        let reply = self.do_ioctl(&Request::new(DM_DEV_SUSPEND, name))?;
        Ok(DevId::from_kernel(reply.header.dev))
    }

    /// The live table's per-target status (DM_TABLE_STATUS without DM_STATUS_TABLE_FLAG,
    /// i.e. STATUSTYPE_INFO). Empty while no table is live.
    pub fn table_status(&self, name: &str) -> Result<Vec<TargetStatus>, DmError> {
        check_name(name)?;
        let request = Request::new(DM_TABLE_STATUS, name);
        let reply = self.do_ioctl(&request)?;
        decode_status(&reply).map_err(|detail| request.reply_error(detail))
    }

    /// Removes the device and its tables (DM_DEV_REMOVE); fails with EBUSY while it is open.
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        check_name(name)?;
        self.do_ioctl(&Request::new(DM_DEV_REMOVE, name))?;
        Ok(())
    }

    /// Sends one command, regrowing the buffer and retrying while the kernel reports that
    /// the reply did not fit.
    fn do_ioctl(&self, request: &Request<'_>) -> Result<Reply, DmError> {
        let mut capacity = INITIAL_BUFFER.max(DATA_START + request.payload.len());
        loop {
            let mut buffer = encode_request(request, capacity)?;
            sys::dm_ioctl(self.control.as_fd(), request.command, &mut buffer).map_err(
                |source| DmError::Ioctl {
                    op: request.command.name(),
                    name: request.name.to_owned(),
                    source,
                },
            )?;
            let header = parse_header(request, &buffer)?;
            match retry_size(request, &header, buffer.len())? {
                None => return Ok(Reply { header, buffer }),
                Some(bigger) => capacity = bigger,
            }
        }
    }
}

/// Creates `<dev_dir>/mapper/<name>` as the block device `id` (mode 0600), replacing whatever
/// stale node a previous attempt left there. Stands in for udev, which the initramfs lacks.
pub fn make_node(dev_dir: &Path, name: &str, id: DevId) -> Result<PathBuf, DmError> {
    check_name(name)?;
    let dir = dev_dir.join("mapper");
    match rustix::fs::mkdir(&dir, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(source) => return Err(DmError::Node { path: dir, source }),
    }
    let path = dir.join(name);
    let node_error = |source| DmError::Node {
        path: path.clone(),
        source,
    };
    match rustix::fs::unlink(&path) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(source) => return Err(node_error(source)),
    }
    let dev = rustix::fs::makedev(id.major, id.minor);
    rustix::fs::mknodat(
        CWD,
        &path,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        dev,
    )
    .map_err(node_error)?;
    Ok(path)
}

const fn align(offset: usize) -> usize {
    (offset + ALIGNMENT - 1) & !(ALIGNMENT - 1)
}

fn check_version(found: [u32; 3]) -> Result<[u32; 3], DmError> {
    if found[0] == DM_VERSION_MAJOR {
        Ok(found)
    } else {
        Err(DmError::Version { found })
    }
}

/// The kernel's own rules for new names (check_name in dm-ioctl.c) plus the length limit,
/// checked up front because the name also becomes a path below /dev/mapper.
fn check_name(name: &str) -> Result<(), DmError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() >= DM_NAME_LEN {
        Some("longer than 127 bytes")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if matches!(name, "." | ".." | "control") {
        Some("reserved")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DmError::Name {
            what: "name",
            value: name.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// `value` as a NUL-terminated C string in an `N`-byte field.
fn c_field<const N: usize>(what: &'static str, value: &str) -> Result<[u8; N], DmError> {
    let reason = if value.len() >= N {
        Some(format!("longer than {} bytes", N - 1))
    } else if value.contains('\0') {
        Some("contains a NUL byte".to_owned())
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(DmError::Name {
            what,
            value: value.to_owned(),
            reason,
        });
    }
    let mut field = [0; N];
    field[..value.len()].copy_from_slice(value.as_bytes());
    Ok(field)
}

/// The ioctl buffer: header, zero padding up to `data_start`, the payload, zeros up to
/// `capacity` (room for the reply; the kernel reads at most `data_size` = `capacity` bytes).
fn encode_request(request: &Request<'_>, capacity: usize) -> Result<Vec<u8>, DmError> {
    let data_size = u32::try_from(capacity)
        .map_err(|_| request.reply_error(format!("buffer of {capacity} bytes is too large")))?;
    let header = DmIoctl {
        version: REQUEST_VERSION,
        data_size,
        // DATA_START is 312, a compile-time constant that fits.
        data_start: DATA_START as u32,
        target_count: request.target_count,
        open_count: 0,
        flags: request.flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: c_field("name", request.name)?,
        uuid: c_field("uuid", request.uuid.unwrap_or_default())?,
        data: [0; 7],
    };
    let mut buffer = Vec::with_capacity(capacity);
    buffer.extend_from_slice(&header.to_bytes());
    buffer.resize(DATA_START, 0);
    buffer.extend_from_slice(request.payload);
    buffer.resize(capacity.max(buffer.len()), 0);
    Ok(buffer)
}

fn parse_header(request: &Request<'_>, buffer: &[u8]) -> Result<DmIoctl, DmError> {
    buffer
        .first_chunk::<DM_IOCTL_SIZE>()
        .map(DmIoctl::from_bytes)
        .ok_or_else(|| request.reply_error("shorter than struct dm_ioctl"))
}

/// `None` when the reply fit; otherwise (DM_BUFFER_FULL_FLAG) the size of the buffer to
/// repeat the call with: twice the current one.
fn retry_size(
    request: &Request<'_>,
    header: &DmIoctl,
    capacity: usize,
) -> Result<Option<usize>, DmError> {
    if header.flags & DM_BUFFER_FULL_FLAG == 0 {
        return Ok(None);
    }
    let bigger = capacity.saturating_mul(2);
    if bigger > MAX_BUFFER {
        return Err(request.reply_error(format!("the reply does not fit in {MAX_BUFFER} bytes")));
    }
    Ok(Some(bigger))
}

/// The DM_TABLE_LOAD data: per target a `dm_target_spec`, then its NUL-terminated params,
/// zero-padded so the next spec starts 8-byte aligned; `next` is the distance from this
/// spec's start to the next one's (populate_table/next_target in dm-ioctl.c), as
/// libdevmapper writes it, the last one included.
fn encode_targets(targets: &[Target]) -> Result<Vec<u8>, String> {
    if targets.is_empty() {
        return Err("a table needs at least one target".to_owned());
    }
    let mut payload = Vec::new();
    for target in targets {
        if target.params.contains('\0') {
            return Err(format!(
                "params of {} contain a NUL byte",
                target.target_type
            ));
        }
        let spec_start = payload.len();
        let end = align(spec_start + DM_TARGET_SPEC_SIZE + target.params.len() + 1);
        let spec = DmTargetSpec {
            sector_start: target.start.0,
            length: target.length.0,
            status: 0,
            next: u32::try_from(end - spec_start)
                .map_err(|_| format!("params of {} are too long", target.target_type))?,
            target_type: target_type_field(&target.target_type)?,
        };
        payload.extend_from_slice(&spec.to_bytes());
        payload.extend_from_slice(target.params.as_bytes());
        payload.resize(end, 0);
    }
    Ok(payload)
}

fn target_type_field(target_type: &str) -> Result<[u8; DM_MAX_TYPE_NAME], String> {
    if target_type.is_empty() || target_type.len() >= DM_MAX_TYPE_NAME || target_type.contains('\0')
    {
        return Err(format!(
            "target type {target_type:?} is not 1 to 15 bytes without NUL"
        ));
    }
    let mut field = [0; DM_MAX_TYPE_NAME];
    field[..target_type.len()].copy_from_slice(target_type.as_bytes());
    Ok(field)
}

/// Decodes a DM_TABLE_STATUS reply: `target_count` specs in the data area
/// `[data_start, data_size)`, each followed by its NUL-terminated status text. Here `next`
/// is the offset of the following spec from the start of the data area (retrieve_status in
/// dm-ioctl.c). Every offset is checked; a garbled reply is an error, never a panic.
fn decode_status(reply: &Reply) -> Result<Vec<TargetStatus>, String> {
    let count = reply.header.target_count;
    if count == 0 {
        return Ok(Vec::new());
    }
    let data = data_area(reply)?;
    let mut targets = Vec::new();
    let mut offset = 0;
    for index in 0..count {
        let entry = decode_status_entry(data, offset, index)?;
        targets.push(entry.target);
        if index + 1 < count {
            // The next spec must lie past this entry's text, so the walk always moves
            // forward, and inside the data area.
            if entry.next < entry.end || entry.next >= data.len() {
                return Err(format!(
                    "target {index}: next spec offset {} is outside {}..{}",
                    entry.next,
                    entry.end,
                    data.len()
                ));
            }
            offset = entry.next;
        }
    }
    Ok(targets)
}

/// The reply's data area, after checking the header's offsets against the buffer.
fn data_area(reply: &Reply) -> Result<&[u8], String> {
    let start = reply.header.data_start as usize;
    let size = reply.header.data_size as usize;
    if start < DM_IOCTL_SIZE || start > size || size > reply.buffer.len() {
        return Err(format!(
            "data area {start}..{size} does not fit the {}-byte buffer",
            reply.buffer.len()
        ));
    }
    Ok(&reply.buffer[start..size])
}

/// One decoded status entry, with the offsets that locate its neighbours.
struct StatusEntry {
    target: TargetStatus,
    /// Just past the status text's NUL.
    end: usize,
    /// The following spec's offset as the kernel wrote it.
    next: usize,
}

/// Decodes the spec at `offset` of the data area and the status text after it.
fn decode_status_entry(data: &[u8], offset: usize, index: u32) -> Result<StatusEntry, String> {
    let spec_bytes = data
        .get(offset..)
        .and_then(|rest| rest.first_chunk::<DM_TARGET_SPEC_SIZE>())
        .ok_or_else(|| format!("target {index}: spec at offset {offset} is cut off"))?;
    let spec = DmTargetSpec::from_bytes(spec_bytes);
    let text_start = offset + DM_TARGET_SPEC_SIZE;
    let text = data.get(text_start..).unwrap_or_default();
    let text_len = text
        .iter()
        .position(|&byte| byte == 0)
        .ok_or_else(|| format!("target {index}: status text is not NUL-terminated"))?;
    let status = String::from_utf8(text[..text_len].to_vec())
        .map_err(|_| format!("target {index}: status text is not UTF-8"))?;
    // The kernel copies at most 15 bytes into a zeroed field; accept a full field anyway.
    let type_len = spec
        .target_type
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(DM_MAX_TYPE_NAME);
    let target_type = String::from_utf8(spec.target_type[..type_len].to_vec())
        .map_err(|_| format!("target {index}: target type is not UTF-8"))?;
    Ok(StatusEntry {
        target: TargetStatus {
            start: Sectors(spec.sector_start),
            length: Sectors(spec.length),
            target_type,
            status,
        },
        end: text_start + text_len + 1,
        next: spec.next as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DM_UUID_LEN;
    use xorbang_formats::error_chain::error_chain;

    fn target(start: u64, length: u64, target_type: &str, params: &str) -> Target {
        Target {
            start: Sectors(start),
            length: Sectors(length),
            target_type: target_type.to_owned(),
            params: params.to_owned(),
        }
    }

    fn spec_at(payload: &[u8], offset: usize) -> DmTargetSpec {
        let bytes = payload[offset..]
            .first_chunk::<DM_TARGET_SPEC_SIZE>()
            .expect("spec in range");
        DmTargetSpec::from_bytes(bytes)
    }

    fn header(target_count: u32, flags: u32, data_size: usize, dev: u64) -> DmIoctl {
        DmIoctl {
            version: [4, 48, 0],
            data_size: u32::try_from(data_size).expect("small"),
            data_start: DATA_START as u32,
            target_count,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        }
    }

    /// One status entry as retrieve_status writes it, `next` relative to the data area.
    fn status_entry(
        data: &mut Vec<u8>,
        start: u64,
        length: u64,
        kind: &str,
        text: &str,
        last: bool,
    ) {
        let spec_start = data.len();
        let end = spec_start + DM_TARGET_SPEC_SIZE + text.len() + 1;
        let spec = DmTargetSpec {
            sector_start: start,
            length,
            status: 0,
            next: if last { 0 } else { align(end) as u32 },
            target_type: target_type_field(kind).expect("valid type"),
        };
        data.extend_from_slice(&spec.to_bytes());
        data.extend_from_slice(text.as_bytes());
        data.push(0);
        if !last {
            data.resize(align(end), 0);
        }
    }

    /// A reply buffer as the kernel leaves it: header, data, and unused space after
    /// `data_size` (filled with garbage to prove it is never read).
    fn status_reply(target_count: u32, data: &[u8]) -> Reply {
        let data_size = DATA_START + data.len();
        let mut buffer = header(target_count, 0, data_size, 0xfd00)
            .to_bytes()
            .to_vec();
        buffer.extend_from_slice(data);
        buffer.resize(data_size + 64, 0xaa);
        Reply {
            header: header(target_count, 0, data_size, 0xfd00),
            buffer,
        }
    }

    fn two_target_status() -> Vec<u8> {
        let mut data = Vec::new();
        status_entry(&mut data, 0, 2048, "verity", "V", false);
        status_entry(&mut data, 2048, 8, "error", "", true);
        data
    }

    #[test]
    fn a_two_target_table_is_laid_out_as_the_kernel_walks_it() {
        let payload = encode_targets(&[
            target(0, 2048, "zero", ""),
            target(2048, 1024, "linear", "/dev/vda2 0"),
        ])
        .expect("valid table");
        // First spec at 0 (data_start 312 is aligned): 40 bytes + "" + NUL = 41 -> 48.
        let first = spec_at(&payload, 0);
        assert_eq!(
            (first.sector_start, first.length, first.next),
            (0, 2048, 48)
        );
        assert_eq!(&first.target_type[..5], b"zero\0");
        assert_eq!(payload[40], 0);
        // Second at 48: 40 + "/dev/vda2 0" (11) + NUL = 52 -> 56, relative to itself.
        let second = spec_at(&payload, 48);
        assert_eq!(
            (second.sector_start, second.length, second.next),
            (2048, 1024, 56)
        );
        assert_eq!(&second.target_type[..7], b"linear\0");
        assert_eq!(&payload[88..100], b"/dev/vda2 0\0");
        assert_eq!(payload.len(), 48 + 56);
        assert!(payload[100..].iter().all(|&byte| byte == 0), "zero padding");
        assert_eq!((DATA_START + 48) % ALIGNMENT, 0);
    }

    #[test]
    fn params_that_end_on_the_alignment_still_get_their_nul() {
        // 40 + 7 + NUL = 48: no padding needed, but the NUL must be there.
        let payload = encode_targets(&[target(0, 8, "zero", "1234567")]).expect("valid");
        assert_eq!(payload.len(), 48);
        assert_eq!(spec_at(&payload, 0).next, 48);
        assert_eq!(&payload[40..48], b"1234567\0");
        // 40 + 8 + NUL = 49 -> 56.
        let payload = encode_targets(&[target(0, 8, "zero", "12345678")]).expect("valid");
        assert_eq!(payload.len(), 56);
        assert_eq!(payload[48], 0);
    }

    #[test]
    fn invalid_tables_are_refused_before_the_kernel_sees_them() {
        assert!(encode_targets(&[]).is_err());
        let long_type = encode_targets(&[target(0, 8, "sixteen-bytes-xx", "")]);
        assert!(long_type.expect_err("16 bytes").contains("1 to 15 bytes"));
        assert!(encode_targets(&[target(0, 8, "", "")]).is_err());
        let nul = encode_targets(&[target(0, 8, "zero", "a\0b")]);
        assert!(nul.expect_err("NUL").contains("NUL"));
        assert!(encode_targets(&[target(0, 8, "fifteen-bytes-x", "")]).is_ok());
    }

    #[test]
    fn the_request_buffer_carries_header_name_uuid_and_payload() {
        let payload = [7u8; 20];
        let mut request = Request::new(DM_DEV_CREATE, "root");
        request.uuid = Some("CRYPT-VERITY-abc-root");
        request.flags = DM_READONLY_FLAG;
        request.target_count = 1;
        request.payload = &payload;
        let buffer = encode_request(&request, INITIAL_BUFFER).expect("valid");
        assert_eq!(buffer.len(), INITIAL_BUFFER);
        let sent = DmIoctl::from_bytes(buffer.first_chunk().expect("header"));
        assert_eq!(sent.version, [4, 0, 0]);
        assert_eq!(sent.data_size as usize, INITIAL_BUFFER);
        assert_eq!(sent.data_start, 312);
        assert_eq!((sent.target_count, sent.flags, sent.dev), (1, 1, 0));
        assert_eq!(&sent.name[..5], b"root\0");
        assert_eq!(&sent.uuid[..22], b"CRYPT-VERITY-abc-root\0");
        assert_eq!(&buffer[312..332], &payload);
        assert!(buffer[332..].iter().all(|&byte| byte == 0));
    }

    #[test]
    fn names_and_uuids_are_checked_against_the_kernel_limits() {
        assert!(check_name(&"n".repeat(127)).is_ok());
        let long = check_name(&"n".repeat(128)).expect_err("128 bytes");
        assert!(long.to_string().contains("longer than 127 bytes"));
        for bad in ["", "a/b", "..", ".", "control", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(c_field::<DM_UUID_LEN>("uuid", &"u".repeat(128)).is_ok());
        let long = c_field::<DM_UUID_LEN>("uuid", &"u".repeat(129)).expect_err("129 bytes");
        assert_eq!(
            long.to_string(),
            format!(
                "invalid device-mapper uuid {:?}: longer than 128 bytes",
                "u".repeat(129)
            )
        );
    }

    #[test]
    fn a_two_target_status_reply_is_decoded() {
        let targets = decode_status(&status_reply(2, &two_target_status())).expect("valid");
        assert_eq!(
            targets,
            vec![
                TargetStatus {
                    start: Sectors(0),
                    length: Sectors(2048),
                    target_type: "verity".to_owned(),
                    status: "V".to_owned(),
                },
                TargetStatus {
                    start: Sectors(2048),
                    length: Sectors(8),
                    target_type: "error".to_owned(),
                    status: String::new(),
                },
            ]
        );
    }

    #[test]
    fn a_device_without_a_live_table_has_no_status_entries() {
        // __dev_status leaves target_count 0 and data_size at offsetof(data), below
        // data_start: that must not read as a garbled data area.
        let reply = Reply {
            header: header(0, 0, 305, 0xfd00),
            buffer: header(0, 0, 305, 0xfd00).to_bytes().to_vec(),
        };
        assert_eq!(decode_status(&reply).expect("empty"), Vec::new());
    }

    #[test]
    fn a_full_sixteen_byte_target_type_is_read_without_a_nul() {
        let mut data = Vec::new();
        status_entry(&mut data, 0, 8, "zero", "ok", true);
        data[24..40].copy_from_slice(b"sixteen-bytes-xx");
        let targets = decode_status(&status_reply(1, &data)).expect("valid");
        assert_eq!(targets[0].target_type, "sixteen-bytes-xx");
    }

    #[test]
    fn truncated_and_garbled_status_replies_are_errors() {
        let data = two_target_status();
        let cases: Vec<(&str, Reply)> = vec![
            ("more targets than entries", status_reply(3, &data)),
            ("cut inside the second spec", status_reply(2, &data[..60])),
            ("cut inside the first spec", status_reply(1, &data[..20])),
            ("empty data area", status_reply(1, &[])),
        ];
        for (what, reply) in cases {
            assert!(decode_status(&reply).is_err(), "{what}");
        }

        let mut backwards = data.clone();
        backwards[20..24].copy_from_slice(&8u32.to_ne_bytes());
        let error = decode_status(&status_reply(2, &backwards)).expect_err("backwards");
        assert!(error.contains("next spec offset 8"), "{error}");

        let mut beyond = data.clone();
        beyond[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(decode_status(&status_reply(2, &beyond)).is_err());

        let error = decode_status(&status_reply(1, &data[..41])).expect_err("no NUL");
        assert!(error.contains("not NUL-terminated"), "{error}");

        let mut not_utf8 = data.clone();
        not_utf8[40] = 0xff;
        assert!(decode_status(&status_reply(2, &not_utf8)).is_err());

        let mut bad_header = status_reply(2, &data);
        bad_header.header.data_size = u32::try_from(bad_header.buffer.len() + 1).expect("small");
        let error = decode_status(&bad_header).expect_err("data_size beyond buffer");
        assert!(error.contains("does not fit"), "{error}");
        let mut bad_start = status_reply(2, &data);
        bad_start.header.data_start = 100;
        assert!(decode_status(&bad_start).is_err());
    }

    #[test]
    fn buffer_full_asks_for_a_bigger_buffer_up_to_a_limit() {
        let request = Request::new(DM_TABLE_STATUS, "root");
        let full = header(1, DM_BUFFER_FULL_FLAG, 305, 0);
        let retry = retry_size(&request, &full, INITIAL_BUFFER).expect("retry");
        assert_eq!(retry, Some(2 * INITIAL_BUFFER));

        let error = retry_size(&request, &full, MAX_BUFFER).expect_err("limit");
        assert!(error
            .to_string()
            .starts_with("DM_TABLE_STATUS root: unexpected reply from the kernel"));

        let done = header(1, 0, 400, 0);
        assert_eq!(
            retry_size(&request, &done, INITIAL_BUFFER).expect("fit"),
            None
        );
    }

    #[test]
    fn the_reply_header_is_read_from_the_buffer() {
        let request = Request::new(DM_DEV_CREATE, "root");
        let mut buffer = header(0, 0, 305, 0xfd03).to_bytes().to_vec();
        buffer.resize(INITIAL_BUFFER, 0);
        let parsed = parse_header(&request, &buffer).expect("header");
        assert_eq!(
            DevId::from_kernel(parsed.dev),
            DevId {
                major: 253,
                minor: 3
            }
        );
        assert!(parse_header(&request, &buffer[..311]).is_err());
    }

    #[test]
    fn device_numbers_decode_as_new_decode_dev() {
        assert_eq!(
            DevId::from_kernel(0xfd00),
            DevId {
                major: 253,
                minor: 0
            }
        );
        // Minor 256 moves to bits 20..32: (256 & ~0xff) << 12.
        assert_eq!(
            DevId::from_kernel(0x0010_fd00),
            DevId {
                major: 253,
                minor: 256
            }
        );
        assert_eq!(
            DevId::from_kernel(0xffff_ffff),
            DevId {
                major: 0xfff,
                minor: 0xfffff
            }
        );
        assert_eq!(
            DevId {
                major: 253,
                minor: 3
            }
            .to_string(),
            "253:3"
        );
    }

    #[test]
    fn only_interface_major_4_is_accepted() {
        assert_eq!(check_version([4, 48, 0]).expect("v4"), [4, 48, 0]);
        let error = check_version([5, 0, 0]).expect_err("v5");
        assert_eq!(
            error.to_string(),
            "the kernel's device-mapper ioctl interface is 5.0.0, not version 4"
        );
    }

    #[test]
    fn errors_name_the_operation_and_the_device() {
        let error = DmError::Ioctl {
            op: "DM_TABLE_LOAD",
            name: "root".to_owned(),
            source: io::Error::from_raw_os_error(22),
        };
        assert_eq!(
            error_chain(&error),
            "DM_TABLE_LOAD root: Invalid argument (os error 22)"
        );
        let error = DmError::Ioctl {
            op: "DM_VERSION",
            name: String::new(),
            source: io::Error::from_raw_os_error(13),
        };
        assert_eq!(
            error_chain(&error),
            "DM_VERSION: Permission denied (os error 13)"
        );
    }

    #[test]
    fn make_node_creates_a_block_device_and_replaces_a_stale_one() {
        let dev = tempfile::tempdir().expect("tempdir");
        let stale = dev.path().join("mapper/root");
        std::fs::create_dir_all(dev.path().join("mapper")).expect("mkdir");
        std::fs::write(&stale, "stale").expect("write");
        let id = DevId {
            major: 253,
            minor: 7,
        };
        match make_node(dev.path(), "root", id) {
            Ok(path) => {
                assert_eq!(path, stale);
                let stat = rustix::fs::lstat(&path).expect("stat");
                assert_eq!(FileType::from_raw_mode(stat.st_mode), FileType::BlockDevice);
                assert_eq!(stat.st_mode & 0o7777, 0o600);
                assert_eq!(rustix::fs::major(stat.st_rdev), 253);
                assert_eq!(rustix::fs::minor(stat.st_rdev), 7);
            }
            // Without CAP_MKNOD the error must still name the node.
            Err(error) => assert!(error.to_string().contains("mapper/root"), "{error}"),
        }
        assert!(make_node(dev.path(), "../escape", id).is_err());
    }

    #[test]
    fn make_node_creates_the_mapper_directory_when_missing() {
        let dev = tempfile::tempdir().expect("tempdir");
        let result = make_node(
            dev.path(),
            "usr",
            DevId {
                major: 253,
                minor: 1,
            },
        );
        assert!(dev.path().join("mapper").is_dir());
        if let Ok(path) = result {
            assert_eq!(path, dev.path().join("mapper/usr"));
        }
    }
}

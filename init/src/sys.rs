//! The crate's only unsafe code: the device-mapper control ioctl, the two loop-device
//! ioctls, and the network calls of a DHCP client (interface flags, address and netmask,
//! a route, SO_BINDTODEVICE), which rustix does not wrap.
//!
//! Everything else here is the C ABI written down in Rust: include/uapi/linux/dm-ioctl.h
//! (the header layout, checked at compile time, the request numbers and the flags), and the
//! `struct ifreq` and `struct rtentry` of include/uapi/linux/if.h and route.h. Headers cross
//! the boundary as plain bytes, (de)serialized field by field at the C offsets, so no pointer
//! casts or transmutes are needed; the one exception is `struct rtentry`, which holds a
//! pointer (`rt_dev`) and is libc's typed struct, its C offsets checked at compile time. Each
//! call into the kernel is one unsafe block.
#![allow(unsafe_code)]

use std::io;
use std::mem::{offset_of, size_of};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// ```c
/// #define DM_NAME_LEN 128
/// #define DM_UUID_LEN 129
/// #define DM_MAX_TYPE_NAME 16
/// ```
pub(crate) const DM_NAME_LEN: usize = 128;
pub(crate) const DM_UUID_LEN: usize = 129;
pub(crate) const DM_MAX_TYPE_NAME: usize = 16;

/// ```c
/// #define DM_VERSION_MAJOR 4
/// ```
/// The kernel refuses every request whose major differs and whose minor is newer than its
/// own; 4.0.0 is what libdevmapper sends for the commands used here, so any v4 kernel accepts it.
pub(crate) const DM_VERSION_MAJOR: u32 = 4;
pub(crate) const REQUEST_VERSION: [u32; 3] = [DM_VERSION_MAJOR, 0, 0];

/// ```c
/// #define DM_READONLY_FLAG (1 << 0) /* In/Out */
/// ```
pub(crate) const DM_READONLY_FLAG: u32 = 1 << 0;
/// ```c
/// #define DM_BUFFER_FULL_FLAG (1 << 8) /* Out */
/// ```
pub(crate) const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// ```c
/// struct dm_ioctl {
///     __u32 version[3];       /* in/out */
///     __u32 data_size;        /* total size of data passed in including this struct */
///     __u32 data_start;       /* offset to start of data relative to start of this struct */
///     __u32 target_count;     /* in/out */
///     __s32 open_count;       /* out */
///     __u32 flags;            /* in/out */
///     __u32 event_nr;         /* in/out */
///     __u32 padding;
///     __u64 dev;              /* in/out */
///     char name[DM_NAME_LEN]; /* device name */
///     char uuid[DM_UUID_LEN]; /* unique identifier for the block device */
///     char data[7];           /* padding or data */
/// };
/// ```
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DmIoctl {
    pub version: [u32; 3],
    pub data_size: u32,
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub padding: u32,
    pub dev: u64,
    pub name: [u8; DM_NAME_LEN],
    pub uuid: [u8; DM_UUID_LEN],
    pub data: [u8; 7],
}

/// Size of the header as the kernel sees it.
pub(crate) const DM_IOCTL_SIZE: usize = size_of::<DmIoctl>();
const _: () = assert!(DM_IOCTL_SIZE == 312);
const _: () = assert!(offset_of!(DmIoctl, dev) == 40);
const _: () = assert!(offset_of!(DmIoctl, name) == 48);
const _: () = assert!(offset_of!(DmIoctl, uuid) == 176);
const _: () = assert!(offset_of!(DmIoctl, data) == 305);

/// ```c
/// struct dm_target_spec {
///     __u64 sector_start;
///     __u64 length;
///     __s32 status;       /* used when reading from kernel only */
///     __u32 next;         /* see below */
///     char target_type[DM_MAX_TYPE_NAME];
/// };
/// ```
/// `next` differs by direction: for DM_TABLE_LOAD it is the distance from the start of this
/// spec to the next one; in DM_TABLE_STATUS replies it is the offset of the next spec from
/// the start of the first one (the data area at `data_start`).
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DmTargetSpec {
    pub sector_start: u64,
    pub length: u64,
    pub status: i32,
    pub next: u32,
    pub target_type: [u8; DM_MAX_TYPE_NAME],
}

pub(crate) const DM_TARGET_SPEC_SIZE: usize = size_of::<DmTargetSpec>();
const _: () = assert!(DM_TARGET_SPEC_SIZE == 40);
const _: () = assert!(offset_of!(DmTargetSpec, target_type) == 24);

impl DmIoctl {
    pub(crate) fn to_bytes(&self) -> [u8; DM_IOCTL_SIZE] {
        let [major, minor, patch] = self.version.map(u32::to_ne_bytes);
        let fields: [(usize, &[u8]); 14] = [
            (offset_of!(DmIoctl, version), &major),
            (offset_of!(DmIoctl, version) + 4, &minor),
            (offset_of!(DmIoctl, version) + 8, &patch),
            (
                offset_of!(DmIoctl, data_size),
                &self.data_size.to_ne_bytes(),
            ),
            (
                offset_of!(DmIoctl, data_start),
                &self.data_start.to_ne_bytes(),
            ),
            (
                offset_of!(DmIoctl, target_count),
                &self.target_count.to_ne_bytes(),
            ),
            (
                offset_of!(DmIoctl, open_count),
                &self.open_count.to_ne_bytes(),
            ),
            (offset_of!(DmIoctl, flags), &self.flags.to_ne_bytes()),
            (offset_of!(DmIoctl, event_nr), &self.event_nr.to_ne_bytes()),
            (offset_of!(DmIoctl, padding), &self.padding.to_ne_bytes()),
            (offset_of!(DmIoctl, dev), &self.dev.to_ne_bytes()),
            (offset_of!(DmIoctl, name), &self.name),
            (offset_of!(DmIoctl, uuid), &self.uuid),
            (offset_of!(DmIoctl, data), &self.data),
        ];
        serialize(fields)
    }

    pub(crate) fn from_bytes(bytes: &[u8; DM_IOCTL_SIZE]) -> Self {
        let version = offset_of!(DmIoctl, version);
        Self {
            version: [0, 1, 2].map(|index| u32::from_ne_bytes(get(bytes, version + 4 * index))),
            data_size: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, data_size))),
            data_start: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, data_start))),
            target_count: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, target_count))),
            open_count: i32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, open_count))),
            flags: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, flags))),
            event_nr: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, event_nr))),
            padding: u32::from_ne_bytes(get(bytes, offset_of!(DmIoctl, padding))),
            dev: u64::from_ne_bytes(get(bytes, offset_of!(DmIoctl, dev))),
            name: get(bytes, offset_of!(DmIoctl, name)),
            uuid: get(bytes, offset_of!(DmIoctl, uuid)),
            data: get(bytes, offset_of!(DmIoctl, data)),
        }
    }
}

impl DmTargetSpec {
    pub(crate) fn to_bytes(&self) -> [u8; DM_TARGET_SPEC_SIZE] {
        let fields: [(usize, &[u8]); 5] = [
            (
                offset_of!(DmTargetSpec, sector_start),
                &self.sector_start.to_ne_bytes(),
            ),
            (offset_of!(DmTargetSpec, length), &self.length.to_ne_bytes()),
            (offset_of!(DmTargetSpec, status), &self.status.to_ne_bytes()),
            (offset_of!(DmTargetSpec, next), &self.next.to_ne_bytes()),
            (offset_of!(DmTargetSpec, target_type), &self.target_type),
        ];
        serialize(fields)
    }

    pub(crate) fn from_bytes(bytes: &[u8; DM_TARGET_SPEC_SIZE]) -> Self {
        Self {
            sector_start: u64::from_ne_bytes(get(bytes, offset_of!(DmTargetSpec, sector_start))),
            length: u64::from_ne_bytes(get(bytes, offset_of!(DmTargetSpec, length))),
            status: i32::from_ne_bytes(get(bytes, offset_of!(DmTargetSpec, status))),
            next: u32::from_ne_bytes(get(bytes, offset_of!(DmTargetSpec, next))),
            target_type: get(bytes, offset_of!(DmTargetSpec, target_type)),
        }
    }
}

/// Lays `(offset, bytes)` fields out in an `N`-byte struct image; gaps stay zero. Offsets
/// come from `offset_of!` on the struct whose size `N` is, so they are always in range.
fn serialize<const N: usize, const F: usize>(fields: [(usize, &[u8]); F]) -> [u8; N] {
    let mut out = [0; N];
    for (offset, value) in fields {
        out[offset..offset + value.len()].copy_from_slice(value);
    }
    out
}

/// Reads `N` bytes at `offset`; in range for the same reason as in [`serialize`].
fn get<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut value = [0; N];
    value.copy_from_slice(&bytes[offset..offset + N]);
    value
}

/// ```c
/// #define DM_IOCTL 0xfd
/// ```
/// Documentation/userspace-api/ioctl/ioctl-number.rst reserves type 0xFD for dm-ioctl.h.
const DM_IOCTL: u32 = 0xfd;

/// One device-mapper command: its name for error messages and its ioctl request number.
/// Only this module builds them, so [`dm_ioctl`] never sends a request outside this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmCommand {
    name: &'static str,
    request: libc::Ioctl,
}

impl DmCommand {
    /// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`; libc's `_IOWR` knows each architecture's
    /// direction and size bits.
    const fn new(name: &'static str, nr: u32) -> Self {
        Self {
            name,
            request: libc::_IOWR::<DmIoctl>(DM_IOCTL, nr),
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        self.name
    }
}

// The command numbers, from `enum { DM_VERSION_CMD = 0, DM_REMOVE_ALL_CMD, DM_LIST_DEVICES_CMD,
// DM_DEV_CREATE_CMD, DM_DEV_REMOVE_CMD, DM_DEV_RENAME_CMD, DM_DEV_SUSPEND_CMD,
// DM_DEV_STATUS_CMD, DM_DEV_WAIT_CMD, DM_TABLE_LOAD_CMD, DM_TABLE_CLEAR_CMD,
// DM_TABLE_DEPS_CMD, DM_TABLE_STATUS_CMD, ... }`. Only the commands xorbang sends are defined.

/// `#define DM_VERSION _IOWR(DM_IOCTL, DM_VERSION_CMD, struct dm_ioctl)`
pub(crate) const DM_VERSION: DmCommand = DmCommand::new("DM_VERSION", 0);
/// `#define DM_DEV_CREATE _IOWR(DM_IOCTL, DM_DEV_CREATE_CMD, struct dm_ioctl)`
pub(crate) const DM_DEV_CREATE: DmCommand = DmCommand::new("DM_DEV_CREATE", 3);
/// `#define DM_DEV_REMOVE _IOWR(DM_IOCTL, DM_DEV_REMOVE_CMD, struct dm_ioctl)`
pub(crate) const DM_DEV_REMOVE: DmCommand = DmCommand::new("DM_DEV_REMOVE", 4);
/// `#define DM_DEV_SUSPEND _IOWR(DM_IOCTL, DM_DEV_SUSPEND_CMD, struct dm_ioctl)`
pub(crate) const DM_DEV_SUSPEND: DmCommand = DmCommand::new("DM_DEV_SUSPEND", 6);
/// `#define DM_TABLE_LOAD _IOWR(DM_IOCTL, DM_TABLE_LOAD_CMD, struct dm_ioctl)`
pub(crate) const DM_TABLE_LOAD: DmCommand = DmCommand::new("DM_TABLE_LOAD", 9);
/// `#define DM_TABLE_STATUS _IOWR(DM_IOCTL, DM_TABLE_STATUS_CMD, struct dm_ioctl)`
pub(crate) const DM_TABLE_STATUS: DmCommand = DmCommand::new("DM_TABLE_STATUS", 12);

/// `ioctl(control, command, buffer)` on /dev/mapper/control. `buffer` starts with a
/// `struct dm_ioctl` whose `data_size` says how much of it the kernel may read and write;
/// the reply is written back into it.
pub(crate) fn dm_ioctl(
    control: BorrowedFd<'_>,
    command: DmCommand,
    buffer: &mut [u8],
) -> io::Result<()> {
    let header = buffer.first_chunk::<DM_IOCTL_SIZE>().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "buffer shorter than struct dm_ioctl",
        )
    })?;
    let data_size = DmIoctl::from_bytes(header).data_size;
    if usize::try_from(data_size).map_or(true, |size| size > buffer.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "data_size {data_size} exceeds the {}-byte buffer",
                buffer.len()
            ),
        ));
    }
    // SAFETY: `control` is a live descriptor for the borrow's duration. The request is one
    // of the `_IOWR(0xfd, …, struct dm_ioctl)` numbers above, whose handler (ctl_ioctl in
    // drivers/md/dm-ioctl.c) reads at most `data_size` bytes from the pointer and writes back
    // at most that many (the reply's data_size never exceeds the input's), and `data_size`
    // was checked above to lie within `buffer`, which is exclusively borrowed for the call.
    // The kernel needs no alignment (it uses copy_from_user/copy_to_user).
    let result = unsafe { libc::ioctl(control.as_raw_fd(), command.request, buffer.as_mut_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ```c
/// #define LOOP_CTL_GET_FREE 0x4C82
/// ```
/// Returns the index of a free loop device, adding one if none is free (its /dev node then
/// appears in devtmpfs before the ioctl returns).
pub(crate) fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    // SAFETY: `control` is a live descriptor for the borrow's duration; LOOP_CTL_GET_FREE
    // takes no argument and only returns a number.
    let result = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
    u32::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// ```c
/// struct loop_info64 {
///     __u64 lo_device; __u64 lo_inode; __u64 lo_rdevice; __u64 lo_offset;
///     __u64 lo_sizelimit; __u32 lo_number; __u32 lo_encrypt_type;
///     __u32 lo_encrypt_key_size; __u32 lo_flags;
///     __u8 lo_file_name[LO_NAME_SIZE]; __u8 lo_crypt_name[LO_NAME_SIZE];
///     __u8 lo_encrypt_key[LO_KEY_SIZE]; __u64 lo_init[2];
/// };                                          /* 232 bytes, LO_NAME_SIZE 64, LO_KEY_SIZE 32 */
/// struct loop_config {
///     __u32 fd; __u32 block_size; struct loop_info64 info; __u64 __reserved[8];
/// };                                          /* 304 bytes */
/// #define LO_FLAGS_READ_ONLY 1
/// #define LO_FLAGS_AUTOCLEAR 4
/// ```
pub(crate) const LOOP_CONFIG_SIZE: usize = 304;
const LOOP_CONFIG_OFFSET: usize = 8 + 3 * 8;
const LOOP_CONFIG_SIZELIMIT: usize = 8 + 4 * 8;
const LOOP_CONFIG_FLAGS: usize = 8 + 5 * 8 + 3 * 4;
const LOOP_CONFIG_FILE_NAME: usize = 8 + 5 * 8 + 4 * 4;
const LO_NAME_SIZE: usize = 64;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// A `struct loop_config` that backs a loop device read-only by `backing` (its name is only
/// what the kernel shows in sysfs), from byte `offset` on for `size_limit` bytes (0: to the
/// end of the file), cleared by the kernel when its last user closes it.
pub(crate) fn read_only_loop_config(
    backing: BorrowedFd<'_>,
    name: &[u8],
    offset: u64,
    size_limit: u64,
) -> [u8; LOOP_CONFIG_SIZE] {
    let mut config = [0u8; LOOP_CONFIG_SIZE];
    let fd = u32::try_from(backing.as_raw_fd()).unwrap_or(u32::MAX);
    config[..4].copy_from_slice(&fd.to_ne_bytes());
    config[LOOP_CONFIG_OFFSET..LOOP_CONFIG_OFFSET + 8].copy_from_slice(&offset.to_ne_bytes());
    config[LOOP_CONFIG_SIZELIMIT..LOOP_CONFIG_SIZELIMIT + 8]
        .copy_from_slice(&size_limit.to_ne_bytes());
    config[LOOP_CONFIG_FLAGS..LOOP_CONFIG_FLAGS + 4]
        .copy_from_slice(&(LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR).to_ne_bytes());
    // NUL-terminated: at most LO_NAME_SIZE - 1 bytes of the name.
    let length = name.len().min(LO_NAME_SIZE - 1);
    config[LOOP_CONFIG_FILE_NAME..LOOP_CONFIG_FILE_NAME + length].copy_from_slice(&name[..length]);
    config
}

/// ```c
/// #define LOOP_CONFIGURE 0x4C0A
/// ```
/// Binds the loop device `device` to the file and flags in `config` in one step (Linux 5.8+).
pub(crate) fn loop_configure(
    device: BorrowedFd<'_>,
    config: &[u8; LOOP_CONFIG_SIZE],
) -> io::Result<()> {
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    // SAFETY: `device` is a live descriptor for the borrow's duration; LOOP_CONFIGURE reads
    // exactly sizeof(struct loop_config) = LOOP_CONFIG_SIZE bytes from the pointer
    // (copy_from_user, no alignment needed) and writes nothing back.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, config.as_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ```c
/// #define IFNAMSIZ 16
/// ```
pub(crate) const IFNAMSIZ: usize = 16;

/// An interface name as the kernel takes it: 1 to IFNAMSIZ - 1 bytes without NUL or `/`,
/// NUL-padded to IFNAMSIZ (so every read of IFNAMSIZ - 1 bytes from it is in bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InterfaceName {
    bytes: [u8; IFNAMSIZ],
    length: usize,
}

impl InterfaceName {
    pub(crate) fn new(name: &str) -> io::Result<Self> {
        let length = name.len();
        if length == 0 || length >= IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an interface name (1 to 15 bytes, no NUL or '/')",
            ));
        }
        let mut bytes = [0; IFNAMSIZ];
        bytes[..length].copy_from_slice(name.as_bytes());
        Ok(Self { bytes, length })
    }
}

/// ```c
/// struct ifreq {
///     union { char ifrn_name[IFNAMSIZ]; } ifr_ifrn;
///     union {
///         struct sockaddr ifru_addr; struct sockaddr ifru_dstaddr;
///         struct sockaddr ifru_broadaddr; struct sockaddr ifru_netmask;
///         struct sockaddr ifru_hwaddr; short ifru_flags; int ifru_ivalue; int ifru_mtu;
///         struct ifmap ifru_map; char ifru_slave[IFNAMSIZ]; char ifru_newname[IFNAMSIZ];
///         void __user *ifru_data; struct if_settings ifru_settings;
///     } ifr_ifru;
/// };                                      /* 40 bytes on 64-bit: struct ifmap is 24 */
/// struct sockaddr_in {
///     __kernel_sa_family_t sin_family; __be16 sin_port; struct in_addr sin_addr;
///     unsigned char __pad[8];
/// };                                      /* 16 bytes, as struct sockaddr */
/// ```
pub(crate) const IFREQ_SIZE: usize = size_of::<libc::ifreq>();
#[cfg(target_pointer_width = "64")]
const _: () = assert!(IFREQ_SIZE == 40);
const IFR_IFRU: usize = offset_of!(libc::ifreq, ifr_ifru);
const _: () = assert!(IFR_IFRU == IFNAMSIZ);
/// Where `sin_family` and `sin_addr` of a `struct sockaddr_in` are.
const SIN_FAMILY: usize = offset_of!(libc::sockaddr_in, sin_family);
const SIN_ADDR: usize = offset_of!(libc::sockaddr_in, sin_addr);
const _: () = assert!(SIN_FAMILY == 0 && SIN_ADDR == 4);
const _: () = assert!(size_of::<libc::sockaddr_in>() == size_of::<libc::sockaddr>());

/// A `struct ifreq` naming `name`, its union zero.
fn ifreq(name: &InterfaceName) -> [u8; IFREQ_SIZE] {
    let mut request = [0; IFREQ_SIZE];
    request[..IFNAMSIZ].copy_from_slice(&name.bytes);
    request
}

/// The 16 bytes of a `struct sockaddr_in` for `address`, port 0.
fn sockaddr_in(address: Ipv4Addr) -> [u8; 16] {
    let mut bytes = [0; 16];
    let family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default();
    bytes[SIN_FAMILY..SIN_FAMILY + 2].copy_from_slice(&family.to_ne_bytes());
    bytes[SIN_ADDR..SIN_ADDR + 4].copy_from_slice(&address.octets());
    bytes
}

/// A `struct ifreq` naming `name` with `ifru_addr` (or `ifru_netmask`) set to `address`.
fn ifreq_with_address(name: &InterfaceName, address: Ipv4Addr) -> [u8; IFREQ_SIZE] {
    let mut request = ifreq(name);
    request[IFR_IFRU..IFR_IFRU + 16].copy_from_slice(&sockaddr_in(address));
    request
}

/// One of the `struct ifreq` ioctls of an AF_INET socket. Only this module builds them, so
/// [`ifreq_ioctl`] never sends a request outside this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IfreqCommand(libc::Ioctl);

/// `#define SIOCGIFFLAGS 0x8913 /* get flags */`
const SIOCGIFFLAGS: IfreqCommand = IfreqCommand(0x8913);
/// `#define SIOCSIFFLAGS 0x8914 /* set flags */`
const SIOCSIFFLAGS: IfreqCommand = IfreqCommand(0x8914);
/// `#define SIOCSIFADDR 0x8916 /* set PA address */`
const SIOCSIFADDR: IfreqCommand = IfreqCommand(0x8916);
/// `#define SIOCSIFNETMASK 0x891c /* set network PA mask */`
const SIOCSIFNETMASK: IfreqCommand = IfreqCommand(0x891c);

/// `ioctl(socket, command, &ifreq)` on an AF_INET socket; the reply is written back into
/// `request`.
fn ifreq_ioctl(
    socket: BorrowedFd<'_>,
    command: IfreqCommand,
    request: &mut [u8; IFREQ_SIZE],
) -> io::Result<()> {
    // SAFETY: `socket` is a live descriptor for the borrow's duration. Each command above is
    // handled by dev_ioctl/devinet_ioctl (net/core/dev_ioctl.c, net/ipv4/devinet.c), which
    // copy exactly sizeof(struct ifreq) = IFREQ_SIZE bytes in from the pointer and, for the
    // getters, the same size back (copy_from_user/copy_to_user: no alignment needed);
    // `request` is exactly that long and exclusively borrowed for the call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), command.0, request.as_mut_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface flags (`IFF_UP`, `IFF_RUNNING`, …) of `name`.
pub(crate) fn interface_flags(socket: BorrowedFd<'_>, name: &InterfaceName) -> io::Result<u16> {
    let mut request = ifreq(name);
    ifreq_ioctl(socket, SIOCGIFFLAGS, &mut request)?;
    // `short ifru_flags`: the kernel's flags above bit 15 are not reported here.
    Ok(u16::from_ne_bytes([
        request[IFR_IFRU],
        request[IFR_IFRU + 1],
    ]))
}

/// Sets the interface flags of `name` (as read by [`interface_flags`], changed).
pub(crate) fn set_interface_flags(
    socket: BorrowedFd<'_>,
    name: &InterfaceName,
    flags: u16,
) -> io::Result<()> {
    let mut request = ifreq(name);
    request[IFR_IFRU..IFR_IFRU + 2].copy_from_slice(&flags.to_ne_bytes());
    ifreq_ioctl(socket, SIOCSIFFLAGS, &mut request)
}

/// Gives `name` the IPv4 address `address` (replacing its first one), with the classful
/// mask the kernel derives: set the netmask next.
pub(crate) fn set_interface_address(
    socket: BorrowedFd<'_>,
    name: &InterfaceName,
    address: Ipv4Addr,
) -> io::Result<()> {
    ifreq_ioctl(socket, SIOCSIFADDR, &mut ifreq_with_address(name, address))
}

/// Sets the netmask of `name`'s address; the kernel replaces the prefix route and, if it
/// was the default one, the broadcast address.
pub(crate) fn set_interface_netmask(
    socket: BorrowedFd<'_>,
    name: &InterfaceName,
    mask: Ipv4Addr,
) -> io::Result<()> {
    ifreq_ioctl(socket, SIOCSIFNETMASK, &mut ifreq_with_address(name, mask))
}

/// ```c
/// struct rtentry {
///     unsigned long rt_pad1;
///     struct sockaddr rt_dst;         /* target address */
///     struct sockaddr rt_gateway;     /* gateway addr (RTF_GATEWAY) */
///     struct sockaddr rt_genmask;     /* target network mask (IP) */
///     unsigned short rt_flags;
///     short rt_pad2;
///     unsigned long rt_pad3;
///     void *rt_pad4;
///     short rt_metric;                /* +1 for binary compatibility! */
///     char __user *rt_dev;            /* forcing the device at add */
///     unsigned long rt_mtu;           /* per route MTU/Window */
///     unsigned long rt_window;        /* Window clamping */
///     unsigned short rt_irtt;         /* Initial RTT */
/// };                                  /* 120 bytes on 64-bit */
/// #define RTF_UP 0x0001               /* route usable */
/// #define RTF_GATEWAY 0x0002          /* destination is a gateway */
/// #define RTF_HOST 0x0004             /* host entry (net otherwise) */
/// #define SIOCADDRT 0x890B            /* add routing table entry */
/// ```
const SIOCADDRT: libc::Ioctl = 0x890B;
// glibc's (and libc's) `struct rtentry` splits `rt_pad4` into `rt_tos`, `rt_class` and
// padding of the same size; the offsets the kernel reads are checked here.
const _: () = assert!(offset_of!(libc::rtentry, rt_dst) == size_of::<libc::c_ulong>());
const _: () =
    assert!(offset_of!(libc::rtentry, rt_gateway) == offset_of!(libc::rtentry, rt_dst) + 16);
const _: () =
    assert!(offset_of!(libc::rtentry, rt_genmask) == offset_of!(libc::rtentry, rt_gateway) + 16);
const _: () =
    assert!(offset_of!(libc::rtentry, rt_flags) == offset_of!(libc::rtentry, rt_genmask) + 16);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    offset_of!(libc::rtentry, rt_metric) == 80
        && offset_of!(libc::rtentry, rt_dev) == 88
        && size_of::<libc::rtentry>() == 120
);

/// An IPv4 route for SIOCADDRT: to `destination`/`mask`, through `gateway` if any, out of
/// `device`. A mask of 255.255.255.255 makes it a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub destination: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub device: InterfaceName,
}

/// A `struct sockaddr` holding the `struct sockaddr_in` of `address`.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let bytes = sockaddr_in(address);
    let mut data = [0 as libc::c_char; 14];
    for (to, from) in data.iter_mut().zip(&bytes[2..]) {
        *to = *from as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::sa_family_t::from_ne_bytes([bytes[0], bytes[1]]),
        sa_data: data,
    }
}

/// Adds `route` to the main routing table (`ip route add`).
pub(crate) fn add_route(socket: BorrowedFd<'_>, route: &Route) -> io::Result<()> {
    let mut flags = libc::RTF_UP;
    if route.gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    if route.mask == Ipv4Addr::BROADCAST {
        flags |= libc::RTF_HOST;
    }
    let entry = libc::rtentry {
        rt_pad1: 0,
        rt_dst: sockaddr(route.destination),
        rt_gateway: sockaddr(route.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr(route.mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: Default::default(),
        rt_metric: 0,
        rt_dev: route.device.bytes.as_ptr().cast_mut().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `socket` is a live descriptor for the borrow's duration. ip_rt_ioctl
    // (net/ipv4/fib_frontend.c) copies sizeof(struct rtentry) bytes in from the pointer, a
    // whole `libc::rtentry` (its layout checked above); it writes nothing back. It then reads
    // IFNAMSIZ - 1 bytes from `rt_dev`, which points into `route.device`'s IFNAMSIZ-byte,
    // NUL-padded name, borrowed (so alive) for the call; `rt_dev` is only read.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCADDRT, std::ptr::from_ref(&entry)) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ```c
/// #define SOL_SOCKET 1
/// #define SO_BINDTODEVICE 25
/// ```
/// Binds `socket` to the interface `name`: it sends only out of it (whatever the routes
/// say, and before the interface has an address) and receives only what came in on it.
pub(crate) fn bind_to_device(socket: BorrowedFd<'_>, name: &InterfaceName) -> io::Result<()> {
    let length = libc::socklen_t::try_from(name.length).unwrap_or(0);
    // SAFETY: `socket` is a live descriptor for the borrow's duration. sock_setbindtodevice
    // (net/core/sock.c) copies min(optlen, IFNAMSIZ - 1) bytes from the pointer; `optlen`
    // is the name's length, within `name.bytes`, which is borrowed for the call and not
    // written.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.bytes.as_ptr().cast(),
            length,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ifreqs_carry_the_name_and_the_address_at_the_c_offsets() {
        let name = InterfaceName::new("enp0s31f6").expect("name");
        let request = ifreq_with_address(&name, Ipv4Addr::new(10, 14, 0, 101));
        assert_eq!(&request[..9], b"enp0s31f6");
        assert!(request[9..16].iter().all(|&byte| byte == 0), "NUL-padded");
        assert_eq!(&request[16..18], &2u16.to_ne_bytes(), "sin_family AF_INET");
        assert_eq!(&request[18..20], &[0, 0], "sin_port");
        assert_eq!(
            &request[20..24],
            &[10, 14, 0, 101],
            "sin_addr, network order"
        );
        assert!(request[24..].iter().all(|&byte| byte == 0));
        let address = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(address.sa_family, 2);
        let data: Vec<u8> = address.sa_data.iter().map(|&byte| byte as u8).collect();
        assert_eq!(&data[..6], &[0, 0, 255, 255, 255, 0]);
        for bad in ["", "sixteen-bytes-xx", "a/b", "nul\0"] {
            assert!(InterfaceName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn network_request_numbers_match_the_kernel_headers() {
        assert_eq!(SIOCGIFFLAGS.0, libc::SIOCGIFFLAGS as libc::Ioctl);
        assert_eq!(SIOCSIFFLAGS.0, libc::SIOCSIFFLAGS as libc::Ioctl);
        assert_eq!(SIOCSIFADDR.0, libc::SIOCSIFADDR as libc::Ioctl);
        assert_eq!(SIOCSIFNETMASK.0, libc::SIOCSIFNETMASK as libc::Ioctl);
        assert_eq!(SIOCADDRT, libc::SIOCADDRT as libc::Ioctl);
        assert_eq!(libc::SO_BINDTODEVICE, 25);
    }

    #[test]
    fn loop_config_puts_fd_flags_and_name_at_the_c_offsets() {
        let file = std::fs::File::open("/proc/self/cmdline").expect("open");
        let config = read_only_loop_config(file.as_fd(), &[b'x'; 100], 1 << 20, 3 << 20);
        let fd = u32::try_from(file.as_raw_fd()).expect("fd");
        assert_eq!(&config[..4], &fd.to_ne_bytes());
        assert_eq!(&config[32..40], &(1u64 << 20).to_ne_bytes(), "lo_offset");
        assert_eq!(&config[40..48], &(3u64 << 20).to_ne_bytes(), "lo_sizelimit");
        assert_eq!(
            &config[60..64],
            &5u32.to_ne_bytes(),
            "lo_flags: read-only, autoclear"
        );
        assert_eq!(&config[64..127], &[b'x'; 63][..], "lo_file_name");
        assert_eq!(config[127], 0, "NUL-terminated");
        assert!(config[128..].iter().all(|&byte| byte == 0));
        assert!(config[4..32].iter().all(|&byte| byte == 0));
    }

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // All thirteen commands of the brief, including those xorbang does not send, to pin
        // the encoding itself; values as printed by a C program including <linux/dm-ioctl.h>.
        let expected = [
            0xc138_fd00_u32, // DM_VERSION
            0xc138_fd01,     // DM_REMOVE_ALL
            0xc138_fd02,     // DM_LIST_DEVICES
            0xc138_fd03,     // DM_DEV_CREATE
            0xc138_fd04,     // DM_DEV_REMOVE
            0xc138_fd05,     // DM_DEV_RENAME
            0xc138_fd06,     // DM_DEV_SUSPEND
            0xc138_fd07,     // DM_DEV_STATUS
            0xc138_fd08,     // DM_DEV_WAIT
            0xc138_fd09,     // DM_TABLE_LOAD
            0xc138_fd0a,     // DM_TABLE_CLEAR
            0xc138_fd0b,     // DM_TABLE_DEPS
            0xc138_fd0c,     // DM_TABLE_STATUS
        ];
        for (nr, want) in (0u32..).zip(expected) {
            assert_eq!(DmCommand::new("x", nr).request as u32, want, "command {nr}");
        }
        let named = [
            (DM_VERSION, 0xc138_fd00_u32),
            (DM_DEV_CREATE, 0xc138_fd03),
            (DM_DEV_REMOVE, 0xc138_fd04),
            (DM_DEV_SUSPEND, 0xc138_fd06),
            (DM_TABLE_LOAD, 0xc138_fd09),
            (DM_TABLE_STATUS, 0xc138_fd0c),
        ];
        for (command, want) in named {
            assert_eq!(command.request as u32, want, "{}", command.name());
        }
    }

    #[test]
    fn header_round_trips_through_bytes_at_the_c_offsets() {
        let mut name = [0; DM_NAME_LEN];
        name[..4].copy_from_slice(b"root");
        let mut uuid = [0; DM_UUID_LEN];
        uuid[DM_UUID_LEN - 2] = b'u';
        let header = DmIoctl {
            version: [4, 48, 1],
            data_size: 16384,
            data_start: 312,
            target_count: 2,
            open_count: -1,
            flags: DM_READONLY_FLAG | DM_BUFFER_FULL_FLAG,
            event_nr: 7,
            padding: 0,
            dev: 0x0010_fd01,
            name,
            uuid,
            data: [1, 2, 3, 4, 5, 6, 7],
        };
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..4], &4u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &1u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &16384u32.to_ne_bytes());
        assert_eq!(&bytes[16..20], &312u32.to_ne_bytes());
        assert_eq!(&bytes[24..28], &(-1i32).to_ne_bytes());
        assert_eq!(&bytes[28..32], &0x101u32.to_ne_bytes());
        assert_eq!(&bytes[40..48], &0x0010_fd01u64.to_ne_bytes());
        assert_eq!(&bytes[48..52], b"root");
        assert_eq!(bytes[176 + DM_UUID_LEN - 2], b'u');
        assert_eq!(&bytes[305..], &[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(DmIoctl::from_bytes(&bytes), header);
    }

    #[test]
    fn target_spec_round_trips_through_bytes_at_the_c_offsets() {
        let mut target_type = [0; DM_MAX_TYPE_NAME];
        target_type[..6].copy_from_slice(b"verity");
        let spec = DmTargetSpec {
            sector_start: 8,
            length: 2048,
            status: 0,
            next: 64,
            target_type,
        };
        let bytes = spec.to_bytes();
        assert_eq!(&bytes[0..8], &8u64.to_ne_bytes());
        assert_eq!(&bytes[8..16], &2048u64.to_ne_bytes());
        assert_eq!(&bytes[20..24], &64u32.to_ne_bytes());
        assert_eq!(&bytes[24..30], b"verity");
        assert_eq!(DmTargetSpec::from_bytes(&bytes), spec);
    }

    #[test]
    fn a_data_size_beyond_the_buffer_is_refused_before_the_kernel_sees_it() {
        let header = DmIoctl {
            version: REQUEST_VERSION,
            data_size: 4096,
            data_start: 312,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        let mut buffer = header.to_bytes().to_vec();
        let stdin = std::io::stdin();
        let error = dm_ioctl(stdin.as_fd(), DM_VERSION, &mut buffer).expect_err("too small");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let error = dm_ioctl(stdin.as_fd(), DM_VERSION, &mut buffer[..100]).expect_err("short");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}

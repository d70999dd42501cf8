//! A writer for the "newc" cpio format (magic `070701`), the one the kernel unpacks as the
//! initramfs (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! The archive is collected in memory and written in one go, sorted by path, so that the same
//! inputs always give the same bytes: every field that would otherwise come from the build
//! machine (owner, inode number, timestamp) is fixed or derived from the path order.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission bits, including setuid, setgid and sticky.
const PERMISSION_BITS: u32 = 0o7777;
/// The kernel skips initramfs entries whose name (with its NUL) is longer than this.
const PATH_MAX: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("archive path {0:?} is empty or contains `.` or `..` components")]
    InvalidPath(String),
    #[error("archive path {0} is longer than the kernel's {PATH_MAX}-byte limit")]
    PathTooLong(String),
    #[error("archive path {0} is added twice")]
    Duplicate(String),
    #[error("archive path {0} is needed as a directory but is already something else")]
    NotADirectory(String),
    #[error("mode {mode:o} of archive path {path} has bits beyond the permission bits")]
    InvalidMode { path: String, mode: u32 },
    #[error("archive path {path} is {size} bytes, more than the 4 GiB newc can describe")]
    TooLarge { path: String, size: usize },
}

/// What an archive entry is; the permission bits live beside it in [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub permissions: u32,
    pub node: Node,
}

impl Entry {
    fn mode(&self) -> u32 {
        let file_type = match self.node {
            Node::Directory => S_IFDIR,
            Node::File(_) => S_IFREG,
            Node::Symlink(_) => S_IFLNK,
            Node::CharDevice { .. } => S_IFCHR,
        };
        file_type | self.permissions
    }

    /// The entry's data: file contents, or a symlink's target (as newc stores it).
    fn data(&self) -> &[u8] {
        match &self.node {
            Node::File(contents) => contents,
            Node::Symlink(target) => target.as_bytes(),
            Node::Directory | Node::CharDevice { .. } => &[],
        }
    }

    /// Directories count their own `.` entry besides the parent's link, as on disk.
    fn nlink(&self) -> u32 {
        match self.node {
            Node::Directory => 2,
            _ => 1,
        }
    }

    fn rdev(&self) -> (u32, u32) {
        match self.node {
            Node::CharDevice { major, minor } => (major, minor),
            _ => (0, 0),
        }
    }
}

/// An archive under construction. Paths are relative to the root of the unpacked tree
/// (`init`, `dev/console`); a leading `/` is accepted and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory. Adding one that exists already (say, implicitly as the parent of an
    /// earlier entry) just sets its permissions.
    pub fn add_directory(&mut self, path: &str, permissions: u32) -> Result<(), CpioError> {
        let path = self.prepare(path, permissions)?;
        match self.entries.entry(path) {
            MapEntry::Occupied(mut existing) => match existing.get().node {
                Node::Directory => existing.get_mut().permissions = permissions,
                _ => return Err(CpioError::NotADirectory(existing.key().clone())),
            },
            MapEntry::Vacant(slot) => {
                slot.insert(Entry {
                    permissions,
                    node: Node::Directory,
                });
            }
        }
        Ok(())
    }

    pub fn add_file(
        &mut self,
        path: &str,
        permissions: u32,
        contents: Vec<u8>,
    ) -> Result<(), CpioError> {
        if u32::try_from(contents.len()).is_err() {
            return Err(CpioError::TooLarge {
                path: path.to_owned(),
                size: contents.len(),
            });
        }
        self.insert_new(path, permissions, Node::File(contents))
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        // Symlink permissions are not used by Linux; 0777 is what every tool records.
        self.insert_new(path, 0o777, Node::Symlink(target.to_owned()))
    }

    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert_new(path, permissions, Node::CharDevice { major, minor })
    }

    /// Number of entries, not counting the trailer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Encodes the archive: entries in path order (so each directory precedes its contents,
    /// a prefix sorting first), inode numbers counted up from 1 in that order, owner root,
    /// every timestamp `mtime`.
    pub fn to_bytes(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (inode, (path, entry)) in (1..).zip(&self.entries) {
            let header = Header {
                inode,
                mode: entry.mode(),
                nlink: entry.nlink(),
                mtime,
                rdev: entry.rdev(),
            };
            encode_record(&mut out, &header, path, entry.data());
        }
        let trailer = Header {
            inode: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            rdev: (0, 0),
        };
        encode_record(&mut out, &trailer, TRAILER, &[]);
        out
    }

    fn insert_new(&mut self, path: &str, permissions: u32, node: Node) -> Result<(), CpioError> {
        let path = self.prepare(path, permissions)?;
        match self.entries.entry(path) {
            MapEntry::Occupied(existing) => Err(CpioError::Duplicate(existing.key().clone())),
            MapEntry::Vacant(slot) => {
                slot.insert(Entry { permissions, node });
                Ok(())
            }
        }
    }

    /// Validates `path` and `permissions` and creates the missing parent directories (0755),
    /// returning the normalised path.
    fn prepare(&mut self, path: &str, permissions: u32) -> Result<String, CpioError> {
        let path = normalise(path)?;
        if permissions & !PERMISSION_BITS != 0 {
            return Err(CpioError::InvalidMode {
                path,
                mode: permissions,
            });
        }
        for (end, _) in path.match_indices('/') {
            self.ensure_directory(&path[..end])?;
        }
        Ok(path)
    }

    fn ensure_directory(&mut self, path: &str) -> Result<(), CpioError> {
        match self.entries.get(path) {
            Some(Entry {
                node: Node::Directory,
                ..
            }) => Ok(()),
            Some(_) => Err(CpioError::NotADirectory(path.to_owned())),
            None => {
                let directory = Entry {
                    permissions: 0o755,
                    node: Node::Directory,
                };
                self.entries.insert(path.to_owned(), directory);
                Ok(())
            }
        }
    }
}

/// `a//b/` and `/a/b` become `a/b`; `.` and `..` are refused rather than resolved, because an
/// archive path that climbs out of the root is always a mistake.
fn normalise(path: &str) -> Result<String, CpioError> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if components.is_empty() || components.iter().any(|c| *c == "." || *c == "..") {
        return Err(CpioError::InvalidPath(path.to_owned()));
    }
    let normalised = components.join("/");
    if normalised.len() >= PATH_MAX {
        return Err(CpioError::PathTooLong(normalised));
    }
    Ok(normalised)
}

/// The header fields that vary; the rest are fixed (owner 0:0, device 0:0, checksum 0).
struct Header {
    inode: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
}

/// Appends one record. Sizes fit the 32-bit fields: file sizes are checked when added and
/// names are at most [`PATH_MAX`] bytes.
fn encode_record(out: &mut Vec<u8>, header: &Header, name: &str, data: &[u8]) {
    let name_size = name.len() + 1; // the name is stored with its terminating NUL
    let fields = [
        header.inode,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        header.mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        header.rdev.0,
        header.rdev.1,
        name_size as u32,
        0, // check: only used by the "070702" variant
    ];
    out.extend_from_slice(MAGIC.as_bytes());
    for value in fields {
        out.extend_from_slice(format!("{value:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(data);
    pad(out);
}

/// Both the header-plus-name and the data end on a multiple of four bytes; every record
/// starts aligned, so aligning the whole output is the same thing.
fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Size of a newc header: the magic and thirteen 8-digit hexadecimal fields.
    const HEADER_LEN: usize = 6 + 13 * 8;

    /// One record as read back from an archive.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Record {
        pub name: String,
        pub inode: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// A deliberately independent reader: it checks the magic, the padding (zero bytes, 4-byte
    /// alignment) and that nothing follows the trailer. Returns the records before the trailer.
    pub(crate) fn parse(bytes: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "record at {at} is not 4-byte aligned");
            let head = std::str::from_utf8(&bytes[at..at + HEADER_LEN]).expect("ASCII header");
            assert_eq!(&head[..6], "070701", "magic at {at}");
            let field = |index: usize| {
                let start = 6 + index * 8;
                u32::from_str_radix(&head[start..start + 8], 16).expect("hex field")
            };
            let name_size = field(11) as usize;
            let data_size = field(6) as usize;
            let name_start = at + HEADER_LEN;
            let name_bytes = &bytes[name_start..name_start + name_size];
            assert_eq!(name_bytes.last(), Some(&0), "name is NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..name_size - 1])
                .expect("UTF-8 name")
                .to_owned();
            let data_start = (name_start + name_size).next_multiple_of(4);
            assert!(bytes[name_start + name_size..data_start]
                .iter()
                .all(|b| *b == 0));
            let data_end = data_start + data_size;
            let next = data_end.next_multiple_of(4);
            assert!(bytes[data_end..next].iter().all(|b| *b == 0));
            assert_eq!(field(7), 0, "devmajor");
            assert_eq!(field(8), 0, "devminor");
            assert_eq!(field(12), 0, "check");
            at = next;
            if name == TRAILER {
                assert_eq!(at, bytes.len(), "bytes after the trailer");
                return records;
            }
            records.push(Record {
                name,
                inode: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data: bytes[data_start..data_end].to_vec(),
            });
        }
    }

    /// Every kind of entry, names of every length modulo 4, data of every length modulo 4.
    fn sample() -> Archive {
        let mut archive = Archive::new();
        archive
            .add_file("/init", 0o755, b"\x7fELF".to_vec())
            .expect("init");
        archive.add_directory("dev", 0o755).expect("dev");
        archive
            .add_char_device("dev/console", 0o600, 5, 1)
            .expect("console");
        archive.add_file("etc/a", 0o644, b"1".to_vec()).expect("a");
        archive
            .add_file("etc/ab", 0o644, b"12".to_vec())
            .expect("ab");
        archive
            .add_file("etc/abc", 0o600, b"123".to_vec())
            .expect("abc");
        archive
            .add_file("etc/abcd", 0o4755, Vec::new())
            .expect("abcd");
        archive.add_symlink("bin", "usr/bin").expect("bin");
        archive.add_directory("usr/bin", 0o700).expect("usr/bin");
        archive
    }

    #[test]
    fn records_read_back_in_path_order_with_fixed_metadata() {
        let records = parse(&sample().to_bytes(1_700_000_000));
        let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "etc",
                "etc/a",
                "etc/ab",
                "etc/abc",
                "etc/abcd",
                "init",
                "usr",
                "usr/bin"
            ]
        );
        let inodes: Vec<u32> = records.iter().map(|r| r.inode).collect();
        assert_eq!(inodes, (1..=11).collect::<Vec<_>>());
        for record in &records {
            assert_eq!((record.uid, record.gid), (0, 0), "{}", record.name);
            assert_eq!(record.mtime, 1_700_000_000, "{}", record.name);
        }
    }

    #[test]
    fn each_kind_of_entry_is_encoded() {
        let records = parse(&sample().to_bytes(0));
        let find = |name: &str| {
            records
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .clone()
        };
        let console = find("dev/console");
        assert_eq!(
            (console.mode, console.rdev, console.nlink),
            (0o020_600, (5, 1), 1)
        );
        let init = find("init");
        assert_eq!(
            (init.mode, init.data.as_slice()),
            (0o100_755, &b"\x7fELF"[..])
        );
        assert_eq!(find("etc/abcd").mode, 0o104_755);
        assert_eq!(find("etc/abc").data, b"123");
        let bin = find("bin");
        assert_eq!(
            (bin.mode, bin.data.as_slice()),
            (0o120_777, &b"usr/bin"[..])
        );
        let implicit = find("etc");
        assert_eq!((implicit.mode, implicit.nlink), (0o040_755, 2));
        assert_eq!(find("usr/bin").mode, 0o040_700);
    }

    #[test]
    fn same_inputs_give_identical_bytes_whatever_the_insertion_order() {
        let mut reversed = Archive::new();
        reversed.add_directory("usr/bin", 0o700).expect("usr/bin");
        reversed.add_symlink("bin", "usr/bin").expect("bin");
        reversed
            .add_file("etc/abcd", 0o4755, Vec::new())
            .expect("abcd");
        reversed
            .add_file("etc/abc", 0o600, b"123".to_vec())
            .expect("abc");
        reversed
            .add_file("etc/ab", 0o644, b"12".to_vec())
            .expect("ab");
        reversed.add_file("etc/a", 0o644, b"1".to_vec()).expect("a");
        reversed
            .add_char_device("dev/console", 0o600, 5, 1)
            .expect("console");
        reversed.add_directory("dev", 0o755).expect("dev");
        reversed
            .add_file("init", 0o755, b"\x7fELF".to_vec())
            .expect("init");
        assert_eq!(sample().to_bytes(7), reversed.to_bytes(7));
        assert_ne!(sample().to_bytes(7), sample().to_bytes(8));
    }

    #[test]
    fn the_archive_ends_aligned_after_the_trailer() {
        let bytes = sample().to_bytes(0);
        assert_eq!(bytes.len() % 4, 0);
        assert!(parse(&Archive::new().to_bytes(0)).is_empty());
    }

    #[test]
    fn conflicting_and_invalid_paths_are_refused() {
        let mut archive = sample();
        assert_eq!(
            archive.add_file("init", 0o755, Vec::new()),
            Err(CpioError::Duplicate("init".into()))
        );
        assert_eq!(
            archive.add_file("init/x", 0o644, Vec::new()),
            Err(CpioError::NotADirectory("init".into()))
        );
        assert_eq!(
            archive.add_directory("dev/console", 0o755),
            Err(CpioError::NotADirectory("dev/console".into()))
        );
        assert_eq!(
            archive.add_file("etc", 0o644, Vec::new()),
            Err(CpioError::Duplicate("etc".into()))
        );
        for bad in ["", "/", "a/../b", "./a"] {
            assert_eq!(
                archive.add_file(bad, 0o644, Vec::new()),
                Err(CpioError::InvalidPath(bad.into()))
            );
        }
        assert!(matches!(
            archive.add_file("x", 0o100_644, Vec::new()),
            Err(CpioError::InvalidMode { .. })
        ));
        let long = "d/".repeat(2049);
        assert!(matches!(
            archive.add_directory(&long, 0o755),
            Err(CpioError::PathTooLong(_))
        ));
    }

    #[test]
    fn re_adding_a_directory_sets_its_permissions() {
        let mut archive = Archive::new();
        archive.add_file("var/tmp/x", 0o644, Vec::new()).expect("x");
        archive.add_directory("/var/tmp/", 0o1777).expect("tmp");
        let tmp = archive.get("var/tmp").expect("present");
        assert_eq!(tmp.permissions, 0o1777);
        assert_eq!(archive.len(), 3);
    }

    fn tool_exists(program: &str) -> bool {
        let found = Path::new("/usr/bin").join(program).exists()
            || Path::new("/bin").join(program).exists();
        if !found {
            println!("note: {program} not installed, skipping its round trip");
        }
        found
    }

    fn run_on_archive(program: &str, args: &[&str]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sample.cpio");
        std::fs::write(&path, sample().to_bytes(1_700_000_000)).expect("write archive");
        let output = Command::new(program)
            .args(args)
            .arg(&path)
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 listing")
    }

    #[test]
    fn gnu_cpio_lists_every_entry() {
        if !tool_exists("cpio") {
            return;
        }
        let listing = run_on_archive("cpio", &["--quiet", "-it", "-F"]);
        let names: Vec<&str> = listing.lines().collect();
        let expected: Vec<String> = sample().paths().map(str::to_owned).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn bsdtar_lists_types_modes_and_devices() {
        if !tool_exists("bsdtar") {
            return;
        }
        let listing = run_on_archive("bsdtar", &["-tvf"]);
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.split(" -> ").next().is_some_and(|l| l.ends_with(name)))
                .unwrap_or_else(|| panic!("{name} missing from {listing}"))
                .to_owned()
        };
        assert!(line(" dev/console").starts_with("crw------- "), "{listing}");
        assert!(line(" dev/console").contains("5,1"), "{listing}");
        assert!(line(" init").starts_with("-rwxr-xr-x "), "{listing}");
        assert!(line(" bin").starts_with("lrwxrwxrwx "), "{listing}");
        assert!(line(" bin").ends_with(" bin -> usr/bin"), "{listing}");
        assert!(line(" usr/bin").starts_with("drwx------ "), "{listing}");
        assert_eq!(listing.lines().count(), sample().len());
    }
}

//! `xorbang-build uki`: a Unified Kernel Image (UAPI UKI specification) written by our own PE
//! code: the systemd stub with `.osrel .cmdline .uname .initrd .linux` sections appended in
//! ukify's order (`.linux` last: it is the largest, and whatever follows the kernel in memory
//! is at risk while it decompresses), optionally signed with `sbsign` and checked with
//! `sbverify`. Without signing the output depends on the inputs and the timestamp only.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boot::pe::{self, Appended, NewSection, PeError, SectionHeader};
use crate::boot::pe::{IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ};
use crate::file_error::{FileAction, FileError};
use crate::output::{self, PendingOutput};
use crate::tool::{self, ToolError};
use xorbang_formats::bytes::{le_u16, le_u32};

/// Debian's systemd-boot-efi package puts the x86-64 stub here.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// systemd-boot (Debian's systemd-boot-efi), the boot loader of the A/B layout.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const DEFAULT_OS_RELEASE: &str = "/etc/os-release";
const SBSIGN: &str = "sbsign";
const SBVERIFY: &str = "sbverify";

/// The data sections; the stub finds every section by name.
const DATA: u32 = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ;
/// As ukify marks it: stubs that boot through the EFI handover protocol (systemd 252's do)
/// jump into the kernel where it lies in the UKI's memory.
const CODE: u32 = IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ;

// The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst), by file offset.
const BOOT_FLAG_AT: usize = 0x1fe;
const BOOT_FLAG: u16 = 0xaa55;
const HEADER_MAGIC_AT: usize = 0x202;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
const PROTOCOL_AT: usize = 0x206;
const KERNEL_VERSION_AT: usize = 0x20e;
const CMDLINE_SIZE_AT: usize = 0x238;
/// 2.12 (Linux 3.8): the first with `xloadflags`, which EFI loaders consult.
const MIN_PROTOCOL: u16 = 0x020c;
/// `kernel_version` counts from the end of the boot sector.
const KERNEL_VERSION_BASE: usize = 0x200;
/// The PE header offset of the kernel's own EFI stub, as in any PE file.
const E_LFANEW: usize = 0x3c;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("truncated: the setup header ends beyond the end of the file")]
    Truncated,
    #[error(
        "not a bzImage: no \"HdrS\" magic at offset 0x202 (a vmlinux ELF or a bare compressed \
         kernel cannot be booted by the stub)"
    )]
    NotBzImage,
    #[error("boot protocol {}.{:02}, older than 2.12", .0 >> 8, .0 & 0xff)]
    TooOld(u16),
    #[error("no EFI stub (no MZ/PE header): the kernel was built without CONFIG_EFI_STUB")]
    NoEfiStub,
}

/// What the UKI needs to know about a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// The release `uname -r` prints, from the version string the setup header points at.
    pub release: Option<String>,
    /// The longest command line the kernel takes, without its NUL (COMMAND_LINE_SIZE - 1).
    pub cmdline_max: usize,
}

/// Checks that `bytes` is an x86 bzImage with an EFI stub and reads its facts.
pub fn inspect_kernel(bytes: &[u8]) -> Result<KernelInfo, KernelError> {
    if bytes.len() < CMDLINE_SIZE_AT + 4 {
        return Err(KernelError::Truncated);
    }
    if bytes.get(HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4) != Some(HEADER_MAGIC) {
        return Err(KernelError::NotBzImage);
    }
    if le_u16(bytes, BOOT_FLAG_AT).ok_or(KernelError::Truncated)? != BOOT_FLAG {
        return Err(KernelError::NotBzImage);
    }
    let protocol = le_u16(bytes, PROTOCOL_AT).ok_or(KernelError::Truncated)?;
    if protocol < MIN_PROTOCOL {
        return Err(KernelError::TooOld(protocol));
    }
    if !has_efi_stub(bytes) {
        return Err(KernelError::NoEfiStub);
    }
    let cmdline_max = le_u32(bytes, CMDLINE_SIZE_AT).ok_or(KernelError::Truncated)?;
    Ok(KernelInfo {
        release: release(
            bytes,
            le_u16(bytes, KERNEL_VERSION_AT).ok_or(KernelError::Truncated)?,
        ),
        cmdline_max: usize::try_from(cmdline_max).map_err(|_| KernelError::Truncated)?,
    })
}

fn has_efi_stub(bytes: &[u8]) -> bool {
    let pe = le_u32(bytes, E_LFANEW).and_then(|at| usize::try_from(at).ok());
    bytes.starts_with(b"MZ")
        && pe.and_then(|at| bytes.get(at..at.checked_add(4)?)) == Some(b"PE\0\0".as_slice())
}

/// The first word of the version string ("6.1.0-56-amd64 (debian-kernel@…) #1 SMP …"), as
/// ukify takes it; none when the header has no pointer or it leads nowhere sensible.
fn release(bytes: &[u8], pointer: u16) -> Option<String> {
    if pointer == 0 {
        return None;
    }
    let text = bytes.get(KERNEL_VERSION_BASE + usize::from(pointer)..)?;
    let end = text.iter().position(|b| *b == 0 || *b == b' ')?;
    let word = std::str::from_utf8(&text[..end]).ok()?;
    check_uname(word).ok().map(|()| word.to_owned())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("it is empty")]
    Empty,
    #[error(
        "{len} bytes, more than the {max} this kernel accepts (its setup header's \
         cmdline_size; the stub would cut the rest off silently)"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "byte {offset} is {byte:#04x}: only printable ASCII passes through the stub unchanged"
    )]
    Character { offset: usize, byte: u8 },
}

/// The stub hands the command line to the kernel truncated to the kernel's limit and with
/// anything outside printable ASCII replaced, so refuse both rather than boot something else.
pub fn check_cmdline(text: &str, max: usize) -> Result<(), CmdlineError> {
    if text.is_empty() {
        return Err(CmdlineError::Empty);
    }
    if let Some(offset) = text.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        let byte = text.as_bytes()[offset];
        return Err(CmdlineError::Character { offset, byte });
    }
    if text.len() > max {
        return Err(CmdlineError::TooLong {
            len: text.len(),
            max,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid uname {0:?}: expected a kernel release such as 6.1.0-56-amd64")]
pub struct UnameError(String);

/// A release names a directory under /lib/modules: one word of printable ASCII.
fn check_uname(text: &str) -> Result<(), UnameError> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    match valid {
        true => Ok(()),
        false => Err(UnameError(text.to_owned())),
    }
}

/// The contents of the UKI's sections.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    pub os_release: &'a [u8],
    pub cmdline: &'a str,
    pub uname: &'a str,
    pub initrd: &'a [u8],
    pub linux: &'a [u8],
}

/// The stub with the parts appended, in ukify's order.
pub fn assemble(stub: &[u8], parts: &UkiParts<'_>, timestamp: u32) -> Result<Appended, PeError> {
    let section = |name, data, characteristics| NewSection {
        name,
        data,
        characteristics,
    };
    let sections = [
        section(".osrel", parts.os_release, DATA),
        section(".cmdline", parts.cmdline.as_bytes(), DATA),
        section(".uname", parts.uname.as_bytes(), DATA),
        section(".initrd", parts.initrd, DATA),
        section(".linux", parts.linux, CODE),
    ];
    pe::append_sections(stub, &sections, timestamp)
}

/// Where the kernel command line comes from.
#[derive(Debug, Clone)]
pub enum CmdlineSource {
    Text(String),
    /// A file; surrounding whitespace (its final newline) is dropped.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Signing {
    pub key: PathBuf,
    pub cert: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UkiSpec {
    pub stub: PathBuf,
    pub linux: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: CmdlineSource,
    pub os_release: PathBuf,
    /// The release for `.uname`; by default the kernel's own.
    pub uname: Option<String>,
    pub signing: Option<Signing>,
}

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("the {what}")]
    Input {
        what: &'static str,
        #[source]
        source: FileError,
    },
    #[error("the {what} {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the stub {path} cannot take the UKI sections")]
    Stub {
        path: PathBuf,
        #[source]
        source: PeError,
    },
    #[error("the kernel {path} cannot be booted by the stub")]
    Kernel {
        path: PathBuf,
        #[source]
        source: KernelError,
    },
    #[error("the kernel {path} records no version string: give --uname")]
    NoRelease { path: PathBuf },
    #[error(transparent)]
    Uname(#[from] UnameError),
    #[error("the kernel command line is refused")]
    Cmdline(#[source] CmdlineError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// What was written, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiSummary {
    pub size: u64,
    /// The sections added to the stub.
    pub sections: Vec<SectionHeader>,
    pub signed: bool,
}

impl fmt::Display for UkiSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signed = if self.signed { ", signed" } else { "" };
        write!(f, "{} bytes{signed}", self.size)?;
        for section in &self.sections {
            write!(f, "\n  {section}")?;
        }
        Ok(())
    }
}

/// Builds the UKI `out` (atomically): everything is read and checked before anything is
/// written, and a failed signature or verification leaves no output.
pub fn build(spec: &UkiSpec, out: &Path, timestamp: u32) -> Result<UkiSummary, UkiError> {
    if let Some(signing) = &spec.signing {
        check_readable("signing key", &signing.key)?;
        check_readable("signing certificate", &signing.cert)?;
    }
    let Appended { image, sections } = assemble_files(spec, timestamp)?;
    let size = match &spec.signing {
        None => {
            output::write_atomically(out, &image)?;
            image.len() as u64
        }
        Some(signing) => write_signed(&image, out, signing)?,
    };
    Ok(UkiSummary {
        size,
        sections,
        signed: spec.signing.is_some(),
    })
}

fn assemble_files(spec: &UkiSpec, timestamp: u32) -> Result<Appended, UkiError> {
    let stub = read("stub", &spec.stub)?;
    let linux = read("kernel", &spec.linux)?;
    let kernel = inspect_kernel(&linux).map_err(|source| UkiError::Kernel {
        path: spec.linux.clone(),
        source,
    })?;
    let cmdline = match &spec.cmdline {
        CmdlineSource::Text(text) => text.clone(),
        CmdlineSource::File(path) => read_text("command line file", path)?.trim().to_owned(),
    };
    check_cmdline(&cmdline, kernel.cmdline_max).map_err(UkiError::Cmdline)?;
    let uname = match (&spec.uname, kernel.release) {
        (Some(given), _) => given.clone(),
        (None, Some(release)) => release,
        (None, None) => {
            return Err(UkiError::NoRelease {
                path: spec.linux.clone(),
            })
        }
    };
    check_uname(&uname)?;
    let parts = UkiParts {
        os_release: &read_nonempty("os-release file", &spec.os_release)?,
        cmdline: &cmdline,
        uname: &uname,
        initrd: &read_nonempty("initrd", &spec.initrd)?,
        linux: &linux,
    };
    assemble(&stub, &parts, timestamp).map_err(|source| UkiError::Stub {
        path: spec.stub.clone(),
        source,
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, UkiError> {
    fs::read(path).map_err(|source| UkiError::Input {
        what,
        source: FileError::of(FileAction::Read, path)(source),
    })
}

fn read_text(what: &'static str, path: &Path) -> Result<String, UkiError> {
    fs::read_to_string(path).map_err(|source| UkiError::Input {
        what,
        source: FileError::of(FileAction::Read, path)(source),
    })
}

/// An empty section would read as a missing one to the stub.
fn read_nonempty(what: &'static str, path: &Path) -> Result<Vec<u8>, UkiError> {
    let bytes = read(what, path)?;
    if bytes.is_empty() {
        return Err(UkiError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn check_readable(what: &'static str, path: &Path) -> Result<(), UkiError> {
    File::open(path)
        .map(drop)
        .map_err(|source| UkiError::Input {
            what,
            source: FileError::of(FileAction::Read, path)(source),
        })
}

/// Signs the EFI program `input` (systemd-boot, for the A/B layout's ESP) into `out` with
/// `signing`, checked with sbverify like a UKI; returns the signed size.
pub fn sign_efi(input: &Path, out: &Path, signing: &Signing) -> Result<u64, UkiError> {
    let image = std::fs::read(input).map_err(|source| UkiError::Input {
        what: "EFI program to sign",
        source: FileError::of(FileAction::Read, input)(source),
    })?;
    write_signed(&image, out, signing)
}

/// Signs a copy of the image into `out`'s temporary path and verifies it there; only a
/// verified signature is renamed into place. Returns the signed size.
fn write_signed(image: &[u8], out: &Path, signing: &Signing) -> Result<u64, UkiError> {
    let mut unsigned = out.as_os_str().to_owned();
    unsigned.push(".unsigned");
    let unsigned = PendingOutput::new(Path::new(&unsigned))?;
    unsigned
        .file()
        .write_all(image)
        .map_err(FileError::of(FileAction::Write, unsigned.temporary()))?;
    let signed = PendingOutput::new(out)?;
    let (key, cert) = (signing.key.as_os_str(), signing.cert.as_os_str());
    let output = signed.temporary().as_os_str();
    let input = unsigned.temporary().as_os_str();
    run_tool(
        SBSIGN,
        &[
            "--key".as_ref(),
            key,
            "--cert".as_ref(),
            cert,
            "--output".as_ref(),
            output,
            input,
        ],
    )?;
    run_tool(SBVERIFY, &["--cert".as_ref(), cert, output])?;
    // sbsign wrote the file by its path: open what it wrote to flush and measure it.
    let file = File::open(signed.temporary())
        .map_err(FileError::of(FileAction::Open, signed.temporary()))?;
    file.sync_all()
        .map_err(FileError::of(FileAction::Sync, signed.temporary()))?;
    let size = file
        .metadata()
        .map_err(FileError::of(FileAction::Inspect, signed.temporary()))?
        .len();
    signed.commit()?;
    Ok(size)
}

fn run_tool(program: &str, args: &[&OsStr]) -> Result<(), UkiError> {
    Ok(tool::run(Command::new(program).args(args), "sbsigntool")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::pe::tests::fake_stub;
    use xorbang_formats::error_chain::error_chain;

    const RELEASE_STRING: &[u8] = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";

    /// The first page of a bzImage as far as the stub and we look: the kernel's own MZ/PE
    /// header, the boot flag, and a 2.15 setup header with cmdline_size 2047 and a pointer to
    /// the version string.
    fn fake_bzimage() -> Vec<u8> {
        let mut bytes = vec![0u8; 0x1000];
        let mut set = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
        set(0, b"MZ");
        set(E_LFANEW, &0x40u32.to_le_bytes());
        set(0x40, b"PE\0\0");
        set(BOOT_FLAG_AT, &BOOT_FLAG.to_le_bytes());
        set(HEADER_MAGIC_AT, HEADER_MAGIC);
        set(PROTOCOL_AT, &0x020fu16.to_le_bytes());
        set(KERNEL_VERSION_AT, &0x300u16.to_le_bytes());
        set(CMDLINE_SIZE_AT, &2047u32.to_le_bytes());
        set(0x500, RELEASE_STRING);
        bytes
    }

    #[test]
    fn a_bzimage_gives_its_release_and_command_line_limit() {
        let info = inspect_kernel(&fake_bzimage()).expect("bzImage");
        let release = Some("6.1.0-56-amd64".to_owned());
        assert_eq!(
            info,
            KernelInfo {
                release,
                cmdline_max: 2047
            }
        );
        let mut anonymous = fake_bzimage();
        anonymous[KERNEL_VERSION_AT..KERNEL_VERSION_AT + 2].fill(0);
        assert_eq!(inspect_kernel(&anonymous).expect("bzImage").release, None);
    }

    #[test]
    fn kernels_the_stub_cannot_boot_are_refused() {
        let elf = [b"\x7fELF".as_slice(), &[0; 0x400]].concat();
        assert_eq!(inspect_kernel(&elf), Err(KernelError::NotBzImage));
        assert_eq!(
            inspect_kernel(&fake_bzimage()[..0x210]),
            Err(KernelError::Truncated)
        );
        let mut old = fake_bzimage();
        old[PROTOCOL_AT..PROTOCOL_AT + 2].copy_from_slice(&0x020bu16.to_le_bytes());
        let err = inspect_kernel(&old).expect_err("2.11");
        assert_eq!(err.to_string(), "boot protocol 2.11, older than 2.12");
        let mut no_stub = fake_bzimage();
        no_stub[0x40] = 0;
        let err = inspect_kernel(&no_stub).expect_err("no PE header");
        assert_eq!(err, KernelError::NoEfiStub);
        assert!(err.to_string().contains("CONFIG_EFI_STUB"), "{err}");
    }

    #[test]
    fn the_command_line_must_fit_the_kernel_and_be_printable_ascii() {
        assert_eq!(check_cmdline(&"a".repeat(2047), 2047), Ok(()));
        let err = check_cmdline(&"a".repeat(2048), 2047).expect_err("too long");
        assert_eq!(
            err,
            CmdlineError::TooLong {
                len: 2048,
                max: 2047
            }
        );
        assert!(
            err.to_string()
                .starts_with("2048 bytes, more than the 2047"),
            "{err}"
        );
        let err = check_cmdline("quiet\nsplash", 2047).expect_err("newline");
        assert_eq!(
            err,
            CmdlineError::Character {
                offset: 5,
                byte: b'\n'
            }
        );
        let err = check_cmdline("root=/dev/vdb é", 2047).expect_err("non-ASCII");
        assert_eq!(
            err,
            CmdlineError::Character {
                offset: 14,
                byte: 0xc3
            }
        );
        assert_eq!(check_cmdline("", 2047), Err(CmdlineError::Empty));
    }

    #[test]
    fn a_uname_is_one_word() {
        assert_eq!(check_uname("6.1.0-56-amd64"), Ok(()));
        for bad in ["", "6.1 foo", "../x", "6.1\n"] {
            assert!(check_uname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sections_come_in_ukify_order_with_linux_last_as_code() {
        let kernel = fake_bzimage();
        let parts = UkiParts {
            os_release: b"ID=xorbang\n",
            cmdline: "console=ttyS0",
            uname: "6.1.0",
            initrd: b"initrd",
            linux: &kernel,
        };
        let image = assemble(&fake_stub(), &parts, 0).expect("assembles").image;
        let sections = pe::parse(&image).expect("parses").sections;
        let names: Vec<_> = sections.iter().map(SectionHeader::name).collect();
        let expected = [
            ".text", ".data", ".osrel", ".cmdline", ".uname", ".initrd", ".linux",
        ];
        assert_eq!(names, expected);
        assert!(sections[2..6]
            .iter()
            .all(|section| section.characteristics == DATA));
        assert_eq!(sections[6].characteristics, CODE);
        let linux = &sections[6];
        let at = linux.pointer_to_raw_data as usize;
        assert_eq!(&image[at..at + kernel.len()], kernel.as_slice());
        assert_eq!(linux.virtual_size as usize, kernel.len());
    }

    struct Inputs {
        dir: tempfile::TempDir,
        spec: UkiSpec,
    }

    impl Inputs {
        fn new(stub: &[u8], kernel: &[u8]) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = |name: &str, bytes: &[u8]| {
                let path = dir.path().join(name);
                fs::write(&path, bytes).expect("input");
                path
            };
            let spec = UkiSpec {
                stub: file("stub.efi", stub),
                linux: file("vmlinuz", kernel),
                initrd: file("initrd.img", b"070701 a newc archive"),
                cmdline: CmdlineSource::File(file("cmdline", b"  console=ttyS0 quiet\n")),
                os_release: file("os-release", b"ID=xorbang\nVERSION_ID=1\n"),
                uname: None,
                signing: None,
            };
            Self { dir, spec }
        }

        fn fake() -> Self {
            Self::new(&fake_stub(), &fake_bzimage())
        }

        fn out(&self) -> PathBuf {
            self.dir.path().join("uki.efi")
        }

        /// Builds and returns the error chain, checking that nothing was written.
        fn refused(&self) -> String {
            let err = build(&self.spec, &self.out(), 0).expect_err("refused");
            let mut left = fs::read_dir(self.dir.path())
                .expect("dir")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .into_string()
                        .expect("UTF-8")
                })
                .filter(|name| name.starts_with("uki.efi"));
            assert_eq!(left.next(), None, "{err}");
            error_chain(&err)
        }
    }

    fn section_data<'a>(image: &'a [u8], name: &str) -> &'a [u8] {
        let sections = pe::parse(image).expect("parses").sections;
        let section = sections.iter().find(|s| s.name() == name).expect("section");
        let at = section.pointer_to_raw_data as usize;
        &image[at..at + section.virtual_size as usize]
    }

    #[test]
    fn a_build_writes_the_sections_and_is_reproducible() {
        let inputs = Inputs::fake();
        let summary = build(&inputs.spec, &inputs.out(), 1_700_000_000).expect("builds");
        let image = fs::read(inputs.out()).expect("output");
        assert_eq!(summary.size, image.len() as u64);
        assert!(!summary.signed);
        let names: Vec<_> = summary.sections.iter().map(SectionHeader::name).collect();
        assert_eq!(names, [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]);
        assert!(
            summary
                .to_string()
                .contains("\n  .uname at 0x5000 (14 bytes)"),
            "{summary}"
        );
        assert_eq!(section_data(&image, ".cmdline"), b"console=ttyS0 quiet");
        assert_eq!(section_data(&image, ".uname"), b"6.1.0-56-amd64");
        assert_eq!(
            pe::parse(&image).expect("parses").time_date_stamp,
            1_700_000_000
        );
        build(&inputs.spec, &inputs.out(), 1_700_000_000).expect("rebuilds");
        assert_eq!(fs::read(inputs.out()).expect("output"), image);
        assert!(!inputs.dir.path().join("uki.efi.tmp").exists());
    }

    #[test]
    fn a_stub_that_is_not_a_pe_file_is_refused() {
        let inputs = Inputs::new(b"#!/bin/sh\n", &fake_bzimage());
        let err = inputs.refused();
        assert!(err.ends_with("cannot take the UKI sections: not a PE file: no MZ signature"));
    }

    #[test]
    fn a_kernel_that_is_not_a_bzimage_is_refused() {
        let inputs = Inputs::new(&fake_stub(), &[b"\x7fELF".as_slice(), &[0; 0x400]].concat());
        let err = inputs.refused();
        assert!(
            err.contains("cannot be booted by the stub: not a bzImage"),
            "{err}"
        );
    }

    #[test]
    fn a_command_line_over_the_kernels_limit_is_refused() {
        let mut inputs = Inputs::fake();
        inputs.spec.cmdline = CmdlineSource::Text(format!("console=ttyS0 {}", "x".repeat(2040)));
        let err = inputs.refused();
        let expected = "the kernel command line is refused: 2054 bytes, more than the 2047";
        assert!(err.starts_with(expected), "{err}");
    }

    #[test]
    fn a_kernel_without_a_version_string_needs_uname() {
        let mut kernel = fake_bzimage();
        kernel[KERNEL_VERSION_AT..KERNEL_VERSION_AT + 2].fill(0);
        let mut inputs = Inputs::new(&fake_stub(), &kernel);
        assert!(inputs
            .refused()
            .ends_with("records no version string: give --uname"));
        inputs.spec.uname = Some("6.1.0-custom".into());
        build(&inputs.spec, &inputs.out(), 0).expect("builds with --uname");
        let image = fs::read(inputs.out()).expect("output");
        assert_eq!(section_data(&image, ".uname"), b"6.1.0-custom");
    }

    #[test]
    fn a_missing_signing_key_is_reported_before_anything_is_written() {
        let mut inputs = Inputs::fake();
        let cert = inputs.dir.path().join("cert.pem");
        fs::write(&cert, "not read").expect("cert");
        let key = inputs.dir.path().join("missing.key");
        inputs.spec.signing = Some(Signing { key, cert });
        let err = inputs.refused();
        assert!(err.starts_with("the signing key: cannot read "), "{err}");
        assert!(err.ends_with("missing.key: No such file or directory (os error 2)"));
    }

    fn real_stub() -> Option<Vec<u8>> {
        let stub = fs::read(DEFAULT_STUB).ok();
        if stub.is_none() {
            println!("note: {DEFAULT_STUB} missing (systemd-boot-efi), skipping");
        }
        stub
    }

    /// The Debian kernel the VM tests download.
    fn real_kernel() -> Option<Vec<u8>> {
        let home = PathBuf::from(std::env::var_os("HOME")?);
        let kernels = fs::read_dir(home.join(".cache/xorbang/kernel")).ok()?;
        let boot = kernels
            .flatten()
            .map(|entry| entry.path().join("root/boot"));
        let vmlinuz = boot
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten().map(|entry| entry.path()))
            .find(|path| path.to_string_lossy().contains("vmlinuz-"));
        if vmlinuz.is_none() {
            println!("note: no kernel under ~/.cache/xorbang/kernel, skipping");
        }
        fs::read(vmlinuz?).ok()
    }

    #[test]
    fn the_real_stub_and_kernel_give_an_aligned_reproducible_uki() {
        let (Some(stub), Some(kernel)) = (real_stub(), real_kernel()) else {
            return;
        };
        let inputs = Inputs::new(&stub, &kernel);
        build(&inputs.spec, &inputs.out(), 0).expect("builds");
        let image = fs::read(inputs.out()).expect("output");
        let before = pe::parse(&stub).expect("the stub parses");
        let after = pe::parse(&image).expect("the UKI parses");
        let kept = before.sections.len();
        assert_eq!(after.sections[..kept], before.sections[..]);
        let names: Vec<_> = after.sections.iter().map(SectionHeader::name).collect();
        assert!(names.contains(&".sbat".into()) && names.contains(&".sdmagic".into()));
        let mut end = before.size_of_image;
        for section in &after.sections[kept..] {
            assert_eq!(
                section.virtual_address % after.section_alignment,
                0,
                "{section}"
            );
            assert_eq!(
                section.pointer_to_raw_data % after.file_alignment,
                0,
                "{section}"
            );
            assert!(section.virtual_address >= end, "{section} overlaps");
            end = section.virtual_address + section.virtual_size;
        }
        assert!(after.size_of_image >= end);
        assert_eq!((after.symbol_table, after.checksum), (None, 0));
        assert_eq!(section_data(&image, ".linux"), kernel.as_slice());
        check_with_objdump(&inputs.out());
        build(&inputs.spec, &inputs.out(), 0).expect("rebuilds");
        assert!(
            fs::read(inputs.out()).expect("output") == image,
            "not reproducible"
        );
    }

    /// binutils' reading of the sections, as a second opinion where it is installed.
    fn check_with_objdump(uki: &Path) {
        let Ok(output) = Command::new("objdump").arg("-h").arg(uki).output() else {
            println!("note: objdump not installed, skipping its check");
            return;
        };
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{listing}");
        for name in [
            ".sbat", ".sdmagic", ".osrel", ".cmdline", ".uname", ".initrd", ".linux",
        ] {
            assert!(
                listing.contains(&format!(" {name} ")),
                "{name} missing:\n{listing}"
            );
        }
    }

    /// What the bundle command and the updater read back from a UKI we wrote: its
    /// `roothash=` and `.osrel` identity (through the formats crate's own PE reader).
    #[test]
    fn bundles_recognise_the_uki_they_are_given_and_no_other() {
        use xorbang_formats::bundle::{self, BundleFile, Manifest, UkiCheckError};
        let hash = "ab".repeat(32);
        let mut inputs = Inputs::fake();
        inputs.spec.cmdline = CmdlineSource::Text(format!("console=ttyS0 roothash={hash}"));
        fs::write(
            &inputs.spec.os_release,
            "ID=debian\nIMAGE_ID=demo\nIMAGE_VERSION=2\n",
        )
        .expect("write");
        build(&inputs.spec, &inputs.out(), 0).expect("builds");
        let uki = fs::read(inputs.out()).expect("read");
        let file = |name: &str| BundleFile {
            name: name.to_owned(),
            bytes: 1,
            sha256: "00".repeat(32),
        };
        let manifest = Manifest {
            format: bundle::FORMAT,
            image_id: "demo".to_owned(),
            version: "2".to_owned(),
            root_hash: hash.clone(),
            root: file("root.squashfs"),
            verity: file("root.squashfs.verity"),
            uki: file("demo_2.efi"),
        };
        bundle::check_uki(&uki, &manifest).expect("its own bundle");
        let other_root = Manifest {
            root_hash: "cd".repeat(32),
            ..manifest.clone()
        };
        assert!(matches!(
            bundle::check_uki(&uki, &other_root),
            Err(UkiCheckError::RootHash { found, .. }) if found == hash
        ));
        let other_version = Manifest {
            version: "3".to_owned(),
            ..manifest.clone()
        };
        let error = bundle::check_uki(&uki, &other_version).expect_err("version 3");
        assert_eq!(
            error.to_string(),
            "names demo_2 in its .osrel, not the bundle's demo_3"
        );
        assert!(matches!(
            bundle::check_uki(b"MZ but nothing else", &manifest),
            Err(UkiCheckError::Pe(_))
        ));
    }

    /// A throwaway key and self-signed certificate, if openssl and sbsigntool are installed.
    fn throwaway_signing(dir: &Path, name: &str) -> Option<Signing> {
        let tools = [SBSIGN, SBVERIFY]
            .iter()
            .all(|tool| Command::new(tool).output().is_ok());
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.pem")),
        );
        let made = tools
            && Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=xorbang test"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .is_ok_and(|output| output.status.success());
        if !made {
            println!("note: openssl or sbsigntool missing, skipping signing");
        }
        made.then_some(Signing { key, cert })
    }

    #[test]
    fn a_signed_uki_passes_sbverify_and_a_mismatched_key_writes_nothing() {
        let mut inputs = Inputs::fake();
        let Some(signing) = throwaway_signing(inputs.dir.path(), "db") else {
            return;
        };
        let Some(other) = throwaway_signing(inputs.dir.path(), "other") else {
            return;
        };
        inputs.spec.signing = Some(signing.clone());
        let summary = build(&inputs.spec, &inputs.out(), 0).expect("signs");
        assert!(summary.signed);
        let image = fs::read(inputs.out()).expect("output");
        assert_eq!(summary.size, image.len() as u64);
        assert!(pe::parse(&image)
            .expect("parses")
            .certificate_table
            .is_some());
        let verify = Command::new(SBVERIFY)
            .arg("--cert")
            .arg(&signing.cert)
            .arg(inputs.out())
            .output()
            .expect("sbverify runs");
        assert!(verify.status.success());
        assert!(!inputs.dir.path().join("uki.efi.unsigned.tmp").exists());

        fs::remove_file(inputs.out()).expect("remove");
        inputs.spec.signing = Some(Signing {
            key: other.key,
            cert: signing.cert,
        });
        let err = inputs.refused();
        assert!(err.contains("sbsign failed"), "{err}");
    }
}

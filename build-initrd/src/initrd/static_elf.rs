//! The check that a binary can be the initramfs's `/init`: an ELF64 file with no program
//! interpreter. The initramfs carries no dynamic loader or libc, so a dynamically linked init
//! would make the kernel panic with "No working init found" and nothing more to go on.

use xorbang_formats::bytes::{le_u16, le_u32, le_u64};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    Unsupported,
    #[error("truncated ELF file: {what} at offset {offset:#x} lies beyond the end of the file")]
    Truncated { what: &'static str, offset: u64 },
    #[error("dynamically linked: it has a PT_INTERP program header requesting {interpreter:?}; build it static (+crt-static)")]
    Dynamic { interpreter: String },
}

const PT_INTERP: u32 = 3;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;

/// Accepts a statically linked ELF64 executable (static-pie included: that is an `ET_DYN`
/// file too, but without `PT_INTERP`).
pub fn check_static(bytes: &[u8]) -> Result<(), ElfError> {
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ElfError::NotElf);
    }
    if bytes.get(4) != Some(&ELFCLASS64) || bytes.get(5) != Some(&ELFDATA2LSB) {
        return Err(ElfError::Unsupported);
    }
    let table_offset = read(le_u64, bytes, 32, "e_phoff")?;
    let entry_size = read(le_u16, bytes, 54, "e_phentsize")?;
    let entry_count = read(le_u16, bytes, 56, "e_phnum")?;
    for index in 0..u64::from(entry_count) {
        let header = table_offset.saturating_add(index * u64::from(entry_size));
        let header = usize::try_from(header).map_err(|_| ElfError::Truncated {
            what: "a program header",
            offset: header,
        })?;
        if read(le_u32, bytes, header, "a program header")? == PT_INTERP {
            return Err(ElfError::Dynamic {
                interpreter: interpreter(bytes, header)?,
            });
        }
    }
    Ok(())
}

/// The path a `PT_INTERP` segment names, for the error message.
fn interpreter(bytes: &[u8], header: usize) -> Result<String, ElfError> {
    let offset = read(le_u64, bytes, header + 8, "PT_INTERP p_offset")?;
    let size = read(le_u64, bytes, header + 32, "PT_INTERP p_filesz")?;
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(offset.saturating_add(size)).ok())
        .and_then(|(start, end)| bytes.get(start..end))
        .ok_or(ElfError::Truncated {
            what: "the PT_INTERP segment",
            offset,
        })?;
    let path = range.split(|b| *b == 0).next().unwrap_or(range);
    Ok(String::from_utf8_lossy(path).into_owned())
}

/// A field read with one of the shared little-endian readers; a short file is an error naming
/// the field and where it should have been.
fn read<T>(
    reader: fn(&[u8], usize) -> Option<T>,
    bytes: &[u8],
    at: usize,
    what: &'static str,
) -> Result<T, ElfError> {
    reader(bytes, at).ok_or(ElfError::Truncated {
        what,
        offset: at as u64,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 header followed by program headers of the given types; a `PT_INTERP`
    /// one points at an interpreter path stored after the table.
    pub(crate) fn fake_elf(segment_types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = ELFCLASS64;
        bytes[5] = ELFDATA2LSB;
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&(segment_types.len() as u16).to_le_bytes());
        let interp_offset = 64 + 56 * segment_types.len() as u64;
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        for kind in segment_types {
            let mut header = [0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&interp_offset.to_le_bytes());
            header[32..40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&header);
        }
        bytes.extend_from_slice(interp);
        bytes
    }

    #[test]
    fn the_crt_static_test_binary_itself_is_accepted() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("reads itself");
        assert_eq!(check_static(&bytes), Ok(()), "{}", exe.display());
    }

    #[test]
    fn a_dynamic_system_binary_is_refused_naming_pt_interp() {
        let ls = std::fs::read("/bin/ls").expect("/bin/ls exists on the build host");
        let err = check_static(&ls).expect_err("ls is dynamic");
        assert!(
            matches!(&err, ElfError::Dynamic { interpreter } if interpreter.contains("ld-linux"))
        );
        let message = err.to_string();
        assert!(
            message.contains("PT_INTERP") && message.contains("dynamic"),
            "{message}"
        );
    }

    #[test]
    fn synthetic_headers_are_judged_by_their_segments() {
        const PT_LOAD: u32 = 1;
        assert_eq!(check_static(&fake_elf(&[PT_LOAD, PT_LOAD])), Ok(()));
        assert_eq!(
            check_static(&fake_elf(&[PT_LOAD, PT_INTERP])),
            Err(ElfError::Dynamic {
                interpreter: "/lib64/ld-linux-x86-64.so.2".into()
            })
        );
    }

    #[test]
    fn non_elf_foreign_and_truncated_files_are_refused() {
        assert_eq!(
            check_static(b"#!/bin/sh\nexec foo\n"),
            Err(ElfError::NotElf)
        );
        let mut elf32 = fake_elf(&[1]);
        elf32[4] = 1;
        assert_eq!(check_static(&elf32), Err(ElfError::Unsupported));
        let whole = fake_elf(&[1, PT_INTERP]);
        assert_eq!(
            check_static(&whole[..40]).map_err(|err| err.to_string()),
            Err(
                "truncated ELF file: e_phentsize at offset 0x36 lies beyond the end of the file"
                    .to_owned()
            )
        );
        assert!(matches!(
            check_static(&whole[..100]),
            Err(ElfError::Truncated { .. })
        ));
    }
}

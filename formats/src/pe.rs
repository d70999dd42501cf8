//! Named sections of a PE32+ image: how a Unified Kernel Image carries its parts. A UKI is
//! systemd-stub with the kernel, initrd, command line and os-release appended as sections
//! (`.linux`, `.initrd`, `.cmdline`, `.osrel`, ...), and the tools read them back by name
//! (which version an image is, which command line it boots) without running it.
//!
//! The image comes from an ESP or a download, so it is untrusted: every offset is read with
//! checked arithmetic and bounds-checked, and an image whose section table is not sound is
//! refused as a whole, with the field and offset that is wrong, rather than searched as far
//! as it goes. Only what finding sections needs is read (the DOS header's pointer to the PE
//! header, the COFF header, the optional header's magic and size, the section table);
//! nothing is relocated and no signature is checked here.
//!
//! The layout is the PE/COFF specification's; names are matched as systemd-boot does, on
//! the 8 bytes of the section header (images carry no string table for longer names).

use std::collections::HashSet;

use crate::bytes::{self, Block};

/// The optional header magic of PE32+ (64-bit) images; UEFI x86-64 and AArch64 images are
/// all PE32+.
pub const PE32_PLUS_MAGIC: u16 = 0x20b;

/// The PE layout constants below are shared with the build tool's UKI writer.
pub const DOS_MAGIC: &[u8; 2] = b"MZ";
/// Where the DOS header keeps `e_lfanew`, the offset of the PE signature.
pub const E_LFANEW_AT: usize = 0x3c;
pub const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";

// The COFF file header, right after the signature.
pub const COFF_HEADER_SIZE: usize = 20;
const NUMBER_OF_SECTIONS_AT: usize = 2;
const SIZE_OF_OPTIONAL_HEADER_AT: usize = 16;

/// The fixed fields of a PE32+ optional header, before its data directories.
const PE32_PLUS_FIXED_SIZE: u16 = 112;

// A section header: the table's 40-byte entry.
pub const SECTION_HEADER_SIZE: usize = 40;
const NAME_LEN: usize = 8;
const VIRTUAL_SIZE_AT: usize = 8;
const SIZE_OF_RAW_DATA_AT: usize = 16;
const POINTER_TO_RAW_DATA_AT: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image: no {signature:?} at offset {offset:#x}")]
    NotPe {
        signature: &'static str,
        offset: usize,
    },
    #[error("the image ends inside the {what} at offset {offset:#x}")]
    Truncated { what: &'static str, offset: usize },
    #[error("optional header magic {magic:#06x} is not PE32+ ({PE32_PLUS_MAGIC:#06x})")]
    NotPe32Plus { magic: u16 },
    #[error(
        "the optional header is {found} bytes, fewer than the {PE32_PLUS_FIXED_SIZE} of PE32+"
    )]
    OptionalHeaderSize { found: u16 },
    #[error("the name of section {index} (at offset {offset:#x}) is not printable ASCII")]
    SectionName { index: u16, offset: usize },
    #[error(
        "section {name:?} claims {size} bytes at offset {offset:#x}, past the end of the \
         {image}-byte image"
    )]
    SectionOutOfBounds {
        name: String,
        offset: u32,
        size: u32,
        image: usize,
    },
    #[error("section {name:?} appears more than once")]
    DuplicateSection { name: String },
    #[error("the image has no section {name:?}")]
    NoSection { name: String },
}

/// One entry of the section table, its data already bounds-checked.
struct Section<'a> {
    name: String,
    data: &'a [u8],
}

/// The bytes of the section called `name` (`.linux`, `.osrel`, ...): its raw data, cut to
/// its VirtualSize when that is smaller, since the tools pad raw data to the FileAlignment
/// and the padding is not part of the content. A VirtualSize larger than the raw data (a
/// section the loader zero-fills) gives the raw data only.
pub fn section<'a>(image: &'a [u8], name: &str) -> Result<&'a [u8], PeError> {
    sections(image)?
        .into_iter()
        .find(|section| section.name == name)
        .map(|section| section.data)
        .ok_or_else(|| PeError::NoSection {
            name: name.to_owned(),
        })
}

/// The names of the image's sections, in the order of its section table.
pub fn section_names(image: &[u8]) -> Result<Vec<String>, PeError> {
    Ok(sections(image)?
        .into_iter()
        .map(|section| section.name)
        .collect())
}

/// The whole section table, each entry checked, and no name twice: systemd-boot takes the
/// first section of a name, another reader might take the last, so an image that could
/// mean two things is refused. (systemd 257's multi-profile UKIs repeat names after each
/// `.profile` section; they are refused too until a reader of profiles exists.)
fn sections(image: &[u8]) -> Result<Vec<Section<'_>>, PeError> {
    let coff_at = pe_signature_end(image)?;
    let coff: [u8; COFF_HEADER_SIZE] = bytes::array(image, coff_at).ok_or(PeError::Truncated {
        what: "COFF file header",
        offset: coff_at,
    })?;
    let count = Block(&coff).le_u16::<NUMBER_OF_SECTIONS_AT>();
    let optional_size = Block(&coff).le_u16::<SIZE_OF_OPTIONAL_HEADER_AT>();
    let optional_at = coff_at + COFF_HEADER_SIZE;
    check_optional_header(image, optional_at, optional_size)?;
    // The optional header was found whole, so these sums stay within the image's length
    // plus the table's 2.6 MB at most: no overflow.
    let table_at = optional_at + usize::from(optional_size);
    let mut names = HashSet::new();
    let mut sections = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let at = table_at + usize::from(index) * SECTION_HEADER_SIZE;
        let section = read_section(image, index, at)?;
        if !names.insert(section.name.clone()) {
            return Err(PeError::DuplicateSection { name: section.name });
        }
        sections.push(section);
    }
    Ok(sections)
}

/// Checks the DOS header and the PE signature it points to; returns where the COFF header
/// starts. `e_lfanew` is 32 bits, so the offsets after it cannot overflow a 64-bit `usize`,
/// but they are checked all the same.
fn pe_signature_end(image: &[u8]) -> Result<usize, PeError> {
    if !image.starts_with(DOS_MAGIC) {
        return Err(PeError::NotPe {
            signature: "MZ",
            offset: 0,
        });
    }
    let pe_at = bytes::le_u32(image, E_LFANEW_AT).ok_or(PeError::Truncated {
        what: "DOS header",
        offset: 0,
    })? as usize;
    let found: Option<[u8; 4]> = bytes::array(image, pe_at);
    if found.as_ref() != Some(PE_SIGNATURE) {
        return Err(PeError::NotPe {
            signature: "PE\0\0",
            offset: pe_at,
        });
    }
    pe_at
        .checked_add(PE_SIGNATURE.len())
        .ok_or(PeError::Truncated {
            what: "COFF file header",
            offset: pe_at,
        })
}

/// The optional header must be PE32+ and whole: its magic says which format the section
/// table's neighbours are in, and its size says where the table starts.
fn check_optional_header(image: &[u8], at: usize, size: u16) -> Result<(), PeError> {
    let truncated = PeError::Truncated {
        what: "optional header",
        offset: at,
    };
    let magic = bytes::le_u16(image, at).ok_or(truncated.clone())?;
    if magic != PE32_PLUS_MAGIC {
        return Err(PeError::NotPe32Plus { magic });
    }
    if size < PE32_PLUS_FIXED_SIZE {
        return Err(PeError::OptionalHeaderSize { found: size });
    }
    match at.checked_add(usize::from(size)) {
        Some(end) if end <= image.len() => Ok(()),
        _ => Err(truncated),
    }
}

/// Reads the section header `index` at offset `at` and checks its raw data lies in the image.
fn read_section(image: &[u8], index: u16, at: usize) -> Result<Section<'_>, PeError> {
    let header: [u8; SECTION_HEADER_SIZE] = bytes::array(image, at).ok_or(PeError::Truncated {
        what: "section table",
        offset: at,
    })?;
    let header = Block(&header);
    let name = section_name(&header.array::<0, NAME_LEN>())
        .ok_or(PeError::SectionName { index, offset: at })?;
    let virtual_size = header.le_u32::<VIRTUAL_SIZE_AT>();
    let raw_size = header.le_u32::<SIZE_OF_RAW_DATA_AT>();
    let raw_offset = header.le_u32::<POINTER_TO_RAW_DATA_AT>();
    let start = raw_offset as usize;
    let raw = start
        .checked_add(raw_size as usize)
        .and_then(|end| image.get(start..end));
    let Some(raw) = raw else {
        return Err(PeError::SectionOutOfBounds {
            name,
            offset: raw_offset,
            size: raw_size,
            image: image.len(),
        });
    };
    let data = raw.get(..virtual_size as usize).unwrap_or(raw);
    Ok(Section { name, data })
}

/// The NUL-padded name (all 8 bytes when it has no NUL), if it is printable ASCII.
fn section_name(field: &[u8; NAME_LEN]) -> Option<String> {
    let end = field.iter().position(|&byte| byte == 0).unwrap_or(NAME_LEN);
    let name = &field[..end];
    if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::error_chain;
    use crate::fixtures::XorShift;

    /// Where the test images put the PE signature, and their file alignment.
    const PE_AT: usize = 0x80;
    const FILE_ALIGNMENT: usize = 0x200;
    /// A PE32+ optional header with its 16 data directories, as linkers write it.
    const OPTIONAL_SIZE: u16 = 240;
    const TABLE_AT: usize = PE_AT + 4 + COFF_HEADER_SIZE + OPTIONAL_SIZE as usize;

    fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A PE32+ image with `sections` (name, content) after its headers, each section's raw
    /// data padded to the file alignment and its VirtualSize the content's length, as
    /// objcopy and ukify lay out a UKI's sections.
    fn image(sections: &[(&[u8], &[u8])]) -> Vec<u8> {
        let headers_end = TABLE_AT + sections.len() * SECTION_HEADER_SIZE;
        let mut image = vec![0u8; headers_end.next_multiple_of(FILE_ALIGNMENT)];
        put(&mut image, 0, DOS_MAGIC);
        put(&mut image, E_LFANEW_AT, &(PE_AT as u32).to_le_bytes());
        put(&mut image, PE_AT, PE_SIGNATURE);
        let coff_at = PE_AT + 4;
        put(&mut image, coff_at, &0x8664u16.to_le_bytes());
        let count = sections.len() as u16;
        put(
            &mut image,
            coff_at + NUMBER_OF_SECTIONS_AT,
            &count.to_le_bytes(),
        );
        let optional_size_at = coff_at + SIZE_OF_OPTIONAL_HEADER_AT;
        put(&mut image, optional_size_at, &OPTIONAL_SIZE.to_le_bytes());
        let optional_at = coff_at + COFF_HEADER_SIZE;
        put(&mut image, optional_at, &PE32_PLUS_MAGIC.to_le_bytes());
        for (index, (name, content)) in sections.iter().enumerate() {
            let at = TABLE_AT + index * SECTION_HEADER_SIZE;
            let raw_at = image.len();
            let raw_size = content.len().next_multiple_of(FILE_ALIGNMENT);
            put(&mut image, at, name);
            put(
                &mut image,
                at + VIRTUAL_SIZE_AT,
                &(content.len() as u32).to_le_bytes(),
            );
            put(
                &mut image,
                at + SIZE_OF_RAW_DATA_AT,
                &(raw_size as u32).to_le_bytes(),
            );
            put(
                &mut image,
                at + POINTER_TO_RAW_DATA_AT,
                &(raw_at as u32).to_le_bytes(),
            );
            image.extend_from_slice(content);
            image.resize(raw_at + raw_size, 0);
        }
        image
    }

    fn uki() -> Vec<u8> {
        image(&[
            (b".text", &[0xc3; 100]),
            (b".osrel", b"ID=xorbang\nVERSION_ID=7\n"),
            (b".cmdline", b"quiet"),
            (b".sdmagic", b"#### LoaderInfo: systemd-stub ####\0"),
            (b".linux", &[0x4d, 0x5a, 0, 1, 2, 3]),
        ])
    }

    fn section_header_at(index: usize) -> usize {
        TABLE_AT + index * SECTION_HEADER_SIZE
    }

    #[test]
    fn sections_are_found_by_name_and_cut_to_their_virtual_size() {
        let uki = uki();
        assert_eq!(
            section_names(&uki),
            Ok(vec![
                ".text".to_owned(),
                ".osrel".to_owned(),
                ".cmdline".to_owned(),
                ".sdmagic".to_owned(),
                ".linux".to_owned(),
            ])
        );
        assert_eq!(
            section(&uki, ".osrel"),
            Ok(&b"ID=xorbang\nVERSION_ID=7\n"[..])
        );
        assert_eq!(section(&uki, ".cmdline"), Ok(&b"quiet"[..]));
        // All 8 bytes of the name, no NUL.
        assert_eq!(
            section(&uki, ".sdmagic"),
            Ok(&b"#### LoaderInfo: systemd-stub ####\0"[..])
        );
        assert_eq!(
            section(&uki, ".initrd"),
            Err(PeError::NoSection {
                name: ".initrd".into()
            })
        );
        // A name is the whole field: no prefix match, and longer names cannot be there.
        assert!(section(&uki, ".linu").is_err());
        assert!(section(&uki, ".linuxextra").is_err());
    }

    #[test]
    fn a_virtual_size_beyond_the_raw_data_gives_the_raw_data() {
        let mut uki = uki();
        let at = section_header_at(2) + VIRTUAL_SIZE_AT;
        put(&mut uki, at, &0x10_000u32.to_le_bytes());
        let cmdline = section(&uki, ".cmdline").expect("cmdline");
        assert_eq!(cmdline.len(), FILE_ALIGNMENT);
        assert!(cmdline.starts_with(b"quiet\0"));
        put(&mut uki, at, &0u32.to_le_bytes());
        assert_eq!(section(&uki, ".cmdline"), Ok(&b""[..]));
    }

    #[test]
    fn an_image_without_sections_has_no_names() {
        assert_eq!(section_names(&image(&[])), Ok(Vec::new()));
    }

    #[test]
    fn headers_that_are_not_pe32_plus_say_what_and_where() {
        let uki = uki();
        assert_eq!(
            section_names(b"ELF"),
            Err(PeError::NotPe {
                signature: "MZ",
                offset: 0
            })
        );
        assert_eq!(
            section_names(&uki[..0x3e]),
            Err(PeError::Truncated {
                what: "DOS header",
                offset: 0
            })
        );
        let mut bad = uki.clone();
        bad[PE_AT + 1] = b'X';
        assert_eq!(
            section_names(&bad).map_err(|error| error.to_string()),
            Err("not a PE image: no \"PE\\0\\0\" at offset 0x80".to_owned())
        );
        assert_eq!(
            section_names(&uki[..PE_AT + 10]),
            Err(PeError::Truncated {
                what: "COFF file header",
                offset: PE_AT + 4
            })
        );
        let mut pe32 = uki.clone();
        put(&mut pe32, PE_AT + 24, &0x10bu16.to_le_bytes());
        assert_eq!(
            section_names(&pe32).map_err(|error| error.to_string()),
            Err("optional header magic 0x010b is not PE32+ (0x020b)".to_owned())
        );
        let mut short = uki.clone();
        put(&mut short, PE_AT + 20, &16u16.to_le_bytes());
        assert_eq!(
            section_names(&short),
            Err(PeError::OptionalHeaderSize { found: 16 })
        );
        let headers_only = &image(&[])[..PE_AT + 24 + 100];
        assert_eq!(
            section_names(headers_only),
            Err(PeError::Truncated {
                what: "optional header",
                offset: PE_AT + 24
            })
        );
    }

    #[test]
    fn section_table_errors_name_the_section() {
        let uki = uki();
        let mut more = uki.clone();
        put(&mut more, PE_AT + 6, &0xffffu16.to_le_bytes());
        assert!(matches!(
            section_names(&more),
            Err(PeError::SectionName { index: 5, .. }
                | PeError::Truncated {
                    what: "section table",
                    ..
                })
        ));
        let mut beyond = uki.clone();
        put(
            &mut beyond,
            section_header_at(4) + SIZE_OF_RAW_DATA_AT,
            &0x1000u32.to_le_bytes(),
        );
        let error = section(&beyond, ".osrel").expect_err("table is broken");
        assert_eq!(
            error.to_string(),
            format!(
                "section \".linux\" claims 4096 bytes at offset {:#x}, past the end of the \
                 {}-byte image",
                uki.len() - FILE_ALIGNMENT,
                uki.len()
            )
        );
        let mut wraps = uki.clone();
        put(
            &mut wraps,
            section_header_at(0) + POINTER_TO_RAW_DATA_AT,
            &u32::MAX.to_le_bytes(),
        );
        put(
            &mut wraps,
            section_header_at(0) + SIZE_OF_RAW_DATA_AT,
            &u32::MAX.to_le_bytes(),
        );
        assert!(matches!(
            section_names(&wraps),
            Err(PeError::SectionOutOfBounds { ref name, .. }) if name == ".text"
        ));
        let mut unnamed = uki.clone();
        put(&mut unnamed, section_header_at(1), &[0; 8]);
        assert_eq!(
            section_names(&unnamed),
            Err(PeError::SectionName {
                index: 1,
                offset: section_header_at(1)
            })
        );
        put(&mut unnamed, section_header_at(1), b".os rel\0");
        assert!(matches!(
            section_names(&unnamed),
            Err(PeError::SectionName { index: 1, .. })
        ));
    }

    #[test]
    fn a_name_twice_is_refused() {
        let twice = image(&[(b".cmdline", b"quiet"), (b".cmdline", b"rw")]);
        let error = section(&twice, ".cmdline").expect_err("ambiguous");
        assert_eq!(
            error,
            PeError::DuplicateSection {
                name: ".cmdline".into()
            }
        );
        assert_eq!(
            error_chain(&error),
            "section \".cmdline\" appears more than once"
        );
    }

    /// The stub every UKI is built from, as the distribution ships it.
    #[test]
    fn the_systemd_stub_has_its_sections() {
        let path = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
        let Ok(stub) = std::fs::read(path) else {
            eprintln!("{path} not installed: skipping");
            return;
        };
        let names = section_names(&stub).expect("the stub parses");
        for expected in [".text", ".sbat", ".sdmagic"] {
            assert!(names.iter().any(|name| name == expected), "{names:?}");
        }
        let magic = section(&stub, ".sdmagic").expect(".sdmagic");
        assert!(
            magic.starts_with(b"#### LoaderInfo: systemd-stub ") && magic.ends_with(b" ####\0"),
            "{:?}",
            String::from_utf8_lossy(magic)
        );
        let sbat = section(&stub, ".sbat").expect(".sbat");
        assert!(sbat.starts_with(b"sbat,1,"), "{sbat:?}");
    }

    /// The error's variant name, to show which checks a fuzz loop reached.
    fn kind(error: &PeError) -> String {
        format!("{error:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A field of the headers that matters, and values near the ones that break it.
    fn damage(rng: &mut XorShift, image: &mut Vec<u8>, sections: usize) {
        let header = section_header_at(rng.below(sections.max(1)));
        let fields = [
            E_LFANEW_AT,
            PE_AT + 6,
            PE_AT + 20,
            PE_AT + 24,
            header,
            header + VIRTUAL_SIZE_AT,
            header + SIZE_OF_RAW_DATA_AT,
            header + POINTER_TO_RAW_DATA_AT,
        ];
        match rng.below(5) {
            0 => {
                let at = *rng.pick(&fields) + rng.below(4);
                let value = *rng.pick(&[0u32, 1, 0x3c, 0x80, 0x20b, 0x200, 0xffff, u32::MAX]);
                if let Some(field) = image.get_mut(at..at + 4) {
                    field.copy_from_slice(&value.to_le_bytes());
                }
            }
            1 => image.truncate(rng.below(image.len() + 1)),
            2 => {
                let at = rng.below(image.len().max(1));
                if let Some(byte) = image.get_mut(at) {
                    *byte ^= 1 << rng.below(8);
                }
            }
            3 => {
                let at = *rng.pick(&fields) + rng.below(8);
                if let Some(byte) = image.get_mut(at) {
                    *byte = rng.next_u64() as u8;
                }
            }
            _ => {
                let at = header + rng.below(NAME_LEN);
                let name = *rng.pick(&[&b".osrel\0\0"[..], b".text\0\0\0", b"\0"]);
                if let Some(field) = image.get_mut(at..at + name.len()) {
                    field.copy_from_slice(name);
                }
            }
        }
    }

    /// Damaged images never panic the parser, whatever parses is consistent with the
    /// image (each section's bytes lie inside it), and every error kind is reached.
    #[test]
    fn damaged_images_never_panic_and_every_error_is_reachable() {
        const ITERATIONS: usize = 20_000;
        let mut rng = XorShift(0x7065_3332_2b5e_ed01);
        let names: [&[u8]; 5] = [b".text", b".osrel", b".cmdline", b".linux", b".initrd"];
        let mut kinds = std::collections::BTreeSet::new();
        let mut parsed = 0;
        for _ in 0..ITERATIONS {
            let count = rng.below(names.len() + 1);
            let contents: Vec<Vec<u8>> = (0..count)
                .map(|_| {
                    let len = rng.below(700);
                    rng.bytes(len)
                })
                .collect();
            let sections: Vec<(&[u8], &[u8])> = names
                .iter()
                .zip(&contents)
                .map(|(name, content)| (*name, content.as_slice()))
                .collect();
            let mut bytes = image(&sections);
            for _ in 0..=rng.below(3) {
                damage(&mut rng, &mut bytes, count);
            }
            match section_names(&bytes) {
                Ok(found) => {
                    parsed += 1;
                    for name in &found {
                        let data = section(&bytes, name).expect("a listed section is found");
                        let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
                        assert!(start + data.len() <= bytes.len());
                    }
                }
                Err(error) => {
                    assert_eq!(section(&bytes, ".text").err(), Some(error.clone()));
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!("{parsed} of {ITERATIONS} damaged images parsed; errors: {kinds:?}");
        assert!(parsed > ITERATIONS / 10, "{parsed} parsed");
        for expected in [
            "NotPe",
            "Truncated",
            "NotPe32Plus",
            "OptionalHeaderSize",
            "SectionName",
            "SectionOutOfBounds",
            "DuplicateSection",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x0bad_c0de_0000_0001);
        for _ in 0..20_000 {
            let len = rng.below(600);
            let mut bytes = rng.bytes(len);
            if rng.one_in(2) && bytes.len() > 0x40 {
                bytes[..2].copy_from_slice(DOS_MAGIC);
                let pe_at = rng.below(bytes.len() - 4) as u32;
                bytes[E_LFANEW_AT..E_LFANEW_AT + 4].copy_from_slice(&pe_at.to_le_bytes());
                let pe_at = pe_at as usize;
                bytes[pe_at..pe_at + 4].copy_from_slice(PE_SIGNATURE);
            }
            if let Ok(names) = section_names(&bytes) {
                for name in names {
                    assert!(section(&bytes, &name).is_ok());
                }
            }
        }
    }
}

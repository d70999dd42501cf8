//! Just enough of PE/COFF (the format of EFI applications) to turn the systemd stub into a
//! Unified Kernel Image: parse a PE32+ x86-64 EFI application and append sections to it, the
//! way `ukify` lays them out (after the stub's last section, addresses aligned to
//! SectionAlignment, file offsets to FileAlignment). The stub's own sections and bytes are
//! never moved: its code refers to them by address.
//!
//! Layout references: the Microsoft PE/COFF specification ("PE Format") and systemd's
//! `ukify.py` (`pe_add_sections`).

use std::fmt;

use xorbang_formats::bytes::{array, le_u16, le_u32};

use xorbang_formats::pe::{
    COFF_HEADER_SIZE, DOS_MAGIC, E_LFANEW_AT as E_LFANEW, PE32_PLUS_MAGIC, PE_SIGNATURE,
    SECTION_HEADER_SIZE,
};

const SYMBOL_SIZE: u64 = 18;

const MACHINE_X86_64: u16 = 0x8664;
const SUBSYSTEM_EFI_APPLICATION: u16 = 10;
const IMAGE_FILE_LOCAL_SYMS_STRIPPED: u16 = 0x0008;
/// Index of the certificate table (Authenticode signatures) among the data directories.
const CERTIFICATE_DIRECTORY: u32 = 4;

pub const IMAGE_SCN_CNT_CODE: u32 = 0x0000_0020;
pub const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
pub const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;

// Field offsets within the COFF header.
const COFF_MACHINE: usize = 0;
const COFF_NUMBER_OF_SECTIONS: usize = 2;
const COFF_TIME_DATE_STAMP: usize = 4;
const COFF_POINTER_TO_SYMBOL_TABLE: usize = 8;
const COFF_NUMBER_OF_SYMBOLS: usize = 12;
const COFF_SIZE_OF_OPTIONAL_HEADER: usize = 16;
const COFF_CHARACTERISTICS: usize = 18;

// Field offsets within the PE32+ optional header.
const OPT_MAGIC: usize = 0;
const OPT_SIZE_OF_CODE: usize = 4;
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_SUBSYSTEM: usize = 68;
const OPT_NUMBER_OF_RVA_AND_SIZES: usize = 108;
const OPT_DATA_DIRECTORIES: usize = 112;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE file: no MZ signature")]
    NoDosSignature,
    #[error("not a PE file: no PE signature at offset {offset:#x} (e_lfanew)")]
    NoPeSignature { offset: u64 },
    #[error("truncated PE file: {what} at offset {offset:#x} lies beyond the end of the file")]
    Truncated { what: &'static str, offset: u64 },
    #[error("not an x86-64 image: COFF machine type {0:#06x}, expected 0x8664")]
    Machine(u16),
    #[error("not a PE32+ image: optional header magic {0:#06x}, expected 0x020b")]
    NotPe32Plus(u16),
    #[error("not an EFI application: subsystem {0}, expected 10")]
    NotEfiApplication(u16),
    #[error("the optional header is {0} bytes, too small for PE32+")]
    OptionalHeaderSize(u16),
    #[error("invalid {what} {value:#x}: not a power of two")]
    Alignment { what: &'static str, value: u32 },
    #[error(
        "no room for {count} more section headers: the section table would end at {needed:#x}, \
         but the headers end at {available:#x} (SizeOfHeaders or the first section's data); \
         the stub's sections cannot be moved, use a stub linked with more header space"
    )]
    NoHeaderRoom {
        count: usize,
        needed: u64,
        available: u64,
    },
    #[error(
        "no room for {count} more section headers: the header area after the section table is \
         not empty at offset {offset:#x}"
    )]
    HeaderAreaInUse { count: usize, offset: u64 },
    #[error("the image already has a {0} section")]
    DuplicateSection(String),
    #[error("section name {0:?} is longer than 8 bytes")]
    SectionName(String),
    #[error("section {0} would be empty")]
    EmptySection(String),
    #[error(
        "the certificate table (at {offset:#x}, {size} bytes) is not at the end of the file; \
         cannot remove the old signature"
    )]
    CertificateTable { offset: u64, size: u64 },
    #[error("the image would exceed 4 GiB, the limit of PE32+ sizes and addresses")]
    TooLarge,
    #[error("too many sections for a COFF header")]
    TooManySections,
}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    pub name: [u8; 8],
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

impl SectionHeader {
    /// The name without its NUL padding.
    pub fn name(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// Where the section's memory ends. A zero VirtualSize means "as much as the raw data",
    /// as loaders read it.
    fn memory_end(&self) -> u64 {
        let size = match self.virtual_size {
            0 => self.size_of_raw_data,
            size => size,
        };
        u64::from(self.virtual_address) + u64::from(size)
    }

    fn encode(&self) -> [u8; SECTION_HEADER_SIZE] {
        let mut bytes = [0; SECTION_HEADER_SIZE];
        bytes[..8].copy_from_slice(&self.name);
        bytes[8..12].copy_from_slice(&self.virtual_size.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.virtual_address.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.size_of_raw_data.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.pointer_to_raw_data.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.characteristics.to_le_bytes());
        bytes
    }
}

impl fmt::Display for SectionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:#x} ({} bytes)",
            self.name(),
            self.virtual_address,
            self.virtual_size
        )
    }
}

/// A byte range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

impl Region {
    fn end(self) -> u64 {
        self.offset + self.size
    }
}

/// Where the headers of a PE32+ EFI application are, and what of them matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeLayout {
    coff: usize,
    optional: usize,
    section_table: usize,
    pub sections: Vec<SectionHeader>,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    pub size_of_image: u32,
    pub time_date_stamp: u32,
    pub checksum: u32,
    /// The COFF symbol table with its string table; image files should have none, but
    /// Debian's systemd 252 stub still carries one at the end of the file.
    pub symbol_table: Option<Region>,
    /// The Authenticode signatures, if the image is signed.
    pub certificate_table: Option<Region>,
}

/// Parses the headers of a PE32+ x86-64 EFI application.
pub fn parse(bytes: &[u8]) -> Result<PeLayout, PeError> {
    if !bytes.starts_with(DOS_MAGIC) {
        return Err(PeError::NoDosSignature);
    }
    let pe = to_usize(read(le_u32, bytes, E_LFANEW, "e_lfanew")?)?;
    if read(array::<4>, bytes, pe, "the PE signature").ok() != Some(*PE_SIGNATURE) {
        return Err(PeError::NoPeSignature { offset: pe as u64 });
    }
    let coff = pe + PE_SIGNATURE.len();
    let machine = read(le_u16, bytes, coff + COFF_MACHINE, "the COFF header")?;
    if machine != MACHINE_X86_64 {
        return Err(PeError::Machine(machine));
    }
    let optional = coff + COFF_HEADER_SIZE;
    check_optional_header(bytes, optional)?;
    let optional_size = read(
        le_u16,
        bytes,
        coff + COFF_SIZE_OF_OPTIONAL_HEADER,
        "the COFF header",
    )?;
    if usize::from(optional_size) < OPT_DATA_DIRECTORIES {
        return Err(PeError::OptionalHeaderSize(optional_size));
    }
    let section_table = optional + usize::from(optional_size);
    let count = read(
        le_u16,
        bytes,
        coff + COFF_NUMBER_OF_SECTIONS,
        "the COFF header",
    )?;
    let sections = (0..usize::from(count))
        .map(|index| section_header(bytes, section_table + index * SECTION_HEADER_SIZE))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeLayout {
        coff,
        optional,
        section_table,
        sections,
        section_alignment: alignment(bytes, optional + OPT_SECTION_ALIGNMENT, "SectionAlignment")?,
        file_alignment: alignment(bytes, optional + OPT_FILE_ALIGNMENT, "FileAlignment")?,
        size_of_headers: read(
            le_u32,
            bytes,
            optional + OPT_SIZE_OF_HEADERS,
            "SizeOfHeaders",
        )?,
        size_of_image: read(le_u32, bytes, optional + OPT_SIZE_OF_IMAGE, "SizeOfImage")?,
        time_date_stamp: read(
            le_u32,
            bytes,
            coff + COFF_TIME_DATE_STAMP,
            "the COFF header",
        )?,
        checksum: read(le_u32, bytes, optional + OPT_CHECKSUM, "CheckSum")?,
        symbol_table: symbol_table(bytes, coff)?,
        certificate_table: certificate_table(bytes, optional, optional_size)?,
    })
}

fn check_optional_header(bytes: &[u8], optional: usize) -> Result<(), PeError> {
    let magic = read(le_u16, bytes, optional + OPT_MAGIC, "the optional header")?;
    if magic != PE32_PLUS_MAGIC {
        return Err(PeError::NotPe32Plus(magic));
    }
    let subsystem = read(
        le_u16,
        bytes,
        optional + OPT_SUBSYSTEM,
        "the optional header",
    )?;
    if subsystem != SUBSYSTEM_EFI_APPLICATION {
        return Err(PeError::NotEfiApplication(subsystem));
    }
    Ok(())
}

fn alignment(bytes: &[u8], at: usize, what: &'static str) -> Result<u32, PeError> {
    let value = read(le_u32, bytes, at, what)?;
    if value.is_power_of_two() {
        Ok(value)
    } else {
        Err(PeError::Alignment { what, value })
    }
}

fn section_header(bytes: &[u8], at: usize) -> Result<SectionHeader, PeError> {
    let what = "the section table";
    Ok(SectionHeader {
        name: read(array, bytes, at, what)?,
        virtual_size: read(le_u32, bytes, at + 8, what)?,
        virtual_address: read(le_u32, bytes, at + 12, what)?,
        size_of_raw_data: read(le_u32, bytes, at + 16, what)?,
        pointer_to_raw_data: read(le_u32, bytes, at + 20, what)?,
        characteristics: read(le_u32, bytes, at + 36, what)?,
    })
}

/// The symbol table is 18-byte records followed by a string table whose first 4 bytes give
/// its own size.
fn symbol_table(bytes: &[u8], coff: usize) -> Result<Option<Region>, PeError> {
    let offset = read(
        le_u32,
        bytes,
        coff + COFF_POINTER_TO_SYMBOL_TABLE,
        "the COFF header",
    )?;
    if offset == 0 {
        return Ok(None);
    }
    let symbols = read(
        le_u32,
        bytes,
        coff + COFF_NUMBER_OF_SYMBOLS,
        "the COFF header",
    )?;
    let strings_at = u64::from(offset) + SYMBOL_SIZE * u64::from(symbols);
    let strings = usize::try_from(strings_at)
        .ok()
        .and_then(|at| le_u32(bytes, at))
        .ok_or(PeError::Truncated {
            what: "the symbol table",
            offset: strings_at,
        })?;
    let region = Region {
        offset: offset.into(),
        size: strings_at - u64::from(offset) + u64::from(strings),
    };
    if region.end() > bytes.len() as u64 {
        return Err(PeError::Truncated {
            what: "the string table",
            offset: strings_at,
        });
    }
    Ok(Some(region))
}

/// The certificate table directory entry holds a file offset, not an address. An entry
/// counted by NumberOfRvaAndSizes but outside the optional header does not exist.
fn certificate_table(
    bytes: &[u8],
    optional: usize,
    optional_size: u16,
) -> Result<Option<Region>, PeError> {
    let what = "the optional header";
    let entries = read(le_u32, bytes, optional + OPT_NUMBER_OF_RVA_AND_SIZES, what)?;
    let entry_end = certificate_entry(optional) + 8;
    if entries <= CERTIFICATE_DIRECTORY || entry_end > optional + usize::from(optional_size) {
        return Ok(None);
    }
    let entry = certificate_entry(optional);
    let offset = read(le_u32, bytes, entry, "the data directories")?;
    let size = read(le_u32, bytes, entry + 4, "the data directories")?;
    if offset == 0 && size == 0 {
        return Ok(None);
    }
    Ok(Some(Region {
        offset: offset.into(),
        size: size.into(),
    }))
}

fn certificate_entry(optional: usize) -> usize {
    optional + OPT_DATA_DIRECTORIES + 8 * CERTIFICATE_DIRECTORY as usize
}

/// A section to append: its name (at most 8 bytes), its contents and its characteristics.
#[derive(Debug, Clone, Copy)]
pub struct NewSection<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub characteristics: u32,
}

/// An image with sections appended, and their headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub image: Vec<u8>,
    pub sections: Vec<SectionHeader>,
}

/// The image with `new` appended as sections, in order, after all of the image's own. The
/// old signature and a trailing symbol table are dropped, the checksum zeroed (signing
/// recomputes it) and the COFF timestamp set to `timestamp`, so the result depends on the
/// inputs only.
pub fn append_sections(
    image: &[u8],
    new: &[NewSection<'_>],
    timestamp: u32,
) -> Result<Appended, PeError> {
    let layout = parse(image)?;
    let names = new
        .iter()
        .map(|section| section_name(&layout, section))
        .collect::<Result<Vec<_>, _>>()?;
    check_header_room(image, &layout, new.len())?;
    let kept = kept_length(image, &layout)?;
    let placed = place_sections(&layout, kept, new, &names)?;
    let mut out = image[..to_usize(kept)?].to_vec();
    for (header, section) in placed.iter().zip(new) {
        out.resize(to_usize(header.pointer_to_raw_data)?, 0);
        out.extend_from_slice(section.data);
        out.resize(
            to_usize(header.pointer_to_raw_data)? + to_usize(header.size_of_raw_data)?,
            0,
        );
    }
    update_headers(&mut out, &layout, kept, &placed, timestamp)?;
    Ok(Appended {
        image: out,
        sections: placed,
    })
}

/// The 8-byte NUL-padded name, checked to be new to the image.
fn section_name(layout: &PeLayout, section: &NewSection<'_>) -> Result<[u8; 8], PeError> {
    if section.data.is_empty() {
        return Err(PeError::EmptySection(section.name.to_owned()));
    }
    let bytes = section.name.as_bytes();
    let mut name = [0; 8];
    name.get_mut(..bytes.len())
        .ok_or_else(|| PeError::SectionName(section.name.to_owned()))?
        .copy_from_slice(bytes);
    if layout.sections.iter().any(|existing| existing.name == name) {
        return Err(PeError::DuplicateSection(section.name.to_owned()));
    }
    Ok(name)
}

/// The section table grows in place: the headers end at SizeOfHeaders or where the first
/// section's data starts, whichever is first, and the space up to there must be unused.
fn check_header_room(image: &[u8], layout: &PeLayout, count: usize) -> Result<(), PeError> {
    let table_end = layout.section_table + layout.sections.len() * SECTION_HEADER_SIZE;
    let needed = table_end + count * SECTION_HEADER_SIZE;
    let first_data = layout
        .sections
        .iter()
        .filter(|section| section.size_of_raw_data > 0)
        .map(|section| section.pointer_to_raw_data)
        .min()
        .unwrap_or(layout.size_of_headers);
    let available = layout.size_of_headers.min(first_data);
    if needed as u64 > u64::from(available) {
        return Err(PeError::NoHeaderRoom {
            count,
            needed: needed as u64,
            available: available.into(),
        });
    }
    let area = image
        .get(table_end..needed)
        .ok_or(truncated("the header area", table_end))?;
    match area.iter().position(|byte| *byte != 0) {
        Some(at) => Err(PeError::HeaderAreaInUse {
            count,
            offset: (table_end + at) as u64,
        }),
        None => Ok(()),
    }
}

/// How much of the image to keep: all of it but the certificate table (which must be last,
/// as Authenticode wants it) and a symbol table right before it (ukify strips it too; it
/// would otherwise sit between the stub's data and ours).
fn kept_length(image: &[u8], layout: &PeLayout) -> Result<u64, PeError> {
    let mut kept = image.len() as u64;
    if let Some(certificates) = layout.certificate_table {
        if certificates.end() != kept {
            return Err(PeError::CertificateTable {
                offset: certificates.offset,
                size: certificates.size,
            });
        }
        kept = certificates.offset;
    }
    if let Some(symbols) = layout.symbol_table.filter(|table| table.end() == kept) {
        kept = symbols.offset;
    }
    Ok(kept)
}

/// Headers for the new sections: memory after everything the image already maps (its
/// sections and SizeOfImage, which may reach further: 0x19300 in Debian's stub, whose last
/// section ends at 0x19134), file data after everything it keeps, each aligned as the image
/// says.
fn place_sections(
    layout: &PeLayout,
    kept: u64,
    new: &[NewSection<'_>],
    names: &[[u8; 8]],
) -> Result<Vec<SectionHeader>, PeError> {
    let mapped = layout
        .sections
        .iter()
        .map(SectionHeader::memory_end)
        .fold(u64::from(layout.size_of_image), u64::max);
    let mut address = align_up(mapped, layout.section_alignment);
    let mut offset = align_up(kept, layout.file_alignment);
    let mut placed = Vec::with_capacity(new.len());
    for (section, name) in new.iter().zip(names) {
        let size = section.data.len() as u64;
        let raw_size = align_up(size, layout.file_alignment);
        placed.push(SectionHeader {
            name: *name,
            virtual_size: to_u32(size)?,
            virtual_address: to_u32(address)?,
            size_of_raw_data: to_u32(raw_size)?,
            pointer_to_raw_data: to_u32(offset)?,
            characteristics: section.characteristics,
        });
        address = align_up(address + size, layout.section_alignment);
        offset += raw_size;
    }
    Ok(placed)
}

fn update_headers(
    out: &mut [u8],
    layout: &PeLayout,
    kept: u64,
    placed: &[SectionHeader],
    timestamp: u32,
) -> Result<(), PeError> {
    let (coff, optional) = (layout.coff, layout.optional);
    let count = u16::try_from(layout.sections.len() + placed.len())
        .map_err(|_| PeError::TooManySections)?;
    put(out, coff + COFF_NUMBER_OF_SECTIONS, &count.to_le_bytes())?;
    put(out, coff + COFF_TIME_DATE_STAMP, &timestamp.to_le_bytes())?;
    if layout
        .symbol_table
        .is_some_and(|table| table.offset == kept)
    {
        mark_symbols_stripped(out, coff)?;
    }
    add_sizes(out, optional, placed)?;
    let image_size = placed
        .last()
        .map(|last| align_up(last.memory_end(), layout.section_alignment))
        .unwrap_or(layout.size_of_image.into());
    put(
        out,
        optional + OPT_SIZE_OF_IMAGE,
        &to_u32(image_size)?.to_le_bytes(),
    )?;
    put(out, optional + OPT_CHECKSUM, &0u32.to_le_bytes())?;
    if layout.certificate_table.is_some() {
        put(out, certificate_entry(optional), &[0; 8])?;
    }
    let mut at = layout.section_table + layout.sections.len() * SECTION_HEADER_SIZE;
    for header in placed {
        put(out, at, &header.encode())?;
        at += SECTION_HEADER_SIZE;
    }
    Ok(())
}

fn mark_symbols_stripped(out: &mut [u8], coff: usize) -> Result<(), PeError> {
    put(
        out,
        coff + COFF_POINTER_TO_SYMBOL_TABLE,
        &0u32.to_le_bytes(),
    )?;
    put(out, coff + COFF_NUMBER_OF_SYMBOLS, &0u32.to_le_bytes())?;
    let flags = read(le_u16, out, coff + COFF_CHARACTERISTICS, "the COFF header")?;
    let flags = flags | IMAGE_FILE_LOCAL_SYMS_STRIPPED;
    put(out, coff + COFF_CHARACTERISTICS, &flags.to_le_bytes())
}

/// SizeOfCode and SizeOfInitializedData are sums over the sections of each kind.
fn add_sizes(out: &mut [u8], optional: usize, placed: &[SectionHeader]) -> Result<(), PeError> {
    for (kind, field_at) in [
        (IMAGE_SCN_CNT_CODE, OPT_SIZE_OF_CODE),
        (IMAGE_SCN_CNT_INITIALIZED_DATA, OPT_SIZE_OF_INITIALIZED_DATA),
    ] {
        let added: u64 = placed
            .iter()
            .filter(|header| header.characteristics & kind != 0)
            .map(|header| u64::from(header.size_of_raw_data))
            .sum();
        let total = u64::from(read(
            le_u32,
            out,
            optional + field_at,
            "the optional header",
        )?) + added;
        put(out, optional + field_at, &to_u32(total)?.to_le_bytes())?;
    }
    Ok(())
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), PeError> {
    at.checked_add(bytes.len())
        .and_then(|end| out.get_mut(at..end))
        .ok_or(truncated("the headers", at))?
        .copy_from_slice(bytes);
    Ok(())
}

fn align_up(value: u64, alignment: u32) -> u64 {
    value.next_multiple_of(u64::from(alignment))
}

fn to_u32(value: u64) -> Result<u32, PeError> {
    u32::try_from(value).map_err(|_| PeError::TooLarge)
}

fn to_usize<T: TryInto<usize>>(value: T) -> Result<usize, PeError> {
    value.try_into().map_err(|_| PeError::TooLarge)
}

/// A field read with one of the shared little-endian readers; a short file is an error naming
/// the field and where it should have been.
fn read<T>(
    reader: fn(&[u8], usize) -> Option<T>,
    bytes: &[u8],
    at: usize,
    what: &'static str,
) -> Result<T, PeError> {
    reader(bytes, at).ok_or(truncated(what, at))
}

fn truncated(what: &'static str, at: usize) -> PeError {
    PeError::Truncated {
        what,
        offset: at as u64,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const PE_AT: usize = 0x80;
    const OPTIONAL_SIZE: usize = 240;
    const TABLE_AT: usize = PE_AT + 4 + COFF_HEADER_SIZE + OPTIONAL_SIZE;

    /// A small PE32+ EFI application like the systemd stub: headers in 0x400 bytes, two
    /// sections (.text, .data), section alignment 0x1000, file alignment 0x200.
    pub(crate) fn fake_stub() -> Vec<u8> {
        let mut bytes = vec![0u8; 0x400];
        bytes[..2].copy_from_slice(DOS_MAGIC);
        set(&mut bytes, E_LFANEW, &(PE_AT as u32).to_le_bytes());
        set(&mut bytes, PE_AT, PE_SIGNATURE);
        let coff = PE_AT + 4;
        set(&mut bytes, coff, &MACHINE_X86_64.to_le_bytes());
        set(&mut bytes, coff + 2, &2u16.to_le_bytes());
        set(&mut bytes, coff + 4, &0x6543_2100u32.to_le_bytes());
        set(&mut bytes, coff + 16, &(OPTIONAL_SIZE as u16).to_le_bytes());
        let optional = coff + COFF_HEADER_SIZE;
        for (at, value) in [
            (OPT_SIZE_OF_CODE, 0x200),
            (OPT_SIZE_OF_INITIALIZED_DATA, 0x200),
            (OPT_SECTION_ALIGNMENT, 0x1000),
            (OPT_FILE_ALIGNMENT, 0x200),
            (OPT_SIZE_OF_IMAGE, 0x3000),
            (OPT_SIZE_OF_HEADERS, 0x400),
            (OPT_CHECKSUM, 0x1234),
            (OPT_NUMBER_OF_RVA_AND_SIZES, 16),
        ] {
            set(&mut bytes, optional + at, &u32::to_le_bytes(value));
        }
        set(&mut bytes, optional, &PE32_PLUS_MAGIC.to_le_bytes());
        let subsystem = SUBSYSTEM_EFI_APPLICATION.to_le_bytes();
        set(&mut bytes, optional + OPT_SUBSYSTEM, &subsystem);
        let text = header(".text", 0x1000, 0x180, 0x400, 0x6000_0020);
        let data = header(".data", 0x2000, 0x10, 0x600, 0xc000_0040);
        set(&mut bytes, TABLE_AT, &text.encode());
        set(&mut bytes, TABLE_AT + SECTION_HEADER_SIZE, &data.encode());
        bytes.resize(0x800, 0);
        bytes[0x400..0x580].fill(0xc3);
        bytes[0x600..0x610].fill(0xda);
        bytes
    }

    fn set(bytes: &mut [u8], at: usize, value: &[u8]) {
        put(bytes, at, value).expect("in bounds");
    }

    fn header(name: &str, address: u32, size: u32, offset: u32, flags: u32) -> SectionHeader {
        let mut padded = [0; 8];
        padded[..name.len()].copy_from_slice(name.as_bytes());
        SectionHeader {
            name: padded,
            virtual_size: size,
            virtual_address: address,
            size_of_raw_data: size.next_multiple_of(0x200),
            pointer_to_raw_data: offset,
            characteristics: flags,
        }
    }

    fn data(name: &'static str, data: &'static [u8]) -> NewSection<'static> {
        NewSection {
            name,
            data,
            characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        }
    }

    fn optional_u32(bytes: &[u8], at: usize) -> u32 {
        read(le_u32, bytes, PE_AT + 4 + COFF_HEADER_SIZE + at, "test").expect("field")
    }

    #[test]
    fn the_synthetic_stub_parses() {
        let layout = parse(&fake_stub()).expect("parses");
        assert_eq!(layout.section_table, TABLE_AT);
        assert_eq!(layout.sections.len(), 2);
        assert_eq!(layout.sections[0].name(), ".text");
        assert_eq!(layout.sections[1].to_string(), ".data at 0x2000 (16 bytes)");
        assert_eq!(
            (layout.section_alignment, layout.file_alignment),
            (0x1000, 0x200)
        );
        assert_eq!(
            (layout.size_of_headers, layout.size_of_image),
            (0x400, 0x3000)
        );
        assert_eq!(
            (layout.symbol_table, layout.certificate_table),
            (None, None)
        );
    }

    #[test]
    fn sections_are_appended_aligned_after_the_stubs_own() {
        let stub = fake_stub();
        let big = [0x11u8; 0x1234];
        let new = [
            data(".osrel", b"ID=xorbang\n"),
            NewSection {
                name: ".linux",
                data: &big,
                characteristics: IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ,
            },
        ];
        let out = append_sections(&stub, &new, 7).expect("appends").image;
        let layout = parse(&out).expect("output parses");
        assert_eq!(
            layout.sections[..2],
            parse(&stub).expect("stub").sections[..]
        );
        let osrel = &layout.sections[2];
        assert_eq!(osrel.name(), ".osrel");
        assert_eq!((osrel.virtual_address, osrel.virtual_size), (0x3000, 11));
        assert_eq!(
            (osrel.pointer_to_raw_data, osrel.size_of_raw_data),
            (0x800, 0x200)
        );
        let linux = &layout.sections[3];
        assert_eq!(
            (linux.virtual_address, linux.virtual_size),
            (0x4000, 0x1234)
        );
        assert_eq!(
            (linux.pointer_to_raw_data, linux.size_of_raw_data),
            (0xa00, 0x1400)
        );
        assert_eq!(&out[0x800..0x80b], b"ID=xorbang\n");
        assert!(out[0x80b..0xa00].iter().all(|b| *b == 0));
        assert_eq!(&out[0xa00..0xa00 + big.len()], &big);
        assert_eq!(out.len(), 0xa00 + 0x1400);
        // The stub's bytes are untouched outside the header fields that must change.
        assert_eq!(out[0x400..0x800], stub[0x400..0x800]);
        assert_eq!(
            (layout.size_of_image, layout.size_of_headers),
            (0x6000, 0x400)
        );
        assert_eq!((layout.time_date_stamp, layout.checksum), (7, 0));
        assert_eq!(optional_u32(&out, OPT_SIZE_OF_CODE), 0x200 + 0x1400);
        assert_eq!(
            optional_u32(&out, OPT_SIZE_OF_INITIALIZED_DATA),
            0x200 + 0x200
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let new = [data(".cmdline", b"console=ttyS0"), data(".uname", b"6.1.0")];
        let first = append_sections(&fake_stub(), &new, 0).expect("first");
        assert_eq!(
            append_sections(&fake_stub(), &new, 0).expect("second"),
            first
        );
    }

    #[test]
    fn a_signature_and_a_trailing_symbol_table_are_dropped() {
        let mut stub = fake_stub();
        // 2 symbols and a 6-byte string table, then a 0x20-byte certificate table.
        set(
            &mut stub,
            PE_AT + 4 + COFF_POINTER_TO_SYMBOL_TABLE,
            &0x800u32.to_le_bytes(),
        );
        set(
            &mut stub,
            PE_AT + 4 + COFF_NUMBER_OF_SYMBOLS,
            &2u32.to_le_bytes(),
        );
        stub.resize(0x800 + 36, 0x55);
        stub.extend_from_slice(&6u32.to_le_bytes());
        stub.extend_from_slice(b"ab");
        let certificates = stub.len() as u32;
        stub.resize(stub.len() + 0x20, 0xee);
        let entry = certificate_entry(PE_AT + 4 + COFF_HEADER_SIZE);
        set(&mut stub, entry, &certificates.to_le_bytes());
        set(&mut stub, entry + 4, &0x20u32.to_le_bytes());
        let layout = parse(&stub).expect("parses");
        assert_eq!(
            layout.symbol_table,
            Some(Region {
                offset: 0x800,
                size: 42
            })
        );
        let region = Region {
            offset: certificates.into(),
            size: 0x20,
        };
        assert_eq!(layout.certificate_table, Some(region));

        let out = append_sections(&stub, &[data(".uname", b"6.1.0")], 0);
        let out = out.expect("appends").image;
        let layout = parse(&out).expect("output parses");
        assert_eq!(
            (layout.symbol_table, layout.certificate_table),
            (None, None)
        );
        assert_eq!(layout.sections[2].pointer_to_raw_data, 0x800);
        assert_eq!(out.len(), 0xa00);
        let flags = read(le_u16, &out, PE_AT + 4 + COFF_CHARACTERISTICS, "test").expect("flags");
        assert_eq!(
            flags & IMAGE_FILE_LOCAL_SYMS_STRIPPED,
            IMAGE_FILE_LOCAL_SYMS_STRIPPED
        );
    }

    #[test]
    fn a_signature_before_the_end_is_refused() {
        let mut stub = fake_stub();
        let entry = certificate_entry(PE_AT + 4 + COFF_HEADER_SIZE);
        set(&mut stub, entry, &0x600u32.to_le_bytes());
        set(&mut stub, entry + 4, &0x10u32.to_le_bytes());
        let err = append_sections(&stub, &[data(".uname", b"6")], 0).map(drop);
        assert_eq!(
            err,
            Err(PeError::CertificateTable {
                offset: 0x600,
                size: 0x10
            })
        );
    }

    #[test]
    fn a_full_header_area_is_refused_rather_than_moving_the_stub() {
        let stub = fake_stub();
        // The headers end at 0x400: room for 15 section headers, 2 of them the stub's.
        let room = (0x400 - TABLE_AT) / SECTION_HEADER_SIZE - 2;
        assert_eq!(room, 13);
        let names: Vec<String> = (0..=room).map(|index| format!(".s{index}")).collect();
        let sections: Vec<_> = names
            .iter()
            .map(|name| NewSection {
                name,
                data: b"x",
                characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA,
            })
            .collect();
        assert!(append_sections(&stub, &sections[..room], 0).is_ok());
        let err = append_sections(&stub, &sections, 0).map(drop);
        let needed = (TABLE_AT + 16 * SECTION_HEADER_SIZE) as u64;
        let expected = PeError::NoHeaderRoom {
            count: 14,
            needed,
            available: 0x400,
        };
        assert!(
            expected.to_string().contains("cannot be moved"),
            "{expected}"
        );
        assert_eq!(err, Err(expected));
        let mut used = stub.clone();
        used[TABLE_AT + 2 * SECTION_HEADER_SIZE + 3] = 1;
        let err = append_sections(&used, &sections[..1], 0).map(drop);
        let offset = (TABLE_AT + 83) as u64;
        assert_eq!(err, Err(PeError::HeaderAreaInUse { count: 1, offset }));
    }

    #[test]
    fn duplicate_long_and_empty_sections_are_refused() {
        let stub = fake_stub();
        let append = |section| append_sections(&stub, &[section], 0).map(drop);
        let err = PeError::DuplicateSection(".data".into());
        assert_eq!(append(data(".data", b"x")), Err(err));
        let err = PeError::SectionName(".toolongname".into());
        assert_eq!(append(data(".toolongname", b"x")), Err(err));
        let err = PeError::EmptySection(".initrd".into());
        assert_eq!(append(data(".initrd", b"")), Err(err));
    }

    #[test]
    fn files_that_are_not_x86_64_efi_applications_are_refused() {
        assert_eq!(parse(b"#!/bin/sh\n"), Err(PeError::NoDosSignature));
        assert_eq!(
            parse(b"MZ"),
            Err(PeError::Truncated {
                what: "e_lfanew",
                offset: 0x3c
            })
        );
        let stub = fake_stub();
        let mut no_pe = stub.clone();
        no_pe[PE_AT] = b'X';
        assert_eq!(parse(&no_pe), Err(PeError::NoPeSignature { offset: 0x80 }));
        let mut arm = stub.clone();
        set(&mut arm, PE_AT + 4, &0xaa64u16.to_le_bytes());
        assert_eq!(parse(&arm), Err(PeError::Machine(0xaa64)));
        let optional = PE_AT + 4 + COFF_HEADER_SIZE;
        let mut pe32 = stub.clone();
        set(&mut pe32, optional, &0x10bu16.to_le_bytes());
        assert_eq!(parse(&pe32), Err(PeError::NotPe32Plus(0x10b)));
        let mut console = stub.clone();
        set(&mut console, optional + OPT_SUBSYSTEM, &3u16.to_le_bytes());
        assert_eq!(parse(&console), Err(PeError::NotEfiApplication(3)));
        let mut odd = stub.clone();
        set(
            &mut odd,
            optional + OPT_FILE_ALIGNMENT,
            &0x300u32.to_le_bytes(),
        );
        let err = PeError::Alignment {
            what: "FileAlignment",
            value: 0x300,
        };
        assert_eq!(parse(&odd), Err(err));
        let mut short = stub.clone();
        set(
            &mut short,
            PE_AT + 4 + COFF_SIZE_OF_OPTIONAL_HEADER,
            &100u16.to_le_bytes(),
        );
        assert_eq!(parse(&short), Err(PeError::OptionalHeaderSize(100)));
        assert_eq!(
            parse(&stub[..TABLE_AT + 50]),
            Err(PeError::Truncated {
                what: "the section table",
                offset: (TABLE_AT + 48) as u64
            })
        );
        let err = parse(&stub[..TABLE_AT + 50]).expect_err("truncated");
        assert_eq!(
            err.to_string(),
            format!(
                "truncated PE file: the section table at offset {:#x} lies beyond the end of \
                 the file",
                TABLE_AT + 48
            )
        );
    }
}

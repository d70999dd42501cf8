//! The EFI variables the Boot Loader Interface defines, as efivarfs shows them: four bytes
//! of attributes (little-endian), then the value. `LoaderDevicePartUUID` is the GPT
//! partition UUID of the ESP the boot loader (or the systemd stub) was loaded from, as a
//! NUL-terminated UTF-16LE string; PID 1 prefers the root on that disk when several disks
//! claim it.

use std::fmt;

use crate::gpt::{Guid, GuidError};

/// `LoaderDevicePartUUID`'s file name under efivarfs.
pub const LOADER_DEVICE_PART_UUID: &str =
    "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Attributes (4) and 36 UTF-16 characters with a terminator, with room to spare.
pub const MAX_LOADER_DEVICE_PART_UUID_BYTES: u64 = 256;

/// What boot services and the OS may read: the attributes the stub and systemd-boot set.
const BOOTSERVICE_AND_RUNTIME_ACCESS: u32 = 0x2 | 0x4;

/// `LoaderDevicePartUUID`: the ESP the firmware loaded the boot loader from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderDevicePartUuid(pub Guid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EfiVariableError {
    #[error("{found} bytes: shorter than the 4 bytes of attributes")]
    NoAttributes { found: usize },
    #[error("the value is an odd number of bytes, not UTF-16")]
    OddLength,
    #[error("the value is not UTF-16 text")]
    NotUtf16,
    #[error("the value is not a partition UUID")]
    NotGuid(#[source] GuidError),
}

impl LoaderDevicePartUuid {
    /// Parses the efivarfs file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, EfiVariableError> {
        let value = bytes
            .get(4..)
            .ok_or(EfiVariableError::NoAttributes { found: bytes.len() })?;
        if value.len() % 2 != 0 {
            return Err(EfiVariableError::OddLength);
        }
        let units: Vec<u16> = value
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        let text = String::from_utf16(&units).map_err(|_| EfiVariableError::NotUtf16)?;
        let text = text.trim_end_matches('\0');
        Guid::parse(text)
            .map(Self)
            .map_err(EfiVariableError::NotGuid)
    }

    /// The efivarfs file's bytes, as the systemd stub writes them (upper case, terminated).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = BOOTSERVICE_AND_RUNTIME_ACCESS.to_le_bytes().to_vec();
        let text = format!("{self}\0");
        for unit in text.encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        bytes
    }
}

impl fmt::Display for LoaderDevicePartUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_string().to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::XorShift;

    const ESP: &str = "6A2C1D6E-0B1F-4C4B-9E3A-5D2F8C7B1A09";

    /// What efivarfs showed for the stub's variable in a QEMU boot (attributes 6).
    fn as_the_stub_writes_it() -> Vec<u8> {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in format!("{ESP}\0").encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn the_stubs_value_round_trips() {
        let bytes = as_the_stub_writes_it();
        let parsed = LoaderDevicePartUuid::parse(&bytes).expect("parse");
        assert_eq!(parsed.0, Guid::parse(ESP).expect("guid"));
        assert_eq!(parsed.to_string(), ESP);
        assert_eq!(parsed.encode(), bytes);
    }

    #[test]
    fn lower_case_and_a_missing_terminator_are_accepted() {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in ESP.to_ascii_lowercase().encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(
            LoaderDevicePartUuid::parse(&bytes).map(|uuid| uuid.to_string()),
            Ok(ESP.to_owned())
        );
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        assert_eq!(
            LoaderDevicePartUuid::parse(&[6, 0]),
            Err(EfiVariableError::NoAttributes { found: 2 })
        );
        let mut odd = as_the_stub_writes_it();
        odd.pop();
        assert_eq!(
            LoaderDevicePartUuid::parse(&odd),
            Err(EfiVariableError::OddLength)
        );
        let lone_surrogate = [6, 0, 0, 0, 0x00, 0xd8, b'a', 0];
        assert_eq!(
            LoaderDevicePartUuid::parse(&lone_surrogate),
            Err(EfiVariableError::NotUtf16)
        );
        let ascii = [&[6u8, 0, 0, 0][..], ESP.as_bytes()].concat();
        assert!(matches!(
            LoaderDevicePartUuid::parse(&ascii),
            Err(EfiVariableError::NotGuid(_))
        ));
    }

    #[test]
    fn fuzz_mutations_never_panic_and_only_guids_parse() {
        let mut rng = XorShift(0x5eed_0ef1_1234_5678);
        let original = as_the_stub_writes_it();
        for _ in 0..2_000 {
            let mut bytes = original.clone();
            for _ in 0..=rng.below(3) {
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    1 => bytes.truncate(rng.below(original.len() + 1)),
                    _ => bytes.push(rng.below(256) as u8),
                }
            }
            if let Ok(parsed) = LoaderDevicePartUuid::parse(&bytes) {
                assert_eq!(LoaderDevicePartUuid::parse(&parsed.encode()), Ok(parsed));
            }
        }
    }
}

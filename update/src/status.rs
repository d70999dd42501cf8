//! `xorbang-update status`: the slots and what they hold, the boot loader entries with their
//! tries (systemd-boot's boot counting), and which entry the boot loader booted.

use std::path::Path;

use xorbang_formats::boot_entry::{self, BootEntryFile};

use crate::apply::slot_name;
use crate::machine::{self, Machine};

pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The Boot Loader Interface's variable naming the entry booted.
const LOADER_ENTRY_SELECTED: &str = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const MAX_VARIABLE_BYTES: u64 = 4096;

pub fn render(machine: &Machine, esp: Option<&Path>, efivars: &Path) -> String {
    let mut out = String::new();
    line(
        &mut out,
        format!(
            "image {} version {} booted from slot {} ({})",
            machine.image_id,
            machine.version,
            slot_name(machine.booted),
            booted_device(machine)
        ),
    );
    for (index, slot) in machine.slots.iter().enumerate() {
        let holds = slot.version(&machine.image_id).map_or_else(
            || "empty".to_owned(),
            |version| format!("version {version}"),
        );
        let mark = if index == machine.booted {
            " (booted)"
        } else {
            ""
        };
        line(
            &mut out,
            format!(
                "slot {}: partitions {} and {}, {} ({}){mark}",
                slot_name(index),
                slot.root.number,
                slot.verity.number,
                holds,
                slot.root.name
            ),
        );
    }
    match esp.map(|esp| machine::boot_entries(esp, &machine.image_id)) {
        Some(Ok(entries)) => {
            for entry in entries {
                line(
                    &mut out,
                    format!("entry {}", describe(&entry, &machine.image_id)),
                );
            }
        }
        Some(Err(error)) => {
            line(&mut out, format!("entries: {error}"));
        }
        None => {
            line(&mut out, "entries: the ESP is not mounted".to_owned());
        }
    }
    let selected = loader_entry_selected(efivars).unwrap_or_else(|| "unknown".to_owned());
    line(&mut out, format!("boot loader selected {selected}"));
    out
}

/// The booted slot's root partition, as the boot report names it (`/dev/mapper/root` is
/// the mapping on top of it).
fn booted_device(machine: &Machine) -> &str {
    match &machine.report.verity {
        Some(verity) => &verity.data_device,
        None => &machine.report.root.device,
    }
}

fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

/// One entry: its version and where boot counting stands.
fn describe(entry: &BootEntryFile, image_id: &str) -> String {
    let version = boot_entry::image_version(entry.stem(), image_id).unwrap_or("?");
    let state = match entry.counter() {
        None => "good (blessed)".to_owned(),
        Some(counter) if counter.left == 0 => {
            format!("bad (no tries left, {} failed)", counter.done)
        }
        Some(counter) => format!(
            "on trial ({} tries left, {} used)",
            counter.left, counter.done
        ),
    };
    format!("{entry}: version {version}, {state}")
}

/// The UTF-16 value of `LoaderEntrySelected`, after its four bytes of attributes.
fn loader_entry_selected(efivars: &Path) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(efivars.join(LOADER_ENTRY_SELECTED))
        .ok()?
        .take(MAX_VARIABLE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units)
        .ok()
        .map(|text| text.trim_end_matches('\0').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_say_where_counting_stands() {
        let describe_name = |name: &str| describe(&BootEntryFile::parse(name).expect(name), "demo");
        assert_eq!(
            describe_name("demo_1.efi"),
            "demo_1.efi: version 1, good (blessed)"
        );
        assert_eq!(
            describe_name("demo_2+0-3.efi"),
            "demo_2+0-3.efi: version 2, bad (no tries left, 3 failed)"
        );
        assert_eq!(
            describe_name("demo_2+2-1.efi"),
            "demo_2+2-1.efi: version 2, on trial (2 tries left, 1 used)"
        );
    }

    #[test]
    fn the_selected_entry_is_read_from_efivarfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = 6u32.to_le_bytes().to_vec();
        for unit in "demo_2+3.efi\0".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        std::fs::write(dir.path().join(LOADER_ENTRY_SELECTED), bytes).expect("write");
        assert_eq!(
            loader_entry_selected(dir.path()).as_deref(),
            Some("demo_2+3.efi")
        );
        assert_eq!(loader_entry_selected(&dir.path().join("none")), None);
    }
}

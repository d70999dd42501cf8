//! The formats xorbang shares between PID 1, the build tool and the tools to come. Everything
//! here reads bytes or text that came from somewhere untrusted (a disk, the ESP, the network,
//! the kernel command line) or writes them; nothing here does I/O or uses unsafe code, so each
//! parser is fuzzed on its own (seeded loops in each module's tests).

pub mod boot_entry;
pub mod boot_report;
pub mod bundle;
pub mod bytes;
pub mod cmdline;
pub mod dev_state;
pub mod devspec;
pub mod dhcp;
pub mod efi_variable;
pub mod error_chain;
pub mod extension_pins;
pub mod fs_probe;
pub mod gpt;
pub mod host_config;
pub mod meminfo;
pub mod module_index;
pub mod netboot;
pub mod os_release;
pub mod pe;
pub mod signature;
pub mod text_position;
pub mod verity;
pub mod verity_tree;
pub mod version;

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

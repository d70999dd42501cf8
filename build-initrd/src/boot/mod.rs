//! What the firmware boots: the Unified Kernel Image ([`uki`], on our own PE writer [`pe`]),
//! the EFI System Partition holding it ([`esp`]), and GPT disk images ([`disk`]), laid out by
//! hand or from systemd-repart definitions ([`repart`]); [`machine_disk`] puts them together.

pub mod disk;
pub mod esp;
pub mod machine_disk;
pub mod pe;
pub mod repart;
pub mod uki;

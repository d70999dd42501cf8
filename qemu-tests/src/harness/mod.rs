//! Running a VM and reading its console; nothing here knows what a scenario boots.

pub mod config;
pub mod qemu;

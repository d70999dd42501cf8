//! Running a VM and reading its console; nothing here knows what a scenario boots.

pub mod config;
pub mod http_server;
pub mod qemu;

//! Running a VM and reading its console, and the network it may boot from; nothing here
//! knows what a scenario boots.

pub mod config;
pub mod http_server;
pub mod netns;
pub mod qemu;
mod sys;

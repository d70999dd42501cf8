//! Host tooling of xorbang, grouped by what it builds:
//!
//! * [`initrd`]: the initramfs (a newc cpio archive written here, with the static init,
//!   kernel modules and extra files), compressed for the kernel;
//! * [`image`]: SquashFS root and extension images with their dm-verity hash trees;
//! * [`boot`]: what firmware boots: the UKI (PE sections on the systemd stub), the EFI System
//!   Partition, GPT disk images laid out by hand or from repart definitions;
//! * [`os`]: all of them from one build profile;
//! * [`bundle`]: a version as a signed update bundle in a channel;
//!
//! and what they all share: [`output`] (atomic outputs), [`file_error`] (a failed file
//! operation) and [`tool`] (the external programs they run).

pub mod boot;
pub mod bundle;
pub mod file_error;
pub mod image;
pub mod initrd;
pub mod netboot;
pub mod os;
pub mod output;
pub mod sorted_dir;
pub mod tool;

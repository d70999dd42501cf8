//! The initramfs, from its parts to the compressed archive: [`assemble`] puts the static init
//! ([`static_elf`] checks it), the kernel modules a boot needs with their dependencies
//! ([`kernel_modules`]) and the user's files into a newc archive ([`cpio`]), and [`compress`]es it.

pub mod assemble;
pub mod compress;
pub mod cpio;
pub mod kernel_modules;
pub mod static_elf;

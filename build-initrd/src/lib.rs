//! Host tooling of xorbang: builds the initramfs (a newc cpio archive written here, with the
//! static init, kernel modules and extra files) and the SquashFS root images the init boots.

pub mod compress;
pub mod cpio;
pub mod disk;
pub mod elf;
pub mod esp;
pub mod image;
pub mod initrd;
pub mod kernel_modules;
pub mod output;
pub mod pe;
pub mod repart;
pub mod sysext;
pub mod tool;
pub mod uki;
pub mod verified_image;
pub mod verity;

//! Images the init mounts: a tree packed as SquashFS ([`squashfs`]), its dm-verity hash tree
//! ([`verity`]), the two with the manifest `disk` reads them by ([`verified`]), and extension
//! images (DDIs) for systemd-sysext and the init ([`sysext`]).

pub mod erofs;
pub mod squashfs;
pub mod sysext;
pub mod verified;
pub mod verity;

//! Images the init mounts: a tree packed as SquashFS ([`squashfs`]) or EROFS ([`erofs`]), as
//! a build chooses ([`root_format`]), its dm-verity hash tree
//! ([`verity`]), the two with the manifest `disk` reads them by ([`verified`]), and extension
//! images (DDIs) for systemd-sysext and the init ([`sysext`]).

pub mod erofs;
pub mod root_format;
pub mod squashfs;
pub mod sysext;
pub mod verified;
pub mod verity;

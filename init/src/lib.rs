//! xorbang-init as a library: everything PID 1 does, in modules that tests (and the build
//! tool, for the shared formats) call directly.

pub mod blockdev;
pub mod boot;
pub mod cmdline;
pub mod config_source;
pub mod devspec;
pub mod dm;
pub mod extensions;
pub mod failure;
pub mod gpt;
pub mod hostconfig;
pub mod kmod;
pub mod kmsg;
pub mod layers;
pub mod loopdev;
pub mod modules;
pub mod mounts;
pub mod options;
pub mod osrelease;
pub mod paths;
pub mod pins;
pub mod report;
pub mod state;
pub mod superblock;
pub mod switchroot;
/// The only module allowed unsafe code (it opts in itself): raw ioctls rustix lacks.
mod sys;
pub mod verity;
pub mod verity_root;

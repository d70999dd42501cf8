//! xorbang-init as a library: everything PID 1 does, grouped by boot stage, in modules that
//! tests call directly. The formats it reads (GPT, verity metadata, os-release, host config,
//! …) are in `xorbang-formats`, shared with the build tool.

pub mod boot;
pub mod failure;
pub mod kmsg;
pub mod network;
pub mod options;
pub mod paths;
pub mod stage_clock;
pub mod untrusted;

/// Kernel modules: loading what this boot needs from the initramfs.
pub mod kernel {
    pub mod module_loader;
}

/// Finding the devices: block devices and their GPTs, loop devices for image files, image
/// files downloaded by netbooted machines.
pub mod discovery {
    pub mod block_devices;
    pub mod boot_loader;
    pub mod download;
    pub mod loop_devices;
}

/// dm-verity: device-mapper ioctls and the activation of a verified mapping.
pub mod verity {
    pub mod activation;
    pub mod device_mapper;
}

/// What goes over the root: extensions, the state partition, host config.
pub mod layers;

/// Mounting the root stack and handing over to the target init.
pub mod handoff {
    pub mod mounts;
    pub mod switch_root;
}

/// The only module allowed unsafe code (it opts in itself): raw ioctls rustix lacks.
mod sys;

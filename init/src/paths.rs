//! Every path the init touches, derived from one root so that tests can run the real code
//! against a directory instead of the initramfs.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::under(PathBuf::from("/"))
    }
}

impl Paths {
    /// Paths below `root`, which stands for the initramfs root `/`.
    pub fn under(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn proc(&self) -> PathBuf {
        self.root.join("proc")
    }

    pub fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    pub fn dev(&self) -> PathBuf {
        self.root.join("dev")
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn kmsg(&self) -> PathBuf {
        self.dev().join("kmsg")
    }

    pub fn proc_cmdline(&self) -> PathBuf {
        self.proc().join("cmdline")
    }

    pub fn sys_class_block(&self) -> PathBuf {
        self.sys().join("class/block")
    }

    /// The modules directory for a kernel release, as the build tool lays it out.
    pub fn modules(&self, release: &str) -> PathBuf {
        self.root.join("lib/modules").join(release)
    }

    /// Where the new root is assembled before switch_root.
    pub fn sysroot(&self) -> PathBuf {
        self.root.join("sysroot")
    }

    /// Our state under /run; it moves into the booted system with /run.
    pub fn xorbang_run(&self) -> PathBuf {
        self.run().join("xorbang")
    }

    /// Shell for `xorbang.failure=shell`, if the initramfs carries one.
    pub fn rescue_shell(&self) -> PathBuf {
        self.root.join("bin/sh")
    }
}

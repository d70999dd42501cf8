//! What every scenario and the benchmark start from: the prepared fixtures, the VMs booted
//! from them with the common command line, and the lines they judge a boot by (the agent's
//! marker, the init's refusal, the boot report).

use std::path::{Path, PathBuf};
use std::time::Duration;

use xorbang_formats::boot_report::BootReport;

use crate::fixtures::binaries::{self, Binaries};
use crate::fixtures::boot_chain::{self, BootChain};
use crate::fixtures::kernel::{self, Kernel};
use crate::fixtures::system::{self, BusyboxImage, SystemImage};
use crate::harness::config::{self, Accel, Config, KernelChoice};
use crate::harness::qemu::{self, AfterMarkers, Boot, Console, Firmware, LineMatch, Network, Vm};

/// A systemd boot under TCG takes 30-45 s on a quiet machine; leave room for a noisy one.
pub const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(300);
pub const INITRAMFS_TIMEOUT: Duration = Duration::from_secs(120);
/// OVMF under TCG plus a systemd boot: as slow as it gets.
pub const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(400);
pub const MEMORY_MIB: u32 = 512;
/// The init's one-line boot report (JSON) on the console.
pub const REPORT_PREFIX: &str = "xorbang: boot-report ";

/// What the scenarios boot.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Config,
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub system: SystemImage,
    pub busybox: BusyboxImage,
    /// The initramfs that also carries the busybox image and its tree (a PXE boot).
    pub pxe_initrd: PathBuf,
    pub chain: BootChain,
    pub binaries: Binaries,
    /// The fixture cache, for what only some scenarios need (the custom kernel).
    pub cache: PathBuf,
    /// Console logs and the files made for one run go here.
    pub work: PathBuf,
}

impl Context {
    /// Builds or finds every shared fixture and picks the accelerator. With
    /// `custom_kernel_too` the custom kernel is built meanwhile, for the scenarios that boot
    /// it.
    pub fn prepare(custom_kernel_too: bool) -> Result<Self, String> {
        let cache = config::cache_dir()?;
        let binaries = binaries::build_binaries().map_err(|error| error.to_string())?;
        let custom_kernel = custom_kernel_too.then(|| kernel::custom_kernel_in_background(&cache));
        let kernel = match config::requested_kernel()? {
            KernelChoice::Debian => kernel::debian_kernel(&cache),
            KernelChoice::Custom => kernel::custom_kernel_for_all(&cache),
        }
        .map_err(|error| error.to_string())?;
        let accel = match config::requested_accel()? {
            Some(accel) => accel,
            None if qemu::kvm_works(&Config::qemu_from_env(), &kernel.vmlinuz) => Accel::Kvm,
            None => Accel::Tcg,
        };
        let config = Config::from_env(accel)?;
        eprintln!(
            "qemu-tests: accelerator {}, kernel {}, cache {}",
            accel.as_str(),
            kernel.vmlinuz.display(),
            cache.display()
        );
        let system = system::system_image(&cache, &binaries).map_err(|error| error.to_string())?;
        let busybox =
            system::busybox_image(&cache, &binaries.build).map_err(|error| error.to_string())?;
        let work = work_dir()?;
        let initrd = binaries::initrd(&work, "initrd.img", &binaries, Some(&kernel), &[])
            .map_err(|error| error.to_string())?;
        // How a PXE server ships a machine its root: the image and tree inside the initramfs.
        let image_files = [
            (busybox.image.as_path(), "/root.squashfs"),
            (busybox.tree.as_path(), "/root.verity"),
        ];
        let chain = boot_chain::boot_chain(&work, &binaries, &kernel, &initrd, &system)
            .map_err(|error| error.to_string())?;
        let pxe_initrd = binaries::initrd(
            &work,
            "initrd-with-root.img",
            &binaries,
            Some(&kernel),
            &image_files,
        )
        .map_err(|error| error.to_string())?;
        if let Some(build) = custom_kernel {
            kernel::wait_for_background_build(build);
        }
        Ok(Self {
            config,
            kernel,
            initrd,
            system,
            busybox,
            pxe_initrd,
            chain,
            binaries,
            cache,
            work,
        })
    }

    /// The kernel command line every scenario starts from: serial console, no timestamps
    /// (so markers are whole lines), and a kernel panic turns into QEMU exiting.
    pub fn append(&self, extra: &str) -> String {
        format!("console=ttyS0 printk.time=0 panic=-1 {extra}")
    }

    /// A direct-boot VM of Debian's kernel and the run's initramfs.
    pub fn vm(&self, disks: Vec<PathBuf>, append: &str, timeout: Duration) -> Vm {
        self.vm_with_initrd(&self.initrd, disks, append, timeout)
    }

    /// A direct-boot VM of Debian's kernel and `initrd`.
    pub fn vm_with_initrd(
        &self,
        initrd: &Path,
        disks: Vec<PathBuf>,
        append: &str,
        timeout: Duration,
    ) -> Vm {
        Vm {
            boot: Boot::Direct {
                kernel: self.kernel.vmlinuz.clone(),
                initrd: initrd.to_owned(),
                append: self.append(append),
            },
            disks,
            fw_cfg: Vec::new(),
            network: Network::Isolated,
            memory_mib: MEMORY_MIB,
            timeout,
            after_markers: AfterMarkers::PowerOff,
            writable_disks: false,
        }
    }

    /// A VM that boots `disks` through OVMF, with a fresh variable store named `name`.
    pub fn firmware_vm(
        &self,
        name: &str,
        secure_boot: bool,
        disks: Vec<PathBuf>,
    ) -> Result<(Vm, Firmware), String> {
        let firmware = boot_chain::firmware(&self.work, name, secure_boot)
            .map_err(|error| error.to_string())?;
        let vm = Vm {
            boot: Boot::Firmware(firmware.clone()),
            disks,
            fw_cfg: Vec::new(),
            network: Network::Isolated,
            memory_mib: MEMORY_MIB,
            timeout: FIRMWARE_TIMEOUT,
            after_markers: AfterMarkers::PowerOff,
            writable_disks: false,
        };
        Ok((vm, firmware))
    }

    /// Boots the systemd image with `append` and expects the agent's PASS line for `check`.
    pub fn boot_system(
        &self,
        check: &str,
        append: &str,
        extra: &[LineMatch],
    ) -> Result<Console, String> {
        let mut expect = extra.to_vec();
        expect.push(pass_line(check));
        self.boot_disks(vec![self.system.disk.clone()], check, append, &expect)
    }

    /// Boots `disks` with `append` and the agent's scenario `check`, expecting `expect`.
    pub fn boot_disks(
        &self,
        disks: Vec<PathBuf>,
        check: &str,
        append: &str,
        expect: &[LineMatch],
    ) -> Result<Console, String> {
        let vm = self.vm(
            disks,
            &format!("{append} xtest.scenario={check}"),
            SYSTEMD_TIMEOUT,
        );
        self.boot(&vm, check, expect)
    }

    /// The `uki-boot` check on a machine disk with a UKI on its ESP: firmware, UKI, init,
    /// systemd.
    pub fn boot_uki_disk(&self, disk: &Path) -> Result<Console, String> {
        let (vm, _) = self.firmware_vm("uki-boot", false, vec![disk.to_owned()])?;
        self.boot(&vm, "uki-boot", &[pass_line("uki-boot")])
    }

    /// The production command line: only the root hash.
    pub fn production_root(&self) -> String {
        format!("roothash={}", self.system.root_hash)
    }

    /// Runs `vm`, its console logged as `log_name`.
    pub fn boot(&self, vm: &Vm, log_name: &str, expect: &[LineMatch]) -> Result<Console, String> {
        let log = self.work.join(format!("{log_name}.log"));
        vm.run(&self.config, expect, &log)
            .map_err(|error| error.to_string())
    }

    /// The initramfs with the FAT modules a config partition or ESP read needs (the default
    /// one leaves them out).
    pub fn vfat_initrd(&self) -> Result<PathBuf, String> {
        self.initrd_with("initrd-vfat.img", &["vfat", "nls_cp437", "nls_ascii"])
    }

    /// The initramfs of the A/B machines: FAT for the ESP (the init finds the boot loader's
    /// there), autofs (systemd mounts the ESP at /efi on demand, where systemd-bless-boot
    /// renames the entry) and virtio_net for the update channel; the test system carries no
    /// modules of its own.
    pub fn ab_initrd(&self) -> Result<PathBuf, String> {
        self.initrd_with(
            "initrd-ab.img",
            &["vfat", "nls_cp437", "nls_ascii", "autofs4", "virtio_net"],
        )
    }

    /// The initramfs with ext4 (which asks for crc32c through the crypto API, a soft
    /// dependency modules.dep omits).
    pub fn ext4_initrd(&self) -> Result<PathBuf, String> {
        self.initrd_with("initrd-ext4.img", &["ext4", "crc32c_generic"])
    }

    /// The initramfs with EROFS besides SquashFS: the bench boots roots of either format with
    /// it. EROFS's libcrc32c asks for crc32c through the crypto API, a soft dependency
    /// modules.dep omits.
    pub fn erofs_initrd(&self) -> Result<PathBuf, String> {
        self.initrd_with("initrd-erofs.img", &["erofs", "crc32c_generic"])
    }

    /// The kernel built from kernel-config/ (everything built in) and an initramfs that
    /// carries no modules: the custom-kernel boot of the scenario and of the bench.
    pub fn custom_kernel_parts(&self) -> Result<(PathBuf, PathBuf), String> {
        let bzimage = kernel::custom_kernel(&self.cache).map_err(|error| error.to_string())?;
        let initrd = binaries::initrd(
            &self.work,
            "initrd-no-modules.img",
            &self.binaries,
            None,
            &[],
        )
        .map_err(|error| error.to_string())?;
        Ok((bzimage, initrd))
    }

    fn initrd_with(&self, name: &str, modules: &[&str]) -> Result<PathBuf, String> {
        binaries::initrd_with_modules(&self.work, name, &self.binaries, &self.kernel, modules)
            .map_err(|error| error.to_string())
    }

    /// Writes `text` to `name` in the work directory.
    pub fn write_work_file(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.work.join(name);
        std::fs::write(&path, text).map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(path)
    }
}

/// Logs and the initramfs of this run, under the workspace's target directory.
fn work_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qemu-tests");
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    Ok(dir)
}

/// The agent's line after its checks passed.
pub fn pass_line(check: &str) -> LineMatch {
    LineMatch::Exact(format!("XORBANG-TEST: PASS {check}"))
}

/// The init's last two lines of a refused boot.
pub fn refused(cause_prefix: String) -> [LineMatch; 2] {
    [
        LineMatch::Prefix(format!("xorbang: {cause_prefix}")),
        LineMatch::Exact("xorbang: failure policy: reboot".to_owned()),
    ]
}

/// The init's boot report line, whatever it says.
pub fn report_line() -> LineMatch {
    LineMatch::Prefix(REPORT_PREFIX.to_owned())
}

/// The boot report on the console line that starts with `prefix` (and the lines it
/// continues on, if the init had to split it).
pub fn parse_report(console: &Console, prefix: &str) -> Result<BootReport, String> {
    let json = console
        .find_joined(prefix)
        .ok_or_else(|| format!("no console line starts with {prefix:?}"))?;
    serde_json::from_str(&json)
        .map_err(|error| format!("{prefix:?} line is not a boot report: {error}: {json}"))
}

/// The kernel's dm-verity line for a `kind` ("data" or "metadata") block that failed its
/// hash, `block` as dm-verity numbers them: the one block the fixture damaged, no other.
pub fn corrupted_block(kind: &str, block: u64) -> LineMatch {
    LineMatch::Between(
        "device-mapper: verity: ".to_owned(),
        format!(": {kind} block {block} is corrupted"),
    )
}

/// Whether two files hold the same bytes; a file that cannot be read is an error, never
/// "the same" as another missing one.
pub fn same_contents(first: &Path, second: &Path) -> Result<bool, String> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()));
    Ok(read(first)? == read(second)?)
}

/// The root hash with its last hex digit changed.
pub fn wrong_hash(root_hash: &str) -> String {
    let mut wrong = root_hash.to_owned();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_never_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let error = same_contents(&a, &b).expect_err("both missing");
        assert!(error.starts_with(&a.display().to_string()), "{error}");
        std::fs::write(&a, "x").expect("write");
        same_contents(&a, &b).expect_err("one missing");
        std::fs::write(&b, "x").expect("write");
        assert_eq!(same_contents(&a, &b), Ok(true));
        std::fs::write(&b, "y").expect("write");
        assert_eq!(same_contents(&a, &b), Ok(false));
    }

    #[test]
    fn the_corruption_line_names_the_exact_block() {
        let line = corrupted_block("data", 1234);
        assert!(line.matches("device-mapper: verity: 254:0: data block 1234 is corrupted"));
        assert!(!line.matches("device-mapper: verity: 254:0: data block 11234 is corrupted"));
        assert!(!line.matches("device-mapper: verity: 254:0: data block 123 is corrupted"));
        assert!(!line.matches("device-mapper: verity: 254:0: metadata block 1234 is corrupted"));
    }
}

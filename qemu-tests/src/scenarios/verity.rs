//! dm-verity: verified boots by explicit devices, by DPS discovery and from files in the
//! initramfs, and every way a wrong hash, a damaged disk or a missing hash is caught.

use crate::context::{
    corrupted_block, pass_line, refused, wrong_hash, Context, INITRAMFS_TIMEOUT, MEMORY_MIB,
};
use crate::fixtures::system::ROOT_PARTLABEL;
use crate::harness::qemu::{AfterMarkers, Boot, LineMatch, Network, Vm};

/// The root hash with the devices named explicitly, as systemd's keys allow.
fn explicit_verity(root_hash: &str, hash_device: &str) -> String {
    format!(
        "roothash={root_hash} systemd.verity_root_data=/dev/vda1 \
         systemd.verity_root_hash={hash_device}"
    )
}

pub fn verity_boot(context: &Context) -> Result<(), String> {
    let append = explicit_verity(&context.system.root_hash, "/dev/vda2");
    context.boot_system("verity-boot", &append, &[])?;
    Ok(())
}

pub fn verity_dps(context: &Context) -> Result<(), String> {
    context.boot_system("verity-dps", &context.production_root(), &[])?;
    Ok(())
}

/// The root hash with its last hex digit changed.
pub fn verity_wrong_hash(context: &Context) -> Result<(), String> {
    let wrong = wrong_hash(&context.system.root_hash);
    let append = explicit_verity(&wrong, "/dev/vda2");
    let expect = refused(format!(
        "verity: root hash mismatch: roothash={wrong} but the hash tree on /dev/vda2 gives {}",
        context.system.root_hash
    ));
    let disks = vec![context.system.disk.clone()];
    context.boot_disks(disks, "verity-wrong-hash", &append, &expect)?;
    Ok(())
}

/// dm-verity's own report of the block the fixture damaged, then the restart that
/// `restart_on_corruption` orders; the agent's line would come only if the read got through.
fn corruption_detected(kind: &str, block: u64) -> [LineMatch; 2] {
    [
        corrupted_block(kind, block),
        LineMatch::Prefix("reboot: Restarting system".to_owned()),
    ]
}

pub fn verity_tamper_data(context: &Context) -> Result<(), String> {
    let disks = vec![context.system.tampered_data.clone()];
    let append = context.production_root();
    let expect = corruption_detected("data", context.system.tampered_blocks.data);
    context.boot_disks(disks, "verity-tamper-data", &append, &expect)?;
    Ok(())
}

pub fn verity_tamper_hash(context: &Context) -> Result<(), String> {
    let disks = vec![context.system.tampered_hash.clone()];
    let append = context.production_root();
    let expect = corruption_detected("metadata", context.system.tampered_blocks.metadata);
    context.boot_disks(disks, "verity-tamper-hash", &append, &expect)?;
    Ok(())
}

pub fn verity_truncated(context: &Context) -> Result<(), String> {
    let disks = vec![
        context.system.disk.clone(),
        context.system.truncated_tree.clone(),
    ];
    let append = explicit_verity(&context.system.root_hash, "/dev/vdb");
    let expect = refused("verity: hash device /dev/vdb is ".to_owned());
    let console = context.boot_disks(disks, "verity-truncated", &append, &expect)?;
    let line = console
        .find("xorbang: verity: hash device /dev/vdb is ")
        .unwrap_or("");
    if line.contains("shorter than the") && line.contains("its verity superblock needs") {
        Ok(())
    } else {
        Err(format!("unexpected truncation message {line:?}"))
    }
}

pub fn verity_initramfs_file(context: &Context) -> Result<(), String> {
    let append = format!(
        "roothash={} systemd.verity_root_data=/root.squashfs \
         systemd.verity_root_hash=/root.verity xtest.scenario=verity-initramfs-file",
        context.busybox.root_hash
    );
    let vm = Vm {
        boot: Boot::Direct {
            kernel: context.kernel.vmlinuz.clone(),
            initrd: context.pxe_initrd.clone(),
            append: context.append(&append),
        },
        disks: Vec::new(),
        fw_cfg: Vec::new(),
        network: Network::Isolated,
        memory_mib: MEMORY_MIB,
        timeout: INITRAMFS_TIMEOUT,
        after_markers: AfterMarkers::PowerOff,
        writable_disks: false,
    };
    context.boot(
        &vm,
        "verity-initramfs-file",
        &[pass_line("verity-initramfs-file")],
    )?;
    Ok(())
}

pub fn verity_unverified_refused(context: &Context) -> Result<(), String> {
    let root = format!("root=PARTLABEL={ROOT_PARTLABEL}");
    let expect = refused(format!("bad kernel command line: {root} without roothash="));
    let disks = vec![context.system.disk.clone()];
    context
        .boot_disks(disks, "verity-unverified-refused", &root, &expect)
        .map_err(|error| format!("refusal: {error}"))?;
    context
        .boot_system(
            "verity-unverified-allowed",
            &format!("{root} xorbang.verity=optional"),
            &[],
        )
        .map_err(|error| format!("with xorbang.verity=optional: {error}"))?;
    Ok(())
}

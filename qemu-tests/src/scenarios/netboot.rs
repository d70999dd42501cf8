//! Netboot: machines boot one tree from the runner's private network (dnsmasq for DHCP, our
//! HTTP server for the files), each becoming the host its MAC address names.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::context::{parse_report, pass_line, report_line, Context, REPORT_PREFIX};
use crate::fixtures::boot_chain::{self, UKI_CONSOLE};
use crate::fixtures::netboot::{self, Host, TreeSpec, FLEET, UNKNOWN_MAC};
use crate::harness::http_server::HttpServer;
use crate::harness::netns::{user_mode_args, NetSpec, NetbootNet};
use crate::harness::qemu::{AfterMarkers, Boot, Console, LineMatch, Network, Vm};
use xorbang_formats::boot_report::ConfigTrust;

/// iPXE's download of the kernel, initramfs and root, then a systemd boot, under TCG.
const NETBOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(420);
/// Enough for the root image in memory twice over (the initramfs part, then its tmpfs copy
/// while unpacking) and systemd; `bench netboot` finds the smallest that still boots.
pub const NETBOOT_MEMORY_MIB: u32 = 512;
/// What the agent prints about who the machine became.
const HOST_LINE: &str = "XORBANG-TEST: HOST ";

/// One machine to netboot: its NIC's MAC, and the host it must become (`None`: an unknown
/// machine, which keeps the image's defaults).
#[derive(Debug, Clone)]
struct Machine {
    mac: &'static str,
    host: Option<Host>,
}

/// Where machines netboot from: the runner's private network (dnsmasq and our HTTP server
/// in a namespace of their own), or, where this host cannot make namespaces, QEMU's
/// user-mode network (its own DHCP and TFTP) with our HTTP server on 127.0.0.1.
enum Served {
    Rig(NetbootNet),
    UserMode {
        _server: HttpServer,
        tree: PathBuf,
        /// What slirp's DHCP names as the boot file (served by its TFTP from the tree).
        bootfile: &'static str,
    },
}

impl Served {
    /// Builds the tree with `build(base_url)` and serves it on the rig, or else in user
    /// mode (saying so), rebuilding it for the user-mode URL.
    fn start(
        context: &Context,
        tag: &str,
        dir: &Path,
        bootfile: &'static str,
        addresses: &[(&str, String)],
        build: impl Fn(&str) -> Result<PathBuf, String>,
    ) -> Result<(Self, PathBuf), String> {
        let why_not_rig = if context.config.netboot_user_mode {
            "XORBANG_NETBOOT=user".to_owned()
        } else {
            let tree = build(&NetbootNet::url(""))?;
            let conf = rig_config(&tree, addresses)?;
            let spec = NetSpec::new(tag, &tree, &dir.join("rig"), conf)
                .map_err(|error| error.to_string())?;
            match NetbootNet::create(&spec) {
                Ok(rig) => return Ok((Self::Rig(rig), tree)),
                Err(error) if error.cannot_run_here() => error.to_string(),
                Err(error) => return Err(error.to_string()),
            }
        };
        eprintln!(
            "{tag}: {why_not_rig}: falling back to QEMU's user-mode network (its DHCP and TFTP) \
             with the HTTP server on 127.0.0.1 only"
        );
        std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let tree = dir.join("tree");
        let log = dir.join("user-mode-http.log");
        let server = HttpServer::bind((Ipv4Addr::LOCALHOST, 0).into(), &tree, Some(&log))
            .map_err(|error| format!("HTTP server for {}: {error}", tree.display()))?;
        let tree = build(&server.guest_url(""))?;
        let served = Self::UserMode {
            _server: server,
            tree: tree.clone(),
            bootfile,
        };
        Ok((served, tree))
    }

    /// A machine with `mac` on this network (`tap`: which of the rig's taps).
    fn network(&self, tap: usize, mac: &str) -> Result<Network, String> {
        match self {
            Self::Rig(rig) => Ok(Network::Attached {
                prefix: rig.qemu_prefix(),
                args: rig
                    .netdev_args(tap, mac)
                    .map_err(|error| error.to_string())?,
            }),
            Self::UserMode { tree, bootfile, .. } => Ok(Network::Attached {
                prefix: Vec::new(),
                args: user_mode_args(tree, bootfile, mac),
            }),
        }
    }
}

/// The fleet of three and an unknown fourth machine netboot the same tree, two at a time.
pub fn pxe_fleet(context: &Context) -> Result<(), String> {
    let dir = context.work.join("pxe-fleet");
    let (served, tree) = Served::start(
        context,
        "pxe-fleet",
        &dir,
        "boot.ipxe",
        &fixed_addresses(),
        |url| fleet_tree(context, &dir, "pxe-fleet", url),
    )?;
    let machines: Vec<Machine> = FLEET
        .iter()
        .map(|host| Machine {
            mac: host.mac,
            host: Some(host.clone()),
        })
        .chain([Machine {
            mac: UNKNOWN_MAC,
            host: None,
        }])
        .collect();
    let started = std::time::Instant::now();
    for wave in machines.chunks(2) {
        let consoles = boot_wave(context, &served, wave)?;
        for (machine, console) in wave.iter().zip(&consoles) {
            check_machine(context, machine, console)?;
            eprintln!(
                "pxe-fleet: {} from power-on to the agent's verdict in {:.1} s",
                machine_name(machine),
                console.last_marker.as_secs_f64()
            );
        }
    }
    eprintln!(
        "pxe-fleet: {} machines in {:.1} s",
        machines.len(),
        started.elapsed().as_secs_f64()
    );
    match &served {
        Served::Rig(rig) => report_bytes(rig, &tree),
        Served::UserMode { .. } => {
            eprintln!("pxe-fleet: user-mode TFTP keeps no per-machine byte counts");
            Ok(())
        }
    }
}

/// The tree of the test system for [`FLEET`] served at `base_url`, with `check` for the
/// agent.
fn fleet_tree(
    context: &Context,
    dir: &Path,
    check: &str,
    base_url: &str,
) -> Result<PathBuf, String> {
    let hosts = netboot::hosts_dir(&dir.join("hosts"), &FLEET).map_err(|e| e.to_string())?;
    let cmdline = context.append(&format!("xtest.scenario={check}"));
    let spec = TreeSpec {
        kernel: &context.kernel.vmlinuz,
        initrd: &context.initrd,
        image: &context.system.image,
        cmdline: &cmdline,
        hosts: Some(&hosts),
        uki: None,
        install_uki: None,
        boot_loader: None,
        base_url,
    };
    netboot::netboot_tree(&context.binaries, &spec, &dir.join("tree")).map_err(|e| e.to_string())
}

/// Each machine's address, so the HTTP log says which machine fetched what.
fn fixed_addresses() -> Vec<(&'static str, String)> {
    FLEET
        .iter()
        .map(|host| host.mac)
        .chain([UNKNOWN_MAC])
        .enumerate()
        .map(|(index, mac)| (mac, format!("10.14.0.{}", 101 + index)))
        .collect()
}

/// The tree's dnsmasq.conf as the rig runs it: without the options the rig sets itself,
/// plus a fixed address per machine.
fn rig_config(tree: &Path, addresses: &[(&str, String)]) -> Result<String, String> {
    let path = tree.join("dnsmasq.conf");
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with("port="))
        .map(str::to_owned)
        .collect();
    for (mac, address) in addresses {
        lines.push(format!("dhcp-host={mac},{address}"));
    }
    Ok(lines.join("\n") + "\n")
}

/// Boots `wave` side by side, one machine per tap, and returns their consoles in order.
fn boot_wave(context: &Context, served: &Served, wave: &[Machine]) -> Result<Vec<Console>, String> {
    let runs: Vec<(String, Vm)> = wave
        .iter()
        .enumerate()
        .map(|(tap, machine)| {
            let vm = fleet_vm(served.network(tap, machine.mac)?, NETBOOT_MEMORY_MIB);
            Ok((format!("pxe-fleet-{}", machine_name(machine)), vm))
        })
        .collect::<Result<_, String>>()?;
    let expect = [
        report_line(),
        LineMatch::Prefix(HOST_LINE.to_owned()),
        pass_line("pxe-fleet"),
    ];
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(name, vm)| {
                let expect = &expect;
                scope.spawn(move || {
                    context
                        .boot(vm, name, expect)
                        .map_err(|error| format!("{name}: {error}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a VM thread panicked".to_owned()))
            })
            .collect()
    })
}

/// A BIOS machine that boots from its NIC on `network`.
fn fleet_vm(network: Network, memory_mib: u32) -> Vm {
    Vm {
        boot: Boot::Network,
        disks: Vec::new(),
        writable_disks: false,
        fw_cfg: Vec::new(),
        network,
        memory_mib,
        timeout: NETBOOT_TIMEOUT,
        after_markers: AfterMarkers::PowerOff,
    }
}

fn machine_name(machine: &Machine) -> String {
    match &machine.host {
        Some(host) => host.name.to_owned(),
        None => format!("unknown-{}", machine.mac.replace(':', "")),
    }
}

/// The machine became its host: the hostname and networkd file of its config, taken from
/// the per-host part (trusted as local); an unknown machine has the image's hostname and no
/// host config at all.
fn check_machine(context: &Context, machine: &Machine, console: &Console) -> Result<(), String> {
    let name = machine_name(machine);
    let said = console.find(HOST_LINE).unwrap_or_default();
    let report = parse_report(console, REPORT_PREFIX).map_err(|e| format!("{name}: {e}"))?;
    match &machine.host {
        Some(_) => {
            check_host(
                machine,
                console,
                "initramfs:/netboot/host-config.toml",
                ConfigTrust::Local,
            )?;
        }
        None => {
            let expected = format!("{} none", context.system.hostname);
            if said != expected {
                return Err(format!(
                    "{name}: an unknown machine says {said:?}, not {expected:?}"
                ));
            }
            if let Some(config) = report.host_config {
                return Err(format!(
                    "{name}: an unknown machine applied host config {config:?}"
                ));
            }
        }
    }
    Ok(())
}

/// The machine says it became its host (hostname, and the networkd file for its MAC and
/// address), and the report says the config came from `origin` with `trust`.
fn check_host(
    machine: &Machine,
    console: &Console,
    origin: &str,
    trust: ConfigTrust,
) -> Result<(), String> {
    let name = machine_name(machine);
    let Some(host) = &machine.host else {
        return Err(format!("{name} is not one of the fleet"));
    };
    let said = console.find(HOST_LINE).unwrap_or_default();
    let mac_line = format!("MACAddress={}", host.mac);
    let address_line = format!("Address={}", host.address);
    let words: Vec<&str> = said.split_whitespace().collect();
    if words.first() != Some(&host.name)
        || !words.contains(&mac_line.as_str())
        || !words.contains(&address_line.as_str())
    {
        return Err(format!(
            "{name}: the machine says it is {said:?}, not {} with {mac_line} and {address_line}",
            host.name
        ));
    }
    let report = parse_report(console, REPORT_PREFIX).map_err(|e| format!("{name}: {e}"))?;
    let config = report
        .host_config
        .ok_or_else(|| format!("{name}: the report has no host_config"))?;
    if config.origin != origin || config.trust != Some(trust) || !config.applied {
        return Err(format!(
            "{name}: unexpected host config report {config:?} (expected {origin}, {trust})"
        ));
    }
    Ok(())
}

/// Prints what the HTTP server sent each machine, for the notes; each must have fetched at
/// least the root part (it booted from the network, at the address dnsmasq fixed for it).
fn report_bytes(rig: &NetbootNet, tree: &Path) -> Result<(), String> {
    let served: BTreeMap<IpAddr, u64> = rig.served_bytes().map_err(|e| e.to_string())?;
    let root_part = tree.join("root.cpio");
    let least = std::fs::metadata(&root_part)
        .map_err(|error| format!("{}: {error}", root_part.display()))?
        .len();
    let mut per_machine = Vec::new();
    for (mac, address) in fixed_addresses() {
        let bytes = address
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| served.get(&ip))
            .copied()
            .unwrap_or(0);
        if bytes < least {
            return Err(format!(
                "{mac} ({address}) was served {bytes} bytes, less than the root part's {least}"
            ));
        }
        per_machine.push(format!("{mac} {bytes} bytes"));
    }
    eprintln!("pxe-fleet: served over HTTP: {}", per_machine.join(", "));
    Ok(())
}

/// OVMF with Secure Boot enforced network-boots the signed UKI (iPXE from the NIC's ROM
/// chains it; the firmware checks its signature). The init brings the network up itself,
/// fetches the root the signed command line names, and takes web-01's config from the fleet
/// the UKI's initramfs carries (signed). Then the tree's root is swapped for another image:
/// the root hash on the signed command line refuses it.
pub fn pxe_uefi(context: &Context) -> Result<(), String> {
    let dir = context.work.join("pxe-uefi");
    let fail = |error: &dyn std::fmt::Display| error.to_string();
    let hosts = netboot::hosts_dir(&dir.join("hosts"), &FLEET).map_err(|e| fail(&e))?;
    let initrd = netboot::fleet_initrd(
        &context.binaries,
        &context.kernel,
        &hosts,
        &dir.join("initrd.img"),
    )
    .map_err(|e| fail(&e))?;
    let key = boot_chain::decrypted_snakeoil_key(&dir).map_err(|e| fail(&e))?;
    let root_hash = &context.system.root_hash;
    let web = &FLEET[0];
    let build = |base_url: &str| {
        // The root comes from the URLs the signed command line names.
        let cmdline = format!(
            "{UKI_CONSOLE} roothash={root_hash} systemd.verity_root_data={base_url}root.squashfs \
             systemd.verity_root_hash={base_url}root.squashfs.verity xtest.scenario=pxe-uefi"
        );
        let uki = dir.join("uki.efi");
        boot_chain::build_uki(
            &context.binaries,
            &context.kernel.vmlinuz,
            &initrd,
            &cmdline,
            Some(&key),
            &uki,
        )
        .map_err(|e| fail(&e))?;
        let spec = TreeSpec {
            kernel: &context.kernel.vmlinuz,
            initrd: &initrd,
            image: &context.system.image,
            cmdline: &context.append("xtest.scenario=pxe-uefi"),
            hosts: Some(&hosts),
            uki: Some(&uki),
            install_uki: None,
            boot_loader: None,
            base_url,
        };
        netboot::netboot_tree(&context.binaries, &spec, &dir.join("tree")).map_err(|e| fail(&e))
    };
    let addresses = [(web.mac, "10.14.0.101".to_owned())];
    let (served, tree) = Served::start(context, "pxe-uefi", &dir, "uki.efi", &addresses, build)?;
    let machine = Machine {
        mac: web.mac,
        host: Some(web.clone()),
    };
    let vm = uefi_vm(context, &served, "pxe-uefi", web.mac)?;
    let console = context.boot(
        &vm,
        "pxe-uefi",
        &[
            LineMatch::Exact("secureboot: Secure boot enabled".to_owned()),
            report_line(),
            LineMatch::Prefix(HOST_LINE.to_owned()),
            pass_line("pxe-uefi"),
        ],
    )?;
    let origin = format!(
        "initramfs:/etc/xorbang/hosts/{}.toml (eth0)",
        web.mac.replace(':', "-")
    );
    check_host(&machine, &console, &origin, ConfigTrust::Signed)?;
    swap_root(context, &tree)?;
    let vm = uefi_vm(context, &served, "pxe-uefi-swapped", web.mac)?;
    context.boot(
        &vm,
        "pxe-uefi-swapped",
        &[
            LineMatch::Between(
                format!(
                    "xorbang: verity: root hash mismatch: roothash={root_hash} but the hash \
                     tree on /dev/loop"
                ),
                format!(" gives {}", context.busybox.root_hash),
            ),
            LineMatch::Exact("xorbang: failure policy: reboot".to_owned()),
        ],
    )?;
    Ok(())
}

/// A machine with Secure Boot enforced, a fresh variable store, no disk and its NIC on tap 0.
fn uefi_vm(context: &Context, served: &Served, name: &str, mac: &str) -> Result<Vm, String> {
    let firmware =
        boot_chain::firmware(&context.work, name, true).map_err(|error| error.to_string())?;
    Ok(Vm {
        boot: Boot::Firmware(firmware),
        disks: Vec::new(),
        writable_disks: false,
        fw_cfg: Vec::new(),
        network: served.network(0, mac)?,
        memory_mib: NETBOOT_MEMORY_MIB,
        timeout: NETBOOT_TIMEOUT,
        after_markers: AfterMarkers::PowerOff,
    })
}

/// Puts the busybox image and its hash tree where the tree serves the root: a consistent
/// image, just not the one the signed root hash names.
fn swap_root(context: &Context, tree: &Path) -> Result<(), String> {
    for (from, name) in [
        (&context.busybox.image, "root.squashfs"),
        (&context.busybox.tree, "root.squashfs.verity"),
    ] {
        let to = tree.join(name);
        std::fs::copy(from, &to).map_err(|error| format!("{}: {error}", to.display()))?;
    }
    Ok(())
}

/// A netbooted machine (web-01's MAC, BIOS) runs `xorbang-installer --disk /dev/vdb --host
/// web-01`, which takes the install UKI and web-01's config from the tree the command line
/// names; then a second machine boots that disk alone under OVMF with Secure Boot enforced
/// and comes up as web-01, its config read from the ESP (trusted local).
pub fn install_disk(context: &Context) -> Result<(), String> {
    let dir = context.work.join("install-disk");
    let fail = |error: &dyn std::fmt::Display| error.to_string();
    std::fs::create_dir_all(&dir).map_err(|e| fail(&e))?;
    let hosts = netboot::hosts_dir(&dir.join("hosts"), &FLEET).map_err(|e| fail(&e))?;
    let key = boot_chain::decrypted_snakeoil_key(&dir).map_err(|e| fail(&e))?;
    let disk_uki = dir.join("install.efi");
    boot_chain::build_uki(
        &context.binaries,
        &context.kernel.vmlinuz,
        &context.vfat_initrd()?,
        &format!(
            "{UKI_CONSOLE} roothash={} xtest.scenario=install-disk-booted",
            context.system.root_hash
        ),
        Some(&key),
        &disk_uki,
    )
    .map_err(|e| fail(&e))?;
    let loader = boot_chain::signed_boot_loader(&key, &dir.join("systemd-bootx64.efi"))
        .map_err(|e| fail(&e))?;
    // The installing machine needs its NIC's driver in the initramfs: the test image carries
    // no kernel modules.
    let initrd = context.ab_initrd()?;
    let build = |base_url: &str| {
        let spec = TreeSpec {
            kernel: &context.kernel.vmlinuz,
            initrd: &initrd,
            image: &context.system.image,
            cmdline: &context.append("xtest.scenario=install-disk"),
            hosts: Some(&hosts),
            uki: None,
            install_uki: Some(&disk_uki),
            boot_loader: Some(&loader),
            base_url,
        };
        netboot::netboot_tree(&context.binaries, &spec, &dir.join("tree")).map_err(|e| fail(&e))
    };
    let web = &FLEET[0];
    let addresses = [(web.mac, "10.14.0.101".to_owned())];
    let (served, _tree) = Served::start(
        context,
        "install-disk",
        &dir,
        "boot.ipxe",
        &addresses,
        build,
    )?;
    let scratch = netboot::blank_disk(&dir.join("scratch.img"), 64 << 20).map_err(|e| fail(&e))?;
    let target = netboot::blank_disk(&dir.join("target.img"), 4 << 30).map_err(|e| fail(&e))?;
    let mut installer = fleet_vm(served.network(0, web.mac)?, NETBOOT_MEMORY_MIB);
    installer.disks = vec![scratch, target.clone()];
    installer.writable_disks = true;
    let console = context.boot(
        &installer,
        "install-disk",
        &[
            LineMatch::Prefix(INSTALL_LINE.to_owned()),
            pass_line("install-disk"),
        ],
    )?;
    let installed = console.find(INSTALL_LINE).unwrap_or_default();
    eprintln!("install-disk: {installed}");
    let firmware =
        boot_chain::firmware(&context.work, "install-disk-booted", true).map_err(|e| fail(&e))?;
    let installed_machine = Vm {
        boot: Boot::Firmware(firmware),
        disks: vec![target],
        writable_disks: true,
        fw_cfg: Vec::new(),
        network: Network::Isolated,
        memory_mib: NETBOOT_MEMORY_MIB,
        timeout: NETBOOT_TIMEOUT,
        after_markers: AfterMarkers::PowerOff,
    };
    let console = context.boot(
        &installed_machine,
        "install-disk-booted",
        &[
            LineMatch::Exact("secureboot: Secure boot enabled".to_owned()),
            report_line(),
            LineMatch::Prefix(HOST_LINE.to_owned()),
            pass_line("install-disk-booted"),
        ],
    )?;
    let machine = Machine {
        mac: web.mac,
        host: Some(web.clone()),
    };
    check_host(
        &machine,
        &console,
        "/dev/vda1:/xorbang/host-config.toml",
        ConfigTrust::Local,
    )
}

/// What the agent prints of the installer's last line.
const INSTALL_LINE: &str = "XORBANG-TEST: FILE install ";

/// A production boot of the test system runs xorbang-installer against the boot disk, a
/// partition node, a mounted disk, a disk with a partition table (no --wipe), a disk too
/// small, and with a UKI of another image (both UKIs from the runner's HTTP server): each is
/// refused with one line (the agent checks the status and the line), and no disk changed
/// (the runner compares their SHA-256).
pub fn install_refusals(context: &Context) -> Result<(), String> {
    let dir = context.work.join("install-refusals");
    let fail = |error: &dyn std::fmt::Display| error.to_string();
    std::fs::create_dir_all(&dir).map_err(|e| fail(&e))?;
    let system = dir.join("system.img");
    std::fs::copy(&context.system.disk, &system).map_err(|e| fail(&e))?;
    let targets = [
        netboot::disk_with_partition(&dir.join("partitioned.img")).map_err(|e| fail(&e))?,
        netboot::blank_disk(&dir.join("small.img"), 512 << 20).map_err(|e| fail(&e))?,
        netboot::blank_disk(&dir.join("large.img"), 3 << 30).map_err(|e| fail(&e))?,
    ];
    // The UKIs come over HTTP (QEMU's user network): fw_cfg reads a 10 MB file a byte at a
    // time, minutes under TCG.
    let served = dir.join("served");
    std::fs::create_dir_all(&served).map_err(|e| fail(&e))?;
    std::fs::copy(&context.chain.signed_uki, served.join("good.efi")).map_err(|e| fail(&e))?;
    boot_chain::build_uki(
        &context.binaries,
        &context.kernel.vmlinuz,
        &context.initrd,
        &format!("{UKI_CONSOLE} roothash={}", context.busybox.root_hash),
        None,
        &served.join("other.efi"),
    )
    .map_err(|e| fail(&e))?;
    let server = HttpServer::serve(&served).map_err(|e| fail(&e))?;
    let url = context.write_work_file("install-refusals-url", &server.guest_url(""))?;
    let before = digests(&targets)?;
    let mut vm = context.vm_with_initrd(
        &context.ab_initrd()?,
        std::iter::once(system)
            .chain(targets.iter().cloned())
            .collect(),
        &format!(
            "{} xtest.scenario=install-refusals",
            context.production_root()
        ),
        crate::context::SYSTEMD_TIMEOUT,
    );
    vm.writable_disks = true;
    vm.network = Network::User;
    // Its network for the UKIs: DHCP on QEMU's user network, from a host config (the A/B
    // initramfs carries the NIC's driver).
    let config = context.write_work_file(
        "install-refusals-host.toml",
        &crate::fixtures::host_config::host_config("xorbang-refusals"),
    )?;
    vm.fw_cfg = vec![
        ("opt/org.xorbang.test/uki-url".to_owned(), url),
        (crate::fixtures::host_config::FW_CFG_NAME.to_owned(), config),
    ];
    let console = context.boot(&vm, "install-refusals", &[pass_line("install-refusals")])?;
    for line in console
        .lines
        .iter()
        .filter(|line| line.contains("FILE refused "))
    {
        eprintln!("install-refusals: {line}");
    }
    let after = digests(&targets)?;
    for ((target, before), after) in targets.iter().zip(&before).zip(&after) {
        if before != after {
            return Err(format!("{} changed: {before} → {after}", target.display()));
        }
    }
    Ok(())
}

/// The SHA-256 of each file.
fn digests(files: &[PathBuf]) -> Result<Vec<String>, String> {
    files
        .iter()
        .map(|file| {
            crate::fixtures::command::run(std::process::Command::new("sha256sum").arg(file))
                .map(|out| out.split_whitespace().next().unwrap_or_default().to_owned())
                .map_err(|error| error.to_string())
        })
        .collect()
}

/// `bench netboot`: one machine of the fleet netboots (BIOS, iPXE, HTTP) at the scenarios'
/// memory: the time from QEMU's start to the init's handoff to systemd (its boot report),
/// and what the server sent it; then smaller and smaller memory until the boot no longer
/// reaches the agent, for the smallest `-m` that netboots the image.
pub fn netboot_bench(context: &Context) -> Result<String, String> {
    let dir = context.work.join("bench-netboot");
    let tree = fleet_tree(context, &dir, "pxe-fleet", &NetbootNet::url(""))?;
    let conf = rig_config(&tree, &fixed_addresses())?;
    let rig = NetbootNet::create(
        &NetSpec::new("bench-netboot", &tree, &dir.join("rig"), conf)
            .map_err(|error| error.to_string())?,
    )
    .map_err(|error| error.to_string())?;
    let served = Served::Rig(rig);
    let host = &FLEET[0];
    let vm = fleet_vm(served.network(0, host.mac)?, NETBOOT_MEMORY_MIB);
    let console = context.boot(&vm, "bench-netboot", &[report_line()])?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    let to_systemd_s = console.last_marker.as_secs_f64();
    let Served::Rig(rig) = &served else {
        return Err("the netboot bench runs on the rig only".to_owned());
    };
    let bytes: u64 = rig
        .served_bytes()
        .map_err(|error| error.to_string())?
        .values()
        .sum();
    println!(
        "netboot of {}: QEMU start to systemd {to_systemd_s:.1} s (init stage {:.1} ms), \
         {bytes} bytes over HTTP",
        host.name,
        report.total().0 as f64 / 1000.0
    );
    let mut smallest = None;
    for memory_mib in [448, 384, 320, 288, 256, 224, 192] {
        let vm = fleet_vm(served.network(0, host.mac)?, memory_mib);
        let log = format!("bench-netboot-{memory_mib}m");
        match context.boot(&vm, &log, &[report_line(), pass_line("pxe-fleet")]) {
            Ok(_) => {
                println!("netboot with -m {memory_mib}: reaches the agent");
                smallest = Some(memory_mib);
            }
            Err(error) => {
                let first = error.lines().next().unwrap_or_default().to_owned();
                println!("netboot with -m {memory_mib}: fails ({first})");
                break;
            }
        }
    }
    let smallest = smallest.map_or("none".to_owned(), |mib| mib.to_string());
    Ok(format!(
        "netboot_to_systemd_s={to_systemd_s:.1} netboot_bytes_per_host={bytes} \
         netboot_min_memory_mib={smallest}"
    ))
}

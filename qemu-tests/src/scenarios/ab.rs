//! A/B updates through real firmware: OVMF boots systemd-boot, which picks the newest UKI
//! with tries left; `xorbang-update` in the guest installs version 2 from the runner's HTTP
//! channel (127.0.0.1, reached through QEMU's user network). Each boot is one QEMU run on
//! the scenario's own copy of the disk and of the firmware's variables (`-no-reboot` turns
//! a reboot into QEMU exiting); the agent's step for each boot comes through fw_cfg.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use xorbang_formats::gpt::{self, GptHeader, GptPartition};

use crate::context::{pass_line, refused, Context};
use crate::fixtures::ab::{
    self, AbFixture, BAD_CHANNELS, FAILING_CHECK, GOOD_CHANNEL, IMAGE_ID, SECURE_CHANNEL,
    UNHEALTHY_CHANNEL,
};
use crate::harness::http_server::HttpServer;
use crate::harness::qemu::{AfterMarkers, LineMatch, Network, Vm};

/// Built once per run, on first use.
static FIXTURE: OnceLock<Result<AbFixture, String>> = OnceLock::new();

/// The network the agent brings up for the channel: QEMU's user network, no gateway, so
/// the guest reaches nothing but 10.0.2.0/24 (the host's loopback is 10.0.2.2).
const NETWORK_CONFIG: &str =
    "version = 1\n[[network]]\nname = \"en*\"\naddresses = [\"10.0.2.15/24\"]\n";

fn fixture(context: &Context) -> Result<&'static AbFixture, String> {
    FIXTURE
        .get_or_init(|| {
            let initrd = context.ab_initrd()?;
            ab::ab_fixture(
                &context.cache,
                &context.work,
                &context.binaries,
                &context.kernel,
                &initrd,
                &context.system,
            )
            .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One machine of a scenario: its disk, its firmware variables, the channel server.
struct Machine<'a> {
    context: &'a Context,
    name: &'static str,
    vm: Vm,
    disk: PathBuf,
    server: HttpServer,
    boots: usize,
}

impl<'a> Machine<'a> {
    fn new(context: &'a Context, name: &'static str, secure_boot: bool) -> Result<Self, String> {
        let fixture = fixture(context)?;
        let disk = context.work.join(format!("{name}.disk.img"));
        let pristine = match secure_boot {
            true => &fixture.secure_disk,
            false => &fixture.disk,
        };
        copy_sparse(pristine, &disk)?;
        let (mut vm, _) = context.firmware_vm(name, secure_boot, vec![disk.clone()])?;
        vm.writable_disks = true;
        vm.network = Network::User;
        let server = HttpServer::serve(&fixture.channels)
            .map_err(|error| format!("cannot serve {}: {error}", fixture.channels.display()))?;
        Ok(Self {
            context,
            name,
            vm,
            disk,
            server,
            boots: 0,
        })
    }

    fn channel(&self, channel: &str) -> String {
        self.server.guest_url(&format!("{channel}/"))
    }

    /// Boots once with the agent's `step` and `settings` (fw_cfg name, value).
    fn boot(
        &mut self,
        step: &str,
        settings: &[(&str, String)],
        expect: &[LineMatch],
    ) -> Result<(), String> {
        self.boot_then(step, settings, expect, AfterMarkers::PowerOff)
    }

    /// [`Self::boot`], ending the run as `after` says once the lines are in.
    fn boot_then(
        &mut self,
        step: &str,
        settings: &[(&str, String)],
        expect: &[LineMatch],
        after: AfterMarkers,
    ) -> Result<(), String> {
        self.boots += 1;
        let label = format!("{}-{}", self.name, self.boots);
        let mut vm = self.vm.clone();
        vm.after_markers = after;
        let config = self
            .context
            .write_work_file(&format!("{label}.host-config.toml"), NETWORK_CONFIG)?;
        vm.fw_cfg
            .push(("opt/org.xorbang/host-config".to_owned(), config));
        let mut all = vec![("step", step.to_owned())];
        all.extend(settings.iter().map(|(name, value)| (*name, value.clone())));
        for (name, value) in all {
            let file = self
                .context
                .write_work_file(&format!("{label}.{name}"), &value)?;
            vm.fw_cfg
                .push((format!("opt/org.xorbang.test/{name}"), file));
        }
        let started = std::time::Instant::now();
        self.context
            .boot(&vm, &label, expect)
            .map_err(|error| format!("boot {} ({step}): {error}", self.boots))?;
        // Each boot's length, for the rollback times the README reports.
        eprintln!("{label} ({step}): {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn copy_sparse(from: &Path, to: &Path) -> Result<(), String> {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|error| format!("cp: {error}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("cp {} {} failed", from.display(), to.display())),
    }
}

fn installed_line(version: &str) -> LineMatch {
    LineMatch::Prefix(format!(
        "xorbang-update: installed {IMAGE_ID} {version} into slot B as {IMAGE_ID}_{version}+"
    ))
}

/// v1 boots and installs v2 from the channel; the next boot runs v2, and once
/// boot-complete.target is reached its entry has no counter left; asked again, the updater
/// finds nothing newer.
pub fn ab_update(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-update", false)?;
    let channel = machine.channel(GOOD_CHANNEL);
    machine.boot(
        "ab-apply",
        &[("channel", channel)],
        &[installed_line("2"), pass_line("ab-apply")],
    )?;
    let channel = machine.channel(GOOD_CHANNEL);
    machine.boot(
        "ab-expect",
        &[("version", "2".to_owned()), ("channel", channel)],
        &[
            LineMatch::Exact(format!("entry {IMAGE_ID}_2.efi: version 2, good (blessed)")),
            LineMatch::Prefix(format!(
                "xorbang-update: running {IMAGE_ID} 2, the channel's newest is 2: nothing to install"
            )),
            pass_line("ab-expect"),
        ],
    )
}

/// A bundle signed by an unpinned key, one whose UKI does not have the signed hash, and
/// one whose UKI boots another root: each refused with one line, and slot B is untouched.
pub fn ab_bad_bundle(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-bad-bundle", false)?;
    let before = slot_b_digest(&machine.disk)?;
    let channels: Vec<String> = BAD_CHANNELS
        .iter()
        .map(|channel| machine.channel(channel))
        .collect();
    let bundle = format!("{IMAGE_ID}_2");
    let uki = format!("{bundle}/{bundle}.efi");
    let v2_root_hash = &fixture(context)?.v2_root_hash;
    machine.boot(
        "ab-refuse",
        &[("channels", channels.join(" "))],
        &[
            LineMatch::Prefix(format!(
                "xorbang-update: the manifest of {bundle} is not signed by a key this image pins: signed by a key the base image does not pin"
            )),
            LineMatch::Prefix(format!("xorbang-update: {uki} SHA-256: ")),
            LineMatch::Between(
                format!("xorbang-update: the UKI {uki}: boots roothash="),
                format!(", not the bundle's {v2_root_hash}"),
            ),
            pass_line("ab-refuse"),
        ],
    )?;
    let after = slot_b_digest(&machine.disk)?;
    match before == after {
        true => Ok(()),
        false => Err("slot B changed although every bundle was refused".to_owned()),
    }
}

/// v2 is installed with one try, then its hash tree is damaged on the disk: the init
/// refuses it and reboots, and the boot after that is v1's, with v2 reported bad.
pub fn ab_rollback_init(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-rollback-init", false)?;
    let channel = machine.channel(GOOD_CHANNEL);
    machine.boot(
        "ab-apply",
        &[("channel", channel), ("tries", "1".to_owned())],
        &[installed_line("2"), pass_line("ab-apply")],
    )?;
    damage_slot_b_tree(&machine.disk)?;
    let v2_root_hash = fixture(context)?.v2_root_hash.clone();
    machine.boot(
        "ab-wait",
        &[],
        &refused(format!(
            "verity: root hash mismatch: roothash={v2_root_hash} but"
        )),
    )?;
    machine.boot(
        "ab-expect",
        &[("version", "1".to_owned())],
        &[
            LineMatch::Exact(format!(
                "entry {IMAGE_ID}_2+0-1.efi: version 2, bad (no tries left, 1 failed)"
            )),
            pass_line("ab-expect"),
        ],
    )
}

/// v3's health check fails: boot-complete.target is never reached, the check's
/// FailureAction reboots, and with its one try spent the next boot is v1's.
pub fn ab_rollback_health(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-rollback-health", false)?;
    let channel = machine.channel(UNHEALTHY_CHANNEL);
    machine.boot(
        "ab-apply",
        &[("channel", channel), ("tries", "1".to_owned())],
        &[installed_line("3"), pass_line("ab-apply")],
    )?;
    machine.boot(
        "ab-wait",
        &[],
        &[LineMatch::Exact(format!(
            "xorbang-health-check: {FAILING_CHECK} failed with status 1"
        ))],
    )?;
    machine.boot(
        "ab-expect",
        &[("version", "1".to_owned())],
        &[
            LineMatch::Exact(format!(
                "entry {IMAGE_ID}_3+0-1.efi: version 3, bad (no tries left, 1 failed)"
            )),
            pass_line("ab-expect"),
        ],
    )
}

/// ab-update under enforced Secure Boot: signed systemd-boot, signed UKIs (v2's from its
/// bundle), the firmware verifying each.
pub fn ab_secureboot(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-secureboot", true)?;
    let channel = machine.channel(SECURE_CHANNEL);
    let secure = || LineMatch::Exact("secureboot: Secure boot enabled".to_owned());
    machine.boot(
        "ab-apply",
        &[("channel", channel)],
        &[secure(), installed_line("2"), pass_line("ab-apply")],
    )?;
    machine.boot(
        "ab-expect",
        &[("version", "2".to_owned())],
        &[
            secure(),
            LineMatch::Exact(format!("entry {IMAGE_ID}_2.efi: version 2, good (blessed)")),
            pass_line("ab-expect"),
        ],
    )
}

/// QEMU is killed while `apply` writes slot B: the next boot is v1, intact, and a second
/// `apply` completes; then v2 boots.
pub fn ab_interrupted(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "ab-interrupted", false)?;
    let channel = machine.channel(GOOD_CHANNEL);
    machine.boot_then(
        "ab-apply",
        &[("channel", channel.clone())],
        &[LineMatch::Prefix(
            "xorbang-update: writing root: ".to_owned(),
        )],
        AfterMarkers::Stop,
    )?;
    machine.boot(
        "ab-apply",
        &[("channel", channel), ("running", "1".to_owned())],
        &[installed_line("2"), pass_line("ab-apply")],
    )?;
    machine.boot(
        "ab-expect",
        &[("version", "2".to_owned())],
        &[pass_line("ab-expect")],
    )
}

/// Slot B (the second root and root-verity partitions): their entries and their bytes.
fn slot_b_digest(disk: &Path) -> Result<String, String> {
    let (bytes, partitions) = read_disk(disk)?;
    let mut hasher = Sha256::new();
    for partition in slot_b(&partitions)? {
        hasher.update(partition.name.as_bytes());
        hasher.update(partition.unique_guid.as_bytes());
        let start = usize::try_from(partition.first_lba.0 * 512).unwrap_or(usize::MAX);
        let end = usize::try_from((partition.last_lba.0 + 1) * 512).unwrap_or(usize::MAX);
        hasher.update(
            bytes
                .get(start..end)
                .ok_or("the disk is shorter than its table")?,
        );
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Flips a byte of slot B's hash tree in its top block (after the superblock): the init's
/// own check of the top block against `roothash=` must catch it.
fn damage_slot_b_tree(disk: &Path) -> Result<(), String> {
    let (mut bytes, partitions) = read_disk(disk)?;
    let verity = &slot_b(&partitions)?[1];
    let at = usize::try_from(verity.first_lba.0 * 512 + 4096 + 17).unwrap_or(usize::MAX);
    let byte = bytes
        .get_mut(at)
        .ok_or("the disk is shorter than its table")?;
    *byte ^= 0x40;
    std::fs::write(disk, bytes).map_err(|error| format!("{}: {error}", disk.display()))
}

fn read_disk(disk: &Path) -> Result<(Vec<u8>, Vec<GptPartition>), String> {
    let bytes = std::fs::read(disk).map_err(|error| format!("{}: {error}", disk.display()))?;
    let header = GptHeader::parse(bytes.get(512..1024).ok_or("no GPT header")?)
        .map_err(|error| format!("{}: {error}", disk.display()))?;
    let start = usize::try_from(header.entries_lba.0 * 512).unwrap_or(usize::MAX);
    let entries = bytes.get(start..).ok_or("no GPT entries")?;
    let partitions = gpt::parse_entries(&header, entries)
        .map_err(|error| format!("{}: {error}", disk.display()))?;
    Ok((bytes, partitions))
}

fn slot_b(partitions: &[GptPartition]) -> Result<[GptPartition; 2], String> {
    let second = |type_guid| {
        partitions
            .iter()
            .filter(|partition| partition.type_guid == type_guid)
            .nth(1)
            .cloned()
            .ok_or_else(|| "the disk has no slot B".to_owned())
    };
    Ok([second(gpt::ROOT_X86_64)?, second(gpt::ROOT_VERITY_X86_64)?])
}

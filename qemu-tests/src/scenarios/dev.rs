//! Graduated immutability: persistent dev mode (`xorbang.dev=persist`, the uppers on the
//! disk's state partition) and `xorbang-commit-overlay`, which turns what was changed into
//! extensions production merges once pinned. Every boot of a scenario uses the same disk, so
//! what one boot writes the next one sees.

use std::path::PathBuf;

use crate::context::{
    parse_report, pass_line, refused, report_line, Context, INITRAMFS_TIMEOUT, REPORT_PREFIX,
    SYSTEMD_TIMEOUT,
};
use crate::fixtures::dev;
use crate::harness::qemu::{Console, LineMatch};

/// Where the init keeps the uppers, as the booted system sees it.
const DEV_DIR: &str = "/run/xorbang/state/xorbang/dev";
/// The agent's line with the time from `dpkg -i` to the installed program running.
const INSTALL_TIME: &str = "XORBANG-TEST: dpkg -i to running: ";
/// The commit tool's line with the pins production needs.
const PIN_LINE: &str = "xorbang-commit-overlay: pin: ";

/// One scenario's machine: its own disk with a state partition, booted again and again.
struct Machine<'a> {
    context: &'a Context,
    name: &'static str,
    disk: PathBuf,
    initrd: PathBuf,
    deb: PathBuf,
    boots: usize,
}

impl<'a> Machine<'a> {
    fn new(
        context: &'a Context,
        name: &'static str,
        extra: &[(&str, String)],
    ) -> Result<Self, String> {
        let dir = context.work.join(name);
        let disk = dev::disk_with_state(&context.binaries.build, &context.system, &dir, extra)
            .map_err(|error| error.to_string())?;
        Ok(Self {
            context,
            name,
            disk,
            // The init mounts the ext4 state partition itself.
            initrd: context.ext4_initrd()?,
            deb: dev::fixture_deb(&dir).map_err(|error| error.to_string())?,
            boots: 0,
        })
    }

    /// Boots with `append` and the agent's `check`, expecting `expect` then the agent's pass.
    fn boot(&mut self, append: &str, check: &str, expect: &[LineMatch]) -> Result<Console, String> {
        let mut all = expect.to_vec();
        all.push(pass_line(check));
        self.boot_expecting(append, check, &all, SYSTEMD_TIMEOUT)
    }

    fn boot_expecting(
        &mut self,
        append: &str,
        check: &str,
        expect: &[LineMatch],
        timeout: std::time::Duration,
    ) -> Result<Console, String> {
        self.boots += 1;
        let mut vm = self.context.vm_with_initrd(
            &self.initrd,
            vec![self.disk.clone()],
            &format!("{append} xtest.scenario={check}"),
            timeout,
        );
        vm.writable_disks = true;
        vm.fw_cfg
            .push(("opt/org.xorbang.test/deb".to_owned(), self.deb.clone()));
        let label = format!("{}-{}", self.name, self.boots);
        let started = std::time::Instant::now();
        let console = self
            .context
            .boot(&vm, &label, expect)
            .map_err(|error| format!("boot {} ({check}): {error}", self.boots))?;
        eprintln!(
            "{label} ({check}): {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if let Some(time) = console.find(INSTALL_TIME) {
            eprintln!("{label}: dpkg -i to running: {time}");
        }
        Ok(console)
    }

    fn persist(&self) -> String {
        format!("{} xorbang.dev=persist", self.context.production_root())
    }
}

/// The upper of the test system's base, as the init names it.
fn system_upper(context: &Context) -> String {
    format!("{DEV_DIR}/{}", context.system.root_hash)
}

/// A file in /etc and a package installed with `dpkg -i` survive a reboot under `persist`;
/// `xorbang.dev=1` and production boots of the same disk see neither, and production's / is
/// read-only. The `xorbang.dev=1` boot also commits its tmpfs upper (`-o` only).
pub fn dev_persist(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "dev-persist", &[])?;
    let persist = machine.persist();
    let upper = system_upper(context);
    machine.boot(
        &persist,
        "dev-persist-write",
        &[
            LineMatch::Exact(format!(
                "xorbang: dev mode: persistent upper {upper} starts empty (first boot of this base)"
            )),
            LineMatch::Prefix(INSTALL_TIME.to_owned()),
        ],
    )?;
    machine.boot(
        &persist,
        "dev-persist-check",
        &[LineMatch::Exact(format!(
            "xorbang: dev mode: persistent upper {upper} (kept from earlier boots)"
        ))],
    )?;
    let transient = format!("{} xorbang.dev=1", context.production_root());
    machine.boot(
        &transient,
        "dev-persist-transient",
        &[
            LineMatch::Exact(
                "xorbang-commit-overlay: xorbang.dev=1 keeps no state partition mounted: give \
                 -o DIR"
                    .to_owned(),
            ),
            LineMatch::Prefix(
                "xorbang-commit-overlay: confext transient: /root/commits/confexts/transient.raw"
                    .to_owned(),
            ),
        ],
    )?;
    machine.boot(&context.production_root(), "dev-persist-prod", &[])?;
    Ok(())
}

/// A boot of another root hash (the busybox image, on the same disk) starts with an empty
/// upper and reports the test system's as kept; booting the test system again finds its
/// upper as it was left.
pub fn dev_persist_new_base(context: &Context) -> Result<(), String> {
    let busybox = &context.busybox;
    let generic =
        |path: &std::path::Path| format!("Type=linux-generic\nCopyBlocks={}\n", path.display());
    let mut machine = Machine::new(
        context,
        "dev-persist-new-base",
        &[
            ("40-other-root.conf", generic(&busybox.image)),
            ("50-other-verity.conf", generic(&busybox.tree)),
        ],
    )?;
    let persist = machine.persist();
    machine.boot(&persist, "dev-persist-new-base-write", &[])?;
    let other = format!(
        "roothash={} systemd.verity_root_data=/dev/vda4 systemd.verity_root_hash=/dev/vda5 \
         xorbang.dev=persist",
        busybox.root_hash
    );
    let system_upper = system_upper(context);
    let console = machine.boot(
        &other,
        "dev-persist-new-base-other",
        &[
            LineMatch::Exact(format!(
                "xorbang: dev mode: persistent upper {DEV_DIR}/{} starts empty (first boot of \
                 this base)",
                busybox.root_hash
            )),
            LineMatch::Exact(format!(
                "xorbang: dev mode: {system_upper} is kept, not in use"
            )),
            report_line(),
        ],
    )?;
    let report = parse_report(&console, REPORT_PREFIX)?;
    let kept = report.dev.map(|dev| dev.kept).unwrap_or_default();
    if kept != [system_upper.clone()] {
        return Err(format!("the other base's report keeps {kept:?}"));
    }
    machine.boot(
        &persist,
        "dev-persist-new-base-back",
        &[LineMatch::Exact(format!(
            "xorbang: dev mode: persistent upper {system_upper} (kept from earlier boots)"
        ))],
    )?;
    Ok(())
}

/// `persist` on the plain system disk, which has no state partition: one line naming what is
/// missing and where, then the failure policy; never a transient upper instead.
pub fn dev_persist_no_state(context: &Context) -> Result<(), String> {
    let vm = context.vm_with_initrd(
        &context.ext4_initrd()?,
        vec![context.system.disk.clone()],
        &format!("{} xorbang.dev=persist", context.production_root()),
        INITRAMFS_TIMEOUT,
    );
    let expect = refused(
        "xorbang.dev=persist: no state partition (a /var partition of the Discoverable \
         Partitions Specification) on the disk of /dev/vda1"
            .to_owned(),
    );
    context.boot(&vm, "dev-persist-no-state", &expect)?;
    Ok(())
}

/// A state partition whose upper for this base is a symlink (to the base's /etc, as an
/// attacker with the disk would plant to have the init write elsewhere): refused with one
/// line naming it, then the failure policy; nothing is mounted from it.
pub fn dev_persist_hostile_state(context: &Context) -> Result<(), String> {
    let dir = context.work.join("dev-persist-hostile-state");
    let tree = dir.join("state-tree");
    let dev_dir = tree.join("xorbang/dev");
    std::fs::create_dir_all(&dev_dir).map_err(|error| format!("{}: {error}", dev_dir.display()))?;
    let upper = dev_dir.join(&context.system.root_hash);
    if !upper.is_symlink() {
        std::os::unix::fs::symlink("/run/xorbang/base/etc", &upper)
            .map_err(|error| format!("{}: {error}", upper.display()))?;
    }
    let disk = dev::disk_with_state_holding(
        &context.binaries.build,
        &context.system,
        &dir,
        Some(&tree),
        &[],
    )
    .map_err(|error| error.to_string())?;
    let mut vm = context.vm_with_initrd(
        &context.ext4_initrd()?,
        vec![disk],
        &format!("{} xorbang.dev=persist", context.production_root()),
        INITRAMFS_TIMEOUT,
    );
    vm.writable_disks = true;
    let expect = refused(format!(
        "xorbang.dev=persist: {} on the state partition is a symlink, not a directory; refused",
        system_upper(context)
    ));
    context.boot(&vm, "dev-persist-hostile-state", &expect)?;
    Ok(())
}

/// In dev mode: install the fixture, add a file to /etc, delete one of the base's; commit as
/// `local-tools`. A dev boot then merges the committed extensions with an empty upper; a
/// production boot that selects them unpinned is refused; one with the printed pins has the
/// package and the file, read-only, and the deleted file back (the commit reported it).
pub fn commit_overlay(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "commit-overlay", &[])?;
    let persist = machine.persist();
    let console = machine.boot(
        &persist,
        "commit-overlay-make",
        &[
            LineMatch::Prefix(INSTALL_TIME.to_owned()),
            LineMatch::Prefix("xorbang-commit-overlay: sysext local-tools: ".to_owned()),
            LineMatch::Prefix("xorbang-commit-overlay: confext local-tools: ".to_owned()),
            LineMatch::Exact(format!(
                "xorbang-commit-overlay: packages recorded in \
                 /usr/share/xorbang/extensions/local-tools.packages (dpkg's database does not \
                 merge across layers): {} 1.0",
                dev::PACKAGE
            )),
            LineMatch::Exact(
                "xorbang-commit-overlay: not committed: /etc/issue.net: deleted here; an \
                 extension can only add files, so the base's copy stays"
                    .to_owned(),
            ),
            LineMatch::Prefix(PIN_LINE.to_owned()),
            LineMatch::Prefix("xorbang-commit-overlay: committed in ".to_owned()),
        ],
    )?;
    let pins = console.find(PIN_LINE).ok_or("no pin line")?.to_owned();
    for line in console.lines.iter().filter(|line| {
        line.starts_with("xorbang-commit-overlay: committed in ")
            || line.starts_with("xorbang-commit-overlay: sysext ")
            || line.starts_with("xorbang-commit-overlay: confext ")
    }) {
        eprintln!("commit-overlay: {line}");
    }
    machine.boot(
        &persist,
        "commit-overlay-dev",
        &[
            LineMatch::Prefix(format!(
                "xorbang: dev mode: persistent upper {} starts empty (the last upper was \
                 committed and set aside as ",
                system_upper(context)
            )),
            LineMatch::Exact(
                "xorbang: dev mode: selecting sysext local-tools, committed over this base"
                    .to_owned(),
            ),
        ],
    )?;
    let unpinned = format!("{} xorbang.sysext=local-tools", context.production_root());
    machine.boot_expecting(
        &unpinned,
        "commit-overlay-unpinned",
        &refused(
            "sysext local-tools (state:/var/lib/extensions/local-tools.raw): not pinned".to_owned(),
        ),
        INITRAMFS_TIMEOUT,
    )?;
    machine.boot(
        &format!("{} {pins}", context.production_root()),
        "commit-overlay-prod",
        &[LineMatch::Prefix(
            "xorbang: merging sysext local-tools from state:/var/lib/extensions/local-tools.raw"
                .to_owned(),
        )],
    )?;
    Ok(())
}

/// `--dry-run` lists every change (committed or not, with the reason) and writes nothing;
/// `--discard` then asks for an empty upper, which the next boot starts with.
pub fn commit_overlay_dry_run(context: &Context) -> Result<(), String> {
    let mut machine = Machine::new(context, "commit-overlay-dry-run", &[])?;
    let persist = machine.persist();
    let would = |kind: &str, path: &str| {
        LineMatch::Exact(format!(
            "xorbang-commit-overlay: would commit to {kind} local-tools: {path}"
        ))
    };
    let not = |path: &str, reason: &str| {
        LineMatch::Exact(format!(
            "xorbang-commit-overlay: not committed: {path}: {reason}"
        ))
    };
    machine.boot(
        &persist,
        "commit-overlay-dry-run",
        &[
            would("sysext", dev::PROGRAM),
            would("confext", "/etc/xorbang-committed.conf"),
            LineMatch::Exact(format!(
                "xorbang-commit-overlay: would record package {} 1.0",
                dev::PACKAGE
            )),
            not(
                "/etc/issue.net",
                "deleted here; an extension can only add files, so the base's copy stays",
            ),
            not(
                "/root/xorbang-notes",
                "outside /usr, /opt and /etc, which extensions merge",
            ),
            not("/var/lib/dpkg/status", "dpkg's database does not merge across layers; the system extension records its package list instead"),
            LineMatch::Prefix("xorbang-commit-overlay: dry run: ".to_owned()),
            LineMatch::Exact(format!(
                "xorbang-commit-overlay: the upper {} is deleted at the next boot, which starts \
                 with an empty one",
                system_upper(context)
            )),
        ],
    )?;
    machine.boot(
        &persist,
        "commit-overlay-discarded",
        &[LineMatch::Exact(format!(
            "xorbang: dev mode: persistent upper {} starts empty (the last upper was \
             discarded on request)",
            system_upper(context)
        ))],
    )?;
    Ok(())
}

//! Device-mapper against a real kernel: create, load, resume, status, remove. Needs root and
//! /dev/mapper/control, which the build host lacks (no device-mapper in its kernel), so it
//! skips itself there; the VM tier runs it. The `zero` target is the dm-zero module on
//! Debian kernels: the kernel loads it through modprobe on a full system; a bare initramfs
//! must insmod it first. (Checked by hand on Debian's 6.1 kernel under QEMU.)

use std::path::Path;

use xorbang_init::verity::device_mapper::{make_node, DeviceMapper, Sectors, Target};

const CONTROL: &str = "/dev/mapper/control";

/// Removes the test device even when an assertion fails half-way. Retries a few times
/// because udev, where it runs, briefly opens new devices to probe them (EBUSY).
struct Cleanup<'a> {
    dm: &'a DeviceMapper,
    name: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for attempt in 1..=20 {
            match self.dm.remove(self.name) {
                Ok(()) => return,
                Err(error) if attempt == 20 => eprintln!("cleanup: {error}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
}

fn target(start: u64, length: u64, target_type: &str) -> Target {
    Target {
        start: Sectors(start),
        length: Sectors(length),
        target_type: target_type.to_owned(),
        params: String::new(),
    }
}

#[test]
fn create_load_resume_status_remove() {
    if !Path::new(CONTROL).exists() || !rustix::process::geteuid().is_root() {
        println!("skipped: no device-mapper on this host (or not root)");
        return;
    }
    let dm = DeviceMapper::open(Path::new(CONTROL)).expect("open control");
    assert_eq!(dm.version().expect("DM_VERSION")[0], 4);

    let name = format!("xorbang-test-{}", std::process::id());
    let uuid = format!("XORBANG-TEST-{}", std::process::id());
    let created = dm.create(&name, Some(&uuid)).expect("DM_DEV_CREATE");
    let _cleanup = Cleanup {
        dm: &dm,
        name: &name,
    };
    assert!(
        dm.table_status(&name).expect("status").is_empty(),
        "no live table before resume"
    );

    let table = [target(0, 2048, "zero"), target(2048, 8, "error")];
    dm.load_table(&name, &table, true).expect("DM_TABLE_LOAD");
    let resumed = dm.resume(&name).expect("DM_DEV_SUSPEND (resume)");
    assert_eq!(resumed, created);

    let status = dm.table_status(&name).expect("DM_TABLE_STATUS");
    let lines: Vec<_> = status
        .iter()
        .map(|t| (t.start, t.length, t.target_type.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Sectors(0), Sectors(2048), "zero"),
            (Sectors(2048), Sectors(8), "error")
        ]
    );

    let dev = tempfile::tempdir().expect("tempdir");
    let node = make_node(dev.path(), &name, resumed).expect("mknod");
    let data = std::fs::read(&node).map(|bytes| bytes.len());
    // 2048 zero sectors then an error target: reading to the end must fail at the error.
    assert!(
        data.is_err(),
        "reading into the error target fails: {data:?}"
    );
    let mut head = vec![0xaa; 4096];
    let file = std::fs::File::open(&node).expect("open node");
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).expect("read zeros");
    assert!(head.iter().all(|&byte| byte == 0));
    drop(file);

    let error = dm.create(&name, None).expect_err("duplicate name");
    assert!(
        error
            .to_string()
            .starts_with(&format!("DM_DEV_CREATE {name}: ")),
        "{error}"
    );
}

//! `init=` is resolved inside the new root, as the new root will see it: a symlink, absolute
//! or relative, can never lead the check to a file outside it, even one that exists there.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use xorbang_init::handoff::switch_root::check_init;

fn executable(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn symlinks_out_of_the_new_root_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside/init");
    executable(&outside);
    executable(&root.join("lib/systemd/systemd"));
    std::fs::create_dir_all(root.join("sbin")).expect("mkdir");
    // Inside the root: the way Debian links /sbin/init, which must resolve.
    symlink("/lib/systemd/systemd", root.join("sbin/init")).expect("symlink");
    // Out of it: an absolute link to the outside file, and a relative one climbing to it.
    symlink(&outside, root.join("sbin/absolute")).expect("symlink");
    symlink("../../outside/init", root.join("sbin/relative")).expect("symlink");
    // Followed from the host, both links reach an executable: only resolving in the root
    // can refuse them.
    for link in ["sbin/absolute", "sbin/relative"] {
        let target = std::fs::metadata(root.join(link)).expect("the link resolves on the host");
        assert!(target.is_file() && target.permissions().mode() & 0o111 != 0);
    }

    check_init(&root, Path::new("/sbin/init")).expect("a link inside the root resolves");
    for link in ["/sbin/absolute", "/sbin/relative"] {
        let error = check_init(&root, Path::new(link))
            .expect_err("a link out of the root must not reach the outside init")
            .to_string();
        assert!(
            error.starts_with(&format!("init {link} does not exist")),
            "{error}"
        );
    }
}

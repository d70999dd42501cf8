//! Kernel module index: `modules.dep` and `modules.builtin`, as depmod writes them.
//!
//! The same code serves the build tool (which picks the module closure that goes into the
//! initramfs and writes a trimmed `modules.dep`) and the init (which loads what the initramfs
//! carries, dependencies first).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A module name in canonical form: the file stem with `-` folded to `_`, as the kernel and
/// modprobe compare them (`dm-verity.ko` is the module `dm_verity`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// Canonical name of a user-supplied module name such as `dm-verity` or `virtio_blk`.
    pub fn new(name: &str) -> Self {
        Self(name.replace('-', "_"))
    }

    /// Canonical name of a module path such as `kernel/drivers/md/dm-verity.ko`.
    pub fn from_path(path: &str) -> Self {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        Self::new(stem)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("modules.dep line {line}: expected `path.ko: dependencies`, found {text:?}")]
    Malformed { line: usize, text: String },
    #[error("module {0} is neither in modules.dep nor built in")]
    Unknown(ModuleName),
    #[error("module {module} depends on {dependency}, which modules.dep does not list")]
    MissingDependency {
        module: ModuleName,
        dependency: String,
    },
    #[error("modules.dep has a dependency cycle through {0}")]
    Cycle(ModuleName),
}

/// One `modules.dep` entry: the module's path (relative to the modules directory) and the
/// paths of the modules it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    pub path: String,
    pub dependencies: Vec<String>,
}

/// The parsed `modules.dep`, keyed by canonical module name. Round-trips through `Display`
/// (entries in name order), which is how the build tool writes the trimmed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    entries: BTreeMap<ModuleName, DepEntry>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<Self, ModuleError> {
        let mut entries = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ModuleError::Malformed {
                    line: index + 1,
                    text: line.to_owned(),
                });
            };
            let path = path.trim();
            if path.is_empty() || !path.contains(".ko") {
                return Err(ModuleError::Malformed {
                    line: index + 1,
                    text: line.to_owned(),
                });
            }
            let entry = DepEntry {
                path: path.to_owned(),
                dependencies: deps.split_whitespace().map(str::to_owned).collect(),
            };
            entries.insert(ModuleName::from_path(path), entry);
        }
        Ok(Self { entries })
    }

    pub fn get(&self, name: &ModuleName) -> Option<&DepEntry> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &ModuleName> {
        self.entries.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The given modules and everything they need, in an order where every module comes after
    /// its dependencies (the order to load them in). Built-in modules are skipped.
    pub fn load_order<'a>(
        &self,
        wanted: impl IntoIterator<Item = &'a ModuleName>,
        builtin: &Builtin,
    ) -> Result<Vec<&DepEntry>, ModuleError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            if builtin.contains(name) && !self.entries.contains_key(name) {
                continue;
            }
            self.visit(name, &mut done, &mut BTreeSet::new(), &mut order)?;
        }
        Ok(order)
    }

    /// Depth-first post-order visit; `active` holds the current path to detect cycles.
    fn visit<'s>(
        &'s self,
        name: &ModuleName,
        done: &mut BTreeSet<ModuleName>,
        active: &mut BTreeSet<ModuleName>,
        order: &mut Vec<&'s DepEntry>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) {
            return Ok(());
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModuleError::Unknown(name.clone()))?;
        if !active.insert(name.clone()) {
            return Err(ModuleError::Cycle(name.clone()));
        }
        for dependency in &entry.dependencies {
            let dep_name = ModuleName::from_path(dependency);
            if !self.entries.contains_key(&dep_name) {
                return Err(ModuleError::MissingDependency {
                    module: name.clone(),
                    dependency: dependency.clone(),
                });
            }
            self.visit(&dep_name, done, active, order)?;
        }
        active.remove(name);
        done.insert(name.clone());
        order.push(entry);
        Ok(())
    }

    /// The index restricted to the given entries (the build tool's trimmed `modules.dep`).
    pub fn restricted_to(&self, keep: &[&DepEntry]) -> Self {
        let entries = keep
            .iter()
            .map(|entry| (ModuleName::from_path(&entry.path), (*entry).clone()))
            .collect();
        Self { entries }
    }
}

impl fmt::Display for ModulesDep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in self.entries.values() {
            write!(f, "{}:", entry.path)?;
            for dependency in &entry.dependencies {
                write!(f, " {dependency}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// `modules.builtin`: one path per line of a module compiled into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Builtin(BTreeSet<ModuleName>);

impl Builtin {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(ModuleName::from_path)
                .collect(),
        )
    }

    pub fn contains(&self, name: &ModuleName) -> bool {
        self.0.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/squashfs/squashfs.ko:
";

    fn names(order: &[&DepEntry]) -> Vec<String> {
        order
            .iter()
            .map(|entry| ModuleName::from_path(&entry.path).to_string())
            .collect()
    }

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn dependencies_load_before_their_users() {
        let dep = ModulesDep::parse(DEP).expect("parses");
        let wanted = [ModuleName::new("dm-verity"), ModuleName::new("virtio_blk")];
        let order = names(
            &dep.load_order(&wanted, &Builtin::default())
                .expect("orders"),
        );
        assert_eq!(order.len(), 7);
        for (user, dependency) in [
            ("dm_verity", "dm_mod"),
            ("dm_verity", "dm_bufio"),
            ("dm_verity", "reed_solomon"),
            ("virtio_blk", "virtio"),
            ("virtio", "virtio_ring"),
        ] {
            assert!(position(&order, dependency) < position(&order, user));
        }
    }

    #[test]
    fn each_module_is_listed_once() {
        let dep = ModulesDep::parse(DEP).expect("parses");
        let wanted = [
            ModuleName::new("virtio_blk"),
            ModuleName::new("virtio"),
            ModuleName::new("virtio_blk"),
        ];
        let order = names(
            &dep.load_order(&wanted, &Builtin::default())
                .expect("orders"),
        );
        assert_eq!(order, ["virtio_ring", "virtio", "virtio_blk"]);
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_refused() {
        let dep = ModulesDep::parse(DEP).expect("parses");
        let builtin = Builtin::parse("kernel/fs/ext4/ext4.ko\n");
        let order = dep
            .load_order(&[ModuleName::new("ext4")], &builtin)
            .expect("built-in is fine");
        assert!(order.is_empty());
        assert_eq!(
            dep.load_order(&[ModuleName::new("nope")], &builtin),
            Err(ModuleError::Unknown(ModuleName::new("nope")))
        );
    }

    #[test]
    fn cycles_and_dangling_dependencies_are_errors() {
        let cyclic = ModulesDep::parse("a.ko: b.ko\nb.ko: a.ko\n").expect("parses");
        assert!(matches!(
            cyclic.load_order(&[ModuleName::new("a")], &Builtin::default()),
            Err(ModuleError::Cycle(_))
        ));
        let dangling = ModulesDep::parse("a.ko: gone.ko\n").expect("parses");
        assert!(matches!(
            dangling.load_order(&[ModuleName::new("a")], &Builtin::default()),
            Err(ModuleError::MissingDependency { .. })
        ));
    }

    #[test]
    fn malformed_lines_name_their_number() {
        assert_eq!(
            ModulesDep::parse("a.ko:\nnot a module line\n"),
            Err(ModuleError::Malformed {
                line: 2,
                text: "not a module line".into()
            })
        );
    }

    #[test]
    fn trimmed_index_round_trips() {
        let dep = ModulesDep::parse(DEP).expect("parses");
        let order = dep
            .load_order(&[ModuleName::new("virtio_blk")], &Builtin::default())
            .expect("orders");
        let trimmed = dep.restricted_to(&order);
        let text = trimmed.to_string();
        assert_eq!(ModulesDep::parse(&text).expect("reparses"), trimmed);
        assert_eq!(trimmed.names().count(), 3);
    }
}

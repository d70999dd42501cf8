//! The build profile: one TOML file that says which OS `xorbang-build os` makes — the Debian
//! root, its files, units and users, the extensions, the boot command line and the disk.
//! Parsing takes the text and gives a [`Profile`] or the first refusal with its line and
//! column; paths in it stay relative to the profile's directory until the caller resolves
//! them.
//!
//! ```toml
//! [os]
//! id = "xorbang-demo"         # IMAGE_ID: names the UKI, the disk and (later) update slots
//! version = "1"               # IMAGE_VERSION
//!
//! [debian]
//! suite = "bookworm"
//! packages = ["systemd-sysv", "udev"]
//! kernel = "linux-image-amd64"
//!
//! [system]
//! hostname = "demo"
//! enable = ["systemd-networkd.service"]
//!
//! [[files]]
//! path = "/etc/motd"
//! content = "hello\n"
//!
//! [image]
//! format = "erofs"            # or "squashfs" (default: erofs)
//! compression = "lz4hc"       # erofs: lz4hc, lz4, none; squashfs: zstd, gzip, xz, lz4
//!
//! [boot]
//! cmdline = "console=ttyS0"   # roothash= is added by the build
//!
//! [[sysext]]
//! name = "debug"
//! packages = ["strace"]
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::image::root_format::{self, RootFormat};
use xorbang_formats::host_config::check_hostname;
use xorbang_formats::text_position::{line_col, one_line};

/// A profile that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub os: OsIdentity,
    pub debian: DebianRoot,
    pub hostname: Option<String>,
    /// Units enabled in the image (`systemctl enable` in the root).
    pub enable: Vec<String>,
    pub files: Vec<ProfileFile>,
    pub users: Vec<ProfileUser>,
    /// What the root image is packed as.
    pub image: RootFormat,
    pub boot: BootSettings,
    pub sysexts: Vec<ExtensionDef>,
    pub confexts: Vec<ExtensionDef>,
    /// systemd-repart style definitions for the disk; the default layout when `None`.
    pub disk_definitions: Option<PathBuf>,
}

/// What os-release and the boot loader call this OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsIdentity {
    /// `IMAGE_ID=`.
    pub id: String,
    /// `IMAGE_VERSION=`.
    pub version: String,
}

/// The Debian root mmdebstrap makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianRoot {
    pub suite: String,
    /// The archive; mmdebstrap's own default (the host's apt sources) when `None`.
    pub mirror: Option<String>,
    pub variant: String,
    pub packages: Vec<String>,
    /// The kernel package: its vmlinuz goes into the UKI, its modules into the initramfs.
    pub kernel: String,
    /// A customize hook script the profile names (run by mmdebstrap with the root as `$1`).
    pub hook: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFile {
    /// Absolute path in the image.
    pub path: String,
    pub content: FileContent,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    Inline(String),
    /// A file next to the profile.
    Source(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUser {
    pub name: String,
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// The command line without `roothash=`, which the build adds.
    pub cmdline: String,
    /// Initramfs modules besides the default set.
    pub modules: Vec<String>,
    /// Secure Boot key and certificate (PEM) the UKI is signed with.
    pub signing: Option<(PathBuf, PathBuf)>,
}

/// One `[[sysext]]` or `[[confext]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionDef {
    pub name: String,
    /// Packages installed over the base; the extension is what they change.
    pub packages: Vec<String>,
    /// A tree next to the profile, added as it is.
    pub directory: Option<PathBuf>,
}

/// Why a profile is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ProfileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses and checks a profile's text.
pub fn parse(text: &str) -> Result<Profile, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|error| {
        let at = error.span().map_or(0, |span| span.start);
        locate(text, at, error.message())
    })?;
    raw.check()
        .map_err(|(at, message)| locate(text, at, &message))
}

/// Where the profile names `package` (its base packages, kernel or an extension's), so a
/// build that failed on it can point there. `None` when the text does not name it.
pub fn package_position(text: &str, package: &str) -> Option<(usize, usize)> {
    let raw: RawProfile = toml::from_str(text).ok()?;
    let debian = std::iter::once(&raw.debian.kernel).chain(&raw.debian.packages);
    let extensions = raw.sysext.iter().flat_map(|extension| &extension.packages);
    let named = debian
        .chain(extensions)
        .find(|name| name.get_ref() == package)?;
    Some(line_col(text, named.span().start))
}

/// Where the profile names its mirror, if it does.
pub fn mirror_position(text: &str) -> Option<(usize, usize)> {
    let raw: RawProfile = toml::from_str(text).ok()?;
    Some(line_col(text, raw.debian.mirror?.span().start))
}

fn locate(text: &str, at: usize, message: &str) -> ProfileError {
    let (line, column) = line_col(text, at);
    ProfileError {
        line,
        column,
        message: one_line(message),
    }
}

/// A refusal: the byte offset of the value, and why.
type Refusal = (usize, String);

// The schema as written: every value that a rule checks keeps its place in the text.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    os: RawOs,
    debian: RawDebian,
    #[serde(default)]
    system: RawSystem,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    image: RawImage,
    #[serde(default)]
    boot: RawBoot,
    #[serde(default)]
    sysext: Vec<RawExtension>,
    #[serde(default)]
    confext: Vec<RawExtension>,
    #[serde(default)]
    disk: RawDisk,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOs {
    id: Spanned<String>,
    version: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebian {
    suite: Spanned<String>,
    mirror: Option<Spanned<String>>,
    variant: Option<Spanned<String>>,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    kernel: Spanned<String>,
    hook: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    hostname: Option<Spanned<String>>,
    #[serde(default)]
    enable: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    content: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    mode: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    shell: Option<Spanned<String>>,
    #[serde(default)]
    ssh_authorized_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImage {
    format: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    cmdline: Option<Spanned<String>>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
    sign_key: Option<Spanned<String>>,
    sign_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtension {
    name: Spanned<String>,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    directory: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    definitions: Option<Spanned<String>>,
}

const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "standard",
];
const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".socket", ".timer", ".target", ".path", ".mount",
];

impl RawProfile {
    fn check(self) -> Result<Profile, Refusal> {
        let sysexts = check_extensions(&self.sysext, "sysext")?;
        let confexts = check_extensions(&self.confext, "confext")?;
        if let Some(extension) = self.confext.iter().find(|e| !e.packages.is_empty()) {
            return Err((
                extension.packages[0].span().start,
                "a confext is built from a directory; put packages in a [[sysext]] (its new \
                 /etc files go to a companion confext)"
                    .to_owned(),
            ));
        }
        let mut names = BTreeSet::new();
        for extension in self.sysext.iter().chain(&self.confext) {
            if !names.insert(extension.name.get_ref().as_str()) {
                return Err(at(
                    &extension.name,
                    "a second extension with this name (names are unique across sysexts and \
                     confexts)",
                ));
            }
        }
        Ok(Profile {
            os: self.os.check()?,
            debian: self.debian.check()?,
            hostname: self
                .system
                .hostname
                .as_ref()
                .map(|name| checked(name, check_hostname))
                .transpose()?,
            enable: each(&self.system.enable, check_unit)?,
            files: self
                .files
                .iter()
                .map(RawFile::check)
                .collect::<Result<_, _>>()?,
            users: self
                .users
                .iter()
                .map(RawUser::check)
                .collect::<Result<_, _>>()?,
            image: self.image.check()?,
            boot: self.boot.check()?,
            sysexts,
            confexts,
            disk_definitions: self
                .disk
                .definitions
                .as_ref()
                .map(|path| checked(path, check_relative).map(PathBuf::from))
                .transpose()?,
        })
    }
}

impl RawOs {
    fn check(&self) -> Result<OsIdentity, Refusal> {
        Ok(OsIdentity {
            id: checked(&self.id, check_image_id)?,
            version: checked(&self.version, check_version)?,
        })
    }
}

impl RawDebian {
    fn check(&self) -> Result<DebianRoot, Refusal> {
        let variant = match &self.variant {
            Some(variant) => checked(variant, |text| match VARIANTS.contains(&text) {
                true => Ok(()),
                false => Err(format!("one of {} is expected", VARIANTS.join(", "))),
            })?,
            None => "minbase".to_owned(),
        };
        Ok(DebianRoot {
            suite: checked(&self.suite, check_suite)?,
            mirror: self
                .mirror
                .as_ref()
                .map(|mirror| checked(mirror, check_mirror))
                .transpose()?,
            variant,
            packages: each(&self.packages, check_package)?,
            kernel: checked(&self.kernel, check_package)?,
            hook: self
                .hook
                .as_ref()
                .map(|path| checked(path, check_relative).map(PathBuf::from))
                .transpose()?,
        })
    }
}

impl RawFile {
    fn check(&self) -> Result<ProfileFile, Refusal> {
        let path = checked(&self.path, check_image_path)?;
        let content = match (&self.content, &self.source) {
            (Some(content), None) => FileContent::Inline(content.get_ref().clone()),
            (None, Some(source)) => {
                FileContent::Source(PathBuf::from(checked(source, check_relative)?))
            }
            _ => {
                return Err(at(
                    &self.path,
                    "a file needs exactly one of content = \"…\" and source = \"…\"",
                ))
            }
        };
        let mode = match &self.mode {
            Some(mode) => match u32::try_from(*mode.get_ref()) {
                Ok(bits) if bits <= 0o777 => bits,
                _ => return Err(at(mode, "a mode is permission bits, 0o000 to 0o777")),
            },
            None => 0o644,
        };
        Ok(ProfileFile {
            path,
            content,
            mode,
        })
    }
}

impl RawUser {
    fn check(&self) -> Result<ProfileUser, Refusal> {
        Ok(ProfileUser {
            name: checked(&self.name, check_account)?,
            groups: each(&self.groups, check_account)?,
            shell: self
                .shell
                .as_ref()
                .map(|shell| checked(shell, check_image_path))
                .transpose()?,
            ssh_authorized_keys: each(&self.ssh_authorized_keys, check_ssh_key)?,
        })
    }
}

impl RawImage {
    /// The format named (the default's when none is) with the compressor named (the
    /// format's default when none is). A known format with its default compressor always
    /// parses, so any other refusal is the compressor's.
    fn check(&self) -> Result<RootFormat, Refusal> {
        let format = match &self.format {
            Some(format) => checked(format, |name| {
                match root_format::FORMAT_NAMES.contains(&name) {
                    true => Ok(()),
                    false => Err(format!(
                        "one of {} is expected",
                        root_format::FORMAT_NAMES.join(", ")
                    )),
                }
            })?,
            None => root_format::DEFAULT.format_name().to_owned(),
        };
        let compression = self.compression.as_ref();
        RootFormat::parse(&format, compression.map(|c| c.get_ref().as_str()))
            .map_err(|reason| (compression.map_or(0, |c| c.span().start), reason))
    }
}

impl RawBoot {
    fn check(&self) -> Result<BootSettings, Refusal> {
        let signing = match (&self.sign_key, &self.sign_cert) {
            (Some(key), Some(cert)) => Some((
                PathBuf::from(checked(key, check_relative)?),
                PathBuf::from(checked(cert, check_relative)?),
            )),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                return Err(at(one, "sign_key and sign_cert go together"))
            }
        };
        Ok(BootSettings {
            cmdline: match &self.cmdline {
                Some(cmdline) => checked(cmdline, check_cmdline)?,
                None => String::new(),
            },
            modules: each(&self.modules, check_module)?,
            signing,
        })
    }
}

fn check_extensions(raw: &[RawExtension], kind: &str) -> Result<Vec<ExtensionDef>, Refusal> {
    raw.iter()
        .map(|extension| {
            if extension.packages.is_empty() && extension.directory.is_none() {
                return Err(at(
                    &extension.name,
                    &format!("a {kind} needs packages = […] or directory = \"…\" (or both)"),
                ));
            }
            Ok(ExtensionDef {
                name: checked(&extension.name, check_extension_name)?,
                packages: each(&extension.packages, check_package)?,
                directory: extension
                    .directory
                    .as_ref()
                    .map(|path| checked(path, check_relative).map(PathBuf::from))
                    .transpose()?,
            })
        })
        .collect()
}

fn at<T>(value: &Spanned<T>, message: &str) -> Refusal {
    (value.span().start, message.to_owned())
}

/// The value, or a refusal at its place with the rule's reason and the value itself.
fn checked(
    value: &Spanned<String>,
    rule: impl Fn(&str) -> Result<(), String>,
) -> Result<String, Refusal> {
    rule(value.get_ref())
        .map(|()| value.get_ref().clone())
        .map_err(|reason| at(value, &format!("{:?}: {reason}", value.get_ref())))
}

fn each(
    values: &[Spanned<String>],
    rule: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, Refusal> {
    values.iter().map(|value| checked(value, &rule)).collect()
}

fn only(text: &str, allowed: impl Fn(char) -> bool, what: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    match text.chars().find(|&c| !allowed(c)) {
        Some(c) => Err(format!("{c:?} is not allowed in {what}")),
        None => Ok(()),
    }
}

/// os-release's IMAGE_ID characters, without '_': update slots are named `ID_VERSION`.
fn check_image_id(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-',
        "an image id (a-z, 0-9, '.', '-')",
    )
}

/// A version boot loaders compare (`+` starts boot counting in a UKI's name, so not here).
fn check_version(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_alphanumeric() || ".~^-".contains(c),
        "a version (A-Z, a-z, 0-9, '.', '~', '^', '-')",
    )
}

fn check_suite(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "a suite name",
    )
}

fn check_mirror(text: &str) -> Result<(), String> {
    let scheme = ["http://", "https://", "file:///"]
        .iter()
        .any(|scheme| text.starts_with(scheme));
    if !scheme {
        return Err("a mirror is an http://, https:// or file:/// URL".into());
    }
    only(text, |c| c.is_ascii_graphic(), "a URL")
}

/// Debian policy's package names.
fn check_package(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c),
        "a Debian package name",
    )?;
    match text.len() >= 2 && text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        true => Ok(()),
        false => Err("a package name has two or more characters and starts with a-z or 0-9".into()),
    }
}

fn check_unit(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c),
        "a unit name",
    )?;
    match UNIT_SUFFIXES.iter().any(|suffix| text.ends_with(suffix)) {
        true => Ok(()),
        false => Err(format!("a unit name ends in {}", UNIT_SUFFIXES.join(", "))),
    }
}

/// An absolute path in the image with no `.`/`..` components.
fn check_image_path(text: &str) -> Result<(), String> {
    if !text.starts_with('/') || text.len() < 2 || text.ends_with('/') {
        return Err("an absolute path to a file is expected".into());
    }
    if text
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("empty, '.' and '..' components are not allowed".into());
    }
    only(text, |c| !c.is_control(), "a path")
}

/// A path next to the profile: relative, and never out of its directory.
fn check_relative(text: &str) -> Result<(), String> {
    if text.is_empty() || text.starts_with('/') {
        return Err("a path relative to the profile's directory is expected".into());
    }
    if text.split('/').any(|part| part == "..") {
        return Err("'..' is not allowed: keep what the profile uses beside it".into());
    }
    only(text, |c| !c.is_control(), "a path")
}

/// useradd's portable names.
fn check_account(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
        "a user or group name",
    )?;
    match text.len() <= 32
        && !text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
    {
        true => Ok(()),
        false => Err("at most 32 characters, not starting with '-' or a digit".into()),
    }
}

fn check_ssh_key(text: &str) -> Result<(), String> {
    let kind = text.split(' ').next().unwrap_or_default();
    let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    if !known || text.split(' ').count() < 2 {
        return Err("an OpenSSH public key line (ssh-ed25519 AAAA… comment) is expected".into());
    }
    only(text, |c| !c.is_control(), "a key")
}

fn check_cmdline(text: &str) -> Result<(), String> {
    only(text, |c| c.is_ascii_graphic() || c == ' ', "a command line")?;
    if text.split(' ').any(|word| word.starts_with("roothash=")) {
        return Err("roothash= is the build's to add: it is the image's root hash".into());
    }
    Ok(())
}

fn check_module(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        "a module name",
    )
}

/// The name of NAME.raw and of its extension-release file.
fn check_extension_name(text: &str) -> Result<(), String> {
    only(
        text,
        |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
        "an extension name",
    )?;
    match text.starts_with('.') {
        true => Err("an extension name does not start with '.'".into()),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[os]\nid = \"demo\"\nversion = \"1\"\n\n[debian]\nsuite = \"bookworm\"\nkernel = \"linux-image-amd64\"\n";

    fn refused(text: &str) -> ProfileError {
        parse(text).expect_err("refused")
    }

    #[test]
    fn a_minimal_profile_takes_the_defaults() {
        let profile = parse(MINIMAL).expect("parses");
        assert_eq!(profile.os.id, "demo");
        assert_eq!(profile.debian.variant, "minbase");
        assert_eq!(profile.debian.mirror, None);
        assert!(profile.sysexts.is_empty() && profile.files.is_empty());
        assert_eq!(profile.boot.cmdline, "");
        assert_eq!(profile.image, root_format::DEFAULT);
    }

    #[test]
    fn every_section_is_read() {
        let text = format!(
            "{MINIMAL}mirror = \"http://deb.debian.org/debian\"\npackages = [\"systemd-sysv\", \"openssh-server\"]\nhook = \"hooks/tune.sh\"\n\
             [system]\nhostname = \"server\"\nenable = [\"ssh.service\"]\n\
             [[files]]\npath = \"/etc/motd\"\ncontent = \"hi\\n\"\nmode = 0o600\n\
             [[files]]\npath = \"/etc/issue\"\nsource = \"files/issue\"\n\
             [[users]]\nname = \"admin\"\ngroups = [\"sudo\"]\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3 admin@host\"]\n\
             [image]\nformat = \"squashfs\"\ncompression = \"xz\"\n\
             [boot]\ncmdline = \"console=ttyS0 quiet\"\nmodules = [\"e1000\"]\nsign_key = \"keys/db.key\"\nsign_cert = \"keys/db.crt\"\n\
             [[sysext]]\nname = \"debug\"\npackages = [\"strace\"]\n\
             [[confext]]\nname = \"site\"\ndirectory = \"confext/site\"\n\
             [disk]\ndefinitions = \"repart.d\"\n"
        );
        let profile = parse(&text).expect("parses");
        assert_eq!(profile.debian.packages, ["systemd-sysv", "openssh-server"]);
        assert_eq!(profile.debian.hook, Some(PathBuf::from("hooks/tune.sh")));
        assert_eq!(profile.hostname.as_deref(), Some("server"));
        assert_eq!(profile.files[0].mode, 0o600);
        assert_eq!(
            profile.files[1].content,
            FileContent::Source("files/issue".into())
        );
        assert_eq!(profile.users[0].groups, ["sudo"]);
        assert_eq!(profile.image.to_string(), "squashfs/xz");
        assert_eq!(
            profile.boot.signing,
            Some(("keys/db.key".into(), "keys/db.crt".into()))
        );
        assert_eq!(profile.sysexts[0].packages, ["strace"]);
        assert_eq!(profile.confexts[0].directory, Some("confext/site".into()));
        assert_eq!(profile.disk_definitions, Some("repart.d".into()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_at_their_place() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("[os]\nid = \"demo\"\nversion = \"1\"\nflavour = \"x\"\n", 4, 1, "unknown field `flavour`"),
            (&format!("{MINIMAL}packages = [\"ok\", \"Bad_Name\"]\n"), 8, 19, "\"Bad_Name\": 'B' is not allowed in a Debian package name"),
            (&MINIMAL.replace("\"demo\"", "\"my_os\""), 2, 6, "\"my_os\": '_' is not allowed"),
            (&format!("{MINIMAL}[boot]\ncmdline = \"roothash=abc\"\n"), 9, 11, "roothash= is the build's to add"),
            (&format!("{MINIMAL}[image]\nformat = \"ext4\"\n"), 9, 10, "\"ext4\": one of squashfs, erofs is expected"),
            (&format!("{MINIMAL}[image]\ncompression = \"zstd\"\n"), 9, 15, "does not go with erofs, which takes lz4, lz4hc or none"),
            (&format!("{MINIMAL}[image]\nformat = \"squashfs\"\ncompression = \"lz4hc\"\n"), 10, 15, "does not go with squashfs"),
            (&format!("{MINIMAL}[[files]]\npath = \"/etc/../x\"\ncontent = \"\"\n"), 9, 8, "'.' and '..' components are not allowed"),
            (&format!("{MINIMAL}[[files]]\npath = \"/etc/x\"\n"), 9, 8, "exactly one of content"),
            (&format!("{MINIMAL}[[files]]\npath = \"/etc/x\"\ncontent = \"\"\nmode = 0o4755\n"), 11, 8, "permission bits"),
            (&format!("{MINIMAL}[[sysext]]\nname = \"a\"\npackages = [\"x1\"]\n[[confext]]\nname = \"a\"\ndirectory = \"d\"\n"), 12, 8, "a second extension with this name"),
            (&format!("{MINIMAL}[[confext]]\nname = \"c\"\npackages = [\"x1\"]\n"), 10, 13, "a confext is built from a directory"),
            (&format!("{MINIMAL}[[sysext]]\nname = \"empty\"\n"), 9, 8, "needs packages"),
            (&format!("{MINIMAL}[system]\nenable = [\"sshd\"]\n"), 9, 11, "a unit name ends in"),
            (&format!("{MINIMAL}[[sysext]]\nname = \"x\"\ndirectory = \"../outside\"\n"), 10, 13, "'..' is not allowed"),
            (&format!("{MINIMAL}[boot]\nsign_key = \"k\"\n"), 9, 12, "sign_key and sign_cert go together"),
        ];
        for (text, line, column, expected) in cases {
            let error = refused(text);
            assert_eq!(
                (error.line, error.column),
                (*line, *column),
                "{error} for {text:?}"
            );
            assert!(error.message.contains(expected), "{error} for {text:?}");
        }
    }

    #[test]
    fn a_missing_section_is_named() {
        let error = refused("[os]\nid = \"demo\"\nversion = \"1\"\n");
        assert!(error.message.contains("missing field `debian`"), "{error}");
    }

    #[test]
    fn the_shipped_profiles_parse_and_stay_short() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("profiles/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                parse(&text).unwrap_or_else(|error| panic!("{}:{error}", path.display()));
                let lines = text.lines().count();
                assert!(lines <= 60, "{} is {lines} lines", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} profiles");
    }

    #[test]
    fn fuzz_mutated_profiles_never_panic() {
        use xorbang_formats::fixtures::XorShift;
        let mut rng = XorShift(0x0b5e_55ed_c0ff_ee00);
        let base = format!(
            "{MINIMAL}packages = [\"a1\"]\n[[sysext]]\nname = \"x\"\npackages = [\"b2\"]\n"
        );
        for _ in 0..2_000 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = *rng.pick(b"\n =\"[]._/a1");
            }
            if let Ok(text) = String::from_utf8(bytes) {
                if let Err(error) = parse(&text) {
                    assert!(error.line >= 1 && error.column >= 1);
                }
            }
        }
    }
}

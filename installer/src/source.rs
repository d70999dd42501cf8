//! Where the UKI and host configs come from: an `http://` URL (the netboot tree a machine
//! booted from, `xorbang.netboot=` on its command line) or a local file or directory. Every
//! read is bounded: a server that sends without end is cut off, never buffered.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xorbang_formats::cmdline::Cmdline;
use xorbang_formats::netboot::TREE_KEY;
use xorbang_http::{self as http, HttpError, Url, UrlError};

/// Per connect, read and write: long enough for a loaded server, short enough that a dead
/// one is reported rather than waited on.
const TIMEOUT: Duration = Duration::from_secs(30);
const NOT_FOUND: u16 = 404;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot read {0}")]
    Read(String, #[source] io::Error),
    #[error("{what} is larger than the {max} bytes it may be")]
    TooLarge { what: String, max: u64 },
}

/// A file to read: on a server or here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Url(Url),
    File(PathBuf),
}

impl Location {
    /// `http://…` (https is refused with the reason), `file://PATH` or a path.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Self::Url(Url::parse(text)?));
        }
        Ok(Self::File(PathBuf::from(
            text.strip_prefix("file://").unwrap_or(text),
        )))
    }

    /// A directory others are found in: a URL gets the `/` that makes names resolve below it.
    pub fn parse_directory(text: &str) -> Result<Self, SourceError> {
        let url = text.starts_with("http://") || text.starts_with("https://");
        match url && !text.ends_with('/') {
            true => Self::parse(&format!("{text}/")),
            false => Self::parse(text),
        }
    }

    /// `relative` below this directory.
    pub fn join(&self, relative: &str) -> Result<Self, SourceError> {
        Ok(match self {
            Self::Url(url) => Self::Url(url.join(relative)?),
            Self::File(dir) => Self::File(dir.join(relative)),
        })
    }

    /// The whole file, refusing more than `max` bytes.
    pub fn read(&self, max: u64) -> Result<Vec<u8>, SourceError> {
        let reader: Box<dyn Read> = match self {
            Self::Url(url) => Box::new(http::get(url, TIMEOUT)?),
            Self::File(path) => {
                Box::new(File::open(path).map_err(|source| self.read_error(source))?)
            }
        };
        let mut bytes = Vec::new();
        reader
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| self.read_error(source))?;
        match bytes.len() as u64 > max {
            true => Err(SourceError::TooLarge {
                what: self.to_string(),
                max,
            }),
            false => Ok(bytes),
        }
    }

    /// As [`Location::read`], but a file that is not there (404, no such file) is `None`.
    pub fn read_if_present(&self, max: u64) -> Result<Option<Vec<u8>>, SourceError> {
        match self.read(max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(SourceError::Http(HttpError::Status { status, .. })) if status == NOT_FOUND => {
                Ok(None)
            }
            Err(SourceError::Read(_, error)) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn read_error(&self, source: io::Error) -> SourceError {
        SourceError::Read(self.to_string(), source)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The netboot tree named on the kernel command line (`xorbang.netboot=URL`), if any.
pub fn tree_from_cmdline(cmdline: &str) -> Option<String> {
    Cmdline::parse(cmdline)
        .last(TREE_KEY)
        .flatten()
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
}

/// Reads `/proc/cmdline` (under the procfs root given).
pub fn read_cmdline(proc_dir: &Path) -> Result<String, SourceError> {
    let path = proc_dir.join("cmdline");
    std::fs::read_to_string(&path)
        .map_err(|source| SourceError::Read(path.display().to_string(), source))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread;

    /// Serves `files` (path → body) over HTTP on 127.0.0.1 until `requests` are answered;
    /// anything else is a 404.
    pub fn serve(
        files: Vec<(&'static str, Vec<u8>)>,
        requests: usize,
    ) -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/", listener.local_addr().expect("address"));
        let handle = thread::spawn(move || {
            for _ in 0..requests {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).expect("request");
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let found = files.iter().find(|(name, _)| format!("/{name}") == path);
                let (status, body) = match found {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"no".to_vec()),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).expect("head");
                stream.write_all(&body).expect("body");
            }
        });
        (base, handle)
    }

    #[test]
    fn urls_and_files_are_read_bounded_and_absent_ones_are_none() {
        let (base, server) = serve(vec![("tree/a.toml", b"abc".to_vec())], 3);
        let tree = Location::parse_directory(&format!("{base}tree")).expect("tree");
        let file = tree.join("a.toml").expect("join");
        assert_eq!(file.read(3).expect("read"), b"abc");
        let error = file.read(2).expect_err("too large");
        assert_eq!(
            error.to_string(),
            format!("{base}tree/a.toml is larger than the 2 bytes it may be")
        );
        let missing = tree.join("a.toml.minisig").expect("join");
        assert_eq!(missing.read_if_present(10).expect("404"), None);
        server.join().expect("server");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("x"), b"xyz").expect("write");
        let local = Location::parse_directory(&dir.path().display().to_string()).expect("dir");
        assert_eq!(
            local.join("x").expect("join").read(3).expect("read"),
            b"xyz"
        );
        assert_eq!(
            local
                .join("y")
                .expect("join")
                .read_if_present(3)
                .expect("absent"),
            None
        );
        assert!(matches!(
            Location::parse("https://example.org/install.efi"),
            Err(SourceError::Url(UrlError::Https { .. }))
        ));
    }

    #[test]
    fn the_tree_is_found_on_the_command_line() {
        assert_eq!(
            tree_from_cmdline("console=ttyS0 xorbang.netboot=http://10.0.2.2:8080/fleet/ quiet"),
            Some("http://10.0.2.2:8080/fleet/".to_owned())
        );
        assert_eq!(tree_from_cmdline("console=ttyS0 xorbang.netboot"), None);
        assert_eq!(tree_from_cmdline("roothash=ab"), None);
    }
}

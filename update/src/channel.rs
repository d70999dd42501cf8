//! Where versions come from: a channel is a static directory, served over HTTP or read
//! locally, holding `index.json` and one `<IMAGE_ID>_<version>/` directory per bundle.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xorbang_http::{self as http, HttpError, Url, UrlError};

/// Per connect, read and write: long enough for a loaded mirror, short enough that a dead
/// one is reported rather than waited on.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum Channel {
    Http(Url),
    Directory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {0:?} is neither an http:// URL nor an absolute directory")]
    Location(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} is larger than the {max} bytes it may be")]
    TooLarge { what: String, max: u64 },
}

/// A file of the channel being read, with its length when the source tells it.
pub struct Download {
    pub reader: Box<dyn Read>,
    pub what: String,
    /// The size the server (Content-Length) or the file system tells, if it does.
    pub length: Option<u64>,
}

impl Channel {
    pub fn parse(text: &str) -> Result<Self, ChannelError> {
        if text.starts_with("http://") || text.starts_with("https://") {
            // A channel is a directory: its files are resolved below it.
            let with_slash = match text.ends_with('/') {
                true => text.to_owned(),
                false => format!("{text}/"),
            };
            return Ok(Self::Http(Url::parse(&with_slash)?));
        }
        let path = Path::new(text.strip_prefix("file://").unwrap_or(text));
        match path.is_absolute() {
            true => Ok(Self::Directory(path.to_owned())),
            false => Err(ChannelError::Location(text.to_owned())),
        }
    }

    /// Opens `relative` (a path of plain names joined by `/`, checked by the caller).
    pub fn open(&self, relative: &str) -> Result<Download, ChannelError> {
        match self {
            Self::Http(base) => {
                let url = base.join(relative)?;
                let response = http::get(&url, TIMEOUT)?;
                Ok(Download {
                    length: response.content_length,
                    reader: Box::new(response),
                    what: url.to_string(),
                })
            }
            Self::Directory(dir) => {
                let path = dir.join(relative);
                let read_error = |source| ChannelError::Read {
                    path: path.clone(),
                    source,
                };
                let file = File::open(&path).map_err(read_error)?;
                let length = file.metadata().map_err(read_error)?.len();
                Ok(Download {
                    length: Some(length),
                    reader: Box::new(file),
                    what: path.display().to_string(),
                })
            }
        }
    }

    /// Reads a small file (index, manifest, signature) whole, refusing more than `max` bytes.
    pub fn read_small(&self, relative: &str, max: u64) -> Result<Vec<u8>, ChannelError> {
        let download = self.open(relative)?;
        let mut bytes = Vec::new();
        download
            .reader
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ChannelError::Read {
                path: PathBuf::from(&download.what),
                source,
            })?;
        if bytes.len() as u64 > max {
            return Err(ChannelError::TooLarge {
                what: download.what,
                max,
            });
        }
        Ok(bytes)
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(url) => write!(f, "{url}"),
            Self::Directory(dir) => write!(f, "{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_urls_or_absolute_directories() {
        assert!(matches!(
            Channel::parse("http://127.0.0.1:8000/stable"),
            Ok(Channel::Http(_))
        ));
        assert_eq!(
            Channel::parse("http://h/stable").expect("url").to_string(),
            "http://h/stable/"
        );
        assert!(matches!(
            Channel::parse("file:///srv/stable"),
            Ok(Channel::Directory(dir)) if dir == Path::new("/srv/stable")
        ));
        assert!(matches!(
            Channel::parse("stable"),
            Err(ChannelError::Location(_))
        ));
        assert!(matches!(
            Channel::parse("https://h/"),
            Err(ChannelError::Url(UrlError::Https { .. }))
        ));
    }

    #[test]
    fn small_files_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("index.json"), b"0123456789").expect("write");
        let channel = Channel::Directory(dir.path().to_owned());
        assert_eq!(
            channel.read_small("index.json", 10).expect("fits"),
            b"0123456789"
        );
        let error = channel.read_small("index.json", 9).expect_err("too large");
        assert!(error
            .to_string()
            .ends_with("is larger than the 9 bytes it may be"));
    }
}

//! Image files a netbooted machine downloads (`systemd.verity_root_data=http://…`): a UKI
//! booted under Secure Boot cannot be handed its root as another initramfs part, so its
//! signed command line names where the root is and `roothash=` what it must be. The network
//! comes up (DHCP) at the first download; each file goes into /run/xorbang/netboot, which
//! lives in memory, and is then attached like an image file of the initramfs.
//!
//! The server is untrusted: nothing here checks the bytes, dm-verity does, against the
//! signed root hash. A server that sends without end fills the tmpfs (half the memory at
//! most) and the write fails; a stalled one hits the per-read timeout.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::network::{self, Lease, NetworkError};
use crate::paths::Paths;
use xorbang_http::{self as http, HttpError, Url, UrlError};

/// How long one connect, read or write may stall before the download is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bringing up the network")]
    Network(#[from] NetworkError),
    #[error("{url:?}")]
    Url { url: String, source: UrlError },
    #[error("cannot download")]
    Http(#[from] HttpError),
    #[error("{url} has no file name to store it under")]
    NoFileName { url: String },
    #[error("downloading {url} into {path}")]
    Write {
        url: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// Downloads for one boot: the network is brought up by the first.
#[derive(Debug, Default)]
pub struct Downloads {
    lease: Option<Lease>,
}

impl Downloads {
    /// Fetches `url` into /run/xorbang/netboot and returns the file, within what is left of
    /// the boot's device budget for bringing the network up.
    pub fn fetch(
        &mut self,
        paths: &Paths,
        url: &str,
        deadline: Instant,
    ) -> Result<PathBuf, DownloadError> {
        let parsed = Url::parse(url).map_err(|source| DownloadError::Url {
            url: url.to_owned(),
            source,
        })?;
        if self.lease.is_none() {
            let budget = deadline.saturating_duration_since(Instant::now());
            self.lease = Some(network::bring_up(paths, budget)?);
        }
        let name = file_name(url).ok_or_else(|| DownloadError::NoFileName {
            url: url.to_owned(),
        })?;
        let dir = paths.xorbang_run().join("netboot");
        let path = dir.join(name);
        let write_error = |source| DownloadError::Write {
            url: url.to_owned(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(write_error)?;
        let started = Instant::now();
        let mut response = http::get(&parsed, STALL_TIMEOUT)?;
        let mut file = File::create_new(&path).map_err(write_error)?;
        let bytes = io::copy(&mut response, &mut file).map_err(write_error)?;
        file.flush().map_err(write_error)?;
        log::info!(
            "downloaded {url} ({bytes} bytes) in {} ms",
            started.elapsed().as_millis()
        );
        Ok(path)
    }
}

/// The last path segment of `url`, if it is a plain file name.
fn file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let plain = !name.is_empty() && name != "." && name != ".." && !name.starts_with('.');
    plain
        .then_some(name)
        .filter(|name| Path::new(name).file_name().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_their_last_segment() {
        assert_eq!(
            file_name("http://10.14.0.1:8080/fleet/root.squashfs"),
            Some("root.squashfs")
        );
        assert_eq!(
            file_name("http://10.14.0.1/root.squashfs.verity?v=2"),
            Some("root.squashfs.verity")
        );
        assert_eq!(file_name("http://10.14.0.1/fleet/"), None);
        assert_eq!(file_name("http://10.14.0.1/.."), None);
        assert_eq!(file_name("http://10.14.0.1/.hidden"), None);
    }
}

//! A small blocking HTTP/1.1 client that fetches from a static server (`python3 -m http.server`,
//! nginx, any server of a directory) what is checked elsewhere: update manifests and bundles
//! (signed), netboot root images (dm-verity against the signed command line).
//!
//! Why so little: what it fetches is signed and checked elsewhere, so the transport only has
//! to move bytes, and it ships inside every image. So: plain `http://` only (no TLS stack in
//! the images; `https://` is refused with the reason), one request per connection
//! (`Connection: close`), no compression (`Accept-Encoding: identity`; a `Content-Encoding`
//! is refused rather than handed on as the bundle), no redirects (a 3xx is an error showing
//! its `Location`, so the channel can name the final place). Only 2xx bodies reach callers.
//!
//! The response comes from the network, so it is parsed as hostile: the head is bounded at
//! 16 KiB, chunk-size and trailer lines are bounded, and a body shorter than its
//! `Content-Length`, or a chunked body without its last chunk, is an `UnexpectedEof` naming
//! what is missing, rather than a short file that fails its signature check with a less
//! useful message. A body that ends at close (HTTP/1.0 servers) has no length to check: its
//! signature is what catches truncation.
//!
//! Timeouts are per operation (connecting to each address, each read and write), not a
//! deadline for the whole transfer: a slow but moving download of a large bundle goes on.
//! Name resolution is the system's and has its own timeouts.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv6Addr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The longest response head (status line, headers, blank line) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The longest line of a chunked body (a chunk size with extensions, with its CRLF).
const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// The most bytes of trailers after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const DEFAULT_PORT: u16 = 80;

/// An `http://` URL: the host and port to connect to and the target (path and query) to ask
/// for. Only printable ASCII: whatever else a path holds must come percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// A host name, an IPv4 address or an IPv6 address (without its brackets).
    host: String,
    port: u16,
    /// Starts with `/`.
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?}: https is not supported: serve the channel over http; bundles are signed")]
    Https { text: String },
    #[error("{text:?} is not an http:// URL")]
    Scheme { text: String },
    #[error("{text:?} has a space, control or non-ASCII character at byte {position}: percent-encode it")]
    Character { text: String, position: usize },
    #[error("{text:?} has a fragment (#...), which is never sent to a server")]
    Fragment { text: String },
    #[error("{text:?} has user information before its host, which is not supported")]
    UserInfo { text: String },
    #[error("{text:?}: {host:?} is not a host name, an IPv4 address or a bracketed IPv6 address")]
    Host { text: String, host: String },
    #[error("{text:?}: port {port:?} is not a number from 1 to 65535")]
    Port { text: String, port: String },
    #[error("an empty path cannot be joined to a URL")]
    EmptyPath,
    #[error("{text:?} is not a path: it names a scheme or a host")]
    NotAPath { text: String },
    #[error("{text:?} has a '.' or '..' segment")]
    DotSegment { text: String },
}

impl Url {
    /// Parses `http://host[:port][/path][?query]`; `https://` is refused with the reason.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        check_characters(text)?;
        let rest = strip_scheme(text)?;
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (host, port) = parse_authority(text, authority)?;
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(Self { host, port, path })
    }

    /// Resolves a path a manifest names: absolute (`/x`) on the same server, or relative
    /// (`a/b.json`) to the directory of this URL's path. Schemes, hosts (`//host`) and dot
    /// segments are refused: a manifest names files on its own server, without normalizing.
    pub fn join(&self, relative: &str) -> Result<Self, UrlError> {
        if relative.is_empty() {
            return Err(UrlError::EmptyPath);
        }
        check_characters(relative)?;
        let path = relative.split_once('?').map_or(relative, |(path, _)| path);
        let first_segment = path.split('/').next().unwrap_or_default();
        if path.starts_with("//") || first_segment.contains(':') {
            return Err(UrlError::NotAPath {
                text: relative.to_owned(),
            });
        }
        if path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(UrlError::DotSegment {
                text: relative.to_owned(),
            });
        }
        let path = if relative.starts_with('/') {
            relative.to_owned()
        } else {
            format!("{}{relative}", self.directory())
        };
        Ok(Self {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }

    /// The path up to and including its last `/`, without the query.
    fn directory(&self) -> &str {
        let path = self
            .path
            .split_once('?')
            .map_or(self.path.as_str(), |(path, _)| path);
        path.rfind('/').map_or("/", |last| &path[..=last])
    }

    /// `host[:port]`, as in the `Host` header and the URL's text.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            DEFAULT_PORT => host,
            port => format!("{host}:{port}"),
        }
    }

    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xorbang-update\r\n\
             Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority()
        )
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// Printable ASCII only (a space or CRLF in a path would split the request line), and no
/// fragment.
fn check_characters(text: &str) -> Result<(), UrlError> {
    for (position, byte) in text.bytes().enumerate() {
        if !(0x21..=0x7e).contains(&byte) {
            return Err(UrlError::Character {
                text: text.to_owned(),
                position,
            });
        }
        if byte == b'#' {
            return Err(UrlError::Fragment {
                text: text.to_owned(),
            });
        }
    }
    Ok(())
}

/// What follows `http://` (either case).
fn strip_scheme(text: &str) -> Result<&str, UrlError> {
    let scheme_error = || UrlError::Scheme {
        text: text.to_owned(),
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(scheme_error)?;
    if scheme.eq_ignore_ascii_case("https") {
        return Err(UrlError::Https {
            text: text.to_owned(),
        });
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(scheme_error());
    }
    Ok(rest)
}

/// `host[:port]` or `[v6]`:`[:port]`, into the host (without brackets) and the port.
fn parse_authority(text: &str, authority: &str) -> Result<(String, u16), UrlError> {
    if authority.contains('@') {
        return Err(UrlError::UserInfo {
            text: text.to_owned(),
        });
    }
    let host_error = |host: &str| UrlError::Host {
        text: text.to_owned(),
        host: host.to_owned(),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| host_error(authority))?;
            let port = match after {
                "" => None,
                after => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| host_error(authority))?,
                ),
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(host_error(host));
            }
            (host, port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if !is_host_name(host) {
                return Err(host_error(host));
            }
            (host, port)
        }
    };
    let port = match port {
        Some(port) => parse_port(text, port)?,
        None => DEFAULT_PORT,
    };
    Ok((host.to_owned(), port))
}

/// A DNS name or a dotted IPv4 address: letters, digits, `-`, `.` and `_`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'))
}

fn parse_port(text: &str, port: &str) -> Result<u16, UrlError> {
    decimal(port)
        .filter(|&port| port != 0)
        .ok_or_else(|| UrlError::Port {
            text: text.to_owned(),
            port: port.to_owned(),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {url}")]
    Connect {
        url: Url,
        #[source]
        source: io::Error,
    },
    #[error("the connection to {url} failed")]
    Io {
        url: Url,
        #[source]
        source: io::Error,
    },
    #[error("{url} answered with a malformed response head")]
    BadResponse {
        url: Url,
        #[source]
        reason: HeadError,
    },
    #[error("{url} answered with status {status}, not success (2xx)")]
    Status { url: Url, status: u16 },
    #[error(
        "{url} redirects to {location:?}, and redirects are not followed: use the URL it names"
    )]
    Redirect { url: Url, location: String },
}

/// What is wrong with a response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the response head is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("the response head ends after {found} bytes, before the blank line that ends it")]
    Unterminated { found: usize },
    #[error("status line {line:?} is not \"HTTP/1.x NNN reason\"")]
    StatusLine { line: String },
    #[error("header line {number} ({line:?}) is not \"Name: value\"")]
    HeaderLine { number: usize, line: String },
    #[error("Content-Length {value:?} is not a decimal number of bytes")]
    ContentLength { value: String },
    #[error("Content-Length is given twice and disagrees: {first} and {second}")]
    ContentLengthsDisagree { first: u64, second: u64 },
    #[error("Transfer-Encoding {value:?} is not supported (only \"chunked\")")]
    TransferEncoding { value: String },
    #[error("Content-Encoding {value:?} was not asked for (the request accepts only identity)")]
    ContentEncoding { value: String },
    #[error("both Content-Length and Transfer-Encoding are given: the body's length is ambiguous")]
    AmbiguousLength,
}

/// What is wrong with a body, as the payload of the `io::Error` its reader returns
/// (`UnexpectedEof` for a body cut short, `InvalidData` for the rest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body ended after {received} of its {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("the chunked body ended after {received} bytes, before its last chunk")]
    ChunkedTruncated { received: u64 },
    #[error("chunk size line {line:?} is not a hexadecimal size")]
    ChunkSize { line: String },
    #[error("a line of the chunked body is longer than {limit} bytes")]
    ChunkLineTooLong { limit: usize },
    #[error("chunked body line {line:?} does not end in CRLF")]
    LineEnd { line: String },
    #[error("a chunk's data is followed by {line:?}, not CRLF")]
    ChunkEnd { line: String },
    #[error("the trailers after the last chunk are longer than {limit} bytes")]
    TrailersTooLong { limit: usize },
}

impl BodyError {
    fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Truncated { .. } | Self::ChunkedTruncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

impl From<BodyError> for io::Error {
    fn from(error: BodyError) -> Self {
        io::Error::new(error.kind(), error)
    }
}

/// A successful (2xx) response. Reading it reads the body, and fails (with a [`BodyError`]
/// inside the `io::Error`) if the body is cut short or malformed; the caller names the URL.
#[derive(Debug)]
pub struct Response {
    /// The `Content-Length`: `None` for chunked bodies and bodies that end at close.
    pub content_length: Option<u64>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Length(LengthReader<BufReader<TcpStream>>),
    Chunked(ChunkedReader<BufReader<TcpStream>>),
    Close(BufReader<TcpStream>),
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.body {
            Body::Length(reader) => reader.read(buf),
            Body::Chunked(reader) => reader.read(buf),
            Body::Close(reader) => reader.read(buf),
        }
    }
}

/// GETs `url`. Statuses other than 2xx are errors, so callers never read an error page as
/// a manifest; a 3xx names its `Location` and is not followed.
pub fn get(url: &Url, timeout: Duration) -> Result<Response, HttpError> {
    let io_error = |source: io::Error| HttpError::Io {
        url: url.clone(),
        source,
    };
    let mut stream = connect(url, timeout).map_err(|source| HttpError::Connect {
        url: url.clone(),
        source,
    })?;
    stream
        .write_all(url.request().as_bytes())
        .map_err(io_error)?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).map_err(io_error)?;
    let head = parse_head(&head).map_err(|reason| HttpError::BadResponse {
        url: url.clone(),
        reason,
    })?;
    check_status(url, &head)?;
    Ok(Response {
        content_length: match head.framing {
            Framing::Length(length) => Some(length),
            Framing::Chunked | Framing::Close => None,
        },
        body: match head.framing {
            Framing::Length(expected) => Body::Length(LengthReader::new(reader, expected)),
            Framing::Chunked => Body::Chunked(ChunkedReader::new(reader)),
            Framing::Close => Body::Close(reader),
        },
    })
}

/// Tries each address the host resolves to, and keeps the last failure.
fn connect(url: &Url, timeout: Duration) -> io::Result<TcpStream> {
    let mut last_error = None;
    for address in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the host name has no addresses")
    }))
}

fn check_status(url: &Url, head: &Head) -> Result<(), HttpError> {
    match (head.status, &head.location) {
        (200..=299, _) => Ok(()),
        (300..=399, Some(location)) => Err(HttpError::Redirect {
            url: url.clone(),
            location: location.clone(),
        }),
        (status, _) => Err(HttpError::Status {
            url: url.clone(),
            status,
        }),
    }
}

/// Reads up to and including the blank line that ends a head, or one byte past
/// [`MAX_HEAD_BYTES`], or to the end of the stream: [`parse_head`] judges which.
fn read_head(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut limited = Read::take(reader, MAX_HEAD_BYTES as u64 + 1);
    while !head.ends_with(b"\r\n\r\n") {
        if limited.read_until(b'\n', &mut head)? == 0 {
            break;
        }
    }
    Ok(head)
}

/// The parts of a response head this client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    location: Option<String>,
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Parses a response head: the bytes up to and including the blank line that ends it.
fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    if bytes.len() > MAX_HEAD_BYTES {
        return Err(HeadError::TooLong {
            limit: MAX_HEAD_BYTES,
        });
    }
    let text = bytes
        .strip_suffix(b"\r\n\r\n")
        .ok_or(HeadError::Unterminated { found: bytes.len() })?;
    // Bytes outside ASCII are legal only in reasons and values, which are never interpreted.
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line).ok_or_else(|| HeadError::StatusLine {
        line: status_line.to_owned(),
    })?;
    let mut fields = Fields::default();
    for (index, line) in lines.enumerate() {
        let (name, value) = parse_header_line(line).ok_or_else(|| HeadError::HeaderLine {
            number: index + 1,
            line: line.to_owned(),
        })?;
        fields.add(name, value)?;
    }
    fields.into_head(status)
}

/// `HTTP/1.x NNN reason` (the reason may be empty or missing) into the status.
fn parse_status_line(line: &str) -> Option<u16> {
    let (version, rest) = line.split_once(' ')?;
    let minor = version.strip_prefix("HTTP/1.")?;
    let status = decimal::<u16>(rest.get(..3)?)?;
    let reason = rest.get(3..)?;
    let well_formed = minor.len() == 1
        && minor.bytes().all(|byte| byte.is_ascii_digit())
        && (100..=999).contains(&status)
        && (reason.is_empty() || reason.starts_with(' '))
        && !line.contains(['\r', '\n']);
    well_formed.then_some(status)
}

/// `Name: value` into the name and the value without surrounding spaces. A line that starts
/// with a space (an obsolete folded line) has no name and is refused.
fn parse_header_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let value = value.trim_matches([' ', '\t']);
    let well_formed =
        !name.is_empty() && name.bytes().all(is_token_byte) && !value.contains(['\r', '\n', '\0']);
    well_formed.then_some((name, value))
}

/// RFC 9110 `tchar`: what a header name is made of.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The headers that decide framing and redirects, gathered from a head.
#[derive(Debug, Default)]
struct Fields {
    content_length: Option<u64>,
    transfer_codings: Vec<String>,
    location: Option<String>,
}

impl Fields {
    fn add(&mut self, name: &str, value: &str) -> Result<(), HeadError> {
        match name.to_ascii_lowercase().as_str() {
            // A list of equal lengths is one length (RFC 9110 8.6); one that disagrees is
            // not a length at all.
            "content-length" => {
                for part in value.split(',') {
                    let length = parse_content_length(part.trim_matches([' ', '\t']))?;
                    match self.content_length {
                        Some(first) if first != length => {
                            return Err(HeadError::ContentLengthsDisagree {
                                first,
                                second: length,
                            })
                        }
                        _ => self.content_length = Some(length),
                    }
                }
            }
            "transfer-encoding" => self.transfer_codings.extend(
                value
                    .split(',')
                    .map(|coding| coding.trim_matches([' ', '\t']).to_ascii_lowercase()),
            ),
            "content-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(HeadError::ContentEncoding {
                    value: value.to_owned(),
                })
            }
            "location" => self.location = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }

    fn into_head(self, status: u16) -> Result<Head, HeadError> {
        let framing = match (self.transfer_codings.as_slice(), self.content_length) {
            _ if status == 204 => Framing::Length(0),
            ([], Some(length)) => Framing::Length(length),
            ([], None) => Framing::Close,
            ([coding], None) if coding == "chunked" => Framing::Chunked,
            ([coding], Some(_)) if coding == "chunked" => return Err(HeadError::AmbiguousLength),
            (codings, _) => {
                return Err(HeadError::TransferEncoding {
                    value: codings.join(", "),
                })
            }
        };
        Ok(Head {
            status,
            framing,
            location: self.location,
        })
    }
}

fn parse_content_length(value: &str) -> Result<u64, HeadError> {
    decimal(value).ok_or_else(|| HeadError::ContentLength {
        value: value.to_owned(),
    })
}

/// A body of `expected` bytes: stops there, and an end of stream before it is an error.
#[derive(Debug)]
struct LengthReader<R> {
    inner: R,
    expected: u64,
    received: u64,
}

impl<R: Read> LengthReader<R> {
    fn new(inner: R, expected: u64) -> Self {
        Self {
            inner,
            expected,
            received: 0,
        }
    }
}

impl<R: Read> Read for LengthReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.expected - self.received;
        if buf.is_empty() || remaining == 0 {
            return Ok(0);
        }
        let wanted = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..wanted])?;
        if read == 0 {
            return Err(BodyError::Truncated {
                expected: self.expected,
                received: self.received,
            }
            .into());
        }
        self.received += read as u64;
        Ok(read)
    }
}

/// A `Transfer-Encoding: chunked` body, decoded: `size[;ext] CRLF data CRLF`, repeated, then
/// `0 CRLF`, trailers (ignored) and a blank line.
#[derive(Debug)]
struct ChunkedReader<R> {
    inner: R,
    state: Chunk,
    /// The line being read, kept across calls so that a timeout mid-line loses nothing.
    line: Vec<u8>,
    received: u64,
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data { remaining: u64 },
    DataEnd,
    Trailers { read: usize },
    Done,
}

impl<R: BufRead> ChunkedReader<R> {
    const CHUNK_LINE_TOO_LONG: BodyError = BodyError::ChunkLineTooLong {
        limit: MAX_CHUNK_LINE_BYTES,
    };

    fn new(inner: R) -> Self {
        Self {
            inner,
            state: Chunk::Size,
            line: Vec::new(),
            received: 0,
        }
    }

    fn read_size(&mut self) -> io::Result<()> {
        let line = self.read_line(MAX_CHUNK_LINE_BYTES, Self::CHUNK_LINE_TOO_LONG)?;
        let size = parse_chunk_size(&line).ok_or_else(|| BodyError::ChunkSize {
            line: String::from_utf8_lossy(&line).into_owned(),
        })?;
        self.state = match size {
            0 => Chunk::Trailers { read: 0 },
            remaining => Chunk::Data { remaining },
        };
        Ok(())
    }

    fn read_data(&mut self, buf: &mut [u8], remaining: u64) -> io::Result<usize> {
        let wanted = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..wanted])?;
        if read == 0 {
            return Err(self.truncated().into());
        }
        self.received = self.received.saturating_add(read as u64);
        self.state = match remaining - read as u64 {
            0 => Chunk::DataEnd,
            remaining => Chunk::Data { remaining },
        };
        Ok(read)
    }

    fn read_data_end(&mut self) -> io::Result<()> {
        let line = self.read_line(MAX_CHUNK_LINE_BYTES, Self::CHUNK_LINE_TOO_LONG)?;
        if !line.is_empty() {
            return Err(BodyError::ChunkEnd {
                line: String::from_utf8_lossy(&line).into_owned(),
            }
            .into());
        }
        self.state = Chunk::Size;
        Ok(())
    }

    fn read_trailer(&mut self, read: usize) -> io::Result<()> {
        let too_long = BodyError::TrailersTooLong {
            limit: MAX_TRAILER_BYTES,
        };
        let line = self.read_line(MAX_TRAILER_BYTES - read, too_long)?;
        self.state = match line.len() {
            0 => Chunk::Done,
            length => Chunk::Trailers {
                read: read + length + 2,
            },
        };
        Ok(())
    }

    /// One line of at most `limit` bytes with its CRLF, returned without it; `too_long` if
    /// it is longer.
    fn read_line(&mut self, limit: usize, too_long: BodyError) -> io::Result<Vec<u8>> {
        loop {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return Err(self.truncated().into());
            }
            let (taken, complete) = match available.iter().position(|&byte| byte == b'\n') {
                Some(newline) => (newline + 1, true),
                None => (available.len(), false),
            };
            if self.line.len() + taken > limit {
                return Err(too_long.into());
            }
            self.line.extend_from_slice(&available[..taken]);
            self.inner.consume(taken);
            if complete {
                break;
            }
        }
        let line = std::mem::take(&mut self.line);
        match line.strip_suffix(b"\r\n") {
            Some(content) => Ok(content.to_vec()),
            None => Err(BodyError::LineEnd {
                line: String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
            }
            .into()),
        }
    }

    fn truncated(&self) -> BodyError {
        BodyError::ChunkedTruncated {
            received: self.received,
        }
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                Chunk::Size => self.read_size()?,
                Chunk::Data { remaining } => return self.read_data(buf, remaining),
                Chunk::DataEnd => self.read_data_end()?,
                Chunk::Trailers { read } => self.read_trailer(read)?,
                Chunk::Done => return Ok(0),
            }
        }
    }
}

/// `size[ ][;extensions]`: 1 to 16 hex digits (what fits 64 bits); extensions are ignored.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let mut size = line.split(|&byte| byte == b';').next().unwrap_or_default();
    while let [rest @ .., b' ' | b'\t'] = size {
        size = rest;
    }
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

/// Decimal digits only: `str::parse` alone would take a sign.
fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    let digits = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// The [`BodyError`] an `io::Error` from a body reader carries, if any.
#[cfg(test)]
fn body_error(error: &io::Error) -> Option<&BodyError> {
    error.get_ref()?.downcast_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::TcpListener;
    use std::thread;
    use xorbang_formats::fixtures::XorShift;

    const FUZZ_ITERATIONS: usize = 20_000;
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    /// The variant name, to show which checks a fuzz loop reached.
    fn kind(error: &impl fmt::Debug) -> String {
        let debug = format!("{error:?}");
        debug
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn urls_parse_and_display_back() {
        for (text, host, port, path, shown) in [
            (
                "http://example.com",
                "example.com",
                80,
                "/",
                "http://example.com/",
            ),
            (
                "http://updates.example:8080/stable/manifest.json?v=2",
                "updates.example",
                8080,
                "/stable/manifest.json?v=2",
                "http://updates.example:8080/stable/manifest.json?v=2",
            ),
            (
                "http://10.0.2.2:80/x",
                "10.0.2.2",
                80,
                "/x",
                "http://10.0.2.2/x",
            ),
            ("HTTP://Host/a/", "Host", 80, "/a/", "http://Host/a/"),
            ("http://h?q", "h", 80, "/?q", "http://h/?q"),
            (
                "http://[::1]:8000/b",
                "::1",
                8000,
                "/b",
                "http://[::1]:8000/b",
            ),
            ("http://[fe80::1]", "fe80::1", 80, "/", "http://[fe80::1]/"),
        ] {
            let parsed = url(text);
            assert_eq!(
                (parsed.host.as_str(), parsed.port, parsed.path.as_str()),
                (host, port, path),
                "{text}"
            );
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(url(shown), parsed, "{shown} round-trips");
        }
    }

    #[test]
    fn https_is_refused_with_the_reason() {
        let error = Url::parse("https://updates.example/stable/").expect_err("https");
        assert_eq!(
            error.to_string(),
            "\"https://updates.example/stable/\": https is not supported: serve the channel \
             over http; bundles are signed"
        );
        assert!(matches!(
            Url::parse("HTTPS://x/"),
            Err(UrlError::Https { .. })
        ));
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let text = |text: &str| text.to_owned();
        for (input, expected) in [
            (
                "ftp://h/",
                UrlError::Scheme {
                    text: text("ftp://h/"),
                },
            ),
            ("h/x", UrlError::Scheme { text: text("h/x") }),
            (
                "http://h/a b",
                UrlError::Character {
                    text: text("http://h/a b"),
                    position: 10,
                },
            ),
            (
                "http://h/\r\nX: y",
                UrlError::Character {
                    text: text("http://h/\r\nX: y"),
                    position: 9,
                },
            ),
            (
                "http://h/é",
                UrlError::Character {
                    text: text("http://h/é"),
                    position: 9,
                },
            ),
            (
                "http://h/#top",
                UrlError::Fragment {
                    text: text("http://h/#top"),
                },
            ),
            (
                "http://u:p@h/",
                UrlError::UserInfo {
                    text: text("http://u:p@h/"),
                },
            ),
            (
                "http:///x",
                UrlError::Host {
                    text: text("http:///x"),
                    host: text(""),
                },
            ),
            (
                "http://h%41/",
                UrlError::Host {
                    text: text("http://h%41/"),
                    host: text("h%41"),
                },
            ),
            (
                "http://[::1/",
                UrlError::Host {
                    text: text("http://[::1/"),
                    host: text("[::1"),
                },
            ),
            (
                "http://[nope]/",
                UrlError::Host {
                    text: text("http://[nope]/"),
                    host: text("nope"),
                },
            ),
            (
                "http://[::1]x/",
                UrlError::Host {
                    text: text("http://[::1]x/"),
                    host: text("[::1]x"),
                },
            ),
        ] {
            assert_eq!(Url::parse(input), Err(expected), "{input:?}");
        }
        for port in ["", "0", "65536", "+80", "8o", "1:2"] {
            let input = format!("http://h:{port}/");
            assert_eq!(
                Url::parse(&input),
                Err(UrlError::Port {
                    text: input.clone(),
                    port: port.to_owned()
                })
            );
        }
    }

    #[test]
    fn join_resolves_against_the_directory() {
        let base = url("http://h:8080/stable/manifest.json?v=1");
        for (relative, expected) in [
            ("bundle.img", "http://h:8080/stable/bundle.img"),
            (
                "v2/bundle.img?x=1",
                "http://h:8080/stable/v2/bundle.img?x=1",
            ),
            ("/other/bundle.img", "http://h:8080/other/bundle.img"),
            ("a/b/", "http://h:8080/stable/a/b/"),
            ("...", "http://h:8080/stable/..."),
            ("a/b:c", "http://h:8080/stable/a/b:c"),
        ] {
            assert_eq!(
                base.join(relative).map(|u| u.to_string()),
                Ok(expected.to_owned())
            );
        }
        assert_eq!(
            url("http://h/").join("x.json").map(|u| u.to_string()),
            Ok("http://h/x.json".to_owned())
        );
        assert_eq!(
            url("http://h/dir/?list").join("x").map(|u| u.to_string()),
            Ok("http://h/dir/x".to_owned())
        );
    }

    #[test]
    fn join_refuses_schemes_hosts_and_dot_segments() {
        let base = url("http://h/stable/manifest.json");
        let text = |text: &str| text.to_owned();
        for (relative, expected) in [
            ("", UrlError::EmptyPath),
            (
                "http://evil/x",
                UrlError::NotAPath {
                    text: text("http://evil/x"),
                },
            ),
            (
                "https://h/x",
                UrlError::NotAPath {
                    text: text("https://h/x"),
                },
            ),
            (
                "file:x",
                UrlError::NotAPath {
                    text: text("file:x"),
                },
            ),
            (
                "//evil/x",
                UrlError::NotAPath {
                    text: text("//evil/x"),
                },
            ),
            ("../x", UrlError::DotSegment { text: text("../x") }),
            (
                "a/../../x",
                UrlError::DotSegment {
                    text: text("a/../../x"),
                },
            ),
            ("/..", UrlError::DotSegment { text: text("/..") }),
            ("./x", UrlError::DotSegment { text: text("./x") }),
            (
                "a b",
                UrlError::Character {
                    text: text("a b"),
                    position: 1,
                },
            ),
            ("x#y", UrlError::Fragment { text: text("x#y") }),
        ] {
            assert_eq!(base.join(relative), Err(expected), "{relative:?}");
        }
    }

    #[test]
    fn the_request_is_exactly_this() {
        assert_eq!(
            url("http://h:8080/a?b").request(),
            "GET /a?b HTTP/1.1\r\nHost: h:8080\r\nUser-Agent: xorbang-update\r\n\
             Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
        );
        assert!(url("http://[::1]/")
            .request()
            .contains("\r\nHost: [::1]\r\n"));
    }

    fn head(status: u16, framing: Framing) -> Head {
        Head {
            status,
            framing,
            location: None,
        }
    }

    #[test]
    fn heads_give_status_and_framing() {
        for (bytes, expected) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"[..],
                head(200, Framing::Length(42)),
            ),
            (
                b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\ncontent-LENGTH:7\r\n\r\n",
                head(200, Framing::Length(7)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \t\r\n\r\n",
                head(200, Framing::Chunked),
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n", head(200, Framing::Close)),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                head(204, Framing::Length(0)),
            ),
            (b"HTTP/1.1 404\r\n\r\n", head(404, Framing::Close)),
            (b"HTTP/1.1 500 \r\nX:\r\n\r\n", head(500, Framing::Close)),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
                head(200, Framing::Length(5)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 1\r\n\r\n",
                head(200, Framing::Length(1)),
            ),
            (
                b"HTTP/1.1 200 \xff\xfe\r\nX-Other: \xc3\x28\r\nContent-Length: 3\r\n\r\n",
                head(200, Framing::Length(3)),
            ),
        ] {
            assert_eq!(
                parse_head(bytes),
                Ok(expected),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            parse_head(
                b"HTTP/1.1 302 Found\r\nLOCATION: http://h/new\r\nContent-Length: 0\r\n\r\n"
            )
            .map(|head| head.location),
            Ok(Some("http://h/new".to_owned()))
        );
    }

    #[test]
    fn malformed_heads_say_what_is_wrong() {
        let text = |text: &str| text.to_owned();
        for (bytes, expected) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], HeadError::Unterminated { found: 17 }),
            (b"", HeadError::Unterminated { found: 0 }),
            (b"HTTP/2 200 OK\r\n\r\n", HeadError::StatusLine { line: text("HTTP/2 200 OK") }),
            (b"HTTP/1.10 200\r\n\r\n", HeadError::StatusLine { line: text("HTTP/1.10 200") }),
            (b"HTTP/1.1 20 OK\r\n\r\n", HeadError::StatusLine { line: text("HTTP/1.1 20 OK") }),
            (b"HTTP/1.1 2000\r\n\r\n", HeadError::StatusLine { line: text("HTTP/1.1 2000") }),
            (b"HTTP/1.1 099\r\n\r\n", HeadError::StatusLine { line: text("HTTP/1.1 099") }),
            (b"HTTP/1.1 +20\r\n\r\n", HeadError::StatusLine { line: text("HTTP/1.1 +20") }),
            (b"ICY 200 OK\r\n\r\n", HeadError::StatusLine { line: text("ICY 200 OK") }),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", HeadError::StatusLine { line: text("") }),
            (
                b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
                HeadError::StatusLine {
                    line: text("HTTP/1.1 200 OK\nContent-Length: 1"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nNo colon\r\n\r\n",
                HeadError::HeaderLine {
                    number: 2,
                    line: text("No colon"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
                HeadError::HeaderLine {
                    number: 1,
                    line: text("Content-Length : 1"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n",
                HeadError::HeaderLine {
                    number: 2,
                    line: text(" folded"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
                HeadError::HeaderLine {
                    number: 1,
                    line: text(": empty"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                HeadError::ContentLength { value: text("-1") },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                HeadError::ContentLength {
                    value: text("99999999999999999999"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
                HeadError::ContentLength { value: text("") },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
                HeadError::ContentLengthsDisagree { first: 5, second: 6 },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                HeadError::ContentLengthsDisagree { first: 5, second: 6 },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                HeadError::TransferEncoding {
                    value: text("gzip, chunked"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncoding {
                    value: text("chunked, chunked"),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
                HeadError::ContentEncoding { value: text("gzip") },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::AmbiguousLength,
            ),
        ] {
            assert_eq!(parse_head(bytes), Err(expected), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    /// A head of exactly `length` bytes: a status line, filler headers and the blank line.
    fn head_of_length(length: usize) -> Vec<u8> {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while length - head.len() > 300 {
            head.extend_from_slice(format!("X-Filler: {}\r\n", "y".repeat(200)).as_bytes());
        }
        let last = length - head.len() - "X: \r\n\r\n".len();
        head.extend_from_slice(format!("X: {}\r\n\r\n", "z".repeat(last)).as_bytes());
        assert_eq!(head.len(), length);
        head
    }

    #[test]
    fn heads_are_bounded_at_16_kib() {
        let largest = head_of_length(MAX_HEAD_BYTES);
        assert_eq!(parse_head(&largest), Ok(head(200, Framing::Close)));
        assert_eq!(read_head(&mut &largest[..]).expect("read"), largest);
        let too_long = head_of_length(MAX_HEAD_BYTES + 1);
        assert_eq!(
            parse_head(&too_long),
            Err(HeadError::TooLong {
                limit: MAX_HEAD_BYTES
            })
        );
        let endless = [b"HTTP/1.1 200 OK\r\n".to_vec(), vec![b'x'; 1 << 20]].concat();
        let read = read_head(&mut &endless[..]).expect("read");
        assert_eq!(read.len(), MAX_HEAD_BYTES + 1);
        assert_eq!(
            parse_head(&read),
            Err(HeadError::TooLong {
                limit: MAX_HEAD_BYTES
            })
        );
    }

    #[test]
    fn reading_a_head_stops_at_its_end_and_leaves_the_body() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody\r\n\r\n";
        let mut reader = BufReader::with_capacity(3, &response[..]);
        let head = read_head(&mut reader).expect("read");
        assert_eq!(head, &response[..38]);
        let mut body = Vec::new();
        reader.read_to_end(&mut body).expect("body");
        assert_eq!(body, b"body\r\n\r\n");
        let cut = read_head(&mut &response[..20]).expect("read");
        assert_eq!(parse_head(&cut), Err(HeadError::Unterminated { found: 20 }));
    }

    /// Valid heads to mutate, between them using every header the parser acts on.
    const SEED_HEADS: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: nginx\r\n\r\n",
        b"HTTP/1.0 302 Found\r\nLocation: /there\r\nContent-Encoding: identity\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12\r\n\r\n",
    ];
    /// Lines the mutations insert at line boundaries.
    const HEAD_LINES: [&[u8]; 8] = [
        b"Content-Length: 7\r\n",
        b"content-length: 12\r\n",
        b"Content-Length: 1x\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Content-Encoding: gzip\r\n",
        b" folded\r\n",
        b"Location: /x\r\n",
    ];

    /// Flips bits, cuts, inserts lines and repeats lines (past the size bound, sometimes).
    fn mutate_head(rng: &mut XorShift, original: &[u8]) -> Vec<u8> {
        let mut bytes = original.to_vec();
        for _ in 0..=rng.below(3) {
            let line_starts: Vec<usize> = (2..bytes.len())
                .filter(|&at| bytes[at - 2..at] == *b"\r\n")
                .collect();
            let at_line = match line_starts.len() {
                0 => 0,
                count => line_starts[rng.below(count)],
            };
            match rng.below(6) {
                0 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] = b"0123456789 :,\r\n"[rng.below(15)];
                }
                3 if rng.one_in(8) => {
                    let line = HEAD_LINES[rng.below(HEAD_LINES.len())].repeat(1000);
                    bytes.splice(at_line..at_line, line);
                }
                _ => {
                    let line = HEAD_LINES[rng.below(HEAD_LINES.len())];
                    bytes.splice(at_line..at_line, line.iter().copied());
                }
            }
        }
        bytes
    }

    /// Mutated heads never panic the parser, what parses keeps its framing consistent with
    /// its headers, and every check is reached.
    #[test]
    fn mutated_heads_never_panic_and_reach_every_check() {
        let mut rng = XorShift(0x0b5e_55ed_4ead_0001);
        let mut kinds = BTreeSet::new();
        let mut accepted = 0;
        for _ in 0..FUZZ_ITERATIONS {
            let seed = SEED_HEADS[rng.below(SEED_HEADS.len())];
            let bytes = mutate_head(&mut rng, seed);
            match parse_head(&bytes) {
                Ok(head) => {
                    accepted += 1;
                    let lowered = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
                    match head.framing {
                        Framing::Chunked => assert!(lowered.contains("chunked"), "{lowered}"),
                        Framing::Length(_) if head.status != 204 => {
                            assert!(lowered.contains("content-length"), "{lowered}")
                        }
                        _ => {}
                    }
                }
                Err(error) => {
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!("{accepted} of {FUZZ_ITERATIONS} mutated heads parsed; errors: {kinds:?}");
        assert!(accepted > FUZZ_ITERATIONS / 20, "{accepted} parsed");
        for expected in [
            "TooLong",
            "Unterminated",
            "StatusLine",
            "HeaderLine",
            "ContentLength",
            "ContentLengthsDisagree",
            "TransferEncoding",
            "ContentEncoding",
            "AmbiguousLength",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    /// Decodes a chunked body fed `capacity` bytes at a time into reads of `chunk` bytes.
    fn decode(bytes: &[u8], capacity: usize, chunk: usize) -> Result<Vec<u8>, BodyError> {
        let mut reader = ChunkedReader::new(BufReader::with_capacity(capacity, bytes));
        let mut decoded = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(decoded),
                Ok(read) => decoded.extend_from_slice(&buf[..read]),
                Err(error) => return Err(body_error(&error).expect("a BodyError").clone()),
            }
        }
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1;name=value\r\n \r\n00000006 ; x\r\nworld!\r\n0\r\nX-Sum: 1\r\n\r\nafter";

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        for capacity in [1, 2, 3, 7, 64, 8192] {
            for chunk in [1, 2, 5, 4096] {
                assert_eq!(
                    decode(CHUNKED, capacity, chunk),
                    Ok(b"hello world!".to_vec()),
                    "capacity {capacity}, reads of {chunk}"
                );
            }
        }
        assert_eq!(decode(b"0\r\n\r\n", 8, 8), Ok(Vec::new()));
        let largest = [&b"ffffffffffffffff\r\n"[..], b"ab"].concat();
        assert_eq!(
            decode(&largest, 8, 8),
            Err(BodyError::ChunkedTruncated { received: 2 })
        );
    }

    #[test]
    fn malformed_chunked_bodies_say_what_is_wrong() {
        let line = |text: &str| text.to_owned();
        let long_extension = [&b"5;"[..], &[b'x'; MAX_CHUNK_LINE_BYTES][..], b"\r\n"].concat();
        let many_trailers = [&b"0\r\n"[..], &b"X-T: y\r\n".repeat(3000)[..], b"\r\n"].concat();
        for (bytes, expected) in [
            (&b"g\r\n"[..], BodyError::ChunkSize { line: line("g") }),
            (b"\r\n", BodyError::ChunkSize { line: line("") }),
            (
                b"+5\r\nhello\r\n0\r\n\r\n",
                BodyError::ChunkSize { line: line("+5") },
            ),
            (b"-1\r\n", BodyError::ChunkSize { line: line("-1") }),
            (b"0x5\r\n", BodyError::ChunkSize { line: line("0x5") }),
            (b" 5\r\n", BodyError::ChunkSize { line: line(" 5") }),
            (
                b"10000000000000000\r\n",
                BodyError::ChunkSize {
                    line: line("10000000000000000"),
                },
            ),
            (b"5\n", BodyError::LineEnd { line: line("5") }),
            (b"5\r\nhello\n", BodyError::LineEnd { line: line("") }),
            (b"5\r\nhelloX\r\n", BodyError::ChunkEnd { line: line("X") }),
            (b"3\r\nhello\r\n", BodyError::ChunkEnd { line: line("lo") }),
            (
                &long_extension,
                BodyError::ChunkLineTooLong {
                    limit: MAX_CHUNK_LINE_BYTES,
                },
            ),
            (
                &many_trailers,
                BodyError::TrailersTooLong {
                    limit: MAX_TRAILER_BYTES,
                },
            ),
            (b"", BodyError::ChunkedTruncated { received: 0 }),
            (b"5\r\nhel", BodyError::ChunkedTruncated { received: 3 }),
            (b"5\r\nhello", BodyError::ChunkedTruncated { received: 5 }),
            (
                b"5\r\nhello\r\n",
                BodyError::ChunkedTruncated { received: 5 },
            ),
            (
                b"5\r\nhello\r\n0\r\n",
                BodyError::ChunkedTruncated { received: 5 },
            ),
            (
                b"5\r\nhello\r\n0\r\nX: y\r",
                BodyError::ChunkedTruncated { received: 5 },
            ),
        ] {
            for capacity in [1, 4096] {
                assert_eq!(
                    decode(bytes, capacity, 4096),
                    Err(expected.clone()),
                    "{:?}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn body_errors_carry_their_io_kind_and_message() {
        let mut reader = ChunkedReader::new(&b"5\r\nhel"[..]);
        let error = reader.read_to_end(&mut Vec::new()).expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            error.to_string(),
            "the chunked body ended after 3 bytes, before its last chunk"
        );
        let mut reader = ChunkedReader::new(&b"z\r\n"[..]);
        let error = reader.read_to_end(&mut Vec::new()).expect_err("malformed");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    /// Mutated chunked bodies never panic the decoder, decode the same however they are
    /// split, and reach every check.
    #[test]
    fn mutated_chunked_bodies_decode_the_same_however_split() {
        let mut rng = XorShift(0xc4a2_6e3d_9b71_0002);
        let mut kinds = BTreeSet::new();
        let mut accepted = 0;
        let insertions: [&[u8]; 6] = [
            b"\r\n",
            b";ext\r\n",
            b"0\r\n",
            b"ffffffffffffffffff\r\n",
            &[b'7'; MAX_CHUNK_LINE_BYTES + 1],
            &b"X-T: y\r\n".repeat(2100),
        ];
        let insertions = insertions.map(<[u8]>::to_vec);
        for _ in 0..FUZZ_ITERATIONS / 4 {
            let mut bytes = CHUNKED.to_vec();
            for _ in 0..=rng.below(2) {
                match rng.below(4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    1 => bytes.truncate(rng.below(bytes.len() + 1)),
                    2 if rng.one_in(4) => {
                        let at = rng.below(bytes.len() + 1);
                        let insertion = &insertions[rng.below(insertions.len())];
                        bytes.splice(at..at, insertion.iter().copied());
                    }
                    _ => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, b"0123456789abcdef\r\n; "[rng.below(20)]);
                    }
                }
            }
            let whole = decode(&bytes, 8192, 8192);
            let split = decode(&bytes, rng.range(1, 5), rng.range(1, 5));
            assert_eq!(whole, split, "{:?}", String::from_utf8_lossy(&bytes));
            match whole {
                Ok(_) => accepted += 1,
                Err(error) => {
                    kinds.insert(kind(&error));
                }
            }
        }
        eprintln!("{accepted} mutated chunked bodies decoded; errors: {kinds:?}");
        assert!(accepted > FUZZ_ITERATIONS / 400, "{accepted} decoded");
        for expected in [
            "ChunkedTruncated",
            "ChunkSize",
            "ChunkLineTooLong",
            "LineEnd",
            "ChunkEnd",
            "TrailersTooLong",
        ] {
            assert!(
                kinds.contains(expected),
                "never reached {expected}: {kinds:?}"
            );
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_detects_truncation() {
        let mut body = String::new();
        LengthReader::new(&b"abcdef"[..], 3)
            .read_to_string(&mut body)
            .expect("read");
        assert_eq!(body, "abc");
        let error = LengthReader::new(&b"abc"[..], 10)
            .read_to_end(&mut Vec::new())
            .expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(error.to_string(), "the body ended after 3 of its 10 bytes");
        assert_eq!(
            body_error(&error),
            Some(&BodyError::Truncated {
                expected: 10,
                received: 3
            })
        );
    }

    /// Serves `response` to one connection on 127.0.0.1, after reading the request, then
    /// waits for the client to close; hands back the request.
    fn serve_once(response: &'static [u8]) -> (Url, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let request = read_head(&mut reader).expect("request");
            stream.write_all(response).expect("respond");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            reader.read_to_end(&mut Vec::new()).expect("wait for close");
            request
        });
        (
            url(&format!("http://127.0.0.1:{port}/stable/manifest.json")),
            server,
        )
    }

    fn fetch(response: &'static [u8]) -> (Result<Vec<u8>, io::Error>, Option<u64>) {
        let (url, server) = serve_once(response);
        let mut response = get(&url, TIMEOUT).expect("get");
        let mut body = Vec::new();
        let read = response.read_to_end(&mut body).map(|_| body);
        let content_length = response.content_length;
        drop(response);
        server.join().expect("server");
        (read, content_length)
    }

    #[test]
    fn get_sends_the_request_and_reads_a_length_body() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA");
        let mut response = get(&url, TIMEOUT).expect("get");
        assert_eq!(response.content_length, Some(5));
        let mut body = String::new();
        response.read_to_string(&mut body).expect("body");
        assert_eq!(body, "hello");
        drop(response);
        let request = String::from_utf8(server.join().expect("server")).expect("text");
        assert_eq!(
            request,
            format!(
                "GET /stable/manifest.json HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                 User-Agent: xorbang-update\r\nAccept-Encoding: identity\r\n\
                 Connection: close\r\n\r\n",
                url.port
            )
        );
    }

    #[test]
    fn get_reads_chunked_and_close_delimited_bodies() {
        let chunked = fetch(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nsign\r\n3\r\ned!\r\n0\r\n\r\n",
        );
        assert_eq!(
            (chunked.0.expect("chunked"), chunked.1),
            (b"signed!".to_vec(), None)
        );
        let closed = fetch(b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\n\r\nuntil close");
        assert_eq!(
            (closed.0.expect("closed"), closed.1),
            (b"until close".to_vec(), None)
        );
    }

    #[test]
    fn a_truncated_body_is_an_error_on_read() {
        let (read, content_length) = fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(content_length, Some(10));
        let error = read.expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(error.to_string(), "the body ended after 3 of its 10 bytes");
        let (read, _) = fetch(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc");
        assert_eq!(
            body_error(&read.expect_err("truncated")),
            Some(&BodyError::ChunkedTruncated { received: 3 })
        );
    }

    /// Gets `response`, expecting an error, and lets the server finish.
    fn get_error(response: &'static [u8]) -> (Url, HttpError) {
        let (url, server) = serve_once(response);
        let error = get(&url, TIMEOUT).expect_err("an error");
        server.join().expect("server");
        (url, error)
    }

    #[test]
    fn error_statuses_are_errors_that_name_the_url() {
        let (url, error) =
            get_error(b"HTTP/1.0 404 File not found\r\nContent-Length: 9\r\n\r\nnot here!");
        assert!(
            matches!(error, HttpError::Status { status: 404, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("{url} answered with status 404, not success (2xx)")
        );
        let (_, error) = get_error(b"HTTP/1.1 304 Not Modified\r\n\r\n");
        assert!(
            matches!(error, HttpError::Status { status: 304, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn redirects_are_refused_with_their_location() {
        let (url, error) = get_error(
            b"HTTP/1.1 302 Found\r\nLocation: https://cdn.example/stable/manifest.json\r\n\
              Content-Length: 0\r\n\r\n",
        );
        assert!(matches!(&error, HttpError::Redirect { location, .. }
            if location == "https://cdn.example/stable/manifest.json"));
        assert_eq!(
            error.to_string(),
            format!(
                "{url} redirects to \"https://cdn.example/stable/manifest.json\", and redirects \
                 are not followed: use the URL it names"
            )
        );
    }

    #[test]
    fn a_malformed_response_names_the_url_and_the_reason() {
        let (url, error) = get_error(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
        let HttpError::BadResponse { reason, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(
            reason,
            &HeadError::StatusLine {
                line: "SSH-2.0-OpenSSH_9.6".to_owned()
            }
        );
        assert_eq!(
            error.to_string(),
            format!("{url} answered with a malformed response head")
        );
        let (_, error) = get_error(b"HTTP/1.1 200 OK\r\nContent-Len");
        assert!(matches!(
            error,
            HttpError::BadResponse {
                reason: HeadError::Unterminated { found: 28 },
                ..
            }
        ));
    }

    #[test]
    fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let url = url(&format!("http://127.0.0.1:{port}/x"));
        let error = get(&url, TIMEOUT).expect_err("refused");
        assert!(
            matches!(&error, HttpError::Connect { source, .. }
            if source.kind() == io::ErrorKind::ConnectionRefused),
            "{error:?}"
        );
        assert_eq!(error.to_string(), format!("cannot connect to {url}"));
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            BufReader::new(stream)
                .read_to_end(&mut Vec::new())
                .expect("wait for close")
        });
        let url = url(&format!("http://127.0.0.1:{port}/x"));
        let error = get(&url, Duration::from_millis(200)).expect_err("timeout");
        assert!(
            matches!(&error, HttpError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
            "{error:?}"
        );
        server.join().expect("server");
    }
}

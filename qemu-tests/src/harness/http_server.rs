//! A static file server, in two roles: in-process for update channels, bound to 127.0.0.1
//! (guests on QEMU's user-mode network reach it as 10.0.2.2), and as the `serve` subcommand
//! the netboot rig (`netns.rs`) runs inside its network namespace.
//!
//! GET and HEAD of regular files below the root, nothing else: no `.`-names (so no `..`),
//! and a symlink only where it resolves inside the root. A single `Range: bytes=…` is
//! answered with 206 and `Content-Range` (UEFI HTTP boot may ask for parts); several ranges
//! or a malformed one are ignored, as RFC 9110 allows, and the whole file is sent. One
//! thread per connection, `Connection: close`. When logging, every answer appends one line
//! `<client ip> <status> <body bytes sent> <request path>`, which [`bytes_served_by_client`]
//! adds up.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The address guests see the host's loopback at (QEMU user networking).
pub const GUEST_HOST: &str = "10.0.2.2";

/// The most a request head may take; anything longer is answered 400.
const MAX_HEAD: u64 = 16 * 1024;
/// How long a client may leave the server waiting, in either direction: a guest killed
/// mid-download must not hold its thread (and, in a namespace, the namespace) forever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct HttpServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `root` on 127.0.0.1 at a free port, without a log.
    pub fn serve(root: &Path) -> io::Result<Self> {
        Self::bind((Ipv4Addr::LOCALHOST, 0).into(), root, None)
    }

    /// Serves `root` on `listen` (port 0: any free one), logging every answer to `log`.
    pub fn bind(listen: SocketAddr, root: &Path, log: Option<&Path>) -> io::Result<Self> {
        let site = Arc::new(Site::new(root, log)?);
        let listener = TcpListener::bind(listen)?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || accept_loop(&listener, &site, &stopping));
        Ok(Self {
            address,
            stop,
            thread: Some(thread),
        })
    }

    /// The channel URL as a guest on QEMU's user-mode network writes it.
    pub fn guest_url(&self, path: &str) -> String {
        format!("http://{GUEST_HOST}:{}/{path}", self.address.port())
    }

    #[cfg(test)]
    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let mut wake = self.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        if TcpStream::connect(wake).is_ok() {
            if let Some(thread) = self.thread.take() {
                if thread.join().is_err() {
                    eprintln!("http server: its thread panicked");
                }
            }
        }
    }
}

/// The `serve` subcommand: binds `listen`, prints `listening on ADDR:PORT` on stdout once
/// bound, and serves `root` until the process is killed, logging to `log`. Returns only
/// when it cannot start.
pub fn serve_until_killed(listen: SocketAddr, root: &Path, log: &Path) -> Result<(), String> {
    let site = Site::new(root, Some(log))
        .map_err(|error| format!("{} or {}: {error}", root.display(), log.display()))?;
    let listener = TcpListener::bind(listen).map_err(|error| format!("{listen}: {error}"))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("{listen}: {error}"))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening on {address}")
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("stdout: {error}"))?;
    accept_loop(&listener, &Arc::new(site), &AtomicBool::new(false));
    Err("the listening socket failed".to_owned())
}

/// What every connection shares: the root (resolved, so symlinks can be checked against it)
/// and the log.
struct Site {
    root: PathBuf,
    log: Option<Mutex<File>>,
}

impl Site {
    fn new(root: &Path, log: Option<&Path>) -> io::Result<Self> {
        let log = match log {
            Some(path) => Some(Mutex::new(
                File::options().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Self {
            root: root.canonicalize()?,
            log,
        })
    }

    /// Appends the line for one answer, in one write so lines never interleave.
    fn record(&self, client: IpAddr, status: u16, bytes: u64, path: &str) {
        let Some(log) = &self.log else { return };
        let line = format!("{client} {status} {bytes} {path}\n");
        let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = file.write_all(line.as_bytes()) {
            eprintln!("http server: cannot log {line:?}: {error}");
        }
    }
}

fn accept_loop(listener: &TcpListener, site: &Arc<Site>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let site = Arc::clone(site);
        std::thread::spawn(move || match answer(stream, &site) {
            // A guest killed mid-download (ab-interrupted) just goes away.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) => {}
            Err(error) => eprintln!("http server: {error}"),
            Ok(()) => {}
        });
    }
}

/// A request as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    range: Option<String>,
}

/// Reads the request line and the headers (the body of a GET or HEAD is empty). `None`
/// for a head that is not HTTP or longer than [`MAX_HEAD`].
fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Ok(None);
    };
    if !version.starts_with("HTTP/") {
        return Ok(None);
    }
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut range = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            // The client closed before the head ended, or the head is too long.
            return Ok(None);
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    Ok(Some(Request {
        method,
        path,
        range,
    }))
}

fn answer(mut stream: TcpStream, site: &Site) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let client = stream.peer_addr()?.ip();
    let Some(request) = read_request(&stream)? else {
        site.record(client, 400, 0, "-");
        return send_head(&mut stream, 400, "Bad Request", &[], 0);
    };
    let head_only = match request.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            site.record(client, 405, 0, &request.path);
            let allow = [("Allow", "GET, HEAD".to_owned())];
            return send_head(&mut stream, 405, "Method Not Allowed", &allow, 0);
        }
    };
    let opened = resolve(&site.root, &request.path)
        .and_then(|path| File::open(&path).ok().map(|file| (path, file)));
    let Some((path, mut file)) = opened else {
        site.record(client, 404, 0, &request.path);
        return send_head(&mut stream, 404, "Not Found", &[], 0);
    };
    let size = file.metadata()?.len();
    let mut headers = vec![("Accept-Ranges", "bytes".to_owned())];
    headers.push(("Content-Type", content_type(&path).to_owned()));
    let (status, first, length) = match byte_range(request.range.as_deref(), size) {
        ByteRange::Whole => (200, 0, size),
        ByteRange::Part { first, last } => {
            headers.push(("Content-Range", format!("bytes {first}-{last}/{size}")));
            (206, first, last - first + 1)
        }
        ByteRange::Unsatisfiable => {
            site.record(client, 416, 0, &request.path);
            let unsatisfied = [("Content-Range", format!("bytes */{size}"))];
            return send_head(&mut stream, 416, "Range Not Satisfiable", &unsatisfied, 0);
        }
    };
    let reason = if status == 206 {
        "Partial Content"
    } else {
        "OK"
    };
    let mut sent = 0;
    let result = send_head(&mut stream, status, reason, &headers, length).and_then(|()| {
        if head_only {
            return Ok(());
        }
        file.seek(SeekFrom::Start(first))?;
        copy_counted(&mut (&mut file).take(length), &mut stream, &mut sent)
    });
    // The bytes that did go out are logged even when the client went away.
    site.record(client, status, sent, &request.path);
    result?;
    stream.flush()
}

fn send_head(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    headers: &[(&str, String)],
    length: u64,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())
}

/// `io::copy`, but the count survives an error: how much a killed guest did get.
fn copy_counted(from: &mut impl Read, to: &mut impl Write, sent: &mut u64) -> io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let count = match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        to.write_all(&buffer[..count])?;
        *sent += count as u64;
    }
}

/// EDK2's HTTP boot takes `application/efi` (or a `.efi` name) as a bootable image.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("efi") => "application/efi",
        Some("ipxe" | "txt" | "json" | "conf") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// `/a/b?x` → `root/a/b`, if that is a regular file whose real path stays below `root`
/// (which must already be canonical). Every part must be a plain name: not empty, not
/// starting with `.` (which refuses `.`, `..` and hidden files). No percent-decoding: `%2e`
/// is a literal name.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let path = request_path.split(['?', '#']).next()?;
    let mut file = root.to_owned();
    for part in path.strip_prefix('/')?.split('/') {
        if part.is_empty() || part.starts_with('.') || part.contains('\0') {
            return None;
        }
        file.push(part);
    }
    let real = file.canonicalize().ok()?;
    (real.starts_with(root) && real.is_file()).then_some(real)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// No range, or one this server ignores (several ranges, another unit, bad syntax).
    Whole,
    /// Bytes `first..=last`, both inside the file.
    Part { first: u64, last: u64 },
    /// A valid range that starts past the end (416).
    Unsatisfiable,
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` (the last n bytes), per RFC 9110 §14.1.2.
fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(header) = header else {
        return ByteRange::Whole;
    };
    let Some((unit, spec)) = header.split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (true, None, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Part {
                    first: size.saturating_sub(suffix),
                    last: size - 1,
                }
            }
        }
        (false, Some(first), last) if last.is_some() || last_is_open(spec) => {
            if last.is_some_and(|last| last < first) {
                ByteRange::Whole
            } else if first >= size {
                ByteRange::Unsatisfiable
            } else {
                let end = size - 1;
                ByteRange::Part {
                    first,
                    last: last.map_or(end, |last| last.min(end)),
                }
            }
        }
        _ => ByteRange::Whole,
    }
}

/// Whether `a-` has nothing after the dash.
fn last_is_open(spec: &str) -> bool {
    spec.trim().ends_with('-')
}

/// One line of a server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub client: IpAddr,
    pub status: u16,
    pub bytes: u64,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read the server log {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("server log {path} line {line}: {reason}: {text:?}")]
    Line {
        path: String,
        line: usize,
        reason: &'static str,
        text: String,
    },
}

/// Every answer logged in `log`, in order.
pub fn read_log(log: &Path) -> Result<Vec<Served>, LogError> {
    let text = std::fs::read_to_string(log).map_err(|error| LogError::Read {
        path: log.display().to_string(),
        error,
    })?;
    parse_log(&text).map_err(|(line, reason, text)| LogError::Line {
        path: log.display().to_string(),
        line,
        reason,
        text,
    })
}

/// Lines `<client ip> <status> <bytes> <path>`; an error names the line (from 1), what is
/// wrong with it, and its text.
fn parse_log(text: &str) -> Result<Vec<Served>, (usize, &'static str, String)> {
    let mut served = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fail = |reason| (index + 1, reason, line.to_owned());
        let mut fields = line.splitn(4, ' ');
        let (Some(client), Some(status), Some(bytes), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(fail("expected 4 fields"));
        };
        served.push(Served {
            client: client.parse().map_err(|_| fail("bad client address"))?,
            status: status.parse().map_err(|_| fail("bad status"))?,
            bytes: bytes.parse().map_err(|_| fail("bad byte count"))?,
            path: path.to_owned(),
        });
    }
    Ok(served)
}

/// The body bytes each client was sent, over every answer in `log`.
pub fn bytes_served_by_client(log: &Path) -> Result<BTreeMap<IpAddr, u64>, LogError> {
    let mut total = BTreeMap::new();
    for served in read_log(log)? {
        *total.entry(served.client).or_default() += served.bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(port: u16, head: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        stream.write_all(head.as_bytes()).expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reads");
        answer
    }

    fn get(port: u16, path: &str) -> String {
        request(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    #[test]
    fn serves_files_below_its_root_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("v2")).expect("mkdir");
        std::fs::write(dir.path().join("v2/manifest.json"), b"{}").expect("write");
        let server = HttpServer::serve(dir.path()).expect("serves");
        assert!(get(server.port(), "/v2/manifest.json").ends_with("\r\n\r\n{}"));
        for path in ["/v2/missing", "/../etc/passwd", "/v2/", "/.hidden"] {
            assert!(
                get(server.port(), path).starts_with("HTTP/1.1 404"),
                "{path}"
            );
        }
        assert_eq!(
            server.guest_url("stable/"),
            format!("http://10.0.2.2:{}/stable/", server.port())
        );
    }

    #[test]
    fn paths_resolve_to_plain_files_inside_the_root_only() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"x").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(root.join("hosts")).expect("mkdir");
        std::fs::write(root.join("hosts/a.cpio"), b"a").expect("write");
        std::fs::write(root.join(".hidden"), b"h").expect("write");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("symlink");
        };
        link(&outside.path().join("secret"), "escape");
        link(outside.path(), "escape-dir");
        link(Path::new("hosts/a.cpio"), "inside");
        let found = |path: &str| resolve(&root, path);
        assert_eq!(found("/hosts/a.cpio"), Some(root.join("hosts/a.cpio")));
        assert_eq!(found("/hosts/a.cpio?x=1"), Some(root.join("hosts/a.cpio")));
        assert_eq!(found("/inside"), Some(root.join("hosts/a.cpio")));
        for refused in [
            "/escape",
            "/escape-dir/secret",
            "/../secret",
            "/hosts/../hosts/a.cpio",
            "/./hosts/a.cpio",
            "/.hidden",
            "/hosts",
            "/hosts/",
            "//hosts/a.cpio",
            "hosts/a.cpio",
            "/missing",
            "/hosts/a.cpio\0",
        ] {
            assert_eq!(found(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn ranges_are_answered_checked_against_the_size_or_ignored() {
        let part = |first, last| ByteRange::Part { first, last };
        let cases = [
            (None, 10, ByteRange::Whole),
            (Some("bytes=0-3"), 10, part(0, 3)),
            (Some("bytes=2-"), 10, part(2, 9)),
            (Some("bytes=5-100"), 10, part(5, 9)),
            (Some("bytes=9-9"), 10, part(9, 9)),
            (Some("bytes=-3"), 10, part(7, 9)),
            (Some("bytes=-30"), 10, part(0, 9)),
            (Some(" Bytes = 1 - 2 "), 10, part(1, 2)),
            (Some("bytes=10-"), 10, ByteRange::Unsatisfiable),
            (Some("bytes=10-20"), 10, ByteRange::Unsatisfiable),
            (Some("bytes=-0"), 10, ByteRange::Unsatisfiable),
            (Some("bytes=0-"), 0, ByteRange::Unsatisfiable),
            (Some("bytes=-1"), 0, ByteRange::Unsatisfiable),
            (Some("bytes=3-2"), 10, ByteRange::Whole),
            (Some("bytes=0-1,4-5"), 10, ByteRange::Whole),
            (Some("items=0-1"), 10, ByteRange::Whole),
            (Some("bytes=a-1"), 10, ByteRange::Whole),
            (Some("bytes=+1-2"), 10, ByteRange::Whole),
            (Some("bytes=1"), 10, ByteRange::Whole),
            (Some("bytes=-"), 10, ByteRange::Whole),
            (Some("bytes"), 10, ByteRange::Whole),
            (Some("bytes=99999999999999999999-"), 10, ByteRange::Whole),
        ];
        for (header, size, want) in cases {
            assert_eq!(byte_range(header, size), want, "{header:?} of {size}");
        }
    }

    #[test]
    fn head_get_and_ranges_on_the_wire_are_logged_by_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("boot.efi"), b"0123456789").expect("write");
        let log = dir.path().join("http.log");
        let server = HttpServer::bind((Ipv4Addr::LOCALHOST, 0).into(), dir.path(), Some(&log))
            .expect("serves");
        let port = server.port();
        let head = request(port, "HEAD /boot.efi HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 10\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: application/efi\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        let part = request(port, "GET /boot.efi HTTP/1.1\r\nrange: bytes=2-4\r\n\r\n");
        assert!(
            part.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{part}"
        );
        assert!(
            part.contains("\r\nContent-Range: bytes 2-4/10\r\n"),
            "{part}"
        );
        assert!(part.contains("\r\nContent-Length: 3\r\n"), "{part}");
        assert!(part.ends_with("\r\n\r\n234"), "{part}");
        let past = request(port, "GET /boot.efi HTTP/1.1\r\nRange: bytes=10-\r\n\r\n");
        assert!(past.starts_with("HTTP/1.1 416 "), "{past}");
        assert!(past.contains("\r\nContent-Range: bytes */10\r\n"), "{past}");
        assert!(get(port, "/boot.efi").ends_with("\r\n\r\n0123456789"));
        assert!(get(port, "/nothing").starts_with("HTTP/1.1 404 "));
        let post = request(port, "POST /boot.efi HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(request(port, "hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
        drop(server);
        let lines: Vec<String> = read_log(&log)
            .expect("log")
            .iter()
            .map(|served| format!("{} {} {}", served.status, served.bytes, served.path))
            .collect();
        assert_eq!(
            lines,
            [
                "200 0 /boot.efi",
                "206 3 /boot.efi",
                "416 0 /boot.efi",
                "200 10 /boot.efi",
                "404 0 /nothing",
                "405 0 /boot.efi",
                "400 0 -",
            ]
        );
        let localhost = IpAddr::from(Ipv4Addr::LOCALHOST);
        assert_eq!(
            bytes_served_by_client(&log).expect("log"),
            BTreeMap::from([(localhost, 13)])
        );
    }

    #[test]
    fn log_lines_are_parsed_or_refused_by_line() {
        let text = "10.14.0.100 200 5 /a b\n::1 206 3 /c\n";
        let served = parse_log(text).expect("parses");
        assert_eq!(served[0].path, "/a b", "the path is the rest of the line");
        assert_eq!(
            served[1].client,
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        );
        let refusals = [
            ("10.14.0.100 200 5\n", "expected 4 fields"),
            ("host 200 5 /a\n", "bad client address"),
            ("10.14.0.100 OK 5 /a\n", "bad status"),
            ("10.14.0.100 200 -1 /a\n", "bad byte count"),
        ];
        for (text, reason) in refusals {
            let good = "10.14.0.1 404 0 /x\n";
            let error = parse_log(&format!("{good}{text}")).expect_err(text);
            assert_eq!((error.0, error.1), (2, reason), "{text:?}");
        }
        let error = read_log(Path::new("/nonexistent/http.log")).expect_err("missing");
        assert!(error
            .to_string()
            .starts_with("cannot read the server log /nonexistent/http.log: "));
    }
}

//! A static file server for update channels, bound to 127.0.0.1 only: guests reach it
//! through QEMU's user-mode network as 10.0.2.2. GET of a file below the root, nothing else;
//! one thread per connection, stopped when the server is dropped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The address guests see the host's loopback at (QEMU user networking).
pub const GUEST_HOST: &str = "10.0.2.2";

pub struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn serve(root: &Path) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let root = root.clone();
                std::thread::spawn(move || match answer(stream, &root) {
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
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The channel URL as the guest writes it.
    pub fn guest_url(&self, path: &str) -> String {
        format!("http://{GUEST_HOST}:{}/{path}", self.port)
    }

    #[cfg(test)]
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if let Some(thread) = self.thread.take() {
                if thread.join().is_err() {
                    eprintln!("http server: its thread panicked");
                }
            }
        }
    }
}

fn answer(stream: TcpStream, root: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The rest of the head is read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut stream = stream;
    match file_for(&request, root) {
        Some(path) if path.is_file() => {
            let mut file = File::open(&path)?;
            let length = file.metadata()?.len();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            )?;
            io::copy(&mut file, &mut stream)?;
        }
        _ => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    stream.flush()
}

/// `GET /a/b HTTP/1.1` → `root/a/b`, for plain names only.
fn file_for(request: &str, root: &Path) -> Option<PathBuf> {
    let mut words = request.split_whitespace();
    let (Some("GET"), Some(path)) = (words.next(), words.next()) else {
        return None;
    };
    let mut file = root.to_owned();
    for part in path.trim_start_matches('/').split('/') {
        if part.is_empty() || part.starts_with('.') {
            return None;
        }
        file.push(part);
    }
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reads");
        answer
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
}

//! Helpers shared by the integration tests: a real HTTP/1.1 server on
//! 127.0.0.1, temporary fleet directories, and a way to run the binary
//! that never touches the real home directory or cache.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod lab;
pub mod zfshost;

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;

/// What the test server answers for a path.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with these bytes and a correct Content-Length.
    Ok(Vec<u8>),
    /// 404.
    NotFound,
    /// 200 announcing `announced_len` bytes, sending only `bytes`, then
    /// closing the connection.
    Truncated { bytes: Vec<u8>, announced_len: u64 },
    /// 200 with the file's bytes, streamed from disk (for images too large
    /// to hold in memory); 404 if it cannot be opened.
    File(PathBuf),
}

type Routes = Arc<Mutex<HashMap<String, Behaviour>>>;

/// A tiny HTTP/1.1 server on 127.0.0.1 serving a mutable map of paths.
///
/// Each connection gets one response and is closed (`Connection: close`).
/// Unknown paths answer 404. Every request path is recorded, so a test can
/// assert that a command downloaded nothing.
pub struct TestServer {
    addr: SocketAddr,
    routes: Routes,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with no routes.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let routes: Routes = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, requests, stop) = (routes.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let (routes, requests) = (routes.clone(), requests.clone());
                    // One thread per connection: a client that stalls cannot
                    // block the next one.
                    std::thread::spawn(move || serve(stream, &routes, &requests));
                }
            })
        };
        TestServer {
            addr,
            routes,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Starts a server with the given routes.
    pub fn with<'a>(routes: impl IntoIterator<Item = (&'a str, Behaviour)>) -> Self {
        let server = Self::start();
        for (path, b) in routes {
            server.set(path, b);
        }
        server
    }

    /// Changes what `path` serves from the next request on.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        if let Behaviour::Truncated {
            bytes,
            announced_len,
        } = &behaviour
        {
            assert!(
                *announced_len > bytes.len() as u64,
                "Truncated must announce more than it sends"
            );
        }
        self.routes
            .lock()
            .unwrap()
            .insert(normalise(path), behaviour);
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, normalise(path))
    }

    /// How many requests asked for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        let path = normalise(path);
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == path)
            .count()
    }

    /// How many requests the server received so far.
    pub fn total_hits(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn normalise(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// Reads one request and answers it; I/O errors (a client that hung up
/// early, say) are ignored.
fn serve(stream: TcpStream, routes: &Routes, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection from Drop, or a client that left
    }
    // Headers up to the blank line; GET requests have no body.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    requests.lock().unwrap().push(path.clone());
    let behaviour = routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or(Behaviour::NotFound);
    let mut stream = stream;
    let head = |status: &str, len: u64| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match behaviour {
        Behaviour::Ok(bytes) => stream
            .write_all(head("200 OK", bytes.len() as u64).as_bytes())
            .and_then(|_| stream.write_all(&bytes)),
        Behaviour::NotFound => {
            let body = b"not found\n";
            stream
                .write_all(head("404 Not Found", body.len() as u64).as_bytes())
                .and_then(|_| stream.write_all(body))
        }
        Behaviour::Truncated {
            bytes,
            announced_len,
        } => stream
            .write_all(head("200 OK", announced_len).as_bytes())
            .and_then(|_| stream.write_all(&bytes)),
        Behaviour::File(path) => match std::fs::File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            Ok((f, len))
        }) {
            Ok((mut f, len)) => stream
                .write_all(head("200 OK", len).as_bytes())
                .and_then(|_| std::io::copy(&mut f, &mut stream).map(|_| ())),
            Err(_) => stream.write_all(head("404 Not Found", 0).as_bytes()),
        },
    };
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// An http URL on 127.0.0.1 where nothing listens.
pub fn free_port_refused() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/refused.qcow2")
}

/// `n` deterministic bytes that vary with `seed`; more than one read chunk
/// when `n` is large enough.
pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(seed as u32 * 7 + (i / 251) as u32) as u8
        })
        .collect()
}

/// The sha256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The repo's Dhall package, by absolute path.
pub fn package_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dhall")
        .join("package.dhall")
}

/// A fleet.dhall with one local Dir host, the given `(name, url)` images,
/// and one machine `vm-<name>` per image.
pub fn fleet_dhall(images: &[(&str, &str)]) -> String {
    let package = package_path();
    let package = package.to_str().expect("UTF-8 manifest dir");
    assert!(
        !package.contains(char::is_whitespace),
        "the Dhall import below needs a path without spaces: {package}"
    );
    let images_dhall: Vec<String> = images
        .iter()
        .map(|(name, url)| format!("V.Image::{{ name = {name:?}, url = {url:?} }}"))
        .collect();
    let machines: Vec<String> = images
        .iter()
        .map(|(name, _)| format!("V.Machine::{{ name = \"vm-{name}\", image = {name:?} }}"))
        .collect();
    let list = |items: Vec<String>, ty: &str| {
        if items.is_empty() {
            format!("[] : List V.{ty}.Type")
        } else {
            format!("[ {} ]", items.join("\n      , "))
        }
    };
    format!(
        "let V = {package}\n\n\
         in  V.Fleet::{{\n\
         \x20   , name = \"test\"\n\
         \x20   , hosts =\n\
         \x20     [ V.Host::{{ name = \"local\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/var/lib/virtfleet/test\" }} }} ]\n\
         \x20   , images =\n\
         \x20     {}\n\
         \x20   , machines =\n\
         \x20     {}\n\
         \x20   }}\n",
        list(images_dhall, "Image"),
        list(machines, "Machine"),
    )
}

/// A temporary fleet directory: `fleet.dhall`, `images.lock` beside it
/// (once written), and a private image cache under `cache/`.
pub struct FleetDir {
    pub dir: TempDir,
}

impl FleetDir {
    /// A fleet with the given `(name, url)` images.
    pub fn new(images: &[(&str, &str)]) -> Self {
        let fd = FleetDir {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        fd.set_images(images);
        fd
    }

    /// Rewrites fleet.dhall with other images.
    pub fn set_images(&self, images: &[(&str, &str)]) {
        std::fs::write(self.fleet(), fleet_dhall(images)).expect("write fleet.dhall");
    }

    pub fn fleet(&self) -> PathBuf {
        self.dir.path().join("fleet.dhall")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.path().join("images.lock")
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The lockfile's bytes, `None` when it does not exist.
    pub fn lock_bytes(&self) -> Option<Vec<u8>> {
        read_optional(&self.lock())
    }

    /// The parsed lockfile (empty when absent).
    pub fn lock_entries(&self) -> BTreeMap<String, LockFields> {
        self.lock_bytes()
            .map(|b| parse_lock(&String::from_utf8(b).expect("UTF-8 lock")))
            .unwrap_or_default()
    }

    /// Names of every file in the cache directory, sorted (hidden ones too).
    pub fn cache_files(&self) -> Vec<String> {
        dir_names(&self.cache())
    }

    /// The binary with `-f <fleet> --cache-dir <cache>` and then `args`.
    pub fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = virtfleet(&self.fleet(), &self.cache());
        cmd.args(args);
        cmd
    }
}

/// Sorted names of the entries of `dir` (empty when it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    out.sort();
    out
}

/// The bytes of `path`, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Every file under `dir` (recursively) with its bytes, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// One `image` block of images.lock, read independently of the crate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockFields {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub format: String,
    pub locked: String,
    /// qcow2 images: the disk size the header declares.
    pub vsize: Option<u64>,
}

/// Reads the `image NAME` blocks of lockfile text.
pub fn parse_lock(text: &str) -> BTreeMap<String, LockFields> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, LockFields)> = None;
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (key, value) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_owned(),
        );
        if !line.starts_with(char::is_whitespace) {
            if let Some((n, f)) = current.take() {
                out.insert(n, f);
            }
            if key == "image" {
                current = Some((value, LockFields::default()));
            }
            continue;
        }
        let (_, f) = current
            .as_mut()
            .unwrap_or_else(|| panic!("field outside an image block: {line:?}"));
        match key {
            "url" => f.url = value,
            "sha256" => f.sha256 = value,
            "size" => f.size = value.parse().expect("numeric size"),
            "format" => f.format = value,
            "locked" => f.locked = value,
            "vsize" => f.vsize = Some(value.parse().expect("numeric vsize")),
            other => panic!("unknown lock field {other:?}"),
        }
    }
    if let Some((n, f)) = current.take() {
        out.insert(n, f);
    }
    out
}

/// The virtfleet binary with `-f <fleet> --cache-dir <cache>`, no
/// VIRTFLEET_* or proxy variables from the environment, HOME and XDG_CACHE_HOME
/// pointed at `home/` beside the cache (the Dhall evaluator creates its own
/// cache directory there), and the cache's parent as cwd.
pub fn virtfleet(fleet: &Path, cache: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("virtfleet").expect("virtfleet binary");
    let scratch = cache.parent().unwrap_or(cache);
    let home = scratch.join("home");
    // A proxy from the environment must not intercept 127.0.0.1.
    for var in [
        "VIRTFLEET_FLEET",
        "VIRTFLEET_LOCK",
        "VIRTFLEET_CACHE_DIR",
        "VIRTFLEET_LOG",
        "VIRTFLEET_STATE_DIR",
        "XDG_STATE_HOME",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1")
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .arg("--cache-dir")
        .arg(cache)
        .arg("-f")
        .arg(fleet)
        .timeout(Duration::from_secs(30));
    if scratch.is_dir() {
        cmd.current_dir(scratch);
    }
    cmd
}

/// Stdout and stderr of a finished command, as text.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Runs `cmd` and captures everything (never panics on the exit code).
    pub fn of(cmd: &mut assert_cmd::Command) -> Self {
        let out = cmd.output().expect("run virtfleet");
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout then stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

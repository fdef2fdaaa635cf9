//! Guarded Dhall evaluation.
//!
//! serde_dhall is built without its HTTP client, so a remote import cannot
//! reach the network, but it *panics* instead of returning an error; other
//! evaluator bugs can panic too, and deeply nested fleets recurse deeply.
//! So evaluation runs on its own named thread with a large stack, panics on
//! that thread are silenced and turned into errors, and a time budget turns
//! a pathological file into an error instead of a hang.
//!
//! Before evaluating, the import graph is walked by virtfleet itself (see
//! `imports`): every file is read once, bounded in size, and checked for
//! what the evaluator reports badly (a byte-order mark, a missing import, a
//! cycle, an unset `env:` variable, a remote import), each named with its
//! file, line and import chain. Evaluator errors are then attributed to the
//! file they are in by following their positions through that graph.

use super::imports::{self, Mode, Site, Target};
use super::raw;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Once;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Name of the evaluation thread; the panic hook stays silent for it.
const EVAL_THREAD: &str = "virtfleet-dhall";

/// Environment variable that sets the evaluation budget (seconds, or a
/// duration like `90s` or `5m`).
pub const BUDGET_ENV: &str = "VIRTFLEET_EVAL_TIMEOUT";

/// Limits for one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// How long evaluation may take before it is abandoned with an error.
    pub budget: Duration,
    /// Largest fleet or imported file read, in bytes.
    pub max_file_bytes: u64,
}

/// Default budget: far above any fleet written as the README recommends
/// (well under a second), below "is it hung?".
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);
/// Default size limit per file: 16 MiB, 1000 times a large fleet.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            budget: DEFAULT_BUDGET,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl EvalOptions {
    /// The defaults, with the budget from [`BUDGET_ENV`] when it is set.
    pub fn from_env() -> Result<Self, String> {
        let mut o = EvalOptions::default();
        if let Ok(v) = std::env::var(BUDGET_ENV) {
            let v = v.trim();
            o.budget = match v.parse::<u64>() {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => humantime::parse_duration(v).map_err(|_| {
                    format!("{BUDGET_ENV}={v:?} is not a duration (seconds, or like 90s, 5m)")
                })?,
            };
            if o.budget.is_zero() {
                return Err(format!("{BUDGET_ENV} must be more than 0"));
            }
        }
        Ok(o)
    }
}

/// Why a fleet file could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}{}", path.display(), chain_text(chain))]
    Read {
        path: PathBuf,
        chain: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory, a device or a socket.
    #[error("{}: is {what}; a fleet is read from a regular file or a pipe{}", path.display(), chain_text(chain))]
    NotAFile {
        path: PathBuf,
        what: &'static str,
        chain: Vec<String>,
    },
    /// The file is larger than the limit.
    #[error("{}: is larger than {}; a fleet this large is a mistake (or not a fleet: is it a device?){}", path.display(), size_text(*limit), chain_text(chain))]
    TooLarge {
        path: PathBuf,
        limit: u64,
        chain: Vec<String>,
    },
    /// The file is not UTF-8 text.
    #[error("{}:{line}: is not UTF-8 text (Dhall files are UTF-8){}", path.display(), chain_text(chain))]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        chain: Vec<String>,
    },
    /// The file starts with a byte-order mark, which Dhall's grammar refuses.
    #[error("{}:1:1: the file starts with a UTF-8 byte-order mark (BOM), which Dhall does not allow; save it as UTF-8 without BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' {}`){}", path.display(), path.display(), chain_text(chain))]
    ByteOrderMark { path: PathBuf, chain: Vec<String> },
    /// An import that cannot be resolved (missing file, cycle, unset variable).
    #[error("{}:{line}:{col}: {message}{}", path.display(), chain_text(chain))]
    Import {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
        chain: Vec<String>,
    },
    /// Dhall rejected the file (syntax or type error).
    #[error("{}{}: Dhall error: {message}{}{snippet}", path.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), chain_text(chain))]
    Dhall {
        path: PathBuf,
        position: Option<(usize, usize)>,
        message: String,
        chain: Vec<String>,
        /// The offending source line with a caret, or empty.
        snippet: String,
    },
    /// The file imports something over the network.
    #[error("{}{}: remote imports are disabled: virtfleet only evaluates local files, so a fleet cannot change behind your back; download the imported file next to the fleet and import it by path{}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), chain_text(chain))]
    RemoteImport {
        path: PathBuf,
        line: Option<usize>,
        chain: Vec<String>,
    },
    /// Evaluation did not finish within the budget.
    #[error("{}: evaluation did not finish within {}; large literal files and deep nesting are slow to parse (see \"Large fleets\" in the README: build machines with a function or split the file), or raise {BUDGET_ENV}", path.display(), humantime::format_duration(*budget))]
    TimedOut { path: PathBuf, budget: Duration },
    /// The evaluator crashed.
    #[error("{}: the Dhall evaluator crashed: {message}", path.display())]
    Crashed { path: PathBuf, message: String },
}

/// ` (import chain: a:1:2 → b)` or nothing for the fleet file itself.
fn chain_text(chain: &[String]) -> String {
    if chain.is_empty() {
        String::new()
    } else {
        format!(" (import chain: {})", chain.join(" → "))
    }
}

/// `16 MiB` for whole MiB, else bytes.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// A successful evaluation.
#[derive(Debug)]
pub struct Evaluated {
    /// The fleet as Dhall produced it.
    pub fleet: raw::Fleet,
    /// The fleet file's text, as read (once).
    pub text: String,
    /// Wall time of the Dhall evaluation itself.
    pub elapsed: Duration,
    /// Every Dhall file evaluated, the fleet file first, as shown to the
    /// user: what a cache of the evaluation or a file watcher depends on.
    pub files: Vec<PathBuf>,
    /// The imported files where the user's values may be written, with
    /// their text: every imported file except those of an imported package
    /// directory (a `package.dhall` and its siblings), whose documentation
    /// quotes example names.
    pub imported: Vec<(PathBuf, String)>,
    /// What the result depends on (every file read, every file whose
    /// absence mattered, every environment variable imported), for a cache
    /// of the evaluation; None when that cannot be known (a fleet from a
    /// pipe, a `?` fallback whose first choice exists).
    pub inputs: Option<Vec<super::inputs::Dep>>,
}

/// Evaluates the fleet file at `path` into its raw form.
pub fn evaluate(path: &Path, opts: &EvalOptions) -> Result<Evaluated, EvalError> {
    let (text, regular) = read_input(path, opts.max_file_bytes, &[])?;
    let base = match (regular, path.parent()) {
        (true, Some(dir)) => dir.to_owned(),
        // A pipe (`-f <(...)`) has no directory of its own: its imports
        // resolve from the current directory, as the evaluator does.
        _ => PathBuf::new(),
    };
    let graph = Graph::walk(path, &base, text, opts)?;
    let inputs = match regular {
        true => graph.inputs.clone(),
        false => None,
    };
    install_quiet_panic_hook();
    let started = Instant::now();
    let source = if regular {
        Source::File(path.to_owned())
    } else {
        Source::Text(graph.nodes[0].text.clone())
    };
    let outcome = run_with_budget(source, opts.budget, path)?;
    let elapsed = started.elapsed();
    match outcome {
        Ok(fleet) => {
            let files = graph.nodes.iter().map(|n| n.shown.clone()).collect();
            let packages: Vec<PathBuf> = graph
                .nodes
                .iter()
                .skip(1)
                .filter(|n| n.shown.file_name().is_some_and(|f| f == "package.dhall"))
                .filter_map(|n| n.shown.parent().map(Path::to_owned))
                .collect();
            let mut nodes = graph.nodes.into_iter();
            let text = nodes.next().expect("root").text;
            let imported = nodes
                .filter(|n| {
                    !n.shown
                        .parent()
                        .is_some_and(|d| packages.iter().any(|p| p == d))
                })
                .map(|n| (n.shown, n.text))
                .collect();
            Ok(Evaluated {
                fleet,
                text,
                elapsed,
                files,
                imported,
                inputs,
            })
        }
        Err(message) => Err(graph.attribute(&message)),
    }
}

/// Reads `path` once, refusing directories, devices and sockets, what
/// exceeds `limit` (checked while reading, so an endless pipe stops there),
/// non-UTF-8 text and a byte-order mark. Returns the text and whether the
/// path is a regular file.
fn read_input(path: &Path, limit: u64, chain: &[String]) -> Result<(String, bool), EvalError> {
    let read_err = |source| EvalError::Read {
        path: path.to_owned(),
        chain: chain.to_vec(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let ty = file.metadata().map_err(read_err)?.file_type();
    let what = {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_dir() {
            Some("a directory")
        } else if ty.is_block_device() || ty.is_char_device() {
            Some("a device")
        } else if ty.is_socket() {
            Some("a socket")
        } else {
            None
        }
    };
    if let Some(what) = what {
        return Err(EvalError::NotAFile {
            path: path.to_owned(),
            what,
            chain: chain.to_vec(),
        });
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(EvalError::TooLarge {
            path: path.to_owned(),
            limit,
            chain: chain.to_vec(),
        });
    }
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Err(EvalError::ByteOrderMark {
            path: path.to_owned(),
            chain: chain.to_vec(),
        });
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok((text, ty.is_file())),
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            Err(EvalError::NotUtf8 {
                path: path.to_owned(),
                line: upto.iter().filter(|b| **b == b'\n').count() + 1,
                chain: chain.to_vec(),
            })
        }
    }
}

/// What the evaluator reads: the file by path (so its imports resolve from
/// its directory), or text already read from a pipe.
enum Source {
    File(PathBuf),
    Text(String),
}

/// Runs the evaluator on its own thread and waits at most `budget`. On
/// timeout the thread is left running detached: Rust cannot stop a thread,
/// and the process exits soon after the error is reported.
fn run_with_budget(
    source: Source,
    budget: Duration,
    path: &Path,
) -> Result<Result<raw::Fleet, String>, EvalError> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(EVAL_THREAD.into())
        // serde_dhall recurses per nesting level and list element; 1000-machine
        // fleets overflow the default 2 MiB thread stack.
        .stack_size(256 << 20)
        .spawn(move || {
            let result = match &source {
                Source::File(p) => serde_dhall::from_file(p).parse::<raw::Fleet>(),
                Source::Text(t) => serde_dhall::from_str(t).parse::<raw::Fleet>(),
            };
            let _ = tx.send(result.map_err(|e| e.to_string()));
        })
        .map_err(|e| EvalError::Crashed {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    match rx.recv_timeout(budget) {
        Ok(result) => {
            let _ = handle.join();
            Ok(result)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(EvalError::TimedOut {
            path: path.to_owned(),
            budget,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let payload = handle.join().err();
            let message = payload
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "unknown panic".into());
            // The walk refuses remote imports first; this catches any it missed.
            if message.contains("emote import") {
                return Err(EvalError::RemoteImport {
                    path: path.to_owned(),
                    line: None,
                    chain: Vec::new(),
                });
            }
            Err(EvalError::Crashed {
                path: path.to_owned(),
                message,
            })
        }
    }
}

/// One file of the import graph.
struct Node {
    /// The path as shown to the user (relative paths stay relative).
    shown: PathBuf,
    text: String,
    /// Each import of the file, with the node it leads to when it is code.
    sites: Vec<(Site, Option<usize>)>,
}

/// Every Dhall file the fleet evaluates, root first.
struct Graph {
    nodes: Vec<Node>,
    /// What the evaluation depends on (see [`Evaluated::inputs`]).
    inputs: Option<Vec<super::inputs::Dep>>,
}

/// State of the depth-first walk.
struct Walk<'a> {
    opts: &'a EvalOptions,
    nodes: Vec<Node>,
    by_real: BTreeMap<PathBuf, usize>,
    /// Real paths of the files being walked, root first (to find cycles),
    /// and the `file:line:col` of the import that led to each.
    stack: Vec<PathBuf>,
    chain: Vec<String>,
    /// What the evaluation depends on; None once that cannot be known.
    deps: Option<Vec<super::inputs::Dep>>,
}

impl Graph {
    /// Reads and checks every file reachable from the fleet file.
    fn walk(
        root: &Path,
        base: &Path,
        text: String,
        opts: &EvalOptions,
    ) -> Result<Graph, EvalError> {
        let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        let mut w = Walk {
            opts,
            nodes: Vec::new(),
            by_real: BTreeMap::new(),
            stack: Vec::new(),
            chain: Vec::new(),
            deps: Some(Vec::new()),
        };
        w.depend(super::inputs::Dep::file(root));
        w.visit(root.to_owned(), real, base.to_owned(), text)?;
        Ok(Graph {
            nodes: w.nodes,
            inputs: w.deps,
        })
    }
}

impl Walk<'_> {
    /// Notes one input of the evaluation.
    fn depend(&mut self, dep: super::inputs::Dep) {
        if let Some(deps) = &mut self.deps {
            deps.push(dep);
        }
    }

    /// Adds the file `shown` (read as `text`) and walks its imports.
    fn visit(
        &mut self,
        shown: PathBuf,
        real: PathBuf,
        base: PathBuf,
        text: String,
    ) -> Result<usize, EvalError> {
        let idx = self.nodes.len();
        let sites = imports::scan(&text);
        self.nodes.push(Node {
            shown: shown.clone(),
            text,
            sites: Vec::new(),
        });
        self.by_real.insert(real.clone(), idx);
        self.stack.push(real);
        let mut linked = Vec::with_capacity(sites.len());
        for site in sites {
            let here = format!("{}:{}:{}", shown.display(), site.line, site.col);
            let target = self.import(&shown, &base, &site, &here)?;
            linked.push((site, target));
        }
        self.stack.pop();
        self.nodes[idx].sites = linked;
        Ok(idx)
    }

    /// Checks one import; returns the node of the Dhall file it reads.
    fn import(
        &mut self,
        file: &Path,
        base: &Path,
        site: &Site,
        here: &str,
    ) -> Result<Option<usize>, EvalError> {
        let fail = |message: String, chain: &[String]| EvalError::Import {
            path: file.to_owned(),
            line: site.line,
            col: site.col,
            message,
            chain: chain.to_vec(),
        };
        match &site.target {
            Target::Remote(_) => Err(EvalError::RemoteImport {
                path: file.to_owned(),
                line: Some(site.line),
                chain: self.chain.clone(),
            }),
            Target::Env(name) => {
                if site.mode != Mode::Location && !site.guarded && std::env::var_os(name).is_none()
                {
                    let msg = format!(
                        "imports env:{name}, but the environment variable {name} is not set"
                    );
                    return Err(fail(msg, &self.chain));
                }
                if site.mode != Mode::Location {
                    self.depend(super::inputs::Dep::Env(name.clone()));
                }
                Ok(None)
            }
            Target::Path(written) => self.import_path(written, base, site, here, &fail),
        }
    }

    /// Checks a path import; walks into it when it is Dhall code.
    fn import_path(
        &mut self,
        written: &str,
        base: &Path,
        site: &Site,
        here: &str,
        fail: &dyn Fn(String, &[String]) -> EvalError,
    ) -> Result<Option<usize>, EvalError> {
        if site.mode == Mode::Location {
            return Ok(None);
        }
        let (shown, on_disk) = resolve(base, written);
        let meta = match std::fs::metadata(&on_disk) {
            Ok(m) => m,
            Err(_) if site.guarded => {
                // Its absence chose the fallback: creating it changes the result.
                self.depend(super::inputs::Dep::file(&on_disk));
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let looked = std::path::absolute(&on_disk).unwrap_or(on_disk);
                let msg = format!(
                    "imports {written}, which does not exist (looked for {})",
                    looked.display()
                );
                return Err(fail(msg, &self.chain));
            }
            Err(e) => {
                return Err(fail(
                    format!("imports {written}, which cannot be read: {e}"),
                    &self.chain,
                ));
            }
        };
        if meta.is_dir() {
            return Err(fail(
                format!("imports {written}, which is a directory"),
                &self.chain,
            ));
        }
        if site.mode == Mode::Raw {
            self.depend(super::inputs::Dep::file(&on_disk));
            return Ok(None);
        }
        if site.guarded {
            // Existing code behind `?` is not walked, so its own imports
            // are unknown: such a fleet is never cached.
            self.deps = None;
            return Ok(None);
        }
        let real = std::fs::canonicalize(&on_disk).unwrap_or(on_disk.clone());
        if let Some(pos) = self.stack.iter().position(|p| *p == real) {
            let looped = &self.nodes[self.by_real[&self.stack[pos]]].shown;
            let msg = format!(
                "imports {written}, which is {} again: an import cycle (Dhall files cannot import themselves, directly or through others)",
                looped.display()
            );
            let mut chain = self.chain.clone();
            chain.push(here.to_owned());
            return Err(fail(msg, &chain));
        }
        if let Some(&idx) = self.by_real.get(&real) {
            return Ok(Some(idx));
        }
        self.chain.push(here.to_owned());
        let (text, _) = read_input(&on_disk, self.opts.max_file_bytes, &self.chain)
            .map_err(|e| rename(e, &shown))?;
        self.depend(super::inputs::Dep::file(&on_disk));
        // Its own imports resolve from its directory, as the evaluator does.
        let dir = shown.parent().map(Path::to_owned).unwrap_or_default();
        let idx = self.visit(shown, real, dir, text)?;
        self.chain.pop();
        Ok(Some(idx))
    }
}

/// Where `written` (an import path) points from `base`: as shown to the
/// user (lexically normalised, relative stays relative) and on disk.
fn resolve(base: &Path, written: &str) -> (PathBuf, PathBuf) {
    let joined = if let Some(rest) = written.strip_prefix("~/") {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest)
    } else if written.starts_with('/') {
        PathBuf::from(written)
    } else {
        base.join(written)
    };
    let shown = normalise(&joined);
    let on_disk = if shown.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        shown.clone()
    };
    (shown, on_disk)
}

/// Removes `.` components and folds `dir/..` pairs, keeping leading `..`.
fn normalise(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

/// Errors from reading an imported file name it as the user sees it.
fn rename(e: EvalError, shown: &Path) -> EvalError {
    match e {
        EvalError::Read { chain, source, .. } => EvalError::Read {
            path: shown.to_owned(),
            chain,
            source,
        },
        EvalError::NotAFile { what, chain, .. } => EvalError::NotAFile {
            path: shown.to_owned(),
            what,
            chain,
        },
        EvalError::TooLarge { limit, chain, .. } => EvalError::TooLarge {
            path: shown.to_owned(),
            limit,
            chain,
        },
        EvalError::NotUtf8 { line, chain, .. } => EvalError::NotUtf8 {
            path: shown.to_owned(),
            line,
            chain,
        },
        EvalError::ByteOrderMark { chain, .. } => EvalError::ByteOrderMark {
            path: shown.to_owned(),
            chain,
        },
        other => other,
    }
}

impl Graph {
    /// Turns an evaluator message into an error placed in the file it is
    /// about. The message lists positions (` --> L:C`), outermost first;
    /// each one that sits on an import leads into the imported file.
    fn attribute(&self, message: &str) -> EvalError {
        let frames = positions(message);
        let mut node = 0;
        let mut chain = Vec::new();
        let mut at = frames.first().copied();
        for pair in frames.windows(2) {
            let (outer, inner) = (pair[0], pair[1]);
            let next = self.nodes[node]
                .sites
                .iter()
                .find(|(s, _)| (s.line, s.col) == outer)
                .and_then(|(_, n)| *n);
            if let Some(next) = next {
                let n = &self.nodes[node];
                chain.push(format!("{}:{}:{}", n.shown.display(), outer.0, outer.1));
                node = next;
            }
            at = Some(inner);
        }
        let file = &self.nodes[node];
        if !chain.is_empty() {
            chain.push(file.shown.display().to_string());
        }
        EvalError::Dhall {
            path: file.shown.clone(),
            position: at,
            message: tidy(message, &detail(message)),
            chain,
            snippet: at
                .map(|(line, col)| snippet(&file.text, line, col))
                .unwrap_or_default(),
        }
    }
}

/// Every ` --> L:C` position in an evaluator message, in order.
fn positions(message: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("--> ") {
        rest = &rest[i + 4..];
        if let Some(p) = position_at(rest) {
            out.push(p);
        }
    }
    out
}

/// `L:C` (or `<current file>:L:C`) at the start of `s`.
fn position_at(s: &str) -> Option<(usize, usize)> {
    let s = s.strip_prefix("<current file>:").unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(s.len());
    let (l, c) = s[..end].split_once(':')?;
    Some((l.parse().ok()?, c.parse().ok()?))
}

/// The evaluator's own words for the innermost problem: a `= note` line
/// (syntax errors), else the label after the last `^^^` marker, else the
/// first line.
fn detail(message: &str) -> String {
    if let Some(note) = message
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("= "))
    {
        return note.trim().to_owned();
    }
    let label = message
        .lines()
        .rev()
        .filter(|l| l.contains('^'))
        .find_map(|l| {
            let after = &l[l.rfind('^')? + 1..];
            let after = after
                .split("-->")
                .next()
                .unwrap_or("")
                .trim_matches(|c| c == '-' || c == ' ');
            (!after.is_empty() && after != "Type error: error").then(|| after.to_owned())
        });
    label.unwrap_or_else(|| message.lines().next().unwrap_or("").trim().to_owned())
}

/// The offending line with a caret under the column.
fn snippet(text: &str, line: usize, col: usize) -> String {
    let Some(src) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let src: String = src.chars().take(160).collect();
    let pad = " ".repeat(col.saturating_sub(1).min(160));
    format!("\n    {line:>4} | {src}\n         | {pad}^")
}

fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(EVAL_THREAD) {
                previous(info);
            }
        }));
    });
}

/// One line for the user: a schema mismatch summarised to the fields that
/// differ, else the evaluator's `detail`, in words when it is one of the
/// evaluator's error codes (the code stays, for searching).
fn tidy(message: &str, detail: &str) -> String {
    if let Some(summary) = summarize_mismatch(message) {
        return summary;
    }
    let detail = detail.replace("error: error", "error");
    match explain(&detail) {
        Some(words) => format!("{words} ({detail})"),
        None => detail,
    }
}

/// Plain words for the type checker's most common error codes.
fn explain(code: &str) -> Option<&'static str> {
    Some(match code {
        "BinOpTypeMismatch" => "the operands do not have the types this operator needs",
        "InvalidListElement" => "this list element's type differs from the list's",
        "InvalidListType" => "a list's element type must be a type",
        "IfBranchMismatch" => "the `then` and `else` branches have different types",
        "InvalidPredicate" => "an `if` condition must be a Bool",
        "MissingRecordField" => "the record has no field of this name (misspelt?)",
        "MissingUnionField" => "the union has no alternative of this name (misspelt?)",
        "DuplicateFieldName" => "a field is given twice",
        "NotARecord" => "only a record has fields",
        "MustCombineRecord" => "`//` and `/\\` combine records only",
        "InvalidTextInterpolation" => "only Text can be interpolated with ${...}",
        "InvalidOptionalType" => "`Some` needs a value whose type is a type",
        "MergeVariantMissingHandler" => "`merge` has no handler for an alternative",
        "MergeHandlerMissingVariant" => "`merge` has a handler for no alternative",
        _ => return None,
    })
}

/// serde_dhall reports a schema mismatch as `annot mismatch: A != B` with
/// both whole record types; a user needs only the fields that differ.
fn summarize_mismatch(message: &str) -> Option<String> {
    let start = message.find("annot mismatch: ")? + "annot mismatch: ".len();
    let line = message[start..].lines().next()?;
    let parts = split_top(line, " != ");
    let [actual, wanted] = parts.as_slice() else {
        return None;
    };
    let (actual, wanted) = (record_fields(actual)?, record_fields(wanted)?);
    let mut diffs = Vec::new();
    for (field, want) in &wanted {
        match actual.iter().find(|(f, _)| f == field) {
            None => diffs.push(format!("field `{field}` is missing (it must be {want})")),
            Some((_, got)) if got != want => diffs.push(format!(
                "field `{field}` is {got}, but the schema wants {want}"
            )),
            Some(_) => {}
        }
    }
    for (field, _) in &actual {
        if !wanted.iter().any(|(f, _)| f == field) {
            diffs.push(format!(
                "field `{field}` is not part of the schema (misspelt?)"
            ));
        }
    }
    if diffs.is_empty() {
        return None;
    }
    Some(format!(
        "type error: the value does not match the virtfleet schema: {}",
        diffs.join("; ")
    ))
}

/// Splits `s` on `sep` where no bracket is open.
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let (mut depth, mut last) = (0i32, 0usize);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'<' | b'(' | b'[' => depth += 1,
            b'}' | b'>' | b')' | b']' => depth -= 1,
            _ if depth == 0 && s[i..].starts_with(sep) => {
                out.push(&s[last..i]);
                i += sep.len();
                last = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[last..]);
    out
}

/// `{ a : T, b : U }` → [(a, T), (b, U)]; None if `s` is not a record type.
fn record_fields(s: &str) -> Option<Vec<(String, String)>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    split_top(inner, ",")
        .into_iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let (k, v) = f.split_once(" : ")?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_positions_and_details() {
        let msg = "Type error: error\n --> <current file>:2:37\n  |\n2 | x\n  |  ^^^^ Type error: error\n --> <current file>:1:1\n  |\n1 | ./nope.dhall\n  | ^^^^ No such file\n";
        assert_eq!(positions(msg), [(2, 37), (1, 1)]);
        assert_eq!(detail(msg), "No such file");
        let syntax = " --> 3:13\n  |\n3 |    , name = = 3 } ]\n  |             ^---\n  |\n  = expected expression\n";
        assert_eq!(positions(syntax), [(3, 13)]);
        assert_eq!(detail(syntax), "expected expression");
        assert_eq!(positions("no position"), []);
        assert_eq!(
            tidy(msg, "MissingUnionField"),
            "the union has no alternative of this name (misspelt?) (MissingUnionField)"
        );
    }

    #[test]
    fn summarises_schema_mismatches_to_the_differing_fields() {
        let msg = "Type error: annot mismatch: { cpus : Text, name : Text, extra : Bool, s : { a : Natural, b : Bool } } != { cpus : Natural, name : Text, image : Text, s : { a : Natural, b : Bool } }\n --> <current file>:3:16";
        assert_eq!(
            summarize_mismatch(msg).unwrap(),
            "type error: the value does not match the virtfleet schema: field `cpus` is Text, but the schema wants Natural; field `image` is missing (it must be Text); field `extra` is not part of the schema (misspelt?)"
        );
    }
}

//! Fault injection for crash testing: named points where a test can make
//! the process die as abruptly as a `kill -9` or a power cut would.
//!
//! Every step boundary of the executor (`step`) and a few places inside
//! steps, where a crash would leave a half-done object on a host, call
//! [`point`]. Nothing happens unless the environment asks:
//!
//! - `VIRTFLEET_FAULT=<name>` dies at the first hit of point `<name>`,
//!   `VIRTFLEET_FAULT=<name>#<n>` at its n-th hit (counted per process);
//! - `VIRTFLEET_FAULT_TRACE=<file>` appends the name of every point reached
//!   to `<file>`, one per line, so a harness can list the points a run
//!   passes through and then stop a run at each of them in turn.
//!
//! Dying is `std::process::abort`: no destructor, no lease release, no
//! temp-file cleanup runs, exactly as after SIGKILL. The only trace is one
//! line on stderr naming the point. `tests/faults.rs` is the harness; the
//! README lists the points. Outside tests, neither variable is ever set.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that names the point to die at.
pub const FAULT_ENV: &str = "VIRTFLEET_FAULT";
/// The environment variable naming the file every reached point is logged to.
pub const TRACE_ENV: &str = "VIRTFLEET_FAULT_TRACE";

/// 0: not read yet, 1: off (the common case, one atomic load), 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Hits per point name, when on.
static HITS: Mutex<BTreeMap<&'static str, u32>> = Mutex::new(BTreeMap::new());

/// What the environment asks for.
struct Config {
    die_at: Option<(String, u32)>,
    trace: Option<String>,
}

fn config() -> Config {
    let die_at = std::env::var(FAULT_ENV).ok().and_then(|v| parse(&v));
    let trace = std::env::var(TRACE_ENV).ok().filter(|t| !t.is_empty());
    Config { die_at, trace }
}

/// `name` or `name#n` (n ≥ 1) → (name, n).
fn parse(v: &str) -> Option<(String, u32)> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    match v.split_once('#') {
        Some((name, n)) => Some((name.to_owned(), n.parse().ok().filter(|n| *n >= 1)?)),
        None => Some((v.to_owned(), 1)),
    }
}

/// A named point: the process dies here if the environment asks for this
/// point (and this hit of it); otherwise nothing happens.
pub fn point(name: &'static str) {
    match STATE.load(Ordering::Relaxed) {
        1 => return,
        0 => {
            let c = config();
            let on = c.die_at.is_some() || c.trace.is_some();
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            if !on {
                return;
            }
        }
        _ => {}
    }
    let c = config();
    let hit = {
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        let n = hits.entry(name).or_insert(0);
        *n += 1;
        *n
    };
    if let Some(path) = &c.trace {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{name}");
        }
    }
    if c.die_at
        .as_ref()
        .is_some_and(|(n, k)| n == name && *k == hit)
    {
        eprintln!("virtfleet: fault injected at {name}#{hit}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_point_and_its_hit() {
        assert_eq!(super::parse("step"), Some(("step".into(), 1)));
        assert_eq!(super::parse("step#12"), Some(("step".into(), 12)));
        assert_eq!(super::parse("step#0"), None);
        assert_eq!(super::parse("step#x"), None);
        assert_eq!(super::parse(""), None);
    }
}

//! Terminal presentation: progress display, tables, and error printing.
//!
//! Everything a person sees goes through here. Colour and progress bars
//! appear only on a terminal (anstream strips styling otherwise and honours
//! NO_COLOR); CI logs get plain, greppable lines.

use crate::progress::Progress;
pub use crate::text::{ERROR, HINT, OK, WARN, human_bytes};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

/// Shows progress on stderr: a bar on a terminal, plain lines otherwise.
pub struct StderrProgress {
    terminal: bool,
    state: Mutex<Option<Task>>,
}

struct Task {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    done: u64,
}

impl StderrProgress {
    /// Chooses the display from whether stderr is a terminal.
    pub fn new() -> Self {
        StderrProgress {
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(None),
        }
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for StderrProgress {
    fn start(&self, label: &str, total: Option<u64>) {
        let bar = self.terminal.then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let style = ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.to_owned());
            bar
        });
        if bar.is_none() {
            let size = total
                .map(|t| format!(" ({})", human_bytes(t)))
                .unwrap_or_default();
            eprintln!("{label}{size}: started");
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(Task {
            label: label.to_owned(),
            bar,
            started: Instant::now(),
            done: 0,
        });
    }

    fn advance(&self, bytes: u64) {
        if let Some(task) = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            task.done += bytes;
            if let Some(bar) = &task.bar {
                bar.inc(bytes);
            }
        }
    }

    fn finish(&self, outcome: &str) {
        if let Some(task) = self.state.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(bar) = task.bar {
                bar.finish_and_clear();
            }
            eprintln!(
                "{}: {outcome}, {} in {:.1}s",
                task.label,
                human_bytes(task.done),
                task.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints an error and its causes to stderr, with hints for known failures.
pub fn print_error(err: &anyhow::Error) {
    anstream::eprintln!("{ERROR}error{ERROR:#}: {err}");
    for cause in err.chain().skip(1) {
        anstream::eprintln!("  caused by: {cause}");
    }
    for hint in hints(err) {
        anstream::eprintln!("{HINT}hint{HINT:#}: {hint}");
    }
}

/// A download that could not reach its server changed nothing locally.
fn fetch_hint(e: &crate::lock::fetch::FetchError) -> Option<&'static str> {
    use crate::lock::fetch::FetchError;
    matches!(e, FetchError::Connect { .. }).then_some(
        "is the server up and reachable from this machine? The lockfile and cache were left as they were",
    )
}

/// A fleet file that does not exist: probably no fleet was made yet.
fn eval_hint(e: &crate::fleet::EvalError) -> Option<&'static str> {
    match e {
        crate::fleet::EvalError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Some("run `virtfleet init` to scaffold a fleet, or pass `-f PATH` to use another file")
        }
        _ => None,
    }
}

/// The hints of every typed error in the chain: each error type knows
/// what can be done about it, where it is made; nothing here guesses from
/// message text.
fn hints(err: &anyhow::Error) -> Vec<&'static str> {
    let mut out = Vec::new();
    for cause in err.chain() {
        let hint = if let Some(e) = cause.downcast_ref::<crate::host::storage::StorageError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<crate::host::transport::ExecError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<crate::host::libvirt::LibvirtError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<crate::host::HostError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<crate::lock::fetch::FetchError>() {
            fetch_hint(e)
        } else if let Some(e) = cause.downcast_ref::<crate::fleet::EvalError>() {
            eval_hint(e)
        } else if let Some(crate::fleet::LoadError::Eval(e)) =
            cause.downcast_ref::<crate::fleet::LoadError>()
        {
            // LoadError is transparent over EvalError: the chain shows only it.
            eval_hint(e)
        } else {
            None
        };
        if let Some(h) = hint.filter(|h| !out.contains(h)) {
            out.push(h);
        }
    }
    out
}

/// Shows apply progress: one bar per host on a terminal, plain lines otherwise.
pub struct ApplyProgress {
    multi: Option<indicatif::MultiProgress>,
    bars: Mutex<std::collections::BTreeMap<String, ProgressBar>>,
}

impl ApplyProgress {
    /// Chooses the display from whether stderr is a terminal.
    pub fn new() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(indicatif::MultiProgress::new);
        ApplyProgress {
            multi,
            bars: Mutex::new(Default::default()),
        }
    }
}

impl Default for ApplyProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::apply::Events for ApplyProgress {
    fn event(&self, e: crate::apply::Event) {
        use crate::apply::Event;
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        match (&self.multi, e) {
            (Some(multi), Event::HostStarted { host, steps }) => {
                let bar = multi.add(ProgressBar::new(steps as u64));
                let style =
                    ProgressStyle::with_template("{prefix:12} [{bar:20}] {pos}/{len} {msg}")
                        .map(|s| s.progress_chars("=> "))
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(host.clone());
                bars.insert(host, bar);
            }
            (
                Some(_),
                Event::StepStarted {
                    host,
                    what,
                    address,
                },
            ) => {
                if let Some(b) = bars.get(&host) {
                    b.set_message(format!("{address}: {what}"));
                }
            }
            (
                Some(multi),
                Event::StepFinished {
                    host,
                    address,
                    what,
                    error,
                    seconds,
                },
            ) => {
                if let Some(b) = bars.get(&host) {
                    b.inc(1);
                    let _ = multi.println(step_line(&address, &what, error.as_deref(), seconds));
                }
            }
            (
                Some(_),
                Event::HostFinished {
                    host,
                    done,
                    failed,
                    skipped,
                },
            ) => {
                if let Some(b) = bars.get(&host) {
                    b.finish_with_message(format!(
                        "{done} done, {failed} failed, {skipped} skipped"
                    ));
                }
            }
            (None, Event::HostStarted { host, steps }) => {
                eprintln!("[{host}] applying {steps} change(s)")
            }
            (None, Event::StepStarted { .. }) => {}
            (
                None,
                Event::StepFinished {
                    host,
                    address,
                    what,
                    error,
                    seconds,
                },
            ) => eprintln!(
                "[{host}] {}",
                step_line(&address, &what, error.as_deref(), seconds)
            ),
            (
                None,
                Event::HostFinished {
                    host,
                    done,
                    failed,
                    skipped,
                },
            ) => eprintln!("[{host}] finished: {done} done, {failed} failed, {skipped} skipped"),
        }
    }
}

/// One finished step, as both displays print it.
fn step_line(address: &str, what: &str, error: Option<&str>, seconds: f64) -> String {
    match error {
        None => format!("{address}: {what} ... done ({seconds:.1}s)"),
        Some(e) => format!("{address}: {what} ... FAILED: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::hints;
    use crate::host::libvirt::LibvirtError;
    use crate::host::transport::ExecError;

    fn libvirt(connecting: bool) -> LibvirtError {
        LibvirtError {
            uri: "qemu+ssh://root@hv1/system".into(),
            action: "cannot connect".into(),
            message: "Connection refused".into(),
            connecting,
        }
    }

    #[test]
    fn hints_come_from_the_error_types_not_their_text() {
        // A failed libvirt connection: the libvirtd hint, never the
        // download hint, although the text says "Connection refused".
        let err = anyhow::Error::new(libvirt(true)).context("observing hv1");
        let got = hints(&err);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("libvirtd"), "{got:?}");
        // A failed call on a working connection has nothing to add.
        assert!(hints(&anyhow::Error::new(libvirt(false))).is_empty());
        // Plain text that merely mentions a refused connection: no hint.
        assert!(hints(&anyhow::anyhow!("cannot connect: Connection refused")).is_empty());
        let spawn = ExecError::Spawn {
            argv: "zfs list".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let got = hints(&anyhow::Error::new(spawn));
        assert!(got[0].contains("installed"), "{got:?}");
    }
}

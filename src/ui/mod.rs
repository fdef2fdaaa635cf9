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
        print_hint(&hint);
    }
}

/// Prints one `hint:` line to stderr.
pub fn print_hint(hint: &str) {
    anstream::eprintln!("{HINT}hint{HINT:#}: {hint}");
}

/// Hints for the typed errors anywhere in `err`'s chain. Errors of this
/// crate's executor and command planning carry their own (`hint()`); for
/// the others the remedy is chosen here by their type, never by their text.
fn hints(err: &anyhow::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cause in err.chain() {
        let hint = if let Some(e) = cause.downcast_ref::<crate::plan::commands::CommandRefusal>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::apply::StepError>() {
            e.hint()
        } else if let Some(crate::fleet::LoadError::Eval(e)) =
            cause.downcast_ref::<crate::fleet::LoadError>()
        {
            fleet_hint(e).map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::fleet::EvalError>() {
            fleet_hint(e).map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::host::libvirt::LibvirtError>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::host::storage::StorageError>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::host::transport::ExecError>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::host::HostError>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::apply::runlock::RunLockError>() {
            e.hint().map(str::to_owned)
        } else if let Some(e) = cause.downcast_ref::<crate::lock::fetch::FetchError>() {
            fetch_hint(e).map(str::to_owned)
        } else {
            None
        };
        if let Some(h) = hint
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    out
}

/// The remedy for a fleet file that cannot be read because it is missing.
pub fn fleet_hint(e: &crate::fleet::EvalError) -> Option<&'static str> {
    match e {
        crate::fleet::EvalError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Some("run `virtfleet init` to scaffold a fleet, or pass `-f PATH` to use another file")
        }
        _ => None,
    }
}

/// The remedy for a download that could not reach its server.
pub fn fetch_hint(e: &crate::lock::fetch::FetchError) -> Option<&'static str> {
    match e {
        crate::lock::fetch::FetchError::Connect { .. } => Some(
            "is the server up and reachable from this machine? The lockfile and cache were left as they were",
        ),
        _ => None,
    }
}

/// Shows apply progress: one bar per host on a terminal, plain lines
/// otherwise; byte progress of long steps as a second bar under the host's,
/// or as at most one line per tenth of the work.
pub struct ApplyProgress {
    multi: Option<indicatif::MultiProgress>,
    state: Mutex<Hosts>,
}

/// Per host: the step bar and the byte bar (terminal), or the last tenth
/// printed of the running byte task (plain).
#[derive(Default)]
struct Hosts {
    bars: std::collections::BTreeMap<String, ProgressBar>,
    bytes: std::collections::BTreeMap<String, ProgressBar>,
    printed: std::collections::BTreeMap<String, (String, u64)>,
    /// Steps in flight per host (`address: what`), in start order: the
    /// host bar's message names all of them.
    inflight: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

/// Bytes between two plain progress lines when the total is unknown.
const PLAIN_STEP_UNKNOWN: u64 = 256 << 20;

impl ApplyProgress {
    /// Chooses the display from whether stderr is a terminal.
    pub fn new() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(indicatif::MultiProgress::new);
        ApplyProgress {
            multi,
            state: Mutex::new(Hosts::default()),
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
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &self.multi {
            Some(multi) => terminal_event(multi, &mut state, e),
            None => plain_event(&mut state, e),
        }
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Bars on a terminal: a step bar per host, a byte bar below it while a
/// step moves bytes.
fn terminal_event(multi: &indicatif::MultiProgress, st: &mut Hosts, e: crate::apply::Event) {
    use crate::apply::Event;
    match e {
        Event::HostStarted { host, steps } => {
            let bar = multi.add(ProgressBar::new(steps as u64));
            bar.set_style(bar_style("{prefix:12} [{bar:20}] {pos}/{len} {msg}"));
            bar.set_prefix(host.clone());
            st.bars.insert(host, bar);
        }
        Event::StepStarted {
            host,
            what,
            address,
        } => {
            let running = st.inflight.entry(host.clone()).or_default();
            running.push((address, what));
            if let Some(b) = st.bars.get(&host) {
                b.set_message(inflight_message(running));
            }
        }
        Event::StepProgress {
            host,
            label,
            done,
            total,
            ..
        } => {
            let Some(step_bar) = st.bars.get(&host) else {
                return;
            };
            let bar = st.bytes.entry(host).or_insert_with(|| {
                let b = multi.insert_after(step_bar, ProgressBar::new(0));
                b.set_style(bar_style(
                    "  {msg:22} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ));
                b
            });
            if bar.message() != label {
                bar.reset();
                bar.set_message(label);
            }
            bar.set_length(total.unwrap_or(done));
            bar.set_position(done);
        }
        finished @ Event::StepFinished { .. } => {
            let Some((host, line)) = step_line(&finished) else {
                return;
            };
            if let (Some(running), Event::StepFinished { address, .. }) =
                (st.inflight.get_mut(host), &finished)
            {
                running.retain(|(a, _)| a != address);
                if let Some(b) = st.bars.get(host) {
                    b.set_message(inflight_message(running));
                }
            }
            if let Some(b) = st.bytes.remove(host) {
                b.finish_and_clear();
                multi.remove(&b);
            }
            if let Some(b) = st.bars.get(host) {
                b.inc(1);
                let _ = multi.println(line);
            }
        }
        Event::HostFinished {
            host,
            done,
            failed,
            skipped,
        } => {
            if let Some(b) = st.bars.get(&host) {
                b.finish_with_message(format!("{done} done, {failed} failed, {skipped} skipped"));
            }
        }
    }
}

/// The host bar's message: every step in flight.
fn inflight_message(running: &[(String, String)]) -> String {
    match running {
        [] => String::new(),
        [(a, w)] => format!("{a}: {w}"),
        more => format!(
            "{} in flight: {}",
            more.len(),
            more.iter()
                .map(|(a, w)| format!("{a}: {w}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Plain lines: one per started and finished step; byte progress at most once per tenth
/// (per 256 MiB when the total is unknown), so CI logs stay short.
fn plain_event(st: &mut Hosts, e: crate::apply::Event) {
    if let Some(line) = plain_line(&mut st.printed, e) {
        eprintln!("{line}");
    }
}

/// The plain line for an event, if it gets one; `printed` remembers, per
/// host, the running byte task and the last tenth printed of it.
fn plain_line(
    printed: &mut std::collections::BTreeMap<String, (String, u64)>,
    e: crate::apply::Event,
) -> Option<String> {
    use crate::apply::Event;
    match e {
        Event::HostStarted { host, steps } => Some(format!("[{host}] applying {steps} change(s)")),
        // Steps of one host overlap: each says when it starts, so the log
        // shows what is in flight.
        Event::StepStarted {
            host,
            address,
            what,
        } => Some(format!("[{host}] {address}: {what} (started)")),
        Event::StepProgress {
            host,
            address,
            label,
            done,
            total,
        } => {
            let mark = match total {
                Some(t) if t > 0 => done.min(t) * 10 / t,
                _ => done / PLAIN_STEP_UNKNOWN,
            };
            let last = printed
                .get(&host)
                .filter(|(l, _)| *l == label)
                .map(|(_, m)| *m);
            if mark <= last.unwrap_or(0) {
                if last.is_none() {
                    printed.insert(host, (label, 0));
                }
                return None;
            }
            printed.insert(host.clone(), (label.clone(), mark));
            let amount = match total {
                Some(t) => format!(
                    "{}% ({} of {})",
                    mark * 10,
                    human_bytes(done),
                    human_bytes(t)
                ),
                None => human_bytes(done),
            };
            Some(format!("[{host}] {address}: {label} {amount}"))
        }
        finished @ Event::StepFinished { .. } => {
            let (host, line) = step_line(&finished)?;
            printed.remove(host);
            Some(format!("[{host}] {line}"))
        }
        Event::HostFinished {
            host,
            done,
            failed,
            skipped,
        } => Some(format!(
            "[{host}] finished: {done} done, {failed} failed, {skipped} skipped"
        )),
    }
}

/// One finished step, as both displays print it, with its host; `None`
/// for any other event.
fn step_line(e: &crate::apply::Event) -> Option<(&str, String)> {
    let crate::apply::Event::StepFinished {
        host,
        address,
        what,
        error,
        seconds,
    } = e
    else {
        return None;
    };
    let line = match error {
        None => format!("{address}: {what} ... done ({seconds:.1}s)"),
        Some(e) => format!("{address}: {what} ... FAILED: {e}"),
    };
    Some((host, line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Event;
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

    fn bytes(label: &str, done: u64, total: Option<u64>) -> Event {
        Event::StepProgress {
            host: "hv1".into(),
            address: "hv1/images/abc".into(),
            label: label.into(),
            done,
            total,
        }
    }

    #[test]
    fn plain_byte_progress_is_at_most_a_line_per_tenth() {
        let mut printed = Default::default();
        let mut lines = Vec::new();
        // 1000 events of 1 MiB each over a 1000 MiB task.
        for i in 0..=1000u64 {
            lines.extend(plain_line(
                &mut printed,
                bytes("copy", i << 20, Some(1000 << 20)),
            ));
        }
        assert_eq!(lines.len(), 10, "{lines:#?}");
        assert_eq!(
            lines[0],
            "[hv1] hv1/images/abc: copy 10% (100.0 MiB of 1000.0 MiB)"
        );
        assert_eq!(
            lines[9],
            "[hv1] hv1/images/abc: copy 100% (1000.0 MiB of 1000.0 MiB)"
        );
        // A new task in the same step starts counting again.
        let line = plain_line(&mut printed, bytes("verify", 500 << 20, Some(1000 << 20)));
        assert_eq!(
            line.as_deref(),
            Some("[hv1] hv1/images/abc: verify 50% (500.0 MiB of 1000.0 MiB)")
        );
        // Unknown totals: a line per 256 MiB.
        let lines: Vec<String> = (0..=1024u64)
            .filter_map(|i| plain_line(&mut printed, bytes("download", i << 20, None)))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
    }

    #[test]
    fn command_refusals_carry_their_hint() {
        use crate::plan::commands::CommandRefusal;
        let refusal = CommandRefusal::NoSnapshot {
            machine: "web".into(),
            snapshot: "x".into(),
            known: Vec::new(),
        };
        let e = anyhow::Error::new(refusal).context("rollback web");
        assert_eq!(
            hints(&e),
            ["`virtfleet snapshots NAME` lists the snapshots of a machine"]
        );
        let e = anyhow::anyhow!("cannot connect: Connection refused (fleet.dhall: No such file)");
        assert!(hints(&e).is_empty());
    }

    #[test]
    fn terminal_bars_follow_a_step_with_bytes() {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let mut st = Hosts::default();
        let host = || "hv1".to_owned();
        terminal_event(
            &multi,
            &mut st,
            Event::HostStarted {
                host: host(),
                steps: 1,
            },
        );
        for (label, done) in [("verify", 0), ("verify", 512), ("copy", 0), ("copy", 1024)] {
            terminal_event(&multi, &mut st, bytes(label, done, Some(1024)));
        }
        let b = &st.bytes["hv1"];
        assert_eq!(
            (b.message(), b.position(), b.length()),
            ("copy".into(), 1024, Some(1024))
        );
        terminal_event(
            &multi,
            &mut st,
            Event::StepFinished {
                host: host(),
                address: "hv1/images/abc".into(),
                what: "ensure base image".into(),
                error: None,
                seconds: 0.1,
            },
        );
        assert!(st.bytes.is_empty(), "the byte bar goes with its step");
        assert_eq!(st.bars["hv1"].position(), 1);
    }
}

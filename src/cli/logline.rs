//! One line per event, for unattended runs: `key=value` pairs (logfmt,
//! which journald keeps as one message and people can grep), or a JSON
//! object per line with `--json-logs` for log shippers.
//!
//! Every line has `ts`, `level` and `event`; events about a host, a
//! machine or a step carry `host`, `machine` and `step` fields. Lines go to
//! stderr: under systemd that is the journal.

use crate::apply::{Event, Events};
use std::io::Write;

/// Where event lines go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    /// JSON objects instead of logfmt.
    pub json: bool,
}

impl Log {
    /// Writes one line: `level` (`info`, `warn`, `error`), `event` (a
    /// dotted name such as `step.done`) and `fields` in the given order.
    pub fn line(&self, level: &str, event: &str, fields: &[(&str, String)]) {
        let ts = crate::text::rfc3339(super::now());
        let text = if self.json {
            let mut m = serde_json::Map::new();
            m.insert("ts".into(), ts.into());
            m.insert("level".into(), level.into());
            m.insert("event".into(), event.into());
            for (k, v) in fields {
                m.insert((*k).into(), v.clone().into());
            }
            serde_json::Value::Object(m).to_string()
        } else {
            let mut s = format!("ts={ts} level={level} event={event}");
            for (k, v) in fields {
                s.push(' ');
                s.push_str(k);
                s.push('=');
                s.push_str(&logfmt(v));
            }
            s
        };
        // One write per line, so lines from host threads never interleave.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

/// A logfmt value: bare when it is one plain word, else quoted.
fn logfmt(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && c != '\\');
    if plain {
        v.to_owned()
    } else {
        format!("{v:?}")
    }
}

/// The machine an address names (`host/machine[/disk]`), if any.
pub fn machine_of(address: &str) -> String {
    address.split('/').nth(1).unwrap_or("").to_owned()
}

impl Events for Log {
    fn event(&self, e: Event) {
        match e {
            Event::HostStarted { host, steps } => self.line(
                "info",
                "host.start",
                &[("host", host), ("steps", steps.to_string())],
            ),
            Event::StepStarted {
                host,
                address,
                what,
            } => self.line(
                "info",
                "step.start",
                &[
                    ("host", host),
                    ("machine", machine_of(&address)),
                    ("step", what),
                    ("address", address),
                ],
            ),
            Event::StepFinished {
                host,
                address,
                what,
                error,
                seconds,
            } => {
                let mut fields = vec![
                    ("host", host),
                    ("machine", machine_of(&address)),
                    ("step", what),
                    ("address", address),
                    ("seconds", format!("{seconds:.3}")),
                ];
                match error {
                    None => self.line("info", "step.done", &fields),
                    Some(e) => {
                        fields.push(("error", e));
                        self.line("error", "step.failed", &fields)
                    }
                }
            }
            Event::HostFinished {
                host,
                done,
                failed,
                skipped,
            } => self.line(
                "info",
                "host.done",
                &[
                    ("host", host),
                    ("done", done.to_string()),
                    ("failed", failed.to_string()),
                    ("skipped", skipped.to_string()),
                ],
            ),
            Event::StepProgress { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        assert_eq!(logfmt("web-1"), "web-1");
        assert_eq!(logfmt("create domain"), "\"create domain\"");
        assert_eq!(logfmt("a=b"), "\"a=b\"");
        assert_eq!(logfmt(""), "\"\"");
        assert_eq!(machine_of("local/web/disk0"), "web");
        assert_eq!(machine_of("local"), "");
    }
}

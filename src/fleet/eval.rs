//! Guarded Dhall evaluation.
//!
//! serde_dhall is built without its HTTP client, so a remote import cannot
//! reach the network, but it *panics* instead of returning an error; other
//! evaluator bugs can panic too, and deeply nested fleets recurse deeply.
//! So evaluation runs on its own named thread with a large stack, panics on
//! that thread are silenced and turned into errors, and error texts get the
//! file name serde_dhall leaves out.

use super::raw;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Name of the evaluation thread; the panic hook stays silent for it.
const EVAL_THREAD: &str = "virtfleet-dhall";

/// Why a fleet file could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Dhall rejected the file (syntax, import, or type error).
    #[error("{}{}: Dhall error: {message}", path.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Dhall {
        path: PathBuf,
        position: Option<(usize, usize)>,
        message: String,
    },
    /// The file imports something over the network.
    #[error("{}{}: remote imports are disabled: virtfleet only evaluates local files, so a fleet cannot change behind your back; download the imported file next to the fleet and import it by path", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    RemoteImport { path: PathBuf, line: Option<usize> },
    /// The evaluator crashed.
    #[error("{}: the Dhall evaluator crashed: {message}", path.display())]
    Crashed { path: PathBuf, message: String },
}

/// Evaluates the fleet file at `path` into its raw form.
pub fn evaluate(path: &Path) -> Result<raw::Fleet, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_owned(),
        source,
    })?;
    install_quiet_panic_hook();
    let owned = path.to_owned();
    let handle = std::thread::Builder::new()
        .name(EVAL_THREAD.into())
        // serde_dhall recurses per nesting level and list element; 1000-machine
        // fleets overflow the default 2 MiB thread stack.
        .stack_size(256 << 20)
        .spawn(move || {
            serde_dhall::from_file(&owned)
                .parse::<raw::Fleet>()
                .map_err(|e| e.to_string())
        })
        .map_err(|e| EvalError::Crashed {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    match handle.join() {
        Ok(Ok(fleet)) => Ok(fleet),
        Ok(Err(message)) => Err(EvalError::Dhall {
            path: path.to_owned(),
            position: position(&message),
            message: tidy(&message),
        }),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            if message.contains("Remote imports") || message.contains("remote import") {
                Err(EvalError::RemoteImport {
                    path: path.to_owned(),
                    line: remote_import_line(&text),
                })
            } else {
                Err(EvalError::Crashed {
                    path: path.to_owned(),
                    message,
                })
            }
        }
    }
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

/// serde_dhall's syntax errors carry ` --> line:col`; pull it out so the
/// error can start with `file:line:col` like every other diagnostic.
fn position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("--> ")? + 4..];
    let rest = rest.strip_prefix("<current file>:").unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let (l, c) = rest[..end].split_once(':')?;
    Some((l.parse().ok()?, c.parse().ok()?))
}

/// Keeps the message readable: serde_dhall labels every snippet
/// `<current file>` and prefixes its own internal names.
fn tidy(message: &str) -> String {
    if let Some(summary) = summarize_mismatch(message) {
        return summary;
    }
    message
        .replace("error: error", "error")
        .trim_end()
        .to_owned()
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

/// First line that imports over http(s), i.e. a URL outside a string literal.
fn remote_import_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let code = l.split("--").next().unwrap_or("");
            ["http://", "https://"].iter().any(|p| {
                code.match_indices(p)
                    .any(|(i, _)| code[..i].matches('"').count() % 2 == 0)
            })
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_positions_and_remote_lines() {
        assert_eq!(position(" --> 3:14\n  |"), Some((3, 14)));
        assert_eq!(position("no position"), None);
        assert_eq!(position(" --> <current file>:3:16\n"), Some((3, 16)));
        let src = "let a = \"https://not-an-import\"\n-- https://comment\nlet P = https://prelude.dhall-lang.org/package.dhall\nin a";
        assert_eq!(remote_import_line(src), Some(3));
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

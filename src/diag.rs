//! Diagnostics that point at a place in a user's file.
//!
//! Validation of the fleet and of the lockfile never stops at the first
//! problem: it collects [`Diagnostic`]s so one run reports everything.
//! Each one names the file, the line when it can be found, and the
//! subject (`machine "web"`, `host "hv1"`, `image "debian-12"`).

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a user's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the offending text could be located.
    pub line: Option<usize>,
    /// What the problem is about, e.g. `machine "web"`.
    pub subject: String,
    /// What is wrong, and where useful what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        // Values are clipped where they are formatted; this is the backstop
        // so no single diagnostic can flood a terminal or a CI log.
        let message = cut(&self.message, MAX_MESSAGE);
        if self.subject.is_empty() {
            write!(f, ": {message}")
        } else {
            write!(f, ": {}: {message}", cut(&self.subject, MAX_MESSAGE))
        }
    }
}

/// Longest value quoted in a message, in characters.
pub const MAX_VALUE: usize = 64;
/// Longest subject or message shown, in characters.
const MAX_MESSAGE: usize = 2000;

/// `value` quoted as Rust debug text, cut to [`MAX_VALUE`] characters with
/// its full length in bytes appended, so a runaway value (a 1 MiB name, a
/// pasted file) is recognisable without being printed.
pub fn clip(value: &str) -> String {
    if value.chars().count() <= MAX_VALUE {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_VALUE).collect();
    format!("{head:?}… ({} bytes)", value.len())
}

fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((i, _)) => format!("{}… ({} more bytes)", &text[..i], text.len() - i).into(),
    }
}

/// A non-empty list of diagnostics, as one error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} found:", if n == 1 { "" } else { "s" })?;
        for d in &self.0 {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// Finds lines in a source text, best effort, so a diagnostic about a value
/// built from a literal can point at that literal. Values produced by Dhall
/// functions have no literal and get no line: the subject still names them.
///
/// A fleet split over files is indexed as one sequence of lines, the fleet
/// file first: a line number handed out by [`SourceIndex::record`] or
/// [`SourceIndex::field`] is only meaningful to [`SourceIndex::at`], which
/// turns it back into a file and a line in it.
#[derive(Clone)]
pub struct SourceIndex {
    file: PathBuf,
    lines: Vec<String>,
    /// (index in `lines` of the file's first line, file), in order.
    parts: Vec<(usize, PathBuf)>,
}

impl fmt::Debug for SourceIndex {
    // The lines themselves would drown any Debug dump of a Fleet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceIndex")
            .field("file", &self.file)
            .field("lines", &self.lines.len())
            .field("files", &self.parts.len())
            .finish()
    }
}

impl SourceIndex {
    /// Indexes `text`, the contents of `file`.
    pub fn new(file: &Path, text: &str) -> Self {
        Self::with_imports(file, text, &[])
    }

    /// Indexes the fleet file `file` (contents `text`) and the files it
    /// imports, searched in this order.
    pub fn with_imports(file: &Path, text: &str, imports: &[(PathBuf, String)]) -> Self {
        let mut index = SourceIndex {
            file: file.to_owned(),
            lines: Vec::new(),
            parts: Vec::new(),
        };
        let files = std::iter::once((file, text))
            .chain(imports.iter().map(|(f, t)| (f.as_path(), t.as_str())));
        for (f, t) in files {
            index.parts.push((index.lines.len(), f.to_owned()));
            index.lines.extend(t.lines().map(str::to_owned));
        }
        index
    }

    /// An index that locates nothing (the file could not be read).
    pub fn empty(file: &Path) -> Self {
        SourceIndex {
            file: file.to_owned(),
            lines: Vec::new(),
            parts: vec![(0, file.to_owned())],
        }
    }

    /// The fleet file this index covers.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The file holding the 0-based index `i` into `lines`: its first and
    /// one-past-last index and its path.
    fn part(&self, i: usize) -> (usize, usize, &Path) {
        let k = self.parts.partition_point(|(start, _)| *start <= i).max(1) - 1;
        let end = self.parts.get(k + 1).map_or(self.lines.len(), |(s, _)| *s);
        (self.parts[k].0, end, &self.parts[k].1)
    }

    /// Line of the record whose `name` is `name` (a line holding `"name"`
    /// next to a `name` field), falling back to any line quoting it.
    pub fn record(&self, name: &str) -> Option<usize> {
        self.record_nth(name, 0)
    }

    /// Like [`SourceIndex::record`] for the `n`th (0-based) record of that
    /// name, so a duplicate can point at the second declaration.
    pub fn record_nth(&self, name: &str, n: usize) -> Option<usize> {
        let quoted = format!("\"{name}\"");
        let is_name_line =
            |l: &str| l.contains(&quoted) && l.split(&quoted).next().unwrap_or("").contains("name");
        let named: Vec<usize> = (0..self.lines.len())
            .filter(|i| is_name_line(&self.lines[*i]))
            .collect();
        match named.get(n) {
            Some(i) => Some(i + 1),
            None if n == 0 => self
                .lines
                .iter()
                .position(|l| l.contains(&quoted))
                .map(|i| i + 1),
            None => None,
        }
    }

    /// Line of `field` inside the record named `name`: the first line after
    /// the record's name line that mentions `field`, before the next record
    /// and within the same file.
    pub fn field(&self, name: &str, field: &str) -> Option<usize> {
        let start = self.record(name)?;
        let same_line = &self.lines[start - 1];
        if contains_word(same_line, field) {
            return Some(start);
        }
        let (_, end, _) = self.part(start - 1);
        for i in start..end {
            let l = &self.lines[i];
            if contains_word(l, field) {
                return Some(i + 1);
            }
            if contains_word(l, "name") && l.contains('=') {
                break;
            }
        }
        Some(start)
    }

    /// A diagnostic about `subject`, placed on `line` (as handed out by
    /// this index), in the file that line belongs to.
    pub fn at(&self, line: Option<usize>, subject: String, message: String) -> Diagnostic {
        let (file, line) = match line.filter(|l| *l >= 1 && *l <= self.lines.len()) {
            Some(l) => {
                let (first, _, file) = self.part(l - 1);
                (file.to_owned(), Some(l - first))
            }
            None => (self.file.clone(), None),
        };
        Diagnostic {
            file,
            line,
            subject,
            message,
        }
    }
}

fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_long_values_and_says_how_long_they_were() {
        assert_eq!(clip("web"), "\"web\"");
        let long = "x".repeat(1 << 20);
        let shown = clip(&long);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("… (1048576 bytes)"), "{shown}");
        let d = Diagnostic {
            file: "f".into(),
            line: None,
            subject: String::new(),
            message: long,
        };
        assert!(d.to_string().len() < 2100);
    }

    const SRC: &str = r#"
let V = ./dhall/package.dhall
in V.Fleet::{
, machines =
  [ V.Machine::{ name = "web", image = "deb"
    , memoryMiB = 0
    }
  , V.Machine::{ name = "db", image = "deb" }
  ]
}
"#;

    #[test]
    fn finds_record_and_field_lines() {
        let idx = SourceIndex::new(Path::new("f.dhall"), SRC);
        assert_eq!(idx.record("web"), Some(5));
        assert_eq!(idx.field("web", "memoryMiB"), Some(6));
        assert_eq!(idx.field("web", "image"), Some(5));
        // cpus is not written for db: the record's own line is the best place.
        assert_eq!(idx.field("db", "cpus"), Some(8));
        assert_eq!(idx.record("nope"), None);
    }

    #[test]
    fn places_lines_in_the_imported_file_they_are_in() {
        let imports = [(
            PathBuf::from("machines/app.dhall"),
            "[ V.Machine::{ name = \"app\"\n  , cpus = 0\n  } ]\n".to_owned(),
        )];
        let idx = SourceIndex::with_imports(Path::new("f.dhall"), SRC, &imports);
        let at = |line| idx.at(line, "s".into(), "m".into()).to_string();
        assert_eq!(at(idx.field("app", "cpus")), "machines/app.dhall:2: s: m");
        assert_eq!(at(idx.field("web", "memoryMiB")), "f.dhall:6: s: m");
        // A field not written stays within its record's file.
        assert_eq!(
            at(idx.field("app", "memoryMiB")),
            "machines/app.dhall:1: s: m"
        );
        assert_eq!(at(None), "f.dhall: s: m");
    }
}

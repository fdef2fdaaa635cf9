//! Finding the imports of a Dhall file, without evaluating it.
//!
//! The Dhall evaluator reports problems with imports (a missing file, a
//! cycle, an unset `env:` variable) without naming the file they are in, and
//! attributes errors inside an imported file to the place that imports it.
//! So virtfleet walks the import graph itself first: a small lexer that
//! knows Dhall's comments, strings and interpolations finds each import and
//! its line and column (in characters, as the evaluator counts them). Only
//! the position and target of an import matter here; everything else in the
//! file is skipped.

/// What an import points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local path as written: `./x.dhall`, `../x`, `/abs/x`, `~/x`.
    Path(String),
    /// `env:NAME`.
    Env(String),
    /// An `http://` or `https://` URL.
    Remote(String),
}

/// How the imported value is used (`as Text`, `as Location`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dhall code (the default).
    Code,
    /// `as Text` or `as Bytes`: the file's content, not evaluated.
    Raw,
    /// `as Location`: never read.
    Location,
}

/// One import in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// 1-based line of the import's first character.
    pub line: usize,
    /// 1-based column (in characters) of that character.
    pub col: usize,
    /// What it imports.
    pub target: Target,
    /// How the result is used.
    pub mode: Mode,
    /// Part of an `a ? b` fallback chain: a failure here may be intended.
    pub guarded: bool,
}

/// Every import in `text`, in order of appearance.
pub fn scan(text: &str) -> Vec<Site> {
    let mut lx = Lexer {
        s: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
        sites: Vec::new(),
        last: ' ',
    };
    lx.code(false);
    lx.sites
}

struct Lexer {
    s: Vec<char>,
    i: usize,
    line: usize,
    col: usize,
    sites: Vec<Site>,
    /// The last significant character of code (for `?` before an import and
    /// for telling an import's `/` from an operator's).
    last: char,
}

/// Characters Dhall allows in an unquoted path component.
fn path_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || "\"#(),/<>?[\\]{}".contains(c))
}

/// True when an import may start after `last` (not inside a word or a
/// field access).
fn boundary(last: char) -> bool {
    !(last.is_alphanumeric() || "_-.".contains(last))
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    fn starts(&self, pat: &str) -> bool {
        pat.chars()
            .enumerate()
            .all(|(k, c)| self.peek(k) == Some(c))
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Code up to the end of input, or (in an interpolation) up to the
    /// `}` that closes it.
    fn code(&mut self, interpolation: bool) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            if self.starts("--") {
                self.line_comment();
            } else if self.starts("{-") {
                self.block_comment();
            } else if c == '"' {
                self.bump();
                self.double_string();
                self.last = '"';
            } else if self.starts("''") {
                self.bump();
                self.bump();
                self.multi_string();
                self.last = '\'';
            } else if c == '`' {
                self.bump();
                while let Some(c) = self.bump() {
                    if c == '`' {
                        break;
                    }
                }
                self.last = '`';
            } else if c == '{' {
                depth += 1;
                self.bump();
                self.last = c;
            } else if c == '}' {
                if depth == 0 && interpolation {
                    self.bump();
                    return;
                }
                depth = depth.saturating_sub(1);
                self.bump();
                self.last = c;
            } else if boundary(self.last) && self.import() {
                self.last = 'x';
            } else if c.is_alphanumeric() || c == '_' {
                // A whole identifier, so `xenv:` or `a.b/c` never looks like an import.
                while self
                    .peek(0)
                    .is_some_and(|c| c.is_alphanumeric() || "_-/".contains(c))
                {
                    self.bump();
                }
                // A keyword or a function before whitespace may be followed
                // by an import (`in ./machines.dhall`, `f ./x.dhall`); only
                // a character right after the word (`a.b/c`) may not.
                self.last = if self.peek(0).is_some_and(char::is_whitespace) {
                    ' '
                } else {
                    'x'
                };
            } else {
                self.bump();
                if !c.is_whitespace() {
                    self.last = c;
                }
            }
        }
    }

    fn line_comment(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.peek(0).is_some() {
            if self.starts("{-") {
                depth += 1;
                self.bump();
            } else if self.starts("-}") {
                depth -= 1;
                self.bump();
                if depth == 0 {
                    self.bump();
                    return;
                }
            }
            self.bump();
        }
    }

    fn double_string(&mut self) {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return,
                '$' if self.peek(0) == Some('{') => {
                    self.bump();
                    self.code(true);
                }
                _ => {}
            }
        }
    }

    fn multi_string(&mut self) {
        while self.peek(0).is_some() {
            if self.starts("'''") || self.starts("''${") {
                // Escapes for `''` and `${`.
                self.bump();
                self.bump();
                self.bump();
            } else if self.starts("''") {
                self.bump();
                self.bump();
                return;
            } else if self.starts("${") {
                self.bump();
                self.bump();
                self.code(true);
            } else {
                self.bump();
            }
        }
    }

    /// Reads an import starting here, if there is one.
    fn import(&mut self) -> bool {
        let (line, col) = (self.line, self.col);
        let guarded_before = self.last == '?';
        let target = if self.starts("http://") || self.starts("https://") {
            Target::Remote(self.take_while(|c| !c.is_whitespace() && !"()[]{},".contains(c)))
        } else if self.starts("env:") {
            for _ in 0..4 {
                self.bump();
            }
            let name = if self.peek(0) == Some('"') {
                self.bump();
                let n = self.take_while(|c| c != '"');
                self.bump();
                n
            } else {
                self.take_while(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            Target::Env(name)
        } else if self.starts("./")
            || self.starts("../")
            || self.starts("~/")
            || (self.last != '/'
                && self.starts("/")
                && self.peek(1).is_some_and(|c| path_char(c) || c == '"'))
        {
            Target::Path(self.path())
        } else {
            return false;
        };
        let (mode, guarded_after) = self.modifiers();
        self.sites.push(Site {
            line,
            col,
            target,
            mode,
            guarded: guarded_before || guarded_after,
        });
        true
    }

    fn take_while(&mut self, ok: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek(0).filter(|c| ok(*c)) {
            out.push(c);
            self.bump();
        }
        out
    }

    /// A path, with `"quoted"` components unquoted.
    fn path(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek(0) {
            if c == '"' {
                self.bump();
                out.push_str(&self.take_while(|c| c != '"'));
                self.bump();
            } else if path_char(c) || c == '/' {
                out.push(c);
                self.bump();
            } else {
                break;
            }
        }
        out
    }

    /// After an import: an optional `sha256:...`, an optional `as Mode`,
    /// and whether a `?` fallback follows. Looks ahead without consuming
    /// the `?` (it is ordinary code for the lexer).
    fn modifiers(&mut self) -> (Mode, bool) {
        let mut k = 0;
        let skip_ws = |k: &mut usize, lx: &Self| {
            while lx.peek(*k).is_some_and(char::is_whitespace) {
                *k += 1;
            }
        };
        let word_at = |k: usize, lx: &Self| {
            let mut w = String::new();
            while let Some(c) = lx
                .peek(k + w.len())
                .filter(|c| c.is_alphanumeric() || *c == ':')
            {
                w.push(c);
            }
            w
        };
        skip_ws(&mut k, self);
        let w = word_at(k, self);
        if w.starts_with("sha256:") {
            k += w.len();
            skip_ws(&mut k, self);
        }
        let mut mode = Mode::Code;
        if word_at(k, self) == "as" {
            let mut j = k + 2;
            skip_ws(&mut j, self);
            let w = word_at(j, self);
            mode = match w.as_str() {
                "Text" | "Bytes" => Mode::Raw,
                "Location" => Mode::Location,
                _ => Mode::Code,
            };
            k = j + w.len();
            skip_ws(&mut k, self);
        }
        (mode, self.peek(k) == Some('?'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Vec<(usize, usize, Target, Mode, bool)> {
        scan(text)
            .into_iter()
            .map(|s| (s.line, s.col, s.target, s.mode, s.guarded))
            .collect()
    }

    #[test]
    fn finds_imports_with_positions_and_skips_strings_and_comments() {
        let text = "let V = ./dhall/package.dhall\n\
                    -- ./commented.dhall\n\
                    {- ./block {- nested -} ./still.dhall -}\n\
                    let s = \"./in-string.dhall ${../interp.dhall}\"\n\
                    let t = ''\n  ./in-text ${ /abs/x.dhall }\n''\n\
                    let a = x // ./merged.dhall // { z = 1 } /\\ w\n\
                    let e = env:HOME as Text ? ./fallback.dhall\n\
                    let r = https://example.org/p.dhall sha256:abcd\n\
                    in  V.Machine::{ name = ~/m.dhall }";
        let found = targets(text);
        assert_eq!(
            found,
            [
                (
                    1,
                    9,
                    Target::Path("./dhall/package.dhall".into()),
                    Mode::Code,
                    false
                ),
                (
                    4,
                    30,
                    Target::Path("../interp.dhall".into()),
                    Mode::Code,
                    false
                ),
                (
                    6,
                    16,
                    Target::Path("/abs/x.dhall".into()),
                    Mode::Code,
                    false
                ),
                (
                    8,
                    14,
                    Target::Path("./merged.dhall".into()),
                    Mode::Code,
                    false
                ),
                (9, 9, Target::Env("HOME".into()), Mode::Raw, true),
                (
                    9,
                    28,
                    Target::Path("./fallback.dhall".into()),
                    Mode::Code,
                    true
                ),
                (
                    10,
                    9,
                    Target::Remote("https://example.org/p.dhall".into()),
                    Mode::Code,
                    false
                ),
                (11, 25, Target::Path("~/m.dhall".into()), Mode::Code, false),
            ]
        );
    }

    #[test]
    fn operators_and_field_access_are_not_imports() {
        assert!(scan("a // b").is_empty());
        assert!(scan("a //\\\\ b").is_empty());
        assert!(scan("a /\\ b").is_empty());
        assert!(scan("V.Machine::{ x = 1 }").is_empty());
        assert!(scan("\\(x : Natural) -> x").is_empty());
        assert!(scan("List/length Natural xs").is_empty());
        assert!(scan("Natural/fold 3 Natural (\\(x : Natural) -> x) 0").is_empty());
    }

    /// Regression: `let V = ... in ./more.dhall` was not seen as an import
    /// (the keyword before it looked like part of a word), so a change to
    /// that file missed the evaluation cache and `watch`.
    #[test]
    fn an_import_after_a_keyword_or_an_argument_is_found() {
        let found = |t: &str| scan(t).into_iter().map(|s| s.target).collect::<Vec<_>>();
        assert_eq!(
            found("let V = ./a.dhall in ./more.dhall # x"),
            vec![
                Target::Path("./a.dhall".into()),
                Target::Path("./more.dhall".into())
            ]
        );
        assert_eq!(found("if b then ./t.dhall else ./e.dhall").len(), 2);
        assert_eq!(found("f ./x.dhall").len(), 1);
        assert!(found("a.b/c").is_empty());
        assert!(found("x // y").is_empty());
    }
}

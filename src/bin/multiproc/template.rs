//! Command templates with GNU parallel's replacement strings.
//!
//! A template is parsed once (unknown replacement strings are an error) and rendered once per job.
//!
//! | string  | value (GNU parallel 20221122, checked against it)                              |
//! |---------|--------------------------------------------------------------------------------|
//! | `{}`    | the input, unchanged                                                           |
//! | `{.}`   | the input without its last extension: `s:\.[^/.]*$::` (`dir.d/f` is unchanged) |
//! | `{/}`   | the basename: everything after the last `/` (`a/` gives the empty string)       |
//! | `{//}`  | the dirname, as Perl's `File::Basename::dirname` (`a` gives `.`, `/a` gives `/`) |
//! | `{/.}`  | the basename without its last extension                                        |
//! | `{#}`   | the job's sequence number, 1-based                                             |
//! | `{%}`   | the job's slot number, 1-based (a slot is reused by the next job)              |
//! | `{host}` | the node the job runs on in a multi-node run (GNU's `{host}` of `--plus`: the host of its `--sshlogin`); `:` on one node, as GNU parallel's local host |
//! | `{N}` `{N.}` `{N/}` `{N//}` `{N/.}` | the same, for input source N (1-based)             |
//!
//! With several input sources, `{}` (and `{.}` etc.) is every source's value, each transformed,
//! joined by one space, as GNU parallel does. A command with no replacement string at all
//! (not even `{#}`) gets the inputs appended: one argument per input source.
//!
//! Differences from GNU parallel, on purpose: a brace group that looks like a replacement string
//! but is not one (`{foo}`, `{1..3}`, `{-1}`) is an error here, where GNU parallel passes it through
//! as text; `${NAME}` is left alone (shell syntax). `{N}` beyond the number of input sources is an
//! error at parse time (GNU parallel substitutes nothing).

use std::fmt;

use crate::quote::shell_quote;

/// What a path-like replacement does to an input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathOp {
    /// `{}`: the value unchanged.
    Whole,
    /// `{.}`: without the last extension.
    NoExt,
    /// `{/}`: the basename.
    Basename,
    /// `{//}`: the dirname.
    Dirname,
    /// `{/.}`: the basename without the last extension.
    BasenameNoExt,
}

impl PathOp {
    /// Applies the operation to one input value.
    pub(crate) fn apply(self, value: &str) -> String {
        match self {
            PathOp::Whole => value.to_owned(),
            PathOp::NoExt => remove_ext(value).to_owned(),
            PathOp::Basename => basename(value).to_owned(),
            PathOp::Dirname => dirname(value),
            PathOp::BasenameNoExt => remove_ext(basename(value)).to_owned(),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            PathOp::Whole => "",
            PathOp::NoExt => ".",
            PathOp::Basename => "/",
            PathOp::Dirname => "//",
            PathOp::BasenameNoExt => "/.",
        }
    }
}

/// One replacement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// An input value: `source` is `None` for all sources (`{}`), `Some(n)` for `{n}` (1-based).
    Input {
        /// The input source, 1-based; `None` means all of them.
        source: Option<usize>,
        /// What to do to the value.
        op: PathOp,
    },
    /// `{#}`: the job's sequence number.
    Seq,
    /// `{%}`: the job's slot number.
    Slot,
    /// `{host}`: the node the job runs on ([`set_host`]; `:` when not set).
    Host,
    /// `{name}` with `--header`: a named column, until [`Template::resolve_names`] turns it into
    /// its position.
    Named(String),
}

/// How a template is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Syntax {
    /// How many input positions `{N}` may name; `None`: any (`--colsep`, `-N`: a position past
    /// a job's values gives the empty string, as in GNU parallel).
    pub(crate) positions: Option<usize>,
    /// `-I STR`: STR stands for `{}`, and `{}` is plain text.
    pub(crate) replace: Option<String>,
    /// `--header`: `{name}` names an input column.
    pub(crate) names: bool,
}

/// How a job with many inputs fills the command (`-X`, `-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Multi {
    /// `{}` is the inputs joined by spaces, in one word.
    #[default]
    Joined,
    /// `-X`: a word holding `{}` is repeated once per input (context replace).
    Context,
    /// `-m`: `{}` becomes the inputs as separate words (the word's text before `{}` on the
    /// first, after it on the last).
    Words,
}

/// The value of `{host}` in this process: set once by a multi-node agent to its node's name.
static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets `{host}` for every job this process makes (a multi-node agent, once, at its start).
pub(crate) fn set_host(name: &str) {
    let _ = HOST.set(name.to_owned());
}

impl fmt::Display for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replacement::Input { source: None, op } => write!(f, "{{{}}}", op.suffix()),
            Replacement::Input {
                source: Some(n),
                op,
            } => write!(f, "{{{n}{}}}", op.suffix()),
            Replacement::Seq => f.write_str("{#}"),
            Replacement::Slot => f.write_str("{%}"),
            Replacement::Host => f.write_str("{host}"),
            Replacement::Named(n) => write!(f, "{{{n}}}"),
        }
    }
}

/// A piece of one template word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Replace(Replacement),
}

/// One word of a template (one argv element, or the whole of a single-string template).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    parts: Vec<Part>,
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateError {
    /// A brace group that looks like a replacement string but is not one, e.g. `{foo}`.
    Unknown {
        /// The brace group as written, braces included.
        found: String,
        /// The word it appeared in.
        word: String,
    },
    /// A GNU parallel replacement string that multiproc does not implement, e.g. `{= s/a/b/ =}`.
    Unsupported {
        /// The replacement string as written.
        found: String,
        /// What it is in GNU parallel, and what to do instead.
        what: &'static str,
    },
    /// `{N}` with N = 0 or N greater than the number of input sources.
    SourceOutOfRange {
        /// The brace group as written.
        found: String,
        /// How many input sources there are.
        sources: usize,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unknown { found, word } => write!(
                f,
                "unknown replacement string {found} in '{word}' (known: {{}} {{.}} {{/}} {{//}} \
                 {{/.}} {{#}} {{%}} and {{N}} {{N.}} {{N/}} {{N//}} {{N/.}})"
            ),
            TemplateError::Unsupported { found, what } => {
                write!(f, "the replacement string {found} is not supported: {what}")
            }
            TemplateError::SourceOutOfRange { found, sources } => write!(
                f,
                "replacement string {found} names an input source that does not exist \
                 (there {} {sources})",
                if *sources == 1 { "is" } else { "are" }
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// What a job fills into a template.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobValues<'a> {
    /// The job's sequence number (`{#}`), 1-based.
    pub(crate) seq: u64,
    /// The job's slot (`{%}`), 1-based.
    pub(crate) slot: usize,
    /// One value per input source.
    pub(crate) args: &'a [String],
}

/// A parsed command template: one [`Word`] per command-line word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    words: Vec<Word>,
    has_replacements: bool,
    multi: Multi,
}

impl Template {
    /// Parses a command given as words (`COMMAND ARGS...`), for a run with `sources` input sources.
    ///
    /// # Errors
    /// [`TemplateError`] for an unknown replacement string or `{N}` out of range.
    pub(crate) fn parse<S: AsRef<str>>(
        words: &[S],
        syntax: &Syntax,
    ) -> Result<Self, TemplateError> {
        let words = words
            .iter()
            .map(|w| parse_word(w.as_ref(), syntax))
            .collect::<Result<Vec<_>, _>>()?;
        let has_replacements = words
            .iter()
            .any(|w| w.parts.iter().any(|p| matches!(p, Part::Replace(_))));
        Ok(Template {
            words,
            has_replacements,
            multi: Multi::Joined,
        })
    }

    /// Sets how a job with many inputs fills the command (`-X`, `-m`).
    pub(crate) fn set_multi(&mut self, multi: Multi) {
        self.multi = multi;
    }

    /// `--header`: turns each `{name}` into the position of that column in `names`.
    ///
    /// # Errors
    /// [`TemplateError::Unknown`] for a name that is not a column.
    pub(crate) fn resolve_names(&mut self, names: &[String]) -> Result<(), TemplateError> {
        for w in &mut self.words {
            for p in &mut w.parts {
                if let Part::Replace(Replacement::Named(n)) = p {
                    let Some(i) = names.iter().position(|x| x == n) else {
                        return Err(TemplateError::Unknown {
                            found: format!("{{{n}}}"),
                            word: format!("the header's columns are {names:?}"),
                        });
                    };
                    *p = Part::Replace(Replacement::Input {
                        source: Some(i + 1),
                        op: PathOp::Whole,
                    });
                }
            }
        }
        Ok(())
    }

    /// Parses a single-string template (`--stdin`, `--stdout`): rendered to one string, never
    /// appended to.
    ///
    /// # Errors
    /// As [`Template::parse`].
    pub(crate) fn parse_single(text: &str, syntax: &Syntax) -> Result<Self, TemplateError> {
        Template::parse(&[text], syntax)
    }

    /// True if the template contains at least one replacement string; if not, the inputs are
    /// appended when rendering a command.
    pub(crate) fn has_replacements(&self) -> bool {
        self.has_replacements
    }

    /// The command's argv for a direct exec (no shell): replacement values are substituted
    /// verbatim; with no replacement strings each input is appended as its own argument.
    pub(crate) fn render_argv(&self, job: &JobValues<'_>) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.words.len() + job.args.len());
        for w in &self.words {
            match self.multi {
                Multi::Context if w.has_all_inputs() => {
                    argv.extend(job.args.iter().map(|a| w.render(&job.only(a), false, " ")));
                }
                Multi::Words if w.has_all_inputs() => {
                    argv.extend(w.render(job, false, "\0").split('\0').map(str::to_owned));
                }
                _ => argv.push(w.render(job, false, " ")),
            }
        }
        if !self.has_replacements {
            argv.extend(job.args.iter().cloned());
        }
        argv
    }

    /// The command as one shell command line (`--shell`, `--dry-run`, the joblog): the words are
    /// joined by spaces as shell code and only the replacement values are quoted, as GNU parallel
    /// does; with no replacement strings the quoted inputs are appended.
    pub(crate) fn render_shell(&self, job: &JobValues<'_>) -> String {
        let mut out = Vec::with_capacity(self.words.len());
        for w in &self.words {
            if self.multi == Multi::Context && w.has_all_inputs() {
                out.extend(job.args.iter().map(|a| w.render(&job.only(a), true, " ")));
            } else {
                out.push(w.render(job, true, " "));
            }
        }
        if !self.has_replacements {
            out.extend(job.args.iter().map(|a| shell_quote(a)));
        }
        out.join(" ")
    }

    /// Renders a single-string template (`--stdin`, `--stdout` file names): values verbatim,
    /// nothing appended.
    pub(crate) fn render_single(&self, job: &JobValues<'_>) -> String {
        self.words
            .iter()
            .map(|w| w.render(job, false, " "))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl JobValues<'_> {
    /// The same job with one input only (`-X`: a word per input).
    fn only<'b>(&self, arg: &'b String) -> JobValues<'b> {
        JobValues {
            seq: self.seq,
            slot: self.slot,
            args: std::slice::from_ref(arg),
        }
    }
}

impl Word {
    /// Whether the word holds `{}` (or `{.}` ...) of all inputs.
    fn has_all_inputs(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Replace(Replacement::Input { source: None, .. })))
    }

    /// The word for `job`; values of all inputs are joined by `join`.
    fn render(&self, job: &JobValues<'_>, quote: bool, join: &str) -> String {
        let mut s = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => s.push_str(text),
                Part::Replace(r) => {
                    if quote && matches!(r, Replacement::Input { source: None, .. }) {
                        // Each value quoted on its own: they stay separate shell words.
                        let Replacement::Input { op, .. } = r else {
                            unreachable!()
                        };
                        let quoted: Vec<String> =
                            job.args.iter().map(|a| shell_quote(&op.apply(a))).collect();
                        s.push_str(&quoted.join(" "));
                        continue;
                    }
                    let value = replacement_value(r, job, join);
                    if quote {
                        s.push_str(&shell_quote(&value));
                    } else {
                        s.push_str(&value);
                    }
                }
            }
        }
        s
    }
}

fn replacement_value(r: &Replacement, job: &JobValues<'_>, join: &str) -> String {
    match r {
        Replacement::Seq => job.seq.to_string(),
        Replacement::Slot => job.slot.to_string(),
        Replacement::Host => HOST.get().map_or(":", String::as_str).to_owned(),
        Replacement::Input { source: None, op } => job
            .args
            .iter()
            .map(|a| op.apply(a))
            .collect::<Vec<_>>()
            .join(join),
        Replacement::Input {
            source: Some(n),
            op,
        } => job.args.get(n - 1).map(|a| op.apply(a)).unwrap_or_default(),
        // Resolved before any job is made; a name left over is an empty value.
        Replacement::Named(_) => String::new(),
    }
}

/// True for characters that may appear between braces of something that looks like a
/// replacement string. Anything else (space, comma, `$`, quotes...) makes the braces literal text.
fn looks_like_replacement_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '#' | '%' | '-' | '+')
}

/// GNU parallel's Perl expressions, `{= EXPR =}` and `{N= EXPR =}`: the first in `word`.
fn perl_expression(word: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = word[from..].find('{') {
        let start = from + i;
        let digits = word[start + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let body = start + 1 + digits;
        if word[body..].starts_with('=') {
            if let Some(end) = word[body + 1..].find("=}") {
                return Some(&word[start..body + 1 + end + 2]);
            }
        }
        from = start + 1;
    }
    None
}

fn parse_word(word: &str, syntax: &Syntax) -> Result<Word, TemplateError> {
    if let Some(found) = perl_expression(word) {
        return Err(TemplateError::Unsupported {
            found: found.to_owned(),
            what: "GNU parallel's Perl expressions are not run by multiproc; transform the \
                   input in the command (e.g. --shell with sed) or before it",
        });
    }
    let Some(rep) = syntax.replace.as_deref().filter(|r| !r.is_empty()) else {
        return parse_segment(word, word, syntax, true);
    };
    // -I STR: STR is `{}`; the text between is parsed as usual, with `{}` as plain text.
    let mut parts = Vec::new();
    for (i, segment) in word.split(rep).enumerate() {
        if i > 0 {
            parts.push(Part::Replace(Replacement::Input {
                source: None,
                op: PathOp::Whole,
            }));
        }
        let w = parse_segment(segment, word, syntax, false)?;
        parts.extend(
            w.parts
                .into_iter()
                .filter(|p| *p != Part::Literal(String::new())),
        );
    }
    if parts.is_empty() {
        parts.push(Part::Literal(String::new()));
    }
    Ok(Word { parts })
}

/// Parses `text` (all or part of `word`); `braces` says whether `{}` is a replacement string.
fn parse_segment(
    text: &str,
    word: &str,
    syntax: &Syntax,
    braces: bool,
) -> Result<Word, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (before, from_brace) = rest.split_at(open);
        literal.push_str(before);
        // `${NAME}` is shell syntax, never a replacement string.
        let after_dollar = literal.ends_with('$');
        let inner_end = from_brace[1..].find(|c: char| !looks_like_replacement_char(c));
        let group = match inner_end {
            Some(i) if from_brace[1 + i..].starts_with('}') => Some(&from_brace[..i + 2]),
            _ => None,
        };
        match group {
            Some("{}") if !braces => {
                literal.push_str("{}");
                rest = &from_brace[2..];
            }
            Some(group) if !after_dollar => {
                let inner = &group[1..group.len() - 1];
                let r = match parse_replacement(inner) {
                    Some(r) => r,
                    None if syntax.names && is_name(inner) => Replacement::Named(inner.to_owned()),
                    None => {
                        return Err(TemplateError::Unknown {
                            found: group.to_owned(),
                            word: word.to_owned(),
                        });
                    }
                };
                if let Replacement::Input {
                    source: Some(n), ..
                } = r
                {
                    let max = syntax.positions.unwrap_or(usize::MAX);
                    if n == 0 || n > max {
                        return Err(TemplateError::SourceOutOfRange {
                            found: group.to_owned(),
                            sources: max,
                        });
                    }
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Replace(r));
                rest = &from_brace[group.len()..];
            }
            _ => {
                literal.push('{');
                rest = &from_brace[1..];
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() || parts.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(Word { parts })
}

/// A column name of `--header`: letters, digits, `_`, `-`, `.`, not starting with a digit.
fn is_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-'))
}

/// Parses what is between the braces; `None` if it is not a replacement string.
fn parse_replacement(inner: &str) -> Option<Replacement> {
    match inner {
        "#" => return Some(Replacement::Seq),
        "%" => return Some(Replacement::Slot),
        "host" => return Some(Replacement::Host),
        _ => {}
    }
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = inner.split_at(digits);
    let op = match suffix {
        "" => PathOp::Whole,
        "." => PathOp::NoExt,
        "/" => PathOp::Basename,
        "//" => PathOp::Dirname,
        "/." => PathOp::BasenameNoExt,
        _ => return None,
    };
    let source = if num.is_empty() {
        None
    } else {
        // A number too large for usize is certainly out of range: report it as source 0.
        Some(num.parse::<usize>().unwrap_or(0))
    };
    Some(Replacement::Input { source, op })
}

/// `{.}`: GNU parallel's `s:\.[^/.]*$::` (remove a last `.` followed by no `/` or `.`).
pub(crate) fn remove_ext(s: &str) -> &str {
    match s.rfind(['.', '/']) {
        Some(i) if s.as_bytes()[i] == b'.' => &s[..i],
        _ => s,
    }
}

/// `{/}`: GNU parallel's `s:.*/::` (everything after the last `/`).
pub(crate) fn basename(s: &str) -> &str {
    match s.rfind('/') {
        Some(i) => &s[i + 1..],
        None => s,
    }
}

/// `{//}`: Perl's `File::Basename::dirname` on Unix, which GNU parallel uses.
///
/// `fileparse` splits after the last `/` (no `/`: the directory is `./`); trailing slashes of the
/// directory are then stripped, keeping at least one character; if the basename was empty (the
/// path ended in `/`) the same is done once more to the directory.
pub(crate) fn dirname(s: &str) -> String {
    fn fileparse(p: &str) -> (&str, &str) {
        match p.rfind('/') {
            Some(i) => (&p[..=i], &p[i + 1..]),
            None => ("./", p),
        }
    }
    fn strip_trailing_sep(d: &str) -> &str {
        // Perl: s{(.)/*\z}{$1}s
        let trimmed = d.trim_end_matches('/');
        if trimmed.is_empty() && !d.is_empty() {
            &d[..1]
        } else {
            trimmed
        }
    }
    let (dir, base) = fileparse(s);
    let mut dir = strip_trailing_sep(dir);
    if base.is_empty() {
        dir = strip_trailing_sep(fileparse(dir).0);
    }
    dir.to_owned()
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Template {
    /// Parses a command given as words (`COMMAND ARGS...`), for a run with `sources` input sources.
    ///
    /// # Errors
    /// [`TemplateError`] for an unknown replacement string or `{N}` out of range.
    pub(crate) fn parse<S: AsRef<str>>(words: &[S], sources: usize) -> Result<Self, TemplateError> {
        let words = words
            .iter()
            .map(|w| parse_word(w.as_ref(), sources))
            .collect::<Result<Vec<_>, _>>()?;
        let has_replacements = words
            .iter()
            .any(|w| w.parts.iter().any(|p| matches!(p, Part::Replace(_))));
        Ok(Template {
            words,
            has_replacements,
        })
    }

    /// Parses a single-string template (`--stdin`, `--stdout`): rendered to one string, never
    /// appended to.
    ///
    /// # Errors
    /// As [`Template::parse`].
    pub(crate) fn parse_single(text: &str, sources: usize) -> Result<Self, TemplateError> {
        Template::parse(&[text], sources)
    }

    /// True if the template contains at least one replacement string; if not, the inputs are
    /// appended when rendering a command.
    pub(crate) fn has_replacements(&self) -> bool {
        self.has_replacements
    }

    /// The command's argv for a direct exec (no shell): replacement values are substituted
    /// verbatim; with no replacement strings each input is appended as its own argument.
    pub(crate) fn render_argv(&self, job: &JobValues<'_>) -> Vec<String> {
        let mut argv: Vec<String> = self.words.iter().map(|w| w.render(job, false)).collect();
        if !self.has_replacements {
            argv.extend(job.args.iter().cloned());
        }
        argv
    }

    /// The command as one shell command line (`--shell`, `--dry-run`, the joblog): the words are
    /// joined by spaces as shell code and only the replacement values are quoted, as GNU parallel
    /// does; with no replacement strings the quoted inputs are appended.
    pub(crate) fn render_shell(&self, job: &JobValues<'_>) -> String {
        let mut out: Vec<String> = self.words.iter().map(|w| w.render(job, true)).collect();
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
            .map(|w| w.render(job, false))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Word {
    fn render(&self, job: &JobValues<'_>, quote: bool) -> String {
        let mut s = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => s.push_str(text),
                Part::Replace(r) => {
                    let value = replacement_value(*r, job);
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

fn replacement_value(r: Replacement, job: &JobValues<'_>) -> String {
    match r {
        Replacement::Seq => job.seq.to_string(),
        Replacement::Slot => job.slot.to_string(),
        Replacement::Host => HOST.get().map_or(":", String::as_str).to_owned(),
        Replacement::Input { source: None, op } => job
            .args
            .iter()
            .map(|a| op.apply(a))
            .collect::<Vec<_>>()
            .join(" "),
        Replacement::Input {
            source: Some(n),
            op,
        } => job.args.get(n - 1).map(|a| op.apply(a)).unwrap_or_default(),
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

fn parse_word(word: &str, sources: usize) -> Result<Word, TemplateError> {
    if let Some(found) = perl_expression(word) {
        return Err(TemplateError::Unsupported {
            found: found.to_owned(),
            what: "GNU parallel's Perl expressions are not run by multiproc; transform the \
                   input in the command (e.g. --shell with sed) or before it",
        });
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = word;
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
            Some(group) if !after_dollar => {
                let inner = &group[1..group.len() - 1];
                let r = parse_replacement(inner).ok_or_else(|| TemplateError::Unknown {
                    found: group.to_owned(),
                    word: word.to_owned(),
                })?;
                if let Replacement::Input {
                    source: Some(n), ..
                } = r
                {
                    if n == 0 || n > sources {
                        return Err(TemplateError::SourceOutOfRange {
                            found: group.to_owned(),
                            sources,
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
mod tests {
    use super::*;

    fn job(args: &[&str]) -> (Vec<String>, u64, usize) {
        (args.iter().map(|s| s.to_string()).collect(), 7, 2)
    }

    fn argv(words: &[&str], args: &[&str]) -> Vec<String> {
        let (args, seq, slot) = job(args);
        let t = Template::parse(words, args.len().max(1)).unwrap();
        t.render_argv(&JobValues {
            seq,
            slot,
            args: &args,
        })
    }

    /// (input, {.}, {/}, {//}, {/.}) as GNU parallel 20221122 printed them.
    const GNU_CASES: &[(&str, &str, &str, &str, &str)] = &[
        ("a.txt", "a", "a.txt", ".", "a"),
        ("dir/b.tar.gz", "dir/b.tar", "b.tar.gz", "dir", "b.tar"),
        ("/abs/c", "/abs/c", "c", "/abs", "c"),
        ("foo", "foo", "foo", ".", "foo"),
        ("d.dir/e", "d.dir/e", "e", "d.dir", "e"),
        ("d.dir/f.x", "d.dir/f", "f.x", "d.dir", "f"),
        (".hidden", "", ".hidden", ".", ""),
        ("./g.h", "./g", "g.h", ".", "g"),
        ("/", "/", "", "/", ""),
        ("a/", "a/", "", ".", ""),
        ("a//", "a//", "", ".", ""),
        ("", "", "", ".", ""),
        ("..", ".", "..", ".", "."),
        (".", "", ".", ".", ""),
        ("./", "./", "", ".", ""),
        ("a/b/", "a/b/", "", "a", ""),
        ("x y.z", "x y", "x y.z", ".", "x y"),
        ("..x", ".", "..x", ".", "."),
        ("a.", "a", "a.", ".", "a"),
        ("/a", "/a", "a", "/", "a"),
        ("//a", "//a", "a", "/", "a"),
        ("a//b", "a//b", "b", "a", "b"),
    ];

    #[test]
    fn path_ops_match_gnu_parallel() {
        for &(input, noext, base, dir, base_noext) in GNU_CASES {
            assert_eq!(PathOp::Whole.apply(input), input, "{{}} of {input:?}");
            assert_eq!(PathOp::NoExt.apply(input), noext, "{{.}} of {input:?}");
            assert_eq!(PathOp::Basename.apply(input), base, "{{/}} of {input:?}");
            assert_eq!(PathOp::Dirname.apply(input), dir, "{{//}} of {input:?}");
            assert_eq!(
                PathOp::BasenameNoExt.apply(input),
                base_noext,
                "{{/.}} of {input:?}"
            );
        }
    }

    #[test]
    fn all_replacements_in_one_word() {
        assert_eq!(
            argv(&["echo", "{}|{.}|{/}|{//}|{/.}|{#}|{%}"], &["dir/b.tar.gz"]),
            ["echo", "dir/b.tar.gz|dir/b.tar|b.tar.gz|dir|b.tar|7|2"]
        );
    }

    #[test]
    fn input_appended_without_replacement_strings() {
        assert_eq!(argv(&["echo", "-n"], &["a b"]), ["echo", "-n", "a b"]);
        // Several sources: one argument each.
        assert_eq!(argv(&["echo"], &["a", "b c"]), ["echo", "a", "b c"]);
    }

    #[test]
    fn seq_or_slot_alone_suppresses_appending() {
        // GNU: `parallel echo {#} ::: a b` prints 1 and 2, not "1 a".
        assert_eq!(argv(&["echo", "{#}"], &["a"]), ["echo", "7"]);
        assert_eq!(argv(&["echo", "{%}"], &["a"]), ["echo", "2"]);
    }

    #[test]
    fn host_is_a_colon_on_one_node() {
        // GNU (`--plus`): `parallel --plus echo {host} ::: a` prints ":" for the local host.
        // A multi-node agent sets it to its node (checked by scripts/slurm/test-multi.sh).
        assert_eq!(argv(&["echo", "{host}"], &["a"]), ["echo", ":"]);
        assert_eq!(argv(&["echo", "x{host}y"], &["a"]), ["echo", "x:y"]);
    }

    #[test]
    fn repeated_and_adjacent_replacements() {
        // GNU: `parallel echo '{}{}' x{}y ::: a` prints "aa xay".
        assert_eq!(
            argv(&["echo", "{}{}", "x{}y"], &["a"]),
            ["echo", "aa", "xay"]
        );
    }

    #[test]
    fn several_sources() {
        // GNU: `parallel echo {} ::: a b ::: c d` prints "a c"...; {.} is applied to each value.
        assert_eq!(argv(&["echo", "{}"], &["a", "c"]), ["echo", "a c"]);
        assert_eq!(argv(&["echo", "{.}"], &["a.x", "b.y"]), ["echo", "a b"]);
        // GNU: `parallel echo {2} {1/} {1.} ::: a/b.c ::: d` prints "d b.c a/b".
        assert_eq!(
            argv(
                &["echo", "{2}", "{1/}", "{1.}", "{1//}", "{2/.}"],
                &["a/b.c", "d.e"]
            ),
            ["echo", "d.e", "b.c", "a/b", "a", "d"]
        );
    }

    #[test]
    fn unknown_replacement_is_an_error() {
        for bad in [
            "{foo}", "x{foo}y", "{1..3}", "{-1}", "{./}", "{#1}", "{//.}",
        ] {
            let err = Template::parse(&["echo", bad], 1).unwrap_err();
            assert!(
                matches!(&err, TemplateError::Unknown { word, .. } if word == bad),
                "{bad}: {err:?}"
            );
        }
        let msg = Template::parse(&["x{foo}"], 1).unwrap_err().to_string();
        assert!(
            msg.starts_with("unknown replacement string {foo} in 'x{foo}'"),
            "{msg}"
        );
    }

    #[test]
    fn brace_text_that_is_not_a_replacement_is_literal() {
        // Shell variables, brace expansion with commas, awk programs with spaces, lone braces.
        for lit in [
            "${HOME}",
            "a{b,c}",
            "{print $1}",
            "{",
            "}",
            "{ }",
            "}{",
            "{x",
            "$${x}",
        ] {
            assert_eq!(
                argv(&["cmd", lit, "{}"], &["i"]),
                ["cmd", lit, "i"],
                "{lit}"
            );
        }
    }

    #[test]
    fn source_out_of_range() {
        let err = Template::parse(&["echo", "{3}"], 2).unwrap_err();
        assert_eq!(
            err,
            TemplateError::SourceOutOfRange {
                found: "{3}".into(),
                sources: 2
            }
        );
        assert!(Template::parse(&["{0}"], 1).is_err());
        assert!(Template::parse(&["{99999999999999999999999}"], 1).is_err());
        assert!(Template::parse(&["{2/.}"], 2).is_ok());
    }

    #[test]
    fn render_shell_quotes_only_values() {
        let t = Template::parse(&["echo", "{}", "|", "wc", "-c"], 1).unwrap();
        let args = vec!["a b".to_string()];
        let j = JobValues {
            seq: 1,
            slot: 1,
            args: &args,
        };
        assert_eq!(t.render_shell(&j), "echo 'a b' | wc -c");
        let t = Template::parse(&["echo"], 2).unwrap();
        let args = vec!["a".to_string(), "b c".to_string()];
        let j = JobValues { args: &args, ..j };
        assert_eq!(t.render_shell(&j), "echo a 'b c'");
    }

    #[test]
    fn single_templates_do_not_append() {
        let t = Template::parse_single("out/{/.}.txt", 1).unwrap();
        let args = vec!["in/x.csv".to_string()];
        let j = JobValues {
            seq: 1,
            slot: 1,
            args: &args,
        };
        assert_eq!(t.render_single(&j), "out/x.txt");
        let t = Template::parse_single("fixed.txt", 1).unwrap();
        assert!(!t.has_replacements());
        assert_eq!(t.render_single(&j), "fixed.txt");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", "{2}", "{3/.}",
        ] {
            assert_eq!(
                parse_replacement(&s[1..s.len() - 1]).unwrap().to_string(),
                s
            );
        }
    }

    /// Compares `--dry-run` output with GNU parallel's when it is installed
    /// (`scripts/slurm/install.sh` installs it); otherwise the hard-coded cases above stand in.
    #[test]
    fn dry_run_matches_installed_gnu_parallel() {
        let words = ["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}"];
        let inputs: Vec<&str> = GNU_CASES.iter().map(|c| c.0).collect();
        let out = std::process::Command::new("parallel")
            .args(["--will-cite", "-k", "-j1", "--dry-run"])
            .args(words)
            .arg(":::")
            .args(&inputs)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
            _ => {
                eprintln!("GNU parallel not installed: skipping the live comparison");
                return;
            }
        };
        let t = Template::parse(&words, 1).unwrap();
        let ours: Vec<String> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let args = vec![input.to_string()];
                t.render_shell(&JobValues {
                    seq: i as u64 + 1,
                    slot: 1,
                    args: &args,
                })
            })
            .collect();
        let theirs: Vec<&str> = out.lines().collect();
        assert_eq!(ours, theirs);
    }
}

//! The shell, from outside: quoting words for a POSIX shell ([`shell_quote`]), writing a job as a
//! command line that pastes into a shell and runs that job ([`command_line`], for the joblog's
//! Command column and `--dry-run`), and spotting shell code in a command run without `--shell`
//! ([`shell_syntax`]).

/// Quotes a string for a POSIX shell exactly as GNU parallel does (`shell_quote_scalar_default`):
/// strings of `[-_.+a-zA-Z0-9/]` stay as they are, the empty string becomes `''`, anything else is
/// put in single quotes with `'` written as `'"'"'` (and a leading or trailing `''` dropped).
pub(crate) fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'/'))
    {
        return s.to_owned();
    }
    let quoted = format!("'{}'", s.replace('\'', r#"'"'"'"#));
    let quoted = quoted.strip_prefix("''").unwrap_or(&quoted);
    quoted.strip_suffix("''").unwrap_or(quoted).to_owned()
}

/// A job as one shell command line: `program` is either shell code already (`--shell`) or argv
/// words, each quoted where needed; then `< IN` and `> OUT` for `--stdin`/`--stdout`.
pub(crate) fn command_line(
    argv: Option<&[String]>,
    shell_code: &str,
    stdin: Option<&str>,
    stdout: Option<&str>,
) -> String {
    let mut line = match argv {
        Some(words) => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
        None => shell_code.to_owned(),
    };
    if let Some(i) = stdin {
        line.push_str(" < ");
        line.push_str(&shell_quote(i));
    }
    if let Some(o) = stdout {
        line.push_str(" > ");
        line.push_str(&shell_quote(o));
    }
    line
}

/// Words that are shell operators on their own (`cmd '|' wc` reaches us only quoted, and then
/// means shell code that lost its shell).
const OPERATORS: &[&str] = &[
    "|", "||", "&&", "<", ">", ">>", "2>", "2>>", "&>", "2>&1", ">&2", "|&", "<<", "<<<",
];

/// Programs whose arguments are code of their own: shell syntax in them is theirs.
const INTERPRETERS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "fish",
    "env",
    "perl",
    "python",
    "python3",
    "ruby",
    "awk",
    "gawk",
    "mawk",
    "sed",
    "Rscript",
    "julia",
    "find",
    "xargs",
    "ssh",
    "srun",
    "timeout",
    "nice",
    "nohup",
    "time",
    "parallel",
    "multiproc",
];

/// What makes `words` (a command run without a shell) look like shell code, if anything: the
/// program word holding spaces and shell syntax (`"wc -l < {} | tr -d ' '"` as one argument),
/// a word that is a shell operator on its own (`|`, `&&`, `>`...), or `$(`/backquotes in an
/// argument of a program that is not an interpreter. `None` when it looks like a plain command.
pub(crate) fn shell_syntax(words: &[String]) -> Option<String> {
    let program = words.first()?;
    let is_path = std::path::Path::new(program).exists();
    if !is_path && program.contains(char::is_whitespace) {
        let found: String = program
            .chars()
            .filter(|c| "|&;<>()$`*?[]{}'\"\\".contains(*c))
            .take(1)
            .collect();
        let what = if found.is_empty() {
            "spaces".to_string()
        } else {
            format!("spaces and '{found}'")
        };
        return Some(format!(
            "the program name '{program}' holds {what}: it is a whole command line"
        ));
    }
    let base = program.rsplit('/').next().unwrap_or(program);
    if INTERPRETERS.contains(&base) {
        return None;
    }
    for w in &words[1..] {
        if OPERATORS.contains(&w.as_str()) || w == ";" {
            return Some(format!("the word '{w}' is a shell operator"));
        }
        if w.contains("$(") || w.contains('`') {
            return Some(format!("the word '{w}' holds a command substitution"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shell_quote_like_gnu_parallel() {
        // `parallel --dry-run echo ::: ...` output, GNU parallel 20221122.
        let cases = [
            ("d=e", "'d=e'"),
            ("plain", "plain"),
            ("a b", "'a b'"),
            ("$HOME", "'$HOME'"),
            ("f,g", "'f,g'"),
            ("~h", "'~h'"),
            ("o+p", "o+p"),
            ("", "''"),
            ("q'r", r#"'q'"'"'r'"#),
            ("'x", r#""'"'x'"#),
            ("x'", r#"'x'"'""#),
            ("a*", "'a*'"),
            ("é", "'é'"),
            ("-_./+09AZaz", "-_./+09AZaz"),
        ];
        for (input, want) in cases {
            assert_eq!(shell_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn command_lines_paste_into_a_shell() {
        let argv = words(&["sh", "-c", "sleep 0.$1; [ $1 != 3 ]", "_", "1"]);
        assert_eq!(
            command_line(Some(&argv), "", None, None),
            r#"sh -c 'sleep 0.$1; [ $1 != 3 ]' _ 1"#
        );
        let argv = words(&["./mmul"]);
        assert_eq!(
            command_line(Some(&argv), "", Some("in 1"), Some("o/x.out")),
            "./mmul < 'in 1' > o/x.out"
        );
        assert_eq!(
            command_line(None, "echo 'a b' | wc", None, Some("o")),
            "echo 'a b' | wc > o"
        );
    }

    #[test]
    fn shell_code_without_a_shell_is_spotted() {
        for bad in [
            &["wc -l < {} | tr -d ' '"][..],
            &["echo {} && ls"],
            &["cat", "{}", "|", "wc"],
            &["echo", "a", ">", "out"],
            &["echo", "$(date)"],
            &["echo", "`date`"],
            &["ls", "x", ";"],
        ] {
            assert!(shell_syntax(&words(bad)).is_some(), "{bad:?}");
        }
        for good in [
            &["echo", "{}"][..],
            &["grep", "-E", "a|b", "{}"],
            &["sh", "-c", "wc -l < $1 | tr -d ' '", "_"],
            &["bash", "-c", "echo $(date)"],
            &["find", "{}", "-exec", "ls", "{}", ";"],
            &["awk", "{print $1}"],
            &["echo", "a>b"],
        ] {
            assert_eq!(shell_syntax(&words(good)), None, "{good:?}");
        }
    }
}

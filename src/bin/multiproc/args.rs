//! Command-line parsing: clap turns argv into [`Cli`], then [`Config::from_cli`] checks every value
//! once and builds the typed [`Config`] the runner uses. Nothing after this module re-validates.
//!
//! Usage: `multiproc [OPTIONS] [--] COMMAND [ARGS...] [::: VALUE... | :::: FILE...]...`
//!
//! Everything from the first word that is not an option belongs to the command (options after it
//! are the command's own). The command ends at the first `:::` or `::::`. A `--` before the
//! command is optional, and needed only when the command itself starts with `-`.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::num::{NonZeroU32, NonZeroUsize};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::flags::{Extras, GnuFlags};
pub(crate) use crate::halt::{Halt, HaltOn, HaltWhen, Threshold};
use crate::input::InputSource;
use crate::template::{Syntax, Template, TemplateError};

/// Raw command-line arguments as clap parses them. Use [`Config::from_cli`] to validate.
#[derive(Debug, Parser)]
#[command(
    name = "multiproc",
    version,
    about = "Run a command once per input, in parallel (GNU parallel's model).",
    override_usage = "multiproc [OPTIONS] [--] COMMAND [ARGS...] [::: VALUE... | :::: FILE...]...",
    after_help = "Replacement strings: {} {.} {/} {//} {/.} {#} {%}, and {N} {N.} {N/} {N//} {N/.} \
                  for input source N (or column N with --colsep, input N with -N); {name} with \
                  --header. With none in COMMAND, the inputs are appended.\n\
                  Inputs: ::: VALUES, :::: FILES, -a FILE; several sources combine as a \
                  cartesian product, :::+ and ::::+ link a source to the one before; with none, \
                  lines of stdin. Stdin and pipes are read as jobs run; :::, regular files \
                  before the first job.\n\
                  The command runs without a shell (use --shell for pipes and redirections).\n\
                  GNU parallel flag by flag: docs/cli.md."
)]
pub(crate) struct Cli {
    /// Run N jobs at once; also N% / +N / -N of the CPUs, 0 = up to 256 [default: from SLURM]
    #[arg(
        short = 'j',
        long = "jobs",
        visible_short_alias = 'P',
        visible_alias = "max-procs",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub(crate) jobs: Option<String>,

    /// Read inputs from FILE, one per line ("-" = stdin); repeatable, one input source each
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub(crate) arg_file: Vec<PathBuf>,

    /// Print outputs in input order, not completion order
    #[arg(short = 'k', long = "keep-order")]
    pub(crate) keep_order: bool,

    /// Save each job's stdout/stderr under DIR
    #[arg(long, value_name = "DIR")]
    pub(crate) results: Option<PathBuf>,

    /// Append one line per finished job to FILE, in GNU parallel's --joblog format
    #[arg(long, value_name = "FILE")]
    pub(crate) joblog: Option<PathBuf>,

    /// Skip jobs already in --joblog (finished, whatever their exit status)
    #[arg(long, conflicts_with = "resume_failed")]
    pub(crate) resume: bool,

    /// Skip jobs that succeeded in --joblog; run failed and missing ones again
    #[arg(long = "resume-failed")]
    pub(crate) resume_failed: bool,

    /// Run a failing job up to N times in all (GNU parallel's meaning; N >= 1)
    #[arg(long, value_name = "N")]
    pub(crate) retries: Option<u32>,

    /// Kill a job (SIGTERM, then SIGKILL) that runs longer than SECS (decimal, > 0)
    #[arg(long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,

    /// When to stop: never | soon,fail=N | now,fail=N | now,fail=P% (also success=, done=)
    #[arg(long, value_name = "SPEC")]
    pub(crate) halt: Option<String>,

    /// Show a progress bar with ETA on stderr
    #[arg(long, visible_aliases = ["progress", "eta"])]
    pub(crate) bar: bool,

    /// Print the commands that would run, run nothing
    #[arg(long = "dry-run", visible_alias = "dryrun")]
    pub(crate) dry_run: bool,

    /// Run the command through `sh -c` (values are shell-quoted) instead of exec'ing it directly
    #[arg(long)]
    pub(crate) shell: bool,

    /// Feed each job's stdin from the file named by TEMPLATE (e.g. 'in/{/}')
    #[arg(long = "stdin", value_name = "TEMPLATE")]
    pub(crate) stdin: Option<String>,

    /// Write each job's stdout to the file named by TEMPLATE (e.g. 'out/{/.}.txt')
    #[arg(long = "stdout", value_name = "TEMPLATE")]
    pub(crate) stdout: Option<String>,

    /// Threads each job uses (sets the default -j and the job's thread-count variables)
    #[arg(long = "threads-per-job", value_name = "K")]
    pub(crate) threads_per_job: Option<usize>,

    /// More output (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// In a multi-node SLURM batch script: run only on these nodes (a list or hostlist, e.g. n[1-3])
    #[arg(long, value_name = "LIST")]
    pub(crate) nodes: Option<String>,

    /// GNU parallel's other everyday flags.
    #[command(flatten)]
    pub(crate) gnu: GnuFlags,

    /// COMMAND [ARGS...] [::: VALUE...] [:::: FILE...]
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// Which jobs of an earlier run to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Run every job; the joblog, if any, is truncated first (as GNU parallel does).
    No,
    /// `--resume`: skip every job in the joblog.
    All,
    /// `--resume-failed`: skip the jobs the joblog shows succeeded.
    Failed,
}

/// `-j` as GNU parallel reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Jobs {
    /// `N`: this many.
    Count(NonZeroUsize),
    /// `N%`: this share of the CPUs.
    Percent(f64),
    /// `+N` / `-N`: the CPUs plus (or minus) N.
    Relative(isize),
    /// `0`: as many as possible (all the inputs, up to [`Jobs::MAX`]).
    AsMany,
}

impl Jobs {
    /// The most jobs `-j 0` runs at once.
    pub(crate) const MAX: usize = 256;

    /// Parses `N`, `N%`, `+N`, `-N` or `0`.
    pub(crate) fn parse(text: &str) -> Option<Jobs> {
        if let Some(p) = text.strip_suffix('%') {
            let p: f64 = p.parse().ok()?;
            return (p.is_finite() && p > 0.0).then_some(Jobs::Percent(p));
        }
        if text.starts_with(['+', '-']) {
            let n: isize = text.parse().ok()?;
            return Some(Jobs::Relative(n));
        }
        let n: usize = text.parse().ok()?;
        Some(NonZeroUsize::new(n).map_or(Jobs::AsMany, Jobs::Count))
    }

    /// The number of jobs for `cpus` CPUs, at least 1.
    pub(crate) fn resolve(self, cpus: usize) -> usize {
        match self {
            Jobs::Count(n) => n.get(),
            Jobs::Percent(p) => (cpus as f64 * p / 100.0).floor() as usize,
            Jobs::Relative(n) => cpus.saturating_add_signed(n),
            Jobs::AsMany => Jobs::MAX,
        }
        .max(1)
    }
}

/// The validated configuration of one run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `-j`; `None`: the runner picks from the CPU budget.
    pub(crate) jobs: Option<Jobs>,
    /// `-k`: print outputs in input order.
    pub(crate) keep_order: bool,
    /// `--results DIR`.
    pub(crate) results: Option<PathBuf>,
    /// `--joblog FILE`.
    pub(crate) joblog: Option<PathBuf>,
    /// `--resume` / `--resume-failed` (both need `joblog`).
    pub(crate) resume: Resume,
    /// Runs of a failing job in all, at least 1 (`--retries`, default 1).
    pub(crate) max_attempts: NonZeroU32,
    /// `--timeout`: a job's wall-clock limit.
    pub(crate) timeout: Option<Duration>,
    /// `--halt`.
    pub(crate) halt: Halt,
    /// `--bar`.
    pub(crate) bar: bool,
    /// `--dry-run`.
    pub(crate) dry_run: bool,
    /// `--shell`: run through `sh -c`.
    pub(crate) shell: bool,
    /// `--stdin TEMPLATE`: a file name per job.
    pub(crate) stdin: Option<Template>,
    /// `--stdout TEMPLATE`: a file name per job.
    pub(crate) stdout: Option<Template>,
    /// `--threads-per-job`; `None`: the runner picks (SLURM_CPUS_PER_TASK in a batch script).
    pub(crate) threads_per_job: Option<NonZeroUsize>,
    /// `-v` count.
    pub(crate) verbose: u8,
    /// `--nodes`: the nodes of a multi-node allocation to run on (a SLURM hostlist; multinode).
    pub(crate) nodes: Option<String>,
    /// The command template.
    pub(crate) command: Template,
    /// The command as the user wrote it (for messages).
    pub(crate) command_words: Vec<String>,
    /// Input sources, in order; never empty (stdin when none was given).
    pub(crate) sources: Vec<InputSource>,
    /// For each source, whether it is linked to the one before (`:::+`, `::::+`, `--link`).
    pub(crate) linked: Vec<bool>,
    /// `--tag`/`--tagstring`: the tag printed before each output line.
    pub(crate) tag: Option<Template>,
    /// `--wd`: the jobs' working directory.
    pub(crate) wd: Option<Template>,
    /// The other GNU parallel flags, checked.
    pub(crate) extras: Extras,
}

/// A usage error: the run must not start. Every message names the flag and the value.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// clap rejected argv (or `--help` / `--version` was asked for).
    Clap(clap::Error),
    /// An option clap does not know: a GNU parallel option left out (saying so, and why), or no
    /// option at all.
    UnknownOption {
        /// The whole message.
        message: String,
    },
    /// A flag's value is out of range or malformed.
    InvalidValue {
        /// The flag, e.g. `--jobs`.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A replacement string in the command or a `--stdin`/`--stdout` template is wrong.
    Template {
        /// `COMMAND`, `--stdin` or `--stdout`.
        flag: &'static str,
        /// What is wrong.
        source: TemplateError,
    },
    /// No command before `:::`/`::::` (or at all).
    MissingCommand,
    /// The command is shell code but `--shell` was not given.
    NeedsShell {
        /// What looks like shell code.
        why: String,
    },
    /// An input file cannot be read.
    InputFile {
        /// `--arg-file` or `::::`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A flag that needs another one, e.g. `--resume` without `--joblog`.
    Requires {
        /// The flag given.
        flag: &'static str,
        /// The flag it needs.
        needs: &'static str,
    },
}

impl ConfigError {
    /// The process exit code: 0 for `--help`/`--version`, 2 for every usage error.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Clap(e) => e.exit_code(),
            _ => 2,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Clap(e) => write!(f, "{e}"),
            ConfigError::UnknownOption { message } => f.write_str(message),
            ConfigError::InvalidValue {
                flag,
                value,
                reason,
            } => write!(f, "invalid value '{value}' for {flag}: {reason}"),
            ConfigError::Template { flag, source } => write!(f, "{flag}: {source}"),
            ConfigError::MissingCommand => f.write_str(
                "no COMMAND given (usage: multiproc [OPTIONS] [--] COMMAND [ARGS...] ::: VALUE...)",
            ),
            ConfigError::NeedsShell { why } => write!(
                f,
                "COMMAND looks like shell code ({why}), but multiproc runs commands without a \
                 shell: add --shell to run it with sh -c"
            ),
            ConfigError::InputFile { flag, path, source } => write!(
                f,
                "cannot read input file '{}' (given to {flag}): {source}",
                path.display()
            ),
            ConfigError::Requires { flag, needs } => write!(f, "{flag} needs {needs}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Clap(e) => Some(e),
            ConfigError::Template { source, .. } => Some(source),
            ConfigError::InputFile { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Config {
    /// Parses and validates argv (`args[0]` is the program name).
    ///
    /// # Errors
    /// [`ConfigError`] for anything wrong; see [`ConfigError::exit_code`].
    pub(crate) fn parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            match (e.kind(), e.get(ContextKind::InvalidArg)) {
                (ErrorKind::UnknownArgument, Some(ContextValue::String(flag))) => {
                    ConfigError::UnknownOption {
                        message: crate::gnu::unknown_option_message(flag),
                    }
                }
                _ => ConfigError::Clap(e),
            }
        })?;
        Config::from_cli(cli)
    }

    /// Validates clap's output into a [`Config`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad flag and its value.
    pub(crate) fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let jobs = match &cli.jobs {
            None => None,
            Some(text) => Some(Jobs::parse(text).ok_or_else(|| ConfigError::InvalidValue {
                flag: "--jobs",
                value: text.clone(),
                reason: "expected N, N% or +N/-N (of the CPUs), or 0 (as many as possible)".into(),
            })?),
        };
        let threads_per_job = match cli.threads_per_job {
            None => None,
            Some(k) => Some(
                NonZeroUsize::new(k).ok_or_else(|| ConfigError::InvalidValue {
                    flag: "--threads-per-job",
                    value: k.to_string(),
                    reason: "must be at least 1".into(),
                })?,
            ),
        };
        let max_attempts = match cli.retries {
            None => NonZeroU32::MIN,
            Some(n) => NonZeroU32::new(n).ok_or_else(|| ConfigError::InvalidValue {
                flag: "--retries",
                value: n.to_string(),
                reason: "must be at least 1 (it counts all runs of a job; GNU parallel's \
                         0 = retry forever is not supported)"
                    .into(),
            })?,
        };
        let timeout = match cli.timeout {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(ConfigError::InvalidValue {
                    flag: "--timeout",
                    value: s.to_string(),
                    reason: "must be a number of seconds > 0".into(),
                });
            }
        };
        let halt = match &cli.halt {
            None => Halt::Never,
            Some(spec) => Halt::parse(spec).ok_or_else(|| ConfigError::InvalidValue {
                flag: "--halt",
                value: spec.clone(),
                reason: "expected never, soon,fail=N, now,fail=N or now,fail=P% \
                         (N >= 1, 0 < P <= 100; also success= and done=)"
                    .into(),
            })?,
        };
        let resume = match (cli.resume, cli.resume_failed) {
            (true, _) => Resume::All,
            (false, true) => Resume::Failed,
            (false, false) => Resume::No,
        };
        if resume != Resume::No && cli.joblog.is_none() {
            return Err(ConfigError::Requires {
                flag: if cli.resume {
                    "--resume"
                } else {
                    "--resume-failed"
                },
                needs: "--joblog FILE",
            });
        }

        let (mut command_words, groups) = split_command(&cli.command);
        // GNU parallel users write the command as one string ('convert {} {.}.png'): without
        // other shell syntax it is split into words as sh would, and run without a shell.
        if !cli.shell
            && let [line] = command_words.as_slice()
            && line.contains(char::is_whitespace)
            && !Path::new(line).exists()
            && let Some(words) = crate::quote::split_words(line)
            && !words.is_empty()
        {
            command_words = words;
        }
        if command_words.is_empty() {
            return Err(ConfigError::MissingCommand);
        }
        if !cli.shell
            && !cli.gnu.quote
            && let Some(why) = crate::quote::shell_syntax(&command_words)
        {
            return Err(ConfigError::NeedsShell { why });
        }
        let mut sources = Vec::new();
        let extras = cli.gnu.check()?;
        let mut linked = Vec::new();
        for path in &cli.arg_file {
            sources.push(file_source("--arg-file", path)?);
            linked.push(false);
        }
        for group in groups {
            match group {
                Group::Values(v, link) => {
                    sources.push(InputSource::Args(v));
                    linked.push(link);
                }
                Group::Files(files, link) => {
                    if files.is_empty() {
                        return Err(ConfigError::InvalidValue {
                            flag: "::::",
                            value: String::new(),
                            reason: "needs at least one FILE".into(),
                        });
                    }
                    for (i, f) in files.iter().enumerate() {
                        sources.push(file_source("::::", Path::new(f))?);
                        linked.push(link && i == 0);
                    }
                }
            }
        }
        if sources.is_empty() {
            sources.push(InputSource::Stdin);
            linked.push(false);
        }
        if extras.shape.link_all {
            linked.iter_mut().skip(1).for_each(|l| *l = true);
        }
        linked[0] = false;
        if extras.pipe.is_some()
            && (sources.len() > 1 || matches!(sources[0], InputSource::Args(_)))
        {
            return Err(ConfigError::InvalidValue {
                flag: "--pipe",
                value: cli.command.join(" "),
                reason: "reads blocks of stdin or of one -a FILE, not ::: values".into(),
            });
        }
        if sources.iter().filter(|s| **s == InputSource::Stdin).count() > 1 {
            return Err(ConfigError::InvalidValue {
                flag: "--arg-file",
                value: "-".into(),
                reason: "stdin can be only one input source".into(),
            });
        }

        let shape = &extras.shape;
        let syntax = Syntax {
            positions: if shape.colsep.is_some() || shape.per_job.is_some() || shape.multi.is_some()
            {
                None
            } else {
                Some(sources.len())
            },
            replace: extras.replace.clone(),
            names: shape.header,
        };
        let mut command =
            Template::parse(&command_words, &syntax).map_err(|source| ConfigError::Template {
                flag: "COMMAND",
                source,
            })?;
        if let Some(m) = shape.multi {
            command.set_multi(m);
        }
        let single = |flag: &'static str, t: &Option<String>| {
            t.as_deref()
                .map(|t| Template::parse_single(t, &syntax))
                .transpose()
                .map_err(|source| ConfigError::Template { flag, source })
        };
        let stdin = single("--stdin", &cli.stdin)?;
        let stdout = single("--stdout", &cli.stdout)?;
        let tag = single("--tagstring", &extras.tag)?;
        let wd = single("--wd", &extras.wd)?;

        Ok(Config {
            jobs,
            keep_order: cli.keep_order,
            results: cli.results,
            joblog: cli.joblog,
            resume,
            max_attempts,
            timeout,
            halt,
            bar: cli.bar,
            dry_run: cli.dry_run,
            shell: cli.shell && !cli.gnu.quote,
            stdin,
            stdout,
            threads_per_job,
            verbose: cli.verbose,
            nodes: match cli.nodes {
                Some(list) if list.trim().is_empty() => {
                    return Err(ConfigError::InvalidValue {
                        flag: "--nodes",
                        value: list,
                        reason: "an empty node list".into(),
                    });
                }
                nodes => nodes,
            },
            command,
            command_words,
            sources,
            linked,
            tag,
            wd,
            extras,
        })
    }
}

/// An input group after the command.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// `::: VALUE...` (one source); linked to the one before (`:::+`).
    Values(Vec<String>, bool),
    /// `:::: FILE...` (one source per file); the first linked to the one before (`::::+`).
    Files(Vec<String>, bool),
}

/// Splits `COMMAND ARGS... ::: A B :::: F` into the command words and the input groups.
fn split_command(words: &[String]) -> (Vec<String>, Vec<Group>) {
    let is_sep = |w: &String| matches!(w.as_str(), ":::" | "::::" | ":::+" | "::::+");
    let cmd_end = words.iter().position(is_sep).unwrap_or(words.len());
    let command = words[..cmd_end].to_vec();
    let mut groups = Vec::new();
    let mut rest = &words[cmd_end..];
    while let Some((sep, tail)) = rest.split_first() {
        let end = tail.iter().position(is_sep).unwrap_or(tail.len());
        let items = tail[..end].to_vec();
        groups.push(match sep.as_str() {
            ":::" => Group::Values(items, false),
            ":::+" => Group::Values(items, true),
            "::::" => Group::Files(items, false),
            _ => Group::Files(items, true),
        });
        rest = &tail[end..];
    }
    (command, groups)
}

/// Checks that an input file can be read now, so a typo fails before any job runs.
fn file_source(flag: &'static str, path: &Path) -> Result<InputSource, ConfigError> {
    if path == Path::new("-") {
        return Ok(InputSource::Stdin);
    }
    let err = |source| ConfigError::InputFile {
        flag,
        path: path.to_owned(),
        source,
    };
    // A FIFO (`<(cmd)` names a pipe, or `mkfifo`) is not opened to check it: that open would
    // meet the writer, and closing it would end the writer's input before the jobs read it.
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    if is_fifo {
        nix::unistd::access(path, nix::unistd::AccessFlags::R_OK).map_err(|e| err(e.into()))?;
        return Ok(InputSource::File(path.to_owned()));
    }
    let file = std::fs::File::open(path).map_err(err)?;
    // Opening a directory succeeds on Linux; reading it fails later. Fail now.
    if file.metadata().map_err(err)?.is_dir() {
        return Err(err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    Ok(InputSource::File(path.to_owned()))
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;

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
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::input::InputSource;
use crate::template::{Template, TemplateError};

/// Raw command-line arguments as clap parses them. Use [`Config::from_cli`] to validate.
#[derive(Debug, Parser)]
#[command(
    name = "multiproc",
    version,
    about = "Run a command once per input, in parallel (GNU parallel's model).",
    override_usage = "multiproc [OPTIONS] [--] COMMAND [ARGS...] [::: VALUE... | :::: FILE...]...",
    after_help = "Replacement strings: {} {.} {/} {//} {/.} {#} {%}, and {N} {N.} {N/} {N//} {N/.} \
                  for input source N. With none in COMMAND, the inputs are appended.\n\
                  Inputs: ::: VALUES, :::: FILES, -a FILE; several sources combine as a \
                  cartesian product; with none, lines of stdin. Stdin and pipes are read as \
                  jobs run (jobs start as lines come); :::, regular files before the first job."
)]
pub(crate) struct Cli {
    /// Run N jobs at once [default: CPUs / --threads-per-job]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<usize>,

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

    /// Show a progress bar on stderr
    #[arg(long)]
    pub(crate) bar: bool,

    /// Print the commands that would run, run nothing
    #[arg(long = "dry-run")]
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

/// When `--halt` acts: after the running jobs end (`soon`) or at once, killing them (`now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltWhen {
    /// Start no new jobs; wait for the running ones.
    Soon,
    /// Kill the running jobs.
    Now,
}

/// Which finished jobs `--halt` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltOn {
    /// Failed jobs.
    Fail,
    /// Succeeded jobs.
    Success,
    /// All finished jobs.
    Done,
}

/// How many counted jobs trigger `--halt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Threshold {
    /// This many jobs.
    Count(NonZeroU64),
    /// This percentage of all jobs, in (0, 100].
    Percent(f64),
}

/// A parsed `--halt` spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Halt {
    /// Never stop early (the default).
    Never,
    /// Stop when the threshold is reached.
    When {
        /// Soon or now.
        when: HaltWhen,
        /// What is counted.
        on: HaltOn,
        /// How many.
        threshold: Threshold,
    },
}

impl Halt {
    /// Parses `never`, `soon|now,fail|success|done=N|P%`, or GNU parallel's legacy `0`, `1`, `2`
    /// (never; soon,fail=1; now,fail=1). `None` if the spec is malformed.
    pub(crate) fn parse(spec: &str) -> Option<Halt> {
        let one = NonZeroU64::MIN;
        match spec {
            "never" | "0" => return Some(Halt::Never),
            "1" => return Some(halt(HaltWhen::Soon, HaltOn::Fail, Threshold::Count(one))),
            "2" => return Some(halt(HaltWhen::Now, HaltOn::Fail, Threshold::Count(one))),
            _ => {}
        }
        let (when, cond) = spec.split_once(',')?;
        let when = match when {
            "soon" => HaltWhen::Soon,
            "now" => HaltWhen::Now,
            _ => return None,
        };
        let (on, value) = cond.split_once('=')?;
        let on = match on {
            "fail" => HaltOn::Fail,
            "success" => HaltOn::Success,
            "done" => HaltOn::Done,
            _ => return None,
        };
        let threshold = match value.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.parse().ok()?;
                // `p > 0.0` is false for NaN too.
                if !(p > 0.0 && p <= 100.0) {
                    return None;
                }
                Threshold::Percent(p)
            }
            None => Threshold::Count(value.parse().ok()?),
        };
        Some(halt(when, on, threshold))
    }
}

fn halt(when: HaltWhen, on: HaltOn, threshold: Threshold) -> Halt {
    Halt::When {
        when,
        on,
        threshold,
    }
}

/// The validated configuration of one run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Jobs at once; `None`: the runner picks CPUs / `threads_per_job` (at least 1).
    pub(crate) jobs: Option<NonZeroUsize>,
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
        let jobs = match cli.jobs {
            None => None,
            Some(n) => Some(
                NonZeroUsize::new(n).ok_or_else(|| ConfigError::InvalidValue {
                    flag: "--jobs",
                    value: n.to_string(),
                    reason: "must be at least 1".into(),
                })?,
            ),
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

        let (command_words, groups) = split_command(&cli.command);
        if command_words.is_empty() {
            return Err(ConfigError::MissingCommand);
        }
        if !cli.shell
            && let Some(why) = crate::quote::shell_syntax(&command_words)
        {
            return Err(ConfigError::NeedsShell { why });
        }
        let mut sources = Vec::new();
        for path in &cli.arg_file {
            sources.push(file_source("--arg-file", path)?);
        }
        for group in groups {
            match group {
                Group::Values(v) => sources.push(InputSource::Args(v)),
                Group::Files(files) => {
                    if files.is_empty() {
                        return Err(ConfigError::InvalidValue {
                            flag: "::::",
                            value: String::new(),
                            reason: "needs at least one FILE".into(),
                        });
                    }
                    for f in files {
                        sources.push(file_source("::::", Path::new(&f))?);
                    }
                }
            }
        }
        if sources.is_empty() {
            sources.push(InputSource::Stdin);
        }
        if sources.iter().filter(|s| **s == InputSource::Stdin).count() > 1 {
            return Err(ConfigError::InvalidValue {
                flag: "--arg-file",
                value: "-".into(),
                reason: "stdin can be only one input source".into(),
            });
        }

        let n = sources.len();
        let command =
            Template::parse(&command_words, n).map_err(|source| ConfigError::Template {
                flag: "COMMAND",
                source,
            })?;
        let single = |flag: &'static str, t: &Option<String>| {
            t.as_deref()
                .map(|t| Template::parse_single(t, n))
                .transpose()
                .map_err(|source| ConfigError::Template { flag, source })
        };
        let stdin = single("--stdin", &cli.stdin)?;
        let stdout = single("--stdout", &cli.stdout)?;

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
            shell: cli.shell,
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
        })
    }
}

/// An input group after the command.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// `::: VALUE...` (one source).
    Values(Vec<String>),
    /// `:::: FILE...` (one source per file).
    Files(Vec<String>),
}

/// Splits `COMMAND ARGS... ::: A B :::: F` into the command words and the input groups.
fn split_command(words: &[String]) -> (Vec<String>, Vec<Group>) {
    let is_sep = |w: &String| w == ":::" || w == "::::";
    let cmd_end = words.iter().position(is_sep).unwrap_or(words.len());
    let command = words[..cmd_end].to_vec();
    let mut groups = Vec::new();
    let mut rest = &words[cmd_end..];
    while let Some((sep, tail)) = rest.split_first() {
        let end = tail.iter().position(is_sep).unwrap_or(tail.len());
        let items = tail[..end].to_vec();
        groups.push(if sep == ":::" {
            Group::Values(items)
        } else {
            Group::Files(items)
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
mod tests {
    use super::*;
    use crate::template::JobValues;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_from(std::iter::once("multiproc").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Config {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn err(args: &[&str]) -> String {
        let e = parse(args).expect_err("should fail");
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults() {
        let c = ok(&["echo", ":::", "a", "b"]);
        assert_eq!(c.jobs, None);
        assert!(!c.keep_order && !c.bar && !c.dry_run && !c.shell);
        assert_eq!(c.resume, Resume::No);
        assert_eq!(c.max_attempts.get(), 1);
        assert_eq!(c.timeout, None);
        assert_eq!(c.halt, Halt::Never);
        assert_eq!(c.threads_per_job, None);
        assert_eq!(c.verbose, 0);
        assert_eq!(c.command_words, ["echo"]);
        assert_eq!(c.sources, [InputSource::Args(strings(&["a", "b"]))]);
    }

    #[test]
    fn all_flags() {
        let dir = tempdir("all_flags");
        let f = dir.join("in.txt");
        std::fs::write(&f, "x\n").unwrap();
        let f = f.to_str().unwrap();
        let c = ok(&[
            "-j",
            "3",
            "-a",
            f,
            "-k",
            "--results",
            "res",
            "--joblog",
            "log.tsv",
            "--resume-failed",
            "--retries",
            "4",
            "--timeout",
            "1.5",
            "--halt",
            "now,fail=10%",
            "--bar",
            "--dry-run",
            "--shell",
            "--stdin",
            "in/{/}",
            "--stdout",
            "out/{#}.txt",
            "--threads-per-job",
            "2",
            "-vv",
            "--",
            "gzip",
            "-9",
            "{}",
        ]);
        assert_eq!(c.jobs.unwrap().get(), 3);
        assert!(c.keep_order && c.bar && c.dry_run && c.shell);
        assert_eq!(c.results.as_deref(), Some(Path::new("res")));
        assert_eq!(c.joblog.as_deref(), Some(Path::new("log.tsv")));
        assert_eq!(c.resume, Resume::Failed);
        assert_eq!(c.max_attempts.get(), 4);
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            c.halt,
            halt(HaltWhen::Now, HaltOn::Fail, Threshold::Percent(10.0))
        );
        assert_eq!(c.threads_per_job.map(NonZeroUsize::get), Some(2));
        assert_eq!(c.verbose, 2);
        assert_eq!(c.command_words, ["gzip", "-9", "{}"]);
        assert_eq!(c.sources, [InputSource::File(f.into())]);
        let args = strings(&["d/x.gz"]);
        let job = JobValues {
            seq: 5,
            slot: 1,
            args: &args,
        };
        assert_eq!(c.stdin.unwrap().render_single(&job), "in/x.gz");
        assert_eq!(c.stdout.unwrap().render_single(&job), "out/5.txt");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn command_options_belong_to_the_command() {
        // Without `--`, everything from the command on is the command's.
        let c = ok(&["-j2", "grep", "-v", "-k", "x", ":::", "-j"]);
        assert_eq!(c.jobs.unwrap().get(), 2);
        assert!(!c.keep_order);
        assert_eq!(c.command_words, ["grep", "-v", "-k", "x"]);
        assert_eq!(c.sources, [InputSource::Args(strings(&["-j"]))]);
        // A command starting with `-` needs `--`.
        let c = ok(&["--", "-weird", ":::", "a"]);
        assert_eq!(c.command_words, ["-weird"]);
    }

    #[test]
    fn input_groups_in_order() {
        let dir = tempdir("groups");
        let (f1, f2) = (dir.join("f1"), dir.join("f2"));
        std::fs::write(&f1, "1\n").unwrap();
        std::fs::write(&f2, "2\n").unwrap();
        let (s1, s2) = (f1.to_str().unwrap(), f2.to_str().unwrap());
        let c = ok(&[
            "-a", s2, "echo", ":::", "a", "b", "::::", s1, s2, ":::", "c",
        ]);
        assert_eq!(
            c.sources,
            [
                InputSource::File(f2.clone()),
                InputSource::Args(strings(&["a", "b"])),
                InputSource::File(f1),
                InputSource::File(f2),
                InputSource::Args(strings(&["c"])),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stdin_sources() {
        assert_eq!(ok(&["echo"]).sources, [InputSource::Stdin]);
        assert_eq!(ok(&["-a", "-", "echo"]).sources, [InputSource::Stdin]);
        assert_eq!(ok(&["echo", "::::", "-"]).sources, [InputSource::Stdin]);
        let e = err(&["-a", "-", "echo", "::::", "-"]);
        assert_eq!(
            e,
            "invalid value '-' for --arg-file: stdin can be only one input source"
        );
    }

    #[test]
    fn an_empty_value_group_is_an_empty_source() {
        // GNU parallel runs no job for `echo :::` and exits 0; so do we.
        assert_eq!(ok(&["echo", ":::"]).sources, [InputSource::Args(vec![])]);
    }

    #[test]
    fn zero_jobs_and_threads_are_errors() {
        assert_eq!(
            err(&["-j", "0", "echo"]),
            "invalid value '0' for --jobs: must be at least 1"
        );
        assert_eq!(
            err(&["--threads-per-job", "0", "echo"]),
            "invalid value '0' for --threads-per-job: must be at least 1"
        );
        assert!(err(&["--retries", "0", "echo"]).starts_with("invalid value '0' for --retries"));
    }

    #[test]
    fn non_numbers_are_clap_errors_naming_the_flag() {
        let e = err(&["-j", "many", "echo"]);
        assert!(e.contains("'many'") && e.contains("--jobs"), "{e}");
        let e = err(&["--timeout", "soon", "echo"]);
        assert!(e.contains("'soon'") && e.contains("--timeout"), "{e}");
    }

    #[test]
    fn bad_timeouts() {
        for t in ["0", "-1", "NaN", "inf", "1e10"] {
            let e = err(&[&format!("--timeout={t}"), "echo"]);
            assert!(
                e.starts_with("invalid value '") && e.contains("--timeout"),
                "{e}"
            );
        }
    }

    #[test]
    fn halt_specs() {
        let one = NonZeroU64::MIN;
        let n = |v| Threshold::Count(NonZeroU64::new(v).unwrap());
        let cases = [
            ("never", Halt::Never),
            ("0", Halt::Never),
            (
                "1",
                halt(HaltWhen::Soon, HaltOn::Fail, Threshold::Count(one)),
            ),
            (
                "2",
                halt(HaltWhen::Now, HaltOn::Fail, Threshold::Count(one)),
            ),
            ("now,fail=1", halt(HaltWhen::Now, HaltOn::Fail, n(1))),
            ("soon,fail=3", halt(HaltWhen::Soon, HaltOn::Fail, n(3))),
            (
                "now,fail=25%",
                halt(HaltWhen::Now, HaltOn::Fail, Threshold::Percent(25.0)),
            ),
            (
                "soon,done=0.5%",
                halt(HaltWhen::Soon, HaltOn::Done, Threshold::Percent(0.5)),
            ),
            ("now,success=2", halt(HaltWhen::Now, HaltOn::Success, n(2))),
        ];
        for (spec, want) in cases {
            assert_eq!(Halt::parse(spec), Some(want), "{spec}");
        }
        for bad in [
            "",
            "later",
            "now",
            "now,",
            "now,fail",
            "now,fail=",
            "now,fail=0",
            "now,fail=-1",
            "now,fail=0%",
            "now,fail=101%",
            "now,fail=x%",
            "now,fail=NaN%",
            "now,oops=1",
            "3",
            "soon,fail=1,x",
        ] {
            assert_eq!(Halt::parse(bad), None, "{bad:?}");
        }
        let e = err(&["--halt", "now,fail=150%", "echo"]);
        assert!(
            e.starts_with("invalid value 'now,fail=150%' for --halt: expected never"),
            "{e}"
        );
    }

    #[test]
    fn resume_needs_a_joblog() {
        assert_eq!(err(&["--resume", "echo"]), "--resume needs --joblog FILE");
        assert_eq!(
            err(&["--resume-failed", "echo"]),
            "--resume-failed needs --joblog FILE"
        );
        assert_eq!(
            ok(&["--resume", "--joblog", "j", "echo"]).resume,
            Resume::All
        );
        // Both at once is a clap conflict.
        let e = err(&["--resume", "--resume-failed", "--joblog", "j", "echo"]);
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn missing_command() {
        let want = "no COMMAND given";
        assert!(err(&[]).starts_with(want));
        assert!(err(&["-j", "2", ":::", "a"]).starts_with(want));
        assert!(err(&["--", ":::", "a"]).starts_with(want));
    }

    #[test]
    fn unknown_replacement_strings() {
        assert_eq!(
            err(&["echo", "{foo}", ":::", "a"]).lines().next().unwrap(),
            "COMMAND: unknown replacement string {foo} in '{foo}' (known: {} {.} {/} {//} {/.} \
             {#} {%} and {N} {N.} {N/} {N//} {N/.})"
        );
        assert!(err(&["--stdout", "o/{bar}", "echo"]).starts_with("--stdout: unknown"));
        assert!(err(&["--stdin", "{x}", "echo"]).starts_with("--stdin: unknown"));
        assert_eq!(
            err(&["echo", "{2}", ":::", "a"]),
            "COMMAND: replacement string {2} names an input source that does not exist \
             (there is 1)"
        );
    }

    #[test]
    fn unreadable_input_files() {
        let e = err(&["-a", "/nonexistent/in.txt", "echo"]);
        assert!(
            e.starts_with("cannot read input file '/nonexistent/in.txt' (given to --arg-file): "),
            "{e}"
        );
        let e = err(&["echo", "::::", "/nonexistent/f"]);
        assert!(e.contains("(given to ::::)"), "{e}");
        let e = err(&["echo", "::::", "/tmp"]);
        assert!(e.ends_with("is a directory"), "{e}");
        let e = err(&["echo", "::::"]);
        assert_eq!(e, "invalid value '' for ::::: needs at least one FILE");
    }

    #[test]
    fn help_and_version_exit_zero() {
        for flag in ["--help", "--version"] {
            let e = parse(&[flag]).unwrap_err();
            assert_eq!(e.exit_code(), 0, "{flag}");
        }
        // An unknown flag is a clap usage error: exit 2.
        let e = parse(&["--frobnicate", "echo"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("multiproc-args-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

//! Command line, replacement strings and joblog: a small stand-in for the `args`, `template`
//! and `joblog` modules of the `cli` branch, so that the engine runs end to end before they land.
//!
//! - [`Config::parse`]: flags (GNU parallel's names) → a validated [`Config`]; usage errors are
//!   [`UsageError`]s (exit 2) that name the bad flag or value.
//! - [`Template`]: `{} {.} {/} {//} {/.} {#} {%}` and `{N}` forms; the input is appended when no
//!   replacement string appears anywhere.
//! - [`JobLogWriter`] / [`read_joblog`]: GNU parallel's TSV joblog, flushed per line.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::engine::{HaltWhen, JobLog};
use crate::job::{Job, JobOutcome, shell_quote};

/// An error found before any job starts: printed, then exit status 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Run batch programs over many inputs, like GNU parallel, sized for SLURM job scripts.
///
/// multiproc [OPTIONS] [--] COMMAND [ARGS...] [::: INPUT... | :::: FILE...]
#[derive(Debug, Parser)]
#[command(name = "multiproc", version, about)]
struct Flags {
    /// Jobs at once (default: the CPUs of the job's allocation, see --verbose).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    jobs: Option<usize>,
    /// Print each job's output in input order.
    #[arg(short = 'k', long = "keep-order")]
    keep_order: bool,
    /// Write GNU parallel's TSV joblog to FILE, one line per job as it ends.
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,
    /// Skip jobs already in the joblog.
    #[arg(long, requires = "joblog")]
    resume: bool,
    /// Skip jobs that succeeded in the joblog; run the failed ones again.
    #[arg(long = "resume-failed", requires = "joblog")]
    resume_failed: bool,
    /// Run a failed job up to N times more.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// End a job after SECS seconds (SIGTERM, then SIGKILL 2 s later).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Stop on failures: now,fail=N | soon,fail=N | now,fail=P%.
    #[arg(long, value_name = "WHEN,fail=N")]
    halt: Option<String>,
    /// Show a progress bar with ETA on stderr.
    #[arg(long)]
    bar: bool,
    /// Print the commands instead of running them.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Print a header line (jobs at once and why) on stderr.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Run the command through `sh -c`.
    #[arg(long)]
    shell: bool,
    /// A job's stdin file (a template, e.g. `{}`).
    #[arg(long, value_name = "TEMPLATE")]
    stdin: Option<String>,
    /// A job's stdout file (a template, e.g. `{}.out`).
    #[arg(long, value_name = "TEMPLATE")]
    stdout: Option<String>,
    /// Keep each job's stdout, stderr and seq under DIR/1/INPUT/.
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Threads per job (OMP_NUM_THREADS...); divides the default -j.
    #[arg(long = "threads-per-job", value_name = "K")]
    threads_per_job: Option<usize>,
    /// Read inputs from FILE, one per line (repeatable: one input source each).
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    arg_file: Vec<PathBuf>,
    /// The command, then `:::` inputs or `::::` files.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    rest: Vec<String>,
}

/// `--halt` as given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HaltSpec {
    /// Now or soon.
    pub(crate) when: HaltWhen,
    /// A count of failed jobs, or a percentage of all jobs.
    pub(crate) fail: HaltFail,
}

/// The failure threshold of `--halt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HaltFail {
    /// After N failed jobs.
    Count(u64),
    /// After P% of all jobs failed.
    Percent(f64),
}

/// The validated command line.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) jobs: Option<usize>,
    pub(crate) keep_order: bool,
    pub(crate) joblog: Option<PathBuf>,
    pub(crate) resume: bool,
    pub(crate) resume_failed: bool,
    pub(crate) retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) halt: Option<HaltSpec>,
    pub(crate) bar: bool,
    pub(crate) dry_run: bool,
    pub(crate) verbose: bool,
    pub(crate) shell: bool,
    pub(crate) stdin: Option<Template>,
    pub(crate) stdout: Option<Template>,
    pub(crate) results: Option<PathBuf>,
    pub(crate) threads_per_job: Option<usize>,
    pub(crate) command: Vec<Template>,
    /// One list per input source; jobs are their combinations, last source fastest.
    pub(crate) sources: Vec<Vec<String>>,
}

impl Config {
    /// Parses and checks the command line; reads the input sources.
    ///
    /// # Errors
    ///
    /// Clap's own errors (help, version, unknown flags) are returned as they are; everything
    /// else is a [`UsageError`].
    pub(crate) fn parse(args: Vec<String>) -> Result<Config, Box<dyn std::error::Error>> {
        let f = Flags::try_parse_from(args)?;
        if f.jobs == Some(0) {
            return Err(usage("invalid value '0' for '--jobs <N>': at least 1 job at once").into());
        }
        if f.threads_per_job == Some(0) {
            return Err(usage("invalid value '0' for '--threads-per-job <K>': at least 1").into());
        }
        if f.resume && f.resume_failed {
            return Err(usage("--resume and --resume-failed exclude each other").into());
        }
        let timeout = match f.timeout {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(usage(format!(
                    "invalid value '{s}' for '--timeout <SECS>': a positive number of seconds"
                ))
                .into());
            }
        };
        let halt = f.halt.as_deref().map(parse_halt).transpose()?;
        // Split the command from ::: / :::: groups.
        let mut command = Vec::new();
        let mut sources: Vec<Vec<String>> = Vec::new();
        let mut mode = None::<bool>; // Some(false): ::: values, Some(true): :::: files
        for word in f.rest {
            match word.as_str() {
                ":::" => {
                    mode = Some(false);
                    sources.push(Vec::new());
                }
                "::::" => {
                    mode = Some(true);
                    sources.push(Vec::new());
                }
                _ => match mode {
                    None => command.push(word),
                    Some(false) => sources.last_mut().expect("a source").push(word),
                    Some(true) => {
                        let lines = read_lines(Path::new(&word))?;
                        sources.last_mut().expect("a source").extend(lines);
                    }
                },
            }
        }
        for file in &f.arg_file {
            sources.push(read_lines(file)?);
        }
        if command.is_empty() {
            return Err(usage("missing command: multiproc [OPTIONS] -- COMMAND [ARGS...] ::: INPUT...").into());
        }
        if sources.is_empty() {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| usage(format!("cannot read inputs from stdin: {e}")))?;
            sources.push(text.lines().map(str::to_string).collect());
        }
        let command = command
            .iter()
            .map(|w| Template::parse(w))
            .collect::<Result<Vec<_>, _>>()?;
        let stdin = f.stdin.as_deref().map(Template::parse).transpose()?;
        let stdout = f.stdout.as_deref().map(Template::parse).transpose()?;
        Ok(Config {
            jobs: f.jobs,
            keep_order: f.keep_order,
            joblog: f.joblog,
            resume: f.resume,
            resume_failed: f.resume_failed,
            retries: f.retries,
            timeout,
            halt,
            bar: f.bar,
            dry_run: f.dry_run,
            verbose: f.verbose,
            shell: f.shell,
            stdin,
            stdout,
            results: f.results,
            threads_per_job: f.threads_per_job,
            command,
            sources,
        })
    }

    /// How many jobs the inputs make (the product of the sources' lengths).
    pub(crate) fn total(&self) -> u64 {
        self.sources.iter().map(|s| s.len() as u64).product()
    }

    /// The inputs of job `seq` (from 1): one value per source.
    pub(crate) fn args_of(&self, seq: u64) -> Vec<String> {
        let mut i = seq - 1;
        let mut args = vec![String::new(); self.sources.len()];
        for (k, src) in self.sources.iter().enumerate().rev() {
            let n = src.len() as u64;
            args[k] = src[(i % n) as usize].clone();
            i /= n;
        }
        args
    }

    /// Whether any template uses a replacement string (else the input is appended).
    pub(crate) fn uses_input(&self) -> bool {
        self.command
            .iter()
            .chain(&self.stdin)
            .chain(&self.stdout)
            .any(Template::has_input)
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, UsageError> {
    let file = File::open(path)
        .map_err(|e| usage(format!("cannot read input file {}: {e}", path.display())))?;
    io::BufReader::new(file)
        .lines()
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| usage(format!("cannot read input file {}: {e}", path.display())))
}

fn parse_halt(spec: &str) -> Result<HaltSpec, UsageError> {
    let bad = || {
        usage(format!(
            "invalid value '{spec}' for '--halt <WHEN,fail=N>': expected now,fail=N, soon,fail=N or now,fail=P%"
        ))
    };
    let (when, rest) = spec.split_once(',').ok_or_else(bad)?;
    let when = match when {
        "now" => HaltWhen::Now,
        "soon" => HaltWhen::Soon,
        _ => return Err(bad()),
    };
    let value = rest.strip_prefix("fail=").ok_or_else(bad)?;
    let fail = match value.strip_suffix('%') {
        Some(p) => match p.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => HaltFail::Percent(p),
            _ => return Err(bad()),
        },
        None => match value.parse::<u64>() {
            Ok(n) if n >= 1 => HaltFail::Count(n),
            _ => return Err(bad()),
        },
    };
    Ok(HaltSpec { when, fail })
}

/// One part of a template word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// A replacement: which source (None: all, joined by spaces) and which transform.
    Input(Option<usize>, Transform),
    Seq,
    Slot,
}

/// What a replacement string does to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    Whole,
    NoExt,
    Base,
    Dir,
    BaseNoExt,
}

/// A command word or file name with replacement strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Part>);

impl Template {
    /// Parses a word; `{...}` that looks like a replacement string but is none is an error.
    pub(crate) fn parse(word: &str) -> Result<Template, UsageError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = word;
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                lit.push_str(&rest[open..]);
                rest = "";
                break;
            };
            let inner = &after[..close];
            let looks = inner
                .chars()
                .all(|c| c.is_ascii_digit() || "./#%".contains(c));
            if !looks {
                lit.push('{');
                rest = after;
                continue;
            }
            let digits: String = inner.chars().take_while(char::is_ascii_digit).collect();
            let op = &inner[digits.len()..];
            let source = if digits.is_empty() {
                None
            } else {
                match digits.parse::<usize>() {
                    Ok(n) if n >= 1 => Some(n - 1),
                    _ => return Err(unknown(word, inner)),
                }
            };
            let part = match (source, op) {
                (None, "#") => Part::Seq,
                (None, "%") => Part::Slot,
                (s, "") => Part::Input(s, Transform::Whole),
                (s, ".") => Part::Input(s, Transform::NoExt),
                (s, "/") => Part::Input(s, Transform::Base),
                (s, "//") => Part::Input(s, Transform::Dir),
                (s, "/.") => Part::Input(s, Transform::BaseNoExt),
                _ => return Err(unknown(word, inner)),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            rest = &after[close + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template(parts))
    }

    fn has_input(&self) -> bool {
        self.0.iter().any(|p| !matches!(p, Part::Lit(_)))
    }

    /// The highest source number `{N}` names (1-based), if any.
    pub(crate) fn max_source(&self) -> usize {
        self.0
            .iter()
            .filter_map(|p| match p {
                Part::Input(Some(n), _) => Some(n + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The word for a job; with `quote`, inputs are shell-quoted (for `--shell`).
    pub(crate) fn render(&self, args: &[String], seq: u64, slot: usize, quote: bool) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Seq => out.push_str(&seq.to_string()),
                Part::Slot => out.push_str(&slot.to_string()),
                Part::Input(src, t) => {
                    let values: Vec<String> = match src {
                        Some(n) => vec![transform(&args[*n], *t)],
                        None => args.iter().map(|a| transform(a, *t)).collect(),
                    };
                    let values: Vec<String> = if quote {
                        values.iter().map(|v| shell_quote(v)).collect()
                    } else {
                        values
                    };
                    out.push_str(&values.join(" "));
                }
            }
        }
        out
    }
}

fn unknown(word: &str, inner: &str) -> UsageError {
    usage(format!(
        "unknown replacement string '{{{inner}}}' in '{word}': use {{}} {{.}} {{/}} {{//}} {{/.}} {{#}} {{%}} or {{N}}"
    ))
}

fn transform(input: &str, t: Transform) -> String {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let no_ext = |s: &str| {
        let cut = s.rfind('/').map_or(0, |i| i + 1);
        match s[cut..].rfind('.') {
            Some(dot) if dot > 0 => s[..cut + dot].to_string(),
            _ => s.to_string(),
        }
    };
    match t {
        Transform::Whole => input.to_string(),
        Transform::NoExt => no_ext(input),
        Transform::Base => base(input),
        Transform::Dir => match input.rfind('/') {
            Some(0) => "/".to_string(),
            Some(i) => input[..i].to_string(),
            None => ".".to_string(),
        },
        Transform::BaseNoExt => no_ext(&base(input)),
    }
}

/// GNU parallel's joblog header.
pub(crate) const JOBLOG_HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// What a joblog says about each seq: whether its last line was a success.
pub(crate) fn read_joblog(path: &Path) -> Result<HashMap<u64, bool>, UsageError> {
    let mut done = HashMap::new();
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(usage(format!("cannot read joblog {}: {e}", path.display()))),
    };
    if text.is_empty() {
        return Ok(done);
    }
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.split_inclusive('\n');
    if lines.next().map(|l| l.trim_end_matches('\n')) != Some(JOBLOG_HEADER) {
        return Err(usage(format!(
            "{} is not a joblog (its first line is not GNU parallel's joblog header); refusing to use or overwrite it",
            path.display()
        )));
    }
    for line in lines {
        // A line without its newline was cut short by a kill: the job is not known to be done.
        let Some(line) = line.strip_suffix('\n') else {
            continue;
        };
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 9 {
            continue;
        }
        let (Ok(seq), Ok(exit), Ok(sig)) = (
            cols[0].parse::<u64>(),
            cols[6].parse::<i64>(),
            cols[7].parse::<i64>(),
        ) else {
            continue;
        };
        done.insert(seq, exit == 0 && sig == 0);
    }
    Ok(done)
}

/// Writes the joblog: a line per finished job, flushed at once.
#[derive(Debug)]
pub(crate) struct JobLogWriter {
    file: File,
}

impl JobLogWriter {
    /// Opens the joblog: appending when resuming (and the log exists), else starting afresh.
    pub(crate) fn open(path: &Path, append: bool) -> io::Result<Self> {
        let mut file = if append {
            OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)?
        } else {
            File::create(path)?
        };
        let len = file.metadata()?.len();
        if len == 0 {
            writeln!(file, "{JOBLOG_HEADER}")?;
        } else {
            // A line cut short by a kill gets its end, so the next line starts clean.
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(JobLogWriter { file })
    }
}

impl JobLog for JobLogWriter {
    fn finished(&mut self, job: &Job, o: &JobOutcome) -> io::Result<()> {
        let command = job.program.display().replace(['\t', '\n'], " ");
        let line = format!(
            "{}\t:\t{:.3}\t{:.3}\t0\t{}\t{}\t{}\t{}\n",
            job.seq,
            o.start,
            o.runtime,
            o.stdout.len(),
            o.exit,
            o.signal,
            command
        );
        self.file.write_all(line.as_bytes())?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("{//}/{/.}.out.{#}.{%}").unwrap();
        assert_eq!(t.render(&["a/b/c.txt".into()], 3, 2, false), "a/b/c.out.3.2");
        assert!(Template::parse("{..}").is_err());
        assert!(!Template::parse("{print $1}").unwrap().has_input());
        let t = Template::parse("{}").unwrap();
        assert_eq!(t.render(&["a b".into()], 1, 1, true), "'a b'");
        assert_eq!(transform("x", Transform::Dir), ".");
        assert_eq!(transform(".bashrc", Transform::NoExt), ".bashrc");
    }

    #[test]
    fn halts() {
        assert_eq!(
            parse_halt("now,fail=30%").unwrap().fail,
            HaltFail::Percent(30.0)
        );
        assert!(parse_halt("later,fail=1").is_err());
        assert!(parse_halt("now,fail=0").is_err());
    }
}

//! GNU parallel's everyday flags beyond the core ones of [`crate::args`]: input shaping
//! (`--colsep`, `-N`, `-X`, `-m`, `-0`, `-I`, `--header`, `--shuf`, `-q`), output (`--tag`,
//! `--tagstring`, `--line-buffer`, `-u`, `--files`), environment and scheduling (`--env`, `--wd`,
//! `--delay`, `--nice`, `--memfree`, `--load`) and streaming (`--pipe`, `--pipepart`, `--block`,
//! `--recstart`, `--recend`), each with GNU parallel's meaning, parsed by clap and checked here.

use std::num::NonZeroUsize;
use std::time::Duration;

use clap::Args;

use crate::args::ConfigError;
use crate::template::Multi;

/// The flags as clap parses them (flattened into [`crate::args::Cli`]).
#[derive(Debug, Args)]
pub(crate) struct GnuFlags {
    /// Split each input line into columns at REGEX; {1}..{N} are the columns
    #[arg(short = 'C', long, value_name = "REGEX")]
    pub(crate) colsep: Option<String>,

    /// N inputs per job, {1}..{N} for each (also -n N, --max-args)
    #[arg(
        short = 'N',
        long = "max-replace-args",
        visible_short_alias = 'n',
        visible_alias = "max-args",
        value_name = "N"
    )]
    pub(crate) per_job: Option<usize>,

    /// As many inputs per job as fit, repeating each word that holds {} per input
    #[arg(short = 'X', conflicts_with_all = ["per_job", "multi_m"])]
    pub(crate) multi_x: bool,

    /// As many inputs per job as fit, {} becoming them all as separate words
    #[arg(short = 'm', conflicts_with = "per_job")]
    pub(crate) multi_m: bool,

    /// Inputs end at NUL, not newline (find -print0)
    #[arg(short = '0', long)]
    pub(crate) null: bool,

    /// Inputs end at DELIM (one byte; \n \t \0 escapes), not newline
    #[arg(
        short = 'd',
        long = "delimiter",
        value_name = "DELIM",
        conflicts_with = "null"
    )]
    pub(crate) delimiter: Option<String>,

    /// Print each job's command line on stderr as it starts
    #[arg(short = 't')]
    pub(crate) print_jobs: bool,

    /// Accepted: an empty input runs no job anyway
    #[arg(short = 'r', long = "no-run-if-empty")]
    pub(crate) no_run_if_empty: bool,

    /// Use STR as the replacement string for {} ({} is then plain text)
    #[arg(short = 'I', value_name = "STR")]
    pub(crate) replace: Option<String>,

    /// The first input line (or value) of each source names its columns: {name}
    #[arg(long, value_name = ":")]
    pub(crate) header: Option<String>,

    /// Run the jobs in random order
    #[arg(long)]
    pub(crate) shuf: bool,

    /// Quote the command: no shell interprets it (multiproc's default without --shell)
    #[arg(short = 'q', long)]
    pub(crate) quote: bool,

    /// Prefix each output line with the job's inputs and a TAB
    #[arg(long)]
    pub(crate) tag: bool,

    /// Prefix each output line with STR (replacement strings allowed) and a TAB
    #[arg(long, value_name = "STR")]
    pub(crate) tagstring: Option<String>,

    /// Print output as whole lines as they come (jobs' lines may interleave, never within one)
    #[arg(long = "line-buffer", visible_alias = "lb", conflicts_with = "ungroup")]
    pub(crate) line_buffer: bool,

    /// Print output at once, unbuffered (lines of jobs may mix)
    #[arg(short = 'u', long, conflicts_with = "files")]
    pub(crate) ungroup: bool,

    /// Print the name of a file holding each job's stdout instead of the output
    #[arg(long)]
    pub(crate) files: bool,

    /// Pass VAR to the jobs (every variable is passed already on the local machine)
    #[arg(long, value_name = "VAR")]
    pub(crate) env: Vec<String>,

    /// Run the jobs in DIR (replacement strings allowed)
    #[arg(long = "wd", visible_alias = "workdir", value_name = "DIR")]
    pub(crate) wd: Option<String>,

    /// Wait SECS between starting jobs
    #[arg(long, value_name = "SECS")]
    pub(crate) delay: Option<f64>,

    /// Run the jobs with niceness N
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) nice: Option<i32>,

    /// Start no job while free memory is below SIZE (k/M/G/T); kill the youngest below SIZE/2
    #[arg(long, value_name = "SIZE")]
    pub(crate) memfree: Option<String>,

    /// Start no job while the 1-minute load average is at or above MAX
    #[arg(long, value_name = "MAX")]
    pub(crate) load: Option<f64>,

    /// Split stdin (or -a FILE) into blocks and feed each to a job's stdin
    #[arg(long, visible_alias = "spreadstdin")]
    pub(crate) pipe: bool,

    /// Like --pipe, for a seekable -a FILE: blocks are byte ranges read by the jobs' workers
    #[arg(long, conflicts_with = "pipe")]
    pub(crate) pipepart: bool,

    /// --pipe block size (k/M/G; default 1M)
    #[arg(long, visible_alias = "block-size", value_name = "SIZE")]
    pub(crate) block: Option<String>,

    /// --pipe: a record starts with STR
    #[arg(long, value_name = "STR")]
    pub(crate) recstart: Option<String>,

    /// --pipe: a record ends with STR (default: newline)
    #[arg(long, value_name = "STR")]
    pub(crate) recend: Option<String>,

    /// Link all input sources (as :::+), not their cartesian product
    #[arg(long, visible_alias = "xapply")]
    pub(crate) link: bool,

    /// Accepted and ignored (GNU parallel's citation notice)
    #[arg(long = "will-cite", hide = true)]
    pub(crate) will_cite: bool,

    /// Accepted and ignored
    #[arg(long = "no-notice", hide = true)]
    pub(crate) no_notice: bool,
}

/// How inputs become jobs.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// `--colsep`.
    pub(crate) colsep: Option<regex::Regex>,
    /// `-N n`.
    pub(crate) per_job: Option<NonZeroUsize>,
    /// `-X` / `-m`.
    pub(crate) multi: Option<Multi>,
    /// The byte values end at: `\n`, NUL (`-0`) or `-d DELIM`.
    pub(crate) sep: u8,
    /// `--header :`.
    pub(crate) header: bool,
    /// `--shuf`.
    pub(crate) shuffle: bool,
    /// `--link`: every source linked to the first.
    pub(crate) link_all: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            colsep: None,
            per_job: None,
            multi: None,
            sep: b'\n',
            header: false,
            shuffle: false,
            link_all: false,
        }
    }
}

/// How finished jobs' output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OutputMode {
    /// One block per job when it ends (GNU's `--group`, the default).
    #[default]
    Grouped,
    /// `--line-buffer`: whole lines as they come.
    LineBuffer,
    /// `-u`: the job's own stdout and stderr.
    Ungroup,
    /// `--files`: the name of a file holding the job's stdout.
    Files,
}

/// `--pipe` / `--pipepart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PipeOpts {
    /// `--pipepart` (else `--pipe`).
    pub(crate) part: bool,
    /// Bytes per block (about).
    pub(crate) block: usize,
    /// A record starts with this.
    pub(crate) recstart: Vec<u8>,
    /// A record ends with this.
    pub(crate) recend: Vec<u8>,
}

/// Scheduling limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sched {
    /// `--delay`.
    pub(crate) delay: Option<Duration>,
    /// `--nice`.
    pub(crate) nice: Option<i32>,
    /// `--memfree`, bytes.
    pub(crate) memfree: Option<u64>,
    /// `--load`.
    pub(crate) load: Option<f64>,
}

/// The checked flags.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extras {
    /// Input shaping.
    pub(crate) shape: Shape,
    /// Output mode.
    pub(crate) output: OutputMode,
    /// `--tag` (`{}` with a TAB) or `--tagstring`: the tag's template text.
    pub(crate) tag: Option<String>,
    /// `--wd`.
    pub(crate) wd: Option<String>,
    /// Scheduling.
    pub(crate) sched: Sched,
    /// Streaming.
    pub(crate) pipe: Option<PipeOpts>,
    /// `-I`.
    pub(crate) replace: Option<String>,
    /// `-t`: print each job's command line on stderr.
    pub(crate) print_jobs: bool,
}

fn invalid(flag: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        flag,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A size with GNU parallel's suffixes: `k`, `M`, `G`, `T` (powers of 1024; lower case too),
/// optionally followed by `b`/`B`.
pub(crate) fn parse_size(flag: &'static str, text: &str) -> Result<u64, ConfigError> {
    let bad = || invalid(flag, text, "expected a size such as 512k, 10M or 1G");
    let t = text.trim_end_matches(['b', 'B']);
    let (num, mult) = match t.chars().last() {
        Some(c @ ('k' | 'K' | 'm' | 'M' | 'g' | 'G' | 't' | 'T')) => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                _ => 40,
            };
            (&t[..t.len() - 1], 1u64 << shift)
        }
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

/// GNU parallel's `\t`, `\n`, `\0` escapes in `--recend`/`--recstart`.
fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\0", "\0")
        .into_bytes()
}

impl GnuFlags {
    /// Checks every flag's value.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the flag and the value.
    pub(crate) fn check(&self) -> Result<Extras, ConfigError> {
        let colsep =
            match &self.colsep {
                None => None,
                Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                    invalid("--colsep", re, &format!("not a regular expression: {e}"))
                })?),
            };
        let per_job = match self.per_job {
            None => None,
            Some(n) => {
                Some(NonZeroUsize::new(n).ok_or_else(|| invalid("-N", "0", "must be at least 1"))?)
            }
        };
        let sep = match (&self.delimiter, self.null) {
            (Some(d), _) => match unescape(d).as_slice() {
                [b] => *b,
                _ => {
                    return Err(invalid(
                        "--delimiter",
                        d,
                        "only a one-byte delimiter is supported (\\n, \\t, \\0 escapes)",
                    ));
                }
            },
            (None, true) => 0,
            (None, false) => b'\n',
        };
        let multi = match (self.multi_x, self.multi_m) {
            (true, _) => Some(Multi::Context),
            (false, true) => Some(Multi::Words),
            _ => None,
        };
        let header = match self.header.as_deref() {
            None => false,
            Some(":" | "1") => true,
            Some(h) => {
                return Err(invalid(
                    "--header",
                    h,
                    "only ':' (the first line) is supported",
                ));
            }
        };
        let output = match (self.line_buffer, self.ungroup, self.files) {
            (true, _, _) => OutputMode::LineBuffer,
            (_, true, _) => OutputMode::Ungroup,
            (_, _, true) => OutputMode::Files,
            _ => OutputMode::Grouped,
        };
        let tag = match (&self.tagstring, self.tag) {
            (Some(t), _) => Some(t.clone()),
            (None, true) => Some("{}".to_owned()),
            (None, false) => None,
        };
        let delay = match self.delay {
            None => None,
            Some(s) if s.is_finite() && (0.0..=1e6).contains(&s) => {
                Some(Duration::from_secs_f64(s))
            }
            Some(s) => {
                return Err(invalid(
                    "--delay",
                    &s.to_string(),
                    "must be a number of seconds >= 0",
                ));
            }
        };
        if let Some(n) = self.nice
            && !(-20..=19).contains(&n)
        {
            return Err(invalid("--nice", &n.to_string(), "must be from -20 to 19"));
        }
        let memfree = self
            .memfree
            .as_deref()
            .map(|m| parse_size("--memfree", m))
            .transpose()?;
        if let Some(l) = self.load
            && !(l.is_finite() && l > 0.0)
        {
            return Err(invalid("--load", &l.to_string(), "must be a number > 0"));
        }
        let pipe = if self.pipe || self.pipepart {
            let block = match &self.block {
                None => 1 << 20,
                Some(b) => parse_size("--block", b)?.min(1 << 31) as usize,
            };
            Some(PipeOpts {
                part: self.pipepart,
                block: block.max(1),
                recstart: self.recstart.as_deref().map(unescape).unwrap_or_default(),
                recend: unescape(self.recend.as_deref().unwrap_or("\n")),
            })
        } else {
            for (flag, given) in [
                ("--block", self.block.is_some()),
                ("--recstart", self.recstart.is_some()),
                ("--recend", self.recend.is_some()),
            ] {
                if given {
                    return Err(ConfigError::Requires {
                        flag,
                        needs: "--pipe or --pipepart",
                    });
                }
            }
            None
        };
        if let Some(r) = &self.replace
            && r.is_empty()
        {
            return Err(invalid("-I", r, "must not be empty"));
        }
        Ok(Extras {
            shape: Shape {
                colsep,
                per_job,
                multi,
                sep,
                header,
                shuffle: self.shuf,
                link_all: self.link,
            },
            output,
            tag,
            wd: self.wd.clone(),
            sched: Sched {
                delay,
                nice: self.nice,
                memfree,
                load: self.load,
            },
            pipe,
            replace: self.replace.clone(),
            print_jobs: self.print_jobs,
        })
    }
}

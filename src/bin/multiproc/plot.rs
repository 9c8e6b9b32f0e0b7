//! `multiproc plot JOBLOG -o run.svg`: a picture of a run from its joblog (GNU parallel's
//! format, so GNU parallel's joblogs work too).
//!
//! The picture ([`crate::svg`] draws it) is a timeline (Gantt chart): one row per job slot of
//! every host, one bar per joblog line from its start to its end, failed jobs in red; above it
//! the run's utilization and its idle tail, below it the slowest jobs. Users tune `-j`,
//! `--threads-per-job` and their input order from it.
//!
//! # What is computed, and how
//!
//! - **Slots.** The joblog has no slot column, so slots are rebuilt per host by packing: jobs in
//!   order of start time (then seq) go into the lowest-numbered slot that is free at their start
//!   (its previous job ended at or before it, within the log's 1 ms resolution), else a new slot.
//!   The number of slots of a host is the most jobs it ran at once, unless `--slots N` says how
//!   many it had (`-j` of the run, per host), which shows slots that were never used.
//!   Packing gives the fewest rows; a slot may differ from the `{%}` the job really ran in.
//! - **Span**: from the first job's start to the last job's end (gaps between runs appended to
//!   one joblog by `--resume` count as idle).
//! - **Utilization** = busy slot-seconds (the sum of the jobs' runtimes) / available
//!   slot-seconds (all slots of all hosts × the span).
//! - **Idle tail**: from the last job start to the end of the run, when no new job starts and
//!   slots fall idle one by one; its idle slot-seconds are, for each slot, the time from the
//!   later of its last job's end and the tail's start, to the end. A long tail says: put the
//!   long inputs first, or use fewer, bigger slots.
//!
//! Running a command literally named `plot`: `multiproc -- plot ...` or `multiproc ./plot ...`
//! (only a first argument of exactly `plot` selects this subcommand).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::joblog::{Entry, HEADER};

/// The first argument that selects this subcommand.
pub(crate) const SUBCOMMAND: &str = "plot";

/// `multiproc plot`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "multiproc plot",
    about = "Draw a run's joblog as a self-contained SVG timeline (one bar per job on its \
             host and slot), with utilization, idle tail and the slowest jobs.",
    after_help = "The joblog has no slot column: slots are rebuilt per host by packing jobs \
                  into the lowest free slot. To run a command named plot: multiproc -- plot ..."
)]
pub(crate) struct PlotArgs {
    /// The joblog (`--joblog FILE` of a multiproc or GNU parallel run)
    #[arg(value_name = "JOBLOG")]
    pub(crate) joblog: PathBuf,

    /// Where to write the SVG ("-" = stdout) [default: JOBLOG with .svg]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,

    /// Slots each host had (the run's -j), when more than it ran at once
    #[arg(long, value_name = "N")]
    pub(crate) slots: Option<NonZeroUsize>,

    /// How many of the slowest jobs to list
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) slowest: usize,

    /// The picture's title [default: the joblog's file name]
    #[arg(long)]
    pub(crate) title: Option<String>,
}

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    /// The joblog cannot be read, or the SVG cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The first line is not the joblog header.
    #[error("{path} is not a joblog: its first line is {first:?}, want {HEADER:?}")]
    NotAJoblog {
        /// The file.
        path: PathBuf,
        /// Its first line, cut to 80 characters.
        first: String,
    },
    /// A job line does not parse.
    #[error("{path} line {line_no}: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based (the header is line 1).
        line_no: usize,
        /// What is wrong.
        reason: String,
    },
    /// No job line at all.
    #[error("{path} has no job lines: nothing to draw")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// `--slots` is below what a host ran at once.
    #[error("--slots {given}: host {host} ran {needed} jobs at once")]
    TooFewSlots {
        /// `--slots`.
        given: usize,
        /// The host.
        host: String,
        /// Its most jobs at once.
        needed: usize,
    },
}

/// One job line, placed on a slot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// The job's Seq.
    pub(crate) seq: u64,
    /// Index into [`Layout::hosts`].
    pub(crate) host: usize,
    /// 1-based slot on that host.
    pub(crate) slot: usize,
    /// Start, in seconds after [`Layout::t0`].
    pub(crate) start: f64,
    /// Runtime in seconds.
    pub(crate) runtime: f64,
    /// Exit status non-zero or killed by a signal.
    pub(crate) failed: bool,
    /// The joblog's Exitval and Signal.
    pub(crate) exitval: i32,
    /// The joblog's Signal.
    pub(crate) signal: i32,
    /// The command line.
    pub(crate) command: String,
}

/// A run, laid out: every bar on its host and slot, and the run's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// Hosts in name order, with their slot counts.
    pub(crate) hosts: Vec<(String, usize)>,
    /// One per joblog line.
    pub(crate) bars: Vec<Bar>,
    /// The first start, in seconds since the Unix epoch.
    pub(crate) t0: f64,
    /// First start to last end, in seconds.
    pub(crate) span: f64,
    /// Sum of the runtimes.
    pub(crate) busy: f64,
    /// All slots × span.
    pub(crate) available: f64,
    /// Start of the idle tail (the last job start), seconds after t0.
    pub(crate) tail_start: f64,
    /// Idle slot-seconds in the tail.
    pub(crate) tail_idle: f64,
}

impl Layout {
    /// busy / available, in [0, 1] (1 when the span is zero).
    pub(crate) fn utilization(&self) -> f64 {
        if self.available > 0.0 {
            (self.busy / self.available).min(1.0)
        } else {
            1.0
        }
    }

    /// Total slots over all hosts.
    pub(crate) fn total_slots(&self) -> usize {
        self.hosts.iter().map(|(_, n)| n).sum()
    }
}

/// Reads every job line of a joblog (a torn last line, from a killed run, is left out).
///
/// # Errors
/// As [`PlotError`].
pub(crate) fn read_entries(path: &Path) -> Result<Vec<Entry>, PlotError> {
    let bytes = std::fs::read(path).map_err(|source| PlotError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    let mut lines = complete.split('\n');
    let header = lines.next().unwrap_or("");
    if header != HEADER {
        return Err(PlotError::NotAJoblog {
            path: path.to_owned(),
            first: text.lines().next().unwrap_or("").chars().take(80).collect(),
        });
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            Entry::parse_line(line).map_err(|reason| PlotError::BadLine {
                path: path.to_owned(),
                line_no: i + 2,
                reason,
            })
        })
        .collect()
}

/// How close (seconds) an end and a start may be and still count as "free at the start": the
/// log rounds both to 1 ms.
const SLACK: f64 = 0.0015;

/// Places the entries on slots (see the module docs) and computes the run's figures.
///
/// # Errors
/// [`PlotError::Empty`] with no entries (`path` names the log), [`PlotError::TooFewSlots`].
pub(crate) fn layout(
    entries: &[Entry],
    slots: Option<NonZeroUsize>,
    path: &Path,
) -> Result<Layout, PlotError> {
    if entries.is_empty() {
        return Err(PlotError::Empty {
            path: path.to_owned(),
        });
    }
    let t0 = entries
        .iter()
        .map(|e| e.start.as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let end = entries
        .iter()
        .map(|e| (e.start + e.runtime).as_secs_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let span = end - t0;
    // Per host, in name order: the entries by (start, seq).
    let mut by_host: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        by_host.entry(&e.host).or_default().push(e);
    }
    let mut hosts = Vec::new();
    let mut bars = Vec::new();
    // For the tail: each slot's last end, seconds after t0.
    let mut last_ends = Vec::new();
    for (h, (name, mut list)) in by_host.into_iter().enumerate() {
        list.sort_by(|a, b| a.start.cmp(&b.start).then(a.seq.cmp(&b.seq)));
        // slot_free[i]: when slot i+1 frees up (seconds after t0).
        let mut slot_free: Vec<f64> = Vec::new();
        for e in list {
            let start = e.start.as_secs_f64() - t0;
            let runtime = e.runtime.as_secs_f64();
            let slot = match slot_free.iter().position(|&free| free <= start + SLACK) {
                Some(i) => i,
                None => {
                    slot_free.push(0.0);
                    slot_free.len() - 1
                }
            };
            slot_free[slot] = start + runtime;
            bars.push(Bar {
                seq: e.seq,
                host: h,
                slot: slot + 1,
                start,
                runtime,
                failed: !e.succeeded(),
                exitval: e.exitval,
                signal: e.signal,
                command: e.command.replace('\0', "\n"),
            });
        }
        let used = slot_free.len();
        let n = match slots {
            Some(given) if given.get() < used => {
                return Err(PlotError::TooFewSlots {
                    given: given.get(),
                    host: name.to_owned(),
                    needed: used,
                });
            }
            Some(given) => given.get(),
            None => used,
        };
        // Slots never used are idle from the start.
        slot_free.resize(n, 0.0);
        last_ends.extend(slot_free);
        hosts.push((name.to_owned(), n));
    }
    let busy = bars.iter().map(|b| b.runtime).sum();
    let total_slots: usize = hosts.iter().map(|(_, n)| n).sum();
    let tail_start = bars.iter().map(|b| b.start).fold(0.0, f64::max);
    let tail_idle = last_ends
        .iter()
        .map(|&e| span - e.max(tail_start))
        .map(|idle| idle.max(0.0))
        .sum();
    Ok(Layout {
        hosts,
        bars,
        t0,
        span,
        busy,
        available: total_slots as f64 * span,
        tail_start,
        tail_idle,
    })
}

/// `multiproc plot ARGS...` (the arguments after `plot`): reads the joblog, writes the SVG,
/// prints a one-line summary on stderr. Returns the exit status (0, or 2 for bad input).
pub(crate) fn main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    let parsed = match PlotArgs::try_parse_from(
        std::iter::once(std::ffi::OsString::from("multiproc plot")).chain(args),
    ) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match plot(&parsed) {
        Ok(summary) => {
            eprintln!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("multiproc plot: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Does the work of [`main`]; returns the summary line.
fn plot(args: &PlotArgs) -> Result<String, PlotError> {
    let entries = read_entries(&args.joblog)?;
    let layout = layout(&entries, args.slots, &args.joblog)?;
    let title = args.title.clone().unwrap_or_else(|| {
        args.joblog
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    });
    let svg = crate::svg::render(&layout, &title, args.slowest);
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| args.joblog.with_extension("svg"));
    let io_err = |source| PlotError::Io {
        path: out.clone(),
        source,
    };
    if out.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout()
            .write_all(svg.as_bytes())
            .map_err(io_err)?;
    } else {
        std::fs::write(&out, svg).map_err(io_err)?;
    }
    Ok(format!(
        "multiproc plot: {} jobs on {} slots, span {:.3} s, utilization {:.1}%, idle tail {:.3} s; wrote {}",
        layout.bars.len(),
        layout.total_slots(),
        layout.span,
        layout.utilization() * 100.0,
        layout.span - layout.tail_start,
        out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(seq: u64, host: &str, start_ms: u64, run_ms: u64, exitval: i32) -> Entry {
        Entry {
            seq,
            host: host.into(),
            start: Duration::from_millis(1_000_000_000_000 + start_ms),
            runtime: Duration::from_millis(run_ms),
            send: 0,
            receive: 0,
            exitval,
            signal: 0,
            command: format!("job {seq}"),
        }
    }

    #[test]
    fn packs_into_the_lowest_free_slot() {
        let log = [
            entry(1, ":", 0, 2000, 0),
            entry(2, ":", 0, 1000, 0),
            entry(3, ":", 1000, 2000, 1),
            entry(4, ":", 2000, 500, 0),
        ];
        let l = layout(&log, None, Path::new("x")).unwrap();
        let slots: Vec<_> = l.bars.iter().map(|b| (b.seq, b.slot)).collect();
        assert_eq!(slots, [(1, 1), (2, 2), (3, 2), (4, 1)]);
        assert_eq!(l.hosts, [(":".to_string(), 2)]);
        assert!((l.span - 3.0).abs() < 1e-9);
        assert!((l.busy - 5.5).abs() < 1e-9);
        assert!((l.utilization() - 5.5 / 6.0).abs() < 1e-9);
        // Tail from 2.0 (last start) to 3.0: slot 1 idle 2.5..3, slot 2 busy to 3.
        assert!((l.tail_start - 2.0).abs() < 1e-9);
        assert!((l.tail_idle - 0.5).abs() < 1e-9);
        assert!(l.bars[2].failed);
    }

    #[test]
    fn slots_flag_adds_idle_slots_and_refuses_too_few() {
        let log = [entry(1, "n1", 0, 1000, 0), entry(2, "n2", 0, 1000, 0)];
        let l = layout(&log, NonZeroUsize::new(3), Path::new("x")).unwrap();
        assert_eq!(l.total_slots(), 6);
        assert!((l.utilization() - 2.0 / 6.0).abs() < 1e-9);
        let two = [entry(1, "n1", 0, 1000, 0), entry(2, "n1", 0, 1000, 0)];
        let e = layout(&two, NonZeroUsize::new(1), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("host n1 ran 2 jobs at once"), "{e}");
    }

    #[test]
    fn empty_and_foreign_files_are_errors() {
        let e = layout(&[], None, Path::new("run.log")).unwrap_err();
        assert!(e.to_string().contains("run.log has no job lines"), "{e}");
        let dir = std::env::temp_dir().join(format!("multiproc-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notalog");
        std::fs::write(&p, "hello\n").unwrap();
        let e = read_entries(&p).unwrap_err();
        assert!(e.to_string().contains("is not a joblog"), "{e}");
        std::fs::write(&p, format!("{HEADER}\n1\t:\t1.0\tx\n")).unwrap();
        let e = read_entries(&p).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `--joblog`: GNU parallel's job log, written and read back for `--resume` / `--resume-failed`.
//!
//! # Format (as GNU parallel 20221122 writes it; checked by running it)
//!
//! A tab-separated file. The first line is the header
//! `Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand`; then one line per
//! finished job, in completion order (not `Seq` order), each ended by `\n`:
//!
//! | field      | format                                                                  |
//! |------------|-------------------------------------------------------------------------|
//! | Seq        | the job number, 1-based (`{#}`)                                          |
//! | Host       | `:` for the local machine                                                |
//! | Starttime  | Unix time in seconds, `%.3f` (`1795319212.435`)                           |
//! | JobRuntime | seconds, `%10.3f`: right-aligned in 10 columns (`     0.108`)             |
//! | Send       | bytes sent to the job (stdin; `0` normally)                              |
//! | Receive    | bytes received from the job (its output)                                 |
//! | Exitval    | the exit status; `0` when killed by a signal; `-1` when killed by `--timeout` |
//! | Signal     | the signal that killed the job, else `0` (`--timeout` kills: `15`)        |
//! | Command    | the command line as run by the shell, replacement values shell-quoted; a newline is written as NUL; tabs are written as they are (Command is the last field) |
//!
//! With `--retries N` only the last attempt of a job is logged. Without `--resume*` GNU parallel
//! truncates the file and writes the header; with `--resume*` it appends to an existing file.
//!
//! # Resuming
//!
//! `--resume` skips every `Seq` in the log. `--resume-failed` skips those with at least one line
//! with `Exitval` 0 and `Signal` 0, and runs the others again (their new lines are appended, so a
//! job may appear several times). A missing or empty file means nothing was done. The file is
//! streamed line by line, each line checked field by field without allocating, into two
//! [`SeqSet`]s (runs of consecutive numbers): a million-line log reads in a fraction of a second
//! and costs a few runs of memory. Unlike GNU
//! parallel (which never looks at the header), a file whose first line is not the header is
//! rejected: resuming from the wrong file would silently skip jobs.
//!
//! # Durability
//!
//! Each line is written with a single `write(2)` on a file opened `O_APPEND`, with no user-space
//! buffer; that is what GNU parallel's `flush` after each line amounts to. Once `write` returns,
//! the line is in the kernel's page cache and survives a SIGKILL of the runner. Only a kill during
//! that one call can leave a torn last line (the kernel may stop a write to a regular file between
//! pages when a fatal signal is pending, so in practice only lines over 4 KiB are at risk). The
//! reader ignores a torn last line and reports it; reopening for append cuts it off first so the
//! next line does not glue onto it. `fsync` is off by default: it protects only against a kernel
//! crash or power loss, costs a disk flush per job, and GNU parallel does not do it either;
//! [`JoblogWriter::set_fsync`] turns it on.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::args::Resume;
use crate::seqset::{SeqSet, SeqSetBuilder};

/// The header line, without its `\n`.
pub(crate) const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One finished job, as one joblog line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The job number, 1-based.
    pub(crate) seq: u64,
    /// `:` for the local machine.
    pub(crate) host: String,
    /// When the job started, as time since the Unix epoch.
    pub(crate) start: Duration,
    /// How long it ran.
    pub(crate) runtime: Duration,
    /// Bytes sent to the job.
    pub(crate) send: u64,
    /// Bytes received from the job.
    pub(crate) receive: u64,
    /// Exit status (0 if killed by a signal, -1 if killed by `--timeout`).
    pub(crate) exitval: i32,
    /// The signal that killed it, or 0.
    pub(crate) signal: i32,
    /// The command line (shell syntax).
    pub(crate) command: String,
}

/// Formats a duration as seconds with 3 decimals, rounded to the nearest millisecond.
fn secs3(d: Duration) -> String {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl Entry {
    /// An entry for a local job (`Host` is `:`) that started at `start`.
    pub(crate) fn local(seq: u64, start: SystemTime, runtime: Duration, command: String) -> Self {
        Entry {
            seq,
            host: ":".to_owned(),
            start: start
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
            runtime,
            send: 0,
            receive: 0,
            exitval: 0,
            signal: 0,
            command,
        }
    }

    /// True if the job exited 0 and was not killed.
    pub(crate) fn succeeded(&self) -> bool {
        self.exitval == 0 && self.signal == 0
    }

    /// The line as GNU parallel writes it, `\n` included. Newlines in the command become NUL.
    pub(crate) fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{:>10}\t{}\t{}\t{}\t{}\t{}\n",
            self.seq,
            self.host,
            secs3(self.start),
            secs3(self.runtime),
            self.send,
            self.receive,
            self.exitval,
            self.signal,
            self.command.replace('\n', "\0"),
        )
    }

    /// Parses one line (without `\n`). The command keeps its NULs.
    ///
    /// # Errors
    /// A message naming the first bad field.
    pub(crate) fn parse_line(line: &str) -> Result<Entry, String> {
        let f = Fields::parse(line.as_bytes())?;
        // Split at tabs (ASCII), the fields of a `str` are whole UTF-8: nothing is replaced.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(Entry {
            seq: f.seq,
            host: text(f.host),
            start: f.start,
            runtime: f.runtime,
            send: f.send,
            receive: f.receive,
            exitval: f.exitval,
            signal: f.signal,
            command: text(f.command),
        })
    }
}

/// One joblog line's fields, borrowed from the line: what [`JoblogState`] reads a million of
/// without allocating (the command is not even checked for UTF-8; `--resume` needs only Seq,
/// Exitval and Signal, but every field is checked as [`Entry::parse_line`] does).
#[derive(Debug)]
struct Fields<'a> {
    seq: u64,
    host: &'a [u8],
    start: Duration,
    runtime: Duration,
    send: u64,
    receive: u64,
    exitval: i32,
    signal: i32,
    command: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Splits and checks one line (without `\n`), as [`Entry::parse_line`].
    fn parse(line: &'a [u8]) -> Result<Fields<'a>, String> {
        let mut f: [&[u8]; 9] = [&[]; 9];
        let mut n = 0;
        let mut rest = line;
        // The first 8 fields end at a tab; the Command is the rest (tabs and all).
        while n < 8
            && let Some(i) = rest.iter().position(|&b| b == b'\t')
        {
            f[n] = &rest[..i];
            rest = &rest[i + 1..];
            n += 1;
        }
        f[n] = rest;
        n += 1;
        if n != 9 {
            return Err(format!("{n} tab-separated fields, want 9"));
        }
        let seq: u64 = num(f[0], "Seq")?;
        if seq == 0 {
            return Err("Seq 0: job numbers start at 1".into());
        }
        if f[1].is_empty() {
            return Err("empty Host".into());
        }
        Ok(Fields {
            seq,
            host: f[1],
            start: secs(f[2], "Starttime")?,
            runtime: secs(f[3], "JobRuntime")?,
            send: num(f[4], "Send")?,
            receive: num(f[5], "Receive")?,
            exitval: num(f[6], "Exitval")?,
            signal: num(f[7], "Signal")?,
            command: f[8],
        })
    }
}

/// The value of up to 19 ASCII digits (which always fit a `u64`); `None` for anything else.
fn digits_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn num<T: std::str::FromStr + TryFrom<u64>>(s: &[u8], field: &str) -> Result<T, String> {
    // The usual field (digits, maybe right-aligned) without a UTF-8 pass; signs, overflow and
    // errors go the general way below.
    let spaces = s.iter().take_while(|&&b| b == b' ').count();
    if let Some(v) = digits_u64(&s[spaces..]).and_then(|v| T::try_from(v).ok()) {
        return Ok(v);
    }
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.trim_start_matches(' ').parse().ok())
        .ok_or_else(|| {
            let s = String::from_utf8_lossy(s);
            format!("{field} '{s}' is not an integer")
        })
}

/// Parses `SECS[.FRACTION]` (leading spaces allowed) exactly, with no float rounding.
fn secs(s: &[u8], field: &str) -> Result<Duration, String> {
    let bad = || {
        let s = String::from_utf8_lossy(s);
        format!("{field} '{s}' is not a number of seconds")
    };
    let spaces = s.iter().take_while(|&&b| b == b' ').count();
    let t = &s[spaces..];
    let (int, frac) = match t.iter().position(|&b| b == b'.') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, &[][..]),
    };
    let digits = |x: &[u8]| x.iter().all(u8::is_ascii_digit);
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let secs = match digits_u64(int) {
        Some(v) => v,
        // Only ASCII digits, checked above; 20 or more of them may overflow.
        None => std::str::from_utf8(int)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?,
    };
    // At most 9 digits, checked above: pad them to nanoseconds without allocating.
    let nanos = frac
        .iter()
        .copied()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    Ok(Duration::new(secs, nanos))
}

/// Why a joblog could not be used for `--resume`.
#[derive(Debug)]
pub(crate) enum JoblogError {
    /// Reading or writing the file failed.
    Io {
        /// The joblog.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The first line is not the joblog header.
    NotAJoblog {
        /// The file.
        path: PathBuf,
        /// Its first line (cut to 80 characters).
        first_line: String,
    },
    /// A complete line that does not parse.
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number (the header is line 1).
        line_no: usize,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for JoblogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoblogError::Io { path, source } => {
                write!(f, "joblog '{}': {source}", path.display())
            }
            JoblogError::NotAJoblog { path, first_line } => write!(
                f,
                "'{}' is not a joblog: its first line is {first_line:?}, want the header \
                 {HEADER:?} (refusing to --resume from it)",
                path.display()
            ),
            JoblogError::BadLine {
                path,
                line_no,
                reason,
            } => write!(f, "joblog '{}' line {line_no}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for JoblogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoblogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An incomplete last line that was ignored (the runner was killed while writing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    /// 1-based line number.
    pub(crate) line_no: usize,
    /// Its length in bytes.
    pub(crate) bytes: usize,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignored the incomplete last line {} ({} bytes, no newline): an earlier run was \
             probably killed while writing it",
            self.line_no, self.bytes
        )
    }
}

/// What an earlier run's joblog says. The sets are [`SeqSet`]s: a million-line log of a run
/// that finished in order costs a few runs, not a million entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JoblogState {
    /// Every `Seq` with at least one line.
    pub(crate) done: SeqSet,
    /// Every `Seq` with at least one successful line (Exitval 0, Signal 0).
    pub(crate) succeeded: SeqSet,
    /// Number of job lines read.
    pub(crate) lines: usize,
    /// Set if an incomplete last line was ignored.
    pub(crate) torn_tail: Option<TornTail>,
}

/// The read buffer for a joblog: big enough that a million-line log takes ~60 reads.
const READ_BUF: usize = 1 << 20;

impl JoblogState {
    /// Reads a joblog, streaming it (memory: the [`SeqSet`]s and one line). A missing or empty
    /// file gives an empty state.
    ///
    /// # Errors
    /// [`JoblogError`] if the file cannot be read, is not a joblog, or has a bad line.
    pub(crate) fn read(path: &Path) -> Result<JoblogState, JoblogError> {
        match File::open(path) {
            Ok(f) => JoblogState::from_reader(BufReader::with_capacity(READ_BUF, f), path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(JoblogState::default()),
            Err(source) => Err(JoblogError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses joblog contents; `path` is for messages.
    ///
    /// # Errors
    /// As [`JoblogState::read`].
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<JoblogState, JoblogError> {
        JoblogState::from_reader(bytes, path)
    }

    /// Reads line by line: the header, then each job line checked field by field without
    /// allocating; everything after the last `\n` is a torn line (the writer always ends lines
    /// with `\n`), reported, not parsed.
    fn from_reader(mut r: impl BufRead, path: &Path) -> Result<JoblogState, JoblogError> {
        let mut state = JoblogState::default();
        let (mut done, mut succeeded) = (SeqSetBuilder::default(), SeqSetBuilder::default());
        let mut line = Vec::with_capacity(256);
        let mut line_no = 0;
        loop {
            line.clear();
            let n = r
                .read_until(b'\n', &mut line)
                .map_err(|source| JoblogError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
            } else {
                // A torn header is a run killed at its very start.
                if line_no == 1 && !HEADER.as_bytes().starts_with(&line) {
                    return Err(not_a_joblog(path, &line));
                }
                state.torn_tail = Some(TornTail {
                    line_no,
                    bytes: line.len(),
                });
                break;
            }
            if line_no == 1 {
                if line != HEADER.as_bytes() {
                    return Err(not_a_joblog(path, &line));
                }
                continue;
            }
            let f = Fields::parse(&line).map_err(|reason| JoblogError::BadLine {
                path: path.to_owned(),
                line_no,
                reason,
            })?;
            state.lines += 1;
            done.insert(f.seq);
            if f.exitval == 0 && f.signal == 0 {
                succeeded.insert(f.seq);
            }
        }
        state.done = done.build();
        state.succeeded = succeeded.build();
        Ok(state)
    }

    /// Checks only that `path` is a joblog (or missing, empty, or a torn header): its first line
    /// is the header. Reads at most a few KiB, whatever the file's size.
    ///
    /// # Errors
    /// [`JoblogError::NotAJoblog`], or [`JoblogError::Io`] if it cannot be read.
    pub(crate) fn check_header(path: &Path) -> Result<(), JoblogError> {
        let io_err = |source| JoblogError::Io {
            path: path.to_owned(),
            source,
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        let mut first = Vec::new();
        BufReader::new(f.take(4096))
            .read_until(b'\n', &mut first)
            .map_err(io_err)?;
        let ok = match first.strip_suffix(b"\n") {
            Some(line) => line == HEADER.as_bytes(),
            None => HEADER.as_bytes().starts_with(&first),
        };
        if ok {
            Ok(())
        } else {
            let line = first.strip_suffix(b"\n").unwrap_or(&first);
            Err(not_a_joblog(path, line))
        }
    }

    /// True if job `seq` is to be skipped in this resume mode.
    pub(crate) fn skips(&self, seq: u64, mode: Resume) -> bool {
        match mode {
            Resume::No => false,
            Resume::All => self.done.contains(seq),
            Resume::Failed => self.succeeded.contains(seq),
        }
    }

    /// How many of jobs `1..=total` are skipped in this resume mode.
    pub(crate) fn skipped_up_to(&self, total: u64, mode: Resume) -> u64 {
        match mode {
            Resume::No => 0,
            Resume::All => self.done.count_up_to(total),
            Resume::Failed => self.succeeded.count_up_to(total),
        }
    }

    /// The jobs that ran but never succeeded.
    pub(crate) fn failed(&self) -> impl Iterator<Item = u64> + '_ {
        self.done.iter().filter(|&s| !self.succeeded.contains(s))
    }
}

fn not_a_joblog(path: &Path, first: &[u8]) -> JoblogError {
    let text = String::from_utf8_lossy(first);
    JoblogError::NotAJoblog {
        path: path.to_owned(),
        first_line: text.chars().take(80).collect(),
    }
}

/// The length of `f` (of `len` bytes) up to and including its last `\n` (0 if it has none),
/// read backwards from the end in blocks: a torn line is short, so this reads a block or two.
fn after_last_newline(f: &mut File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// How many `\n` a reader holds.
fn count_newlines(r: &mut impl Read) -> io::Result<usize> {
    let mut buf = vec![0u8; READ_BUF];
    let mut n = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += buf[..k].iter().filter(|&&b| b == b'\n').count(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Appends one line per finished job; see the module docs for what survives a crash.
#[derive(Debug)]
pub(crate) struct JoblogWriter {
    file: File,
    path: PathBuf,
    fsync: bool,
}

impl JoblogWriter {
    /// Creates or truncates the file and writes the header (a run without `--resume*`).
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub(crate) fn create(path: &Path) -> Result<JoblogWriter, JoblogError> {
        let io_err = |source| JoblogError::Io {
            path: path.to_owned(),
            source,
        };
        File::create(path).map_err(io_err)?;
        let mut w = JoblogWriter::open_append(path)?;
        w.write_raw(format!("{HEADER}\n").as_bytes())?;
        Ok(w)
    }

    /// Opens for `--resume*`: appends to an existing joblog, first cutting off a torn last line
    /// (returned, to be reported); writes the header if the file is missing or empty. Read the
    /// file with [`JoblogState::read`] first: this does not check the header.
    ///
    /// # Errors
    /// The file cannot be opened, read, truncated or written.
    pub(crate) fn resume(path: &Path) -> Result<(JoblogWriter, Option<TornTail>), JoblogError> {
        let io_err = |source| JoblogError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let len = f.metadata().map_err(io_err)?.len();
        let keep = after_last_newline(&mut f, len).map_err(io_err)?;
        let mut torn = None;
        if keep < len {
            // Rare (a killed run): only then is the file read whole, to name the line.
            f.seek(SeekFrom::Start(0)).map_err(io_err)?;
            let line_no = count_newlines(&mut (&mut f).take(keep)).map_err(io_err)? + 1;
            torn = Some(TornTail {
                line_no,
                bytes: (len - keep) as usize,
            });
            f.set_len(keep).map_err(io_err)?;
        }
        drop(f);
        let mut w = JoblogWriter::open_append(path)?;
        let len = w.file.metadata().map_err(io_err)?.len();
        if len == 0 {
            w.write_raw(format!("{HEADER}\n").as_bytes())?;
        }
        Ok((w, torn))
    }

    fn open_append(path: &Path) -> Result<JoblogWriter, JoblogError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| JoblogError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(JoblogWriter {
            file,
            path: path.to_owned(),
            fsync: false,
        })
    }

    /// Also `fsync` after every line (off by default; see the module docs).
    pub(crate) fn set_fsync(&mut self, on: bool) {
        self.fsync = on;
    }

    /// Appends one job's line with a single write.
    ///
    /// # Errors
    /// The write (or fsync) failed.
    pub(crate) fn write(&mut self, entry: &Entry) -> Result<(), JoblogError> {
        self.write_raw(entry.to_line().as_bytes())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), JoblogError> {
        let io_err = |source| JoblogError::Io {
            path: self.path.clone(),
            source,
        };
        // `File` has no user-space buffer: one write_all is one write(2) unless it is short.
        self.file.write_all(bytes).map_err(io_err)?;
        if self.fsync {
            self.file.sync_data().map_err(io_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "joblog_tests.rs"]
mod tests;

//! A job's three streams, wired in its worker before it starts and collected after it ends.
//!
//! - stdin: `/dev/null`; the file of `--stdin`; a `--pipe` block (written to an anonymous
//!   file, so the job reads it at its own pace); a `--pipepart` byte range of a file (copied into
//!   a pipe by a thread of the worker, `sendfile`/`splice` under `std::io::copy`).
//! - stdout, stderr: captured in files ([`crate::spill`], the default, printed as one block per
//!   job); the file of `--stdout`; the runner's own (`-u`); forwarded as whole lines as they come
//!   (`--line-buffer`, by a thread per stream that writes complete lines with one `write(2)` each
//!   batch, tagged with `--tag`); or a kept temporary file whose name is the output (`--files`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::flags::OutputMode;
use crate::job::Job;
use crate::spill::{Captured, Captures, Stream};

/// What a `--pipe`/`--pipepart` job reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PipeInput {
    /// A block of stdin (`--pipe`).
    Block(#[serde(with = "bytes")] Vec<u8>),
    /// Bytes `start..start + len` of a file (`--pipepart`).
    Range {
        /// The file.
        path: String,
        /// The first byte.
        start: u64,
        /// How many bytes.
        len: u64,
    },
}

impl PipeInput {
    /// How many bytes the job is sent (the joblog's Send).
    pub(crate) fn len(&self) -> u64 {
        match self {
            PipeInput::Block(b) => b.len() as u64,
            PipeInput::Range { len, .. } => *len,
        }
    }
}

/// Serializes a `Vec<u8>` as one byte string (not a sequence of numbers).
mod bytes {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

/// Where one output stream went.
#[derive(Debug)]
enum Sink {
    /// A capture file: read back (or spilled) after the job.
    Captured,
    /// Nowhere to collect: `--stdout FILE`, `-u`.
    Elsewhere,
    /// `--line-buffer`: a thread forwards it.
    Forwarded(JoinHandle<()>),
    /// `--files`: this file holds it.
    Kept(String),
}

/// A job's streams, wired.
#[derive(Debug)]
pub(crate) struct Wired {
    stdout: Sink,
    stderr: Sink,
    /// The thread feeding a `--pipepart` range.
    feeder: Option<JoinHandle<()>>,
    /// `--line-buffer`: the pipes to hand to the forwarding threads once the job has started.
    pending: Option<(Option<String>, OutputMode)>,
}

/// Wires `job`'s streams into `cmd`. Errors say what could not be set up.
pub(crate) fn wire(
    cmd: &mut Command,
    job: &Job,
    mode: OutputMode,
    captures: &mut Captures,
) -> Result<Wired, (String, io::Error)> {
    match (&job.stdin, &job.pipe) {
        (Some(path), _) => {
            let f = File::open(path).map_err(|e| (format!("cannot open stdin {path}"), e))?;
            cmd.stdin(f);
        }
        (None, Some(PipeInput::Block(bytes))) => {
            let f = block_file(bytes).map_err(|e| ("cannot pass the --pipe block".into(), e))?;
            cmd.stdin(f);
        }
        (None, Some(PipeInput::Range { .. })) => {
            cmd.stdin(Stdio::piped());
        }
        (None, None) => {
            cmd.stdin(Stdio::null());
        }
    }
    let stdout = match (&job.stdout, mode) {
        (Some(path), _) => {
            let f = File::create(path).map_err(|e| (format!("cannot create stdout {path}"), e))?;
            cmd.stdout(f);
            Sink::Elsewhere
        }
        (None, OutputMode::Ungroup) => {
            cmd.stdout(Stdio::inherit());
            Sink::Elsewhere
        }
        (None, OutputMode::LineBuffer) => {
            cmd.stdout(Stdio::piped());
            Sink::Elsewhere
        }
        (None, OutputMode::Files) => {
            let (f, path) =
                kept_file(job.seq).map_err(|e| ("cannot create --files file".into(), e))?;
            cmd.stdout(f);
            Sink::Kept(path)
        }
        (None, OutputMode::Grouped) => {
            let child = captures
                .for_job(Stream::Stdout)
                .map_err(|e| ("cannot capture stdout".into(), e))?;
            cmd.stdout(child);
            Sink::Captured
        }
    };
    let stderr = match mode {
        OutputMode::Ungroup => {
            cmd.stderr(Stdio::inherit());
            Sink::Elsewhere
        }
        OutputMode::LineBuffer => {
            cmd.stderr(Stdio::piped());
            Sink::Elsewhere
        }
        _ => {
            let child = captures
                .for_job(Stream::Stderr)
                .map_err(|e| ("cannot capture stderr".into(), e))?;
            cmd.stderr(child);
            Sink::Captured
        }
    };
    let pending = (mode == OutputMode::LineBuffer).then(|| (job.tag.clone(), mode));
    Ok(Wired {
        stdout,
        stderr,
        feeder: None,
        pending,
    })
}

impl Wired {
    /// Once the job has started: starts the threads that feed its stdin (`--pipepart`) and
    /// forward its output (`--line-buffer`).
    pub(crate) fn started(
        &mut self,
        job: &Job,
        stdin: Option<ChildStdin>,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
    ) {
        if let (Some(PipeInput::Range { path, start, len }), Some(pipe)) = (&job.pipe, stdin) {
            let (path, start, len) = (path.clone(), *start, *len);
            self.feeder = std::thread::Builder::new()
                .name("multiproc-pipepart".into())
                .spawn(move || {
                    let _ = feed_range(&path, start, len, pipe);
                })
                .ok();
        }
        if let Some((tag, _)) = self.pending.take() {
            if let Some(out) = stdout {
                self.stdout = forward(out, 1, tag.clone());
            }
            if let Some(err) = stderr {
                self.stderr = forward(err, 2, tag);
            }
        }
    }

    /// After the job: its stdout and stderr as the runner gets them. Stream threads are waited
    /// for to their end when `reuse` says nothing of the job is left to hold their pipes, else
    /// for at most [`LINGER`].
    pub(crate) fn collect(
        self,
        captures: &mut Captures,
        spill_fd: RawFd,
        seq: u64,
        reuse: bool,
    ) -> (Captured, Captured) {
        let mut one = |sink: Sink, stream: Stream| match sink {
            Sink::Captured => captures.collect(stream, spill_fd, seq, reuse),
            Sink::Elsewhere => Captured::default(),
            Sink::Forwarded(t) => {
                finish(t, reuse);
                Captured::default()
            }
            Sink::Kept(path) => Captured::bytes(format!("{path}\n").into_bytes()),
        };
        let out = one(self.stdout, Stream::Stdout);
        let err = one(self.stderr, Stream::Stderr);
        if let Some(t) = self.feeder {
            finish(t, reuse);
        }
        (out, err)
    }
}

/// How long a forwarding thread may take to finish after its job ended while something the job
/// started still holds the pipe (it is then left to finish on its own).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for a stream thread: to its end when nothing of the job is left (`all_gone`: the pipe
/// is at its end), else at most [`LINGER`].
fn finish(t: JoinHandle<()>, all_gone: bool) {
    if !all_gone {
        let deadline = std::time::Instant::now() + LINGER;
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if !t.is_finished() {
            return;
        }
    }
    let _ = t.join();
}

/// A `--pipe` block as a file the job reads from its start.
fn block_file(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd =
        nix::sys::memfd::memfd_create(c"multiproc-block", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut f = File::from(fd);
    f.write_all(bytes)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(OwnedFd::from(f))
}

/// `--files`: a new file `$TMPDIR/mpSEQ.XXXXXX` that outlives the run.
fn kept_file(seq: u64) -> io::Result<(File, String)> {
    let template = std::env::temp_dir().join(format!("mp{seq}.XXXXXX"));
    let (fd, path) = nix::unistd::mkstemp(&template)?;
    Ok((File::from(fd), path.display().to_string()))
}

/// Copies bytes `start..start+len` of `path` into the job's stdin.
fn feed_range(path: &str, start: u64, len: u64, mut pipe: ChildStdin) -> io::Result<u64> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    io::copy(&mut f.take(len), &mut pipe)
}

/// `--line-buffer`: a thread that copies `from` to fd `to` (1 or 2) a batch of whole lines per
/// `write(2)`, each line after `TAG\t` when tagged; a last line without `\n` goes at the end.
fn forward(mut from: impl Read + Send + 'static, to: RawFd, tag: Option<String>) -> Sink {
    let spawned = std::thread::Builder::new()
        .name("multiproc-lines".into())
        .spawn(move || {
            let target = if to == 1 {
                io::stdout().as_fd().try_clone_to_owned()
            } else {
                io::stderr().as_fd().try_clone_to_owned()
            };
            let Ok(target) = target else { return };
            let mut out = File::from(target);
            let prefix = tag.map(|t| format!("{t}\t").into_bytes());
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    write_lines(&mut out, &tagged(&pending, prefix.as_deref()));
                    pending = rest;
                }
            }
            if !pending.is_empty() {
                write_lines(&mut out, &tagged(&pending, prefix.as_deref()));
            }
        });
    match spawned {
        Ok(t) => Sink::Forwarded(t),
        Err(_) => Sink::Elsewhere,
    }
}

/// The most bytes one `write(2)` to a pipe may carry and stay whole (`PIPE_BUF`).
const ATOMIC_WRITE: usize = 4096;

/// Writes whole lines, as many per `write(2)` as fit in [`ATOMIC_WRITE`] bytes, so that lines
/// of jobs written at the same time do not mix (a single longer line is written alone, and may).
fn write_lines(out: &mut File, text: &[u8]) {
    let mut batch_start = 0;
    let mut batch_end = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if batch_end > batch_start && batch_end - batch_start + line.len() > ATOMIC_WRITE {
            let _ = out.write_all(&text[batch_start..batch_end]);
            batch_start = batch_end;
        }
        batch_end += line.len();
    }
    if batch_end > batch_start {
        let _ = out.write_all(&text[batch_start..batch_end]);
    }
}

/// `text` with `prefix` before each line.
pub(crate) fn tagged(text: &[u8], prefix: Option<&[u8]>) -> Vec<u8> {
    let Some(p) = prefix else {
        return text.to_vec();
    };
    let mut out = Vec::with_capacity(text.len() + p.len() * 4);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(p);
        out.extend_from_slice(line);
    }
    out
}

//! The multi-node runner's protocol with its agents, over each agent's `srun` step's own stdin
//! (runner to agent) and stdout (agent to runner): no port, no ssh.
//!
//! A frame is one postcard-encoded message written as lowercase hex and ended by `\n`. Text
//! lines, because `srun` and `slurmstepd` forward a task's stdout in chunks they may cut at
//! newlines (and with `--label`-like processing may hold a partial line): a frame is never
//! split or delayed by the line handling, and a stray line (a message some library prints on
//! stdout) is detected and reported rather than misread. Hex doubles the size of small
//! messages; a job's captured output travels the same way (big outputs belong in files, as on
//! one node).

use std::io::{self, BufRead, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::JobOutcome;

/// The longest frame line accepted (hex characters): a job's captured output up to 256 MiB.
pub(crate) const MAX_LINE: usize = 512 << 20;

/// Runner to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToAgent {
    /// Run the job with this seq over these input values (one per input source); the agent
    /// makes the command with its own slot (`{%}`).
    Run {
        /// The job's seq (`{#}`).
        seq: u64,
        /// Its input values.
        args: Vec<String>,
    },
}

/// Agent to runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum FromAgent {
    /// The agent is up: its node and how many jobs it runs at once.
    Hello {
        /// `SLURMD_NODENAME` (or the host name).
        node: String,
        /// Its slots (the local sizing rule, or `-j`).
        slots: usize,
        /// The agent's pid on its node (for messages, and the kill test).
        pid: u32,
    },
    /// A job ended (a job ended by a stop of the run is not reported: it did not finish).
    Done {
        /// The slot it ran in.
        slot: usize,
        /// The command as run, for the joblog.
        command_line: String,
        /// How it went.
        outcome: JobOutcome,
    },
}

/// Writes `msg` as one frame line, with one `write` call, and flushes.
///
/// # Errors
/// When encoding or writing fails (e.g. `EPIPE`: the other side is gone).
pub(crate) fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(msg).map_err(io::Error::other)?;
    let mut line = Vec::with_capacity(bytes.len() * 2 + 1);
    for b in bytes {
        line.push(HEX[usize::from(b >> 4)]);
        line.push(HEX[usize::from(b & 15)]);
    }
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Reads the next frame; `Ok(None)` at the end of the stream.
///
/// # Errors
/// `InvalidData` naming what is wrong (a line that is not hex, a message that does not decode,
/// a line over [`MAX_LINE`]); or the read's error.
pub(crate) fn read_frame<R: BufRead, T: DeserializeOwned>(r: &mut R) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if line.last() != Some(&b'\n') {
        return Err(bad(if line.len() > MAX_LINE {
            format!("a frame line over {MAX_LINE} bytes")
        } else {
            format!("a torn frame line ({} bytes, no newline)", line.len())
        }));
    }
    line.pop();
    if line.len() % 2 != 0 {
        return Err(bad(format!("not a frame: {:?}", preview(&line))));
    }
    let mut bytes = Vec::with_capacity(line.len() / 2);
    for pair in line.chunks_exact(2) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => bytes.push(h << 4 | l),
            _ => return Err(bad(format!("not a frame: {:?}", preview(&line)))),
        }
    }
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| bad(format!("a frame that does not decode: {e}")))
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The start of a bad line, for messages.
fn preview(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::Captured;

    fn outcome() -> JobOutcome {
        JobOutcome {
            seq: 7,
            start: 1.5,
            runtime: 0.25,
            exit: 3,
            signal: 0,
            timed_out: false,
            stdout: Captured::bytes(b"out\n\0\xff".to_vec()),
            stderr: Captured::bytes(b"err".to_vec()),
            attempts: 1,
            logged: false,
        }
    }

    #[test]
    fn frames_round_trip_in_a_stream() {
        let mut buf = Vec::new();
        let run = ToAgent::Run {
            seq: 3,
            args: vec!["a b".into(), "\n".into()],
        };
        write_frame(&mut buf, &run).unwrap();
        let done = FromAgent::Done {
            slot: 2,
            command_line: "echo 'a b'".into(),
            outcome: outcome(),
        };
        write_frame(&mut buf, &done).unwrap();
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 2);
        let mut r = io::Cursor::new(buf);
        assert_eq!(read_frame::<_, ToAgent>(&mut r).unwrap(), Some(run));
        assert_eq!(read_frame::<_, FromAgent>(&mut r).unwrap(), Some(done));
        assert_eq!(read_frame::<_, FromAgent>(&mut r).unwrap(), None);
    }

    #[test]
    fn stray_torn_and_garbled_lines_are_errors() {
        for (input, want) in [
            (&b"hello world\n"[..], "not a frame"),
            (b"0a0", "torn frame line"),
            (b"zz\n", "not a frame"),
            (b"ff\n", "does not decode"),
        ] {
            let e = read_frame::<_, FromAgent>(&mut io::Cursor::new(input)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(want), "{input:?}: {e}");
        }
    }
}

//! Job output arriving at the multi-node runner in `Output` frames ([`crate::proto`]): each
//! stream is gathered in memory up to [`SPILL_OVER`] bytes, then in a capture file (an unlinked
//! temporary file, as on one node), so the runner's memory stays bounded whatever a job prints.
//! Streams are keyed by agent too: a dead agent's partial output is dropped, never mixed with
//! the output of the job's run on another node.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};

use crate::spill::{Held, SPILL_OVER, capture_file};

/// One stream being gathered.
enum Part {
    Bytes(Vec<u8>),
    File(File),
}

/// Output of running jobs, by (agent, seq, stream).
#[derive(Default)]
pub(crate) struct Gathered {
    parts: HashMap<(usize, u64, u8), Part>,
}

impl std::fmt::Debug for Gathered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gathered({} streams)", self.parts.len())
    }
}

impl Gathered {
    /// Appends a chunk of `stream` (1 stdout, 2 stderr) of job `seq` on agent `agent`.
    ///
    /// # Errors
    /// A capture file cannot be made or written.
    pub(crate) fn push(
        &mut self,
        agent: usize,
        seq: u64,
        stream: u8,
        chunk: &[u8],
    ) -> io::Result<()> {
        let part = self
            .parts
            .entry((agent, seq, stream))
            .or_insert_with(|| Part::Bytes(Vec::new()));
        if let Part::Bytes(b) = part
            && (b.len() + chunk.len()) as u64 > SPILL_OVER
        {
            let mut f = File::from(capture_file()?);
            f.write_all(b)?;
            *part = Part::File(f);
        }
        match part {
            Part::Bytes(b) => b.extend_from_slice(chunk),
            Part::File(f) => f.write_all(chunk)?,
        }
        Ok(())
    }

    /// Takes the gathered stdout and stderr of job `seq` on agent `agent` (empty if none came).
    pub(crate) fn take(&mut self, agent: usize, seq: u64) -> (Held, Held) {
        let mut one = |stream| match self.parts.remove(&(agent, seq, stream)) {
            None => Held::Bytes(Vec::new()),
            Some(Part::Bytes(b)) => Held::Bytes(b),
            Some(Part::File(f)) => Held::File(f),
        };
        (one(1), one(2))
    }

    /// Drops whatever agent `agent` sent of jobs that did not finish.
    pub(crate) fn drop_agent(&mut self, agent: usize) {
        self.parts.retain(|k, _| k.0 != agent);
    }
}

/// The length of a held stream.
pub(crate) fn held_len(h: &Held) -> u64 {
    match h {
        Held::Bytes(b) => b.len() as u64,
        Held::File(f) => f.metadata().map_or(0, |m| m.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mut h: Held) -> Vec<u8> {
        let mut v = Vec::new();
        h.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn small_streams_stay_in_memory_big_ones_go_to_a_file() {
        let mut g = Gathered::default();
        g.push(0, 1, 1, b"ab").unwrap();
        g.push(0, 1, 1, b"cd").unwrap();
        g.push(0, 1, 2, b"err").unwrap();
        let big = vec![b'x'; SPILL_OVER as usize];
        g.push(1, 1, 1, b"y").unwrap();
        g.push(1, 1, 1, &big).unwrap();
        let (out, err) = g.take(0, 1);
        assert!(matches!(out, Held::Bytes(_)));
        assert_eq!((read(out), read(err)), (b"abcd".to_vec(), b"err".to_vec()));
        let (out, err) = g.take(1, 1);
        assert!(matches!(out, Held::File(_)));
        assert_eq!(held_len(&out), SPILL_OVER + 1);
        let bytes = read(out);
        assert_eq!(bytes[0], b'y');
        assert!(bytes[1..].iter().all(|&b| b == b'x'));
        assert!(held_len(&err) == 0);
    }

    #[test]
    fn a_dead_agents_partial_output_is_dropped() {
        let mut g = Gathered::default();
        g.push(0, 5, 1, b"half").unwrap();
        g.push(1, 6, 1, b"other").unwrap();
        g.drop_agent(0);
        let (out, _) = g.take(0, 5);
        assert_eq!(held_len(&out), 0);
        let (out, _) = g.take(1, 6);
        assert_eq!(held_len(&out), 5);
    }
}

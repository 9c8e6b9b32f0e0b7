//! The outcome journal: what a worker finished but has not sent yet survives the worker.
//!
//! A worker batches its replies (a task's outcomes go out when the task ends, and several
//! tasks' replies go out together), so a worker killed mid-chunk used to take the outcomes of
//! the inputs it had finished with it, and they ran again. Now, as each input finishes, the
//! worker also appends its encoded outcome to its own region of a shared mapping (a copy of a
//! few bytes for a small result), and publishes the new length with a release store in its
//! progress slot. An entry has a 24-byte head; the outcomes of a chunk of plain data (`u64`,
//! `(u32, f64)`, ...) form one run instead: one head, then only their bytes, the count
//! written into the head when the chunk ends (while open, the committed length tells). When the worker dies, the parent first reads every reply that reached the
//! socket, then reads the journal of the tasks still in flight: their finished inputs are
//! delivered from it, and each task is cut after its last journaled input, so that only the
//! input that was running is charged with the death and the rest of the chunk resumes there.
//!
//! The region is cleared when the worker starts a task with every earlier reply sent; entries
//! of tasks whose reply did arrive are recognized by their sequence number and ignored. An
//! outcome that carries descriptors (a big `PodVec`, a `SharedArray`...) is not journaled: its
//! descriptors die with the worker; nor is one that does not fit the region's
//! [`JOURNAL_BYTES`]: those inputs run again, as before.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::fdpass::FdTable;

use super::sched::{Done, Event, Items, JobId, Task};
use super::transport::Body;

/// Bytes of journal per worker (address space; only what is written takes memory).
pub(crate) const JOURNAL_BYTES: usize = 4 << 20;
/// Bytes of an entry before the outcome: seq `u64`, input `u32`, outcome length `u32`, end of
/// the input in the task's bytes `u64`.
pub(crate) const ENTRY_HEAD: usize = 24;

/// A journaled outcome: input `item` of the task sent as `seq` finished with `outcome`, and
/// its encoding ended at byte `input_end` of the task's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) item: u32,
    pub(crate) input_end: usize,
    pub(crate) outcome: Vec<u8>,
}

/// The head of an entry, as stored.
pub(crate) fn entry_head(seq: u64, item: u32, len: usize, input_end: usize) -> [u8; ENTRY_HEAD] {
    let mut h = [0u8; ENTRY_HEAD];
    h[0..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&item.to_le_bytes());
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(input_end as u64).to_le_bytes());
    h
}

/// Set in the outcome-length field of a head that starts a run (see [`run_head`]).
const RUN: u32 = 1 << 31;
/// The count of a run still being written: its outcomes are all the committed bytes after it.
pub(crate) const OPEN: u32 = u32::MAX;

/// The head of a run: the outcomes of consecutive inputs `item, item + 1, …` of task `seq`,
/// each `size` bytes, inputs of `input_size` bytes each (plain data), `count` of them (or
/// [`OPEN`]) right after the head. A chunk of plain data journals one head, then only its
/// outcomes' bytes (9 bytes for a `u64`, against 33 as entries of their own).
pub(crate) fn run_head(
    seq: u64,
    item: u32,
    size: usize,
    input_size: usize,
    count: u32,
) -> [u8; ENTRY_HEAD] {
    let mut h = [0u8; ENTRY_HEAD];
    h[0..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&item.to_le_bytes());
    h[12..16].copy_from_slice(&(RUN | size as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(input_size as u32).to_le_bytes());
    h[20..24].copy_from_slice(&count.to_le_bytes());
    h
}

/// Parses a journal region's committed bytes (a torn tail is ignored).
pub(crate) fn parse(mut bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    while bytes.len() >= ENTRY_HEAD {
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&bytes[r]);
            u64::from_le_bytes(b)
        };
        if word(12..16) as u32 & RUN != 0 {
            let (seq, first) = (word(0..8), word(8..12) as u32);
            let size = (word(12..16) as u32 & !RUN) as usize;
            let (input_size, count) = (word(16..20) as usize, word(20..24) as u32);
            let whole = (bytes.len() - ENTRY_HEAD) / size.max(1);
            let n = if count == OPEN {
                whole
            } else {
                whole.min(count as usize)
            };
            if size == 0 {
                break;
            }
            let outcomes = bytes[ENTRY_HEAD..].chunks_exact(size).take(n);
            out.extend(outcomes.zip(first..).map(|(o, item)| Entry {
                seq,
                item,
                input_end: (item as usize + 1) * input_size,
                outcome: o.to_vec(),
            }));
            if count == OPEN || n < count as usize {
                break;
            }
            bytes = &bytes[ENTRY_HEAD + n * size..];
            continue;
        }
        let len = word(12..16) as usize;
        if bytes.len() - ENTRY_HEAD < len {
            break;
        }
        out.push(Entry {
            seq: word(0..8),
            item: word(8..12) as u32,
            input_end: word(16..24) as usize,
            outcome: bytes[ENTRY_HEAD..ENTRY_HEAD + len].to_vec(),
        });
        bytes = &bytes[ENTRY_HEAD + len..];
    }
    out
}

/// The first `d` inputs of `items`.
fn head(items: &Items, d: usize) -> Items {
    match items {
        Items::Range(first, _) => Items::Range(*first, d as u32),
        Items::List(l) => Items::List(l[..d].into()),
    }
}

/// `items` without its first `d` inputs.
fn tail(items: &Items, d: usize) -> Items {
    match items {
        Items::Range(first, n) => Items::Range(first + d, n - d as u32),
        Items::List(l) => Items::List(l[d..].into()),
    }
}

/// What [`salvage`] found.
#[derive(Debug, Default)]
pub(crate) struct Salvaged {
    /// The outcomes recovered, to deliver to their jobs.
    pub(crate) events: Vec<(JobId, Event)>,
    /// The input that was running, `(seq, index in the task as it is now)`; `None` when the
    /// worker died between inputs (or the running input had finished).
    pub(crate) running: Option<(u64, u64)>,
    /// How many inputs were recovered.
    pub(crate) inputs: usize,
}

/// Takes the journaled outcomes of the tasks in `inflight` (of the dead worker `pid`, which was
/// running input `running = (seq, index)`): tasks all of whose inputs finished leave
/// `inflight`, the others keep only their unfinished inputs (from the first one without a
/// journal entry on).
pub(crate) fn salvage(
    entries: &[Entry],
    inflight: &mut VecDeque<(u64, Task)>,
    running: Option<(u64, u64)>,
    pid: i32,
) -> Salvaged {
    let mut found = Salvaged {
        running,
        ..Salvaged::default()
    };
    if entries.is_empty() {
        return found;
    }
    let tasks = std::mem::take(inflight);
    for (seq, mut task) in tasks {
        let count = task.items.count() as usize;
        let mut data = Vec::new();
        let mut d = 0usize;
        let mut input_end = 0usize;
        // The entries of this task, in order: a prefix of its inputs.
        for e in entries.iter().filter(|e| e.seq == seq) {
            if e.item as usize != d || d == count {
                break;
            }
            data.extend_from_slice(&e.outcome);
            input_end = e.input_end;
            d += 1;
        }
        if d < count && input_end > task.bytes.len() {
            // Not the inputs this task holds (cannot happen): recover nothing from it.
            d = 0;
        }
        if d == 0 {
            inflight.push_back((seq, task));
            continue;
        }
        found.inputs += d;
        found.events.push((
            task.job,
            Event::Done(Done {
                items: head(&task.items, d),
                data: Body::from_vec(data),
                pid,
                fds: FdTable::default(),
            }),
        ));
        if let Some((rseq, item)) = found.running.filter(|&(s, _)| s == seq) {
            found.running = (item >= d as u64).then(|| (rseq, item - d as u64));
        }
        if d == count {
            continue;
        }
        task.items = tail(&task.items, d);
        task.bytes = Arc::new(task.bytes[input_end..].to_vec());
        inflight.push_back((seq, task));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, item: u32, input_end: usize, outcome: &[u8]) -> Vec<u8> {
        let mut b = entry_head(seq, item, outcome.len(), input_end).to_vec();
        b.extend_from_slice(outcome);
        b
    }

    fn task(job: JobId, items: Items, bytes: &[u8]) -> Task {
        Task {
            job,
            items,
            bytes: Arc::new(bytes.to_vec()),
            fds: None,
            died: 0,
        }
    }

    #[test]
    fn parse_reads_entries_and_ignores_a_torn_tail() {
        let mut b = entry(7, 0, 1, &[0, 5]);
        b.extend(entry(7, 1, 2, &[0, 6, 6]));
        let whole = parse(&b);
        assert_eq!(whole.len(), 2);
        assert_eq!(
            whole[1],
            Entry {
                seq: 7,
                item: 1,
                input_end: 2,
                outcome: vec![0, 6, 6]
            }
        );
        assert_eq!(parse(&b[..b.len() - 1]).len(), 1);
        assert!(parse(&b[..ENTRY_HEAD - 1]).is_empty());
    }

    #[test]
    fn parse_expands_runs_open_or_closed_and_ignores_a_torn_outcome() {
        // A closed run of 2 outcomes of 3 bytes (inputs of 8 bytes), an entry, an open run.
        let mut b = run_head(4, 10, 3, 8, 2).to_vec();
        b.extend([0, 1, 1, 0, 2, 2]);
        b.extend(entry(4, 12, 104, &[0, 9]));
        b.extend(run_head(5, 0, 3, 8, OPEN));
        b.extend([0, 3, 3, 0, 4, 4, 0]);
        let e = parse(&b);
        let got: Vec<(u64, u32, usize, Vec<u8>)> = e
            .into_iter()
            .map(|e| (e.seq, e.item, e.input_end, e.outcome))
            .collect();
        assert_eq!(
            got,
            [
                (4, 10, 88, vec![0, 1, 1]),
                (4, 11, 96, vec![0, 2, 2]),
                (4, 12, 104, vec![0, 9]),
                (5, 0, 8, vec![0, 3, 3]),
                (5, 1, 16, vec![0, 4, 4]),
            ]
        );
        // A closed run whose outcomes were not all committed yields what is there.
        let mut c = run_head(6, 0, 3, 8, 3).to_vec();
        c.extend([0, 1, 1, 0]);
        assert_eq!(parse(&c).len(), 1);
    }

    #[test]
    fn salvage_delivers_finished_prefixes_and_cuts_the_running_task() {
        // Task 10 (inputs 0..3, one byte each) finished; task 11 (inputs 3..7) ran 3, 4 and was
        // running 5; task 12 did not start. Entries of task 9 (whose reply arrived) are stale.
        let mut b = entry(9, 0, 1, &[0, 1]);
        for (k, seq) in [(0u32, 10u64), (1, 10), (2, 10), (0, 11), (1, 11)] {
            b.extend(entry(seq, k, k as usize + 1, &[0, k as u8]));
        }
        let mut inflight: VecDeque<(u64, Task)> = [
            (10, task(1, Items::Range(0, 3), b"abc")),
            (11, task(1, Items::Range(3, 4), b"defg")),
            (12, task(1, Items::List(vec![9, 8].into()), b"hi")),
        ]
        .into();
        let s = salvage(&parse(&b), &mut inflight, Some((11, 2)), 42);
        assert_eq!(s.inputs, 5);
        assert_eq!(s.running, Some((11, 0)));
        let got: Vec<(usize, u32)> = s
            .events
            .iter()
            .map(|(_, e)| match e {
                Event::Done(d) => (d.items.index(0), d.items.count()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(0, 3), (3, 2)]);
        let left: Vec<(u64, usize, u32, Vec<u8>)> = inflight
            .iter()
            .map(|(s, t)| (*s, t.items.index(0), t.items.count(), t.bytes.to_vec()))
            .collect();
        assert_eq!(
            left,
            vec![(11, 5, 2, b"fg".to_vec()), (12, 9, 2, b"hi".to_vec())]
        );
        // Killed after input 5 was journaled, before 6 started: nothing was running.
        let mut inflight: VecDeque<(u64, Task)> =
            [(11, task(1, Items::Range(3, 4), b"defg"))].into();
        let s = salvage(&parse(&b), &mut inflight, Some((11, 1)), 42);
        assert_eq!(s.running, None);
        // A gap (input 1 missing) keeps only the prefix.
        let mut g = entry(20, 0, 1, &[0, 0]);
        g.extend(entry(20, 2, 3, &[0, 2]));
        let mut inflight: VecDeque<(u64, Task)> =
            [(20, task(1, Items::Range(0, 3), b"xyz"))].into();
        let s = salvage(&parse(&g), &mut inflight, Some((20, 1)), 1);
        assert_eq!((s.inputs, s.running), (1, Some((20, 0))));
        assert_eq!(&inflight[0].1.bytes[..], b"yz");
    }
}

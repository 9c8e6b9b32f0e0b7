//! How outcomes become a call's results: [`Seen`] marks the inputs answered, [`InOrder`]
//! assembles values in input order as chunks arrive in any order; [`FirstOnly`] and [`Values`]
//! are the collectors (see [`Collect`]) a map's outcomes go through, a run of plain values at a
//! time where they can.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::result::Collect;

/// Which inputs of a job have an outcome already: one bit per input (a map of 100,000 inputs
/// costs 12.5 KB, not 100 KB).
#[derive(Debug)]
pub(crate) struct Seen(Vec<u64>);

impl Seen {
    pub(crate) fn new(n: usize) -> Seen {
        Seen(vec![0; n.div_ceil(64)])
    }

    /// Marks input `i`; whether it was not marked before.
    #[inline]
    pub(crate) fn first(&mut self, i: usize) -> bool {
        let (word, bit) = (&mut self.0[i / 64], 1u64 << (i % 64));
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    /// The words and masks that cover inputs `first..first + n`.
    fn spans(first: usize, n: usize) -> impl Iterator<Item = (usize, u64)> {
        let end = first + n;
        (first / 64..end.div_ceil(64)).map(move |w| {
            let lo = first.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            (w, mask)
        })
    }

    /// Whether none of inputs `first..first + n` is marked.
    pub(crate) fn none_of(&self, first: usize, n: usize) -> bool {
        Self::spans(first, n).all(|(w, m)| self.0[w] & m == 0)
    }

    /// Marks inputs `first..first + n`.
    pub(crate) fn mark(&mut self, first: usize, n: usize) {
        for (w, m) in Self::spans(first, n) {
            self.0[w] |= m;
        }
    }
}

/// Passes on the first outcome of each input only (an input that ran again after its worker
/// died may have been answered already) and counts them.
pub(crate) struct FirstOnly<'a, C> {
    pub(crate) seen: Seen,
    /// Inputs answered.
    pub(crate) got: usize,
    pub(crate) put: &'a mut C,
}

impl<R, C: Collect<R>> Collect<R> for FirstOnly<'_, C> {
    #[inline]
    fn put(&mut self, i: usize, r: Result<R>) {
        if self.seen.first(i) {
            self.got += 1;
            self.put.put(i, r);
        }
    }

    fn put_run(&mut self, first: usize, n: usize, values: impl Iterator<Item = R>) {
        if !self.seen.none_of(first, n) {
            for (k, v) in values.enumerate() {
                self.put(first + k, Ok(v));
            }
            return;
        }
        let mut taken = 0;
        self.put.put_run(first, n, values.inspect(|_| taken += 1));
        self.seen.mark(first, taken);
        self.got += taken;
    }
}

/// A map's values in input order, and its first error in input order.
pub(crate) struct Values<R> {
    pub(crate) values: InOrder<R>,
    pub(crate) first_err: Option<(usize, Error)>,
}

impl<R> Collect<R> for Values<R> {
    #[inline]
    fn put(&mut self, i: usize, r: Result<R>) {
        match r {
            Ok(v) => self.values.put(i, v),
            Err(e) => {
                if self.first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    self.first_err = Some((i, e));
                }
            }
        }
    }

    fn put_run(&mut self, first: usize, n: usize, values: impl Iterator<Item = R>) {
        self.values.put_run(first, n, values);
    }
}

/// The values of a map in input order, as they arrive in any order: the prefix in order is the
/// result vector itself; a run of values that arrives ahead of it (another worker's chunk)
/// waits, keyed by its first input, and is appended (one copy) when the prefix reaches it. So a
/// map's values take one vector of `R` and the chunks that arrived early, instead of an
/// `Option<R>` per input and a second vector at the end.
#[derive(Debug)]
pub(crate) struct InOrder<R> {
    out: Vec<R>,
    /// The run being added to: its first input and its values.
    run: Option<(usize, Vec<R>)>,
    /// Runs set aside, by first input.
    early: BTreeMap<usize, Vec<R>>,
    /// The first input of the earliest run waiting (`usize::MAX`: none).
    wait_at: usize,
    /// Room to reserve for a new run (the chunk size).
    run_hint: usize,
}

impl<R> InOrder<R> {
    /// A collector of `n` values that arrive in runs of about `run_hint`.
    pub(crate) fn new(n: usize, run_hint: usize) -> InOrder<R> {
        InOrder {
            out: Vec::with_capacity(n),
            run: None,
            early: BTreeMap::new(),
            wait_at: usize::MAX,
            run_hint: run_hint.clamp(1, n.max(1)),
        }
    }

    /// Input `i`'s value (each input at most once).
    #[inline]
    pub(crate) fn put(&mut self, i: usize, v: R) {
        if i == self.out.len() {
            self.out.push(v);
            if self.out.len() == self.wait_at {
                self.catch_up();
            }
            return;
        }
        if let Some((start, run)) = &mut self.run {
            if *start + run.len() == i {
                run.push(v);
                return;
            }
        }
        self.start_run(i, v);
    }

    /// The values of inputs `first, first + 1, …` (at most `n`): appended to the prefix or to
    /// the current run when they continue it, else set aside as a run of their own.
    pub(crate) fn put_run(&mut self, first: usize, n: usize, values: impl Iterator<Item = R>) {
        if first == self.out.len() {
            self.out.extend(values);
            if self.out.len() == self.wait_at {
                self.catch_up();
            }
            return;
        }
        if let Some((start, run)) = &mut self.run {
            if *start + run.len() == first {
                run.extend(values);
                return;
            }
        }
        if let Some((start, run)) = self.run.take() {
            self.early.insert(start, run);
        }
        let mut run = Vec::with_capacity(n.max(self.run_hint));
        run.extend(values);
        if run.is_empty() {
            return;
        }
        self.run = Some((first, run));
        self.wait_at = self.wait_at.min(first);
    }

    /// Sets the current run aside and starts one at input `i`.
    #[cold]
    fn start_run(&mut self, i: usize, v: R) {
        if let Some((start, run)) = self.run.take() {
            self.early.insert(start, run);
        }
        let mut run = Vec::with_capacity(self.run_hint);
        run.push(v);
        self.run = Some((i, run));
        self.wait_at = self.wait_at.min(i);
    }

    /// Appends the runs that start where the prefix ends.
    #[cold]
    fn catch_up(&mut self) {
        loop {
            let at = self.out.len();
            if let Some(mut run) = self.early.remove(&at) {
                self.out.append(&mut run);
            } else if self.run.as_ref().is_some_and(|(start, _)| *start == at) {
                if let Some((_, mut run)) = self.run.take() {
                    self.out.append(&mut run);
                }
            } else {
                break;
            }
        }
        let first_early = self.early.keys().next().copied().unwrap_or(usize::MAX);
        let run_start = self.run.as_ref().map_or(usize::MAX, |(start, _)| *start);
        self.wait_at = first_early.min(run_start);
    }

    /// The values in input order, or `None` when some input has none.
    pub(crate) fn finish(self, n: usize) -> Option<Vec<R>> {
        (self.out.len() == n).then_some(self.out)
    }
}

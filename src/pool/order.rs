//! How outcomes become a call's results: [`Seen`] marks the inputs answered, [`InOrder`]
//! assembles values in input order as chunks arrive in any order.

use std::collections::BTreeMap;

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

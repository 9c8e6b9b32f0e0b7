//! [`SeqSet`]: a compact set of job numbers (the joblog's `Seq`s), for `--resume*`.
//!
//! A joblog of a million finished jobs names nearly every number from 1 to a million, so the set
//! is kept as sorted, disjoint runs `start..end` of consecutive numbers: a finished run of a
//! million jobs is one run (16 bytes), not a million tree entries. Jobs finish slightly out of
//! order (`-j N`), so [`SeqSetBuilder`] extends the last run when it can and buffers the rest,
//! merging the buffer in batches: building costs O(lines + runs × batches), memory O(runs +
//! batch), whatever the order.

/// How many out-of-order numbers a [`SeqSetBuilder`] buffers before merging them into its runs.
const BATCH: usize = 64 * 1024;

/// A set of `u64`s as sorted, disjoint, non-adjacent runs `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    runs: Vec<(u64, u64)>,
}

impl SeqSet {
    /// Whether `seq` is in the set (a binary search over the runs).
    pub(crate) fn contains(&self, seq: u64) -> bool {
        let i = self.runs.partition_point(|&(_, end)| end <= seq);
        self.runs.get(i).is_some_and(|&(start, _)| start <= seq)
    }

    /// How many numbers the set holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.runs.iter().map(|&(start, end)| end - start).sum()
    }

    /// How many of `1..=last` the set holds.
    pub(crate) fn count_up_to(&self, last: u64) -> u64 {
        let limit = last.saturating_add(1);
        self.runs
            .iter()
            .take_while(|&&(start, _)| start < limit)
            .map(|&(start, end)| end.min(limit) - start)
            .sum()
    }

    /// Every number in the set, in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(start, end)| start..end)
    }

    /// The number of runs (the set's size in memory is 16 bytes per run).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

impl FromIterator<u64> for SeqSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut b = SeqSetBuilder::default();
        for seq in iter {
            b.insert(seq);
        }
        b.build()
    }
}

/// Builds a [`SeqSet`] from numbers in any order (best near-increasing, as joblog lines are).
#[derive(Debug, Default)]
pub(crate) struct SeqSetBuilder {
    set: SeqSet,
    /// Numbers that did not extend the last run, merged every [`BATCH`].
    pending: Vec<u64>,
}

impl SeqSetBuilder {
    /// Adds `seq` (a number already present is fine). `u64::MAX` is not representable as a run
    /// end and is ignored: no joblog reaches it.
    pub(crate) fn insert(&mut self, seq: u64) {
        if seq == u64::MAX {
            return;
        }
        if let Some(last) = self.set.runs.last_mut()
            && last.0 <= seq
            && seq <= last.1
        {
            last.1 = last.1.max(seq + 1);
            return;
        }
        if self.set.runs.is_empty() {
            self.set.runs.push((seq, seq + 1));
            return;
        }
        self.pending.push(seq);
        if self.pending.len() >= BATCH {
            self.merge_pending();
        }
    }

    /// The set.
    pub(crate) fn build(mut self) -> SeqSet {
        self.merge_pending();
        self.set
    }

    /// Merges the buffered numbers into the runs (both sorted, so one linear pass).
    fn merge_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        let old = std::mem::take(&mut self.set.runs);
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(old.len() + 1);
        let mut push = |(start, end): (u64, u64)| match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        };
        let mut news = self.pending.drain(..).map(|s| (s, s + 1)).peekable();
        let mut olds = old.into_iter().peekable();
        loop {
            let next = match (olds.peek(), news.peek()) {
                (Some(o), Some(n)) if o.0 <= n.0 => olds.next(),
                (_, Some(_)) => news.next(),
                (Some(_), None) => olds.next(),
                (None, None) => break,
            };
            push(next.expect("peeked"));
        }
        self.set.runs = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Checks a set against the plain tree of the same numbers.
    fn same(set: &SeqSet, want: &BTreeSet<u64>) {
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            want.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(set.len(), want.len() as u64);
        let top = want.last().copied().unwrap_or(0) + 3;
        let mut upto = 0;
        for x in 0..top {
            assert_eq!(set.contains(x), want.contains(&x), "{x}");
            upto += u64::from(x >= 1 && want.contains(&x));
            assert_eq!(set.count_up_to(x), upto, "count_up_to({x})");
        }
        for w in set.runs.windows(2) {
            assert!(w[0].1 < w[1].0, "runs overlap or touch: {:?}", set.runs);
        }
    }

    #[test]
    fn in_order_is_one_run() {
        let set: SeqSet = (1..=100_000).collect();
        assert_eq!(set.runs(), 1);
        assert!(set.contains(1) && set.contains(100_000) && !set.contains(100_001));
        assert!(!set.contains(0));
        assert_eq!(set.count_up_to(50), 50);
    }

    #[test]
    fn any_order_with_gaps_and_repeats_matches_a_tree() {
        // A fixed pseudo-random order (xorshift), gaps every 7th, repeats, more than one batch.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut want = BTreeSet::new();
        let mut b = SeqSetBuilder::default();
        for _ in 0..(BATCH * 2 + 100) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = x % 20_000 + 1;
            if seq % 7 != 0 {
                want.insert(seq);
                b.insert(seq);
            }
        }
        same(&b.build(), &want);
    }

    #[test]
    fn near_sorted_and_empty() {
        same(&SeqSet::default(), &BTreeSet::new());
        let order = [2, 1, 3, 5, 4, 9, 8, 10, 12, 12, 1, 7];
        let set: SeqSet = order.iter().copied().collect();
        same(&set, &order.iter().copied().collect());
        assert_eq!(set.runs(), 3);
        let set: SeqSet = [u64::MAX, u64::MAX - 1].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), [u64::MAX - 1]);
    }
}

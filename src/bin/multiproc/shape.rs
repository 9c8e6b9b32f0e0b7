//! Input shaping: how input combinations become the values of jobs, as GNU parallel does it:
//! `--colsep` splits each value into columns, `-N n` puts n inputs in one job, `-X`/`-m` put as
//! many as fit (spread evenly over the job slots when the inputs are all known), `--shuf`
//! shuffles the jobs.

use std::io;

use crate::flags::Shape;

/// The most bytes of inputs one `-X`/`-m` job gets (well under Linux's 2 MiB argv limit and its
/// 128 KiB limit for one argument).
const MAX_CHARS: usize = 120_000;

/// `--colsep`: each value of a combination split into its columns, all in a row.
pub(crate) fn columns(values: Vec<String>, colsep: Option<&regex::Regex>) -> Vec<String> {
    match colsep {
        None => values,
        Some(re) => values
            .iter()
            .flat_map(|v| re.split(v).map(str::to_owned).collect::<Vec<_>>())
            .collect(),
    }
}

/// `--colsep` and `-N` over a stream of combinations (usable on an endless input).
pub(crate) fn stream<I: Iterator<Item = io::Result<Vec<String>>>>(
    combos: I,
    shape: &Shape,
) -> impl Iterator<Item = io::Result<Vec<String>>> + use<I> {
    let colsep = shape.colsep.clone();
    let per_job = shape.per_job.map_or(1, |n| n.get());
    let mut combos = combos.map(move |c| c.map(|v| columns(v, colsep.as_ref())));
    std::iter::from_fn(move || {
        if per_job == 1 {
            return combos.next();
        }
        let mut job: Vec<String> = Vec::new();
        for i in 0..per_job {
            match combos.next() {
                Some(Ok(values)) => job.extend(values),
                Some(Err(e)) => return Some(Err(e)),
                None if i == 0 => return None,
                None => break,
            }
        }
        Some(Ok(job))
    })
}

/// `-X`/`-m`: the inputs (each combination's values) packed into jobs: an equal share of the
/// inputs per job slot (ceil(inputs / slots)), as GNU parallel does when it knows them all,
/// and never more than [`MAX_CHARS`] bytes per job.
pub(crate) fn pack(inputs: Vec<Vec<String>>, slots: usize) -> Vec<Vec<String>> {
    let values: Vec<String> = inputs.into_iter().flatten().collect();
    let per_job = values.len().div_ceil(slots.max(1)).max(1);
    let mut jobs = Vec::new();
    let mut job: Vec<String> = Vec::new();
    let mut chars = 0;
    for v in values {
        if !job.is_empty() && (job.len() >= per_job || chars + v.len() + 1 > MAX_CHARS) {
            jobs.push(std::mem::take(&mut job));
            chars = 0;
        }
        chars += v.len() + 1;
        job.push(v);
    }
    if !job.is_empty() {
        jobs.push(job);
    }
    jobs
}

/// `--shuf`: a Fisher-Yates shuffle, seeded from the clock and the pid (no crate needed for
/// "some random order").
pub(crate) fn shuffle<T>(items: &mut [T]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    for i in (1..items.len()).rev() {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn colsep_and_n_per_job() {
        let shape = Shape {
            colsep: Some(regex::Regex::new(",").unwrap()),
            per_job: std::num::NonZeroUsize::new(2),
            ..Shape::default()
        };
        let combos = vec![Ok(v(&["a,b"])), Ok(v(&["c"])), Ok(v(&["d,e,f"]))];
        let jobs: Vec<Vec<String>> = stream(combos.into_iter(), &shape)
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(jobs, [v(&["a", "b", "c"]), v(&["d", "e", "f"])]);
    }

    #[test]
    fn pack_spreads_over_the_slots() {
        let inputs: Vec<Vec<String>> = (1..=8).map(|i| vec![i.to_string()]).collect();
        let jobs = pack(inputs.clone(), 4);
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[3], v(&["7", "8"]));
        assert_eq!(pack(inputs[..3].to_vec(), 2), [v(&["1", "2"]), v(&["3"])]);
        let big: Vec<Vec<String>> = (0..100).map(|_| vec!["x".repeat(10_000)]).collect();
        let jobs = pack(big, 1);
        assert!(
            jobs.iter().all(|j| j.len() * 10_001 <= MAX_CHARS),
            "{}",
            jobs.len()
        );
        assert_eq!(jobs.iter().map(Vec::len).sum::<usize>(), 100);
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut items: Vec<u32> = (0..1000).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(items, sorted, "1000 items left in order: not shuffled");
    }
}

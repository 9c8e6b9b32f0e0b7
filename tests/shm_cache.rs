//! The cache of warm `PodVec` memory files (issue 17 §3): a vector sent again reuses a kept file
//! and the receiver its kept mapping; reuse never touches a vector that is alive in any process;
//! a forked child never reuses its parent's files; received vectors arrive with every page
//! mapped; 1,000 rounds leave memory and descriptors bounded.
//!
//! Every test holds `fork_lock`: the cache and its figures are per process, shared by the tests
//! of this binary when they run as threads.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use common::{fork_lock, secs};
use multiproc::{KeptStats, PodVec, Pool, Process, pipe};
use serde::{Deserialize, Serialize};

fn join_ok(p: &Process) {
    if !p.join_timeout(secs(120)).unwrap() {
        p.kill().unwrap();
        p.join().unwrap();
        panic!("a worker did not finish in time");
    }
    assert_eq!(p.exitcode(), Some(0));
}

/// `n` elements, each naming its round and index, so that a stale or foreign byte shows.
fn pattern(round: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| (round << 40) | i).collect()
}

fn is_pattern(v: &[u64], round: u64) -> bool {
    v.iter()
        .enumerate()
        .all(|(i, &x)| x == (round << 40) | i as u64)
}

/// Pages of `v` with no page-table entry now (`/proc/self/pagemap`, bit 63): touching them
/// would fault.
fn pages_not_present<T>(v: &[T]) -> usize {
    let page = 4096;
    let start = v.as_ptr() as usize / page;
    let end = (v.as_ptr() as usize + std::mem::size_of_val(v)).div_ceil(page);
    let file = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut buf = vec![0u8; (end - start) * 8];
    file.read_exact_at(&mut buf, (start * 8) as u64).unwrap();
    buf.chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 0)
        .count()
}

/// Descriptors of this process that are multiproc memory files.
fn memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("memfd:multiproc-shm"))
        .count()
}

/// Mappings of multiproc memory files in this process.
fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:multiproc-shm"))
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[derive(Serialize, Deserialize, Debug)]
struct Report {
    ok: bool,
    ptr: u64,
    not_present: usize,
    hits: u64,
    mapped: u64,
}

/// One way, to a worker, 20 times the same length: after the first round the parent copies into
/// the file it kept (no new file) and the worker reads it through the mapping it kept (same
/// address, no new mapping), every page present on arrival, the data right every round.
#[test]
fn vectors_sent_one_way_reuse_the_kept_file_on_both_sides() {
    let _f = fork_lock();
    const N: usize = 1 << 17; // 1 MiB of u64
    PodVec::<u64>::release_kept();
    let (to, from) = pipe::<(u64, PodVec<u64>), Report>().unwrap();
    let worker = Process::new(move || {
        while let Ok((round, v)) = from.recv_timeout(secs(60)) {
            if v.is_empty() {
                break;
            }
            let not_present = pages_not_present(&v);
            let ok = is_pattern(&v, round);
            let ptr = v.as_ptr() as u64;
            drop(v); // free again: the parent may reuse the file
            let s = PodVec::<u64>::kept_stats();
            let (hits, mapped) = (s.hits, s.mapped);
            let report = Report {
                ok,
                ptr,
                not_present,
                hits,
                mapped,
            };
            from.send(&report).unwrap();
        }
    });
    worker.start().unwrap();
    let before = PodVec::<u64>::kept_stats();
    let mut reports = Vec::new();
    for round in 0..20u64 {
        to.send(&(round, pattern(round, N).into())).unwrap();
        reports.push(to.recv_timeout(secs(60)).unwrap());
    }
    to.send(&(0, Vec::new().into())).unwrap();
    join_ok(&worker);
    let after = PodVec::<u64>::kept_stats();
    assert!(reports.iter().all(|r| r.ok), "data wrong in a round");
    assert!(reports.iter().all(|r| r.not_present == 0), "{reports:?}");
    assert_eq!(after.created - before.created, 1, "one file for all rounds");
    assert_eq!(after.reused - before.reused, 19);
    let last = reports.last().unwrap();
    assert_eq!(
        (last.mapped, last.hits),
        (1, 19),
        "the worker mapped the file once"
    );
    assert!(reports[1..].iter().all(|r| r.ptr == reports[0].ptr));
}

/// A received vector that is still alive is never the file of a later send, in this process or
/// in another: while the parent holds one, the worker sends others in new files; once the
/// parent drops it, the worker's next send reuses it. Every held vector keeps its data.
#[test]
fn a_kept_file_is_never_reused_while_a_vector_lives_on_it() {
    let _f = fork_lock();
    const N: usize = 1 << 16;
    PodVec::<u64>::release_kept();
    // In one process, through a pipe to itself.
    let (a, b) = pipe::<PodVec<u64>, ()>().unwrap();
    a.send(&pattern(1, N).into()).unwrap();
    let held = b.recv().unwrap();
    a.send(&pattern(2, N).into()).unwrap();
    let mut second = b.recv().unwrap();
    assert_ne!(
        held.as_ptr(),
        second.as_ptr(),
        "a live vector's file was reused"
    );
    second.fill(0);
    assert!(is_pattern(&held, 1));
    drop(second);
    let before = PodVec::<u64>::kept_stats();
    a.send(&pattern(3, N).into()).unwrap();
    let third = b.recv().unwrap();
    assert_eq!(PodVec::<u64>::kept_stats().reused, before.reused + 1);
    assert!(is_pattern(&held, 1) && is_pattern(&third, 3));
    drop((held, third));

    // Across processes: the worker sends round k when asked, and reports its cache figures.
    let (ctl, wctl) = pipe::<u64, (PodVec<u64>, KeptStats)>().unwrap();
    let worker = Process::new(move || {
        while let Ok(round) = wctl.recv_timeout(secs(60)) {
            if round == 0 {
                break;
            }
            wctl.send(&(pattern(round, N).into(), PodVec::<u64>::kept_stats()))
                .unwrap();
        }
    });
    worker.start().unwrap();
    let get = |round| {
        ctl.send(&round).unwrap();
        ctl.recv_timeout(secs(60)).unwrap()
    };
    // Each reply carries the worker's figures from before its send: those of the rounds before.
    let (w1, _) = get(1);
    let (w2, s2) = get(2); // w1 is alive while round 2 is sent: the worker needs a new file
    let (w3, s3) = get(3);
    assert_eq!(
        s3.created,
        s2.created + 1,
        "round 2 reused the file of live w1"
    );
    assert!(w1.as_ptr() != w2.as_ptr() && w2.as_ptr() != w3.as_ptr());
    assert!(is_pattern(&w1, 1) && is_pattern(&w2, 2) && is_pattern(&w3, 3));
    drop(w1);
    let (w4, s4) = get(4);
    let (w5, s5) = get(5);
    assert_eq!(
        s5.reused,
        s4.reused + 1,
        "round 4 did not reuse w1's file, free by then"
    );
    assert!(is_pattern(&w2, 2) && is_pattern(&w3, 3) && is_pattern(&w4, 4));
    assert!(is_pattern(&w5, 5));
    ctl.send(&0).unwrap();
    join_ok(&worker);
}

/// Held by the parent across a fork: the child inherits it (same memory) and drops it.
static HELD: Mutex<Option<PodVec<u64>>> = Mutex::new(None);

/// A forked child starts with an empty cache (the parent's kept files are forgotten), cannot
/// free a vector it inherited, and so never writes into a file the parent keeps or uses: what
/// it sends arrives in files new to the parent, and the parent's vectors keep their data.
#[test]
fn a_forked_child_never_reuses_or_frees_the_parents_files() {
    let _f = fork_lock();
    const N: usize = 1 << 16;
    PodVec::<u64>::release_kept();
    // A worker that sends round k when asked: it keeps the file of each vector it sent.
    let (ctl, wctl) = pipe::<u64, PodVec<u64>>().unwrap();
    let worker = Process::new(move || {
        while let Ok(round) = wctl.recv_timeout(secs(60)) {
            if round == 0 {
                break;
            }
            wctl.send(&pattern(round, N).into()).unwrap();
        }
    });
    worker.start().unwrap();
    let from_worker = |round| {
        ctl.send(&round).unwrap();
        ctl.recv_timeout(secs(60)).unwrap()
    };
    // One vector alive (held; its file kept by the worker too), one file free in the
    // parent's cache.
    *HELD.lock().unwrap() = Some(from_worker(1));
    let (a, b) = pipe::<PodVec<u64>, ()>().unwrap();
    a.send(&pattern(2, N).into()).unwrap();
    drop(b.recv().unwrap());
    assert_eq!(PodVec::<u64>::kept_stats().kept, 1);

    let (to_parent, from_child) = pipe::<(PodVec<u64>, KeptStats), ()>().unwrap();
    let child = Process::new(move || {
        let inherited = PodVec::<u64>::kept_stats();
        // The child's copy of the parent's live vector: dropping it must free nothing.
        drop(HELD.lock().unwrap().take());
        for round in 10..20 {
            let stats = if round == 10 {
                inherited
            } else {
                PodVec::<u64>::kept_stats()
            };
            to_parent.send(&(pattern(round, N).into(), stats)).unwrap();
        }
    });
    child.start().unwrap();
    let before = PodVec::<u64>::kept_stats();
    let mut got = Vec::new();
    for round in 10..20 {
        let (v, stats) = from_child.recv_timeout(secs(60)).unwrap();
        if round == 10 {
            assert_eq!(
                (stats.kept, stats.created),
                (0, 0),
                "the child forgot the parent's files"
            );
        }
        assert!(is_pattern(&v, round));
        got.push(v);
    }
    join_ok(&child);
    let after = PodVec::<u64>::kept_stats();
    assert_eq!(
        after.hits, before.hits,
        "the child sent in a file the parent keeps"
    );
    let held = HELD.lock().unwrap().take().unwrap();
    assert!(
        is_pattern(&held, 1),
        "the child changed the parent's live vector"
    );
    // Had the child's drop freed the held vector's file, the worker would reuse it now.
    let w = from_worker(4);
    assert!(
        is_pattern(&w, 4) && is_pattern(&held, 1),
        "the child freed a live vector"
    );
    ctl.send(&0).unwrap();
    join_ok(&worker);
    // With the child's vectors alive, the only free file is the parent's own: its next send
    // reuses it (the child did not take it).
    let before = PodVec::<u64>::kept_stats();
    a.send(&pattern(3, N).into()).unwrap();
    assert!(is_pattern(&b.recv().unwrap(), 3));
    assert_eq!(PodVec::<u64>::kept_stats().reused, before.reused + 1);
    assert!(is_pattern(&held, 1));
    assert!(got.iter().zip(10..).all(|(v, round)| is_pattern(v, round)));
}

fn sum_and_files(v: PodVec<u8>) -> (u64, usize, usize) {
    let s = v.iter().map(|&x| u64::from(x)).sum();
    drop(v);
    (s, memfds(), memfd_mappings())
}

/// 1,000 one-way sends through a pool, of seven sizes cycling under tight bounds (3 files,
/// 8 MiB), so that files are evicted and made all the time: the kept files stay within the
/// bounds, and neither process's memory files, mappings, descriptors or resident memory grow.
#[test]
fn a_thousand_one_way_sends_leave_memory_and_descriptors_bounded() {
    let _f = fork_lock();
    PodVec::<u8>::release_kept();
    let memfds_before = memfds();
    let defaults = PodVec::<u8>::kept_stats();
    PodVec::<u8>::set_kept_limits(8 << 20, 3);
    let sizes = [
        300usize << 10,
        700 << 10,
        1 << 20,
        1300 << 10,
        2 << 20,
        3 << 20,
        1 << 20,
    ];
    let pool = Pool::with_processes(1).unwrap();
    // The pool's own memory files (progress slots...), not the cache's.
    let pool_memfds = memfds();
    let round = |r: usize| {
        let n = sizes[r % sizes.len()];
        let v = vec![(r % 251) as u8; n];
        let (sum, worker_memfds, worker_maps) = pool.apply(sum_and_files, v.into()).unwrap();
        assert_eq!(sum, (r % 251) as u64 * n as u64, "round {r}");
        (worker_memfds, worker_maps)
    };
    let worker_first = round(0);
    (1..100).for_each(|r| {
        round(r);
    });
    // Descriptors other than the kept files: constant from here on.
    let other_fds = open_fds() - PodVec::<u8>::kept_stats().kept;
    let rss = common::status_kib("VmRSS:");
    let mut worker_max = (0, 0);
    for r in 100..1000 {
        let (f, m) = round(r);
        worker_max = (worker_max.0.max(f), worker_max.1.max(m));
        let s = PodVec::<u8>::kept_stats();
        assert!(s.kept <= 3 && s.kept_bytes <= 8 << 20, "{s:?}");
        assert_eq!(
            open_fds() - s.kept,
            other_fds,
            "descriptors grew in round {r}"
        );
        assert!(
            memfds() <= pool_memfds + 3,
            "memory files grew in round {r}"
        );
    }
    let s = PodVec::<u8>::kept_stats();
    assert!(s.evicted > 0 && s.reused > 0, "{s:?}");
    // The worker keeps at most 3 too (the bounds are inherited) besides the one it sums.
    assert!(
        worker_max.0 <= worker_first.0 + 3 && worker_max.1 <= worker_first.1 + 3,
        "worker: first {worker_first:?}, then up to {worker_max:?}"
    );
    let grown = common::status_kib("VmRSS:") as i64 - rss as i64;
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} KiB over 900 rounds"
    );
    drop(pool);
    PodVec::<u8>::set_kept_limits(defaults.max_bytes, defaults.max_segments);
    PodVec::<u8>::release_kept();
    assert_eq!(memfds(), memfds_before, "memory files left behind");
}

fn sum_f64(v: PodVec<f64>) -> (f64, usize) {
    (v.iter().sum(), memfds())
}

/// The case at full size, 1,000 times: 80 MB from a heap `Vec` to a pool worker, its
/// sum back. One memory file serves every round; the parent's and the worker's memory files and
/// the parent's resident memory stay flat. 1–2 minutes: `--ignored`.
#[test]
#[ignore]
fn eighty_megabytes_one_way_a_thousand_times_keep_memory_flat() {
    let _f = fork_lock();
    PodVec::<f64>::release_kept();
    let data: Vec<f64> = (0..10_000_000u64).map(|i| (i % 1000) as f64).collect();
    let want: f64 = data.iter().sum();
    let pool = Pool::with_processes(1).unwrap();
    let before = PodVec::<f64>::kept_stats();
    let (first_sum, worker_memfds) = pool.apply(sum_f64, data.clone().into()).unwrap();
    assert_eq!(first_sum, want);
    let (fds, files, rss) = (open_fds(), memfds(), common::status_kib("VmRSS:"));
    for r in 1..1000 {
        let (sum, w) = pool.apply(sum_f64, data.clone().into()).unwrap();
        assert_eq!((sum, w), (want, worker_memfds), "round {r}");
    }
    assert_eq!((open_fds(), memfds()), (fds, files));
    let grown = common::status_kib("VmRSS:") as i64 - rss as i64;
    assert!(grown < 16 * 1024, "resident memory grew by {grown} KiB");
    let after = PodVec::<f64>::kept_stats();
    assert_eq!(
        (after.created - before.created, after.reused - before.reused),
        (1, 999)
    );
}

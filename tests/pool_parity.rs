//! Smaller Python parity (issue 11 §4): `starmap` with 1 to 6 arguments, a per-call chunk size
//! (`map_chunked`), `PodVec::from_slice` and `Clone`.

mod common;

use common::secs;
use multiproc::{PodVec, Pool, Process, pipe};

fn one(a: u64) -> u64 {
    a + 1
}
fn two(a: u64, b: u8) -> u64 {
    a * b as u64
}
fn three(a: i32, b: i32, c: i32) -> i32 {
    a.clamp(b, c)
}
fn four(a: String, b: u32, c: char, d: bool) -> String {
    format!("{a}{b}{c}{d}")
}
fn five(a: u8, b: u16, c: u32, d: u64, e: i64) -> i64 {
    a as i64 + b as i64 + c as i64 + d as i64 + e
}
fn six(a: f64, b: f64, c: f64, d: f64, e: f64, f: Vec<u32>) -> f64 {
    a + b + c + d + e + f.iter().sum::<u32>() as f64
}
fn divide(a: u32, b: u32, c: u32) -> u32 {
    a / b / c
}

#[test]
fn starmap_takes_tuples_of_one_to_six_fields() {
    let pool = Pool::with_processes(2).unwrap();
    let n = 300u64;
    assert_eq!(
        pool.starmap(one, (0..n).map(|i| (i,))).unwrap(),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.starmap(two, (0..n).map(|i| (i, 3u8))).unwrap(),
        (0..n).map(|i| i * 3).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.starmap(three, (-5..5).map(|i| (i, -2, 2))).unwrap(),
        (-5..5).map(|i: i32| i.clamp(-2, 2)).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.starmap(
            four,
            [("x".to_string(), 1, 'c', true), ("y".into(), 2, 'd', false)]
        )
        .unwrap(),
        ["x1ctrue", "y2dfalse"]
    );
    assert_eq!(
        pool.starmap(five, (0..n).map(|i| (1u8, 2u16, 3u32, i, -(i as i64))))
            .unwrap(),
        vec![6; n as usize]
    );
    assert_eq!(
        pool.starmap(six, [(0.5, 1.0, 1.5, 2.0, 2.5, vec![1, 2, 3])])
            .unwrap(),
        [13.5]
    );
    // Closures with their argument types written out.
    assert_eq!(
        pool.starmap(|a: u32, b: u32, c: u32| a + b + c, [(1, 2, 3)])
            .unwrap(),
        [6]
    );
    // The async form, and a failing input among many.
    let r = pool
        .starmap_async(three, (0..100).map(|i| (i, 10, 20)))
        .unwrap();
    assert_eq!(
        r.get_timeout(secs(60)).unwrap(),
        (0..100).map(|i: i32| i.clamp(10, 20)).collect::<Vec<_>>()
    );
    let err = pool
        .starmap(divide, (0..50u32).map(|i| (100, 1, u32::from(i != 17))))
        .unwrap_err();
    assert!(err.panic().is_some(), "{err}");
}

#[test]
fn map_chunked_sets_the_chunk_size_of_one_call_only() {
    let pool = Pool::with_processes(2).unwrap();
    pool.set_chunksize(Some(7)).unwrap();
    // One chunk of all 500 inputs: a single task, so a single worker ran every input.
    let pids = pool
        .map_chunked(|_: u32| std::process::id(), 0..500, 500)
        .unwrap();
    assert_eq!(pids.len(), 500);
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "one chunk ran on several workers"
    );
    assert_eq!(pool.chunksize(), Some(7), "the pool's chunk size changed");
    // Results in input order, any chunk size.
    for chunksize in [1, 3, 64, 10_000] {
        assert_eq!(
            pool.map_chunked(|x: u64| x * x, 0..1000, chunksize)
                .unwrap(),
            (0..1000u64).map(|x| x * x).collect::<Vec<_>>()
        );
    }
    let err = pool.map_chunked(|x: u32| x, 0..3, 0).unwrap_err();
    assert!(err.to_string().contains("chunksize"), "{err}");
    assert_eq!(pool.chunksize(), Some(7));
}

#[test]
fn pod_vec_from_a_slice_and_clones_are_copies() {
    let data: Vec<f64> = (0..100_000).map(|i| i as f64 * 0.5).collect();
    let v = PodVec::from_slice(&data[10..]);
    assert_eq!(&v[..], &data[10..]);
    let mut c = v.clone();
    c[0] = -1.0;
    assert_eq!(v[0], 5.0, "the clone shares memory with the original");
    assert_eq!(&c[1..], &data[11..]);

    // A received PodVec lives in a mapping of a memory file: its clone is a copy of its own.
    let (tx, rx) = pipe::<PodVec<f64>, ()>().unwrap();
    let sent = data.clone();
    let p = Process::new(move || tx.send(&PodVec::from_slice(&sent)).unwrap());
    p.start().unwrap();
    let got = rx.recv_timeout(secs(60)).unwrap();
    assert!(p.join_timeout(secs(60)).unwrap());
    let mut copy = got.clone();
    copy[5] = 42.0;
    assert_eq!(got[5], 2.5);
    assert_eq!(&got[..], &data[..]);
    assert_eq!(copy.len(), data.len());
}

fn whoami(_: u8) -> (String, bool) {
    let me = multiproc::current_process();
    (me.name().to_string(), me.daemon())
}

#[test]
fn current_process_in_a_pool_worker() {
    let pool = Pool::with_processes(1).unwrap();
    let (name, daemon) = pool.apply(whoami, 0).unwrap();
    assert_eq!(name, "PoolWorker-1");
    assert!(daemon, "pool workers are daemons, as in Python");
}

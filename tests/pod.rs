//! A user's `#[derive(Pod, Zeroable)]` struct and arrays like `[f64; 3]` through each channel:
//! a `SharedArray` and a `SharedValue` written by another process, a `PodVec` through a `Queue`
//! (small, inline, and big, by descriptor), and a `Pool` whose tasks write into a `SharedArray`
//! and return `PodVec`s. The derives use multiproc's re-export: this crate has no `bytemuck`
//! dependency of its own.

mod common;

use common::{fork_lock, secs};

use multiproc::{Pod, PodVec, Pool, Process, Queue, SharedArray, SharedValue, Zeroable};

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "multiproc::bytemuck")]
#[repr(C)]
struct Particle {
    pos: [f64; 3],
    mass: f64,
    id: u64,
}

fn particle(id: u64) -> Particle {
    let x = id as f64;
    Particle {
        pos: [x, -x, x * 0.5],
        mass: 1.0 + x,
        id,
    }
}

fn join_ok(p: &Process) {
    assert!(p.join_timeout(secs(60)).unwrap(), "child still running");
    assert_eq!(p.exitcode(), Some(0), "child failed");
}

#[test]
fn derived_struct_in_a_shared_array_and_a_shared_value_written_by_a_child() {
    let _f = fork_lock();
    let arr = SharedArray::<Particle>::new(4).unwrap();
    let val = SharedValue::new(particle(0)).unwrap();
    let vectors = SharedArray::<[f64; 3]>::new(2).unwrap();
    let (a, v, w) = (arr.clone(), val.clone(), vectors.clone());
    let p = Process::new(move || {
        for i in 0..4 {
            a.set(i, particle(i as u64 + 10)).unwrap();
        }
        v.store(particle(99)).unwrap();
        w.set(1, [1.5, 2.5, 3.5]).unwrap();
    });
    p.start().unwrap();
    join_ok(&p);
    let want: Vec<Particle> = (10..14).map(particle).collect();
    assert_eq!(arr.to_vec().unwrap(), want);
    assert_eq!(val.load().unwrap(), particle(99));
    assert_eq!(vectors.to_vec().unwrap(), vec![[0.0; 3], [1.5, 2.5, 3.5]]);
}

#[test]
fn derived_struct_pod_vecs_through_a_queue_and_back() {
    let _f = fork_lock();
    let (to, from): (Queue<PodVec<Particle>>, Queue<PodVec<Particle>>) =
        (Queue::new().unwrap(), Queue::new().unwrap());
    let (to2, from2) = (to.clone(), from.clone());
    let p = Process::new(move || {
        for _ in 0..2 {
            let v = to2.get_timeout(secs(60)).unwrap();
            let heavier: Vec<Particle> = v
                .iter()
                .map(|q| Particle {
                    mass: q.mass * 2.0,
                    ..*q
                })
                .collect();
            from2.put(&heavier.into()).unwrap();
        }
    });
    p.start().unwrap();
    // 3 particles go inline; 100 000 (4 MB) go by descriptor.
    for n in [3u64, 100_000] {
        let sent: Vec<Particle> = (0..n).map(particle).collect();
        to.put(&sent.clone().into()).unwrap();
        let back = from.get_timeout(secs(60)).unwrap().into_vec();
        assert_eq!(back.len(), sent.len());
        for (b, s) in back.iter().zip(&sent) {
            assert_eq!((b.id, b.pos, b.mass), (s.id, s.pos, s.mass * 2.0));
        }
    }
    join_ok(&p);
}

#[test]
fn derived_struct_through_a_pool() {
    let _f = fork_lock();
    let pool = Pool::with_processes(2).unwrap();
    // Tasks return PodVecs of the struct.
    let out = pool
        .map(
            |n: u64| PodVec::from((0..n).map(particle).collect::<Vec<_>>()),
            [1u64, 5, 20_000],
        )
        .unwrap();
    for (v, n) in out.iter().zip([1u64, 5, 20_000]) {
        assert_eq!(v.to_vec(), (0..n).map(particle).collect::<Vec<_>>());
    }
    // Tasks write into a SharedArray of the struct that the parent made.
    let arr = SharedArray::<Particle>::new(8).unwrap();
    let ids = pool
        .map(
            |(a, i): (SharedArray<Particle>, usize)| {
                a.set(i, particle(100 + i as u64)).unwrap();
                a.get(i).unwrap().id
            },
            (0..8).map(|i| (arr.clone(), i)),
        )
        .unwrap();
    assert_eq!(ids, (100..108).collect::<Vec<u64>>());
    assert_eq!(
        arr.to_vec().unwrap(),
        (100..108).map(particle).collect::<Vec<_>>()
    );
    pool.close();
    pool.join().unwrap();
}

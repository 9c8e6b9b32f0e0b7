//! Pipe: duplex and one-way ends across processes, timeouts, dead peers, and shared objects
//! (SharedArray, Lock, PodVec) handed by descriptor to a process that is already running,
//! 1 GiB included.

mod common;

use common::{fork_lock, ms, secs};

use std::time::Instant;

use multiproc::{Error, Lock, PodVec, Process, SharedArray, SharedValue, pipe, pipe_oneway};
use serde::{Deserialize, Serialize};

fn join_code(p: &Process) -> Option<i32> {
    if !p.join_timeout(secs(120)).unwrap() {
        p.kill().unwrap();
        p.join().unwrap();
        return None;
    }
    p.exitcode()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Hello(String),
    Numbers(Vec<u32>),
    Bye,
}

#[test]
fn duplex_round_trips_between_processes() {
    let _f = fork_lock();
    let (parent, child) = pipe::<Msg, Msg>().unwrap();
    let p = Process::new(move || {
        loop {
            match child.recv_timeout(secs(60)).unwrap() {
                Msg::Hello(s) => child.send(&Msg::Hello(s.to_uppercase())).unwrap(),
                Msg::Numbers(v) => child
                    .send(&Msg::Numbers(v.iter().map(|x| x * 2).collect()))
                    .unwrap(),
                Msg::Bye => break,
            }
        }
    });
    p.start().unwrap();
    parent.send(&Msg::Hello("abc".into())).unwrap();
    assert!(parent.poll(secs(60)).unwrap());
    assert_eq!(parent.recv().unwrap(), Msg::Hello("ABC".into()));
    let big: Vec<u32> = (0..200_000).collect();
    parent.send(&Msg::Numbers(big.clone())).unwrap();
    let Msg::Numbers(back) = parent.recv_timeout(secs(60)).unwrap() else {
        panic!("wrong answer")
    };
    assert!(back.iter().zip(&big).all(|(b, x)| *b == x * 2));
    parent.send(&Msg::Bye).unwrap();
    assert_eq!(join_code(&p), Some(0));
    // The child has exited: its end is closed everywhere.
    let err = parent.recv_timeout(secs(10)).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let err = parent.send(&Msg::Bye).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
}

#[test]
fn recv_timeout_and_poll_time_out() {
    let (a, b) = pipe::<u8, u8>().unwrap();
    let t = Instant::now();
    assert!(a.recv_timeout(ms(50)).unwrap_err().is_timeout());
    assert!(t.elapsed() >= ms(45));
    assert!(!a.poll(ms(20)).unwrap());
    b.send(&9).unwrap();
    assert!(a.poll(ms(1000)).unwrap());
    assert_eq!(a.recv().unwrap(), 9);
}

#[test]
fn oneway_pipe() {
    let _f = fork_lock();
    let (rx, tx) = pipe_oneway::<u64>().unwrap();
    let p = Process::new(move || {
        for i in 0..100 {
            tx.send(&i).unwrap();
        }
    });
    p.start().unwrap();
    let got: Vec<u64> = (0..100)
        .map(|_| rx.recv_timeout(secs(60)).unwrap())
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(join_code(&p), Some(0));
    assert!(rx.recv_timeout(secs(10)).unwrap_err().is_disconnected());
}

/// The receiver waits on its end while still holding an inherited copy of the sender's end (so no
/// end of file can come); the sender, a sibling, is killed: the receive must fail, not hang.
/// (The sender was once the receiver's parent; a child now dies with its parent.)
#[test]
fn dead_peer_gives_disconnected_not_a_hang() {
    let _f = fork_lock();
    let outcome = SharedValue::new(0u32).unwrap();
    let out = outcome.clone();
    let (mine, theirs) = pipe::<u8, u8>().unwrap();
    let receiver = Process::new(move || {
        assert_eq!(theirs.recv_timeout(secs(30)).unwrap(), 1);
        let t = Instant::now();
        let code = match theirs.recv_timeout(secs(30)) {
            Err(Error::Disconnected(_)) if t.elapsed() < secs(10) => 1,
            Err(Error::Disconnected(_)) => 2,
            Err(e) if e.is_timeout() => 3,
            _ => 4,
        };
        out.store(code).unwrap();
    });
    receiver.start().unwrap();
    let sender = Process::new(move || {
        mine.send(&1).unwrap();
        std::thread::sleep(ms(200));
        // Die without closing anything.
        std::mem::forget(mine);
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    });
    sender.start().unwrap();
    assert_eq!(join_code(&sender), Some(-9));
    assert_eq!(join_code(&receiver), Some(0));
    assert_eq!(outcome.load().unwrap(), 1, "1 = Disconnected quickly");
}

#[test]
fn shared_array_handed_to_a_running_process_by_descriptor() {
    let _f = fork_lock();
    let (parent, child) = pipe::<(SharedArray<i64>, Lock), u64>().unwrap();
    let p = Process::new(move || {
        // Both objects are made after this process started.
        let (a, lock) = child.recv_timeout(secs(60)).unwrap();
        {
            let _g = lock.acquire().unwrap();
            let mut g = a.lock().unwrap();
            for x in g.iter_mut() {
                *x = -*x;
            }
        }
        child.send(&(a.len() as u64)).unwrap();
        // Keep the lock held until the parent has checked it is shared.
        let _g = lock.acquire().unwrap();
        child.send(&0).unwrap();
        let _ = child.recv_timeout(secs(60));
    });
    p.start().unwrap();
    let a = SharedArray::from_slice(&(0..1000).collect::<Vec<i64>>()).unwrap();
    let lock = Lock::new().unwrap();
    parent.send(&(a.clone(), lock.clone())).unwrap();
    assert_eq!(parent.recv_timeout(secs(60)).unwrap(), 1000);
    assert_eq!(
        a.to_vec().unwrap(),
        (0..1000).map(|x| -x).collect::<Vec<_>>()
    );
    assert_eq!(parent.recv_timeout(secs(60)).unwrap(), 0);
    assert!(
        lock.try_acquire().is_err(),
        "the child's lock is the same lock"
    );
    drop(parent);
    assert_eq!(join_code(&p), Some(0));
}

#[test]
fn pod_vec_through_a_pipe_is_mapped_not_copied_twice() {
    let _f = fork_lock();
    let (parent, child) = pipe::<PodVec<f64>, PodVec<f64>>().unwrap();
    let p = Process::new(move || {
        let mut v = child.recv_timeout(secs(60)).unwrap();
        for x in v.iter_mut() {
            *x += 1.0;
        }
        child.send(&v).unwrap();
        // Small ones go inline.
        let small = child.recv_timeout(secs(60)).unwrap();
        child.send(&small).unwrap();
    });
    p.start().unwrap();
    let data: Vec<f64> = (0..(10 << 20) / 8).map(|i| i as f64).collect();
    parent.send(&data.clone().into()).unwrap();
    let back = parent.recv_timeout(secs(60)).unwrap();
    assert!(format!("{back:?}").contains("mapped: true"));
    assert!(back.iter().zip(&data).all(|(b, d)| *b == d + 1.0));
    parent.send(&vec![1.0, 2.0].into()).unwrap();
    let small = parent.recv_timeout(secs(60)).unwrap();
    assert!(format!("{small:?}").contains("mapped: false"));
    assert_eq!(small.into_vec(), [1.0, 2.0]);
    assert_eq!(join_code(&p), Some(0));
}

/// 1 GiB crosses to a running process: as a SharedArray (no copy) and as a PodVec (one copy).
#[test]
fn one_gib_payload() {
    let _f = fork_lock();
    const N: usize = (1 << 30) / 8;
    let (parent, child) = pipe::<(SharedArray<f64>, PodVec<f64>), f64>().unwrap();
    let p = Process::new(move || {
        let (a, v) = child.recv_timeout(secs(120)).unwrap();
        assert_eq!((a.len(), v.len()), (N, N));
        // SAFETY: the parent does not write `a` until it has our answer.
        let s = unsafe { a.as_slice() };
        let sum = s[0] + s[N / 2] + s[N - 1] + v[0] + v[N / 2] + v[N - 1];
        child.send(&sum).unwrap();
    });
    p.start().unwrap();
    let a = SharedArray::<f64>::new(N).unwrap();
    a.set(N - 1, 1.0).unwrap();
    let mut v = vec![0.0f64; N];
    v[N / 2] = 2.0;
    let t = Instant::now();
    parent.send(&(a, v.into())).unwrap();
    let sum = parent.recv_timeout(secs(120)).unwrap();
    let took = t.elapsed();
    assert_eq!(sum, 3.0);
    assert_eq!(join_code(&p), Some(0));
    eprintln!("1 GiB SharedArray + 1 GiB PodVec handed over in {took:?}");
}

/// `send_owned` forwards a received PodVec without copying; `send` of a received PodVec copies,
/// so later writes by the sender are not seen by the receiver.
#[test]
fn pod_vec_forwarding_and_no_aliasing() {
    let _f = fork_lock();
    let (parent, child) = pipe::<PodVec<u64>, PodVec<u64>>().unwrap();
    let p = Process::new(move || {
        // Echo twice: in place and forwarded.
        for _ in 0..2 {
            let mut v = child.recv_timeout(secs(60)).unwrap();
            for x in v.iter_mut() {
                *x += 1;
            }
            child.send_owned(v).unwrap();
        }
        // Report what arrived, after the parent has written its own copy.
        let v = child.recv_timeout(secs(60)).unwrap();
        std::thread::sleep(ms(100));
        child.send_owned(vec![v[0], v[v.len() - 1]].into()).unwrap();
    });
    p.start().unwrap();
    const N: usize = 1 << 20;
    parent
        .send_owned((0..N as u64).collect::<Vec<_>>().into())
        .unwrap();
    let v = parent.recv_timeout(secs(60)).unwrap();
    assert!(format!("{v:?}").contains("mapped: true"));
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
    parent.send_owned(v).unwrap();
    let mut v = parent.recv_timeout(secs(60)).unwrap();
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 + 2));
    parent.send(&v).unwrap(); // by reference: a copy goes
    v[0] = 999;
    v[N - 1] = 999;
    let seen = parent.recv_timeout(secs(60)).unwrap();
    assert_eq!(seen.into_vec(), [2, N as u64 + 1]);
    assert_eq!(join_code(&p), Some(0));
}

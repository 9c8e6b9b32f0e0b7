//! `Queue`: no false `Disconnected` while a process that holds the queue can still put.
//!
//! Each scenario runs in a loop: `MULTIPROC_TRIALS` trials (default 20, what CI runs); the
//! `#[ignore]`d variants run 200 each:
//! `cargo test --release --test queue_disconnect -- --ignored`.

mod common;

use common::{fork_lock, ms, secs};
use multiproc::{Error, PipeReceiver, Process, Queue, pipe_oneway};

/// Exit codes of the consumers below.
const GOT_IT: i32 = 0;
const FALSE_DISCONNECT: i32 = 2;
const OTHER_ERROR: i32 = 4;
const WRONG_ITEM: i32 = 5;

fn trials(default: usize) -> usize {
    std::env::var("MULTIPROC_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Takes one item and exits: [`GOT_IT`] if it is `want`, [`FALSE_DISCONNECT`] on `Disconnected`.
fn take_and_exit(q: &Queue<u32>, want: u32) -> ! {
    std::process::exit(match q.get_timeout(secs(60)) {
        Ok(v) if v == want => GOT_IT,
        Ok(_) => WRONG_ITEM,
        Err(e) if e.is_disconnected() => FALSE_DISCONNECT,
        Err(_) => OTHER_ERROR,
    })
}

/// Waits (bounded) until `pid` sleeps in the kernel: after its last handshake, the consumer's
/// only blocking call is the `get`, so it then waits in it.
fn wait_until_sleeping(pid: i32) {
    let deadline = std::time::Instant::now() + secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        if state == Some('S') {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{pid} never waited");
        std::thread::yield_now();
    }
}

fn recv_ready(rx: &PipeReceiver<u8>) {
    rx.recv_timeout(secs(30)).expect("consumer handshake");
}

/// The only producer puts one item, then joins its consumer with a bound: the consumer's next
/// `get` must keep waiting (the producer comes back from `join_timeout` and puts again).
fn producer_in_join_timeout_trial() {
    let q: Queue<u32> = Queue::new().unwrap();
    let (ready_rx, ready_tx) = pipe_oneway::<u8>().unwrap();
    let consumer = {
        let q = q.clone();
        Process::new(move || {
            if q.get_timeout(secs(60)).ok() != Some(1) {
                std::process::exit(WRONG_ITEM);
            }
            ready_tx.send(&1).unwrap();
            take_and_exit(&q, 2)
        })
    };
    consumer.start().unwrap();
    q.put(&1).unwrap();
    recv_ready(&ready_rx);
    if !consumer.join_timeout(ms(300)).unwrap() {
        q.put(&2).unwrap();
        assert!(consumer.join_timeout(secs(60)).unwrap(), "consumer hung");
    }
    assert_eq!(
        consumer.exitcode(),
        Some(GOT_IT),
        "{FALSE_DISCONNECT} is a false Disconnected"
    );
}

/// Several consumers wait in `get`; the parent SIGKILLs and joins all but one, one after another:
/// the first one must keep waiting, and gets the item the parent puts afterwards. The victims hold
/// memory, so that they take a while to die (the window in which a killed child still looks
/// alive and waiting).
fn consumer_killed_and_joined_trial() {
    const CONSUMERS: usize = 4;
    const VICTIM_BYTES: usize = 128 << 20;
    let q: Queue<u32> = Queue::new().unwrap();
    let mut ready = Vec::new();
    let consumers: Vec<Process> = (0..CONSUMERS)
        .map(|_| {
            let (ready_rx, ready_tx) = pipe_oneway::<u8>().unwrap();
            ready.push(ready_rx);
            let q = q.clone();
            Process::new(move || {
                let ballast = vec![1u8; VICTIM_BYTES];
                ready_tx.send(&ballast[VICTIM_BYTES / 2]).unwrap();
                take_and_exit(&q, 7)
            })
        })
        .collect();
    // The survivor starts first, so that it holds the get lock and is the consumer that checks
    // for disconnection; the victims wait behind it (in `get`, for the lock).
    for (c, ready_rx) in consumers.iter().zip(&ready) {
        c.start().unwrap();
        recv_ready(ready_rx);
        wait_until_sleeping(c.pid().unwrap());
    }
    let (survivor, victims) = consumers.split_first().unwrap();
    for v in victims {
        v.kill().unwrap();
        // Without a bound: a bounded join never makes the parent look stuck.
        assert!(
            common::join_with_watchdog(v, secs(30)),
            "killed consumer not reaped"
        );
        assert_eq!(
            survivor.exitcode(),
            None,
            "the survivor ended while the parent joined a killed consumer"
        );
    }
    q.put(&7).unwrap();
    assert!(survivor.join_timeout(secs(60)).unwrap(), "survivor hung");
    assert_eq!(
        survivor.exitcode(),
        Some(GOT_IT),
        "{FALSE_DISCONNECT} is a false Disconnected"
    );
}

#[test]
fn no_disconnect_while_the_only_producer_is_in_join_timeout() {
    let _f = fork_lock();
    for _ in 0..trials(20) {
        producer_in_join_timeout_trial();
    }
}

#[test]
#[ignore = "200 trials, ~70 s: cargo test --release --test queue_disconnect -- --ignored"]
fn no_disconnect_while_the_only_producer_is_in_join_timeout_200() {
    let _f = fork_lock();
    for _ in 0..200 {
        producer_in_join_timeout_trial();
    }
}

#[test]
fn no_disconnect_when_the_parent_kills_and_joins_another_consumer() {
    let _f = fork_lock();
    for _ in 0..trials(20) {
        consumer_killed_and_joined_trial();
    }
}

#[test]
#[ignore = "200 trials: cargo test --release --test queue_disconnect -- --ignored"]
fn no_disconnect_when_the_parent_kills_and_joins_another_consumer_200() {
    let _f = fork_lock();
    for _ in 0..200 {
        consumer_killed_and_joined_trial();
    }
}

/// The rule still holds the other way: once nobody can put, a waiting consumer is released.
#[test]
fn disconnect_once_the_producer_joins_without_a_bound() {
    let _f = fork_lock();
    let q: Queue<u32> = Queue::new().unwrap();
    let consumer = {
        let q = q.clone();
        Process::new(move || match q.get_timeout(secs(60)) {
            Err(Error::Disconnected(_)) => std::process::exit(10),
            _ => std::process::exit(OTHER_ERROR),
        })
    };
    consumer.start().unwrap();
    assert!(
        common::join_with_watchdog(&consumer, secs(60)),
        "consumer hung"
    );
    assert_eq!(consumer.exitcode(), Some(10));
}

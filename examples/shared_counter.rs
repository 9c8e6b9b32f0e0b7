//! N processes increment one `SharedValue`, with and without a `Lock`, side by side.
//!
//! `v.store(v.load() + 1)` is two steps: without the lock, two processes can load the same value
//! and one increment is lost. Run: `cargo run --release --example shared_counter`.

use multiproc::{Lock, Process, SharedValue};

const PROCS: usize = 4;
const PER_PROC: u64 = 20_000;

fn run(locked: bool) -> multiproc::Result<u64> {
    let counter = SharedValue::new(0u64)?;
    let lock = Lock::new()?;
    let workers: Vec<Process> = (0..PROCS)
        .map(|_| {
            let (counter, lock) = (counter.clone(), lock.clone());
            Process::new(move || {
                for _ in 0..PER_PROC {
                    let _guard = locked.then(|| lock.acquire().expect("lock"));
                    let v = counter.load().expect("load");
                    counter.store(v + 1).expect("store");
                }
            })
        })
        .collect();
    for w in &workers {
        w.start()?;
    }
    for w in &workers {
        w.join()?;
        assert_eq!(w.exitcode(), Some(0));
    }
    counter.load()
}

fn main() -> multiproc::Result<()> {
    let expected = PROCS as u64 * PER_PROC;
    let with = run(true)?;
    let without = run(false)?;
    println!("{PROCS} processes x {PER_PROC} increments, expected {expected}");
    println!("{:<14} {:>10} {:>12}", "", "total", "lost");
    println!("{:<14} {:>10} {:>12}", "with Lock", with, expected - with);
    println!(
        "{:<14} {:>10} {:>12}",
        "without Lock",
        without,
        expected - without
    );
    assert_eq!(with, expected, "the locked count must be exact");
    Ok(())
}

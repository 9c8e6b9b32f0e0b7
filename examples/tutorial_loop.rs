//! The tutorial loop, written the natural way: start a process per input and let it go.
//!
//! ```text
//! cargo run --release --example tutorial_loop
//! ```
//!
//! Each `Process` is dropped at the end of its iteration. As in Python, a non-daemon child keeps
//! running, and the program waits for every one of them when `main` returns: all four lines are
//! printed, in whatever order the children finish.

use multiproc::{Process, current_process};

fn work(i: u64) {
    // Some work: the sum of the first 2,000,000·(i+1) integers.
    let n = 2_000_000 * (i + 1);
    let sum: u64 = (0..n).sum();
    let me = current_process();
    println!("{} (pid {}): sum below {n} is {sum}", me.name(), me.pid());
}

fn main() -> multiproc::Result<()> {
    for i in 0..4 {
        let p = Process::new(move || work(i)).name(format!("worker-{i}"));
        p.start()?; // `p` is dropped here; the child runs on
    }
    println!("main is done; the program waits for its children");
    Ok(())
}

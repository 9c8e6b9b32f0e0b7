//! A handful of `apply_async` calls with callbacks, one of which panics.
//!
//! Run: `cargo run --example apply_async`

use std::time::Duration;

use multiproc::Pool;

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(50 * x));
    if x == 3 {
        panic!("three is not allowed");
    }
    x * 2
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::with_processes(2)?;
    let results = (0..5)
        .map(|x| {
            Ok(pool
                .apply_async(slow_double, x)?
                .callback(move |v| println!("callback: {x} -> {v}"))
                .error_callback(move |e| println!("error_callback: {x} failed: {e}")))
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    // Callbacks run in this process (the pool's driver thread) as the results arrive; join
    // returns once they all ran.
    pool.close();
    pool.join()?;
    for (x, r) in results.into_iter().enumerate() {
        match r.get() {
            Ok(v) => println!("get: {x} -> {v}"),
            Err(e) => println!(
                "get: {x} -> error: {}",
                e.panic().map_or("?", |p| &p.message)
            ),
        }
    }
    Ok(())
}

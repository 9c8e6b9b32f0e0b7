//! The tutorial's first program: `Process(target=square, args=(5,))`.
//!
//! ```text
//! cargo run --release --example square
//! ```

use multiproc::Process;

fn square(x: i64) {
    println!("square({x}) = {}", x * x);
}

fn main() -> multiproc::Result<()> {
    let p = Process::new(|| square(5)).name("square");
    p.start()?;
    p.join()?;
    println!(
        "process {:?} ended with exitcode {:?}",
        p.get_name(),
        p.exitcode()
    );

    // The Rust-native form: the child's result comes back typed.
    let handle = multiproc::spawn(|| 5i64 * 5)?;
    println!("spawn(|| 5 * 5) returned {}", handle.join()?);
    Ok(())
}

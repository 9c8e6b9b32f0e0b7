//! `mmul`: a batch binary that multiplies two square matrices, for the `mmul_queue` tutorial.
//!
//! Input on stdin (whitespace-separated text): `N`, then the N×N entries of A row by row, then
//! the N×N entries of B. Output on stdout: the N×N entries of C = A·B, one row per line, each
//! number printed so that it parses back to the same `f64`. Errors go to stderr with exit code 2.
//!
//! ```text
//! cargo run --release --example mmul < in1 > in1.out
//! ```

use std::io::{self, BufWriter, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mmul: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let mut words = text.split_ascii_whitespace();
    let n: usize = words
        .next()
        .ok_or("empty input: expected N first")?
        .parse()
        .map_err(|e| format!("N is not a whole number: {e}"))?;
    if n == 0 || n > 20_000 {
        return Err(format!("N = {n} is out of range 1..=20000"));
    }
    let mut read = |name: &str| -> Result<Vec<f64>, String> {
        (0..n * n)
            .map(|i| {
                words
                    .next()
                    .ok_or_else(|| format!("{name} has only {i} of {} entries", n * n))?
                    .parse::<f64>()
                    .map_err(|e| format!("{name} entry {i}: {e}"))
            })
            .collect()
    };
    let a = read("A")?;
    let b = read("B")?;
    let c = multiply(n, &a, &b);
    let out = io::stdout();
    let mut out = BufWriter::new(out.lock());
    for row in c.chunks(n) {
        let line: Vec<String> = row.iter().map(|x| format!("{x:e}")).collect();
        writeln!(out, "{}", line.join(" ")).map_err(|e| format!("cannot write stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write stdout: {e}"))
}

/// C = A·B for row-major N×N matrices (i-k-j order, so the inner loop streams rows).
fn multiply(n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        let c_row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            let b_row = &b[k * n..(k + 1) * n];
            for (cij, bkj) in c_row.iter_mut().zip(b_row) {
                *cij += aik * bkj;
            }
        }
    }
    c
}

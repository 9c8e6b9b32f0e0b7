//! The "mmul queue" tutorial: N workers take input files from a queue until their poison pill and
//! run a batch binary on each, `mmul < inK > inK.out`, with no shell.
//!
//! ```text
//! cargo run --release --example mmul_queue            # 4 inputs of 400×400, 4 workers
//! cargo run --release --example mmul_queue -- 600 8 2 # N, inputs, workers
//! ```
//!
//! It writes the inputs (two random N×N matrices each), runs the jobs, checks every output
//! against a product computed in-process, and prints each job's time and GFLOP/s.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use multiproc::{Process, Queue};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().map_err(|e| format!("argument {a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(400);
    let inputs = args.get(1).copied().unwrap_or(4);
    let workers = args.get(2).copied().unwrap_or(4);
    let mmul = mmul_binary()?;

    let dir = std::env::temp_dir().join(format!("multiproc-mmul-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut expected = Vec::new();
    for k in 1..=inputs {
        let (a, b) = (
            random_matrix(n, 2 * k as u64),
            random_matrix(n, 2 * k as u64 + 1),
        );
        let path = dir.join(format!("in{k}"));
        write_input(&path, n, &a, &b)?;
        expected.push((path, multiply(n, &a, &b)));
    }

    // The tutorial: a queue of file names, one pill per worker, workers that stop at their pill.
    let jobs: Queue<PathBuf> = Queue::new()?;
    let done: Queue<(PathBuf, f64, i32)> = Queue::new()?;
    for (path, _) in &expected {
        jobs.put(path)?;
    }
    for _ in 0..workers {
        jobs.put_pill()?;
    }
    let started = Instant::now();
    let procs: Vec<Process> = (0..workers)
        .map(|w| {
            let (jobs, done, mmul) = (jobs.clone(), done.clone(), mmul.clone());
            Process::new(move || {
                for input in jobs.iter() {
                    let t = Instant::now();
                    let code = run_job(&mmul, &input);
                    done.put(&(input, t.elapsed().as_secs_f64(), code)).unwrap();
                }
            })
            .name(format!("mmul-worker-{w}"))
        })
        .collect();
    for p in &procs {
        p.start()?;
    }
    let flop = 2.0 * (n as f64).powi(3);
    println!(
        "{inputs} jobs of {n}x{n} on {workers} workers, batch binary {}",
        mmul.display()
    );
    println!("(a job's time includes starting mmul and reading and writing its text files)");
    let mut failures = 0;
    for _ in 0..inputs {
        let (input, secs, code) = done.get()?;
        let name = input
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if code != 0 {
            println!("  {name}: mmul exited with {code}");
            failures += 1;
            continue;
        }
        let want = &expected
            .iter()
            .find(|(p, _)| *p == input)
            .ok_or("unknown job")?
            .1;
        let ok = check_output(&input.with_extension("out"), want)?;
        println!(
            "  {name}: {:7.1} ms  {:6.2} GFLOP/s  output {}",
            secs * 1e3,
            flop / secs / 1e9,
            if ok { "correct" } else { "WRONG" }
        );
        failures += usize::from(!ok);
    }
    for p in &procs {
        p.join()?;
    }
    println!(
        "all jobs done in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    std::fs::remove_dir_all(&dir)?;
    if failures > 0 {
        return Err(format!("{failures} jobs failed").into());
    }
    Ok(())
}

/// Runs `mmul < input > input.out` without a shell; returns its exit code (-N for signal N).
fn run_job(mmul: &Path, input: &Path) -> i32 {
    let (Ok(stdin), Ok(stdout)) = (File::open(input), File::create(input.with_extension("out")))
    else {
        return 127;
    };
    match Command::new(mmul)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
    {
        Ok(status) => status.code().unwrap_or(-1),
        Err(_) => 127,
    }
}

/// The `mmul` example binary beside this one; built with cargo if it is not there yet.
fn mmul_binary() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("mmul");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "mmul"]);
        if me.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        if !status.success() || !path.exists() {
            return Err(format!("could not build the mmul example ({status})").into());
        }
    }
    Ok(path)
}

fn random_matrix(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

fn write_input(path: &Path, n: usize, a: &[f64], b: &[f64]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(File::create(path)?);
    writeln!(out, "{n}")?;
    for m in [a, b] {
        for row in m.chunks(n) {
            let line: Vec<String> = row.iter().map(|x| format!("{x:e}")).collect();
            writeln!(out, "{}", line.join(" "))?;
        }
    }
    out.flush()
}

fn multiply(n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

fn check_output(path: &Path, want: &[f64]) -> Result<bool, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let got: Vec<f64> = text
        .split_ascii_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-9))
}

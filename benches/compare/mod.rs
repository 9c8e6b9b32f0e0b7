//! Side-by-side reporting for the benches: records each measurement's per-operation figure,
//! runs CPython's peer script (`benches/py/peer.py GROUP`) in the same run, and prints a table of
//! ratios.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Per-operation samples, in seconds, by measurement name.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Records that `iters` operations of `name` took `elapsed` in all; returns `elapsed` so that it
/// can be the value of a criterion `iter_custom` closure.
pub(crate) fn record(name: &str, iters: u64, elapsed: Duration) -> Duration {
    let per_op = elapsed.as_secs_f64() / iters.max(1) as f64;
    SAMPLES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .push(per_op);
    elapsed
}

/// The median seconds per operation recorded for `name`.
pub(crate) fn median(name: &str) -> Option<f64> {
    let samples = SAMPLES.lock().unwrap();
    let mut v = samples.get(name)?.clone();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// One figure of CPython's peer script.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) value: f64,
    pub(crate) unit: String,
}

/// Runs `python3 benches/py/peer.py GROUP` and returns its figures by name (empty, with a
/// message, if Python is not there).
pub(crate) fn python_peer(group: &str) -> BTreeMap<String, Peer> {
    let quick = std::env::var_os("MULTIPROC_BENCH_QUICK").is_some();
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/peer.py"));
    cmd.arg(group);
    if quick {
        cmd.arg("--quick");
    }
    let out = match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!(
                "peer.py {group} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return BTreeMap::new();
        }
        Err(e) => {
            eprintln!("python3 not runnable: {e}");
            return BTreeMap::new();
        }
    };
    let mut figures = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(value), Some(unit)) =
            (v["name"].as_str(), v["value"].as_f64(), v["unit"].as_str())
        {
            figures.insert(
                name.to_string(),
                Peer {
                    value,
                    unit: unit.to_string(),
                },
            );
        }
    }
    figures
}

/// How a row's figure is shown.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    /// Microseconds per operation (lower is better).
    Micros,
    /// Operations per second (higher is better).
    PerSec,
    /// Megabytes (10^6) per second, given the bytes per operation (higher is better).
    MBps(f64),
}

impl Unit {
    fn show(self, secs_per_op: f64) -> f64 {
        match self {
            Unit::Micros => secs_per_op * 1e6,
            Unit::PerSec => 1.0 / secs_per_op,
            Unit::MBps(bytes) => bytes / secs_per_op / 1e6,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Unit::Micros => "µs",
            Unit::PerSec => "/s",
            Unit::MBps(_) => "MB/s",
        }
    }
    /// How many times better `ours` is than `theirs` (both in shown units).
    fn speedup(self, ours: f64, theirs: f64) -> f64 {
        match self {
            Unit::Micros => theirs / ours,
            _ => ours / theirs,
        }
    }
}

/// A row of the comparison table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// The recorded measurement name (and the peer's name, if the same).
    pub(crate) name: &'static str,
    /// The peer script's name for the same work.
    pub(crate) peer: &'static str,
    /// How to show it.
    pub(crate) unit: Unit,
    /// A recorded raw-limit measurement to compare with, if any.
    pub(crate) raw: Option<&'static str>,
}

/// Prints the table (markdown) of every row that was measured.
pub(crate) fn report(group: &str, rows: &[Row]) {
    let peers = python_peer(group);
    println!("\n## {group}: multiproc vs CPython multiprocessing (fork) vs raw limit\n");
    println!(
        "| measurement | multiproc | CPython | multiproc ÷ CPython (×better) | raw limit | multiproc vs raw |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let Some(ours) = median(row.name) else {
            continue;
        };
        let ours = row.unit.show(ours);
        let label = row.unit.label();
        let (py, ratio) = match peers.get(row.peer) {
            Some(p) => (
                format!("{:.3} {}", p.value, p.unit),
                format!("{:.1}×", row.unit.speedup(ours, p.value)),
            ),
            None => ("—".into(), "—".into()),
        };
        let (raw, vs_raw) = match row.raw.and_then(|r| median(r).map(|m| (r, m))) {
            Some((r, m)) => {
                let shown = row.unit.show(m);
                (
                    format!("{shown:.3} {label} ({r})"),
                    format!("{:.2}×", row.unit.speedup(ours, shown)),
                )
            }
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {ours:.3} {label} | {py} | {ratio} | {raw} | {vs_raw} |",
            row.name
        );
    }
    println!();
}

//! Shared-memory benchmarks, side by side with CPython's `multiprocessing` (run in the same
//! sitting from `benches/py/peer.py shm` when it exists).
//!
//! `cargo bench --bench shm` (full: 80 MB payloads, 10^7-f64 broadcast, 1 GiB hand-over);
//! `cargo bench --bench shm -- --quick` (8 MB, 10^6, fewer repetitions);
//! `MULTIPROC_BENCH_PY=0` skips the Python peer; `-- --oneway` runs only the one-way rows (80 MB
//! to a worker, its sum back) beside their limits, without the peer. Under
//! `cargo test --benches` it runs a smoke version. Each figure is the median of the timed
//! repetitions; MB = 10^6 bytes.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use multiproc::{Connection, PodVec, Pool, Process, Queue, SharedArray, pipe};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Req {
    /// Echo the vector back (serialized).
    Echo(Vec<f64>),
    /// Echo the PodVec back.
    EchoPod(PodVec<f64>),
    /// Echo the PodVec back with `send_owned` (forwarded, no copy).
    EchoPodOwned(PodVec<f64>),
    /// Copy the shared array out into a private Vec, answer its length.
    CopyOut(SharedArray<f64>),
    /// Read one element at this index.
    Peek(SharedArray<f64>, u64),
    /// bcast: check the length and the endpoints (as the Python peer does).
    CheckVec(Vec<f64>),
    CheckShm(SharedArray<f64>),
    /// Keep this array mapped (faulted in: summed once) for `SumHeld`.
    Hold(SharedArray<f64>),
    /// Sum the held array.
    SumHeld,
    /// Sum the vector.
    SumPod(PodVec<f64>),
    Stop,
}

#[derive(Serialize, Deserialize)]
enum Resp {
    Vec(Vec<f64>),
    Pod(PodVec<f64>),
    Num(f64),
    Pair(f64, f64),
}

fn worker(c: Connection<Resp, Req>) {
    let mut held: Option<SharedArray<f64>> = None;
    loop {
        // A message that has fully arrived is received (and its shared objects mapped) in the
        // timed part: the analog of Python's attach by name.
        if !c.poll(Duration::from_secs(600)).expect("poll") {
            break;
        }
        let t0 = Instant::now();
        let Ok(req) = c.recv() else { break };
        // What the request brought stays alive until the answer is sent, as in the Python peer
        // (its workers ack first, then close and free).
        let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
        let held_sum = |held: &Option<SharedArray<f64>>| {
            // SAFETY: the parent writes the held array only between our answers.
            let s = unsafe { held.as_ref().expect("held").as_slice() };
            Resp::Num(s.iter().sum())
        };
        let owned = matches!(req, Req::EchoPodOwned(_));
        let resp = match req {
            Req::Echo(v) => Resp::Vec(v),
            Req::EchoPod(v) | Req::EchoPodOwned(v) => Resp::Pod(v),
            Req::CopyOut(a) => {
                // SAFETY: the parent does not write the array until we answer.
                let v = unsafe { a.as_slice() }.to_vec();
                let n = black_box(&v).len() as f64;
                keep.push(Box::new(a));
                keep.push(Box::new(v));
                Resp::Num(n)
            }
            Req::Peek(a, i) => {
                let x = a.get(i as usize).expect("in bounds");
                let attach = t0.elapsed().as_secs_f64();
                keep.push(Box::new(a));
                Resp::Pair(x, attach)
            }
            Req::CheckVec(v) => {
                let n = check(&v);
                keep.push(Box::new(v));
                Resp::Num(n)
            }
            Req::CheckShm(a) => {
                // SAFETY: as above.
                let n = check(unsafe { a.as_slice() });
                keep.push(Box::new(a));
                Resp::Num(n)
            }
            Req::Hold(a) => {
                held = Some(a);
                held_sum(&held)
            }
            Req::SumHeld => held_sum(&held),
            Req::SumPod(v) => Resp::Num(v.iter().sum()),
            Req::Stop => break,
        };
        if owned {
            c.send_owned(resp).expect("answer");
        } else {
            c.send(&resp).expect("answer");
        }
        drop(keep);
    }
}

/// A pool task that sums its input.
fn sum_pod(v: PodVec<f64>) -> f64 {
    v.iter().sum()
}

/// A pool task that releases its process's kept memory files.
fn release_kept(_: ()) {
    PodVec::<f64>::release_kept();
}

/// A pool task that hands its input back.
fn echo_pod(v: PodVec<f64>) -> PodVec<f64> {
    v
}

fn check(v: &[f64]) -> f64 {
    if v.first() == Some(&0.0) && v.last() == Some(&((v.len() - 1) as f64)) {
        v.len() as f64
    } else {
        -1.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` `warm` + `reps` times; the median of the durations it returns.
fn measure(reps: usize, warm: usize, mut f: impl FnMut() -> Duration) -> f64 {
    for _ in 0..warm {
        f();
    }
    median((0..reps).map(|_| f().as_secs_f64()).collect())
}

struct Row {
    name: &'static str,
    value: f64,
    unit: &'static str,
    py: Option<(&'static str, bool)>,
}

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let quick = !benching || args.iter().any(|a| a == "--quick");
    let (reps, warm) = if benching {
        (if quick { 3 } else { 5 }, 1)
    } else {
        (1, 0)
    };
    let nb: usize = if quick { 8_000_000 } else { 80_000_000 };
    let n = nb / 8;
    let nd: usize = if quick { 1_000_000 } else { 10_000_000 };
    let big: usize = if benching { 1 << 30 } else { 64 << 20 };
    let mut rows = Vec::new();

    let workers: Vec<(Connection<Req, Resp>, Process)> = (0..2)
        .map(|_| {
            let (parent, child) = pipe::<Req, Resp>()?;
            let p = Process::new(move || worker(child));
            p.start()?;
            Ok((parent, p))
        })
        .collect::<multiproc::Result<_>>()?;
    let w = &workers[0].0;
    let data: Vec<f64> = (0..n).map(|i| i as f64).collect();

    // The physical limit: one copy in one process.
    let mut dst = vec![1.0f64; n];
    let t = measure(reps, warm, || {
        let t = Instant::now();
        dst.copy_from_slice(black_box(&data));
        black_box(&dst);
        t.elapsed()
    });
    rows.push(Row {
        name: "memcpy_80mb_touched",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: None,
    });
    let t = measure(reps, warm, || {
        let t = Instant::now();
        let v = black_box(data.clone());
        let e = t.elapsed();
        drop(v);
        e
    });
    rows.push(Row {
        name: "memcpy_80mb_fresh",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: None,
    });

    rows.extend(oneway_rows(w, &data, reps, warm)?);
    if args.iter().any(|a| a == "--oneway") {
        for (c, p) in &workers {
            c.send(&Req::Stop)?;
            p.join()?;
        }
        print_rows(&rows, &[]);
        return Ok(());
    }

    // To a worker and back, serialized (Vec<f64> through postcard) and as PodVec.
    let t = measure(reps, warm, || {
        let t = Instant::now();
        w.send(&Req::Echo(data.clone())).expect("send");
        let Resp::Vec(v) = w.recv().expect("recv") else {
            panic!("echo")
        };
        let e = t.elapsed();
        assert_eq!(v.len(), n);
        e
    });
    rows.push(Row {
        name: "pipe_serialized_80mb",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: Some(("pool_apply_80mb", true)),
    });
    let t = measure(reps, warm, || {
        let v: PodVec<f64> = data.clone().into();
        let t = Instant::now();
        w.send(&Req::EchoPod(v)).expect("send");
        let Resp::Pod(v) = w.recv().expect("recv") else {
            panic!("echo")
        };
        let e = t.elapsed();
        assert_eq!(v[n - 1], (n - 1) as f64);
        e
    });
    rows.push(Row {
        name: "pipe_podvec_80mb",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: Some(("pool_apply_80mb", true)),
    });
    let t = measure(reps, warm, || {
        let v: PodVec<f64> = data.clone().into();
        let t = Instant::now();
        w.send_owned(Req::EchoPodOwned(v)).expect("send");
        let Resp::Pod(v) = w.recv().expect("recv") else {
            panic!("echo")
        };
        let e = t.elapsed();
        assert_eq!(v[n - 1], (n - 1) as f64);
        e
    });
    rows.push(Row {
        name: "pipe_podvec_owned_80mb",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: Some(("pool_apply_80mb", true)),
    });

    // Through a Pool: `apply` to a worker that hands the vector back. From a heap `Vec` each
    // time (one copy into shared memory), and the received vector sent again (no copy).
    {
        let pool = Pool::with_processes(1)?;
        let t = measure(reps, warm, || {
            let v: PodVec<f64> = data.clone().into();
            let t = Instant::now();
            let v = pool.apply(echo_pod, v).expect("apply");
            let e = t.elapsed();
            assert_eq!(v[n - 1], (n - 1) as f64);
            e
        });
        rows.push(Row {
            name: "pool_podvec_80mb",
            value: nb as f64 / 1e6 / t,
            unit: "MB/s",
            py: Some(("pool_apply_80mb", true)),
        });
        let mut v = Some(pool.apply(echo_pod, PodVec::from(data.clone()))?);
        let t = measure(reps, warm, || {
            let t = Instant::now();
            let back = pool
                .apply(echo_pod, v.take().expect("kept"))
                .expect("apply");
            let e = t.elapsed();
            assert_eq!(back[n - 1], (n - 1) as f64);
            v = Some(back);
            e
        });
        // No byte is copied: the figure is the round trip's time, whatever the size.
        rows.push(Row {
            name: "pool_podvec_resend_80mb",
            value: t * 1e6,
            unit: "us",
            py: None,
        });
    }

    // Through a Queue: a big PodVec travels by descriptor (its memory file, on the queue's side
    // channel), not through the ring. To a worker that echoes it back on a second queue, with
    // `put` (one copy each way) and with `put_owned` (the worker forwards it as is).
    for (name, owned) in [
        ("queue_podvec_80mb", false),
        ("queue_podvec_owned_80mb", true),
    ] {
        let (to, from): (Queue<PodVec<f64>>, Queue<PodVec<f64>>) = (Queue::new()?, Queue::new()?);
        let (to2, from2) = (to.clone(), from.clone());
        let echo = Process::new(move || {
            while let Ok(v) = to2.get() {
                if v.is_empty() {
                    break;
                }
                if owned {
                    from2.put_owned(v).expect("put");
                } else {
                    from2.put(&v).expect("put");
                }
            }
        });
        echo.start()?;
        let t = measure(reps, warm, || {
            let v: PodVec<f64> = data.clone().into();
            let t = Instant::now();
            to.put(&v).expect("put");
            let v = from.get().expect("get");
            let e = t.elapsed();
            assert_eq!(v[n - 1], (n - 1) as f64);
            e
        });
        to.put(&Vec::new().into())?;
        echo.join()?;
        rows.push(Row {
            name,
            value: nb as f64 / 1e6 / t,
            unit: "MB/s",
            py: Some(("pool_apply_80mb", true)),
        });
    }

    // Python's shared_memory_80mb: make a segment, copy in, hand over, the worker copies out.
    let t = measure(reps, warm, || {
        let t = Instant::now();
        let a = SharedArray::from_slice(&data).expect("array");
        let req = Req::CopyOut(a);
        w.send(&req).expect("send");
        let Resp::Num(len) = w.recv().expect("recv") else {
            panic!("copy")
        };
        let e = t.elapsed();
        drop(req);
        assert_eq!(len as usize, n);
        e
    });
    rows.push(Row {
        name: "shared_array_80mb",
        value: nb as f64 / 1e6 / t,
        unit: "MB/s",
        py: Some(("shared_memory_80mb", true)),
    });

    // Hand-over of an existing array, round trip: send the descriptor, the worker receives it,
    // maps it, reads one element, answers. "attach" is the worker's part alone (receive, map,
    // read), which is what Python's figure measures (attach by name + read).
    for (name, py, bytes) in [
        (
            "shared_array_handover_1mb",
            "shared_memory_attach_1mb",
            1usize << 20,
        ),
        ("shared_array_handover_1gb", "shared_memory_attach_1gb", big),
    ] {
        let a = SharedArray::<f64>::new(bytes / 8)?;
        let off = bytes / 16 + 123;
        a.set(off, 42.0)?;
        let k = if benching { 200 } else { 5 };
        let mut attach = Vec::new();
        let t = measure(reps, warm, || {
            let t = Instant::now();
            let mut worker_side = 0.0;
            for _ in 0..k {
                w.send(&Req::Peek(a.clone(), off as u64)).expect("send");
                let Resp::Pair(x, secs) = w.recv().expect("recv") else {
                    panic!("peek")
                };
                assert_eq!(x, 42.0);
                worker_side += secs;
            }
            attach.push(worker_side);
            t.elapsed()
        });
        rows.push(Row {
            name,
            value: t / k as f64 * 1e6,
            unit: "us",
            py: None,
        });
        rows.push(Row {
            name: if bytes == 1 << 20 {
                "shared_array_attach_1mb"
            } else {
                "shared_array_attach_1gb"
            },
            value: median(attach) / k as f64 * 1e6,
            unit: "us",
            py: Some((py, false)),
        });
    }

    // The broadcast of the mpi4py tutorial, as the Python peer times it.
    let arr: Vec<f64> = (0..nd).map(|i| i as f64).collect();
    let acks = |tag: &str| {
        for (c, _) in &workers {
            let Resp::Num(x) = c.recv().expect("ack") else {
                panic!("{tag}")
            };
            assert_eq!(x as usize, nd, "{tag}");
        }
    };
    let t_ser = measure(reps, warm, || {
        let t = Instant::now();
        for (c, _) in &workers {
            c.send(&Req::CheckVec(arr.clone())).expect("send");
        }
        acks("serialized");
        t.elapsed()
    });
    let t_shm = measure(reps, warm, || {
        let t = Instant::now();
        let a = SharedArray::from_slice(&arr).expect("array");
        for (c, _) in &workers {
            c.send(&Req::CheckShm(a.clone())).expect("send");
        }
        acks("shm");
        t.elapsed()
    });
    rows.push(Row {
        name: "bcast_serialized_10m",
        value: t_ser,
        unit: "s",
        py: Some(("bcast_pickle_10m", false)),
    });
    rows.push(Row {
        name: "bcast_shm_10m",
        value: t_shm,
        unit: "s",
        py: Some(("bcast_shm_10m", false)),
    });
    rows.push(Row {
        name: "bcast_ratio",
        value: t_ser / t_shm,
        unit: "ratio",
        py: Some(("bcast_ratio", true)),
    });

    for (c, p) in &workers {
        c.send(&Req::Stop)?;
        p.join()?;
    }

    let py = if benching && std::env::var("MULTIPROC_BENCH_PY").as_deref() != Ok("0") {
        python_peer(quick)
    } else {
        Vec::new()
    };
    print_rows(&rows, &py);
    Ok(())
}

/// Prints the table (with the CPython peer's figures beside ours where they exist), then the
/// one-way rows as fractions of their limit.
fn print_rows(rows: &[Row], py: &[(String, f64)]) {
    let touched = rows[0].value;
    println!(
        "{:<28} {:>12} {:<6} {:>8}   {:<26} {:>12} {:>8}",
        "multiproc", "value", "unit", "%memcpy", "CPython peer", "value", "ratio"
    );
    for r in rows {
        let pct = if r.unit == "MB/s" {
            format!("{:.0}%", 100.0 * r.value / touched)
        } else {
            String::new()
        };
        let (pname, pval, ratio) = match r.py.and_then(|(name, higher)| {
            py.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| (name, *v, higher))
        }) {
            Some((name, v, higher)) => {
                // >1 means multiproc is better.
                let ratio = if higher { r.value / v } else { v / r.value };
                (name.to_string(), format!("{v:.4}"), format!("{ratio:.1}x"))
            }
            None => (String::new(), String::new(), String::new()),
        };
        println!(
            "{:<28} {:>12.4} {:<6} {:>8}   {:<26} {:>12} {:>8}",
            r.name, r.value, r.unit, pct, pname, pval, ratio
        );
    }
    let value = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.value);
    if let Some(limit) = value("oneway_premapped_80mb") {
        for r in rows
            .iter()
            .filter(|r| r.name.starts_with("oneway_") && r.unit == "MB/s" && r.value != limit)
        {
            println!(
                "{} / oneway_premapped_80mb = {:.2}",
                r.name,
                r.value / limit
            );
        }
    }
}

/// "80 MB to a worker, its sum back" (issue 17 §3): the time from handing over the data to
/// having the sum, beside its limit in the same run, `oneway_premapped_80mb` (the parent copies
/// into a shared array the worker already maps, both sides faulted in; a small message; the
/// worker sums). A `PodVec` made from a heap `Vec` each time: through a pipe (the heap `Vec` is
/// freed after the timing), through a pool (`apply` consumes the vector: freeing the 80 MB heap
/// `Vec`, a few ms, is inside the timing), and through a pool with nothing kept on either side
/// before each send (every page fresh in the parent, every mapping new in the worker: what each
/// send cost before the cache).
fn oneway_rows(
    w: &Connection<Req, Resp>,
    data: &[f64],
    reps: usize,
    warm: usize,
) -> multiproc::Result<Vec<Row>> {
    let want: f64 = data.iter().sum();
    let mbps = |t: f64| (data.len() * 8) as f64 / 1e6 / t;
    let sum_of = |r: Resp| match r {
        Resp::Num(x) => x,
        _ => panic!("not a sum"),
    };
    let row = |name, t| Row {
        name,
        value: mbps(t),
        unit: "MB/s",
        py: None,
    };
    let a = SharedArray::<f64>::new(data.len())?;
    w.send(&Req::Hold(a.clone()))?;
    sum_of(w.recv()?);
    let premapped = || {
        let t = Instant::now();
        // SAFETY: the worker reads the array only between a request and its answer.
        unsafe { a.as_mut_slice() }.copy_from_slice(data);
        w.send(&Req::SumHeld).expect("send");
        let s = sum_of(w.recv().expect("recv"));
        let e = t.elapsed();
        assert_eq!(s, want);
        e
    };
    let through_pipe = || {
        let req = Req::SumPod(data.to_vec().into());
        let t = Instant::now();
        w.send(&req).expect("send");
        let s = sum_of(w.recv().expect("recv"));
        let e = t.elapsed();
        drop(req); // frees the heap `Vec` (untimed, as the limit frees nothing)
        assert_eq!(s, want);
        e
    };
    let pool = Pool::with_processes(1)?;
    let through_pool = |cold: bool| {
        if cold {
            PodVec::<f64>::release_kept();
            pool.apply(release_kept, ()).expect("release");
        }
        let v: PodVec<f64> = data.to_vec().into();
        let t = Instant::now();
        let s = pool.apply(sum_pod, v).expect("apply");
        let e = t.elapsed();
        assert_eq!(s, want);
        e
    };
    // The limit and the warm rows alternate, so that a change of load hits them alike; more
    // repetitions than the other rows, for the same reason.
    // The pool's own round trip with one element (inline, no shared memory), for what the
    // pool adds to the pipe's hand-over.
    let pool_alone = || {
        let t = Instant::now();
        let s = pool.apply(sum_pod, vec![1.0].into()).expect("apply");
        let e = t.elapsed();
        assert_eq!(s, 1.0);
        e
    };
    // Freeing an 80 MB heap `Vec` (the pool row does, inside `apply`; the pipe row does not).
    let heap_free = || {
        let v = black_box(data.to_vec());
        let t = Instant::now();
        drop(v);
        t.elapsed()
    };
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for rep in 0..warm + 2 * reps - 1 {
        let times = [
            premapped(),
            through_pipe(),
            through_pool(false),
            pool_alone(),
            heap_free(),
        ];
        if rep >= warm {
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t.as_secs_f64());
            }
        }
    }
    let names = [
        "oneway_premapped_80mb",
        "oneway_pipe_podvec_80mb",
        "oneway_pool_podvec_80mb",
    ];
    let [premapped, pipe, pool_warm, alone, free] = samples;
    let mut rows: Vec<Row> = names
        .into_iter()
        .zip([premapped, pipe, pool_warm])
        .map(|(name, s)| row(name, median(s)))
        .collect();
    rows.push(Row {
        name: "oneway_pool_apply_1_elem",
        value: median(alone) * 1e6,
        unit: "us",
        py: None,
    });
    rows.push(Row {
        name: "oneway_heap_free_80mb",
        value: median(free) * 1e6,
        unit: "us",
        py: None,
    });
    // Cold last: it empties the parent's cache, which the rows above rely on.
    let t = measure(reps, warm, || through_pool(true));
    rows.push(row("oneway_pool_podvec_cold_80mb", t));
    Ok(rows)
}

/// Runs `benches/py/peer.py shm` and returns its (name, value) pairs; empty if unavailable.
fn python_peer(quick: bool) -> Vec<(String, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/peer.py");
    if !std::path::Path::new(script).exists() {
        eprintln!("({script} not found: no Python figures)");
        return Vec::new();
    }
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("shm");
    if quick {
        cmd.arg("--quick");
    }
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!("python peer failed: {}", String::from_utf8_lossy(&o.stderr));
            return Vec::new();
        }
        Err(e) => {
            eprintln!("python3 not runnable: {e}");
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            Some((
                field(l, "name")?.trim_matches('"').to_string(),
                field(l, "value")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The raw text of `"key": value` in a flat JSON line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = line[line.find(&pat)? + pat.len()..].trim_start();
    let end = if let Some(stripped) = rest.strip_prefix('"') {
        stripped.find('"')? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

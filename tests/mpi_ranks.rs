//! `MpiPool` over real MPI ranks (feature `mpi`): this binary launches itself under
//! `mpirun --oversubscribe -n 3` and checks, on rank 0, results against sequential ones.
//!
//! A `harness = false` test (MPI initializes once per process, so ranks must be processes of
//! their own). Run it alone, never beside other tests (waiting ranks spin):
//! `cargo test --release --features mpi --test mpi_ranks`. Without `mpirun` on the PATH it
//! prints why and passes, unless `MULTIPROC_MPI_REQUIRED=1`. It answers nextest's `--list`.
//!
//! With `MULTIPROC_MPI_SLURM=1` it also runs the checks in `sbatch -N 2` (see `two_nodes`).
//!
//! The launched copies find their role in `MULTIPROC_MPI_CHECK`: `pool` (the checks), `die`
//! (a task ends its rank: the job must end non-zero, not hang), `master-panics` (rank 0 panics
//! with a task running: the same), `single` (run without mpirun:
//! `init` must refuse a world of one rank), `mismatch` (the same with `PMI_SIZE=3`, as under
//! another MPI's launcher: `init` must name the mismatch).

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use multiproc::mpi::MpiPool;
use multiproc::{Error, PodVec};

/// The variable that tells a launched copy what to do.
const ROLE: &str = "MULTIPROC_MPI_CHECK";
/// The name this test answers to in `--list`.
const NAME: &str = "ranks_under_mpirun";
/// Generous: ranks on 2 shared cores start slowly; a hang ends the test instead of blocking it.
const LIMIT: Duration = Duration::from_secs(300);
/// 100 MB of payload.
const BIG: usize = 100_000_000;

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // nextest's protocol: one `name: test` line per test; none are ignored.
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    match std::env::var(ROLE).as_deref() {
        Ok("pool") => exit_with(rank_checks()),
        Ok("die") => exit_with(rank_dies()),
        Ok("master-panics") => master_panics(),
        Ok("single") => exit_with(single_rank("1 rank")),
        Ok("mismatch") => exit_with(single_rank("but the launcher started 3 (PMI_SIZE=3)")),
        _ => drive(),
    }
}

fn exit_with(r: Result<(), String>) {
    match r {
        Ok(()) => println!("MPI CHECKS OK"),
        Err(e) => {
            eprintln!("MPI CHECK FAILED: {e}");
            std::process::exit(1);
        }
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Rank 0's checks (the other ranks never return from `init`).
fn rank_checks() -> Result<(), String> {
    let pool = MpiPool::init().map_err(|e| format!("init: {e}"))?;
    let e = |e: Error| e.to_string();
    ensure(pool.world_size() == 3 && pool.processes() == 2, || {
        format!("world {} processes {}", pool.world_size(), pool.processes())
    })?;
    let mut pids = pool.pids();
    pids.sort_unstable();
    ensure(pids == [(1 << 22) + 1, (1 << 22) + 2], || {
        format!("worker ids {pids:?}")
    })?;

    let want: Vec<u64> = (0..1000).map(square).collect();
    ensure(pool.map(square, 0..1000u64).map_err(e)? == want, || {
        "map".into()
    })?;
    let got: Vec<u64> = pool
        .imap(square, 0..1000u64)
        .map_err(e)?
        .collect::<multiproc::Result<_>>()
        .map_err(e)?;
    ensure(got == want, || "imap".into())?;
    let mut got: Vec<u64> = pool
        .imap_unordered(square, 0..1000u64)
        .map_err(e)?
        .collect::<multiproc::Result<_>>()
        .map_err(e)?;
    got.sort_unstable();
    ensure(got == want, || "imap_unordered".into())?;
    let pending: Vec<_> = (0..20u64)
        .map(|x| pool.apply_async(square, x))
        .collect::<multiproc::Result<_>>()
        .map_err(e)?;
    let got: Vec<u64> = pending
        .into_iter()
        .map(|r| r.get())
        .collect::<multiproc::Result<_>>()
        .map_err(e)?;
    ensure(got == want[..20], || "apply_async".into())?;
    let got = pool
        .map_async(square, 0..1000u64)
        .map_err(e)?
        .get()
        .map_err(e)?;
    ensure(got == want, || "map_async".into())?;
    ensure(
        pool.starmap(|a: u64, b: u64| a * b, vec![(2, 3), (4, 5)])
            .map_err(e)?
            == [6, 20],
        || "starmap".into(),
    )?;
    ensure(
        pool.map_with(&10u64, |c: &u64, x: u64| c + x, 0..5u64)
            .map_err(e)?
            == [10, 11, 12, 13, 14],
        || "map_with".into(),
    )?;

    shared_memory_refused(&pool)?;
    chunking(&pool)?;
    a_panic(&pool)?;
    big_payloads(&pool)?;
    pod_contexts(&pool)?;
    ranks_run_at_once(&pool)?;
    terminate_mid_task(pool)
}

/// Shared memory cannot cross ranks: a `SharedArray` (or sync object) sent to a rank is
/// [`Error::NotSendable`] naming its type and saying to send a `PodVec`; the pool goes on.
fn shared_memory_refused(pool: &MpiPool) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let shared = multiproc::SharedArray::<u32>::new(4).map_err(e)?;
    let outcome = pool
        .map_results(|a: multiproc::SharedArray<u32>| a.len(), vec![shared])
        .map(|mut out| out.pop().expect("one outcome"))
        .and_then(|r| r);
    println!("a SharedArray sent to a rank: {outcome:?}");
    match &outcome {
        Err(Error::NotSendable { type_name, reason }) => {
            ensure(type_name.contains("SharedArray<u32>"), || {
                format!("type named: {type_name}")
            })?;
            ensure(
                reason.contains("share no memory") && reason.contains("PodVec"),
                || format!("reason: {reason}"),
            )?;
        }
        other => return Err(format!("a SharedArray sent to a rank gave {other:?}")),
    }
    let event = multiproc::Event::new().map_err(e)?;
    let outcome = pool.apply(|ev: multiproc::Event| ev.is_set(), event);
    ensure(matches!(outcome, Err(Error::NotSendable { .. })), || {
        format!("an Event sent to a rank gave {outcome:?}")
    })?;
    ensure(pool.map(square, 0..10u64).map_err(e)?.len() == 10, || {
        "map after a refused SharedArray".into()
    })
}

/// With chunksize 25, each run of 25 consecutive inputs ran as one task on one rank.
fn chunking(pool: &MpiPool) -> Result<(), String> {
    pool.set_chunksize(Some(25)).map_err(|e| e.to_string())?;
    let out = pool
        .map(|x: u32| (x, std::process::id()), 0..200u32)
        .map_err(|e| e.to_string())?;
    pool.set_chunksize(None).map_err(|e| e.to_string())?;
    ensure(out.iter().map(|o| o.0).eq(0..200), || "chunked map".into())?;
    let me = std::process::id();
    for chunk in out.chunks(25) {
        ensure(chunk.iter().all(|o| o.1 == chunk[0].1 && o.1 != me), || {
            format!("a chunk ran on several processes or on rank 0: {chunk:?}")
        })?;
    }
    Ok(())
}

/// A panic on a rank is that input's `TaskPanicked`; the rank keeps working.
fn a_panic(pool: &MpiPool) -> Result<(), String> {
    let out = pool
        .map_results(
            |x: u32| if x == 7 { panic!("boom at {x}") } else { x },
            0..10u32,
        )
        .map_err(|e| e.to_string())?;
    for (i, r) in out.iter().enumerate() {
        match r {
            Err(Error::TaskPanicked { panic, .. }) if i == 7 => {
                ensure(panic.message == "boom at 7", || format!("panic {panic:?}"))?
            }
            Ok(v) if i != 7 => ensure(*v == i as u32, || format!("item {i}: {v}"))?,
            other => return Err(format!("item {i}: {other:?}")),
        }
    }
    let again = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
    ensure(again == (0..100).map(square).collect::<Vec<_>>(), || {
        "map after a panic".into()
    })
}

/// 100 MB PodVecs to a rank and back (as bytes: MPI messages, no per-element encoding).
fn big_payloads(pool: &MpiPool) -> Result<(), String> {
    let v: PodVec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let sum = pool
        .apply(
            |v: PodVec<u8>| (v.len(), v.iter().map(|&b| u64::from(b)).sum::<u64>()),
            v,
        )
        .map_err(|e| e.to_string())?;
    let want: u64 = (0..BIG).map(|i| (i % 251) as u64).sum();
    ensure(sum == (BIG, want), || format!("sum of 100 MB: {sum:?}"))?;
    let back = pool
        .apply(
            |n: usize| -> PodVec<f64> { (0..n).map(|i| i as f64).collect::<Vec<_>>().into() },
            BIG / 8,
        )
        .map_err(|e| e.to_string())?;
    ensure(
        back.len() == BIG / 8 && back.iter().enumerate().all(|(i, &x)| x == i as f64),
        || "100 MB PodVec result".into(),
    )
}

/// What a task computes from a `PodVec` context: its length, a position-weighted sum (a
/// shifted or torn copy changes it) and the element at the input's position.
fn pod_digest<T: multiproc::Pod + Into<f64>>(v: &PodVec<T>, x: usize) -> (usize, f64, f64) {
    let sum = v
        .iter()
        .enumerate()
        .map(|(i, &e)| e.into() * (i % 7) as f64)
        .sum();
    let at = v.get(x * 997 % v.len().max(1)).map_or(-1.0, |&e| e.into());
    (v.len(), sum, at)
}

/// `PodVec` contexts of several sizes reach every rank intact: empty, under the size from which
/// it goes as an MPI attachment (64 KiB, inline), at it, one element past it, and 100 MB; each
/// rank's answers equal the sequential ones. Then the caller's vector is still its own
/// (written after the sends: copy-on-write), and goes again.
fn pod_contexts(pool: &MpiPool) -> Result<(), String> {
    let inputs = 0..4usize;
    let threshold = 64 << 10;
    for n in [
        0,
        threshold / 8 - 1,
        threshold / 8,
        threshold / 8 + 1,
        BIG / 8,
    ] {
        let mut ctx: PodVec<f64> = (0..n)
            .map(|i| (i % 1000) as f64 + 0.5)
            .collect::<Vec<_>>()
            .into();
        let want: Vec<_> = inputs.clone().map(|x| pod_digest(&ctx, x)).collect();
        for round in 0..2 {
            let got = pool
                .map_with(&ctx, pod_digest::<f64>, inputs.clone())
                .map_err(|e| format!("PodVec<f64> context of {n}: {e}"))?;
            ensure(got == want, || {
                format!("PodVec<f64> context of {n} elements, round {round}: {got:?} != {want:?}")
            })?;
        }
        if let Some(first) = ctx.first_mut() {
            *first = 7.0;
            ensure(ctx[0] == 7.0, || "the caller's PodVec after sending".into())?;
        }
    }
    // Bytes: one past the threshold (not a multiple of 8).
    let ctx: PodVec<u8> = (0..threshold + 1)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let want: Vec<_> = inputs.clone().map(|x| pod_digest(&ctx, x)).collect();
    let got = pool
        .map_with(&ctx, pod_digest::<u8>, inputs)
        .map_err(|e| format!("PodVec<u8> context: {e}"))?;
    ensure(got == want, || {
        format!("PodVec<u8> context: {got:?} != {want:?}")
    })
}

/// Two tasks that each wait for the other to start (through files: the ranks share this host
/// in the test) complete only if two ranks run them at the same time.
fn ranks_run_at_once(pool: &MpiPool) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("multiproc-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let meet = |(dir, me): (String, u32)| -> Result<(u32, String), String> {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join(format!("here-{me}")), b"").map_err(|e| e.to_string())?;
        let other = dir.join(format!("here-{}", 1 - me));
        let until = Instant::now() + Duration::from_secs(60);
        while !other.exists() {
            if Instant::now() > until {
                return Err(format!("task {me}: the other task never started"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "-".into());
        Ok((std::process::id(), node))
    };
    let d = dir.to_string_lossy().into_owned();
    let out = pool
        .map(meet, vec![(d.clone(), 0u32), (d, 1u32)])
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let ranks: Vec<(u32, String)> = out?.into_iter().collect::<Result<_, _>>()?;
    // Under SLURM (two nodes), SLURMD_NODENAME shows where each rank ran.
    println!("two tasks at once ran on (pid, node): {ranks:?}");
    ensure(ranks[0].0 != ranks[1].0, || {
        format!("both ran on {ranks:?}")
    })
}

/// `terminate` during a task that would run for minutes: returns at once, and the ranks end
/// (the launcher's exit, checked by the driver within its limit, shows it).
fn terminate_mid_task(pool: MpiPool) -> Result<(), String> {
    let long = pool
        .apply_async(|()| std::thread::sleep(Duration::from_secs(600)), ())
        .map_err(|e| e.to_string())?;
    pool.terminate();
    ensure(long.get().is_err(), || {
        "a terminated task had a result".into()
    })?;
    drop(pool);
    Ok(())
}

/// A task that ends its rank's process: the job must end non-zero (not hang).
fn rank_dies() -> Result<(), String> {
    let pool = MpiPool::init().map_err(|e| format!("init: {e}"))?;
    let r = pool.map(
        |x: u32| {
            if x == 3 {
                std::process::exit(9);
            }
            x
        },
        0..8u32,
    );
    Err(format!("the job survived a rank's death: {r:?}"))
}

/// Rank 0 panics with the pool alive: unwinding drops the pool (the ranks end, MPI is
/// finalized), and the job ends non-zero instead of hanging.
fn master_panics() {
    let pool = MpiPool::init().expect("init");
    let _busy = pool.apply_async(|()| std::thread::sleep(Duration::from_secs(600)), ());
    panic!("the master gives up");
}

/// Without a launcher the world has one rank: `init` refuses it, saying `why` (a world of one,
/// or one that differs from the size a launcher announced: a build against another MPI).
fn single_rank(why: &str) -> Result<(), String> {
    match MpiPool::init() {
        Err(Error::Mpi(m)) if m.contains(why) => {
            println!("refused: {m}");
            Ok(())
        }
        other => Err(format!("a world of one rank gave {other:?}")),
    }
}

/// Runs `cmd` with `role`, killing it past [`LIMIT`]; its status and output.
fn run(mut cmd: Command, role: &str) -> (ExitStatus, String) {
    cmd.env(ROLE, role)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{role}` did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default() + &err_reader.join().unwrap_or_default();
    (status, text)
}

fn mpirun(role: &str) -> (ExitStatus, String) {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-n", "3"])
        .arg(std::env::current_exe().expect("exe"));
    run(cmd, role)
}

fn drive() {
    let have = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        if std::env::var("MULTIPROC_MPI_REQUIRED").as_deref() == Ok("1") {
            panic!("mpirun is not on the PATH but MULTIPROC_MPI_REQUIRED=1");
        }
        println!("test {NAME} ... skipped: mpirun is not on the PATH");
        return;
    }
    let (status, text) = run(
        Command::new(std::env::current_exe().expect("exe")),
        "single",
    );
    assert!(
        status.success() && text.contains("MPI CHECKS OK"),
        "single rank: {status}\n{text}"
    );
    // What a binary built against this MPI sees when MPICH's launcher (PMI) started 3 ranks.
    let mut alone = Command::new(std::env::current_exe().expect("exe"));
    alone.env("PMI_SIZE", "3");
    let (status, text) = run(alone, "mismatch");
    assert!(
        status.success() && text.contains("MPI CHECKS OK"),
        "world size mismatch: {status}\n{text}"
    );
    let (status, text) = mpirun("pool");
    assert!(
        status.success() && text.contains("MPI CHECKS OK"),
        "mpirun -n 3: {status}\n{text}"
    );
    let (status, text) = mpirun("die");
    assert!(
        !status.success() && !text.contains("survived"),
        "a rank's death: {status}\n{text}"
    );
    let (status, text) = mpirun("master-panics");
    assert!(
        !status.success() && text.contains("the master gives up"),
        "rank 0 panicking: {status}\n{text}"
    );
    if std::env::var("MULTIPROC_MPI_SLURM").as_deref() == Ok("1") {
        two_nodes();
    }
    println!("test {NAME} ... ok");
}

/// With `MULTIPROC_MPI_SLURM=1` (a SLURM of two nodes answering `sbatch`, e.g.
/// scripts/slurm/start-multi.sh with its `SLURM_CONF`): the checks again in
/// `sbatch -N 2 -n 2` with `mpirun --bind-to none` inside; the two tasks that meet must have run
/// on two nodes.
fn two_nodes() {
    let exe = std::env::current_exe().expect("exe");
    let out = std::env::temp_dir().join(format!("multiproc-mpi-slurm-{}.out", std::process::id()));
    let script = format!(
        "export {ROLE}=pool OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; \
         mpirun --bind-to none --oversubscribe -n 3 {}",
        exe.display()
    );
    let submitted = Command::new("sbatch")
        .args(["--parsable", "-N", "2", "-n", "2", "-o"])
        .arg(&out)
        .args(["--wrap", &script])
        .output()
        .expect("sbatch");
    assert!(submitted.status.success(), "sbatch: {submitted:?}");
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    let until = Instant::now() + LIMIT;
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", &job])
            .output()
            .expect("squeue");
        if q.stdout.is_empty() {
            break;
        }
        if Instant::now() > until {
            let _ = Command::new("scancel").arg(&job).status();
            panic!("SLURM job {job} did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(text.contains("MPI CHECKS OK"), "two nodes:\n{text}");
    let nodes = text
        .lines()
        .find(|l| l.starts_with("two tasks at once ran on"))
        .unwrap_or_default();
    let names: Vec<&str> = nodes.split('"').skip(1).step_by(2).collect();
    assert!(
        names.len() == 2 && names[0] != names[1],
        "the ranks did not run on two nodes: {nodes}"
    );
    println!("two nodes: {nodes}");
}

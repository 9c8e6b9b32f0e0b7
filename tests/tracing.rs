//! The pool's `tracing` events (target `multiproc`), collected by a small global subscriber:
//! during a map with a worker that is SIGKILLed while it runs an input, and with an overdue
//! input. Several tests of this binary may run at once: each finds its own pool's events
//! through the pid its task wrote down.

mod common;

use common::secs;

use std::collections::BTreeMap;
use std::sync::{Mutex, Once};
use std::time::Duration;

use multiproc::Pool;
use nix::sys::signal::{Signal, raise};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// One event: `message`, `level` and every field, as text.
type Fields = BTreeMap<String, String>;

static EVENTS: Mutex<Vec<Fields>> = Mutex::new(Vec::new());

struct Collect;

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl Subscriber for Collect {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.target() == "multiproc"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        fields.insert("level".into(), event.metadata().level().to_string());
        event.record(&mut Visitor(&mut fields));
        EVENTS.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn collect() {
    static INIT: Once = Once::new();
    INIT.call_once(|| tracing::subscriber::set_global_default(Collect).unwrap());
}

/// The events of the pool that has an event with `pid = pid`, in order.
fn events_of_pool_with(pid: i32) -> Vec<Fields> {
    let all = EVENTS.lock().unwrap().clone();
    let pool = all
        .iter()
        .find(|e| e.get("pid") == Some(&pid.to_string()))
        .and_then(|e| e.get("pool").cloned())
        .unwrap_or_else(|| panic!("no event names pid {pid}: {all:#?}"));
    all.into_iter()
        .filter(|e| e.get("pool") == Some(&pool))
        .collect()
}

/// The position of the first event with `message` and all of `fields`.
fn find(events: &[Fields], message: &str, fields: &[(&str, String)]) -> usize {
    events
        .iter()
        .position(|e| {
            e.get("message").map(String::as_str) == Some(message)
                && fields.iter().all(|(k, v)| e.get(*k) == Some(v))
        })
        .unwrap_or_else(|| panic!("no {message:?} with {fields:?} in {events:#?}"))
}

fn marker(name: &str) -> String {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("multiproc-trace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

/// The first time it runs input 3, the worker writes its pid to `marker` and SIGKILLs itself.
fn double_but_die_once_on_3(marker: &String, x: u64) -> u64 {
    if x == 3 {
        if let Ok(mut f) = std::fs::File::create_new(marker) {
            use std::io::Write;
            write!(f, "{}", std::process::id()).unwrap();
            drop(f);
            raise(Signal::SIGKILL).unwrap();
        }
    }
    x * 2
}

#[test]
fn a_killed_worker_and_its_retried_input_are_traced() {
    collect();
    let m = marker("kill");
    let pool = Pool::builder().processes(2).retries(1).build().unwrap();
    let out = pool.map_with(&m, double_but_die_once_on_3, 0..8).unwrap();
    assert_eq!(out, (0..8).map(|x| x * 2).collect::<Vec<u64>>());
    pool.close();
    pool.join().unwrap();
    drop(pool);
    let killed: i32 = std::fs::read_to_string(&m).unwrap().parse().unwrap();
    let _ = std::fs::remove_file(&m);

    let ev = events_of_pool_with(killed);
    let pid = killed.to_string();
    let started = find(&ev, "pool started", &[("processes", "2".into())]);
    let worker = find(&ev, "worker started", &[("pid", pid.clone())]);
    let died = find(
        &ev,
        "worker killed",
        &[("pid", pid.clone()), ("signal", "9".into())],
    );
    let retried = find(
        &ev,
        "task retried",
        &[
            ("pid", pid.clone()),
            ("item", "3".into()),
            ("attempt", "2".into()),
        ],
    );
    let replaced = find(&ev, "worker replaced", &[("pid", pid.clone())]);
    // Recorded only when there is a replacement.
    let new_pid = ev[replaced].get("new_pid").expect("a replacement").clone();
    let successor = find(&ev, "worker started", &[("pid", new_pid.clone())]);
    let finished = find(&ev, "pool finished", &[("replaced", "1".into())]);
    assert!(
        // `pool started` comes once its first workers are up.
        worker < started && started < died && died < retried,
        "{ev:#?}"
    );
    assert!(retried < successor && successor < replaced && replaced < finished);
    // The pool's other workers and the replacement exited normally at join.
    let exited = ev
        .iter()
        .filter(|e| e["message"] == "worker exited" && e["code"] == "0")
        .count();
    assert_eq!(exited, 2, "{ev:#?}");
    assert_eq!(ev[worker]["level"], "DEBUG");
    assert_eq!(ev[died]["level"], "WARN");
}

/// Writes its pid to the file `marker("timeout")` names in its parent, and blocks on input 1.
fn block_on_1(x: u64) -> u64 {
    if x == 1 {
        let path = std::env::temp_dir().join(format!(
            "multiproc-trace-timeout-{}",
            nix::unistd::getppid()
        ));
        std::fs::write(path, std::process::id().to_string()).unwrap();
        loop {
            std::thread::sleep(secs(60));
        }
    }
    x
}

#[test]
fn an_overdue_input_is_traced_as_timed_out() {
    collect();
    let m = marker("timeout");
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // Bounded: an overdue input that is never noticed would hang the map (it did, when the
    // worker had not flushed the reply of the task before it).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = pool.map_results(block_on_1, 0..3);
        let _ = tx.send((out, pool));
    });
    let (out, pool) = rx
        .recv_timeout(secs(60))
        .expect("the overdue input was not stopped");
    let out = out.unwrap();
    assert!(out[1].as_ref().is_err_and(|e| e.is_timeout()), "{out:?}");
    assert_eq!(
        (out[0].as_ref().ok(), out[2].as_ref().ok()),
        (Some(&0), Some(&2))
    );
    drop(pool);
    let blocked: i32 = std::fs::read_to_string(&m).unwrap().parse().unwrap();
    let _ = std::fs::remove_file(&m);

    let ev = events_of_pool_with(blocked);
    let pid = blocked.to_string();
    let timed_out = find(
        &ev,
        "task timed out",
        &[
            ("pid", pid.clone()),
            ("item", "1".into()),
            ("timeout_ms", "300".into()),
        ],
    );
    let killed = find(&ev, "worker killed", &[("pid", pid.clone())]);
    let finished = find(&ev, "pool finished", &[]);
    assert!(killed < timed_out && timed_out < finished, "{ev:#?}");
}

//! `multiproc plot`: the SVG timeline drawn from a joblog.
//!
//! The SVG is parsed with `roxmltree` (a dev-dependency: a small, read-only, dependency-free XML
//! parser), so a document a browser would reject fails the test, and the bars are checked by
//! their attributes, not by string matching.

use std::path::{Path, PathBuf};
use std::process::Command;

const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";
const T0: f64 = 1_795_319_200.0;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("multiproc-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn multiproc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_multiproc"))
}

/// (seq, host, start after T0, runtime, exitval, signal, command)
type Line = (u64, &'static str, f64, f64, i32, i32, &'static str);

fn write_log(path: &Path, lines: &[Line]) {
    let mut s = format!("{HEADER}\n");
    for (seq, host, start, run, exit, sig, cmd) in lines {
        s.push_str(&format!(
            "{seq}\t{host}\t{:.3}\t{run:>10.3}\t0\t0\t{exit}\t{sig}\t{cmd}\n",
            T0 + start
        ));
    }
    std::fs::write(path, s).unwrap();
}

fn attr(n: &roxmltree::Node<'_, '_>, name: &str) -> f64 {
    n.attribute(name)
        .unwrap_or_else(|| panic!("no {name} on {n:?}"))
        .parse()
        .unwrap()
}

/// A run of known shape on two hosts: n1 runs 3 jobs in 2 slots (job 3 reuses the slot job 2
/// freed), n2 runs 2 one after the other, job 4 fails. Span 0..10 s.
const SHAPE: &[Line] = &[
    (1, "n1", 0.0, 6.0, 0, 0, "work 1"),
    (2, "n1", 0.0, 2.0, 0, 0, "work 2"),
    (3, "n1", 2.0, 8.0, 0, 0, "work 3 <&>"),
    (4, "n2", 1.0, 3.0, 1, 0, "work 4"),
    (5, "n2", 4.0, 4.0, 0, 9, "work 5"),
];

#[test]
fn one_bar_per_job_at_the_right_place() {
    let dir = tmpdir("shape");
    let log = dir.join("run.log");
    write_log(&log, SHAPE);
    let svg = dir.join("run.svg");
    let out = multiproc()
        .args(["plot", log.to_str().unwrap(), "-o", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // busy 6+2+8+3+4 = 23 slot-s; 3 slots (n1: 2, n2: 1) x 10 s = 30 available.
    assert!(
        stderr.contains("5 jobs on 3 slots, span 10.000 s, utilization 76.7%"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses as XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    // Self-contained: no script, no external reference.
    assert!(!doc.descendants().any(|n| n.has_tag_name("script")));
    assert!(!text.contains("href"), "no links in the SVG");
    let chart = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("chart"))
        .expect("the chart group");
    let (x0, scale, y0, row_h) = (
        attr(&chart, "data-x0"),
        attr(&chart, "data-px-per-s"),
        attr(&chart, "data-y0"),
        attr(&chart, "data-row-h"),
    );
    let bars: Vec<_> = chart
        .descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.split(' ').any(|w| w == "job"))
        })
        .collect();
    assert_eq!(bars.len(), SHAPE.len(), "one bar per job");
    // Rows: n1 slot 1, n1 slot 2, n2 slot 1. Packing: 1 -> n1/1, 2 -> n1/2, 3 -> n1/2 (free at
    // 2.0), 4 and 5 -> n2/1.
    let want_row = |seq: u64| match seq {
        1 => ("n1", 1, 0),
        2 | 3 => ("n1", 2, 1),
        _ => ("n2", 1, 2),
    };
    for &(seq, _, start, run, exit, sig, _) in SHAPE {
        let bar = bars
            .iter()
            .find(|b| b.attribute("data-seq") == Some(&seq.to_string()))
            .unwrap_or_else(|| panic!("no bar for job {seq}"));
        let (host, slot, row) = want_row(seq);
        assert_eq!(bar.attribute("data-host"), Some(host), "job {seq}");
        assert_eq!(attr(bar, "data-slot") as usize, slot, "job {seq}");
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() < 0.011,
                "job {seq} {what}: {got} != {want}"
            )
        };
        close(attr(bar, "x"), x0 + start * scale, "x");
        close(attr(bar, "width"), run * scale, "width");
        let h = attr(bar, "height");
        let y = attr(bar, "y");
        assert!(y >= y0 + row as f64 * row_h && y + h <= y0 + (row + 1) as f64 * row_h);
        let failed = bar.attribute("class").unwrap().contains("failed");
        assert_eq!(failed, exit != 0 || sig != 0, "job {seq} failed mark");
    }
    // The chart spans the plot area: the last end (10 s) is at x0 + 10 * scale, inside the width.
    assert!(x0 + 10.0 * scale <= attr(&root, "width"));
    // The idle tail starts at the last start (4.0 s) and lasts 6 s; idle slot-seconds:
    // n1/1 idle 6..10 = 4, n1/2 busy to 10 = 0, n2/1 idle 8..10 = 2.
    let tail = chart
        .descendants()
        .find(|n| n.attribute("class") == Some("tail"))
        .expect("the tail");
    assert!((attr(&tail, "x") - (x0 + 4.0 * scale)).abs() < 0.011);
    assert!((attr(&tail, "width") - 6.0 * scale).abs() < 0.011);
    let tail_text: String = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("tail"))
        .unwrap()
        .descendants()
        .filter_map(|n| n.text())
        .collect();
    assert!(
        tail_text.contains("6.000 s, 6.000 idle slot-seconds"),
        "{tail_text}"
    );
    // The slowest jobs, slowest first: 3 (8 s), 1 (6 s), 5 (4 s, on a tie the lower seq).
    let slow: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("slow"))
        .map(|n| n.attribute("data-seq").unwrap().to_string())
        .collect();
    assert_eq!(slow, ["3", "1", "5", "4", "2"]);
    // The command's markup characters came through escaped and back.
    assert!(
        doc.descendants()
            .any(|n| n.text().is_some_and(|t| t.contains("work 3 <&>")))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slots_flag_and_slowest_count() {
    let dir = tmpdir("slots");
    let log = dir.join("run.log");
    write_log(&log, SHAPE);
    let out = multiproc()
        .args(["plot", log.to_str().unwrap(), "-o", "-", "--slots", "2"])
        .args(["--slowest", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let rows = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("row"))
        .count();
    assert_eq!(rows, 4, "2 slots on each of 2 hosts");
    let slow = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("slow"))
        .count();
    assert_eq!(slow, 2);
    // 23 busy / (4 slots x 10 s).
    assert!(String::from_utf8_lossy(&out.stderr).contains("utilization 57.5%"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmpdir("bad");
    let not_log = dir.join("notes.txt");
    std::fs::write(&not_log, "hello\n").unwrap();
    let out = multiproc()
        .args(["plot", not_log.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a joblog"));
    let missing = dir.join("missing.log");
    let out = multiproc()
        .args(["plot", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.log"));
    let empty = dir.join("empty.log");
    std::fs::write(&empty, format!("{HEADER}\n")).unwrap();
    let out = multiproc()
        .args(["plot", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job lines"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real run's joblog (written by the runner) plots with one bar per job; `multiproc -- plot`
/// still runs a command named plot.
#[test]
fn plots_a_real_run_and_plot_as_a_command_still_runs() {
    let dir = tmpdir("real");
    let log = dir.join("real.log");
    let out = multiproc()
        .args(["-j", "3", "--joblog", log.to_str().unwrap()])
        .args(["--shell", "exit $(( {} % 4 == 0 ))", ":::"])
        .args((1..=12).map(|i| i.to_string()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = multiproc()
        .args(["plot", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.join("real.svg")).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let classes: Vec<_> = doc
        .descendants()
        .filter_map(|n| n.attribute("class"))
        .filter(|c| c.starts_with("job"))
        .collect();
    assert_eq!(classes.len(), 12);
    assert_eq!(classes.iter().filter(|c| c.contains("failed")).count(), 3);
    // A command named plot: after `--` it is the command, not the subcommand.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("plot");
    std::fs::write(&script, "#!/bin/sh\necho plotted \"$@\"\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = multiproc()
        .env("PATH", path)
        .args(["--", "plot", ":::", "x"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plotted x\n");
    let _ = std::fs::remove_dir_all(&dir);
}

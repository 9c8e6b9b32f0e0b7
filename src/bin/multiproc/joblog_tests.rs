//! Tests of [`super`]: the format as GNU parallel writes it, resuming, torn lines, a SIGKILLed writer.

use super::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("multiproc-joblog-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn entry(seq: u64, exitval: i32, signal: i32) -> Entry {
    Entry {
        seq,
        host: ":".into(),
        start: Duration::from_millis(1_795_319_212_435),
        runtime: Duration::from_millis(108),
        send: 0,
        receive: 4,
        exitval,
        signal,
        command: format!("sleep 0.1; exit {exitval}"),
    }
}

/// Lines written by GNU parallel 20221122 (from `cat -A` of real joblogs).
const GNU_LOG: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n\
    1\t:\t1795319212.435\t     0.108\t0\t0\t1\t0\tsleep 0.1; exit 1\n\
    3\t:\t1795319212.548\t     0.007\t0\t0\t0\t0\tsleep 0; exit 0\n\
    2\t:\t1795319213.958\t     1.126\t0\t0\t-1\t15\tsleep 2\n\
    4\t:\t1795319215.746\t     0.204\t0\t0\t0\t9\tsleep 0.2; kill -9  $$\n\
    5\t:\t1795319207.560\t     0.000\t0\t9\t0\t0\techo 'tab\there'\n\
    6\t:\t1795319216.469\t    12.003\t0\t2\t0\t0\tsleep 12 ; echo 1\n";

#[test]
fn header_is_gnu_parallels() {
    assert_eq!(
        HEADER.split('\t').collect::<Vec<_>>(),
        [
            "Seq",
            "Host",
            "Starttime",
            "JobRuntime",
            "Send",
            "Receive",
            "Exitval",
            "Signal",
            "Command"
        ]
    );
}

#[test]
fn line_format_matches_gnu_parallel() {
    assert_eq!(
        entry(1, 1, 0).to_line(),
        "1\t:\t1795319212.435\t     0.108\t0\t4\t1\t0\tsleep 0.1; exit 1\n"
    );
    let mut e = entry(2, -1, 15);
    e.runtime = Duration::from_micros(12_003_499);
    assert!(e.to_line().contains("\t    12.003\t"));
    e.runtime = Duration::from_micros(123_456_789_500);
    // Wider than 10 columns: printf's %10.3f grows, so do we.
    assert!(e.to_line().contains("\t123456.790\t"));
    e.runtime = Duration::from_micros(1_234_567_891_000);
    assert!(e.to_line().contains("\t1234567.891\t"));
    e.start = Duration::from_nanos(1_000_999_600_000);
    assert!(e.to_line().starts_with("2\t:\t1001.000\t"));
}

#[test]
fn newline_in_command_becomes_nul() {
    let mut e = entry(1, 0, 0);
    e.command = "echo a\necho b".into();
    let line = e.to_line();
    assert!(line.ends_with("\techo a\0echo b\n"));
    assert_eq!(line.matches('\n').count(), 1);
}

#[test]
fn parse_round_trips() {
    for e in [entry(1, 0, 0), entry(7, -1, 15), entry(9, 0, 9)] {
        let line = e.to_line();
        assert_eq!(Entry::parse_line(line.trim_end_matches('\n')).unwrap(), e);
    }
}

#[test]
fn reads_gnu_parallel_logs() {
    let s = JoblogState::parse(GNU_LOG.as_bytes(), Path::new("gnu.tsv")).unwrap();
    assert_eq!(s.lines, 6);
    assert_eq!(s.done, SeqSet::from_iter([1, 2, 3, 4, 5, 6]));
    assert_eq!(s.succeeded, SeqSet::from_iter([3, 5, 6]));
    assert_eq!(s.failed().collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(s.torn_tail, None);
    assert!(s.skips(1, Resume::All) && !s.skips(1, Resume::Failed));
    assert!(s.skips(3, Resume::All) && s.skips(3, Resume::Failed));
    assert!(!s.skips(7, Resume::All) && !s.skips(7, Resume::Failed));
    assert!(!s.skips(3, Resume::No));
}

#[test]
fn a_later_success_counts_for_resume_failed() {
    let log = format!("{GNU_LOG}1\t:\t1795319300.000\t     0.100\t0\t0\t0\t0\tretry\n");
    let s = JoblogState::parse(log.as_bytes(), Path::new("j")).unwrap();
    assert!(s.skips(1, Resume::Failed));
    assert_eq!(s.failed().collect::<Vec<_>>(), [2, 4]);
}

#[test]
fn torn_last_line_is_ignored_and_reported() {
    let cut = GNU_LOG.len() - 10;
    let s = JoblogState::parse(&GNU_LOG.as_bytes()[..cut], Path::new("j")).unwrap();
    assert_eq!(s.lines, 5);
    assert!(!s.done.contains(6));
    let torn = s.torn_tail.unwrap();
    assert_eq!(torn.line_no, 7);
    assert!(
        torn.to_string()
            .starts_with("ignored the incomplete last line 7")
    );
    // Torn in the middle of the header: nothing done yet.
    let s = JoblogState::parse(b"Seq\tHost\tSta", Path::new("j")).unwrap();
    assert_eq!(s.done.len(), 0);
    assert!(s.torn_tail.is_some());
}

#[test]
fn empty_or_missing_file_means_nothing_done() {
    assert_eq!(
        JoblogState::parse(b"", Path::new("j")).unwrap(),
        JoblogState::default()
    );
    let p = tmp("missing.tsv");
    assert_eq!(JoblogState::read(&p).unwrap(), JoblogState::default());
    let header_only = format!("{HEADER}\n");
    let s = JoblogState::parse(header_only.as_bytes(), Path::new("j")).unwrap();
    assert_eq!(s.lines, 0);
}

#[test]
fn rejects_files_that_are_not_joblogs() {
    for bad in [
        &b"hello world\n1\t:\t1.0\t1.0\t0\t0\t0\t0\tx\n"[..],
        b"a,b,c\n",
        b"just text, no newline",
        b"Seq Host Starttime\n",
        b"1\t:\t1795319212.435\t     0.108\t0\t0\t1\t0\tno header\n",
    ] {
        let err = JoblogState::parse(bad, Path::new("x.txt")).unwrap_err();
        assert!(matches!(err, JoblogError::NotAJoblog { .. }), "{err}");
        assert!(
            err.to_string().starts_with("'x.txt' is not a joblog"),
            "{err}"
        );
    }
}

#[test]
fn rejects_bad_lines_with_their_number() {
    let bad_lines = [
        ("x\t:\t1.0\t1.0\t0\t0\t0\t0\tc", "Seq 'x' is not an integer"),
        ("0\t:\t1.0\t1.0\t0\t0\t0\t0\tc", "Seq 0"),
        ("1\t:\t1.0\t1.0\t0\t0\t0\t0", "8 tab-separated fields"),
        ("1\t\t1.0\t1.0\t0\t0\t0\t0\tc", "empty Host"),
        ("1\t:\tnan\t1.0\t0\t0\t0\t0\tc", "Starttime 'nan'"),
        ("1\t:\t1.0\t-1.0\t0\t0\t0\t0\tc", "JobRuntime '-1.0'"),
        ("1\t:\t1.0\t1.0\t0\t0\tx\t0\tc", "Exitval 'x'"),
        ("", "1 tab-separated fields"),
    ];
    for (line, want) in bad_lines {
        let good = entry(1, 0, 0).to_line();
        let log = format!("{HEADER}\n{good}{line}\n");
        let err = JoblogState::parse(log.as_bytes(), Path::new("j")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("joblog 'j' line 3: "), "{msg}");
        assert!(msg.contains(want), "{line:?}: {msg}");
    }
}

#[test]
fn writer_create_then_resume() {
    let p = tmp("w.tsv");
    std::fs::write(&p, "old junk\n").unwrap();
    let mut w = JoblogWriter::create(&p).unwrap();
    w.write(&entry(1, 0, 0)).unwrap();
    w.write(&entry(2, 1, 0)).unwrap();
    drop(w);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.starts_with(&format!("{HEADER}\n1\t")));
    assert_eq!(text.lines().count(), 3);

    let (mut w, torn) = JoblogWriter::resume(&p).unwrap();
    assert_eq!(torn, None);
    w.set_fsync(true);
    w.write(&entry(2, 0, 0)).unwrap();
    drop(w);
    let s = JoblogState::read(&p).unwrap();
    assert_eq!(s.lines, 3);
    assert_eq!(s.succeeded, SeqSet::from_iter([1, 2]));
}

#[test]
fn resume_cuts_off_a_torn_line_before_appending() {
    let p = tmp("torn.tsv");
    let whole = format!("{HEADER}\n{}", entry(1, 0, 0).to_line());
    std::fs::write(&p, format!("{whole}2\t:\t17953")).unwrap();
    assert!(JoblogState::read(&p).unwrap().torn_tail.is_some());
    let (mut w, torn) = JoblogWriter::resume(&p).unwrap();
    assert_eq!(
        torn,
        Some(TornTail {
            line_no: 3,
            bytes: 9
        })
    );
    w.write(&entry(2, 0, 0)).unwrap();
    drop(w);
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text, format!("{whole}{}", entry(2, 0, 0).to_line()));
    let s = JoblogState::read(&p).unwrap();
    assert_eq!((s.lines, s.torn_tail), (2, None));
}

#[test]
fn resume_writes_the_header_into_a_new_or_empty_file() {
    for pre in [None, Some(""), Some("Seq\tHo")] {
        let p = tmp("new.tsv");
        if let Some(pre) = pre {
            std::fs::write(&p, pre).unwrap();
        }
        let (mut w, _) = JoblogWriter::resume(&p).unwrap();
        w.write(&entry(1, 0, 0)).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}\n{}", entry(1, 0, 0).to_line()),
            "{pre:?}"
        );
    }
}

/// Env var that makes [`sigkill_child_writer`] act: the joblog path to write.
const CHILD_ENV: &str = "MULTIPROC_JOBLOG_TEST_CHILD";

/// Child body for [`log_is_whole_after_sigkill_of_the_writer`]; does nothing when run
/// normally (`--ignored` alone).
#[test]
#[ignore = "child process of log_is_whole_after_sigkill_of_the_writer"]
fn sigkill_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut w = JoblogWriter::create(Path::new(&path)).unwrap();
    let mut e = entry(1, 0, 0);
    // Long commands make each line several KiB, so a kill mid-write is possible at all.
    e.command = "x".repeat(3000);
    for seq in 1.. {
        e.seq = seq;
        e.exitval = (seq % 3) as i32;
        w.write(&e).unwrap();
    }
}

/// A child writes lines as fast as it can and is SIGKILLed: the log still reads back, every
/// line before the last is whole, and at most the last one is torn.
#[test]
fn log_is_whole_after_sigkill_of_the_writer() {
    let p = tmp("killed.tsv");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "joblog::tests::sigkill_child_writer",
        ])
        .env(CHILD_ENV, &p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&p).map_or(0, |m| m.len()) < 2_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "child wrote too little"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let s = JoblogState::read(&p).unwrap();
    assert!(s.lines >= 500, "{} lines", s.lines);
    // Seqs are contiguous from 1: no line in the middle was lost or torn.
    assert_eq!(s.done.len(), s.lines as u64);
    assert_eq!(s.done.iter().last(), Some(s.lines as u64));
    if let Some(t) = &s.torn_tail {
        eprintln!("torn tail after SIGKILL: {t}");
    }
    std::fs::remove_file(&p).unwrap();
}

//! The `multiproc` command as a drop-in for GNU parallel one-liners: what went wrong when tried
//! (issue 13), and each GNU parallel flag it has, compared with GNU parallel 20221122 where it is
//! installed (each comparison says so and is skipped when `parallel` is absent).

mod cli_common;

use std::fs;
use std::process::Command;

use cli_common::*;

#[test]
fn unsupported_replacement_strings_are_usage_errors_naming_them() {
    let d = scratch("perl-expr");
    for (word, found) in [
        ("{= s/a/b/ =}", "{= s/a/b/ =}"),
        ("x{=uc=}y", "{=uc=}"),
        ("{1= $_ .= 1 =}", "{1= $_ .= 1 =}"),
    ] {
        let r = run_in(&d, &["touch", word, ":::", "a"], None);
        assert_eq!(r.code, Some(2), "{word}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("replacement string {found} is not supported")),
            "{word}: {}",
            r.stderr
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing ran");
    }
}

#[test]
fn gnu_options_left_out_say_so_instead_of_clap_tips() {
    let d = scratch("left-out");
    for args in [
        &["-S", "host", "touch", "ran", ":::", "a"][..],
        &["--sshlogin", "host", "touch", "ran", ":::", "a"],
        &["--sqlworker", "x", "touch", "ran", ":::", "a"],
        &["--sql", "x", "touch", "ran", ":::", "a"],
    ] {
        let r = run_in(&d, args, None);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "{}: this GNU parallel option is not supported (",
                args[0]
            )),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("-- "), "no clap tip: {}", r.stderr);
        assert!(!d.join("ran").exists(), "{args:?} ran something");
    }
    let r = run_in(&d, &["--frobnicate", "touch", "ran", ":::", "a"], None);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("unknown option '--frobnicate'"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("tip:"), "{}", r.stderr);
}

#[test]
fn shell_syntax_without_shell_says_to_use_shell() {
    let d = scratch("needs-shell");
    fs::write(d.join("f"), "1\n2\n3\n").unwrap();
    for args in [
        &["wc -l < {} | tr -d ' '", ":::", "f"][..],
        &["cat", "{}", "|", "wc", "-l", ":::", "f"],
        &["echo", "$(cat {})", ":::", "f"],
        &["cat {} && touch ran", ":::", "f"],
    ] {
        let r = run_in(&d, args, None);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains("add --shell"), "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "");
    }
    // With --shell it runs, as GNU parallel runs it.
    let mut with_shell = vec!["--shell"];
    with_shell.extend(["wc -l < {} | tr -d ' '", ":::", "f"]);
    let r = run_in(&d, &with_shell, None);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "3\n"),
        "{}",
        r.stderr
    );
    if have_gnu("shell_syntax") {
        let g = gnu_in(&d, &["wc -l < {} | tr -d ' '", ":::", "f"], None);
        assert_eq!(g.stdout, r.stdout);
    }
}

/// The joblog's Command column of each row, by seq.
fn commands(log: &std::path::Path) -> Vec<(u64, String)> {
    let text = fs::read_to_string(log).unwrap();
    let mut rows: Vec<(u64, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.splitn(9, '\t').collect();
            (f[0].parse().unwrap(), f[8].to_string())
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn joblog_command_pastes_into_a_shell_and_dry_run_prints_the_same() {
    let d = scratch("paste");
    let args = [
        "--joblog",
        "log",
        "sh",
        "-c",
        "echo \"[$1]\" >> ran; [ \"$1\" != 'c d' ]",
        "_",
        ":::",
        "a",
        "c d",
        "it's",
    ];
    let r = run_in(&d, &args, None);
    assert_eq!(r.code, Some(1), "{r:?}");
    let rows = commands(&d.join("log"));
    assert_eq!(
        rows[0].1,
        r#"sh -c 'echo "[$1]" >> ran; [ "$1" != '"'"'c d'"'"' ]' _ a"#
    );
    let mut dry_args = vec!["--dry-run"];
    dry_args.extend(&args[2..]);
    let dry_run = run_in(&d, &dry_args, None);
    let dry_lines: Vec<&str> = dry_run.stdout.lines().collect();
    // Each Command, pasted into a shell, runs that job again: same output, same status.
    fs::remove_file(d.join("ran")).unwrap();
    for (i, (seq, cmd)) in rows.iter().enumerate() {
        assert_eq!(dry_lines[i], cmd, "--dry-run prints the joblog's Command");
        let st = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&d)
            .status()
            .unwrap();
        assert_eq!(st.success(), *seq != 2, "{cmd}");
    }
    assert_eq!(
        fs::read_to_string(d.join("ran")).unwrap(),
        "[a]\n[c d]\n[it's]\n"
    );
}

#[test]
fn joblog_command_has_the_redirections() {
    let d = scratch("paste-redir");
    fs::write(d.join("in 1"), "one\n").unwrap();
    fs::write(d.join("in2"), "two\n").unwrap();
    let r = run_in(
        &d,
        &[
            "--joblog", "log", "--stdin", "{}", "--stdout", "{}.out", "tr", "a-z", "A-Z", ":::",
            "in 1", "in2",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let rows = commands(&d.join("log"));
    assert_eq!(rows[0].1, "tr a-z A-Z < 'in 1' > 'in 1.out'");
    assert_eq!(rows[1].1, "tr a-z A-Z < in2 > in2.out");
    for (_, cmd) in &rows {
        fs::remove_file(d.join(if cmd.contains("in2") {
            "in2.out"
        } else {
            "in 1.out"
        }))
        .unwrap();
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&d)
                .status()
                .unwrap()
                .success()
        );
    }
    assert_eq!(fs::read_to_string(d.join("in 1.out")).unwrap(), "ONE\n");
    assert_eq!(fs::read_to_string(d.join("in2.out")).unwrap(), "TWO\n");
}

#[test]
fn resume_still_reads_logs_written_before_the_quoting() {
    let d = scratch("old-log");
    // Written by the earlier multiproc: argv joined with spaces, jobs 1 and 3 done.
    let header = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";
    fs::write(
        d.join("log"),
        format!(
            "{header}\n1\t:\t1795319212.435\t     0.108\t0\t0\t0\t0\tsh -c echo $1 >> ran _ a\n\
             3\t:\t1795319212.501\t     0.100\t0\t0\t1\t0\tsh -c echo $1 >> ran _ c\n"
        ),
    )
    .unwrap();
    let args = [
        "--joblog",
        "log",
        "--resume",
        "sh",
        "-c",
        "echo $1 >> ran",
        "_",
        ":::",
        "a",
        "b",
        "c",
    ];
    let r = run_in(&d, &args, None);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        fs::read_to_string(d.join("ran")).unwrap(),
        "b\n",
        "only job 2 ran"
    );
    let rows = commands(&d.join("log"));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1], (2, "sh -c 'echo $1 >> ran' _ b".to_string()));
}

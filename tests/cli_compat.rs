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

/// Runs each case through multiproc and GNU parallel (where installed) in one directory and
/// compares stdout and exit status.
fn same_as_gnu_all(name: &str, files: &[(&str, &str)], cases: &[(&[&str], Option<&str>)]) {
    let d = scratch(name);
    for (f, text) in files {
        fs::write(d.join(f), text).unwrap();
    }
    for (args, stdin) in cases {
        let r = same_as_gnu(&d, args, *stdin);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert!(!r.stdout.is_empty(), "{args:?} printed nothing");
    }
}

#[test]
fn colsep_like_gnu() {
    same_as_gnu_all(
        "colsep",
        &[("cs.txt", "a,b,c\nd,e\n")],
        &[
            (
                &[
                    "-k",
                    "--colsep",
                    ",",
                    "echo",
                    "{2}-{1}-{3}.",
                    "::::",
                    "cs.txt",
                ],
                None,
            ),
            (&["-k", "--colsep", ",", "echo", "::::", "cs.txt"], None),
            (&["-k", "-C", ",", "echo", "{}", "::::", "cs.txt"], None),
            (
                &["-k", "--colsep", "\\s+", "echo", "{3}{2}{1}"],
                Some("a  b\tc\nd e f\n"),
            ),
        ],
    );
}

#[test]
fn n_per_job_like_gnu() {
    same_as_gnu_all(
        "n-per-job",
        &[],
        &[
            (
                &["-k", "-N2", "echo", "{1}+{2}", ":::", "a", "b", "c"],
                None,
            ),
            (&["-k", "-N2", "echo", ":::", "a", "b", "c", "d", "e"], None),
            (
                &["-k", "-N", "2", "echo", "{#}", "{}", ":::", "a", "b", "c"],
                None,
            ),
            (
                &["-k", "-N3", "echo", "{3}{2}{1}"],
                Some("1\n2\n3\n4\n5\n6\n"),
            ),
        ],
    );
}

#[test]
fn tag_and_tagstring_like_gnu() {
    same_as_gnu_all(
        "tag",
        &[("cs.txt", "a,b,c\nd,e\n")],
        &[
            (&["-k", "--tag", "echo", "hi", ":::", "a", "b c"], None),
            (&["-k", "--tag", "echo", ":::", "a", ":::", "x", "y"], None),
            (
                &[
                    "-k",
                    "--tagstring",
                    "<{}-{#}>",
                    "echo",
                    "hi",
                    ":::",
                    "a",
                    "b",
                ],
                None,
            ),
            (
                &["-k", "--tag", "--colsep", ",", "echo", "::::", "cs.txt"],
                None,
            ),
            (
                &["-k", "--tag", "-q", "printf", "1\\n2\\n", ":::", "x"],
                None,
            ),
        ],
    );
}

#[test]
fn replace_string_i_like_gnu() {
    same_as_gnu_all(
        "dash-i",
        &[],
        &[
            (&["-I", "@@", "echo", "@@", "{}", ":::", "a"], None),
            (
                &["-k", "-I", ",,", "echo", ",,.", "x,,y", ":::", "a.b", "c"],
                None,
            ),
        ],
    );
}

#[test]
fn linked_sources_like_gnu() {
    same_as_gnu_all(
        "link",
        &[("f1", "1\n2\n3\n"), ("f2", "x\ny\n")],
        &[
            (
                &["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", "3"],
                None,
            ),
            (
                &["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2"],
                None,
            ),
            (
                &[
                    "-k", "echo", ":::", "a", "b", ":::", "x", "y", ":::+", "1", "2",
                ],
                None,
            ),
            (&["-k", "echo", "::::", "f1", "::::+", "f2"], None),
            (
                &["-k", "--link", "echo", ":::", "a", "b", ":::", "1", "2"],
                None,
            ),
        ],
    );
}

#[test]
fn null_separated_input_like_gnu() {
    same_as_gnu_all(
        "null",
        &[("z", "p q\0r\n\0")],
        &[
            (&["-k", "-0", "echo", "{}x"], Some("a b\0c\0")),
            (&["-k", "--null", "-a", "z", "echo", "[{}]"], None),
        ],
    );
}

#[test]
fn header_like_gnu() {
    same_as_gnu_all(
        "header",
        &[("h.csv", "n,m\n1,2\n3,4\n"), ("h.txt", "col\nv1\nv2\n")],
        &[
            (
                &[
                    "-k", "--header", ":", "echo", "{a}-{b}", ":::", "a", "1", "2", ":::", "b",
                    "x", "y",
                ],
                None,
            ),
            (
                &[
                    "-k", "--header", ":", "--colsep", ",", "echo", "{m}{n}", "::::", "h.csv",
                ],
                None,
            ),
            (
                &["-k", "--header", ":", "echo", "{col}", "::::", "h.txt"],
                None,
            ),
        ],
    );
    let d = scratch("header-bad");
    let r = run_in(
        &d,
        &["--header", ":", "echo", "{nope}", ":::", "a", "1"],
        None,
    );
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("{nope}"), "{}", r.stderr);
}

#[test]
fn x_and_m_like_gnu() {
    same_as_gnu_all(
        "xm",
        &[],
        &[
            (
                &["-j2", "-k", "-X", "echo", "pre{}post", ":::", "a", "b", "c"],
                None,
            ),
            (
                &["-j2", "-k", "-m", "echo", "pre{}post", ":::", "a", "b", "c"],
                None,
            ),
            (
                &[
                    "-j4", "-k", "-X", "echo", ":::", "1", "2", "3", "4", "5", "6", "7", "8",
                ],
                None,
            ),
            (
                &["-j1", "-k", "-X", "echo", "[{}]", ":::", "a b", "c"],
                None,
            ),
        ],
    );
}

#[test]
fn quote_env_wd_nice_load_memfree_like_gnu() {
    let d = scratch("misc");
    fs::create_dir_all(d.join("sub")).unwrap();
    for args in [
        &["-q", "-k", "echo", "a   b", "$HOME", ":::", "c"][..],
        &[
            "-q",
            "--env",
            "MP_TEST_VAR",
            "sh",
            "-c",
            "echo $MP_TEST_VAR $1",
            "_",
            ":::",
            "x",
        ],
        &[
            "-q",
            "--wd",
            "sub",
            "sh",
            "-c",
            "basename \"$(pwd)\"",
            ":::",
            "x",
        ],
        &["--nice", "7", "-q", "sh", "-c", "nice", ":::", "x"],
        &["--load", "1000", "echo", ":::", "a"],
        &["--memfree", "1k", "echo", ":::", "a"],
        &["--delay", "0.01", "-k", "echo", ":::", "a", "b"],
    ] {
        let mut ours = mp(&d);
        ours.env("MP_TEST_VAR", "v").args(args);
        let r = run_cmd(ours, None);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        if have_gnu("misc") {
            let mut theirs = Command::new("parallel");
            clean_env(&mut theirs);
            theirs
                .current_dir(&d)
                .env("MP_TEST_VAR", "v")
                .arg("--will-cite")
                .args(args);
            let g = run_cmd(theirs, None);
            assert_eq!(r.stdout, g.stdout, "{args:?}: {}", g.stderr);
        }
    }
}

#[test]
fn delay_spaces_job_starts() {
    let d = scratch("delay");
    let r = run_in(
        &d,
        &[
            "-j2",
            "-k",
            "--delay",
            "0.3",
            "-q",
            "sh",
            "-c",
            "date +%s.%N",
            ":::",
            "1",
            "2",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let t: Vec<f64> = r.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert!(t[1] - t[0] >= 0.29, "jobs started {}s apart", t[1] - t[0]);
}

#[test]
fn shuf_runs_every_job_in_some_order() {
    let d = scratch("shuf");
    let args: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    let mut a = vec!["-j1", "--shuf", "echo", ":::"];
    a.extend(args.iter().map(String::as_str));
    let r = run_in(&d, &a, None);
    assert_eq!(r.code, Some(0));
    let got: Vec<&str> = r.stdout.lines().collect();
    let mut sorted: Vec<u32> = got.iter().map(|l| l.parse().unwrap()).collect();
    sorted.sort();
    assert_eq!(sorted, (1..=60).collect::<Vec<_>>(), "every job once");
    assert_ne!(got, args, "60 jobs in input order: not shuffled");
}

#[test]
fn files_prints_names_of_files_holding_the_output() {
    let d = scratch("files");
    let r = run_in(&d, &["-k", "--files", "echo", ":::", "a", "b"], None);
    assert_eq!(r.code, Some(0), "{r:?}");
    let names: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(names.len(), 2);
    for (name, want) in names.iter().zip(["a\n", "b\n"]) {
        assert_eq!(fs::read_to_string(name).unwrap(), want);
        fs::remove_file(name).unwrap();
    }
}

/// `--line-buffer` and `-u`: a job's first line is printed while the job still runs (it waits
/// for the file `go`, which the test creates only after reading that line).
#[test]
fn line_buffer_and_ungroup_print_before_the_job_ends() {
    use std::io::{BufRead, BufReader};
    for mode in ["--line-buffer", "-u"] {
        let d = scratch(&format!("lb{mode}"));
        let script = "echo first; i=0; while [ ! -e go ] && [ $i -lt 3000 ]; do sleep 0.01; \
                      i=$((i+1)); done; echo second";
        let mut cmd = mp(&d);
        cmd.args([mode, "sh", "-c", script, ":::", "x"])
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "first\n", "{mode}");
        assert!(!d.join("go").exists());
        fs::write(d.join("go"), "").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "second\n", "{mode}");
        assert!(child.wait().unwrap().success());
    }
    // Lines are never cut: 2 jobs × 2000 lines of 100 bytes, all whole.
    let d = scratch("lb-whole");
    let r = run_in(
        &d,
        &[
            "-j2",
            "--line-buffer",
            "--tag",
            "-q",
            "sh",
            "-c",
            "for i in $(seq 2000); do printf '%0100d\\n' $i; done",
            ":::",
            "a",
            "b",
        ],
        None,
    );
    assert_eq!(r.code, Some(0));
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4000);
    assert!(
        lines
            .iter()
            .all(|l| l.len() == 102 && (l.starts_with("a\t") || l.starts_with("b\t")))
    );
}

#[test]
fn pipe_like_gnu() {
    let twelve: String = (1..=12).map(|i| format!("{i}\n")).collect();
    let fasta = ">a\nx\n>b\ny\n>c\nz\n";
    same_as_gnu_all(
        "pipe",
        &[],
        &[
            (
                &[
                    "-k",
                    "--pipe",
                    "--block",
                    "20",
                    "-q",
                    "sh",
                    "-c",
                    "echo J; cat",
                ],
                Some(&twelve),
            ),
            (
                &[
                    "-k",
                    "--pipe",
                    "--block",
                    "10",
                    "--recstart",
                    ">",
                    "-q",
                    "sh",
                    "-c",
                    "echo J; cat",
                ],
                Some(fasta),
            ),
            (
                &[
                    "-k",
                    "--pipe",
                    "--block",
                    "8",
                    "--recend",
                    "y\n",
                    "-q",
                    "sh",
                    "-c",
                    "echo J; cat",
                ],
                Some(fasta),
            ),
            (&["-k", "--pipe", "wc", "-l"], Some(&twelve)),
        ],
    );
}

#[test]
fn pipepart_covers_the_file_in_record_blocks() {
    let d = scratch("pipepart");
    let text: String = (1..=50_000).map(|i| format!("{i}\n")).collect();
    fs::write(d.join("nums"), &text).unwrap();
    let r = run_in(
        &d,
        &["-k", "--pipepart", "-a", "nums", "--block", "10k", "cat"],
        None,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, text, "the blocks, in order, are the file");
    let r = run_in(
        &d,
        &["--pipepart", "-a", "nums", "--block", "10k", "wc", "-l"],
        None,
    );
    let counts: Vec<u64> = r
        .stdout
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(counts.len() > 5, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 50_000);
    if have_gnu("pipepart") {
        let g = gnu_in(
            &d,
            &["--pipepart", "-a", "nums", "--block", "10k", "wc", "-l"],
            None,
        );
        let theirs: u64 = g
            .stdout
            .lines()
            .map(|l| l.trim().parse::<u64>().unwrap())
            .sum();
        assert_eq!(theirs, 50_000);
    }
}

#[test]
fn help_lists_every_flag_on_one_line() {
    let d = scratch("help");
    let r = run_in(&d, &["--help"], None);
    assert_eq!(r.code, Some(0));
    let flags = [
        "-j, --jobs",
        "-a, --arg-file",
        "-k, --keep-order",
        "--results",
        "--joblog",
        "--resume",
        "--resume-failed",
        "--retries",
        "--timeout",
        "--halt",
        "--bar",
        "--dry-run",
        "--shell",
        "--stdin",
        "--stdout",
        "--threads-per-job",
        "-v, --verbose",
        "-C, --colsep",
        "-N, --max-replace-args",
        "-X",
        "-m",
        "-0, --null",
        "-I <STR>",
        "--header",
        "--shuf",
        "-q, --quote",
        "--tag",
        "--tagstring",
        "--line-buffer",
        "-u, --ungroup",
        "--files",
        "--env",
        "--wd",
        "--delay",
        "--nice",
        "--memfree",
        "--load",
        "--pipe",
        "--pipepart",
        "--block",
        "--recstart",
        "--recend",
        "--link",
    ];
    let options: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    for line in &options {
        // Each option is one line: its flags, then its help.
        assert!(
            line.trim_start().starts_with('-'),
            "a wrapped help line: {line:?}"
        );
    }
    for flag in flags {
        let n = options
            .iter()
            .filter(|l| {
                let t = l.trim_start();
                t.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with([' ', ',', '.']))
            })
            .count();
        assert_eq!(n, 1, "{flag} in --help:\n{}", r.stdout);
    }
    // docs/cli.md has the table with every one of them.
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).unwrap();
    assert!(doc.contains("## GNU parallel flag → multiproc"));
    for flag in flags {
        let long = flag.split(", ").last().unwrap().split(' ').next().unwrap();
        assert!(
            doc.contains(&format!("`{long}")),
            "{long} missing from docs/cli.md"
        );
    }
}

/// GNU parallel users write the command as one string; without other shell syntax it is split
/// as sh would and runs without a shell, with the same output.
#[test]
fn a_command_in_one_string_runs_like_gnu() {
    same_as_gnu_all(
        "one-string",
        &[],
        &[
            (&["-k", "echo {} {.}", ":::", "a.b", "c d.e"], None),
            (
                &["-k", "printf '%s|%s\\n' {} \"x y\"", ":::", "1", "2"],
                None,
            ),
            (&["-k", "-j1", "echo {#}-{}", ":::", "a", "b"], None),
        ],
    );
}

#[test]
fn max_args_delimiter_and_print_jobs_like_gnu() {
    same_as_gnu_all(
        "n-d-t",
        &[],
        &[
            (&["-k", "-n2", "echo", ":::", "1", "2", "3", "4", "5"], None),
            (
                &[
                    "-k",
                    "--max-args",
                    "2",
                    "echo",
                    "{1}-{2}",
                    ":::",
                    "1",
                    "2",
                    "3",
                ],
                None,
            ),
            (&["-k", "-d", ",", "echo", "X{}"], Some("a,b,c")),
            (&["-k", "-d", "\\t", "echo", "Y{}"], Some("a\tb\t")),
            (&["-k", "-r", "echo", ":::", "a"], None),
        ],
    );
    let d = scratch("print-jobs");
    let r = run_in(&d, &["-t", "-k", "echo", ":::", "a b", "c"], None);
    assert_eq!(r.stdout, "a b\nc\n");
    // Whole lines, in the order the jobs started.
    assert_eq!(sorted_lines(&r.stderr), ["echo 'a b'", "echo c"]);
    let r = run_in(&d, &["-r", "echo"], Some(""));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""));
}

/// `--memfree`: under half of SIZE the youngest job is killed and runs again once memory is
/// back (GNU parallel's rule). Memory is faked through the runner's `MULTIPROC_MEMINFO` hook.
#[test]
fn memfree_kills_the_youngest_job_and_runs_it_again() {
    let d = scratch("memfree");
    let meminfo = d.join("meminfo");
    let plenty = "MemTotal: 20000000 kB\nMemAvailable: 10000000 kB\n";
    fs::write(&meminfo, plenty).unwrap();
    let script = "echo $$ > $1.pid; echo run >> $1.log; i=0; \
                  while [ ! -e release ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; echo $1";
    let mut cmd = mp(&d);
    cmd.env("MULTIPROC_MEMINFO", &meminfo)
        .args([
            "-j2",
            "-k",
            "--memfree",
            "1G",
            "sh",
            "-c",
            script,
            "_",
            ":::",
            "old",
            "young",
        ])
        .stdout(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let lines = |f: &str| fs::read_to_string(d.join(f)).map_or(0, |t| t.lines().count());
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + LIMIT;
        while !cond() {
            let (o, y) = (lines("old.log"), lines("young.log"));
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what} ({o}, {y})"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("both jobs to start", &|| {
        lines("old.log") == 1 && lines("young.log") == 1
    });
    let young_pid = fs::read_to_string(d.join("young.pid")).unwrap();
    // Memory falls under half of 1G: the youngest job is killed, and not restarted while low.
    fs::write(&meminfo, "MemTotal: 20000000 kB\nMemAvailable: 100000 kB\n").unwrap();
    let young_gone = || {
        fs::read_to_string(format!("/proc/{}/stat", young_pid.trim())).map_or(true, |st| {
            st.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
        })
    };
    wait("the young job to be killed", &young_gone);
    assert_eq!(lines("young.log"), 1, "not restarted while memory is low");
    // Memory is back: it runs again.
    fs::write(&meminfo, plenty).unwrap();
    wait("the young job to run again", &|| lines("young.log") == 2);
    fs::write(d.join("release"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "old\nyoung\n");
    assert_eq!(lines("old.log"), 1, "the old job ran once");
}

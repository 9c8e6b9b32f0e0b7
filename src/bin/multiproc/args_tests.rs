//! Tests of [`super`]: every flag, its checks and its error messages.

use super::*;
use crate::halt::halt;
use crate::template::JobValues;
use std::num::NonZeroU64;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    Config::parse_from(std::iter::once("multiproc").chain(args.iter().copied()))
}

fn ok(args: &[&str]) -> Config {
    parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(args: &[&str]) -> String {
    let e = parse(args).expect_err("should fail");
    assert_eq!(e.exit_code(), 2, "{e}");
    e.to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn defaults() {
    let c = ok(&["echo", ":::", "a", "b"]);
    assert_eq!(c.jobs, None);
    assert!(!c.keep_order && !c.bar && !c.dry_run && !c.shell);
    assert_eq!(c.resume, Resume::No);
    assert_eq!(c.max_attempts.get(), 1);
    assert_eq!(c.timeout, None);
    assert_eq!(c.halt, Halt::Never);
    assert_eq!(c.threads_per_job, None);
    assert_eq!(c.verbose, 0);
    assert_eq!(c.command_words, ["echo"]);
    assert_eq!(c.sources, [InputSource::Args(strings(&["a", "b"]))]);
}

#[test]
fn all_flags() {
    let dir = tempdir("all_flags");
    let f = dir.join("in.txt");
    std::fs::write(&f, "x\n").unwrap();
    let f = f.to_str().unwrap();
    let c = ok(&[
        "-j",
        "3",
        "-a",
        f,
        "-k",
        "--results",
        "res",
        "--joblog",
        "log.tsv",
        "--resume-failed",
        "--retries",
        "4",
        "--timeout",
        "1.5",
        "--halt",
        "now,fail=10%",
        "--bar",
        "--dry-run",
        "--shell",
        "--stdin",
        "in/{/}",
        "--stdout",
        "out/{#}.txt",
        "--threads-per-job",
        "2",
        "-vv",
        "--",
        "gzip",
        "-9",
        "{}",
    ]);
    assert_eq!(c.jobs, Some(Jobs::Count(NonZeroUsize::new(3).unwrap())));
    assert!(c.keep_order && c.bar && c.dry_run && c.shell);
    assert_eq!(c.results.as_deref(), Some(Path::new("res")));
    assert_eq!(c.joblog.as_deref(), Some(Path::new("log.tsv")));
    assert_eq!(c.resume, Resume::Failed);
    assert_eq!(c.max_attempts.get(), 4);
    assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(
        c.halt,
        halt(HaltWhen::Now, HaltOn::Fail, Threshold::Percent(10.0))
    );
    assert_eq!(c.threads_per_job.map(NonZeroUsize::get), Some(2));
    assert_eq!(c.verbose, 2);
    assert_eq!(c.command_words, ["gzip", "-9", "{}"]);
    assert_eq!(c.sources, [InputSource::File(f.into())]);
    let args = strings(&["d/x.gz"]);
    let job = JobValues {
        seq: 5,
        slot: 1,
        args: &args,
    };
    assert_eq!(c.stdin.unwrap().render_single(&job), "in/x.gz");
    assert_eq!(c.stdout.unwrap().render_single(&job), "out/5.txt");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn command_options_belong_to_the_command() {
    // Without `--`, everything from the command on is the command's.
    let c = ok(&["-j2", "grep", "-v", "-k", "x", ":::", "-j"]);
    assert_eq!(c.jobs, Some(Jobs::Count(NonZeroUsize::new(2).unwrap())));
    assert!(!c.keep_order);
    assert_eq!(c.command_words, ["grep", "-v", "-k", "x"]);
    assert_eq!(c.sources, [InputSource::Args(strings(&["-j"]))]);
    // A command starting with `-` needs `--`.
    let c = ok(&["--", "-weird", ":::", "a"]);
    assert_eq!(c.command_words, ["-weird"]);
}

#[test]
fn input_groups_in_order() {
    let dir = tempdir("groups");
    let (f1, f2) = (dir.join("f1"), dir.join("f2"));
    std::fs::write(&f1, "1\n").unwrap();
    std::fs::write(&f2, "2\n").unwrap();
    let (s1, s2) = (f1.to_str().unwrap(), f2.to_str().unwrap());
    let c = ok(&[
        "-a", s2, "echo", ":::", "a", "b", "::::", s1, s2, ":::", "c",
    ]);
    assert_eq!(
        c.sources,
        [
            InputSource::File(f2.clone()),
            InputSource::Args(strings(&["a", "b"])),
            InputSource::File(f1),
            InputSource::File(f2),
            InputSource::Args(strings(&["c"])),
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stdin_sources() {
    assert_eq!(ok(&["echo"]).sources, [InputSource::Stdin]);
    assert_eq!(ok(&["-a", "-", "echo"]).sources, [InputSource::Stdin]);
    assert_eq!(ok(&["echo", "::::", "-"]).sources, [InputSource::Stdin]);
    let e = err(&["-a", "-", "echo", "::::", "-"]);
    assert_eq!(
        e,
        "invalid value '-' for --arg-file: stdin can be only one input source"
    );
}

#[test]
fn an_empty_value_group_is_an_empty_source() {
    // GNU parallel runs no job for `echo :::` and exits 0; so do we.
    assert_eq!(ok(&["echo", ":::"]).sources, [InputSource::Args(vec![])]);
}

#[test]
fn jobs_forms_and_zero_threads() {
    // GNU parallel's -j forms, against 8 CPUs.
    for (arg, want) in [
        ("3", 3),
        ("0", Jobs::MAX),
        ("50%", 4),
        ("200%", 16),
        ("1%", 1),
        ("+0", 8),
        ("+2", 10),
        ("-2", 6),
        ("-20", 1),
    ] {
        let c = ok(&["-j", arg, "echo"]);
        assert_eq!(c.jobs.unwrap().resolve(8), want, "-j {arg}");
    }
    assert_eq!(ok(&["-j+0", "echo"]).jobs, Some(Jobs::Relative(0)));
    for bad in ["x", "0%", "1.5", "%", "+x"] {
        assert!(
            err(&["-j", bad, "echo"]).starts_with(&format!("invalid value '{bad}' for --jobs")),
            "{bad}"
        );
    }
    assert_eq!(
        err(&["--threads-per-job", "0", "echo"]),
        "invalid value '0' for --threads-per-job: must be at least 1"
    );
    assert!(err(&["--retries", "0", "echo"]).starts_with("invalid value '0' for --retries"));
}

#[test]
fn non_numbers_are_clap_errors_naming_the_flag() {
    let e = err(&["-j", "many", "echo"]);
    assert!(e.contains("'many'") && e.contains("--jobs"), "{e}");
    let e = err(&["--timeout", "soon", "echo"]);
    assert!(e.contains("'soon'") && e.contains("--timeout"), "{e}");
}

#[test]
fn bad_timeouts() {
    for t in ["0", "-1", "NaN", "inf", "1e10"] {
        let e = err(&[&format!("--timeout={t}"), "echo"]);
        assert!(
            e.starts_with("invalid value '") && e.contains("--timeout"),
            "{e}"
        );
    }
}

#[test]
fn halt_specs() {
    let one = NonZeroU64::MIN;
    let n = |v| Threshold::Count(NonZeroU64::new(v).unwrap());
    let cases = [
        ("never", Halt::Never),
        ("0", Halt::Never),
        (
            "1",
            halt(HaltWhen::Soon, HaltOn::Fail, Threshold::Count(one)),
        ),
        (
            "2",
            halt(HaltWhen::Now, HaltOn::Fail, Threshold::Count(one)),
        ),
        ("now,fail=1", halt(HaltWhen::Now, HaltOn::Fail, n(1))),
        ("soon,fail=3", halt(HaltWhen::Soon, HaltOn::Fail, n(3))),
        (
            "now,fail=25%",
            halt(HaltWhen::Now, HaltOn::Fail, Threshold::Percent(25.0)),
        ),
        (
            "soon,done=0.5%",
            halt(HaltWhen::Soon, HaltOn::Done, Threshold::Percent(0.5)),
        ),
        ("now,success=2", halt(HaltWhen::Now, HaltOn::Success, n(2))),
    ];
    for (spec, want) in cases {
        assert_eq!(Halt::parse(spec), Some(want), "{spec}");
    }
    for bad in [
        "",
        "later",
        "now",
        "now,",
        "now,fail",
        "now,fail=",
        "now,fail=0",
        "now,fail=-1",
        "now,fail=0%",
        "now,fail=101%",
        "now,fail=x%",
        "now,fail=NaN%",
        "now,oops=1",
        "3",
        "soon,fail=1,x",
    ] {
        assert_eq!(Halt::parse(bad), None, "{bad:?}");
    }
    let e = err(&["--halt", "now,fail=150%", "echo"]);
    assert!(
        e.starts_with("invalid value 'now,fail=150%' for --halt: expected never"),
        "{e}"
    );
}

#[test]
fn resume_needs_a_joblog() {
    assert_eq!(err(&["--resume", "echo"]), "--resume needs --joblog FILE");
    assert_eq!(
        err(&["--resume-failed", "echo"]),
        "--resume-failed needs --joblog FILE"
    );
    assert_eq!(
        ok(&["--resume", "--joblog", "j", "echo"]).resume,
        Resume::All
    );
    // Both at once is a clap conflict.
    let e = err(&["--resume", "--resume-failed", "--joblog", "j", "echo"]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn missing_command() {
    let want = "no COMMAND given";
    assert!(err(&[]).starts_with(want));
    assert!(err(&["-j", "2", ":::", "a"]).starts_with(want));
    assert!(err(&["--", ":::", "a"]).starts_with(want));
}

#[test]
fn unknown_replacement_strings() {
    assert_eq!(
        err(&["echo", "{foo}", ":::", "a"]).lines().next().unwrap(),
        "COMMAND: unknown replacement string {foo} in '{foo}' (known: {} {.} {/} {//} {/.} \
         {#} {%} and {N} {N.} {N/} {N//} {N/.})"
    );
    assert!(err(&["--stdout", "o/{bar}", "echo"]).starts_with("--stdout: unknown"));
    assert!(err(&["--stdin", "{x}", "echo"]).starts_with("--stdin: unknown"));
    assert_eq!(
        err(&["echo", "{2}", ":::", "a"]),
        "COMMAND: replacement string {2} names an input source that does not exist \
         (there is 1)"
    );
}

#[test]
fn unreadable_input_files() {
    let e = err(&["-a", "/nonexistent/in.txt", "echo"]);
    assert!(
        e.starts_with("cannot read input file '/nonexistent/in.txt' (given to --arg-file): "),
        "{e}"
    );
    let e = err(&["echo", "::::", "/nonexistent/f"]);
    assert!(e.contains("(given to ::::)"), "{e}");
    let e = err(&["echo", "::::", "/tmp"]);
    assert!(e.ends_with("is a directory"), "{e}");
    let e = err(&["echo", "::::"]);
    assert_eq!(e, "invalid value '' for ::::: needs at least one FILE");
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "--version"] {
        let e = parse(&[flag]).unwrap_err();
        assert_eq!(e.exit_code(), 0, "{flag}");
    }
    // An unknown flag is a clap usage error: exit 2.
    let e = parse(&["--frobnicate", "echo"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("multiproc-args-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

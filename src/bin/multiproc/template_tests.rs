//! Tests of [`super`]: replacement strings as GNU parallel 20221122 renders them.

use super::*;

/// The syntax of a run with `k` input sources.
fn n(k: usize) -> Syntax {
    Syntax {
        positions: Some(k),
        ..Syntax::default()
    }
}

fn job(args: &[&str]) -> (Vec<String>, u64, usize) {
    (args.iter().map(|s| s.to_string()).collect(), 7, 2)
}

fn argv(words: &[&str], args: &[&str]) -> Vec<String> {
    let (args, seq, slot) = job(args);
    let t = Template::parse(words, &n(args.len().max(1))).unwrap();
    t.render_argv(&JobValues {
        seq,
        slot,
        args: &args,
    })
}

/// (input, {.}, {/}, {//}, {/.}) as GNU parallel 20221122 printed them.
const GNU_CASES: &[(&str, &str, &str, &str, &str)] = &[
    ("a.txt", "a", "a.txt", ".", "a"),
    ("dir/b.tar.gz", "dir/b.tar", "b.tar.gz", "dir", "b.tar"),
    ("/abs/c", "/abs/c", "c", "/abs", "c"),
    ("foo", "foo", "foo", ".", "foo"),
    ("d.dir/e", "d.dir/e", "e", "d.dir", "e"),
    ("d.dir/f.x", "d.dir/f", "f.x", "d.dir", "f"),
    (".hidden", "", ".hidden", ".", ""),
    ("./g.h", "./g", "g.h", ".", "g"),
    ("/", "/", "", "/", ""),
    ("a/", "a/", "", ".", ""),
    ("a//", "a//", "", ".", ""),
    ("", "", "", ".", ""),
    ("..", ".", "..", ".", "."),
    (".", "", ".", ".", ""),
    ("./", "./", "", ".", ""),
    ("a/b/", "a/b/", "", "a", ""),
    ("x y.z", "x y", "x y.z", ".", "x y"),
    ("..x", ".", "..x", ".", "."),
    ("a.", "a", "a.", ".", "a"),
    ("/a", "/a", "a", "/", "a"),
    ("//a", "//a", "a", "/", "a"),
    ("a//b", "a//b", "b", "a", "b"),
];

#[test]
fn path_ops_match_gnu_parallel() {
    for &(input, noext, base, dir, base_noext) in GNU_CASES {
        assert_eq!(PathOp::Whole.apply(input), input, "{{}} of {input:?}");
        assert_eq!(PathOp::NoExt.apply(input), noext, "{{.}} of {input:?}");
        assert_eq!(PathOp::Basename.apply(input), base, "{{/}} of {input:?}");
        assert_eq!(PathOp::Dirname.apply(input), dir, "{{//}} of {input:?}");
        assert_eq!(
            PathOp::BasenameNoExt.apply(input),
            base_noext,
            "{{/.}} of {input:?}"
        );
    }
}

#[test]
fn all_replacements_in_one_word() {
    assert_eq!(
        argv(&["echo", "{}|{.}|{/}|{//}|{/.}|{#}|{%}"], &["dir/b.tar.gz"]),
        ["echo", "dir/b.tar.gz|dir/b.tar|b.tar.gz|dir|b.tar|7|2"]
    );
}

#[test]
fn input_appended_without_replacement_strings() {
    assert_eq!(argv(&["echo", "-n"], &["a b"]), ["echo", "-n", "a b"]);
    // Several sources: one argument each.
    assert_eq!(argv(&["echo"], &["a", "b c"]), ["echo", "a", "b c"]);
}

#[test]
fn seq_or_slot_alone_suppresses_appending() {
    // GNU: `parallel echo {#} ::: a b` prints 1 and 2, not "1 a".
    assert_eq!(argv(&["echo", "{#}"], &["a"]), ["echo", "7"]);
    assert_eq!(argv(&["echo", "{%}"], &["a"]), ["echo", "2"]);
}

#[test]
fn host_is_a_colon_on_one_node() {
    // GNU (`--plus`): `parallel --plus echo {host} ::: a` prints ":" for the local host.
    // A multi-node agent sets it to its node (checked by scripts/slurm/test-multi.sh).
    assert_eq!(argv(&["echo", "{host}"], &["a"]), ["echo", ":"]);
    assert_eq!(argv(&["echo", "x{host}y"], &["a"]), ["echo", "x:y"]);
}

#[test]
fn repeated_and_adjacent_replacements() {
    // GNU: `parallel echo '{}{}' x{}y ::: a` prints "aa xay".
    assert_eq!(
        argv(&["echo", "{}{}", "x{}y"], &["a"]),
        ["echo", "aa", "xay"]
    );
}

#[test]
fn several_sources() {
    // GNU: `parallel echo {} ::: a b ::: c d` prints "a c"...; {.} is applied to each value.
    assert_eq!(argv(&["echo", "{}"], &["a", "c"]), ["echo", "a c"]);
    assert_eq!(argv(&["echo", "{.}"], &["a.x", "b.y"]), ["echo", "a b"]);
    // GNU: `parallel echo {2} {1/} {1.} ::: a/b.c ::: d` prints "d b.c a/b".
    assert_eq!(
        argv(
            &["echo", "{2}", "{1/}", "{1.}", "{1//}", "{2/.}"],
            &["a/b.c", "d.e"]
        ),
        ["echo", "d.e", "b.c", "a/b", "a", "d"]
    );
}

#[test]
fn unknown_replacement_is_an_error() {
    for bad in [
        "{foo}", "x{foo}y", "{1..3}", "{-1}", "{./}", "{#1}", "{//.}",
    ] {
        let err = Template::parse(&["echo", bad], &n(1)).unwrap_err();
        assert!(
            matches!(&err, TemplateError::Unknown { word, .. } if word == bad),
            "{bad}: {err:?}"
        );
    }
    let msg = Template::parse(&["x{foo}"], &n(1)).unwrap_err().to_string();
    assert!(
        msg.starts_with("unknown replacement string {foo} in 'x{foo}'"),
        "{msg}"
    );
}

#[test]
fn brace_text_that_is_not_a_replacement_is_literal() {
    // Shell variables, brace expansion with commas, awk programs with spaces, lone braces.
    for lit in [
        "${HOME}",
        "a{b,c}",
        "{print $1}",
        "{",
        "}",
        "{ }",
        "}{",
        "{x",
        "$${x}",
    ] {
        assert_eq!(
            argv(&["cmd", lit, "{}"], &["i"]),
            ["cmd", lit, "i"],
            "{lit}"
        );
    }
}

#[test]
fn source_out_of_range() {
    let err = Template::parse(&["echo", "{3}"], &n(2)).unwrap_err();
    assert_eq!(
        err,
        TemplateError::SourceOutOfRange {
            found: "{3}".into(),
            sources: 2
        }
    );
    assert!(Template::parse(&["{0}"], &n(1)).is_err());
    assert!(Template::parse(&["{99999999999999999999999}"], &n(1)).is_err());
    assert!(Template::parse(&["{2/.}"], &n(2)).is_ok());
}

#[test]
fn render_shell_quotes_only_values() {
    let t = Template::parse(&["echo", "{}", "|", "wc", "-c"], &n(1)).unwrap();
    let args = vec!["a b".to_string()];
    let j = JobValues {
        seq: 1,
        slot: 1,
        args: &args,
    };
    assert_eq!(t.render_shell(&j), "echo 'a b' | wc -c");
    let t = Template::parse(&["echo"], &n(2)).unwrap();
    let args = vec!["a".to_string(), "b c".to_string()];
    let j = JobValues { args: &args, ..j };
    assert_eq!(t.render_shell(&j), "echo a 'b c'");
}

#[test]
fn single_templates_do_not_append() {
    let t = Template::parse_single("out/{/.}.txt", &n(1)).unwrap();
    let args = vec!["in/x.csv".to_string()];
    let j = JobValues {
        seq: 1,
        slot: 1,
        args: &args,
    };
    assert_eq!(t.render_single(&j), "out/x.txt");
    let t = Template::parse_single("fixed.txt", &n(1)).unwrap();
    assert!(!t.has_replacements());
    assert_eq!(t.render_single(&j), "fixed.txt");
}

#[test]
fn display_round_trips() {
    for s in [
        "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", "{2}", "{3/.}",
    ] {
        assert_eq!(
            parse_replacement(&s[1..s.len() - 1]).unwrap().to_string(),
            s
        );
    }
}

/// Compares `--dry-run` output with GNU parallel's when it is installed
/// (`scripts/slurm/install.sh` installs it); otherwise the hard-coded cases above stand in.
#[test]
fn dry_run_matches_installed_gnu_parallel() {
    let words = ["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}"];
    let inputs: Vec<&str> = GNU_CASES.iter().map(|c| c.0).collect();
    let out = std::process::Command::new("parallel")
        .args(["--will-cite", "-k", "-j1", "--dry-run"])
        .args(words)
        .arg(":::")
        .args(&inputs)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        _ => {
            eprintln!("GNU parallel not installed: skipping the live comparison");
            return;
        }
    };
    let t = Template::parse(&words, &n(1)).unwrap();
    let ours: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let args = vec![input.to_string()];
            t.render_shell(&JobValues {
                seq: i as u64 + 1,
                slot: 1,
                args: &args,
            })
        })
        .collect();
    let theirs: Vec<&str> = out.lines().collect();
    assert_eq!(ours, theirs);
}

//! GNU parallel's options that multiproc leaves out, each with the reason or what to use instead,
//! so that an option copied from a GNU parallel one-liner gets "this GNU parallel option is not
//! supported (...)" rather than clap's tip to pass it as a value (which would run it as the
//! command). docs/cli.md has the same list.

/// (option spellings, why it is left out or what to use instead).
const LEFT_OUT: &[(&[&str], &str)] = &[
    (
        &[
            "-S",
            "--sshlogin",
            "--slf",
            "--sshloginfile",
            "--ssh",
            "--sshdelay",
        ],
        "remote execution over ssh; multi-node runs come through SLURM (srun one multiproc per node)",
    ),
    (
        &[
            "--controlmaster",
            "-M",
            "--filter-hosts",
            "--nonall",
            "--onall",
            "--hostgroups",
        ],
        "remote execution over ssh; multi-node runs come through SLURM",
    ),
    (
        &[
            "--transfer",
            "--transferfile",
            "--tf",
            "--return",
            "--cleanup",
            "--trc",
            "--basefile",
            "--bf",
            "--workdir-remote",
        ],
        "file transfer to remote hosts; on a cluster the shared file system does it",
    ),
    (
        &["--sql", "--sqlmaster", "--sqlworker", "--sqlandworker"],
        "SQL job queues; use --joblog and --resume for restartable runs",
    ),
    (
        &[
            "--semaphore",
            "--sem",
            "--fg",
            "--bg",
            "--semaphorename",
            "--id",
            "--semaphoretimeout",
            "--st",
        ],
        "semaphore mode; start one multiproc for the whole batch instead",
    ),
    (
        &["--tmux", "--tmuxpane", "--fifo", "--cat"],
        "not implemented",
    ),
    (
        &["--compress", "--compress-program", "--decompress-program"],
        "not implemented; job output over a few MB is spilled to an unlinked temporary file",
    ),
    (
        &["--plus", "--rpl", "--parens"],
        "custom replacement strings are not implemented (the ones in multiproc --help are)",
    ),
    (
        &[
            "--round-robin",
            "--roundrobin",
            "--regexp",
            "--remove-rec-sep",
            "--rrs",
            "--cat",
            "--fifo",
            "--spreadstdin",
        ],
        "not implemented for --pipe",
    ),
    (
        &[
            "--csv",
            "--trim",
            "--group-by",
            "--groupby",
            "--ctag",
            "--ctagstring",
            "--latest-line",
            "--ll",
        ],
        "not implemented",
    ),
    (
        &[
            "-x",
            "--xargs",
            "-n",
            "--max-args",
            "-s",
            "--max-chars",
            "-L",
            "-l",
            "--max-lines",
        ],
        "not implemented: use -N n (n inputs per job) or -X/-m",
    ),
    (
        &[
            "-i",
            "--replace",
            "-E",
            "-e",
            "--eof",
            "-d",
            "--delimiter",
            "--arg-sep",
            "--arg-file-sep",
        ],
        "not implemented: use -I STR for another replacement string, -0 for NUL-separated input",
    ),
    (
        &[
            "--interactive",
            "-p",
            "--tty",
            "-t",
            "--verbose-remote",
            "--shebang",
            "--shebang-wrap",
            "--embed",
        ],
        "not implemented",
    ),
    (
        &[
            "--limit",
            "--termseq",
            "--noswap",
            "--use-cpus-instead-of-cores",
            "--use-sockets-instead-of-threads",
            "--use-cores-instead-of-threads",
        ],
        "not implemented; -j defaults to the CPUs of the SLURM allocation (multiproc -v says which)",
    ),
    (
        &[
            "--record-env",
            "--session",
            "--profile",
            "-J",
            "--tmpdir",
            "--tempdir",
            "--results-csv",
            "--files0",
            "--retry-failed",
            "--number-of-cpus",
            "--number-of-cores",
            "--number-of-sockets",
            "--number-of-threads",
            "--show-limits",
            "--max-line-length-allowed",
            "--minversion",
            "--citation",
            "--bibtex",
            "--gnu",
            "-r",
            "--no-run-if-empty",
            "--keep-order-on-resume",
            "--shellquote",
        ],
        "not implemented",
    ),
];

/// Why `flag` (as typed, possibly `--flag=value` or `-Xvalue`) is left out, if it is a GNU
/// parallel option multiproc does not have.
pub(crate) fn left_out(flag: &str) -> Option<&'static str> {
    let name = flag.split_once('=').map_or(flag, |(n, _)| n);
    // A short option with its value attached (`-S host`, `-Shost`).
    let short = if !name.starts_with("--") && name.len() > 2 {
        &name[..2]
    } else {
        name
    };
    LEFT_OUT
        .iter()
        .find(|(names, _)| names.contains(&name) || names.contains(&short))
        .map(|(_, why)| *why)
}

/// The message for an option clap does not know: GNU parallel's own, or not an option at all.
pub(crate) fn unknown_option_message(flag: &str) -> String {
    match left_out(flag) {
        Some(why) => format!("{flag}: this GNU parallel option is not supported ({why})"),
        None => format!(
            "unknown option '{flag}' (multiproc --help lists the options; they go before the \
             command, and a command that starts with '-' goes after '--')"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_options_left_out_say_so() {
        for flag in [
            "-S",
            "--sshlogin=host",
            "-Shost",
            "--sql",
            "--sqlworker",
            "--plus",
        ] {
            let m = unknown_option_message(flag);
            assert!(
                m.starts_with(&format!(
                    "{flag}: this GNU parallel option is not supported ("
                )),
                "{m}"
            );
        }
        assert!(unknown_option_message("-S").contains("SLURM"));
        assert!(unknown_option_message("--frobnicate").starts_with("unknown option"));
    }
}

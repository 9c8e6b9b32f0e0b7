//! How the crate is packaged: a crate that depends on the library alone compiles none of the
//! command's dependencies, and every integration test file is a target of some package (the root
//! package lists its tests, `autotests = false`, so a new file that is not listed would never run).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Crates that only the `multiproc` command needs.
const CLI_ONLY: [&str; 4] = ["clap", "indicatif", "crossbeam-channel", "num_cpus"];

/// Runs `cmd` with its output captured; panics if it does not end within `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            panic!("{cmd:?} took longer than {limit:?}");
        }
    }
}

/// A throwaway crate whose only dependency is `multiproc = { path = ROOT }`, with the
/// workspace's lock file (so `--offline` resolves to the versions the workspace builds with).
fn library_only_dependent(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"library-only\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nmultiproc = {{ path = {ROOT:?} }}\n\n[workspace]\n"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::copy(Path::new(ROOT).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

/// `cargo tree -e normal` of `dir`'s crate, one `name vX.Y.Z` per line.
fn normal_tree(dir: &Path) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(dir).args([
            "tree", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ]);
        if offline {
            cmd.arg("--offline");
        }
        output_within(cmd, Duration::from_secs(300))
    };
    // Offline first (every crate of the lock is in the local registry after the workspace built);
    // a registry that lacks one (a fresh CARGO_HOME) needs the network.
    let mut out = tree(true);
    if !out.status.success() {
        out = tree(false);
    }
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn library_only_dependent_compiles_no_cli_dependency() {
    let dir = std::env::temp_dir().join(format!("multiproc-library-only-{}", std::process::id()));
    library_only_dependent(&dir);
    let tree = normal_tree(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    // The tree was really resolved: the library and its own dependencies are in it.
    for needed in [
        "library-only",
        "multiproc",
        "nix",
        "libc",
        "serde",
        "postcard",
    ] {
        assert!(crates.contains(&needed), "{needed} missing from:\n{tree}");
    }
    for cli_only in CLI_ONLY {
        assert!(
            !crates.contains(&cli_only),
            "a library-only dependent compiles {cli_only}:\n{tree}"
        );
    }
}

/// The `path = "..."` values of a manifest's `[[test]]` targets.
fn test_paths(manifest: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let dir = manifest.parent().unwrap();
    let mut paths = Vec::new();
    let mut in_test = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_test = line == "[[test]]";
        } else if let Some(p) = line.strip_prefix("path = ").filter(|_| in_test) {
            let p = p.trim_matches('"');
            paths.push(
                dir.join(p)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{p}: {e}")),
            );
        }
    }
    paths
}

#[test]
fn every_test_file_is_a_target_of_exactly_one_package() {
    let root = Path::new(ROOT);
    let lib_tests = test_paths(&root.join("Cargo.toml"));
    let cli_tests = test_paths(&root.join("cli/Cargo.toml"));
    assert!(cli_tests.iter().any(|p| p.ends_with("tests/cli.rs")));
    let mut files = 0;
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path().canonicalize().unwrap();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let listed = lib_tests.contains(&path) as usize + cli_tests.contains(&path) as usize;
        assert_eq!(
            listed,
            1,
            "{} must be a [[test]] of exactly one of Cargo.toml (library tests) and cli/Cargo.toml \
             (tests that run the multiproc command); it is listed {listed} times",
            path.display()
        );
    }
    assert_eq!(
        files,
        lib_tests.len() + cli_tests.len(),
        "a [[test]] names a missing file"
    );
}

//! The bench still runs: every section of the `--quick` path at tiny sizes
//! (fast even in a debug build).

use std::process::Command;

#[test]
fn quick_run_with_tiny_sizes_completes_and_reports_every_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args([
            "--quick",
            "--keys",
            "64,512",
            "--threads",
            "1,2",
            "--reps",
            "2",
            "--rep-ms",
            "1",
            "--warm-ops",
            "256",
            "--mem-keys",
            "2000",
            "--flood",
            "5000",
            "--flood-max-keys",
            "256",
        ])
        .output()
        .expect("the bench binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for needle in [
        "| 512 | 2 | sluice Engine::check |",
        "| 512 | 1 | sluice MemoryStore::decide_keyed |",
        "| 512 | 1 | sluice Engine::admit |",
        "| 512 | 2 | sluice Engine::check, 10k bans |",
        "| 64 | 1 | governor keyed + direct |",
        "| 64 | 2 | raw Vec<AtomicU64> |",
        "| sluice MemoryStore (max_keys = 2000) |",
        "| governor keyed (DashMap) | 2000 |",
        "still limited after flood: yes",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // Every timing row allowed every request (generous rates).
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("| 64 |") || l.starts_with("| 512 |"))
    {
        assert!(line.ends_with("| 100% |"), "a timing run saw denials: {line}");
    }
}

#[test]
fn bad_arguments_fail_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["--keys", "lots"])
        .output()
        .expect("the bench binary starts");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keys"));
}

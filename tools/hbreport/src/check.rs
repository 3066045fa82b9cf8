//! `--check`: what CI requires of a benchmark run besides a report. Issue 4
//! asks the quick run in CI to show that every suite printed parseable
//! `result` lines and that each workload's checksum is the same under both
//! backends. Times are never checked.

use crate::log::{Log, Query};

/// The suites `run=bench` runs (the kernel's bench::run).
pub const SUITES: &[&str] = &["exits", "mm", "cpu", "smp", "workload"];

/// Every problem found, one sentence each; empty when the run passes.
pub fn check(log: &Log) -> Vec<String> {
    let mut problems = Vec::new();
    for k in &log.skipped {
        problems.push(k.to_string());
    }
    for suite in SUITES {
        if log.suite(suite).next().is_none() {
            problems.push(format!("suite {suite} printed no result line"));
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for f in log.suite("workload") {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    for name in names {
        let get = |backend| {
            log.find(&Query {
                suite: Some("workload"),
                name: Some(name),
                backend: Some(backend),
                ..Query::default()
            })
        };
        match (get("immediate"), get("batched")) {
            (Some(i), Some(b)) => match (&i.checksum, &b.checksum) {
                (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => {}
                (Some(x), Some(y)) => problems.push(format!(
                    "workload {name}: checksums differ (immediate {x}, batched {y})"
                )),
                _ => problems.push(format!("workload {name}: a result line has no checksum")),
            },
            _ => problems.push(format!(
                "workload {name}: not run under both immediate and batched"
            )),
        }
    }
    match log.exit_status() {
        Some(0) => {}
        Some(s) => problems.push(format!("the guest exited with status {s}")),
        None => problems.push("the log has no HB exit record".into()),
    }
    problems
}

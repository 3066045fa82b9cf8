//! `--check`: what CI requires of a benchmark run besides a report. Every
//! boot must have printed parseable `result` lines for every suite it was
//! asked to run (all of them, or the one `suite=` named), each workload's
//! checksum must be the same under both backends, the guest must have
//! exited 0, and a counted figure must be the same in every counting boot
//! (the determinism the counting mode promises). Times are never checked.

use crate::log::{Log, Query};
use crate::summary::Summary;

/// The suites `run=bench` runs (the kernel's bench::run).
pub const SUITES: &[&str] = &["exits", "mm", "cpu", "smp", "scale", "workload"];

/// Every problem of one boot's log, one sentence each; empty when it passes.
pub fn check(log: &Log) -> Vec<String> {
    let mut problems = Vec::new();
    for k in &log.skipped {
        problems.push(k.to_string());
    }
    // `suite=A,B` runs those suites; the guest itself refuses an unknown one.
    let wanted: Vec<&str> = match log.cmdline_key("suite") {
        Some(list) => list.split(',').filter(|w| !w.is_empty()).collect(),
        None => SUITES.to_vec(),
    };
    for suite in wanted {
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

/// Every boot's problems (named by its log when there are several), and
/// every counted figure that differs between counting boots.
pub fn check_all(s: &Summary) -> Vec<String> {
    let mut problems = Vec::new();
    let many = s.boots.len() > 1;
    for b in &s.boots {
        for p in check(&b.log) {
            problems.push(if many { format!("{}: {p}", b.file) } else { p });
        }
    }
    for a in s.counted_differences() {
        let per_boot: Vec<String> = a
            .boots
            .iter()
            .zip(&a.values)
            .map(|(b, v)| format!("{} {v}", s.boots[*b].file))
            .collect();
        problems.push(format!(
            "counted figure {} differs between counting boots ({}): the guest is not deterministic",
            a.key.id(),
            per_boot.join(", ")
        ));
    }
    // The two kinds must agree on the data too.
    for a in s.suite_any("workload") {
        let mut sums: Vec<&str> = a.checksums.iter().flatten().map(String::as_str).collect();
        sums.dedup_by(|x, y| x.eq_ignore_ascii_case(y));
        if sums.len() > 1 {
            problems.push(format!(
                "workload {} ({}): checksums differ between boots ({})",
                a.key.name,
                a.key.backend,
                sums.join(", ")
            ));
        }
    }
    problems
}

//! Helpers shared by the integration tests: the recorded logs, small logs
//! built to hit one case each, and summaries over them.
#![allow(dead_code)]

use hbreport::host::Host;
use hbreport::log::{self, Log};
use hbreport::summary::Summary;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Hand-written to the guest's schema: every suite, prose lines, `\r\n`
/// endings, one garbled HB line; one timed boot, 4 vCPUs, full mode. Its
/// `scale` figures are made up too (shaped like single-threaded TCG's).
pub const SAMPLE: &str = include_str!("../../testdata/sample.serial");
/// The line of sample.serial that the console cut short.
pub const GARBLED_LINE: usize = 77;
/// Recorded: `run=bench quick` at 2 vCPUs, one counting boot (icount) and
/// two timed boots, on the development machine (HB and error lines kept).
pub const QUICK_COUNT: &str = include_str!("../../testdata/quick-count.serial");
pub const QUICK_TIMED_1: &str = include_str!("../../testdata/quick-timed-1.serial");
pub const QUICK_TIMED_2: &str = include_str!("../../testdata/quick-timed-2.serial");
/// Recorded: `run=bench quick suite=nosuch`, which the guest refuses.
pub const NOSUCH: &str = include_str!("../../testdata/nosuch.serial");

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

pub fn sample() -> Log {
    log::parse(SAMPLE, false).expect("sample.serial parses leniently")
}

/// A summary of named logs, no host record.
pub fn summary_of(logs: &[(&str, &str)]) -> Summary {
    let host = Host::default();
    let boots = logs
        .iter()
        .map(|(name, text)| hbreport::parse_boot(name, text, false, &host).expect("log parses"))
        .collect();
    Summary::new(boots, host)
}

/// The recorded quick run: one counting boot and two timed boots.
pub fn quick_run() -> Summary {
    summary_of(&[
        ("serial-count-1.log", QUICK_COUNT),
        ("serial-timed-1.log", QUICK_TIMED_1),
        ("serial-timed-2.log", QUICK_TIMED_2),
    ])
}

/// One `HB result` line, timed (cycles) unless `unit` says instructions.
#[allow(clippy::too_many_arguments)]
pub fn result_unit(
    suite: &str,
    name: &str,
    backend: &str,
    batch: u64,
    vcpus: u64,
    value: f64,
    counters: Value,
    unit: &str,
) -> String {
    let mut v = json!({
        "event": "result", "schema": 2, "suite": suite, "name": name, "backend": backend,
        "batch": batch, "vcpus": vcpus, "ops": 100, "reps": 10,
        "unit": unit, "scope": if unit == "cycles" { "elapsed" } else { "all_vcpus" },
        "per_op": {"median": value, "p99": value * 1.1, "min": value * 0.9, "max": value * 1.2},
        "counters": counters,
    });
    if unit == "cycles" {
        v["ns_per_op"] = json!({"median": value / 2.0, "p99": value * 0.55});
    }
    if suite == "workload" {
        v["checksum"] = json!("0xabc");
    }
    format!("HB {v}")
}

pub fn result_line(
    suite: &str,
    name: &str,
    backend: &str,
    batch: u64,
    vcpus: u64,
    cycles: f64,
    counters: Value,
) -> String {
    result_unit(
        suite, name, backend, batch, vcpus, cycles, counters, "cycles",
    )
}

pub fn env_line(ring: u64) -> String {
    format!(
        "HB {}",
        json!({"event":"env","schema":2,"hypervisor":"tcg","vcpus":2,"ring_capacity":ring,"invlpg_ceiling":33})
    )
}

pub fn exit_line(status: i64) -> String {
    format!("HB {}", json!({"event":"exit","status":status}))
}

pub fn parse(lines: &[String]) -> Log {
    log::parse(&lines.join("\n"), false).expect("built log parses")
}

pub fn text(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

/// A fresh directory under the system temp dir for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hbreport-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `text` with the per_op median of the first result line matching
/// `needle` multiplied by `factor` (and min/max/p99 with it).
pub fn scale_figure(text: &str, needle: &str, factor: f64) -> String {
    let mut done = false;
    text.lines()
        .map(|l| {
            if done || !l.starts_with("HB ") || !l.contains(needle) || !l.contains("\"result\"") {
                return format!("{l}\n");
            }
            done = true;
            let mut v: Value = serde_json::from_str(&l[3..]).expect("a result record");
            for k in ["median", "p99", "min", "max"] {
                if let Some(x) = v["per_op"][k].as_f64() {
                    v["per_op"][k] = json!(x * factor);
                }
            }
            format!("HB {v}\n")
        })
        .collect()
}

/// Whether a text names an issue by number ("issue 4", "Issue #12").
pub fn names_an_issue(text: &str) -> bool {
    let t = text.to_lowercase();
    t.match_indices("issue").any(|(i, _)| {
        t[i + 5..]
            .trim_start_matches([' ', '#'])
            .starts_with(|c: char| c.is_ascii_digit())
    })
}

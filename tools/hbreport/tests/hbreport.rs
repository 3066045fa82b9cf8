//! hbreport on a recorded log (testdata/sample.serial, written by hand to the
//! guest's schema: every suite, prose lines, `\r\n` endings, one garbled HB
//! line) and on small logs built here to hit one case each. Nothing here
//! asserts a time: only parsing, arithmetic, verdicts and files.

use hbreport::log::{self, Error, Kind, Log};
use hbreport::projection::{self, Column, Costs, MeasuredCosts, OpCounts, Projected};
use hbreport::reference::{self, Cycles, Op, Platform, REFERENCE_COSTS};
use hbreport::targets::{self, Status, Target};
use hbreport::{report, results, Options};
use serde_json::{json, Value};
use std::path::PathBuf;

const SAMPLE: &str = include_str!("../testdata/sample.serial");
/// The line of sample.serial that the console cut short.
const GARBLED_LINE: usize = 69;

fn sample() -> Log {
    log::parse(SAMPLE, false).expect("sample.serial parses leniently")
}

/// One `HB result` line.
fn result_line(
    suite: &str,
    name: &str,
    backend: &str,
    batch: u64,
    vcpus: u64,
    cycles: f64,
    counters: Value,
) -> String {
    let mut v = json!({
        "event": "result", "schema": 2, "suite": suite, "name": name, "backend": backend,
        "batch": batch, "vcpus": vcpus, "ops": 100, "reps": 10,
        "unit": "cycles", "scope": "elapsed",
        "per_op": {"median": cycles, "p99": cycles * 1.1},
        "ns_per_op": {"median": cycles / 2.0, "p99": cycles * 0.55},
        "counters": counters,
    });
    if suite == "workload" {
        v["checksum"] = json!("0xabc");
    }
    format!("HB {v}")
}

fn env_line(ring: u64) -> String {
    format!(
        "HB {}",
        json!({"event":"env","schema":2,"hypervisor":"tcg","vcpus":2,"ring_capacity":ring})
    )
}

fn parse(lines: &[String]) -> Log {
    log::parse(&lines.join("\n"), false).expect("built log parses")
}

fn target<'a>(ts: &'a [Target], title_part: &str) -> &'a Target {
    ts.iter()
        .find(|t| t.title.contains(title_part))
        .unwrap_or_else(|| panic!("no target like {title_part:?}"))
}

/// A fresh directory under the system temp dir for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hbreport-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

// --- parsing ---

#[test]
fn sample_parses_every_record_and_skips_the_garbled_line_by_number() {
    let log = sample();
    assert_eq!(log.lines, SAMPLE.lines().count());
    // 71 lines: 6 prose, 1 garbled, the rest HB records.
    let hb_lines = SAMPLE.lines().filter(|l| l.starts_with("HB ")).count();
    assert_eq!(log.records.len() + log.skipped.len(), hb_lines);
    assert_eq!(log.skipped.len(), 1);
    let k = &log.skipped[0];
    assert_eq!(k.line, GARBLED_LINE);
    assert!(k.reason.contains("not valid JSON"), "{}", k.reason);
    assert!(k.to_string().starts_with(&format!("line {GARBLED_LINE}:")));
    // Records keep log order and their line numbers.
    assert!(log.records.windows(2).all(|w| w[0].line < w[1].line));
    assert_eq!(log.records[0].event, "boot");
    assert!(matches!(log.records[0].kind, Kind::Other));
    assert_eq!(log.exit_status(), Some(0));
    let env = log.env().expect("env record");
    assert_eq!(env.ring_capacity, Some(256));
    assert_eq!(env.tsc_resolution, Some(26));
    assert_eq!(env.quick, Some(false));
}

#[test]
fn sample_has_every_suite_and_crlf_lines_parse() {
    let log = sample();
    for (suite, n) in [
        ("exits", 8),
        ("mm", 27),
        ("cpu", 4),
        ("smp", 8),
        ("workload", 6),
    ] {
        assert_eq!(log.suite(suite).count(), n, "suite {suite}");
    }
    // The exits lines end in \r\n in the sample.
    assert!(SAMPLE.contains("\r\n"));
    let cpuid = log
        .find(&log::Query {
            suite: Some("exits"),
            name: Some("cpuid"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(cpuid.per_op.median, 182.0);
    let w = log.find(&log::Query {
        suite: Some("workload"),
        name: Some("arena"),
        backend: Some("batched"),
        ..Default::default()
    });
    assert_eq!(
        w.and_then(|f| f.checksum.clone()).as_deref(),
        Some("0x3a94b1e0d57c2268")
    );
}

#[test]
fn strict_mode_makes_the_garbled_line_an_error_naming_it() {
    let err = log::parse(SAMPLE, true).unwrap_err();
    match &err {
        Error::Malformed { line, reason } => {
            assert_eq!(*line, GARBLED_LINE);
            assert!(reason.contains("JSON"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with(&format!("line {GARBLED_LINE}: malformed HB record")));
}

#[test]
fn malformed_records_name_the_problem() {
    let good = result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({}));
    let cases: Vec<(String, &str)> = vec![
        ("HB [1,2]".into(), "not a JSON object"),
        ("HB {\"suite\":\"mm\"}".into(), "no \"event\""),
        ("HB {\"event\":7}".into(), "not a string"),
        (good.replace("\"batch\":1,", ""), "missing field `batch`"),
        (good.replace("\"schema\":2", "\"schema\":1"), "schema 1"),
        (good.replace("\"reps\":10", "\"reps\":0"), "reps=0"),
        (
            good.replace("\"median\":10.0", "\"median\":-10.0"),
            "per_op.median is -10",
        ),
        (
            "HB {\"event\":\"exit\",\"status\":\"ok\"}".into(),
            "no integer \"status\"",
        ),
        (
            format!("HB {}", json!({"event":"env","schema":3})),
            "env record: schema 3",
        ),
    ];
    for (bad, want) in cases {
        let text = format!("prose\n{good}\n{bad}\n");
        let err = log::parse(&text, true).unwrap_err();
        match err {
            Error::Malformed { line, reason } => {
                assert_eq!(line, 3, "{bad}");
                assert!(
                    reason.contains(want),
                    "{bad}: reason {reason:?} lacks {want:?}"
                );
            }
            other => panic!("{bad}: expected Malformed, got {other:?}"),
        }
        // Leniently, the good figure survives and the bad line is listed.
        let log = log::parse(&text, false).unwrap();
        assert_eq!(log.figures().count(), 1);
        assert_eq!(log.skipped.len(), 1);
        assert_eq!(log.skipped[0].line, 3);
    }
}

#[test]
fn a_log_without_results_is_an_error() {
    let text = "SeaBIOS\nHB {\"event\":\"boot\",\"cpus_listed\":1}\nno HB here: HB {\"event\":\"result\"}\n";
    let err = log::parse(text, false).unwrap_err();
    assert_eq!(err, Error::NoResults { hb_lines: 1 });
    assert!(err.to_string().contains("run=bench"));
}

#[test]
fn hb_must_start_the_line() {
    let fig = result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({}));
    let text = format!("{fig}\n  {fig}\nx{fig}\n");
    assert_eq!(log::parse(&text, true).unwrap().figures().count(), 1);
}

// --- targets ---

#[test]
fn sample_targets_are_met_and_missed_as_the_figures_say() {
    let ts = targets::evaluate(&sample());
    let status = |part: &str| target(&ts, part).status;
    assert_eq!(status("map+unmap at ring capacity, 1 vCPU"), Status::Met);
    assert_eq!(status("4 vCPUs"), Status::Met);
    assert_eq!(
        status("map_unmap at ring capacity: batched vs the floor"),
        Status::Met
    );
    assert_eq!(status("map_touch_unmap at ring capacity"), Status::Met);
    assert_eq!(status("protect at ring capacity"), Status::NotMet);
    assert_eq!(status("privileged operations"), Status::NotMet);
    assert_eq!(status("cow_snapshot"), Status::Met);
    assert_eq!(status("page_flip_ring"), Status::Met);
    assert_eq!(status("arena"), Status::NotMet);
    assert_eq!(ts.len(), 9);

    // 984 / 82.4 = 11.94x against 10x.
    let t = target(&ts, "1 vCPU");
    assert!(t.measured.starts_with("11.9x"), "{}", t.measured);
    assert!(t.margin.contains("met with 1.19x to spare"), "{}", t.margin);
    // 75.1 / 45.0 = 1.669x against 1.5x: 11% over, with a reason.
    let t = target(&ts, "protect");
    assert!(t.margin.contains("11% over"), "{}", t.margin);
    assert!(
        t.why.as_deref().unwrap().contains("30.1 cycles/op"),
        "{:?}",
        t.why
    );
    // 2.0039 vs 3.000: the stores dominate, and the transitions alone meet it.
    let t = target(&ts, "privileged operations");
    assert!(
        t.why.as_deref().unwrap().contains("PTE writes (2.000/op)"),
        "{:?}",
        t.why
    );
    assert!(
        t.why
            .as_deref()
            .unwrap()
            .contains("1/256 of immediate, which meets 1/64"),
        "{:?}",
        t.why
    );
    // A miss always says by how much.
    for t in ts.iter().filter(|t| t.status == Status::NotMet) {
        assert!(t.why.is_some(), "{} has no why", t.title);
        assert!(!t.margin.is_empty());
    }
}

/// An mm log at ring capacity 64 with the given immediate and batched costs.
fn mm_log(imm: f64, bat: f64) -> Log {
    let c = |pte: u64, inv: u64, full: u64| json!({"pte_writes": pte, "invlpg": inv, "full_flushes": full});
    parse(&[
        env_line(64),
        result_line("mm", "map_unmap", "immediate", 64, 1, imm, c(2000, 1000, 0)),
        result_line("mm", "map_unmap", "batched", 64, 1, bat, c(2000, 0, 16)),
        result_line("mm", "map_unmap", "floor", 64, 1, bat * 0.9, c(2000, 0, 16)),
    ])
}

#[test]
fn speedup_target_met_and_missed() {
    let ts = targets::evaluate(&mm_log(1000.0, 50.0));
    let t = target(&ts, "1 vCPU");
    assert_eq!(t.status, Status::Met);
    assert!(t.margin.contains("20.0x ≥ 10.0x"), "{}", t.margin);

    let ts = targets::evaluate(&mm_log(1000.0, 400.0));
    let t = target(&ts, "1 vCPU");
    assert_eq!(t.status, Status::NotMet);
    // 2.5x of 10x: short by 75%, needs 4x more.
    assert!(t.margin.contains("short by 75%"), "{}", t.margin);
    assert!(t.margin.contains("needs 4.00x more"), "{}", t.margin);
    assert!(t.why.as_deref().unwrap().contains("privileged ops/op"));

    // Exactly at the target counts as met.
    let ts = targets::evaluate(&mm_log(1000.0, 100.0));
    assert_eq!(target(&ts, "1 vCPU").status, Status::Met);
}

#[test]
fn missing_figures_are_listed_not_hidden() {
    let ts = targets::evaluate(&mm_log(1000.0, 50.0));
    let t = target(&ts, "4 vCPUs");
    assert_eq!(t.status, Status::Missing);
    assert!(
        t.margin
            .contains("no figure for smp / unmap_shootdown / immediate / 4 vCPU"),
        "{}",
        t.margin
    );
    assert!(t.margin.contains("--smp 4"), "{}", t.margin);
    let t = target(&ts, "privileged operations");
    assert_eq!(t.status, Status::Missing);
    assert!(t.margin.contains("batch 256"), "{}", t.margin);
    let t = target(&ts, "Workloads");
    assert_eq!(t.status, Status::Missing);
}

#[test]
fn workload_checksum_mismatch_is_a_miss_even_when_faster() {
    let imm = result_line("workload", "ring", "immediate", 1, 1, 1000.0, json!({}));
    let bat = result_line("workload", "ring", "batched", 256, 1, 100.0, json!({}))
        .replace("0xabc", "0xabd");
    let ts = targets::evaluate(&parse(&[env_line(256), imm.clone(), bat]));
    let t = target(&ts, "workload ring");
    assert_eq!(t.status, Status::NotMet);
    assert!(
        t.margin
            .contains("checksums DIFFER: immediate 0xabc, batched 0xabd"),
        "{}",
        t.margin
    );
    assert!(t.why.as_deref().unwrap().contains("correctness failure"));

    // Same checksum (case aside) and faster: met.
    let bat = result_line("workload", "ring", "batched", 256, 1, 100.0, json!({}))
        .replace("0xabc", "0xABC");
    let ts = targets::evaluate(&parse(&[env_line(256), imm, bat]));
    assert_eq!(target(&ts, "workload ring").status, Status::Met);
}

#[test]
fn privileged_fraction_met_when_batched_issues_a_64th() {
    let imm = result_line(
        "mm",
        "map_unmap",
        "immediate",
        256,
        1,
        900.0,
        json!({"invlpg": 1000}),
    );
    let bat = result_line(
        "mm",
        "map_unmap",
        "batched",
        256,
        1,
        90.0,
        json!({"full_flushes": 10}),
    );
    let ts = targets::evaluate(&parse(&[env_line(256), imm, bat]));
    let t = target(&ts, "privileged operations");
    assert_eq!(t.status, Status::Met, "{t:?}");
    assert!(t.margin.contains("1/100 ≤ 1/64"), "{}", t.margin);
}

// --- projection ---

struct Fixed(Vec<(Op, Cycles)>);

impl Costs for Fixed {
    fn cost(&self, op: Op) -> Cycles {
        self.0
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(Cycles::Unknown, |(_, c)| *c)
    }
}

#[test]
fn projection_is_counts_times_costs() {
    let counts = OpCounts {
        pte_writes: 2.0,
        invlpg: 1.0,
        cr3_reloads: 0.25,
        cr_writes: 0.0,
        ipis: 0.5,
    };
    let costs = Fixed(vec![
        (Op::PteWrite, Cycles::Exactly(30)),
        (Op::Invlpg, Cycles::Exactly(400)),
        (Op::Cr3Reload, Cycles::Exactly(4000)),
        (Op::Ipi, Cycles::Exactly(2000)),
        // CR writes were not counted, so an unknown cost for them is harmless.
    ]);
    assert_eq!(
        projection::project_counts(&counts, &costs),
        Projected::Exactly(60.0 + 400.0 + 1000.0 + 1000.0)
    );

    // A lower bound anywhere makes the sum a lower bound.
    let costs = Fixed(vec![
        (Op::PteWrite, Cycles::AtLeast(1000)),
        (Op::Invlpg, Cycles::NoExit),
        (Op::Cr3Reload, Cycles::NoExit),
        (Op::Ipi, Cycles::Exactly(3000)),
    ]);
    assert_eq!(
        projection::project_counts(&counts, &costs),
        Projected::AtLeast(2000.0 + 1500.0)
    );

    // A counted operation with no known cost makes the projection unknown.
    let costs = Fixed(vec![(Op::PteWrite, Cycles::Exactly(1))]);
    assert_eq!(
        projection::project_counts(&counts, &costs),
        Projected::Unknown
    );
    assert_eq!(
        projection::project_counts(&OpCounts::default(), &costs),
        Projected::Exactly(0.0)
    );
}

#[test]
fn sample_projection_uses_this_runs_exit_costs() {
    let log = sample();
    let m = MeasuredCosts::from_log(&log);
    assert_eq!(m.cost(Op::PteWrite), Cycles::Exactly(31));
    assert_eq!(m.cost(Op::Invlpg), Cycles::Exactly(390));
    assert_eq!(m.cost(Op::Cr3Reload), Cycles::Exactly(5512));
    assert_eq!(m.cost(Op::Ipi), Cycles::Exactly(41210));

    let p = projection::project(&log);
    assert_eq!(p.rows.len(), 27);
    let col = |c: Column| p.columns.iter().position(|x| *x == c).unwrap();
    // immediate map+unmap: 2 stores + 1 invlpg per op.
    let imm = p.row("map_unmap", "immediate", 256).unwrap();
    assert_eq!(imm.counts.pte_writes, 2.0);
    assert_eq!(imm.counts.invlpg, 1.0);
    assert_eq!(
        imm.projected[col(Column::ThisRun)],
        Projected::Exactly(2.0 * 31.0 + 390.0)
    );
    assert_eq!(
        imm.projected[col(Column::Reference(Platform::KvmEpt))],
        Projected::Exactly(0.0)
    );
    assert_eq!(
        imm.projected[col(Column::Reference(Platform::KvmShadow))],
        Projected::AtLeast(3.0 * 1018.0)
    );
    assert_eq!(
        imm.projected[col(Column::Reference(Platform::NestedShadow))],
        Projected::AtLeast(3.0 * 13142.0)
    );
    // batched at 256: 2 stores + one CR3 reload per 256 ops.
    let bat = p.row("map_unmap", "batched", 256).unwrap();
    let want = 2.0 * 31.0 + 5512.0 / 256.0;
    match bat.projected[col(Column::ThisRun)] {
        Projected::Exactly(v) => assert!((v - want).abs() < 1e-9, "{v} vs {want}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn projection_without_an_exits_suite_is_unknown_for_this_run() {
    let log = mm_log(1000.0, 50.0);
    let p = projection::project(&log);
    let row = p.row("map_unmap", "immediate", 64).unwrap();
    assert_eq!(row.projected[0], Projected::Unknown);
    assert!(matches!(row.projected[2], Projected::AtLeast(_)));
}

#[test]
fn reference_table_has_one_sourced_row_per_platform_and_operation() {
    for platform in Platform::ALL {
        for op in Op::ALL {
            let rows: Vec<_> = REFERENCE_COSTS
                .iter()
                .filter(|r| r.platform == platform && r.op == op)
                .collect();
            assert_eq!(rows.len(), 1, "{platform:?} {op:?}");
            let r = rows[0];
            assert!(r.source.len() > 40, "{platform:?} {op:?}: source too thin");
            assert!(!r.measures.is_empty());
            assert_ne!(
                reference::cost(platform, op).source,
                "no published figure found"
            );
            match r.cycles {
                Cycles::Exactly(c) | Cycles::AtLeast(c) => assert!(c > 0),
                Cycles::NoExit | Cycles::Unknown => {}
            }
        }
    }
    // EPT: the MMU operations do not exit, IPIs do.
    assert_eq!(
        reference::cost(Platform::KvmEpt, Op::PteWrite).cycles,
        Cycles::NoExit
    );
    assert_eq!(
        reference::cost(Platform::KvmEpt, Op::Invlpg).cycles,
        Cycles::NoExit
    );
    assert!(matches!(
        reference::cost(Platform::KvmEpt, Op::Ipi).cycles,
        Cycles::Exactly(_)
    ));
    // Shadow paging: they all trap.
    for op in [Op::PteWrite, Op::Invlpg, Op::Cr3Reload] {
        assert!(matches!(
            reference::cost(Platform::KvmShadow, op).cycles,
            Cycles::AtLeast(_)
        ));
    }
}

// --- output files ---

#[test]
fn run_writes_results_report_and_valid_svgs() {
    let out = temp_dir("run");
    let log_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.serial");
    let opts = Options {
        log: log_path,
        out: out.clone(),
        accel: Some("tcg".into()),
        machine: Some("microvm".into()),
        strict: false,
        check: false,
    };
    let o = hbreport::run(&opts).expect("report made");
    assert_eq!(o.warnings.len(), 1);
    assert!(o.warnings[0].starts_with(&format!("line {GARBLED_LINE}:")));

    let names: Vec<String> = o
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "mm_map_unmap.svg",
            "mm_map_touch_unmap.svg",
            "mm_protect.svg",
            "smp_shootdown.svg",
            "workloads.svg"
        ]
    );
    for p in &o.plots {
        let svg = std::fs::read_to_string(p).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{}", p.display());
        assert!(svg.trim_end().ends_with("</svg>"), "{}", p.display());
        assert!(svg.contains("<text"), "{}: no text drawn", p.display());
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }
    let mm = std::fs::read_to_string(out.join("mm_map_unmap.svg")).unwrap();
    for label in ["immediate", "batched", "floor", "batch size (log2 scale)"] {
        assert!(mm.contains(label), "mm plot lacks {label}");
    }
    let wl = std::fs::read_to_string(out.join("workloads.svg")).unwrap();
    assert!(wl.contains("checksums match"));

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&o.results_json).unwrap()).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["host"]["accel"], "tcg");
    assert_eq!(json["host"]["machine"], "microvm");
    assert_eq!(json["env"]["ring_capacity"], 256);
    assert_eq!(json["exit_status"], 0);
    let hb = SAMPLE.lines().filter(|l| l.starts_with("HB ")).count();
    assert_eq!(json["records"].as_array().unwrap().len(), hb - 1);
    assert_eq!(json["records"][0]["event"], "boot");
    assert_eq!(json["skipped"][0]["line"], GARBLED_LINE);

    let md = std::fs::read_to_string(&o.report_md).unwrap();
    for part in [
        "## Environment",
        "## Log problems",
        "## Targets",
        "**6 met, 3 not met, 0 not evaluated**",
        "**NOT MET**",
        "## Projection (arithmetic on counts, not a measurement)",
        "**This is a projection.**",
        "## Reference costs and sources",
        "![workloads.svg](workloads.svg)",
        "| map_unmap | 5.41x (452 vs 83.5)",
    ] {
        assert!(md.contains(part), "report.md lacks {part:?}");
    }
    // Every reference source is printed once and cited by number.
    assert!(md.contains("Sources:\n\n1. "));
    assert!(md.contains("| [1] |"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn run_fails_cleanly_on_a_bad_log() {
    let out = temp_dir("bad");
    let missing = Options {
        log: PathBuf::from("/nonexistent/serial.log"),
        out: out.clone(),
        accel: None,
        machine: None,
        strict: false,
        check: false,
    };
    let e = hbreport::run(&missing).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read the log /nonexistent/serial.log"),
        "{e}"
    );

    let log_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.serial");
    let strict = Options {
        log: log_path,
        out: out.clone(),
        accel: None,
        machine: None,
        strict: true,
        check: false,
    };
    let e = hbreport::run(&strict).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("line {GARBLED_LINE}:")),
        "{e}"
    );
    assert!(
        !out.join("report.md").exists(),
        "no partial report in strict mode"
    );
}

// --- the CI check ---

#[test]
fn check_passes_a_complete_run_and_names_what_is_missing() {
    // The sample is complete but for its garbled line.
    let problems = hbreport::check::check(&sample());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&format!("line {GARBLED_LINE}:")));

    let clean: String = SAMPLE
        .lines()
        .enumerate()
        .filter(|(i, _)| i + 1 != GARBLED_LINE)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert_eq!(
        hbreport::check::check(&log::parse(&clean, true).unwrap()),
        Vec::<String>::new()
    );

    // Lose the smp suite, break one checksum, fail the guest.
    let broken: String = clean
        .lines()
        .filter(|l| !l.contains("\"suite\":\"smp\""))
        .map(|l| {
            let l = if l.contains("\"page_flip_ring\"") && l.contains("\"batched\"") {
                l.replace("0x00000000c0ffee42", "0x00000000c0ffee43")
            } else {
                l.to_string()
            };
            l.replace(
                "{\"event\":\"exit\",\"status\":0}",
                "{\"event\":\"exit\",\"status\":3}",
            ) + "\n"
        })
        .collect();
    let problems = hbreport::check::check(&log::parse(&broken, true).unwrap());
    assert_eq!(
        problems,
        [
            "suite smp printed no result line",
            "workload page_flip_ring: checksums differ (immediate 0x00000000c0ffee42, batched 0x00000000c0ffee43)",
            "the guest exited with status 3",
        ]
    );
}

// --- formatting ---

#[test]
fn numbers_read_as_people_write_them() {
    assert_eq!(report::thousands(45020.0), "45,020");
    assert_eq!(report::thousands(1234567.4), "1,234,567");
    assert_eq!(report::thousands(984.0), "984");
    assert_eq!(report::thousands(82.44), "82.4");
    assert_eq!(report::thousands(2.004), "2.00");
    assert_eq!(report::thousands(0.0039), "0.004");
    assert_eq!(report::ratio(11.94), "11.9x");
    assert_eq!(report::ratio(1.669), "1.67x");
    assert_eq!(report::ratio(256.0), "256x");
    assert_eq!(report::ratio(f64::INFINITY), "∞");
}

#[test]
fn dates_are_utc_rfc3339() {
    assert_eq!(results::utc_from_unix(0), "1970-01-01T00:00:00Z");
    assert_eq!(results::utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(
        results::utc_from_unix(1_700_000_000),
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(results::utc_now().len(), "2023-11-14T22:13:20Z".len());
}

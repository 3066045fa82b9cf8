//! What a results directory holds and what `compare` says about two of
//! them: report.md for a newcomer (summary first, no machine paths, every
//! column defined), plots that parse as SVG and hold their series, a
//! results.json that validates against the documented schema, the CSV and
//! the dashboard JSON, and compare's verdicts and exit statuses on recorded
//! runs.

mod common;

use common::*;
use hbreport::compare::{self, Verdict};
use hbreport::report::{self, column_key, table_headers, COLUMNS};
use hbreport::results::{self, FIELDS};
use hbreport::{Options, Outputs};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run_on(name: &str, logs: &[&str], host: Option<PathBuf>) -> (PathBuf, Outputs) {
    let out = temp_dir(name);
    let opts = Options {
        logs: logs.iter().map(|l| testdata(l)).collect(),
        out: out.clone(),
        host,
        strict: false,
        check: false,
    };
    let o = hbreport::run(&opts).expect("report made");
    (out, o)
}

fn quick_logs() -> [&'static str; 3] {
    [
        "quick-count.serial",
        "quick-timed-1.serial",
        "quick-timed-2.serial",
    ]
}

/// Every `<text>` of an SVG, after parsing it as XML.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.tag_name().name() == "text")
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

fn count_tag(svg: &str, tag: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.tag_name().name() == tag)
        .count()
}

#[test]
fn a_results_directory_holds_every_file_and_valid_plots() {
    let (out, o) = run_on("dir", &quick_logs(), None);
    for f in ["report.md", "results.json", "results.csv", "benchmark.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let names: Vec<String> = o
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "mm_map_unmap.svg",
            "mm_map_unmap_range.svg",
            "mm_map_touch_unmap.svg",
            "mm_protect.svg",
            "mm_map_touch_unmap_2m.svg",
            "mm_map_unmap_2m.svg",
            "mm_protect_2m.svg",
            "mm_protect_range.svg",
            "speedup.svg",
            "privileged.svg",
            "smp_shootdown.svg",
            "scale.svg",
            "pagesize.svg",
            "workloads.svg",
            "projection.svg"
        ]
    );
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    for name in &names {
        let svg = read(name);
        let texts = svg_texts(&svg);
        // The subtitle names platform, machine, vCPUs and revision.
        assert!(
            texts
                .iter()
                .any(|t| t.contains("counting: TCG") && t.contains("vCPUs") && t.contains("rev ")),
            "{name}: no subtitle in {texts:?}"
        );
    }
    // mm plots: both panels, the three backends, the ceiling, the bands.
    let mm = read("mm_map_unmap.svg");
    let texts = svg_texts(&mm);
    for want in [
        "counted: guest instructions",
        "timed: TSC cycles",
        "immediate",
        "batched",
        "floor",
        "invlpg ceiling: 33 pages",
        "batch size (operations per flush, log2 scale)",
    ] {
        assert!(
            texts.iter().any(|t| t == want),
            "mm plot lacks {want:?}: {texts:?}"
        );
    }
    // Every tick is labelled: batch sizes 1..256, and y labels below 1,000.
    for b in ["1", "2", "4", "8", "16", "32", "64", "128", "256"] {
        assert!(
            texts.iter().filter(|t| *t == b).count() >= 2,
            "tick {b} unlabelled"
        );
    }
    assert!(
        texts.iter().any(|t| t == "500"),
        "no tick below 1,000: {texts:?}"
    );
    // No label is drawn twice on one axis (the old log axis printed 10,000 twice).
    assert!(
        texts.iter().filter(|t| *t == "10,000").count() <= 1,
        "{texts:?}"
    );
    // Spread bands are filled polygons, one per backend and panel.
    assert!(count_tag(&mm, "polygon") >= 6, "no bands");
    let sp = svg_texts(&read("speedup.svg"));
    for want in [
        "map_unmap",
        "map_unmap_range",
        "protect",
        "break-even",
        "immediate ÷ batched",
    ] {
        assert!(sp.iter().any(|t| t == want), "speedup plot lacks {want:?}");
    }
    let pr = svg_texts(&read("privileged.svg"));
    for want in [
        "immediate: all privileged",
        "batched: invalidations",
        "floor: all privileged",
    ] {
        assert!(
            pr.iter().any(|t| t == want),
            "privileged plot lacks {want:?}"
        );
    }
    let wl = svg_texts(&read("workloads.svg"));
    assert!(wl.iter().any(|t| t.contains("checksums match")), "{wl:?}");
    assert!(wl
        .iter()
        .any(|t| t == "timed (cycles, median across boots)"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_report_opens_with_a_summary_defines_its_columns_and_holds_no_path() {
    let (out, o) = run_on("report", &quick_logs(), None);
    let md = std::fs::read_to_string(&o.report_md).unwrap();
    // Summary first: the first section after the title and banners.
    let first = md.lines().find(|l| l.starts_with("## ")).unwrap();
    assert_eq!(first, "## Summary");
    for part in [
        "**What ran:**",
        "1 counting boot",
        "2 timed boots",
        "**Where:**",
        "**What it found:**",
        "> **Emulated platform.**",
        "> **Quick mode:**",
        "## How to read this report",
        "**floor**",
        "`map_unmap_range`: the same, but **one `map` and one `unmap` call per batch**",
        "## Targets",
        "### exits: one privileged instruction (emulation cost under TCG, not VM exits)",
        "## The cost model, checked on this run",
        "## Projection onto other platforms (arithmetic, not a measurement)",
        "## Reference costs and sources",
        "## Boots",
    ] {
        assert!(md.contains(part), "report.md lacks {part:?}");
    }
    // Instructions and cycles side by side for every mm figure.
    assert!(md.contains(
        "| batch | immediate instructions/op | batched instructions/op | floor instructions/op | \
         immediate cycles/op | batched cycles/op | floor cycles/op |"
    ));
    // Between 3 and 5 headline figures.
    let found = md.split("**What it found:**").nth(1).unwrap();
    let heads = found
        .lines()
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .count();
    assert!((3..=5).contains(&heads), "{heads} headlines");
    // No issue numbers, no machine paths.
    assert!(!names_an_issue(&md), "report.md names an issue");
    assert!(names_an_issue("see Issue #12") && !names_an_issue("batched issues 2 per op"));
    let tmp = std::env::temp_dir().display().to_string();
    for token in md.split(|c: char| c.is_whitespace() || "()`[]|,;".contains(c)) {
        assert!(
            !(token.starts_with('/')
                && token
                    .chars()
                    .nth(1)
                    .is_some_and(|c| c.is_ascii_alphabetic())),
            "absolute path {token:?} in report.md"
        );
        assert!(!token.contains(&tmp));
    }
    // Every table column is defined, and the definitions are printed.
    let headers = table_headers(&md);
    assert!(headers.len() > 40);
    for h in headers {
        if h.starts_with('`') {
            continue; // the projection's columns: figures, named as in the figure list
        }
        let key = column_key(&h).unwrap_or_else(|| panic!("column {h:?} is not defined"));
        assert!(
            md.contains(&format!("- **{key}**: ")),
            "{key} has no definition printed"
        );
    }
    assert!(COLUMNS.iter().all(|(k, d)| !k.is_empty() && d.len() > 10));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_report_from_logs_alone_says_the_host_was_not_recorded_and_uses_the_host_file_when_given() {
    let (out, o) = run_on("nohost", &["sample.serial"], None);
    let md = std::fs::read_to_string(&o.report_md).unwrap();
    assert!(md.contains("Host: not recorded (this report was made from saved serial logs)"));
    assert!(md.contains("machine not recorded"));
    let _ = std::fs::remove_dir_all(&out);

    let host = temp_dir("host.json");
    std::fs::write(
        &host,
        json!({"schema":1,"date":"2026-05-01T10:00:00Z","machine":"q35","vmm":"qemu",
               "vmm_version":"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)","accel":"tcg",
               "tcg_thread":"multi","smp":4,"cpu_model":"Test CPU","host_cpus":2})
        .to_string(),
    )
    .unwrap();
    let (out, o) = run_on("withhost", &["sample.serial"], Some(host.clone()));
    let md = std::fs::read_to_string(&o.report_md).unwrap();
    for part in [
        "QEMU 7.2.22 · timed: TCG, multi-threaded · q35 · 4 vCPUs",
        "Run started 2026-05-01T10:00:00Z",
        "Host: Test CPU (2 CPUs)",
    ] {
        assert!(md.contains(part), "report.md lacks {part:?}");
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&o.results_json).unwrap()).unwrap();
    assert_eq!(json["host"]["machine"], "q35");
    assert_eq!(json["host"]["recorded"], true);
    assert_eq!(json["boots"][0]["mode"], "TCG, multi-threaded");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&host);
}

#[test]
fn results_json_validates_against_the_documented_schema() {
    let (out, o) = run_on("schema", &quick_logs(), None);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&o.results_json).unwrap()).unwrap();
    assert_eq!(results::validate(&doc), Vec::<String>::new());
    assert_eq!(doc["schema"], 2);
    assert_eq!(doc["run"]["counting_boots"], 1);
    assert_eq!(doc["run"]["timed_boots"], 2);
    assert_eq!(doc["boots"][0]["log"], "quick-count.serial");
    assert_eq!(doc["boots"][0]["kind"], "counting");
    let f = doc["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "mm/map_unmap/batched/batch=256/vcpus=1" && f["unit"] == "cycles")
        .unwrap();
    assert_eq!(f["values"].as_array().unwrap().len(), 2);
    assert_eq!(f["kind"], "timed");

    // The validator is not a rubber stamp.
    let mut bad = doc.clone();
    bad["figures"][0].as_object_mut().unwrap().remove("median");
    bad["host"]["surprise"] = json!(1);
    bad["run"]["quick"] = json!("yes");
    let problems = results::validate(&bad);
    assert!(
        problems.contains(&"figures[].median is missing (type number)".to_string()),
        "{problems:?}"
    );
    assert!(
        problems.contains(&"host.surprise is not a documented field".to_string()),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("run.quick should be bool?")),
        "{problems:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_schema_document_lists_every_field() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/results-schema.md"),
    )
    .expect("docs/results-schema.md exists");
    for (path, ty, _) in FIELDS {
        let row = format!("| `{path}` | {} |", ty.replace('?', "? "));
        let row2 = format!("| `{path}` | {ty} |");
        assert!(
            doc.contains(&row) || doc.contains(&row2),
            "docs/results-schema.md lacks the row for {path} ({ty})"
        );
    }
    assert!(doc.contains(&format!("schema {}", results::RESULTS_SCHEMA)));
}

#[test]
fn csv_and_dashboard_json_hold_one_row_per_figure() {
    let s = quick_run();
    let csv = results::to_csv(&s);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], results::CSV_HEADER);
    assert_eq!(lines.len(), s.figures.len() + 1);
    let cols = lines[0].split(',').count();
    assert!(
        lines.iter().all(|l| l.split(',').count() == cols),
        "a row has the wrong width"
    );
    // A name with a comma or a quote is quoted, not split.
    let odd = summary_of(&[(
        "x.log",
        &text(&[
            env_line(1),
            result_line("mm", "a,\"b", "batched", 1, 1, 1.0, json!({})),
        ]),
    )]);
    let csv = results::to_csv(&odd);
    assert!(csv.contains("\"a,\"\"b\""), "{csv}");

    let bench: Value = serde_json::from_str(&results::to_benchmark_json(&s)).unwrap();
    let rows = bench.as_array().unwrap();
    assert_eq!(rows.len(), s.figures.len());
    for r in rows {
        assert!(
            r["name"].is_string() && r["unit"].is_string() && r["value"].is_number(),
            "{r}"
        );
    }
    assert!(rows.iter().any(|r| r["unit"] == "instructions/op"));
    assert!(rows
        .iter()
        .any(|r| r["unit"] == "cycles/op" && r["range"].is_string()));
}

// --- compare ---

/// results.json text of a summary.
fn results_of(logs: &[(&str, &str)]) -> String {
    let s = summary_of(logs);
    hbreport::build(&s, "2026-01-01T00:00:00Z")
        .unwrap()
        .results_json
}

fn side(label: &str, json: &str) -> compare::Side {
    compare::parse_side(label, json).unwrap()
}

#[test]
fn compare_of_identical_runs_reports_no_change() {
    let a = results_of(&[
        ("c.log", QUICK_COUNT),
        ("t1.log", QUICK_TIMED_1),
        ("t2.log", QUICK_TIMED_2),
    ]);
    let c = compare::compare(side("OLD", &a), side("NEW", &a), compare::DEFAULT_THRESHOLD);
    assert!(c.failures(true).is_empty());
    assert!(c.rows.iter().all(|r| r.verdict == Verdict::Same));
    assert!(c.only_old.is_empty() && c.only_new.is_empty());
    let text = c.render(false);
    assert!(
        text.contains("No change: every figure is the same."),
        "{text}"
    );
}

#[test]
fn compare_names_a_counted_figure_five_percent_worse() {
    let needle = "\"name\":\"map_unmap\",\"backend\":\"batched\",\"batch\":256";
    let worse = scale_figure(QUICK_COUNT, needle, 1.05);
    let old = results_of(&[("c.log", QUICK_COUNT)]);
    let new = results_of(&[("c.log", &worse)]);
    let c = compare::compare(
        side("OLD", &old),
        side("NEW", &new),
        compare::DEFAULT_THRESHOLD,
    );
    let f = c.failures(false);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].old.id, "mm/map_unmap/batched/batch=256/vcpus=1");
    assert!((f[0].ratio - 1.05).abs() < 1e-9);
    let text = c.render(false);
    assert!(text.contains("FAILED: 1 figure(s) regressed:"), "{text}");
    assert!(
        text.contains("mm/map_unmap/batched/batch=256/vcpus=1 (instructions)"),
        "{text}"
    );
    // 1% is within the default 2%, and fails at --threshold 0.5.
    let slight = results_of(&[("c.log", &scale_figure(QUICK_COUNT, needle, 1.01))]);
    let c = compare::compare(side("OLD", &old), side("NEW", &slight), 0.02);
    assert!(c.failures(false).is_empty());
    let c = compare::compare(side("OLD", &old), side("NEW", &slight), 0.005);
    assert_eq!(c.failures(false).len(), 1);
    // 5% better is an improvement, not a failure.
    let better = results_of(&[("c.log", &scale_figure(QUICK_COUNT, needle, 0.95))]);
    let c = compare::compare(side("OLD", &old), side("NEW", &better), 0.02);
    assert!(c.failures(false).is_empty());
    assert_eq!(
        c.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Improved)
            .count(),
        1
    );
}

#[test]
fn compare_lists_figures_in_only_one_run() {
    let dropped: String = QUICK_COUNT
        .lines()
        .filter(|l| !(l.contains("\"name\":\"protect\"") && l.contains("\"batch\":256,")))
        .map(|l| format!("{l}\n"))
        .collect();
    let old = results_of(&[("c.log", QUICK_COUNT)]);
    let new = results_of(&[("c.log", &dropped)]);
    let c = compare::compare(side("OLD", &old), side("NEW", &new), 0.02);
    let gone: Vec<&str> = c.only_old.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(
        gone,
        [
            "mm/protect/immediate/batch=256/vcpus=1",
            "mm/protect/batched/batch=256/vcpus=1",
            "mm/protect/floor/batch=256/vcpus=1"
        ]
    );
    assert!(c.render(false).contains("Only in OLD (3):"));
    let c = compare::compare(side("OLD", &new), side("NEW", &old), 0.02);
    assert_eq!(c.only_new.len(), 3);
}

#[test]
fn compare_judges_timed_figures_against_their_spread() {
    let boot = |v: f64| {
        text(&[
            env_line(1),
            result_line("mm", "map_unmap", "batched", 1, 1, v, json!({})),
        ])
    };
    let run = |vs: &[f64]| {
        let logs: Vec<(String, String)> = vs
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("t{i}.log"), boot(*v)))
            .collect();
        let refs: Vec<(&str, &str)> = logs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        results_of(&refs)
    };
    let verdict = |old: &[f64], new: &[f64]| {
        let c = compare::compare(side("OLD", &run(old)), side("NEW", &run(new)), 0.02);
        (
            c.rows[0].verdict,
            c.failures(false).len(),
            c.failures(true).len(),
        )
    };
    // 30% slower but inside OLD's range: noise, not a regression.
    assert_eq!(
        verdict(&[100.0, 140.0, 120.0], &[130.0, 135.0, 125.0]),
        (Verdict::Within, 0, 0)
    );
    // Wholly above OLD's range: slower; it fails only with --fail-on-timed.
    assert_eq!(
        verdict(&[100.0, 105.0, 102.0], &[120.0, 125.0, 122.0]),
        (Verdict::Regressed, 0, 1)
    );
    assert_eq!(
        verdict(&[120.0, 125.0, 122.0], &[100.0, 105.0, 102.0]),
        (Verdict::Improved, 0, 0)
    );
    // One boot: nothing to judge against.
    assert_eq!(verdict(&[100.0], &[200.0]), (Verdict::NotJudged, 0, 0));
}

#[test]
fn compare_refuses_what_it_cannot_read() {
    assert!(compare::parse_side("x", "not json")
        .unwrap_err()
        .contains("not valid JSON"));
    assert!(compare::parse_side("x", "{\"schema\":1,\"records\":[]}")
        .unwrap_err()
        .contains("schema 1"));
    assert!(compare::parse_side("x", "{\"schema\":2}")
        .unwrap_err()
        .contains("no \"figures\""));
    let e = compare::load(Path::new("/nonexistent/results")).unwrap_err();
    assert!(e.contains("cannot read /nonexistent/results"), "{e}");
}

#[test]
fn the_compare_command_exits_by_what_it_found() {
    let bin = env!("CARGO_BIN_EXE_hbreport");
    let dir = temp_dir("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, logs: &[(&str, &str)]| {
        let p = dir.join(name);
        std::fs::write(&p, results_of(logs)).unwrap();
        p
    };
    let needle = "\"name\":\"map_unmap\",\"backend\":\"batched\",\"batch\":256";
    let old = write("old.json", &[("c.log", QUICK_COUNT)]);
    let same = write("same.json", &[("c.log", QUICK_COUNT)]);
    let worse = write(
        "worse.json",
        &[("c.log", &scale_figure(QUICK_COUNT, needle, 1.05))],
    );
    let full = write("full.json", &[("s.log", SAMPLE)]);
    let bench = dir.join("bench.json");
    let run = |args: &[&Path]| {
        let o = Command::new(bin)
            .arg("compare")
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = run(&[&old, &same, Path::new("--bench-json"), &bench]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("No change"), "{out}");
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(&bench).unwrap()).unwrap();
    assert!(rows.as_array().is_some_and(|r| !r.is_empty()));
    let (code, out) = run(&[&old, &worse]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("mm/map_unmap/batched/batch=256/vcpus=1"),
        "{out}"
    );
    // A quick run against a full one is not a comparison.
    let (code, out) = run(&[&old, &full]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("quick run and NEW a full one"), "{out}");
    let (code, _) = run(&[&old]);
    assert_eq!(code, Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

// --- what used to hang or crash ---

#[test]
fn huge_figures_are_drawn_without_hanging() {
    // Issue 13 #2: a median of about 9e307 made the log axis bound
    // infinite, and plotters looped forever on it.
    let lines = [
        env_line(256),
        result_line("mm", "map_unmap", "immediate", 1, 1, 9e307, json!({})),
        result_line("mm", "map_unmap", "batched", 1, 1, 1.7e308, json!({})),
        result_line("mm", "map_unmap", "floor", 1, 1, 1e-300, json!({})),
        result_line("mm", "map_unmap", "batched", 4294967296, 1, 0.0, json!({})),
        result_line(
            "smp",
            "unmap_shootdown",
            "batched",
            1,
            4096,
            1e300,
            json!({}),
        ),
        result_line("workload", "w", "immediate", 1, 1, 1e308, json!({})),
        result_line("workload", "w", "batched", 1, 1, 1e-308, json!({})),
    ];
    let t = text(&lines);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let s = summary_of(&[("x.log", &t)]);
        let built = hbreport::build(&s, "2026-01-01T00:00:00Z").map(|b| b.plots.len());
        let _ = tx.send(built.map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the report was made within 60 s (it used to hang)");
    assert!(r.expect("report made") >= 3);
}

#[test]
fn numbers_read_as_people_write_them() {
    assert_eq!(report::thousands(45020.0), "45,020");
    assert_eq!(report::thousands(1234567.4), "1,234,567");
    assert_eq!(report::thousands(984.0), "984");
    assert_eq!(report::thousands(82.44), "82.4");
    assert_eq!(report::thousands(2.004), "2.00");
    assert_eq!(report::thousands(0.0039), "0.004");
    assert_eq!(report::thousands(1.7e308), "1.700e308");
    assert_eq!(report::exact(3129.5), "3,129.5");
    assert_eq!(report::exact(320.0), "320");
    assert_eq!(report::exact(2.26), "2.26");
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

// --- the host record ---

#[test]
fn host_json_records_this_machine_and_reads_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let h = hbreport::host::probe(&hbreport::host::Settings {
        vmm: Some("qemu".into()),
        machine: Some("q35".into()),
        smp: Some(4),
        accel: Some("tcg".into()),
        tcg_thread: Some("single".into()),
        repo: Some(repo.display().to_string()),
        ..Default::default()
    });
    assert_eq!(h.machine.as_deref(), Some("q35"));
    assert_eq!(h.smp, Some(4));
    assert!(
        h.kernel.as_deref().is_some_and(|k| k.contains("Linux")),
        "{:?}",
        h.kernel
    );
    // The repository is a git checkout: its revision is 40 hex digits.
    let rev = h.git_rev.clone().expect("a git revision");
    assert!(
        rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rev}"
    );
    assert!(h.git_dirty.is_some());
    assert!(h.date.as_deref().is_some_and(|d| d.ends_with('Z')));
    let back = hbreport::host::Host::from_json(&h.to_json()).unwrap();
    assert_eq!(back, h);
    assert!(hbreport::host::Host::from_json("{\"schema\":2}")
        .unwrap_err()
        .contains("schema 2"));
    assert!(hbreport::host::Host::from_json("[]").is_err());
}

#[test]
fn kvm_module_parameters_are_read_where_present() {
    let sys = temp_dir("sys-module");
    let p = sys.join("kvm_intel/parameters");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("ept"), "N\n").unwrap();
    std::fs::write(p.join("nested"), "Y\n").unwrap();
    std::fs::create_dir_all(sys.join("kvm_amd")).unwrap(); // no parameters dir
    let k = hbreport::host::kvm_params(&sys);
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k["kvm_intel"]["ept"], "N");
    assert_eq!(k["kvm_intel"]["nested"], "Y");
    assert!(!k["kvm_intel"].contains_key("enable_apicv"));
    let h = hbreport::host::Host {
        kvm: k,
        ..Default::default()
    };
    assert_eq!(h.kvm_line().as_deref(), Some("kvm_intel: ept=N nested=Y"));
    let _ = std::fs::remove_dir_all(&sys);
}

// --- what the report flags ---

#[test]
fn the_report_flags_noisy_timed_figures_and_counted_figures_that_differ() {
    let timed = |v: f64| {
        text(&[
            env_line(1),
            result_line("mm", "map_unmap", "batched", 1, 1, v, json!({})),
            exit_line(0),
        ])
    };
    let counted = |v: f64| {
        text(&[
            format!(
                "HB {}",
                json!({"event":"env","schema":2,"unit":"instructions","ring_capacity":1})
            ),
            result_unit(
                "mm",
                "map_unmap",
                "batched",
                1,
                1,
                v,
                json!({}),
                "instructions",
            ),
            exit_line(0),
        ])
    };
    let s = summary_of(&[
        ("c1.log", &counted(1000.0)),
        ("c2.log", &counted(1001.0)),
        ("t1.log", &timed(100.0)),
        ("t2.log", &timed(150.0)),
    ]);
    let b = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let md = &b.report_md;
    assert!(md.contains("1 of 1 timed figures are noisy"), "{md}");
    assert!(md.contains("(⚠ 40%)"), "the noisy cell is not marked");
    assert!(md.contains("counted figure(s) differ between counting boots"));
    assert!(md.contains("⚠ differs"));
    // --check fails on the difference and names the figure.
    assert!(
        b.check_failures
            .iter()
            .any(|p| p
                .contains("mm/map_unmap/batched/batch=1/vcpus=1 differs between counting boots"))
    );
    let doc: Value = serde_json::from_str(&b.results_json).unwrap();
    let noisy: Vec<&Value> = doc["figures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["noisy"] == true)
        .collect();
    assert_eq!(noisy.len(), 1);
    assert_eq!(noisy[0]["unit"], "cycles");
}

#[test]
fn numbers_round_before_they_pick_a_format() {
    use hbreport::report::thousands;
    assert_eq!(thousands(999.6), "1,000");
    assert_eq!(thousands(1234.4), "1,234");
    assert_eq!(thousands(99.96), "100");
    assert_eq!(thousands(99.94), "99.9");
    assert_eq!(thousands(9.996), "10.0");
    assert_eq!(thousands(0.9996), "1.00");
    assert_eq!(thousands(0.25), "0.250");
    assert_eq!(thousands(0.0), "0.00");
    assert_eq!(thousands(-1500.0), "-1,500");
}

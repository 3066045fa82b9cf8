//! Reading logs and grouping their figures across boots: parsing and its
//! errors (including what used to overflow or panic), the guest's own error
//! messages, counted figures identical across counting boots, timed figures
//! as medians with their spread, and the CI check. Nothing here asserts a
//! time: only parsing, arithmetic and verdicts.

mod common;

use common::*;
use hbreport::check;
use hbreport::log::{self, Error, Kind, Query};
use hbreport::summary::{median, FigKind};
use serde_json::json;

#[test]
fn sample_parses_every_record_and_skips_the_garbled_line_by_number() {
    let log = sample();
    assert_eq!(log.lines, SAMPLE.lines().count());
    let hb_lines = SAMPLE.lines().filter(|l| l.starts_with("HB ")).count();
    assert_eq!(log.records.len() + log.skipped.len(), hb_lines);
    assert_eq!(log.skipped.len(), 1);
    let k = &log.skipped[0];
    assert_eq!(k.line, GARBLED_LINE);
    assert!(k.reason.contains("not valid JSON"), "{}", k.reason);
    assert!(k.to_string().starts_with(&format!("line {GARBLED_LINE}:")));
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
        ("scale", 6),
        ("workload", 6),
    ] {
        assert_eq!(log.suite(suite).count(), n, "suite {suite}");
    }
    assert!(SAMPLE.contains("\r\n"));
    let cpuid = log
        .find(&Query {
            suite: Some("exits"),
            name: Some("cpuid"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(cpuid.per_op.median, 182.0);
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
            good.replace("\"min\":9.0", "\"min\":-9.0"),
            "per_op.min is -9",
        ),
        (
            "HB {\"event\":\"exit\",\"status\":\"ok\"}".into(),
            "no integer \"status\"",
        ),
        // An array is not a record of counters, though serde would read it
        // as one field after another.
        (
            good.replace("\"counters\":{}", "\"counters\":[1,2,3]"),
            "\"counters\" is [1,2,3], not an object",
        ),
        (
            good.replace("\"per_op\":{", "\"per_op\":[10.0,11.0],\"x\":{"),
            "\"per_op\" is [10.0,11.0], not an object",
        ),
        (
            format!("HB {}", json!({"event":"env","schema":3})),
            "env record: schema 3",
        ),
        // Issue 13 #3: these overflowed (a panic in the debug build bench.sh
        // uses, a silent wrap in release) and are now refused by name.
        (
            good.replace("\"ops\":100", "\"ops\":9223372036854775808")
                .replace("\"reps\":10", "\"reps\":2"),
            "ops × reps overflows",
        ),
        (
            good.replace("\"batch\":1,", "\"batch\":18446744073709551615,"),
            "at most 4294967296",
        ),
        (
            good.replace("\"vcpus\":1,", "\"vcpus\":18446744073709551615,"),
            "at most 4294967296 and 4096",
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
        let log = log::parse(&text, false).unwrap();
        assert_eq!(log.figures().count(), 1);
        assert_eq!(log.skipped.len(), 1);
        assert_eq!(log.skipped[0].line, 3);
    }
}

#[test]
fn counters_at_u64_max_are_summed_without_overflow() {
    // Issue 13 #3: the privileged sum of five u64::MAX counters overflowed.
    let m = u64::MAX;
    let c = json!({"pte_writes": m, "invlpg": m, "full_flushes": m, "cr_writes": m, "ipis": m,
                   "flushes": m, "shootdowns": m});
    let fig = result_line("mm", "map_unmap", "batched", 1, 1, 10.0, c);
    let log = parse(&[fig]);
    let f = log.figures().next().unwrap();
    let p = f.privileged_per_op().unwrap();
    assert!(p.is_finite() && p > 9e16, "{p}");
    assert!(f.invalidations_per_op().unwrap().is_finite());
    // And the whole report over it is made.
    let s = summary_of(&[(
        "x.log",
        &text(&[
            env_line(1),
            result_line(
                "mm",
                "map_unmap",
                "immediate",
                1,
                1,
                20.0,
                json!({"pte_writes": m, "invlpg": m}),
            ),
            result_line(
                "mm",
                "map_unmap",
                "batched",
                1,
                1,
                10.0,
                json!({"pte_writes": m}),
            ),
        ]),
    )]);
    hbreport::build(&s, "2026-01-01T00:00:00Z").expect("report made");
}

#[test]
fn a_log_without_results_is_an_error_that_quotes_the_guest() {
    let text = "SeaBIOS\nHB {\"event\":\"boot\",\"cpus_listed\":1}\nno HB here: HB {\"event\":\"result\"}\n";
    let err = log::parse(text, false).unwrap_err();
    assert_eq!(
        err,
        Error::NoResults {
            hb_lines: 1,
            guest_errors: vec![],
            first_skipped: None,
        }
    );
    assert!(err.to_string().contains("run=bench"));
    // When the only result line was refused, the error says why.
    let bad = result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({}))
        .replace("\"ops\":100", "\"ops\":9223372036854775808")
        .replace("\"reps\":10", "\"reps\":2");
    let msg = log::parse(&bad, false).unwrap_err().to_string();
    assert!(msg.contains("line 1: skipped malformed HB record: result record: ops=9223372036854775808 reps=2: ops × reps overflows"), "{msg}");

    // Issue 12: `-- suite=nosuch` used to report only "no HB result record";
    // the guest's own sentence says what is wrong.
    let err = log::parse(NOSUCH, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("the guest said: [cpu0] ERROR no benchmark suite is named \"nosuch\""),
        "{msg}"
    );
}

#[test]
fn guest_error_lines_are_kept_and_prose_is_not() {
    let lines = [
        "[cpu0] INFO  booting".to_string(),
        "[cpu1] ERROR the mailbox timed out".to_string(),
        "!!! cpu0 panicked: at src/mm.rs:1".to_string(),
        "[cpuX] ERROR not a cpu".to_string(),
        "ERROR not the guest's".to_string(),
        result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({})),
    ];
    let log = parse(&lines);
    assert_eq!(
        log.guest_errors,
        [
            "[cpu1] ERROR the mailbox timed out",
            "!!! cpu0 panicked: at src/mm.rs:1"
        ]
    );
}

#[test]
fn hb_must_start_the_line() {
    let fig = result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({}));
    let text = format!("{fig}\n  {fig}\nx{fig}\n");
    assert_eq!(log::parse(&text, true).unwrap().figures().count(), 1);
}

// --- across boots ---

#[test]
fn the_recorded_quick_run_has_both_kinds_of_figure() {
    let s = quick_run();
    assert_eq!(s.boots.len(), 3);
    assert_eq!(s.boots[0].kind(), FigKind::Counted);
    assert_eq!(s.boots[1].kind(), FigKind::Timed);
    assert_eq!(s.boots[0].mode(), "TCG, single-threaded, icount");
    let counted = s.of_kind(FigKind::Counted).count();
    let timed = s.of_kind(FigKind::Timed).count();
    assert_eq!(counted, QUICK_COUNT.matches("\"event\":\"result\"").count());
    assert_eq!(timed, QUICK_TIMED_1.matches("\"event\":\"result\"").count());
    // Every timed figure is over both timed boots; every counted one over
    // the one counting boot.
    assert!(s.of_kind(FigKind::Timed).all(|a| a.values.len() == 2));
    assert!(s
        .of_kind(FigKind::Counted)
        .all(|a| a.values.len() == 1 && a.identical));
    assert_eq!(s.quick(), Some(true));
    assert!(s.all_succeeded());
}

#[test]
fn two_counting_boots_that_agree_are_identical_and_one_that_differs_is_named() {
    let s = summary_of(&[("c1.log", QUICK_COUNT), ("c2.log", QUICK_COUNT)]);
    assert!(s.counted_differences().is_empty());
    assert!(
        check::check_all(&s).is_empty(),
        "{:?}",
        check::check_all(&s)
    );

    // One instruction more per 256 operations in one boot: nondeterminism.
    let needle = "\"name\":\"map_unmap\",\"backend\":\"batched\",\"batch\":256";
    let drifted = scale_figure(QUICK_COUNT, needle, 1.0 + 1.0 / 1e6);
    let s = summary_of(&[("c1.log", QUICK_COUNT), ("c2.log", &drifted)]);
    let diffs = s.counted_differences();
    assert_eq!(diffs.len(), 1);
    assert_eq!(diffs[0].key.id(), "mm/map_unmap/batched/batch=256/vcpus=1");
    let problems = check::check_all(&s);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .contains("mm/map_unmap/batched/batch=256/vcpus=1 differs between counting boots"),
        "{}",
        problems[0]
    );
}

#[test]
fn timed_figures_are_the_median_across_boots_with_their_spread() {
    let boot = |v: f64| {
        text(&[
            env_line(1),
            result_line("mm", "map_unmap", "batched", 1, 1, v, json!({})),
        ])
    };
    let (a, b, c) = (boot(100.0), boot(130.0), boot(105.0));
    let s = summary_of(&[("a.log", &a), ("b.log", &b), ("c.log", &c)]);
    let f = &s.figures[0];
    assert_eq!(f.kind, FigKind::Timed);
    assert_eq!(f.values, [100.0, 130.0, 105.0]);
    assert_eq!(f.median, 105.0);
    assert_eq!((f.min, f.max), (100.0, 130.0));
    assert!((f.spread() - 30.0 / 105.0).abs() < 1e-12);
    assert!(f.noisy());
    // Within 10%: not noisy.
    let s = summary_of(&[("a.log", &boot(100.0)), ("b.log", &boot(109.0))]);
    assert_eq!(s.figures[0].median, 104.5);
    assert!(!s.figures[0].noisy());
    // One boot: no spread, never noisy.
    let s = summary_of(&[("a.log", &boot(100.0))]);
    assert_eq!(s.figures[0].spread(), 0.0);
    assert!(!s.figures[0].noisy());

    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[f64::MAX, f64::MAX]), f64::MAX);
}

#[test]
fn ratios_across_boots_pair_figures_of_the_same_boot() {
    let boot = |i: f64, b: f64| {
        text(&[
            env_line(1),
            result_line("mm", "map_unmap", "immediate", 1, 1, i, json!({})),
            result_line("mm", "map_unmap", "batched", 1, 1, b, json!({})),
        ])
    };
    let s = summary_of(&[
        ("a.log", &boot(1000.0, 100.0)),
        ("b.log", &boot(900.0, 300.0)),
    ]);
    let q = |b| Query {
        suite: Some("mm"),
        backend: Some(b),
        ..Default::default()
    };
    let i = s.find(&q("immediate"), FigKind::Timed).unwrap();
    let b = s.find(&q("batched"), FigKind::Timed).unwrap();
    assert_eq!(s.ratio_range(i, b), Some((3.0, 10.0)));
}

// --- the CI check ---

#[test]
fn check_passes_a_complete_run_and_names_what_is_missing() {
    let problems = check::check(&sample());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&format!("line {GARBLED_LINE}:")));

    let clean: String = SAMPLE
        .lines()
        .enumerate()
        .filter(|(i, _)| i + 1 != GARBLED_LINE)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert_eq!(
        check::check(&log::parse(&clean, true).unwrap()),
        Vec::<String>::new()
    );

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
    let problems = check::check(&log::parse(&broken, true).unwrap());
    assert_eq!(
        problems,
        [
            "suite smp printed no result line",
            "workload page_flip_ring: checksums differ (immediate 0x00000000c0ffee42, batched 0x00000000c0ffee43)",
            "the guest exited with status 3",
        ]
    );
    // No exit record at all is a failure too.
    let unfinished: String = clean
        .lines()
        .filter(|l| !l.contains("\"exit\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(check::check(&log::parse(&unfinished, true).unwrap())
        .contains(&"the log has no HB exit record".to_string()));
}

#[test]
fn check_asks_only_for_the_suite_the_command_line_named() {
    // Issue 12: bench.sh's own help example `--quick -- suite=mm` failed the
    // check with "suite exits printed no result line".
    let boot = format!(
        "HB {}",
        json!({"event":"boot","cmdline":"run=bench quick suite=mm icount"})
    );
    let lines = [
        boot,
        env_line(1),
        result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({})),
        exit_line(0),
    ];
    assert_eq!(check::check(&parse(&lines)), Vec::<String>::new());
    let lines = [
        env_line(1),
        result_line("mm", "map_unmap", "batched", 1, 1, 10.0, json!({})),
        exit_line(0),
    ];
    assert!(
        check::check(&parse(&lines)).contains(&"suite exits printed no result line".to_string())
    );
}

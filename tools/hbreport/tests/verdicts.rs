//! The targets: verdicts met and missed as the figures say, each naming
//! the kind of figure it rests on, missing figures listed. (The cost
//! model's tests are in model.rs.)

mod common;

use common::*;
use hbreport::summary::Summary;
use hbreport::targets::{self, Status, Target};
use serde_json::json;

fn target<'a>(ts: &'a [Target], title_part: &str) -> &'a Target {
    ts.iter()
        .find(|t| t.title.contains(title_part))
        .unwrap_or_else(|| panic!("no target like {title_part:?}"))
}

fn one(log_text: &str) -> Summary {
    summary_of(&[("serial.log", log_text)])
}

#[test]
fn sample_targets_are_met_and_missed_as_the_figures_say() {
    let s = one(SAMPLE);
    let ts = targets::evaluate(&s);
    let status = |part: &str| target(&ts, part).status;
    assert_eq!(status("on one vCPU"), Status::Met);
    assert_eq!(status("other vCPUs must be told"), Status::Met);
    assert_eq!(status("minimum (map_unmap)"), Status::Met);
    assert_eq!(status("minimum (map_touch_unmap)"), Status::Met);
    assert_eq!(status("minimum (protect)"), Status::Met);
    // The sample has no map_unmap_range or protect_range figures and no
    // counting boot: those targets are listed as not evaluated.
    assert_eq!(status("minimum (map_unmap_range)"), Status::Missing);
    assert_eq!(status("minimum (protect_range)"), Status::Missing);
    for part in [
        "lean mm core (map_unmap)",
        "lean mm core (protect)",
        "honest immediate",
    ] {
        let t = target(&ts, part);
        assert_eq!(t.status, Status::Missing, "{part}");
        assert!(t.margin.contains("no counting boot"), "{}", t.margin);
    }
    assert_eq!(status("operations a host traps"), Status::Met);
    assert_eq!(status("(cow_snapshot)"), Status::Met);
    assert_eq!(status("(page_flip_ring)"), Status::Met);
    assert_eq!(status("(arena)"), Status::NotMet);
    // The sample is one timed boot: no count to judge the scale suite on,
    // and no 2-vCPU boot for its timed target.
    assert_eq!(status("do not serialise"), Status::Missing);
    assert_eq!(status("scale across host cores"), Status::Missing);
    assert_eq!(ts.len(), 18);

    // 984 / 82.4 = 11.94x against 5x.
    let t = target(&ts, "on one vCPU");
    assert!(t.measured.starts_with("11.9x"), "{}", t.measured);
    assert!(t.margin.contains("met with 2.39x to spare"), "{}", t.margin);
    assert_eq!(t.basis, "timed, median of 1 boot");
    // The sample has no counting boot: the floor target says it fell back.
    // Doubled, protect at 256 is 150.2 / 45.0 = 3.34x against 3x.
    let slow = scale_figure(
        SAMPLE,
        r#""name":"protect","backend":"batched","batch":256"#,
        2.0,
    );
    let ts_slow = targets::evaluate(&one(&slow));
    let t = target(&ts_slow, "minimum (protect)");
    assert_eq!(t.status, Status::NotMet);
    assert!(t.margin.contains("3.34x > 3.00x: 11% over"), "{}", t.margin);
    assert!(
        t.basis.contains("(no counted figure in this run)"),
        "{}",
        t.basis
    );
    assert!(
        t.why.as_deref().unwrap().contains("105 cycles/op"),
        "{:?}",
        t.why
    );
    // Invalidations, CR writes and IPIs fall to 1/256; the PTE stores,
    // which no host intercepts past a table's first, are shown beside.
    let t = target(&ts, "operations a host traps");
    assert!(t.measured.contains("= 1/256"), "{}", t.measured);
    assert!(
        t.measured
            .contains("PTE stores beside them: 2.000 vs 2.000"),
        "{}",
        t.measured
    );
    assert!(t.margin.contains("met with 4.00x to spare"), "{}", t.margin);
    for t in ts.iter().filter(|t| t.status == Status::NotMet) {
        assert!(t.why.is_some(), "{} has no why", t.title);
        assert!(!t.margin.is_empty());
    }
    // No target names an issue: they are in the project's own words.
    for t in &ts {
        for text in [&t.title, &t.aim, &t.requirement] {
            assert!(!names_an_issue(text), "{text}");
        }
    }
}

#[test]
fn each_verdict_rests_on_its_kind_of_figure() {
    // With both kinds in the run: software cost on counts, costs with
    // privileged operations on time, counts of operations on counters.
    let s = quick_run();
    let ts = targets::evaluate(&s);
    let basis = |part: &str| target(&ts, part).basis.clone();
    assert_eq!(basis("on one vCPU"), "timed, median of 2 boots");
    assert_eq!(basis("minimum (map_unmap)"), "instruction counts (exact)");
    assert_eq!(
        basis("minimum (map_unmap_range)"),
        "instruction counts (exact)"
    );
    assert_eq!(
        basis("operations a host traps"),
        "the queue's counters (counting boot, exact)"
    );
    assert_eq!(basis("(arena)"), "timed, median of 2 boots");
    // Each measured value also shows the other kind.
    assert!(target(&ts, "on one vCPU")
        .measured
        .contains("in instructions:"));
    assert!(target(&ts, "minimum (map_unmap)")
        .measured
        .contains("in cycles:"));
}

/// An mm log at ring capacity 64 with the given immediate and batched costs.
fn mm_lines(imm: f64, bat: f64) -> Vec<String> {
    let c = |pte: u64, inv: u64, full: u64| json!({"pte_writes": pte, "invlpg": inv, "full_flushes": full});
    vec![
        env_line(64),
        result_line("mm", "map_unmap", "immediate", 64, 1, imm, c(2000, 1000, 0)),
        result_line("mm", "map_unmap", "batched", 64, 1, bat, c(2000, 0, 16)),
        result_line("mm", "map_unmap", "floor", 64, 1, bat * 0.9, c(2000, 0, 16)),
    ]
}

fn mm_run(imm: f64, bat: f64) -> Summary {
    one(&text(&mm_lines(imm, bat)))
}

#[test]
fn speedup_target_met_and_missed() {
    let ts = targets::evaluate(&mm_run(1000.0, 50.0));
    let t = target(&ts, "on one vCPU");
    assert_eq!(t.status, Status::Met);
    assert!(t.margin.contains("20.0x ≥ 5.00x"), "{}", t.margin);

    let ts = targets::evaluate(&mm_run(1000.0, 400.0));
    let t = target(&ts, "on one vCPU");
    assert_eq!(t.status, Status::NotMet);
    assert!(t.margin.contains("short by 50%"), "{}", t.margin);
    assert!(t.margin.contains("needs 2.00x more"), "{}", t.margin);
    assert!(t.why.as_deref().unwrap().contains("privileged ops/op"));

    let ts = targets::evaluate(&mm_run(1000.0, 200.0));
    assert_eq!(target(&ts, "on one vCPU").status, Status::Met);
}

#[test]
fn a_timed_verdict_the_boots_disagree_on_says_so() {
    // 6x in one boot, 4x in the other: met on the median (5x), not in
    // every boot.
    let a = text(&mm_lines(600.0, 100.0));
    let b = text(&mm_lines(400.0, 100.0));
    let s = summary_of(&[("a.log", &a), ("b.log", &b)]);
    let t = targets::evaluate(&s)
        .into_iter()
        .find(|t| t.title.contains("on one vCPU"))
        .unwrap();
    assert_eq!(t.status, Status::Met);
    let u = t.uncertain.expect("the boots disagree");
    assert!(u.contains("4.00x to 6.00x over 2 boots"), "{u}");
    // Both boots well above: certain.
    let s = summary_of(&[
        ("a.log", &text(&mm_lines(2000.0, 100.0))),
        ("b.log", &text(&mm_lines(1800.0, 100.0))),
    ]);
    let ts = targets::evaluate(&s);
    assert!(target(&ts, "on one vCPU").uncertain.is_none());
}

#[test]
fn missing_figures_are_listed_not_hidden() {
    let ts = targets::evaluate(&mm_run(1000.0, 50.0));
    let t = target(&ts, "other vCPUs must be told");
    assert_eq!(t.status, Status::Missing);
    assert!(
        t.margin
            .contains("no figure for smp / unmap_shootdown / immediate / 4 vCPU"),
        "{}",
        t.margin
    );
    let t = target(&ts, "operations a host traps");
    assert_eq!(t.status, Status::Missing);
    assert!(t.margin.contains("batch 256"), "{}", t.margin);
    let t = target(&ts, "Whole tasks");
    assert_eq!(t.status, Status::Missing);
}

#[test]
fn workload_checksum_mismatch_is_a_miss_even_when_faster() {
    let imm = result_line("workload", "ring", "immediate", 1, 1, 1000.0, json!({}));
    let bat = result_line("workload", "ring", "batched", 256, 1, 100.0, json!({}))
        .replace("0xabc", "0xabd");
    let ts = targets::evaluate(&one(&text(&[env_line(256), imm.clone(), bat])));
    let t = target(&ts, "(ring)");
    assert_eq!(t.status, Status::NotMet);
    assert!(
        t.margin.contains("checksums DIFFER: 0xabc, 0xabd"),
        "{}",
        t.margin
    );
    assert!(t.why.as_deref().unwrap().contains("correctness failure"));

    let bat = result_line("workload", "ring", "batched", 256, 1, 100.0, json!({}))
        .replace("0xabc", "0xABC");
    let ts = targets::evaluate(&one(&text(&[env_line(256), imm, bat])));
    assert_eq!(target(&ts, "(ring)").status, Status::Met);
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
    let ts = targets::evaluate(&one(&text(&[env_line(256), imm, bat])));
    let t = target(&ts, "operations a host traps");
    assert_eq!(t.status, Status::Met, "{t:?}");
    assert!(t.margin.contains("1/100 ≤ 1/64"), "{}", t.margin);
}

/// A counting log at ring capacity 64 (synthetic): map_unmap immediate
/// flushes after every operation, batched once per 64.
fn counted_mm(imm: f64, bat: f64, floor: f64) -> Summary {
    let c = |flushes: u64| json!({"pte_writes": 2000, "invlpg": flushes, "flushes": flushes});
    let lines = vec![
        env_line(64),
        result_unit(
            "mm",
            "map_unmap",
            "immediate",
            64,
            1,
            imm,
            c(1000),
            "instructions",
        ),
        result_unit(
            "mm",
            "map_unmap",
            "batched",
            64,
            1,
            bat,
            c(16),
            "instructions",
        ),
        result_unit(
            "mm",
            "map_unmap",
            "floor",
            64,
            1,
            floor,
            c(16),
            "instructions",
        ),
    ];
    one(&text(&lines))
}

#[test]
fn the_lean_core_and_the_flush_cost_are_judged_on_counts() {
    // 140 ≤ 150; (240 − 140) ÷ (1 − 0.016) = 101.6 > 100.
    let ts = targets::evaluate(&counted_mm(240.0, 140.0, 40.0));
    let t = target(&ts, "lean mm core (map_unmap)");
    assert_eq!(t.status, Status::Met);
    assert_eq!(t.basis, "instruction counts (exact)");
    assert!(
        t.margin.contains("140 ≤ 150: met, 7% headroom"),
        "{}",
        t.margin
    );
    let t = target(&ts, "honest immediate");
    assert_eq!(t.status, Status::NotMet);
    assert!(
        t.measured.starts_with("102 instructions per flush"),
        "{}",
        t.measured
    );
    assert!(t.margin.contains("2% over"), "{}", t.margin);
    assert!(t.why.is_some());
    // The floor target: 140 / 40 = 3.5x against 3x for per-page calls.
    let t = target(&ts, "minimum (map_unmap)");
    assert_eq!(t.status, Status::NotMet);
    assert!(t.margin.contains("3.50x > 3.00x"), "{}", t.margin);

    // 300 > 150, with the floor's share in the why; 398.4 − 300 = 98.4
    // over 0.984 flushes is exactly 100: met.
    let ts = targets::evaluate(&counted_mm(398.4, 300.0, 40.0));
    let t = target(&ts, "lean mm core (map_unmap)");
    assert_eq!(t.status, Status::NotMet);
    assert!(
        t.margin.contains("300 > 150: 100% over (needs 2.00x less)"),
        "{}",
        t.margin
    );
    assert!(
        t.why.as_deref().unwrap().contains("the floor"),
        "{:?}",
        t.why
    );
    assert_eq!(target(&ts, "honest immediate").status, Status::Met);

    // Immediate flushing no more often than batched cannot be judged.
    let c = json!({"flushes": 16});
    let lines = vec![
        env_line(64),
        result_unit(
            "mm",
            "map_unmap",
            "immediate",
            64,
            1,
            200.0,
            c.clone(),
            "instructions",
        ),
        result_unit(
            "mm",
            "map_unmap",
            "batched",
            64,
            1,
            100.0,
            c,
            "instructions",
        ),
    ];
    let ts = targets::evaluate(&one(&text(&lines)));
    let t = target(&ts, "honest immediate");
    assert_eq!(t.status, Status::Missing);
    assert!(t.margin.contains("no more often"), "{}", t.margin);
}

#[test]
fn intercepted_operations_count_unsyncs_but_not_later_stores() {
    // Synthetic: 1,000 map+unmaps at batch 256. Batched flushes fully
    // every 256 and first-writes its leaf table again in each new epoch:
    // 4 + 4 + 4 = 12 intercepted against immediate's 1,000 invlpg + 1
    // unsync = 1/83, met. With 20 invalidations more (32 = 1/31), missed.
    let run = |extra_invlpg: u64| {
        let lines = vec![
            env_line(256),
            result_unit(
                "mm",
                "map_unmap",
                "immediate",
                256,
                1,
                500.0,
                json!({"pte_writes": 2000, "invlpg": 1000, "tables_unsynced": 1}),
                "instructions",
            ),
            result_unit(
                "mm",
                "map_unmap",
                "batched",
                256,
                1,
                370.0,
                json!({"pte_writes": 2000, "invlpg": extra_invlpg, "full_flushes": 4, "ipis": 4,
                       "tables_unsynced": 4}),
                "instructions",
            ),
        ];
        targets::evaluate(&one(&text(&lines)))
    };
    let ts = run(0);
    let t = target(&ts, "operations a host traps");
    assert_eq!(t.status, Status::Met, "{}", t.margin);
    assert!(t.measured.contains("= 1/83"), "{}", t.measured);
    let ts = run(20);
    let t = target(&ts, "operations a host traps");
    assert_eq!(t.status, Status::NotMet, "{}", t.margin);
    assert!(t.why.as_deref().unwrap().contains("invlpg"), "{:?}", t.why);
}

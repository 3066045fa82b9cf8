//! The cost model: its arithmetic, its fit on this run, the check against
//! a recorded TCG run, a synthetic KVM-like run, the projections' shape
//! under shadow paging, and a source for every reference cost.

mod common;

use common::*;
use hbreport::log::Counters;
use hbreport::model::{self, Cost, Event, Events, Fit, Platform, REFERENCE};
use hbreport::sources::{self, SOURCES};
use hbreport::summary::Summary;
use serde_json::{json, Value};

/// Recorded: `scripts/bench.sh --quick --runs 2` at 4 vCPUs on the
/// development machine (QEMU 7.2 TCG), HB and error lines kept: one
/// counting boot and two timed boots of a kernel with the `cr4_write`
/// and `tlb_fill` exit figures, declared touches, and every vCPU's
/// counters in the smp suite.
const TCG_COUNT: &str = include_str!("../testdata/tcg-quick-count.serial");
const TCG_TIMED_1: &str = include_str!("../testdata/tcg-quick-timed-1.serial");
const TCG_TIMED_2: &str = include_str!("../testdata/tcg-quick-timed-2.serial");

fn tcg_run() -> Summary {
    summary_of(&[
        ("serial-count-1.log", TCG_COUNT),
        ("serial-timed-1.log", TCG_TIMED_1),
        ("serial-timed-2.log", TCG_TIMED_2),
    ])
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

// --- arithmetic ---

#[test]
fn events_split_the_stores_by_sync_state_and_count_remote_work() {
    let c = Counters {
        pte_writes: 2000,
        tables_unsynced: 8,
        invlpg: 500,
        full_flushes: 4,
        lazy_tlb_reloads: 1,
        remote_full_flushes: 12,
        remote_invlpg: 30,
        cr_writes: 10,
        ipis: 12,
        shootdowns: 4,
        ..Counters::default()
    };
    let e = Events::of_counters(&c, 1000);
    assert!(close(e.get(Event::InSyncStore), 0.008));
    assert!(close(e.get(Event::UnsyncStore), 1.992));
    assert!(close(e.get(Event::Resync), 0.008));
    assert!(close(e.get(Event::Invlpg), 0.5));
    assert!(
        close(e.get(Event::FullFlush), 0.005),
        "full flushes + lazy reloads"
    );
    assert!(
        close(e.get(Event::Refill), 0.017),
        "every flush drops the working set, remote ones too"
    );
    assert!(close(e.get(Event::RemoteInvlpg), 0.03));
    assert!(close(e.get(Event::CrWrite), 0.01));
    assert!(close(e.get(Event::Ipi), 0.012));
    assert!(close(e.get(Event::Round), 0.004));
    // More unsynced tables than stores (a malformed record) cannot make a
    // negative count.
    let odd = Counters {
        pte_writes: 1,
        tables_unsynced: 5,
        ..Counters::default()
    };
    let e = Events::of_counters(&odd, 1);
    assert_eq!(e.get(Event::UnsyncStore), 0.0);
    assert_eq!(e.get(Event::InSyncStore), 1.0);
    assert_eq!(
        Events::of_counters(&odd, 0).get(Event::InSyncStore),
        1.0,
        "no division by zero"
    );
}

#[test]
fn a_prediction_is_instructions_times_cpi_plus_events_times_costs() {
    let fit = Fit {
        cpi: Some(2.5),
        fit_figures: 0,
        costs: Event::ALL
            .iter()
            .map(|e| {
                (
                    *e,
                    match e {
                        Event::Invlpg => Some(400.0),
                        Event::FullFlush => Some(6000.0),
                        Event::Ipi => Some(3000.0),
                        Event::CrWrite => None,
                        _ => Some(0.0),
                    },
                )
            })
            .collect(),
        exits: Vec::new(),
    };
    let c = Counters {
        pte_writes: 2000,
        invlpg: 1000,
        full_flushes: 4,
        ipis: 250,
        ..Counters::default()
    };
    let e = Events::of_counters(&c, 1000);
    let want = 800.0 * 2.5 + 1.0 * 400.0 + 0.004 * 6000.0 + 0.25 * 3000.0;
    assert!(close(fit.predict(800.0, &e).unwrap(), want));
    // A counted event without a cost here has no prediction; one that was
    // not counted costs nothing whatever its price.
    let cr = Events::of_counters(
        &Counters {
            cr_writes: 5,
            ..Counters::default()
        },
        1000,
    );
    assert_eq!(fit.predict(100.0, &cr), None);
    assert!(close(
        fit.predict(100.0, &Events::default()).unwrap(),
        250.0
    ));
}

#[test]
fn a_projection_adds_ranges_end_to_end_and_keeps_lower_bounds() {
    let e = Events::of_counters(
        &Counters {
            pte_writes: 2000,
            invlpg: 1000,
            ..Counters::default()
        },
        1000,
    );
    // KVM with EPT: the software at 0.5–1 CPI plus a native invlpg each.
    let p = model::project_one(Platform::KvmEpt, 1000.0, &e);
    assert!(
        close(p.lo, 500.0 + 260.0) && close(p.hi, 1000.0 + 260.0),
        "{p:?}"
    );
    assert!(!p.at_least);
    // Shadow paging: the invlpg exit is a lower bound, the stores to
    // out-of-sync tables cost nothing.
    let s = model::project_one(Platform::KvmShadow, 1000.0, &e);
    assert!(close(s.lo, 500.0 + 1018.0), "{s:?}");
    assert!(s.at_least);
    assert_eq!(
        Cost::range(1.0, 2.0).text(),
        "1.00–2.00",
        "a range prints both ends"
    );
    assert_eq!(Cost::at_least(1018.0).text(), "≥ 1,018");
}

#[test]
fn under_shadow_paging_batching_saves_the_invalidation_exits_not_the_stores() {
    // Per page: immediate stores twice and invalidates once into tables
    // already out of sync; batched stores as often, and one full flush per
    // 256 pages resyncs the one table the batch unsynced.
    let imm = Events::of_counters(
        &Counters {
            pte_writes: 2000,
            invlpg: 1000,
            ..Counters::default()
        },
        1000,
    );
    let bat = Events::of_counters(
        &Counters {
            pte_writes: 2048,
            tables_unsynced: 4,
            full_flushes: 4,
            ..Counters::default()
        },
        1024,
    );
    let (i, b) = (
        model::project_one(Platform::KvmShadow, 800.0, &imm),
        model::project_one(Platform::KvmShadow, 370.0, &bat),
    );
    let (ie, be) = (
        model::project_one(Platform::KvmEpt, 800.0, &imm),
        model::project_one(Platform::KvmEpt, 370.0, &bat),
    );
    // What batching saves under shadow paging beyond what it saves under
    // EPT is the invlpg exit less the native invlpg, less the batched
    // figure's in-sync faults and shadow CR3 loads; the 2 stores per page
    // are not in it.
    let extra = (i.lo - b.lo) - (ie.lo - be.lo);
    let want = (1018.0 - 260.0) - (4.0 / 1024.0) * 1018.0 - (4.0 / 1024.0) * (5006.0 - 96.0);
    assert!(close(extra, want), "{extra} vs {want}");
    // The old model's shape (every store a trap) would have made it
    // several thousand cycles per page more.
    assert!(extra < 1018.0);
}

// --- the fit and the check, on a synthetic log ---

/// A log's result lines for figures generated from a known model: the
/// exits loops, floor and immediate mm figures, and an smp shootdown.
/// Counted boots get the instructions, timed boots cycles made by
/// `cycles(instructions, events)`.
fn synthetic(kind: &str, cycles: &dyn Fn(f64, &Value) -> f64) -> String {
    let unit = if kind == "count" {
        "instructions"
    } else {
        "cycles"
    };
    let mut lines = vec![format!(
        "HB {}",
        json!({"event":"env","schema":2,"hypervisor":"kvm","vcpus":4,"unit":unit,
               "ring_capacity":256,"invlpg_ceiling":33})
    )];
    let exits = [
        ("pte_write", 2.3, json!({"pte_writes": 1000})),
        ("invlpg", 3.0, json!({"invlpg": 1000})),
        ("cr3_reload", 5.0, json!({"full_flushes": 1000})),
        ("cr4_write", 3.0, json!({"cr_writes": 1000})),
        ("ipi_roundtrip", 315.0, json!({"ipis": 1000})),
    ];
    for (name, ins, ev) in &exits {
        let v = if kind == "count" {
            *ins
        } else {
            cycles(*ins, ev)
        };
        // The exits suite prints no counters: the events are implied.
        lines.push(result_unit(
            "exits",
            name,
            "none",
            1,
            1,
            v,
            Value::Null,
            unit,
        ));
    }
    let figs = [
        (
            "mm",
            "map_unmap",
            "floor",
            1,
            1,
            179.0,
            json!({"pte_writes": 2000, "invlpg": 1000}),
        ),
        (
            "mm",
            "map_unmap",
            "floor",
            8,
            1,
            54.5,
            json!({"pte_writes": 2000, "invlpg": 1000}),
        ),
        (
            "mm",
            "map_unmap",
            "floor",
            256,
            1,
            22.8,
            json!({"pte_writes": 2000, "full_flushes": 4}),
        ),
        (
            "mm",
            "map_unmap",
            "immediate",
            256,
            1,
            792.0,
            json!({"pte_writes": 2000, "invlpg": 1000}),
        ),
        (
            "mm",
            "map_unmap",
            "batched",
            256,
            1,
            371.0,
            json!({"pte_writes": 2000, "tables_unsynced": 4, "full_flushes": 4}),
        ),
        (
            "smp",
            "unmap_shootdown",
            "immediate",
            256,
            4,
            1429.0,
            json!({"pte_writes": 1000, "invlpg": 1000, "ipis": 3000, "shootdowns": 1000, "remote_invlpg": 3000}),
        ),
        (
            "smp",
            "unmap_shootdown",
            "batched",
            256,
            4,
            189.0,
            json!({"pte_writes": 1000, "full_flushes": 4, "ipis": 12, "shootdowns": 4, "remote_full_flushes": 12}),
        ),
    ];
    for (suite, name, backend, batch, vcpus, ins, counters) in &figs {
        let v = if kind == "count" {
            *ins
        } else {
            cycles(*ins, counters)
        };
        lines.push(result_unit(
            suite,
            name,
            backend,
            *batch,
            *vcpus,
            v,
            counters.clone(),
            unit,
        ));
    }
    lines.push(exit_line(0));
    text(&lines)
}

/// Cycles from a model with these costs per event, per operation of a
/// result line (ops 100 × reps 10, so counters are per 1,000).
fn generated(cpi: f64, invlpg: f64, cr3: f64, cr4: f64, ipi: f64) -> impl Fn(f64, &Value) -> f64 {
    move |ins, ev| {
        let n = |k: &str| ev[k].as_f64().unwrap_or(0.0) / 1000.0;
        ins * cpi
            + (n("invlpg") + n("remote_invlpg")) * invlpg
            + (n("full_flushes") + n("remote_full_flushes")) * cr3
            + n("cr_writes") * cr4
            + n("ipis") * ipi
    }
}

#[test]
fn the_fit_recovers_the_cpi_and_costs_a_log_was_made_with() {
    let g = generated(2.5, 400.0, 6000.0, 50.0, 3000.0);
    let s = summary_of(&[
        ("serial-count-1.log", &synthetic("count", &g)),
        ("serial-timed-1.log", &synthetic("timed", &g)),
    ]);
    let fit = Fit::of(&s);
    assert!(close(fit.cpi.unwrap(), 2.5), "{:?}", fit.cpi);
    assert!(close(fit.cost(Event::Invlpg).unwrap(), 400.0));
    assert!(close(fit.cost(Event::FullFlush).unwrap(), 6000.0));
    assert!(close(fit.cost(Event::CrWrite).unwrap(), 50.0));
    assert!(close(fit.cost(Event::Ipi).unwrap(), 3000.0));
    assert!(close(fit.cost(Event::RemoteInvlpg).unwrap(), 400.0));
    assert_eq!(
        fit.cost(Event::Refill),
        Some(0.0),
        "not measured here: priced at zero"
    );
    // Every figure made by the model is predicted exactly.
    let m = model::build(&s);
    assert_eq!(m.checks.len(), 7);
    for c in &m.checks {
        assert!(c.error().abs() < 1e-9, "{}: {}", c.id(), c.error());
    }
    assert!(m.checks.iter().filter(|c| c.in_fit).count() == 3);
}

#[test]
fn a_wrong_term_shows_as_an_error_and_the_diagnosis_names_its_cost() {
    // The smp figures pay 6,000 cycles per IPI, but the exits suite's
    // round trip says 3,000: the model must miss smp, by the IPIs.
    let g = generated(2.5, 400.0, 6000.0, 50.0, 3000.0);
    let slow_ipis = generated(2.5, 400.0, 6000.0, 50.0, 6000.0);
    let timed = synthetic("timed", &g);
    let mut lines: Vec<String> = Vec::new();
    for l in timed.lines() {
        if l.contains("\"smp\"") && l.contains("\"immediate\"") {
            let ev = json!({"invlpg": 1000, "ipis": 3000, "remote_invlpg": 3000});
            lines.push(l.replace(
                &format!("\"median\":{}", g(1429.0, &ev)),
                &format!("\"median\":{}", slow_ipis(1429.0, &ev)),
            ));
        } else {
            lines.push(l.to_string());
        }
    }
    let s = summary_of(&[
        ("serial-count-1.log", &synthetic("count", &g)),
        ("serial-timed-1.log", &text(&lines)),
    ]);
    let m = model::build(&s);
    let c = m
        .checks
        .iter()
        .find(|c| c.id() == "smp/unmap_shootdown/immediate/batch=256/vcpus=4")
        .unwrap();
    let measured = slow_ipis(
        1429.0,
        &json!({"invlpg": 1000, "ipis": 3000, "remote_invlpg": 3000}),
    );
    assert!(close(c.measured, measured));
    assert!(c.error() < -0.25, "{}", c.error());
    let d = c.diagnosis(&m.fit);
    let ipi = d.iter().find(|(t, _)| t == "IPI, per target").unwrap();
    assert_eq!(ipi.1, "3,000 → 6,000 cycles each");
    let mut md = String::new();
    model::markdown(&mut md, &m);
    assert!(
        md.contains(
            "- **smp**: 1 figure predicted too low; best explained by IPI, per target: 6,000 cycles each"
        ),
        "{md}"
    );
    assert!(md.contains("IPI, per target: 3,000 → 6,000 cycles each"));
}

#[test]
fn a_kvm_like_log_is_checked_against_its_own_exits_and_projected_from_its_counts() {
    // Synthetic, labelled as such: a KVM host with EPT whose exits suite
    // measures a native invlpg (260), CR3 load (96), a CR4 exit (1,018)
    // and an IPI round trip (3,293), and whose software runs at 0.8 CPI.
    let g = generated(0.8, 260.0, 96.0, 1018.0, 3293.0);
    let s = summary_of(&[
        ("serial-count-1.log", &synthetic("count", &g)),
        ("serial-timed-1.log", &synthetic("timed", &g)),
    ]);
    let m = model::build(&s);
    assert!(close(m.fit.cpi.unwrap(), 0.8));
    assert!(m.checks.iter().all(|c| c.error().abs() < 1e-9));
    // The projection does not use the timed figures: the same counts give
    // the same projection, immediate and batched, at the largest batch.
    let p = m
        .projected
        .iter()
        .find(|p| p.suite == "mm" && p.name == "map_unmap")
        .unwrap();
    assert_eq!(p.batch, 256);
    let ept = Platform::ALL
        .iter()
        .position(|x| *x == Platform::KvmEpt)
        .unwrap();
    let (imm, bat) = p.cells[ept];
    assert!(close(imm.lo, 792.0 * 0.5 + 260.0) && close(imm.hi, 792.0 + 260.0));
    let refill_hi = 33.0 * 260.0 - 96.0;
    assert!(close(bat.lo, 371.0 * 0.5 + 0.004 * 96.0));
    assert!(close(bat.hi, 371.0 + 0.004 * (96.0 + refill_hi)));
    // INVLPGB: the immediate shootdown's IPIs and remote handlers are gone,
    // one broadcast per round (at least a native invlpg) in their place.
    let smp = m.projected.iter().find(|p| p.suite == "smp").unwrap();
    let ib = Platform::ALL
        .iter()
        .position(|x| *x == Platform::Invlpgb)
        .unwrap();
    let k = Platform::ALL
        .iter()
        .position(|x| *x == Platform::KvmEpt)
        .unwrap();
    assert!(close(smp.cells[ib].0.lo, 1429.0 * 0.5 + 260.0 + 260.0));
    assert!(smp.cells[ib].0.at_least);
    assert!(close(
        smp.cells[k].0.lo,
        1429.0 * 0.5 + 260.0 + 3.0 * 3293.0 + 3.0 * 260.0
    ));
}

#[test]
fn without_both_kinds_of_boot_there_is_nothing_to_check_and_no_panic() {
    let g = generated(2.5, 400.0, 6000.0, 50.0, 3000.0);
    for logs in [
        vec![("serial-count-1.log", synthetic("count", &g))],
        vec![("serial-timed-1.log", synthetic("timed", &g))],
    ] {
        let logs: Vec<(&str, &str)> = logs.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let s = summary_of(&logs);
        let m = model::build(&s);
        assert_eq!(m.fit.cpi, None);
        assert!(m.checks.is_empty());
        let mut md = String::new();
        model::markdown(&mut md, &m);
        assert!(md.contains("Not checked: the check needs a counting boot and a timed boot"));
    }
    // A log whose only figure is an exits one: nothing to check, project
    // or plot.
    let only_exits = text(&[
        result_line("exits", "cpuid", "none", 1, 1, 1018.0, Value::Null),
        exit_line(0),
    ]);
    let s = summary_of(&[("serial-timed-1.log", &only_exits)]);
    let m = model::build(&s);
    assert!(m.checks.is_empty() && m.projected.is_empty());
    assert!(model::plot(&s, &m).unwrap().is_none(), "nothing to plot");
}

// --- the recorded TCG run ---

#[test]
fn a_tcg_run_gets_a_prediction_against_measurement_for_every_figure() {
    let s = tcg_run();
    let m = model::build(&s);
    assert_eq!(m.boot_fits.len(), 2, "one fit per timed boot");
    assert!(
        m.fit.cpi.is_some_and(|c| c > 0.5 && c < 20.0),
        "{:?}",
        m.fit.cpi
    );
    for e in [
        Event::Invlpg,
        Event::FullFlush,
        Event::CrWrite,
        Event::Ipi,
        Event::Touch,
    ] {
        assert!(m.fit.cost(e).is_some_and(|c| c > 0.0), "{e:?} measured");
    }
    // Every figure of the checked suites that has both twins and counters
    // is predicted.
    let want = model::CHECKED_SUITES
        .iter()
        .flat_map(|suite| s.suite(suite, hbreport::summary::FigKind::Counted))
        .filter(|c| c.fig.counters.is_some())
        .filter(|c| s.twin(c, hbreport::summary::FigKind::Timed).is_some())
        .count();
    assert!(want > 150);
    assert_eq!(m.checks.len(), want);
    for suite in ["mm", "cpu", "smp", "workload"] {
        assert!(
            m.suites.iter().any(|x| x.suite == suite && x.figures > 0),
            "{suite}"
        );
    }
    // Each prediction is the median of the per-boot predictions.
    let c = m
        .checks
        .iter()
        .find(|c| c.id() == "mm/map_unmap/immediate/batch=1/vcpus=1")
        .unwrap();
    let per_boot: Vec<f64> = m
        .boot_fits
        .iter()
        .map(|(_, f)| f.predict(c.instructions, &c.events).unwrap())
        .collect();
    assert!(close(c.predicted, (per_boot[0] + per_boot[1]) / 2.0));
    // The report holds the table, and results.json the same figures.
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let md = &built.report_md;
    assert!(md.contains("## The cost model, checked on this run"));
    assert!(md.contains("| figure | predicted | measured cycles | error | residual as |"));
    assert!(md.contains("| `mm/map_unmap/immediate/batch=1/vcpus=1` |"));
    assert!(md.contains("| `smp/unmap_shootdown/immediate/batch=256/vcpus=4` |"));
    let j: Value = serde_json::from_str(&built.results_json).unwrap();
    let checks = j["model"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), m.checks.len());
    let row = checks
        .iter()
        .find(|r| r["id"] == "mm/map_unmap/immediate/batch=1/vcpus=1")
        .unwrap();
    assert!(close(row["predicted"].as_f64().unwrap(), c.predicted));
    assert!(j["model"]["projections"].as_array().unwrap().len() >= 8);
}

#[test]
fn a_tcg_run_projects_every_suite_one_row_per_platform() {
    let s = tcg_run();
    let m = model::build(&s);
    for suite in ["mm", "cpu", "smp", "workload"] {
        assert!(m.projected.iter().any(|p| p.suite == suite), "{suite}");
    }
    let mut md = String::new();
    model::markdown(&mut md, &m);
    assert!(md.contains("## Projection onto other platforms (arithmetic, not a measurement)"));
    // The ratio table: a platform row each, unless its cells repeat
    // another's (then one row names both).
    let table: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("Projected immediate ÷ batched"))
        .skip_while(|l| !l.starts_with("| platform |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    for p in Platform::ALL {
        assert_eq!(
            table.iter().filter(|l| l.contains(p.label())).count(),
            1,
            "{p:?} has exactly one row"
        );
    }
    // Under shadow paging batched map_unmap saves more than under EPT:
    // the invlpg exits go.
    let pr = m
        .projected
        .iter()
        .find(|p| p.suite == "mm" && p.name == "map_unmap")
        .unwrap();
    let at = |x: Platform| Platform::ALL.iter().position(|p| *p == x).unwrap();
    assert!(pr.ratio(at(Platform::KvmShadow)).0 > pr.ratio(at(Platform::KvmEpt)).0);
    let plot = model::plot(&s, &m).unwrap().expect("a plot");
    let doc = roxmltree::Document::parse(&plot.svg).expect("the plot is XML");
    assert!(doc
        .descendants()
        .any(|n| n.text().is_some_and(|t| t.contains("kvm_shadow"))));
}

// --- sources ---

#[test]
fn every_reference_cost_has_sources_with_a_link_a_cpu_and_a_year() {
    for p in Platform::ALL {
        for e in Event::ALL {
            let rows: Vec<_> = REFERENCE
                .iter()
                .filter(|r| r.platform == p && r.event == e)
                .collect();
            assert_eq!(rows.len(), 1, "{p:?} {e:?}: one row");
            let r = rows[0];
            assert!(!r.sources.is_empty(), "{p:?} {e:?}: no source");
            assert!(r.why.len() > 10, "{p:?} {e:?}: why too thin");
            assert!(r.cost.lo <= r.cost.hi && r.cost.lo >= 0.0);
            for k in r.sources {
                assert!(sources::get(k).is_some(), "{p:?} {e:?}: unknown source {k}");
            }
        }
    }
    for src in SOURCES {
        assert!(
            src.link.starts_with("https://"),
            "{}: {}",
            src.key,
            src.link
        );
        assert!(!src.cpu.is_empty() && !src.year.is_empty(), "{}", src.key);
        assert!(
            REFERENCE.iter().any(|r| r.sources.contains(&src.key)),
            "{} is cited by no cost",
            src.key
        );
    }
    // The report lists each cited source with its link.
    let mut md = String::new();
    model::markdown(&mut md, &model::build(&tcg_run()));
    for src in SOURCES {
        assert!(md.contains(&format!("<{}>", src.link)), "{}", src.key);
    }
}

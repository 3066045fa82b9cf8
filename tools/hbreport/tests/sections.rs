//! The report's sections for the scale suite, the smp suite at up to 16
//! vCPUs and the page sizes per MiB: their verdicts on synthetic logs
//! built to meet and miss each target, figures of boots with different
//! vCPU counts kept apart, the TCG threading read from each boot's run log,
//! the plots parsed as SVG with their series, and a clear note (not a
//! panic) when a suite is missing. The recorded logs are the development
//! machine's (testdata/smp16-*.serial: a full run's extra 16-vCPU boots).

mod common;

use common::*;
use hbreport::summary::{FigKind, Summary};
use hbreport::targets::{self, Status, Target};
use hbreport::{pagesize, scale, vmm, Options};
use serde_json::{json, Value};

/// Recorded: the extra boots of a full `scripts/bench.sh` run at 16 vCPUs
/// (`run=bench suite=smp,scale`), one counting and one timed, HB lines and
/// the guest's banner kept.
const SMP16_COUNT: &str = include_str!("../testdata/smp16-count.serial");
const SMP16_TIMED: &str = include_str!("../testdata/smp16-timed-1.serial");
/// Recorded: what run-qemu.sh said for that timed boot (its paths cut).
const SMP16_RUN_TIMED: &str = include_str!("../testdata/smp16-timed-1.run");

fn env(vcpus: u64, unit: &str) -> String {
    let hz = if unit == "cycles" {
        json!(2_000_000_000u64)
    } else {
        Value::Null
    };
    format!(
        "HB {}",
        json!({"event":"env","schema":2,"hypervisor":"tcg","vcpus":vcpus,"unit":unit,"tsc_hz":hz,
               "ring_capacity":256,"invlpg_ceiling":33,"quick":false})
    )
}

/// A boot of `vcpus` vCPUs printing the scale suite: private figures
/// `private[i]` at vCPU counts `at[i]`, shared ones twice those.
fn scale_boot(vcpus: u64, unit: &str, at: &[u64], private: &[f64]) -> String {
    let mut lines = vec![env(vcpus, unit)];
    for (v, x) in at.iter().zip(private) {
        let ipis = json!({"ipis": (*v - 1) * 10, "flushes": 8 * v});
        lines.push(result_unit(
            "scale",
            scale::PRIVATE,
            "batched",
            256,
            *v,
            *x,
            ipis.clone(),
            unit,
        ));
        lines.push(result_unit(
            "scale",
            scale::SHARED,
            "batched",
            64,
            *v,
            *x * 2.0 * *v as f64,
            json!({"ipis": (*v - 1) * 100}),
            unit,
        ));
    }
    lines.push(exit_line(0));
    text(&lines)
}

fn target<'a>(ts: &'a [Target], part: &str) -> &'a Target {
    ts.iter()
        .find(|t| t.title.contains(part))
        .unwrap_or_else(|| panic!("no target like {part:?}"))
}

const COUNTED: &str = "do not serialise";
const TIMED: &str = "scale across host cores";

#[test]
fn the_counted_scale_target_is_met_missed_and_missing_as_the_figures_say() {
    // Synthetic: flat within 10% at 2, 4 and 8 on a 16-vCPU machine.
    let flat = scale_boot(
        16,
        "instructions",
        &[1, 2, 4, 8, 16],
        &[400.0, 404.0, 410.0, 430.0, 500.0],
    );
    let ts = targets::evaluate(&summary_of(&[("serial-count-1.log", &flat)]));
    let t = target(&ts, COUNTED);
    assert_eq!(t.status, Status::Met, "{t:?}");
    assert_eq!(t.basis, "instruction counts (exact)");
    assert!(t.measured.contains("8: 430 (+7.5%)"), "{}", t.measured);
    assert!(t.margin.contains("worst +7.5% at N = 8"), "{}", t.margin);
    // N = 16's +25% is shown in the table, not judged: the target names 2, 4, 8.
    assert!(t.why.is_none());

    // Synthetic: +15% at N = 4 misses by 5 points, and says why.
    let steep = scale_boot(
        8,
        "instructions",
        &[1, 2, 4, 8],
        &[400.0, 404.0, 460.0, 420.0],
    );
    let ts = targets::evaluate(&summary_of(&[("serial-count-1.log", &steep)]));
    let t = target(&ts, COUNTED);
    assert_eq!(t.status, Status::NotMet);
    assert!(
        t.margin.contains("+15.0% at N = 4 > +10%: 5.0 points over"),
        "{}",
        t.margin
    );
    let why = t.why.as_deref().unwrap();
    assert!(why.contains("60 more guest instructions"), "{why}");
    assert!(why.contains("IPIs/op"), "{why}");

    // Synthetic: a 4-vCPU machine cannot say anything about N = 8.
    let small = scale_boot(4, "instructions", &[1, 2, 4], &[400.0, 401.0, 402.0]);
    let ts = targets::evaluate(&summary_of(&[("serial-count-1.log", &small)]));
    let t = target(&ts, COUNTED);
    assert_eq!(t.status, Status::Missing);
    assert!(t.margin.contains("no figure at N = 8"), "{}", t.margin);
    assert!(t.margin.contains("had 4 vCPUs"), "{}", t.margin);
    assert!(t.measured.contains("4: 402 (+0.5%)"), "{}", t.measured);

    // Timed figures alone do not make a counted verdict.
    let timed = scale_boot(
        16,
        "cycles",
        &[1, 2, 4, 8],
        &[1000.0, 1000.0, 1000.0, 1000.0],
    );
    let ts = targets::evaluate(&summary_of(&[("serial-timed-1.log", &timed)]));
    assert_eq!(target(&ts, COUNTED).status, Status::Missing);
}

/// A results directory of one timed 2-vCPU boot whose run log says how
/// QEMU ran it (`thread`: None, no run log), reported through the files.
fn timed_smp2(name: &str, thread: Option<&str>, one: f64, two: f64) -> String {
    let dir = temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("serial-timed-1.log"),
        scale_boot(2, "cycles", &[1, 2], &[one, two]),
    )
    .unwrap();
    if let Some(t) = thread {
        std::fs::write(
            dir.join("run-timed-1.log"),
            format!(
                "run-qemu: qemu-system-x86_64 -machine microvm -accel tcg,thread={t} -cpu max -smp 2 -m 512M\n\
                 run-qemu: guest exit status 0 (isa-debug-exit, tcg, 3.10 s)\n"
            ),
        )
        .unwrap();
    }
    let out = dir.join("out");
    let o = hbreport::run(&Options {
        logs: vec![dir.join("serial-timed-1.log")],
        out: out.clone(),
        host: None,
        strict: false,
        check: false,
    })
    .expect("report made");
    let md = std::fs::read_to_string(o.report_md).unwrap();
    let json = std::fs::read_to_string(o.results_json).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    md + "\n" + &json
}

/// The targets table's row for a title part.
fn row<'a>(md: &'a str, part: &str) -> &'a str {
    md.lines()
        .find(|l| l.starts_with("| ") && l.contains(part))
        .unwrap_or_else(|| panic!("no row for {part:?}"))
}

#[test]
fn the_timed_scale_target_needs_multi_threaded_tcg_at_two_vcpus() {
    // Synthetic figures, multi-threaded per the run log: 1,000 → 550
    // cycles/op is an aggregate of 1.82x, met.
    let md = timed_smp2("mt-met", Some("multi"), 1000.0, 550.0);
    let r = row(&md, "Private regions scale across host cores");
    assert!(r.contains("| met: 1.82x ≥ 1.70x"), "{r}");
    assert!(r.contains("multi-threaded TCG"), "{r}");
    assert!(md.contains("\"tcg_thread\": \"multi\""), "results.json");
    assert!(md.contains("\"tcg_thread_from\": \"the QEMU command line\""));
    assert!(md.contains("\"run_log\": \"run-timed-1.log\""));
    // 1,000 → 700: 1.43x, missed by 16%.
    let md = timed_smp2("mt-missed", Some("multi"), 1000.0, 700.0);
    let r = row(&md, "Private regions scale across host cores");
    assert!(
        r.contains("**NOT MET**: 1.43x < 1.70x: short by 16%"),
        "{r}"
    );
    assert!(
        md.contains("Why it missed: with two vCPUs each one ran 1.40x slower than alone (1,400")
    );
    assert!(md.contains("no counting boot to tell"));
    // The same figures single-threaded: not measured, and how to measure it.
    let md = timed_smp2("st", Some("single"), 1000.0, 550.0);
    let r = row(&md, "Private regions scale across host cores");
    assert!(
        r.contains("**not evaluated**: not measured in this run"),
        "{r}"
    );
    assert!(
        r.contains("single-threaded TCG (from the QEMU command line)"),
        "{r}"
    );
    assert!(r.contains("HB_TCG_THREAD=multi"), "{r}");
    assert!(!r.contains("| met"), "{r}");
    // No run log and no host.json: the threading is unknown, so no verdict.
    let md = timed_smp2("unknown", None, 1000.0, 550.0);
    let r = row(&md, "Private regions scale across host cores");
    assert!(r.contains("TCG threading is not recorded"), "{r}");
    assert!(r.contains("HB_TCG_THREAD=multi"), "{r}");
}

#[test]
fn the_recorded_full_run_meets_the_counted_target_on_its_16_vcpu_boots() {
    let s = with_smp16();
    let ts = targets::evaluate(&s);
    let t = target(&ts, COUNTED);
    assert_eq!(t.status, Status::Met, "{t:?}");
    assert!(
        t.measured.contains("on the 16-vCPU boots"),
        "{}",
        t.measured
    );
    // Its timed boots were single-threaded at 2 and 16 vCPUs: not measured.
    let t = target(&ts, TIMED);
    assert_eq!(t.status, Status::Missing);
    assert!(
        t.margin.contains("not measured in this run"),
        "{}",
        t.margin
    );
}

/// The recorded quick run at 2 vCPUs with the recorded 16-vCPU boots,
/// the timed one with its run log.
fn with_smp16() -> Summary {
    let s = summary_of(&[
        ("serial-count-1.log", QUICK_COUNT),
        ("serial-timed-1.log", QUICK_TIMED_1),
        ("serial-timed-2.log", QUICK_TIMED_2),
        ("serial-count-smp16-1.log", SMP16_COUNT),
        ("serial-timed-smp16-1.log", SMP16_TIMED),
    ]);
    let mut boots = s.boots;
    boots[4].launch = vmm::parse(SMP16_RUN_TIMED, "run-timed-smp16-1.log");
    assert!(boots[4].launch.is_some());
    Summary::new(boots, s.host)
}

#[test]
fn figures_of_boots_with_other_vcpu_counts_are_kept_apart() {
    let s = with_smp16();
    assert_eq!(s.primary_vcpus, Some(2));
    assert_eq!(s.other_machines(), [16]);
    // The run's own smp figures stop at its 2 vCPUs; the 16-vCPU ones are
    // there under their own ids, never merged into the 2-vCPU medians.
    assert_eq!(
        s.suite("smp", FigKind::Counted).map(|a| a.key.vcpus).max(),
        Some(2)
    );
    let wide: Vec<_> = s
        .on_machine(Some(16), FigKind::Counted)
        .filter(|a| a.key.suite == "smp" && a.key.name == "unmap_shootdown")
        .collect();
    assert_eq!(wide.len(), 32, "1..16 vCPUs, two backends");
    assert!(wide
        .iter()
        .all(|a| a.key.id().ends_with("/smp=16") && a.boots.len() == 1));
    let own = s
        .find(
            &hbreport::log::Query {
                suite: Some("smp"),
                name: Some("unmap_shootdown"),
                backend: Some("batched"),
                vcpus: Some(2),
                ..Default::default()
            },
            FigKind::Counted,
        )
        .unwrap();
    assert_eq!(
        own.key.id(),
        "smp/unmap_shootdown/batched/batch=256/vcpus=2"
    );
    assert_eq!(own.boots, [0]);
    // Quick and full figures differ at the same parameters, and that is no
    // determinism failure: they were different machines.
    assert!(s.counted_differences().is_empty());
    assert!(hbreport::check::check_all(&s)
        .iter()
        .all(|p| !p.contains("differs between counting boots")));

    // Synthetic: the same figure at 2 vCPUs on a 4- and a 16-vCPU machine,
    // different values: two figures, both identical across their boots.
    let boot = |vcpus, x| {
        text(&[
            env(vcpus, "instructions"),
            result_unit(
                "smp",
                "unmap_shootdown",
                "batched",
                256,
                2,
                x,
                json!({}),
                "instructions",
            ),
        ])
    };
    let (a, b, c) = (boot(4, 100.0), boot(16, 120.0), boot(4, 100.0));
    let s = summary_of(&[("c1.log", &a), ("c16.log", &b), ("c2.log", &c)]);
    assert_eq!(s.figures.len(), 2);
    assert!(s.counted_differences().is_empty());
    let ids: Vec<String> = s.figures.iter().map(|f| f.key.id()).collect();
    assert_eq!(
        ids,
        [
            "smp/unmap_shootdown/batched/batch=256/vcpus=2",
            "smp/unmap_shootdown/batched/batch=256/vcpus=2/smp=16"
        ]
    );
    assert_eq!(s.figures[0].values, [100.0, 100.0]);
    // results.json says which machine each came from, and validates.
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let doc: Value = serde_json::from_str(&built.results_json).unwrap();
    assert!(hbreport::results::validate(&doc).is_empty());
    let m: Vec<u64> = doc["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["machine_vcpus"].as_u64().unwrap())
        .collect();
    assert_eq!(m, [4, 16]);
}

fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.tag_name().name() == "text")
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

/// How many drawn lines (polylines) an SVG holds in `colour` (#rrggbb).
fn lines_in(svg: &str, colour: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.tag_name().name() == "polyline")
        .filter(|n| {
            n.attribute("stroke")
                .is_some_and(|s| s.eq_ignore_ascii_case(colour))
        })
        .count()
}

#[test]
fn the_new_plots_parse_and_hold_their_series() {
    let s = with_smp16();
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let plot = |f: &str| {
        built
            .plots
            .iter()
            .find(|p| p.file == f)
            .unwrap_or_else(|| panic!("no {f}"))
            .svg
            .clone()
    };
    // smp at 1..16 vCPUs: three panels, both backends, every tick labelled.
    let svg = plot("smp_vcpus.svg");
    let t = svg_texts(&svg);
    for want in [
        "smp unmap with shootdown at 1 to 16 vCPUs: cost and IPIs per page",
        "counted: guest instructions per page",
        "timed: TSC cycles per page",
        "IPIs per page, from the queue's counters",
        "vCPUs holding the pages",
        "immediate",
        "batched",
        "1",
        "15",
    ] {
        assert!(
            t.iter().any(|x| x == want),
            "smp_vcpus.svg lacks {want:?}: {t:?}"
        );
    }
    assert!(
        t.iter()
            .any(|x| x.contains("16 vCPUs") && x.contains("rev ")),
        "subtitle names the 16-vCPU machine: {t:?}"
    );
    // A line per backend in each of the three panels.
    // A line per backend in each of the three panels, and its legend's.
    assert_eq!(lines_in(&svg, "#D62728"), 3 * 2, "immediate");
    assert_eq!(lines_in(&svg, "#1F77B4"), 3 * 2, "batched");

    // scale: counted and timed, private and shared, the target's bound.
    let svg = plot("scale.svg");
    let t = svg_texts(&svg);
    for want in [
        "counted: guest instructions",
        "timed: TSC cycles",
        "private regions",
        "shared region",
        "target: private ≤ 1 vCPU's + 10%",
        "vCPUs mapping and unmapping at once (log2 scale)",
        "1",
        "2",
        "4",
        "8",
        "16",
    ] {
        assert!(
            t.iter().any(|x| x == want),
            "scale.svg lacks {want:?}: {t:?}"
        );
    }

    // Page sizes: a series per operation and size, both kinds.
    let svg = plot("pagesize.svg");
    let t = svg_texts(&svg);
    for op in pagesize::OPERATIONS {
        for size in ["4 KiB", "2 MiB"] {
            let want = format!("{op} ({size})");
            assert!(
                t.iter().filter(|x| **x == want).count() == 2,
                "pagesize.svg: {want:?} not in both panels: {t:?}"
            );
        }
    }
    assert!(t
        .iter()
        .any(|x| x == "memory covered per flush, MiB (batch × page size, log scale)"));
}

#[test]
fn the_sections_show_their_figures_from_the_recorded_run() {
    let s = with_smp16();
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let md = &built.report_md;
    assert!(md.contains("Of these boots, 1 counting and 1 timed ran a 16-vCPU machine"));
    // The smp table at up to 16 vCPUs: 16 rows, the last with 15 IPIs per
    // page immediate (every other vCPU, once a page).
    let smp = md
        .split("### smp at up to 16 vCPUs")
        .nth(1)
        .expect("the 16-vCPU smp section");
    let last = smp
        .lines()
        .find(|l| l.starts_with("| 16 |"))
        .expect("16-vCPU row");
    assert!(last.contains("| 15.000 / 0.0586 |"), "{last}");
    // The scale table from the 16-vCPU boots, rows 1..16.
    let sc = md.split("### scale:").nth(1).unwrap();
    assert!(sc.starts_with(" N vCPUs mapping"));
    assert!(sc.contains("From the 16-vCPU boots."));
    for v in [1, 2, 4, 8, 16] {
        assert!(sc.contains(&format!("\n| {v} | ")), "no row for {v}");
    }
    assert!(sc.contains("The timed boots ran single-threaded TCG"));
    // Page sizes per MiB: six rows, 4 KiB times 256 and 2 MiB times one half.
    let ps = md.split("### page sizes").nth(1).unwrap();
    let rows: Vec<&str> = ps
        .lines()
        .take_while(|l| !l.starts_with("###"))
        .filter(|l| l.starts_with("| `"))
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    let q = |name: &str, backend: &str, batch: u64| {
        s.find(
            &hbreport::log::Query {
                suite: Some("mm"),
                name: Some(name),
                backend: Some(backend),
                batch: Some(batch),
                vcpus: Some(1),
            },
            FigKind::Counted,
        )
        .unwrap()
        .median
    };
    // The quick run's largest batches: 256 of 4 KiB, 8 of 2 MiB.
    let small = q("map_unmap", "batched", 256) * 256.0;
    let large = q("map_unmap_2m", "batched", 8) / 2.0;
    let batched = rows
        .iter()
        .find(|r| r.starts_with("| `map_unmap` | batched |"))
        .unwrap();
    let cells: Vec<&str> = batched.split('|').map(str::trim).collect();
    assert_eq!(cells[3], hbreport::report::thousands(small), "{batched}");
    assert_eq!(cells[4], hbreport::report::thousands(large), "{batched}");
    assert_eq!(cells[5], hbreport::report::ratio(small / large));
}

#[test]
fn a_missing_suite_gives_a_note_not_a_panic() {
    // Synthetic: only the exits suite ran.
    let only = text(&[
        env(4, "cycles"),
        result_unit("exits", "cpuid", "none", 1, 1, 100.0, Value::Null, "cycles"),
        exit_line(0),
    ]);
    let s = summary_of(&[("serial-timed-1.log", &only)]);
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").unwrap();
    let md = &built.report_md;
    assert!(md.contains("No `scale` figures in this run: the suite did not run"));
    assert!(md.contains("No operation was measured in both page sizes in this run"));
    assert!(!md.contains("### smp at up to"));
    for f in ["scale.svg", "pagesize.svg", "smp_vcpus.svg"] {
        assert!(
            built.plots.iter().all(|p| p.file != f),
            "{f} drawn from nothing"
        );
    }
    let ts = targets::evaluate(&s);
    assert_eq!(target(&ts, COUNTED).status, Status::Missing);
    assert!(target(&ts, COUNTED)
        .margin
        .contains("no counted `scale` figures"));
    assert_eq!(target(&ts, TIMED).status, Status::Missing);

    // Synthetic: a 2 MiB figure without its 4 KiB twin pairs with nothing.
    let mut big: Value = serde_json::from_str(
        &result_unit(
            "mm",
            "map_unmap_2m",
            "batched",
            8,
            1,
            700.0,
            json!({}),
            "instructions",
        )[3..],
    )
    .unwrap();
    big["page_bytes"] = json!(2u64 << 20);
    let s = summary_of(&[(
        "c.log",
        &text(&[env(1, "instructions"), format!("HB {big}")]),
    )]);
    assert!(pagesize::pairs(&s).is_empty());
    // A page size that is no page size is a malformed record, not a figure.
    big["page_bytes"] = json!(3000);
    let log = hbreport::log::parse(&format!("HB {big}"), false).unwrap_err();
    assert!(log.to_string().contains("no HB result record"), "{log}");
    let strict = hbreport::log::parse(&format!("HB {big}"), true).unwrap_err();
    assert!(strict.to_string().contains("page_bytes=3000"), "{strict}");
}

#[test]
fn run_logs_name_the_tcg_threading_of_each_boot() {
    let l = vmm::parse(
        "run-qemu: qemu-system-x86_64 -machine microvm -accel tcg,thread=multi -cpu max -smp 2\n",
        "run-timed-1.log",
    )
    .unwrap();
    let mut b = hbreport::parse_boot(
        "serial-timed-1.log",
        &scale_boot(2, "cycles", &[1], &[10.0]),
        false,
        &hbreport::host::Host {
            tcg_thread: Some("single".into()),
            ..Default::default()
        },
    )
    .unwrap();
    // host.json alone says single; the command line QEMU was given wins.
    assert_eq!(b.tcg_thread().as_deref(), Some("single"));
    assert_eq!(b.tcg_thread_source(), "host.json");
    b.launch = Some(l);
    assert_eq!(b.tcg_thread().as_deref(), Some("multi"));
    assert_eq!(b.tcg_thread_source(), "the QEMU command line");
    assert_eq!(b.mode(), "TCG, multi-threaded");
}

#[test]
fn odd_figures_make_a_report_not_a_panic() {
    // Synthetic edge cases for the new sections: zero and huge medians,
    // the most vCPUs a record may claim, a 1 GiB page, a shared figure
    // with no private one, a 2 MiB figure with a zero-cost 4 KiB twin.
    let page = |name: &str, bytes: u64, batch: u64, x: f64, unit: &str| {
        let mut v: Value = serde_json::from_str(
            &result_unit(
                "mm",
                name,
                "batched",
                batch,
                1,
                x,
                json!({"pte_writes": 1}),
                unit,
            )[3..],
        )
        .unwrap();
        v["page_bytes"] = json!(bytes);
        format!("HB {v}")
    };
    let logs = [
        text(&[
            env(4096, "instructions"),
            result_unit(
                "scale",
                scale::PRIVATE,
                "batched",
                256,
                1,
                0.0,
                json!({}),
                "instructions",
            ),
            result_unit(
                "scale",
                scale::PRIVATE,
                "batched",
                256,
                4096,
                1e300,
                json!({}),
                "instructions",
            ),
            result_unit(
                "scale",
                scale::SHARED,
                "batched",
                64,
                2,
                5.0,
                json!({}),
                "instructions",
            ),
            page("map_unmap", 4096, 256, 0.0, "instructions"),
            page("map_unmap_2m", 1 << 30, 1, 1e300, "instructions"),
            result_unit(
                "smp",
                "unmap_shootdown",
                "immediate",
                256,
                4096,
                0.0,
                json!({"ipis": 0}),
                "instructions",
            ),
            exit_line(0),
        ]),
        text(&[
            env(1, "cycles"),
            result_unit(
                "scale",
                scale::SHARED,
                "batched",
                64,
                1,
                3.0,
                json!({}),
                "cycles",
            ),
            page("protect", 4096, 1, 10.0, "cycles"),
            page("protect_2m", 2 << 20, 1, 0.0, "cycles"),
        ]),
    ];
    for (i, l) in logs.iter().enumerate() {
        let s = summary_of(&[(&format!("serial-count-{i}.log") as &str, l.as_str())]);
        let built = hbreport::build(&s, "2026-01-01T00:00:00Z").expect("built");
        let doc: Value = serde_json::from_str(&built.results_json).unwrap();
        assert!(hbreport::results::validate(&doc).is_empty());
        assert!(built.report_md.contains("### scale:"));
        for p in &built.plots {
            roxmltree::Document::parse(&p.svg).expect("well-formed SVG");
        }
    }
    // Both logs as two machines of one run.
    let s = summary_of(&[("a.log", logs[0].as_str()), ("b.log", logs[1].as_str())]);
    let built = hbreport::build(&s, "2026-01-01T00:00:00Z").expect("built");
    assert!(built.report_md.contains("Of these boots"));
}

#[test]
fn a_host_record_of_another_machine_does_not_hide_the_run() {
    // Synthetic: host.json says 8 vCPUs, the only boot had 4: the boot is
    // the run's own machine, not "another" one with its figures set aside.
    let log = scale_boot(4, "instructions", &[1, 2], &[400.0, 401.0]);
    let host = hbreport::host::Host {
        smp: Some(8),
        ..Default::default()
    };
    let boot = hbreport::parse_boot("serial-count-1.log", &log, false, &host).unwrap();
    let s = Summary::new(vec![boot], host);
    assert_eq!(s.primary_vcpus, Some(4));
    assert!(s.other_machines().is_empty());
    assert_eq!(s.suite("scale", FigKind::Counted).count(), 4);
}

#[test]
fn the_floor_target_judges_a_2mib_figure_at_its_largest_batch() {
    // Synthetic: 2 MiB figures go up to a batch of 32, below the ring's 256.
    let mut lines = vec![env(1, "instructions")];
    for b in [1, 8, 32] {
        for (backend, x) in [("batched", 700.0), ("floor", 140.0)] {
            lines.push(result_unit(
                "mm",
                "map_unmap_2m",
                backend,
                b,
                1,
                x,
                json!({}),
                "instructions",
            ));
        }
    }
    let ts = targets::evaluate(&summary_of(&[("c.log", &text(&lines))]));
    let t = target(&ts, "minimum (map_unmap_2m)");
    assert_eq!(t.status, Status::NotMet, "{t:?}");
    assert!(
        t.requirement.contains("at its largest batch, 32"),
        "{}",
        t.requirement
    );
    assert!(
        t.measured.starts_with("5.00x (700 vs 140"),
        "{}",
        t.measured
    );
}

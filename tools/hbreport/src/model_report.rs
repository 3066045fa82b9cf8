//! The cost model's sections of report.md (the check on this run, the
//! projections, the reference costs with their sources) and its plot,
//! `projection.svg`. The numbers come from model.rs; this module only
//! lays them out.

use crate::model::{exit_name, median, Check, Event, Fit, Model, Projected, TARGET_ERROR};
use crate::platforms::{Platform, NATIVE_CPI, REFERENCE};
use crate::report::{ratio, thousands};
use crate::sources;
use crate::summary::Summary;
use std::fmt::Write;

/// The columns the model's tables use, defined for the report's glossary
/// (report.rs looks here as well as in its own COLUMNS).
pub const COLUMNS: &[(&str, &str)] = &[
    ("event", "what the model prices, as the guest counts it"),
    ("this run", "the event's cost here: its `exits` figure in cycles, less its own instructions at the fitted CPI"),
    ("from", "the `exits` figure the cost comes from"),
    ("suite", "the benchmark suite"),
    ("checked", "figures predicted, the floor's left out (it is in the fit)"),
    ("within ±25%", "figures whose prediction is within 25% of the measurement"),
    ("median error", "the median of |predicted − measured| ÷ measured"),
    ("largest error", "the largest |predicted − measured| ÷ measured"),
    ("bias", "the median signed error: negative, the model predicts too little"),
    ("unsteady", "figures whose timed boots spread by more than 25% ((max − min) ÷ median): their measurement moves more between boots than the target allows"),
    ("predicted", "instructions × CPI + Σ events × this run's costs, cycles per operation"),
    ("measured cycles", "the timed median across boots, cycles per operation"),
    ("error", "(predicted − measured) ÷ measured"),
    ("residual as", "what one term alone would have to cost for the prediction to match"),
    ("platform", "a host class the model projects onto (its costs under *Reference costs*); platforms whose cells would repeat share a row"),
    ("cost", "cycles per event: a range where sources disagree, ≥ where only a lower bound is published"),
    ("why", "what the cost stands for on that platform"),
    ("sources", "the numbered sources below the table"),
];

// --- markdown -----------------------------------------------------------------

/// Prints the definitions of some of [`COLUMNS`], before their table.
fn define(out: &mut String, keys: &[&str]) {
    for k in keys {
        if let Some((k, d)) = COLUMNS.iter().find(|(c, _)| c == k) {
            let _ = writeln!(out, "- **{k}**: {d}.");
        }
    }
    let _ = writeln!(out);
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.0}%", x * 100.0)
    } else {
        "n/a".into()
    }
}

fn ratio_range((lo, hi): (f64, f64)) -> String {
    if !lo.is_finite() || !hi.is_finite() {
        return "n/a".into();
    }
    if (ratio(lo) == ratio(hi)) || (hi - lo).abs() < 0.005 {
        ratio(lo)
    } else {
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        format!("{}–{}", ratio(a), ratio(b))
    }
}

/// The model's sections of report.md: the check, the projections, the
/// reference costs with their sources.
pub fn markdown(out: &mut String, m: &Model) {
    check_section(out, m);
    projection_section(out, m);
    reference_section(out);
}

fn check_section(out: &mut String, m: &Model) {
    let _ = writeln!(out, "## The cost model, checked on this run\n");
    let _ = writeln!(
        out,
        "The model: cycles/op ≈ guest instructions/op × CPI + Σ counted events/op × cost(event, platform). \
         On this run it is checked: each timed figure is predicted from its counted twin's instructions, \
         a CPI fitted once on the floor figures and the bare `pte_write` loop, and the costs the `exits` \
         suite measured here, and compared with its measurement. One CPI and one cost per event serve \
         every figure; nothing is fitted per figure. The target is ±{:.0}% for the mm, smp and workload \
         figures.\n",
        TARGET_ERROR * 100.0
    );
    let Some(cpi) = m.fit.cpi else {
        let _ = writeln!(
            out,
            "Not checked: the check needs a counting boot and a timed boot of the `exits` and `mm` suites \
             (this run has {}).\n",
            if m.fit.exits.is_empty() {
                "no exits figure with both"
            } else {
                "no floor figure with both"
            }
        );
        return;
    };
    let _ = writeln!(
        out,
        "Fitted CPI: **{cpi:.2}** cycles per guest instruction (least squares over {} figures on the relative error, on the medians \
         across boots). Each timed boot is predicted with its own fit, since a shared host runs one boot faster \
         than another (CPI per timed boot with floor figures to fit on, in boot order: {}). This run's costs per event, from the medians across boots:\n",
        m.fit.fit_figures,
        if m.boot_fits.is_empty() {
            "none".to_string()
        } else {
            m.boot_fits
                .iter()
                .map(|(_, f)| f.cpi.map_or("?".into(), |c| format!("{c:.2}")))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    define(out, &["event", "this run", "from"]);
    let _ = writeln!(out, "| event | this run | from |\n|---|---|---|");
    for (e, c) in &m.fit.costs {
        let from = exit_name(*e).map_or("not measured here: priced at 0".to_string(), |ns| {
            let got: Vec<String> = ns
                .iter()
                .filter_map(|n| {
                    m.fit.exits.iter().find(|(x, _)| x == n).map(|(n, f)| {
                        format!(
                            "`{n}`: {} cycles, {} instructions",
                            thousands(f.cycles),
                            thousands(f.instructions)
                        )
                    })
                })
                .take(1)
                .collect();
            // A cost the subtraction would make negative is priced at 0:
            // the exit cost less than its own instructions at the CPI.
            let clamped = if *c == Some(0.0) && !got.is_empty() {
                " (less than its instructions at the fitted CPI: clamped at 0)"
            } else {
                ""
            };
            if got.is_empty() {
                format!("`{}` not measured", ns[0])
            } else if *e == Event::Touch {
                format!("{}, less `invlpg`{clamped}", got.join(""))
            } else {
                format!("{}{clamped}", got.join(""))
            }
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            e.label(),
            c.map_or("unknown".into(), thousands),
            cell(&from)
        );
    }
    let _ = writeln!(out);
    define(
        out,
        &[
            "suite",
            "checked",
            "within ±25%",
            "median error",
            "largest error",
            "bias",
            "unsteady",
        ],
    );
    let _ = writeln!(
        out,
        "| suite | checked | within ±25% | median error | largest error | bias | unsteady |\n|---|---|---|---|---|---|---|"
    );
    for se in &m.suites {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0}% | {:.0}% | {} | {} |",
            se.suite,
            se.figures,
            se.within,
            se.median_abs * 100.0,
            se.max_abs * 100.0,
            pct(se.median),
            se.unsteady
        );
    }
    let _ = writeln!(out);
    let checked: usize = m.suites.iter().map(|x| x.figures).sum();
    let unsteady: usize = m.suites.iter().map(|x| x.unsteady).sum();
    if checked > 0 && unsteady * 2 > checked {
        let _ = writeln!(
            out,
            "**The measurements move more than the target.** {unsteady} of the {checked} checked figures spread by \
             more than {:.0}% across this run's timed boots (the fitted CPI per boot above shows how much the \
             host's speed changed between them), so an error within ±{:.0}% cannot be told apart from the \
             host's noise here; the counted figures, which do not move, are the ones to compare builds on.\n",
            TARGET_ERROR * 100.0,
            TARGET_ERROR * 100.0
        );
    }
    // Per figure: every one, in one table; a miss says which term would
    // have to change.
    // Folded: the table has a row per timed figure (about 250 in a full
    // run); GitHub and most viewers render <details> collapsed.
    let _ = writeln!(
        out,
        "<details>\n<summary>Every figure, predicted against measured ({} figures; cycles per operation; \
         <i>fit</i> marks the floor figures the CPI was fitted on)</summary>\n",
        m.checks.len()
    );
    define(
        out,
        &["predicted", "measured cycles", "error", "residual as"],
    );
    let _ = writeln!(
        out,
        "| figure | predicted | measured cycles | error | residual as |\n|---|---|---|---|---|"
    );
    for c in &m.checks {
        let miss = c.error().abs() > TARGET_ERROR;
        let diag = if miss {
            c.diagnosis(&m.fit)
                .iter()
                .map(|(t, v)| format!("{t}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| `{}`{} | {} | {} | {}{} | {} |",
            c.id(),
            if c.in_fit { " (fit)" } else { "" },
            thousands(c.predicted),
            thousands(c.measured),
            pct(c.error()),
            if miss { " ✗" } else { "" },
            cell(&diag)
        );
    }
    let _ = writeln!(out, "\n</details>\n");
    misses(out, m);
}

/// The term that best explains a group of misses: the one every missed
/// figure of the group has, whose needed value (what it would have to be
/// for each figure's prediction to match) varies least across them.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    /// "CPI" or an event's label.
    pub term: String,
    /// Its value in the fit (cycles per instruction, or per event).
    pub now: f64,
    /// The needed value: the median, the least and the greatest.
    pub needed: f64,
    pub lo: f64,
    pub hi: f64,
}

pub fn suspect(missed: &[&Check], fit: &Fit) -> Option<Suspect> {
    if missed.is_empty() {
        return None;
    }
    let mut best: Option<(f64, Suspect)> = None;
    let mut consider = |term: String, now: f64, needed: Vec<f64>| {
        if needed.len() != missed.len() || needed.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return;
        }
        let lo = needed.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = needed.iter().cloned().fold(0.0, f64::max);
        let mid = median(needed).unwrap_or(f64::NAN);
        // Spread relative to the change it asks for (a term that needs
        // the same change everywhere is the likeliest), plus the change
        // relative to the term (the smaller correction is the likelier,
        // which decides between terms one figure cannot tell apart).
        let change = (mid - now).abs().max(f64::MIN_POSITIVE);
        let relative = if now > 0.0 {
            change / now
        } else {
            f64::MAX / 4.0
        };
        let score = (hi - lo) / change + relative;
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((
                score,
                Suspect {
                    term,
                    now,
                    needed: mid,
                    lo,
                    hi,
                },
            ));
        }
    };
    if let Some(cpi) = fit.cpi {
        let needed = missed
            .iter()
            .filter(|c| c.instructions > 0.0)
            .map(|c| cpi + (c.measured - c.predicted) / c.instructions)
            .collect();
        consider("CPI".to_string(), cpi, needed);
    }
    for e in Event::ALL {
        if matches!(
            e,
            Event::UnsyncStore | Event::InSyncStore | Event::Resync | Event::Round
        ) {
            continue;
        }
        let now = fit.cost(e).unwrap_or(0.0);
        let needed = missed
            .iter()
            .filter(|c| c.events.get(e) > 0.0)
            .map(|c| now + (c.measured - c.predicted) / c.events.get(e))
            .collect();
        consider(e.label().to_string(), now, needed);
    }
    best.map(|(_, s)| s)
}

/// Which term is wrong, per suite that misses (4 KiB and 2 MiB figures
/// apart: TCG treats an invalidation inside a large page differently).
fn misses(out: &mut String, m: &Model) {
    let mut any = false;
    for se in &m.suites {
        for large in [false, true] {
            let missed: Vec<&Check> = m
                .checks
                .iter()
                .filter(|c| {
                    c.suite == se.suite
                        && !c.in_fit
                        && c.error().abs() > TARGET_ERROR
                        && c.name.ends_with("_2m") == large
                })
                .collect();
            if missed.is_empty() {
                continue;
            }
            if !any {
                let _ = writeln!(
                    out,
                    "Where the model misses, and the term that explains it best:\n"
                );
                any = true;
            }
            for (how, low) in [("predicted too low", true), ("predicted too high", false)] {
                let g: Vec<&Check> = missed
                    .iter()
                    .copied()
                    .filter(|c| (c.error() < 0.0) == low)
                    .collect();
                if g.is_empty() {
                    continue;
                }
                let what = match suspect(&g, &m.fit) {
                    Some(s) if s.term == "CPI" => format!(
                        "the instruction term: a CPI of {:.2} (from {:.2} to {:.2} across them) instead of {:.2}",
                        s.needed, s.lo, s.hi, s.now
                    ),
                    Some(s) => format!(
                        "{}: {} cycles each (from {} to {}) instead of {}",
                        s.term,
                        thousands(s.needed),
                        thousands(s.lo),
                        thousands(s.hi),
                        thousands(s.now)
                    ),
                    None => "no single term".to_string(),
                };
                let _ = writeln!(
                    out,
                    "- **{}**{}: {} {how}; best explained by {what}.",
                    se.suite,
                    if large { ", 2 MiB pages" } else { "" },
                    if g.len() == 1 {
                        "1 figure".to_string()
                    } else {
                        format!("{} figures", g.len())
                    }
                );
            }
        }
    }
    if any {
        let _ = writeln!(
            out,
            "\nWhat this run prices at zero: the TLB refill after a full flush (TCG refills its software TLB on \
             the next accesses) and the resync of unsync tables (no shadow paging here). What the exits suite \
             measures in a setting unlike the figures': an IPI round trip to an idle vCPU, while a shootdown \
             interrupts busy ones (single-threaded TCG runs one vCPU at a time, so an IPI waits for its \
             target's turn); an `invlpg` of a 4 KiB page, while TCG flushes its whole TLB for an invalidation \
             inside a 2 MiB page it has cached. And one CPI for all code, while TCG's cost per instruction \
             depends on the instructions (the queue's loops against the API's calls).\n"
        );
    }
}

/// Platforms whose cells would repeat share a row.
fn collapsed(rows: Vec<(Platform, Vec<String>)>) -> Vec<(Vec<Platform>, Vec<String>)> {
    let mut out: Vec<(Vec<Platform>, Vec<String>)> = Vec::new();
    for (p, cells) in rows {
        match out.iter_mut().find(|(_, c)| *c == cells) {
            Some((ps, _)) => ps.push(p),
            None => out.push((vec![p], cells)),
        }
    }
    out
}

fn projection_section(out: &mut String, m: &Model) {
    let _ = writeln!(
        out,
        "## Projection onto other platforms (arithmetic, not a measurement)\n"
    );
    let _ = writeln!(
        out,
        "The same model with published costs (*Reference costs* below) in place of this run's: the counted \
         instructions at an assumed native CPI of {} (no source: a current core retiring this code at one to \
         two instructions per cycle), plus each counted event at its platform's cost. Ranges follow the \
         sources' ranges (both ends of every range at once: the low end and the high end); ≥ marks a total \
         with a lower-bound cost in it. It assumes the guest issues the same operations there as here. \
         Under shadow paging the first store to a leaf table per sync epoch faults and the rest are plain \
         stores, so what batching saves there is the `invlpg` exits and the IPIs, not the stores. With \
         several vCPUs the instructions are every vCPU's (the readers' loops too), which overstates the \
         software term. The guest issues no hypercall of its own (it drains its queue itself); the one \
         PV_SEND_IPI would add is priced per shootdown round.\n",
        NATIVE_CPI.text()
    );
    if m.projected.is_empty() {
        let _ = writeln!(
            out,
            "No figure has both an immediate and a batched counted twin with counters: nothing to project.\n"
        );
        return;
    }
    // One table: immediate ÷ batched, one column per projected figure,
    // one row per platform, repeated rows collapsed.
    let _ = writeln!(
        out,
        "Projected immediate ÷ batched (above 1: batching saves); figures whose columns would repeat are \
         merged:\n"
    );
    // Each figure's column: this run predicted and measured, then every
    // platform; figures whose columns are the same share one.
    let this_run =
        |r: Option<(f64, f64)>| r.map_or("n/a".to_string(), |(i, b)| ratio_range((i / b, i / b)));
    let mut cols: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for pr in &m.projected {
        let mut cells = vec![
            this_run(pr.this_run_predicted),
            this_run(pr.this_run_measured),
        ];
        cells.extend((0..Platform::ALL.len()).map(|i| ratio_range(pr.ratio(i))));
        match cols.iter_mut().find(|(_, c)| *c == cells) {
            Some((names, _)) => names.push(pr.label()),
            None => cols.push((vec![pr.label()], cells)),
        }
    }
    define(out, &["platform"]);
    let mut head = "| platform |".to_string();
    let mut rule = "|---|".to_string();
    for (names, _) in &cols {
        let _ = write!(head, " {} |", cell(&names.join("; ")));
        rule += "---|";
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for (i, label) in [
        "this run, the model's prediction",
        "this run, measured (timed medians)",
    ]
    .iter()
    .enumerate()
    {
        let cells: Vec<String> = cols.iter().map(|(_, c)| c[i].clone()).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let rows: Vec<(Platform, Vec<String>)> = Platform::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, cols.iter().map(|(_, c)| c[i + 2].clone()).collect()))
        .collect();
    for (ps, cells) in collapsed(rows) {
        let label: Vec<&str> = ps.iter().map(|p| p.label()).collect();
        let _ = writeln!(
            out,
            "| {} | {} |",
            cell(&label.join("; ")),
            cells.join(" | ")
        );
    }
    let _ = writeln!(out);
    // Per suite: the cycles behind the ratios.
    for suite in ["mm", "cpu", "smp", "workload"] {
        let prs: Vec<&Projected> = m.projected.iter().filter(|p| p.suite == suite).collect();
        if prs.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "`{suite}`, projected cycles per operation, immediate → batched:\n"
        );
        let mut head = "| platform |".to_string();
        let mut rule = "|---|".to_string();
        for pr in &prs {
            let _ = write!(head, " {} |", cell(&pr.label()));
            rule += "---|";
        }
        let rows: Vec<(Platform, Vec<String>)> = Platform::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    *p,
                    prs.iter()
                        .map(|pr| format!("{} → {}", pr.cells[i].0.text(), pr.cells[i].1.text()))
                        .collect(),
                )
            })
            .collect();
        let _ = writeln!(out, "{head}\n{rule}");
        for (ps, cells) in collapsed(rows) {
            let label: Vec<&str> = ps.iter().map(|p| p.label()).collect();
            let _ = writeln!(
                out,
                "| {} | {} |",
                cell(&label.join("; ")),
                cells.join(" | ")
            );
        }
        let _ = writeln!(out);
    }
}

fn reference_section(out: &mut String) {
    let _ = writeln!(out, "## Reference costs and sources\n");
    let _ = writeln!(
        out,
        "Cycles per event on each platform. Ranges span the sources (or one source's two settings); ≥ marks a \
         lower bound where no published figure covers the whole cost. The CPU generations differ between \
         sources (each is named below), so a row mixes generations wherever its sources do.\n"
    );
    let mut used: Vec<&str> = Vec::new();
    for r in REFERENCE {
        for k in r.sources {
            if !used.contains(k) {
                used.push(k);
            }
        }
    }
    let num = |k: &str| used.iter().position(|x| *x == k).map_or(0, |i| i + 1);
    let _ = writeln!(
        out,
        "<details>\n<summary>The costs, platform by platform ({} platforms)</summary>\n",
        Platform::ALL.len()
    );
    for p in Platform::ALL {
        let _ = writeln!(out, "**{}**\n", p.label());
        if p == Platform::ALL[0] {
            define(out, &["event", "cost", "why", "sources"]);
        }
        let _ = writeln!(out, "| event | cost | why | sources |\n|---|---|---|---|");
        for r in REFERENCE.iter().filter(|r| r.platform == p) {
            let refs: Vec<String> = r.sources.iter().map(|k| format!("[{}]", num(k))).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.event.label(),
                r.cost.text(),
                cell(r.why),
                refs.join(" ")
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "</details>\n\nSources:\n");
    for (i, k) in used.iter().enumerate() {
        match sources::get(k) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{}. {} — {}, {}. <{}>",
                    i + 1,
                    s.cite,
                    s.cpu,
                    s.year,
                    s.link
                );
            }
            None => {
                let _ = writeln!(out, "{}. (missing source `{k}`)", i + 1);
            }
        }
    }
    let _ = writeln!(out);
}

// --- the plot -----------------------------------------------------------------

const SERIES: [plotters::style::RGBColor; 10] = [
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0xd6, 0x27, 0x28),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x94, 0x67, 0xbd),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x8c, 0x56, 0x4b),
    plotters::style::RGBColor(0xe3, 0x77, 0xc2),
    plotters::style::RGBColor(0x7f, 0x7f, 0x7f),
    plotters::style::RGBColor(0xbc, 0xbd, 0x22),
    plotters::style::RGBColor(0x17, 0xbe, 0xcf),
];

/// `projection.svg`: the projected immediate ÷ batched per platform, one
/// series per projected figure, a bar from the low-cost to the high-cost
/// end of each range. The y axis is log10 of the ratio drawn on a linear
/// axis, so no value can make an axis bound infinite; a ratio that is not
/// finite and positive is left out.
pub fn plot(s: &Summary, m: &Model) -> Result<Option<crate::plots::Plot>, crate::plots::Error> {
    let file = "projection.svg".to_string();
    let title =
        "projected immediate ÷ batched, per platform (cost model, not a measurement)".to_string();
    let logr = |x: f64| (x.is_finite() && x > 0.0).then(|| x.log10());
    // Per series: its name, and per platform index the log10 ratio range.
    type Bars = Vec<(usize, f64, f64)>;
    let mut series: Vec<(String, Bars)> = Vec::new();
    let mut flat_names: Vec<String> = Vec::new();
    for pr in &m.projected {
        let pts: Vec<(usize, f64, f64)> = (0..Platform::ALL.len())
            .filter_map(|i| {
                let (a, b) = pr.ratio(i);
                let (a, b) = (logr(a)?, logr(b)?);
                Some((i, a.min(b), a.max(b)))
            })
            .collect();
        // A figure batching leaves within 10% on every platform (a range
        // call, which immediate already flushes once per call) says
        // nothing a bar could show; the caption names them.
        let flat = pts
            .iter()
            .all(|(_, a, b)| *a >= 0.9f64.log10() && *b <= 1.1f64.log10());
        if flat {
            flat_names.push(pr.label().replace('`', ""));
        } else if !pts.is_empty() {
            series.push((pr.label().replace('`', ""), pts));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (_, pts) in &series {
        for (_, a, b) in pts {
            lo = lo.min(*a);
            hi = hi.max(*b);
        }
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let draw = |buf: &mut String| -> Result<(), Box<dyn std::error::Error>> {
        use plotters::prelude::*;
        let n = Platform::ALL.len();
        let root = SVGBackend::with_string(buf, (1100, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&title, ("sans-serif", 20))?;
        let root = root.titled(&crate::report::platform_line(s), ("sans-serif", 12))?;
        let (plot_area, legend) = root.split_horizontally(800);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() > 0.01 || i < 0.0 {
                    return String::new();
                }
                Platform::ALL
                    .get(i as usize)
                    .map(|p| p.key().to_string())
                    .unwrap_or_default()
            })
            .y_labels((hi - lo) as usize + 1)
            .y_label_formatter(&|v| ratio(10f64.powf(*v)))
            .y_desc("immediate ÷ batched (log scale)")
            .x_desc("platform")
            .label_style(("sans-serif", 12))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
            BLACK.mix(0.4),
        ))?;
        let k = series.len() as f64;
        for (j, (_, pts)) in series.iter().enumerate() {
            let colour = SERIES[j % SERIES.len()];
            let dx = (j as f64 - (k - 1.0) / 2.0) * (0.7 / k.max(1.0));
            chart.draw_series(pts.iter().map(|(i, a, b)| {
                Rectangle::new(
                    [(*i as f64 + dx - 0.02, *a), (*i as f64 + dx + 0.02, *b)],
                    colour.filled(),
                )
            }))?;
            chart.draw_series(pts.iter().map(|(i, a, b)| {
                Circle::new((*i as f64 + dx, (a + b) / 2.0), 3, colour.filled())
            }))?;
        }
        let mut y = 30;
        for (j, (name, _)) in series.iter().enumerate() {
            let colour = SERIES[j % SERIES.len()];
            legend.draw(&Rectangle::new([(10, y - 5), (22, y + 5)], colour.filled()))?;
            legend.draw(&Text::new(name.clone(), (28, y - 6), ("sans-serif", 12)))?;
            y += 18;
        }
        root.present()?;
        Ok(())
    };
    let mut svg = String::new();
    draw(&mut svg).map_err(|e| crate::plots::Error {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(crate::plots::Plot {
        file,
        title,
        caption: format!(
            "The cost model's projected immediate ÷ batched for each projected figure on each platform \
             ({}). Each bar spans the ratio with every cost at the low end of its range to every cost at \
             the high end; above the line at 1x batching saves.{} Arithmetic on counted events and \
             published costs, not a measurement.",
            Platform::ALL
                .iter()
                .map(|p| format!("{}: {}", p.key(), p.label()))
                .collect::<Vec<_>>()
                .join("; "),
            if flat_names.is_empty() {
                String::new()
            } else {
                format!(
                    " Left out, within 10% of 1x on every platform: {}.",
                    flat_names.join(", ")
                )
            }
        ),
        svg,
    }))
}

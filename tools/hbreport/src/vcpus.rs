//! The smp suite against vCPUs on the widest machine of the run: bench.sh's
//! full run adds boots at 16 vCPUs that run only the smp and scale suites,
//! so unmapping with shootdowns is measured with 1 to 16 vCPUs holding the
//! pages. Every row comes from that one machine (its counting boot and its
//! timed boots), so the rows share their idle vCPUs and topology; the
//! run's own machine keeps its table and targets in report.rs.
//!
//! Its plot, `smp_vcpus.svg`, puts instructions, cycles and IPIs per page
//! against vCPUs for both backends.

use crate::plots::{self, colour, Panel, Plot, Scale, Series};
use crate::report::platform_line_on;
use crate::summary::{Agg, FigKind, Summary};
use plotters::prelude::SeriesLabelPosition;
use std::fmt::Write;

pub const SUITE: &str = "smp";
/// The 4 KiB figure the table and the plot follow.
pub const NAME: &str = "unmap_shootdown";

/// The machine whose smp figures reach the most vCPUs, when that is not
/// the run's own (whose smp table report.rs prints).
pub fn wide_machine(s: &Summary) -> Option<u64> {
    let own = s
        .suite_any(SUITE)
        .filter(|a| a.key.name == NAME)
        .map(|a| a.key.vcpus)
        .max()
        .unwrap_or(0);
    s.other_machines()
        .into_iter()
        .filter_map(|m| {
            let most = s
                .figures
                .iter()
                .filter(|a| a.key.suite == SUITE && a.key.name == NAME && a.key.machine == Some(m))
                .map(|a| a.key.vcpus)
                .max()?;
            (most > own).then_some((most, m))
        })
        .max()
        .map(|(_, m)| m)
}

fn figs<'a>(s: &'a Summary, m: Option<u64>, backend: &str, kind: FigKind) -> Vec<&'a Agg> {
    let mut v: Vec<&Agg> = s
        .on_machine(m, kind)
        .filter(|a| a.key.suite == SUITE && a.key.name == NAME && a.key.backend == backend)
        .collect();
    v.sort_by_key(|a| a.key.vcpus);
    v.dedup_by_key(|a| a.key.vcpus);
    v
}

/// report.md's table of the wide machine (nothing when the run has none).
pub fn section(out: &mut String, s: &Summary) {
    let Some(m) = wide_machine(s) else {
        return;
    };
    let rows = |backend, kind| figs(s, Some(m), backend, kind);
    let mut vcpus: Vec<u64> = ["immediate", "batched"]
        .iter()
        .flat_map(|b| {
            rows(b, FigKind::Counted)
                .into_iter()
                .chain(rows(b, FigKind::Timed))
        })
        .map(|a| a.key.vcpus)
        .collect();
    vcpus.sort_unstable();
    vcpus.dedup();
    let batch = s
        .on_machine(Some(m), FigKind::Counted)
        .chain(s.on_machine(Some(m), FigKind::Timed))
        .filter(|a| a.key.suite == SUITE && a.key.name == NAME)
        .map(|a| a.key.batch)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "### smp at up to {m} vCPUs: unmap with shootdown, per page (batch {batch})\n\n\
         From the {m}-vCPU boots, which ran only the smp and scale suites (their figures are in results.json \
         with ids ending in `…/smp={m}`). IPIs/page and rounds/page read immediate / batched.\n"
    );
    crate::report::shootdown_rows(out, s, &vcpus, |backend, kind, v| {
        s.on_machine(Some(m), kind).find(|a| {
            a.key.suite == SUITE
                && a.key.name == NAME
                && a.key.backend == backend
                && a.key.vcpus == v
        })
    });
}

/// `smp_vcpus.svg`: instructions, cycles and IPIs per page against vCPUs.
pub fn plots(s: &Summary) -> Result<Vec<Plot>, plots::Error> {
    let Some(m) = wide_machine(s) else {
        return Ok(Vec::new());
    };
    let machine = Some(m);
    let cost = |kind: FigKind| {
        let series = ["immediate", "batched"]
            .iter()
            .filter_map(|b| {
                let f = figs(s, machine, b, kind);
                (!f.is_empty()).then(|| plots::backend_series(b, &f, |a| a.key.vcpus as f64))
            })
            .collect();
        Panel {
            title: match kind {
                FigKind::Counted => "counted: guest instructions per page".into(),
                FigKind::Timed => "timed: TSC cycles per page".into(),
            },
            x: Scale::Int,
            y: Scale::Log10,
            x_desc: "vCPUs holding the pages".into(),
            y_desc: match kind {
                FigKind::Counted => "instructions per page, all vCPUs (log scale)".into(),
                FigKind::Timed => "cycles per page, median (log scale)".into(),
            },
            series,
            vline: None,
            hline: None,
            legend: SeriesLabelPosition::UpperLeft,
        }
    };
    // IPIs from the counters: the counting boot's where there is one.
    let ipis = Panel {
        title: "IPIs per page, from the queue's counters".into(),
        x: Scale::Int,
        y: Scale::Log10,
        x_desc: "vCPUs holding the pages".into(),
        y_desc: "IPIs sent per page (log scale)".into(),
        series: ["immediate", "batched"]
            .iter()
            .filter_map(|b| {
                let mut f = figs(s, machine, b, FigKind::Counted);
                if f.is_empty() {
                    f = figs(s, machine, b, FigKind::Timed);
                }
                let pts: Vec<(f64, f64)> = f
                    .iter()
                    .filter_map(|a| {
                        Some((a.key.vcpus as f64, s.counters_source(a).fig.ipis_per_op()?))
                    })
                    .collect();
                (!pts.is_empty()).then(|| Series {
                    label: (*b).into(),
                    colour: colour(b),
                    dashed: false,
                    wide: false,
                    points: pts,
                    band: vec![],
                })
            })
            .collect(),
        vline: None,
        hline: None,
        legend: SeriesLabelPosition::UpperLeft,
    };
    let panels = vec![cost(FigKind::Counted), cost(FigKind::Timed), ipis];
    if !panels.iter().any(Panel::has_points) {
        return Ok(Vec::new());
    }
    let file = "smp_vcpus.svg".to_string();
    let title = format!("smp unmap with shootdown at 1 to {m} vCPUs: cost and IPIs per page");
    let svg = plots::figure(&title, &platform_line_on(s, machine), &panels).map_err(|e| {
        plots::Error {
            file: file.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(vec![Plot {
        file,
        title,
        caption: format!(
            "From the {m}-vCPU boots (the smp and scale suites only). Unmapping 4 KiB pages that the other vCPUs \
             keep reading: immediate interrupts every holder once per page, batched once per batch. Left, \
             every vCPU's guest instructions per page (counted); middle, TSC cycles per page (timed, median \
             across boots, band across boots); right, IPIs sent per page (log scale, so 1 vCPU's zero is \
             left out). Immediate's IPIs grow as vCPUs − 1 per page, batched's as (vCPUs − 1) ÷ batch."
        ),
        svg,
    }])
}

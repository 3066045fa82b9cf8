//! 4 KiB against 2 MiB pages, per MiB of memory covered: the mm suite's
//! per-page figures (`map_unmap`, `map_touch_unmap`, `protect`) and their
//! 2 MiB forms (`*_2m`), each divided by the memory one operation covers,
//! which the records give as `page_bytes`. A 4 KiB figure is per 4 KiB
//! page, so 256 of them cover a MiB; a 2 MiB figure is per 2 MiB page, so
//! half of one does. Per MiB, the question a hypervisor engineer asks of
//! large pages is answered directly: one entry, one invalidation and one
//! shootdown cover 512 times the memory.
//!
//! Each page size is compared at its largest batch (the most the queue
//! can gather per flush: the ring's 256 pages of 4 KiB, 1 MiB per flush;
//! the suite's 32 pages of 2 MiB, 64 MiB per flush), immediate against
//! batched, counted and timed.

use crate::plots::{self, kind_desc, Panel, Plot, Scale, Series, NAMES};
use crate::report::{cell, count, header, platform_line, ratio, thousands};
use crate::summary::{Agg, FigKind, Summary};
use plotters::prelude::SeriesLabelPosition;
use std::fmt::Write;

const MIB: f64 = (1u64 << 20) as f64;
const SMALL: u64 = 4096;
/// The per-page mm figures that have a 2 MiB form, in report order.
pub const OPERATIONS: &[&str] = &["map_unmap", "map_touch_unmap", "protect"];

/// One operation in both page sizes: the 4 KiB figure's name and the
/// large page's name and size.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub small: String,
    pub large: String,
    pub large_bytes: u64,
}

/// The page size of a name's figures, from their records (None: no record
/// of that name says).
fn page_bytes(s: &Summary, name: &str) -> Option<u64> {
    s.suite_any("mm")
        .filter(|a| a.key.name == name)
        .find_map(|a| a.fig.page_bytes)
}

/// Every mm operation measured in both sizes: a name whose records say a
/// page larger than 4 KiB, paired with the name without its `_2m` suffix
/// whose records say 4 KiB.
pub fn pairs(s: &Summary) -> Vec<Pair> {
    let names = crate::log::ordered(s.suite_any("mm").map(|a| a.key.name.as_str()), &[]);
    let mut out: Vec<Pair> = names
        .iter()
        .filter_map(|n| {
            let large_bytes = page_bytes(s, n).filter(|b| *b > SMALL)?;
            let small = n.strip_suffix("_2m")?;
            (page_bytes(s, small) == Some(SMALL)).then(|| Pair {
                small: small.to_string(),
                large: n.to_string(),
                large_bytes,
            })
        })
        .collect();
    out.sort_by_key(|p| {
        OPERATIONS
            .iter()
            .position(|o| *o == p.small)
            .unwrap_or(OPERATIONS.len())
    });
    out
}

fn find<'a>(s: &'a Summary, name: &str, backend: &str, batch: u64, k: FigKind) -> Option<&'a Agg> {
    s.of_kind(k).find(|a| {
        a.key.suite == "mm"
            && a.key.name == name
            && a.key.backend == backend
            && a.key.batch == batch
            && a.key.vcpus == 1
    })
}

/// The largest batch at which `name` has both immediate and batched.
fn top_batch(s: &Summary, name: &str) -> Option<u64> {
    s.suite_any("mm")
        .filter(|a| a.key.name == name && a.key.vcpus == 1 && a.key.backend == "batched")
        .map(|a| a.key.batch)
        .filter(|b| {
            s.suite_any("mm")
                .any(|a| a.key.name == name && a.key.batch == *b && a.key.backend == "immediate")
        })
        .max()
}

/// A figure per MiB: its value times the operations a MiB takes.
fn per_mib(a: &Agg, page: u64) -> f64 {
    a.median * MIB / page as f64
}

/// A per-MiB cell: counted exact, timed with the spread across boots.
fn mib_cell(a: Option<&Agg>, page: u64) -> String {
    let Some(a) = a else {
        return "—".into();
    };
    let v = per_mib(a, page);
    match a.kind {
        FigKind::Counted => {
            // Exact, but per MiB the decimals of a whole count carry nothing.
            let mut t = thousands(v);
            if !a.identical {
                t += " ⚠ differs";
            }
            t
        }
        FigKind::Timed => {
            let mut t = thousands(v);
            if a.values.len() > 1 {
                let pct = a.spread() * 100.0;
                t += &if a.noisy() {
                    format!(" (⚠ {pct:.0}%)")
                } else {
                    format!(" ({pct:.0}%)")
                };
            }
            t
        }
    }
}

fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// report.md's page-size section (under *Figures*).
pub fn section(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "### page sizes: 4 KiB against 2 MiB, per MiB covered\n"
    );
    let ps = pairs(s);
    if ps.is_empty() {
        let _ = writeln!(
            out,
            "No operation was measured in both page sizes in this run: no `mm` figure whose record says a \
             page larger than 4 KiB (`page_bytes`) beside its 4 KiB form (the mm suite did not run, or its \
             kernel predates 2 MiB pages).\n"
        );
        return;
    }
    let mut batches = Vec::new();
    for p in &ps {
        if let (Some(b4), Some(b2)) = (top_batch(s, &p.small), top_batch(s, &p.large)) {
            batches.push((p, b4, b2));
        }
    }
    if let Some((p, b4, b2)) = batches.first() {
        let _ = writeln!(
            out,
            "Each figure per MiB of memory it covers: a 4 KiB operation times 256, a {} one times {}. Each size at \
             its largest batch: 4 KiB pages {b4} per flush ({} per flush), {} pages {b2} per flush ({} per \
             flush). privileged/MiB reads 4 KiB / {}.\n",
            size_name(p.large_bytes),
            MIB / p.large_bytes as f64,
            size_name(b4 * SMALL),
            size_name(p.large_bytes),
            size_name(b2 * p.large_bytes),
            size_name(p.large_bytes)
        );
    }
    let _ = writeln!(
        out,
        "{}",
        header(&[
            "figure",
            "backend",
            "4 KiB instructions/MiB",
            "2 MiB instructions/MiB",
            "4 KiB ÷ 2 MiB instructions",
            "4 KiB cycles/MiB",
            "2 MiB cycles/MiB",
            "4 KiB ÷ 2 MiB cycles",
            "privileged/MiB",
        ])
    );
    for (p, b4, b2) in &batches {
        for backend in ["immediate", "batched"] {
            let f = |name: &str, batch, k| find(s, name, backend, batch, k);
            let (sc, lc) = (
                f(&p.small, *b4, FigKind::Counted),
                f(&p.large, *b2, FigKind::Counted),
            );
            let (st, lt) = (
                f(&p.small, *b4, FigKind::Timed),
                f(&p.large, *b2, FigKind::Timed),
            );
            let r = |a: Option<&Agg>, b: Option<&Agg>| match (a, b) {
                (Some(a), Some(b)) if b.median > 0.0 => {
                    ratio(per_mib(a, SMALL) / per_mib(b, p.large_bytes))
                }
                _ => "—".into(),
            };
            let privileged = |a: Option<&Agg>, page: u64| {
                count(
                    a.and_then(|a| s.counters_source(a).fig.privileged_per_op())
                        .map(|x| x * MIB / page as f64),
                )
            };
            let _ = writeln!(
                out,
                "| `{}` | {backend} | {} | {} | {} | {} | {} | {} | {} / {} |",
                cell(&p.small),
                mib_cell(sc, SMALL),
                mib_cell(lc, p.large_bytes),
                r(sc, lc),
                mib_cell(st, SMALL),
                mib_cell(lt, p.large_bytes),
                r(st, lt),
                privileged(sc.or(st), SMALL),
                privileged(lc.or(lt), p.large_bytes)
            );
        }
    }
    let _ = writeln!(out);
}

/// `pagesize.svg`: batched cost per MiB against the memory one flush
/// covers, both page sizes, counted and timed.
pub fn plots(s: &Summary) -> Result<Vec<Plot>, plots::Error> {
    let ps = pairs(s);
    if ps.is_empty() {
        return Ok(Vec::new());
    }
    let panel = |kind: FigKind| {
        let mut series = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            for (name, page, dashed) in [
                (p.small.as_str(), SMALL, false),
                (p.large.as_str(), p.large_bytes, true),
            ] {
                let mut figs: Vec<&Agg> = s
                    .of_kind(kind)
                    .filter(|a| {
                        a.key.suite == "mm"
                            && a.key.name == name
                            && a.key.backend == "batched"
                            && a.key.vcpus == 1
                    })
                    .collect();
                figs.sort_by_key(|a| a.key.batch);
                if figs.is_empty() {
                    continue;
                }
                let x = |a: &Agg| a.key.batch as f64 * page as f64 / MIB;
                series.push(Series {
                    label: format!("{} ({})", p.small, size_name(page)),
                    colour: NAMES[i % NAMES.len()],
                    dashed,
                    wide: false,
                    points: figs.iter().map(|a| (x(a), per_mib(a, page))).collect(),
                    band: figs
                        .iter()
                        .map(|a| {
                            let (lo, hi) = plots::band(a);
                            let k = MIB / page as f64;
                            (x(a), lo * k, hi * k)
                        })
                        .collect(),
                });
            }
        }
        let (t, _) = kind_desc(kind);
        Panel {
            title: format!("{t}, batched"),
            x: Scale::Log10,
            y: Scale::Log10,
            x_desc: "memory covered per flush, MiB (batch × page size, log scale)".into(),
            y_desc: match kind {
                FigKind::Counted => "instructions per MiB covered (log scale)".into(),
                FigKind::Timed => "cycles per MiB covered, median (log scale)".into(),
            },
            series,
            vline: None,
            hline: None,
            legend: SeriesLabelPosition::UpperRight,
        }
    };
    let panels: Vec<Panel> = [FigKind::Counted, FigKind::Timed]
        .into_iter()
        .map(panel)
        .collect();
    if !panels.iter().any(Panel::has_points) {
        return Ok(Vec::new());
    }
    let file = "pagesize.svg".to_string();
    let title = "4 KiB against 2 MiB pages: batched cost per MiB covered, 1 vCPU".to_string();
    let svg = plots::figure(&title, &platform_line(s), &panels).map_err(|e| plots::Error {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    Ok(vec![Plot {
        file,
        title,
        caption: "Each mm operation with the queue (batched), per MiB of memory it covers, against the memory \
                  one flush covers (the batch times the page size): solid 4 KiB pages, dashed 2 MiB pages, one \
                  colour per operation. Left, guest instructions (counted); right, TSC cycles (timed, median \
                  across boots). The two sizes cover different ranges because a 4 KiB batch of 256 covers 1 \
                  MiB and a 2 MiB page alone covers 2; immediate's figures are in the table."
            .into(),
        svg,
    }])
}

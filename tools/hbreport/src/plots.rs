//! The SVG plots of a results directory, drawn with plotters' SVG backend
//! into strings (no system fonts or libraries: the SVG names a font family
//! and the viewer draws the text). Each plot has a title, a subtitle naming
//! the platform, machine, vCPUs and revision, and one panel per kind of
//! figure (instructions, counted; cycles, timed):
//! - `mm_<name>.svg`: cost per operation against batch size, immediate,
//!   batched and the floor, with spread bands and the `invlpg` ceiling;
//! - `speedup.svg`: immediate ÷ batched against batch size, every mm figure;
//! - `privileged.svg`: privileged operations and invalidations per
//!   operation against batch size;
//! - `smp_shootdown.svg`: cost per page against vCPUs;
//! - `workloads.svg`: immediate ÷ batched per workload, with whether the
//!   checksums matched.
//!
//! Log axes are drawn as linear axes over log10 (or log2) of the values,
//! with tick positions chosen here: every tick is labelled, and no value,
//! however large, can push an axis bound to infinity (plotters' own log
//! axis loops forever on an infinite bound). A value that cannot go on a
//! log axis (zero) is left out of that plot. A plot with nothing to draw
//! is not made.

use crate::log::Query;
use crate::report::{platform_line, thousands};
use crate::summary::{Agg, FigKind, Summary};
use crate::targets::MM_NAMES;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt;

const PANEL: (u32, u32) = (640, 540);
/// Wide enough for the subtitle.
const MIN_WIDTH: u32 = 980;
const FONT: &str = "sans-serif";
/// At most this many labelled ticks on an axis, so labels never overlap.
const MAX_TICKS: usize = 12;

/// Colours per backend, the same in every plot.
pub(crate) const IMMEDIATE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
pub(crate) const BATCHED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FLOOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const OTHER: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
/// Colours per mm figure, for plots that put several on one panel.
pub(crate) const NAMES: [RGBColor; 6] = [
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
];
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);

pub(crate) fn colour(backend: &str) -> RGBColor {
    match backend {
        "immediate" => IMMEDIATE,
        "batched" => BATCHED,
        "floor" => FLOOR,
        _ => OTHER,
    }
}

/// A plot that could not be drawn.
#[derive(Debug)]
pub struct Error {
    pub file: String,
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot draw {}: {}", self.file, self.reason)
    }
}

impl std::error::Error for Error {}

/// One drawn plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// The file name in the results directory.
    pub file: String,
    pub title: String,
    /// What it shows and how to read it, for report.md.
    pub caption: String,
    pub svg: String,
}

pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scale {
    /// Powers of two (batch sizes).
    Log2,
    /// Decades, ticks at 1, 2 and 5 times a power of ten.
    Log10,
    /// Whole numbers (vCPUs).
    Int,
    /// From zero up (ratios).
    Lin,
}

impl Scale {
    /// Where a value goes on the axis; None when it cannot go there.
    fn tf(self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        match self {
            Scale::Log2 if v > 0.0 => Some(v.log2()),
            Scale::Log10 if v > 0.0 => Some(v.log10()),
            Scale::Int | Scale::Lin => Some(v),
            _ => None,
        }
    }

    fn label(self, t: f64) -> String {
        match self {
            Scale::Log2 => {
                let k = t.round();
                if (0.0..63.0).contains(&k) {
                    format!("{}", 1u64 << (k as u32))
                } else {
                    format!("2^{k}")
                }
            }
            Scale::Log10 => tick_label(10f64.powf(t)),
            Scale::Int => format!("{}", t.round()),
            Scale::Lin => {
                if t.abs() >= 1000.0 {
                    thousands(t)
                } else if (t - t.round()).abs() < 1e-9 {
                    format!("{t:.0}")
                } else {
                    format!("{t:.1}")
                }
            }
        }
    }
}

/// A tick of a log axis (1, 2 or 5 times a power of ten), written as
/// people write it: "20,000", "0.5", "0.002".
fn tick_label(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        return String::new();
    }
    if v >= 1e30 {
        return format!("{v:.0e}");
    }
    if v >= 1.0 {
        return thousands(v.round());
    }
    let decimals = (-v.log10()).ceil().clamp(1.0, 300.0) as usize;
    format!("{v:.decimals$}")
}

/// An axis in transformed space: its range and its labelled ticks.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

/// A linear coordinate over [lo, hi] whose ticks are exactly `ticks`
/// (plotters picks its own otherwise, and leaves some unlabelled).
#[derive(Debug, Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        if span.is_nan() || span <= 0.0 || !v.is_finite() {
            return limit.0;
        }
        // Clamped: a point far outside the axis must not wrap to the
        // other side of the drawing.
        let frac = ((v - self.lo) / span).clamp(-1.0, 2.0);
        limit.0 + (f64::from(limit.1 - limit.0) * frac).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl Axis {
    fn coord(&self) -> Ticked {
        Ticked {
            lo: self.lo,
            hi: self.hi,
            ticks: self.ticks.clone(),
        }
    }
}

/// 1, 2 and 5 times powers of ten, as log10, from below `lo` to above `hi`.
fn decade_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (d0, d1) = (lo.floor() as i64 - 1, hi.ceil() as i64 + 1);
    let mut marks = Vec::new();
    for d in d0..=d1 {
        for m in [1.0f64, 2.0, 5.0] {
            marks.push(d as f64 + m.log10());
        }
    }
    marks
}

/// Every `k`-th tick so that at most MAX_TICKS remain.
fn thin(ticks: Vec<f64>) -> Vec<f64> {
    let k = ticks.len().div_ceil(MAX_TICKS).max(1);
    ticks.into_iter().step_by(k).collect()
}

fn axis(scale: Scale, values: &[f64]) -> Option<Axis> {
    let t: Vec<f64> = values.iter().filter_map(|v| scale.tf(*v)).collect();
    let lo = t.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    Some(match scale {
        Scale::Log2 => {
            let (a, b) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
            let ticks: Vec<f64> = (a as i64..=b as i64).map(|k| k as f64).collect();
            Axis {
                lo: a - 0.3,
                hi: b + 0.3,
                ticks: thin(ticks),
            }
        }
        Scale::Log10 => {
            // From the tick at or below the least value to the one at or
            // above the greatest: at least two labelled ticks, always.
            let marks = decade_ticks(lo, hi);
            let a = marks
                .iter()
                .copied()
                .filter(|m| *m <= lo + 1e-9)
                .fold(f64::NEG_INFINITY, f64::max);
            let mut b = marks
                .iter()
                .copied()
                .filter(|m| *m >= hi - 1e-9)
                .fold(f64::INFINITY, f64::min);
            if b <= a {
                b = marks.iter().copied().find(|m| *m > a).unwrap_or(a + 1.0);
            }
            let span = b - a;
            let mut ticks: Vec<f64> = marks
                .into_iter()
                .filter(|m| *m >= a - 1e-9 && *m <= b + 1e-9)
                .collect();
            if ticks.len() > MAX_TICKS {
                // Decades only, then every k-th decade.
                ticks.retain(|m| (m - m.round()).abs() < 1e-9);
                ticks = thin(ticks);
            }
            Axis {
                lo: a - span * 0.04,
                hi: b + span * 0.04,
                ticks,
            }
        }
        Scale::Int => {
            let (a, b) = (lo.round().min(1.0), hi.round().max(lo.round() + 1.0));
            let ticks: Vec<f64> = (a as i64..=b as i64).map(|k| k as f64).collect();
            Axis {
                lo: a - 0.5,
                hi: b + 0.5,
                ticks: thin(ticks),
            }
        }
        Scale::Lin => {
            let top = hi.max(1.0) * 1.15;
            let step = nice_step(top / 6.0);
            let n = (top / step).ceil() as i64;
            let ticks: Vec<f64> = (0..=n).map(|i| i as f64 * step).collect();
            Axis {
                lo: 0.0,
                hi: n as f64 * step,
                ticks: thin(ticks),
            }
        }
    })
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let d = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * d)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * d)
}

/// One line on a panel, with an optional band (x, low, high).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) colour: RGBColor,
    pub(crate) dashed: bool,
    /// Drawn wide and pale, under the others: a line that another may
    /// cover exactly (the floor under batched) stays visible.
    pub(crate) wide: bool,
    pub(crate) points: Vec<(f64, f64)>,
    pub(crate) band: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) x: Scale,
    pub(crate) y: Scale,
    pub(crate) x_desc: String,
    pub(crate) y_desc: String,
    pub(crate) series: Vec<Series>,
    /// A vertical marker (x, label): the invlpg ceiling.
    pub(crate) vline: Option<(f64, String)>,
    /// A horizontal marker (y, label): break-even.
    pub(crate) hline: Option<(f64, String)>,
    pub(crate) legend: SeriesLabelPosition,
}

impl Panel {
    pub(crate) fn has_points(&self) -> bool {
        self.series.iter().any(|s| {
            s.points
                .iter()
                .any(|(x, y)| self.x.tf(*x).is_some() && self.y.tf(*y).is_some())
        })
    }
}

fn draw_panel<'b>(area: &DrawingArea<SVGBackend<'b>, Shift>, p: &Panel) -> DrawResult {
    let xs: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.0))
        .collect();
    let mut ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|q| q.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        })
        .collect();
    if let Some((y, _)) = &p.hline {
        ys.push(*y);
    }
    let (Some(xa), Some(ya)) = (axis(p.x, &xs), axis(p.y, &ys)) else {
        return Ok(());
    };
    let (x_scale, y_scale) = (p.x, p.y);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(xa.coord(), ya.coord())?;
    chart
        .configure_mesh()
        .x_desc(p.x_desc.as_str())
        .y_desc(p.y_desc.as_str())
        .x_label_formatter(&|v| x_scale.label(*v))
        .y_label_formatter(&|v| y_scale.label(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let put = |x: f64, y: f64| Some((x_scale.tf(x)?, y_scale.tf(y)?));
    // Bands first, under the lines.
    for s in &p.series {
        let band: Vec<(f64, f64, f64)> = s
            .band
            .iter()
            .filter_map(|(x, lo, hi)| {
                let (tx, tlo) = put(*x, *lo)?;
                let (_, thi) = put(*x, *hi)?;
                Some((tx, tlo, thi))
            })
            .collect();
        if band.len() >= 2 {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
            poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
            chart.draw_series(std::iter::once(Polygon::new(
                poly,
                s.colour.mix(0.15).filled(),
            )))?;
        } else if let Some(b) = band.first() {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(b.0, b.1), (b.0, b.2)],
                s.colour.mix(0.4).stroke_width(6),
            )))?;
        }
    }
    if let Some((x, label)) = &p.vline {
        if let Some(tx) = x_scale.tf(*x).filter(|t| *t > xa.lo && *t < xa.hi) {
            chart.draw_series(DashedLineSeries::new(
                vec![(tx, ya.lo), (tx, ya.hi)],
                6,
                4,
                GREY.stroke_width(1),
            ))?;
            let style = (FONT, 12)
                .into_font()
                .color(&GREY)
                .pos(Pos::new(HPos::Right, VPos::Bottom));
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (tx - (xa.hi - xa.lo) * 0.01, ya.lo + (ya.hi - ya.lo) * 0.02),
                style,
            )))?;
        }
    }
    if let Some((y, label)) = &p.hline {
        if let Some(ty) = y_scale.tf(*y) {
            chart.draw_series(LineSeries::new(
                vec![(xa.lo, ty), (xa.hi, ty)],
                BLACK.stroke_width(1),
            ))?;
            let style = (FONT, 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Bottom));
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (xa.hi - (xa.hi - xa.lo) * 0.01, ty),
                style,
            )))?;
        }
    }
    let mut labelled = false;
    for s in &p.series {
        let pts: Vec<(f64, f64)> = s.points.iter().filter_map(|(x, y)| put(*x, *y)).collect();
        if pts.is_empty() {
            continue;
        }
        let c = s.colour;
        let style = if s.wide {
            c.mix(0.35).stroke_width(7)
        } else {
            c.stroke_width(2)
        };
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))?
        };
        if !s.label.is_empty() {
            labelled = true;
            let dashed = s.dashed;
            anno.label(s.label.clone()).legend(move |(x, y)| {
                let path = vec![(x, y), (x + 22, y)];
                let e: DynElement<'static, SVGBackend<'b>, (i32, i32)> = if dashed {
                    DashedPathElement::new(path, 5, 3, style).into_dyn()
                } else {
                    PathElement::new(path, style).into_dyn()
                };
                e
            });
        }
        if !s.wide {
            chart.draw_series(pts.iter().map(|q| Circle::new(*q, 3, c.filled())))?;
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(p.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

/// A figure: title, subtitle, panels side by side, as SVG text.
pub(crate) fn figure(
    title: &str,
    subtitle: &str,
    panels: &[Panel],
) -> Result<String, Box<dyn std::error::Error>> {
    let panels: Vec<&Panel> = panels.iter().filter(|p| p.has_points()).collect();
    let n = panels.len().max(1) as u32;
    let mut buf = String::new();
    {
        let width = (PANEL.0 * n).max(MIN_WIDTH);
        let root = SVGBackend::with_string(&mut buf, (width, PANEL.1 + 40)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 21))?;
        let root = root.titled(subtitle, (FONT, 13).into_font().color(&GREY))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (a, p) in areas.iter().zip(panels) {
            draw_panel(a, p)?;
        }
        root.present()?;
    }
    Ok(buf)
}

/// Every plot the run has data for.
pub fn draw_all(s: &Summary) -> Result<Vec<Plot>, Error> {
    let sub = platform_line(s);
    let mut out = Vec::new();
    let mut add = |file: String, title: String, caption: String, panels: Vec<Panel>| {
        if !panels.iter().any(Panel::has_points) {
            return Ok(());
        }
        let svg = figure(&title, &sub, &panels).map_err(|e| Error {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        out.push(Plot {
            file,
            title,
            caption,
            svg,
        });
        Ok(())
    };
    let ceiling = s.env().and_then(|e| e.invlpg_ceiling);
    let vline = ceiling.map(|c| (c as f64, format!("invlpg ceiling: {c} pages")));
    let names = crate::log::ordered(s.suite_any("mm").map(|a| a.key.name.as_str()), MM_NAMES);
    for name in &names {
        add(
            format!("mm_{name}.svg"),
            format!("mm {name}: cost per operation against batch size, 1 vCPU"),
            format!(
                "Left, guest instructions per operation (counted, exact; the band spans the repetitions); \
                 right, TSC cycles per operation (timed, median across boots; the band spans the boots, or \
                 the repetitions' min to p99 when there is one boot). Lower is cheaper. The dashed line is \
                 the invlpg ceiling: above it a flush is one full TLB flush instead of one `invlpg` per page, \
                 which is where batched and floor {}.",
                if ceiling.is_some() {
                    "bend"
                } else {
                    "would bend (the ceiling is not in this run's env record)"
                }
            ),
            [FigKind::Counted, FigKind::Timed]
                .iter()
                .map(|k| mm_panel(s, name, *k, vline.clone()))
                .collect(),
        )?;
    }
    add(
        "speedup.svg".into(),
        "immediate ÷ batched against batch size, 1 vCPU".into(),
        "How many times more each mm operation costs without the queue than with it; above the break-even \
         line batching saves. Left in instructions, right in cycles (median across boots; the band spans the \
         boots)."
            .into(),
        [FigKind::Counted, FigKind::Timed]
            .iter()
            .map(|k| speedup_panel(s, &names, *k, vline.clone()))
            .collect(),
    )?;
    add(
        "privileged.svg".into(),
        "privileged operations per operation against batch size".into(),
        "What a host that traps privileged operations would charge as transitions, per map+unmap (from the \
         queue's counters). Solid: all privileged operations; dashed: TLB invalidations alone. The \
         page-table stores stay (the guest writes every entry), so the solid batched line levels off at the \
         stores; the invalidations fall with the batch, flat up to the invlpg ceiling and as 1/batch above it."
            .into(),
        vec![privileged_panel(s, vline.clone())],
    )?;
    add(
        "smp_shootdown.svg".into(),
        "smp unmap with shootdown: cost per page against vCPUs".into(),
        "Unmapping pages that other vCPUs hold: every unmap must interrupt them (a shootdown). Immediate \
         sends one round per page, batched one per batch. Left in instructions (every vCPU's, the readers' \
         loops too); right in cycles (median across boots, band across boots)."
            .into(),
        [FigKind::Counted, FigKind::Timed]
            .iter()
            .map(|k| smp_panel(s, *k))
            .collect(),
    )?;
    out.extend(crate::vcpus::plots(s)?);
    out.extend(crate::scale::plots(s)?);
    out.extend(crate::pagesize::plots(s)?);
    let bars = workload_bars(s);
    if !bars.is_empty() {
        let file = "workloads.svg".to_string();
        let title = "workloads: immediate ÷ batched (above 1: batched is faster)".to_string();
        let svg = workload_plot(&title, &sub, &bars).map_err(|e| Error {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        out.push(Plot {
            file,
            title,
            caption: "Each workload's immediate cost over its batched cost, counted (instructions, every vCPU's) \
                      and timed (cycles, median across boots; the bar spans the boots). The label says whether \
                      the checksums of both backends matched in every boot."
                .into(),
            svg,
        });
    }
    Ok(out)
}

/// The band of a figure: across boots when there are several, else
/// across repetitions (min to p99 timed, min to max counted).
pub(crate) fn band(a: &Agg) -> (f64, f64) {
    if a.values.len() > 1 {
        return (a.min, a.max);
    }
    let lo = a.fig.per_op.min.unwrap_or(a.median);
    let hi = match a.kind {
        FigKind::Counted => a.fig.per_op.max.unwrap_or(a.median),
        FigKind::Timed => a.p99,
    };
    (lo.min(a.median), hi.max(a.median))
}

pub(crate) fn kind_desc(kind: FigKind) -> (&'static str, &'static str) {
    match kind {
        FigKind::Counted => (
            "counted: guest instructions",
            "instructions per op (log scale)",
        ),
        FigKind::Timed => ("timed: TSC cycles", "cycles per op, median (log scale)"),
    }
}

/// One backend's line over `figs`, at x = `x(figure)`, with its band.
pub(crate) fn backend_series(backend: &str, figs: &[&Agg], x: impl Fn(&Agg) -> f64) -> Series {
    Series {
        label: backend.into(),
        colour: colour(backend),
        dashed: false,
        wide: false,
        points: figs.iter().map(|a| (x(a), a.median)).collect(),
        band: figs
            .iter()
            .map(|a| {
                let (lo, hi) = band(a);
                (x(a), lo, hi)
            })
            .collect(),
    }
}

fn mm_panel(s: &Summary, name: &str, kind: FigKind, vline: Option<(f64, String)>) -> Panel {
    let mut series = Vec::new();
    for backend in ["immediate", "batched", "floor"] {
        let mut figs: Vec<&Agg> = s
            .suite("mm", kind)
            .filter(|a| a.key.name == name && a.key.backend == backend && a.key.vcpus == 1)
            .collect();
        figs.sort_by_key(|a| a.key.batch);
        if figs.is_empty() {
            continue;
        }
        series.push(backend_series(backend, &figs, |a| a.key.batch as f64));
    }
    let (t, y) = kind_desc(kind);
    Panel {
        title: t.into(),
        x: Scale::Log2,
        y: Scale::Log10,
        x_desc: "batch size (operations per flush, log2 scale)".into(),
        y_desc: y.into(),
        series,
        vline,
        hline: None,
        legend: SeriesLabelPosition::UpperRight,
    }
}

fn speedup_panel(
    s: &Summary,
    names: &[&str],
    kind: FigKind,
    vline: Option<(f64, String)>,
) -> Panel {
    let mut series = Vec::new();
    // A 2 MiB variant takes its 4 KiB figure's colour, dashed, so that
    // eight figures need no more than the palette's six colours.
    let mut bases: Vec<&str> = Vec::new();
    for name in names {
        let base = name.strip_suffix("_2m").unwrap_or(name);
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    for name in names.iter() {
        let base = name.strip_suffix("_2m").unwrap_or(name);
        let i = bases.iter().position(|b| *b == base).unwrap_or(0);
        let mut pts = Vec::new();
        let mut band = Vec::new();
        let mut bats: Vec<&Agg> = s
            .suite("mm", kind)
            .filter(|a| a.key.name == *name && a.key.backend == "batched" && a.key.vcpus == 1)
            .collect();
        bats.sort_by_key(|a| a.key.batch);
        for b in bats {
            let qi = Query {
                suite: Some("mm"),
                name: Some(name),
                backend: Some("immediate"),
                batch: Some(b.key.batch),
                vcpus: Some(1),
            };
            let Some(imm) = s.find(&qi, kind) else {
                continue;
            };
            if b.median <= 0.0 {
                continue;
            }
            let x = b.key.batch as f64;
            pts.push((x, imm.median / b.median));
            if let Some((lo, hi)) = s.ratio_range(imm, b) {
                band.push((x, lo, hi));
            }
        }
        if pts.is_empty() {
            continue;
        }
        series.push(Series {
            label: name.to_string(),
            colour: NAMES[i % NAMES.len()],
            dashed: name.ends_with("_2m"),
            wide: false,
            points: pts,
            band,
        });
    }
    Panel {
        title: match kind {
            FigKind::Counted => "counted: instructions".into(),
            FigKind::Timed => "timed: cycles".into(),
        },
        x: Scale::Log2,
        y: Scale::Lin,
        x_desc: "batch size (operations per flush, log2 scale)".into(),
        y_desc: "immediate ÷ batched".into(),
        series,
        vline,
        hline: Some((1.0, "break-even".into())),
        legend: SeriesLabelPosition::UpperLeft,
    }
}

fn privileged_panel(s: &Summary, vline: Option<(f64, String)>) -> Panel {
    // map_unmap, else the first mm figure with counters.
    let mut names = crate::log::ordered(s.suite_any("mm").map(|a| a.key.name.as_str()), MM_NAMES);
    names.retain(|n| {
        s.suite_any("mm")
            .any(|a| a.key.name == *n && a.fig.counters.is_some())
    });
    let name = names.first().copied().unwrap_or("map_unmap");
    let kind = if s.suite("mm", FigKind::Counted).next().is_some() {
        FigKind::Counted
    } else {
        FigKind::Timed
    };
    let mut series = Vec::new();
    // The floor first: it issues what batched issues, so batched's lines
    // run on top of its wide pale ones.
    for backend in ["floor", "immediate", "batched"] {
        let mut figs: Vec<&Agg> = s
            .suite("mm", kind)
            .filter(|a| a.key.name == name && a.key.backend == backend && a.key.vcpus == 1)
            .map(|a| s.counters_source(a))
            .collect();
        figs.sort_by_key(|a| a.key.batch);
        let pick = |f: &dyn Fn(&Agg) -> Option<f64>| -> Vec<(f64, f64)> {
            figs.iter()
                .filter_map(|a| Some((a.key.batch as f64, f(a)?)))
                .collect()
        };
        let all = pick(&|a| a.fig.privileged_per_op());
        let inv = pick(&|a| a.fig.invalidations_per_op());
        if !all.is_empty() {
            series.push(Series {
                label: format!("{backend}: all privileged"),
                colour: colour(backend),
                dashed: false,
                wide: backend == "floor",
                points: all,
                band: vec![],
            });
        }
        if !inv.is_empty() {
            series.push(Series {
                label: format!("{backend}: invalidations"),
                colour: colour(backend),
                dashed: true,
                wide: backend == "floor",
                points: inv,
                band: vec![],
            });
        }
    }
    Panel {
        title: format!("mm {name}, from the queue's counters"),
        x: Scale::Log2,
        y: Scale::Log10,
        x_desc: "batch size (operations per flush, log2 scale)".into(),
        y_desc: "per operation (log scale)".into(),
        series,
        vline,
        hline: None,
        legend: SeriesLabelPosition::LowerLeft,
    }
}

fn smp_panel(s: &Summary, kind: FigKind) -> Panel {
    let mut series = Vec::new();
    for backend in ["immediate", "batched"] {
        let mut figs: Vec<&Agg> = s
            .suite("smp", kind)
            .filter(|a| a.key.backend == backend && a.key.name == "unmap_shootdown")
            .collect();
        figs.sort_by_key(|a| a.key.vcpus);
        figs.dedup_by_key(|a| a.key.vcpus);
        if figs.is_empty() {
            continue;
        }
        series.push(backend_series(backend, &figs, |a| a.key.vcpus as f64));
    }
    let (t, _) = kind_desc(kind);
    Panel {
        title: t.into(),
        x: Scale::Int,
        y: Scale::Log10,
        x_desc: "vCPUs holding the pages".into(),
        y_desc: match kind {
            FigKind::Counted => "instructions per page (log scale)".into(),
            FigKind::Timed => "cycles per page, median (log scale)".into(),
        },
        series,
        vline: None,
        hline: None,
        legend: SeriesLabelPosition::UpperLeft,
    }
}

/// One workload's bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub name: String,
    pub counted: Option<f64>,
    /// Median ratio and its per-boot range.
    pub timed: Option<(f64, f64, f64)>,
    pub checksums_match: bool,
}

pub fn workload_bars(s: &Summary) -> Vec<Bar> {
    let mut names: Vec<&str> = Vec::new();
    for a in s.suite_any("workload") {
        if !names.contains(&a.key.name.as_str()) {
            names.push(&a.key.name);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let q = |b| Query {
                suite: Some("workload"),
                name: Some(name),
                backend: Some(b),
                ..Default::default()
            };
            let pair = |k| Some((s.find(&q("immediate"), k)?, s.find(&q("batched"), k)?));
            let counted = pair(FigKind::Counted)
                .filter(|(_, b)| b.median > 0.0)
                .map(|(i, b)| i.median / b.median);
            let timed = pair(FigKind::Timed)
                .filter(|(_, b)| b.median > 0.0)
                .map(|(i, b)| {
                    let r = i.median / b.median;
                    let (lo, hi) = s.ratio_range(i, b).unwrap_or((r, r));
                    (r, lo, hi)
                });
            if counted.is_none() && timed.is_none() {
                return None;
            }
            let mut sums: Vec<&str> = Vec::new();
            let mut missing = false;
            for a in s.suite_any("workload").filter(|a| a.key.name == name) {
                for c in &a.checksums {
                    match c {
                        Some(c) if !sums.iter().any(|x| x.eq_ignore_ascii_case(c)) => sums.push(c),
                        Some(_) => {}
                        None => missing = true,
                    }
                }
            }
            Some(Bar {
                name: name.to_string(),
                counted,
                timed,
                checksums_match: sums.len() == 1 && !missing,
            })
        })
        .collect()
}

const COUNTED_BAR: RGBColor = RGBColor(0x9e, 0xda, 0xe5);
const TIMED_BAR: RGBColor = BATCHED;

fn workload_plot(
    title: &str,
    subtitle: &str,
    bars: &[Bar],
) -> Result<String, Box<dyn std::error::Error>> {
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let ymax = bars
        .iter()
        .flat_map(|b| [b.counted.unwrap_or(0.0), b.timed.map_or(0.0, |t| t.2)])
        .map(finite)
        .fold(1.0f64, f64::max);
    let ya = axis(Scale::Lin, &[ymax]).unwrap_or(Axis {
        lo: 0.0,
        hi: 1.0,
        ticks: vec![0.0, 1.0],
    });
    let n = bars.len();
    let width = (PANEL.0 + 120 * n.saturating_sub(3) as u32).clamp(MIN_WIDTH, 4000);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width, PANEL.1 + 40)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 21))?;
        let root = root.titled(subtitle, (FONT, 13).into_font().color(&GREY))?;
        let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticked {
                    lo: 0.0,
                    hi: n.max(1) as f64,
                    ticks: centres,
                },
                ya.coord(),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("workload")
            .y_desc("immediate ÷ batched")
            .x_label_formatter(&|v| {
                let i = v.floor();
                if i < 0.0 {
                    return String::new();
                }
                bars.get(i as usize)
                    .map(|b| {
                        format!(
                            "{} ({})",
                            b.name,
                            if b.checksums_match {
                                "checksums match"
                            } else {
                                "CHECKSUM MISMATCH"
                            }
                        )
                    })
                    .unwrap_or_default()
            })
            .y_label_formatter(&|v| Scale::Lin.label(*v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()?;
        let label_style = (FONT, 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let mut first_c = true;
        let mut first_t = true;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            if let Some(r) = b.counted.map(finite) {
                let a = chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.12, 0.0), (x + 0.48, r)],
                    COUNTED_BAR.filled(),
                )))?;
                if first_c {
                    first_c = false;
                    a.label("counted (instructions)").legend(|(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 16, y + 5)], COUNTED_BAR.filled())
                    });
                }
                chart.draw_series(std::iter::once(Text::new(
                    format!("{r:.2}x"),
                    (x + 0.30, r + (ya.hi - ya.lo) * 0.01),
                    label_style.clone(),
                )))?;
            }
            if let Some((r, lo, hi)) = b.timed {
                let (r, lo, hi) = (finite(r), finite(lo), finite(hi));
                let a = chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.52, 0.0), (x + 0.88, r)],
                    TIMED_BAR.mix(0.8).filled(),
                )))?;
                if first_t {
                    first_t = false;
                    a.label("timed (cycles, median across boots)")
                        .legend(|(x, y)| {
                            Rectangle::new(
                                [(x, y - 5), (x + 16, y + 5)],
                                TIMED_BAR.mix(0.8).filled(),
                            )
                        });
                }
                if hi > lo {
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(x + 0.70, lo), (x + 0.70, hi)],
                        BLACK.stroke_width(2),
                    )))?;
                }
                chart.draw_series(std::iter::once(Text::new(
                    format!("{r:.2}x"),
                    (x + 0.70, hi.max(r) + (ya.hi - ya.lo) * 0.01),
                    label_style.clone(),
                )))?;
            }
        }
        // The break-even line: below it batched is slower.
        chart.draw_series(LineSeries::new(
            [(0.0, 1.0), (n.max(1) as f64, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()?;
        root.present()?;
    }
    Ok(buf)
}

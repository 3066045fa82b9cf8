//! The SVG plots of a results directory, drawn with plotters' SVG backend
//! (no system fonts or libraries: the SVG names a font family and the
//! viewer draws the text):
//! - `mm_<name>.svg`: cycles per operation (median, log scale) against the
//!   batch size (log2), immediate against batched against the floor;
//! - `smp_shootdown.svg`: cycles per page against vCPUs, immediate against
//!   batched;
//! - `workloads.svg`: immediate time over batched time per workload, with
//!   whether the checksums matched.
//!
//! A plot whose suite is absent from the log is not drawn.

use crate::log::{Figure, Log};
use crate::targets::MM_NAMES;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (860, 520);
const FONT: &str = "sans-serif";

/// Colours per backend, the same in every plot.
const IMMEDIATE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const BATCHED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FLOOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const OTHER: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

fn colour(backend: &str) -> RGBColor {
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
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot draw {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for Error {}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn wrap(path: &Path, r: DrawResult) -> Result<PathBuf, Error> {
    r.map(|_| path.to_path_buf()).map_err(|e| Error {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Draws every plot the log has data for into `dir`; returns their paths.
pub fn draw_all(log: &Log, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let names = crate::log::ordered(log.suite("mm").map(|f| f.name.as_str()), MM_NAMES);
    for name in names {
        let path = dir.join(format!("mm_{name}.svg"));
        let figs: Vec<&Figure> = log
            .suite("mm")
            .filter(|f| f.name == name && f.vcpus == 1)
            .collect();
        if figs.is_empty() {
            continue;
        }
        out.push(wrap(&path, mm_plot(&path, name, &figs))?);
    }
    let smp: Vec<&Figure> = log.suite("smp").collect();
    if !smp.is_empty() {
        let path = dir.join("smp_shootdown.svg");
        out.push(wrap(&path, smp_plot(&path, &smp))?);
    }
    let bars = workload_bars(log);
    if !bars.is_empty() {
        let path = dir.join("workloads.svg");
        out.push(wrap(&path, workload_plot(&path, &bars))?);
    }
    Ok(out)
}

/// (x, y) points of one backend, sorted by x, last figure winning.
fn series(figs: &[&Figure], backend: &str, x: impl Fn(&Figure) -> u64) -> Vec<(f64, f64)> {
    let mut pts: Vec<(u64, f64)> = Vec::new();
    for f in figs.iter().filter(|f| f.backend == backend) {
        let key = x(f);
        let y = f.per_op.median.max(f64::MIN_POSITIVE);
        match pts.iter_mut().find(|(k, _)| *k == key) {
            Some(p) => p.1 = y,
            None => pts.push((key, y)),
        }
    }
    pts.sort_by_key(|p| p.0);
    pts.into_iter().map(|(k, y)| (k as f64, y)).collect()
}

fn backends(figs: &[&Figure]) -> Vec<String> {
    let names = crate::log::ordered(
        figs.iter().map(|f| f.backend.as_str()),
        &["immediate", "batched", "floor"],
    );
    names.into_iter().map(str::to_string).collect()
}

/// A log-scale range that holds every value with some room, never empty.
fn log_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / pad, hi * pad)
}

fn mm_plot(path: &Path, name: &str, figs: &[&Figure]) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = log_range(figs.iter().map(|f| f.batch as f64), 1.4);
    let (y0, y1) = log_range(figs.iter().map(|f| f.per_op.median), 2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("mm {name}: cycles per operation against batch size"),
            (FONT, 20),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(76)
        .build_cartesian_2d((x0..x1).log_scale().base(2.0), (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("batch size (log2 scale)")
        .y_desc("cycles per op, median (log scale)")
        .x_label_formatter(&power_of_two_label)
        .y_label_formatter(&decade_label)
        .max_light_lines(4)
        .draw()?;
    for backend in backends(figs) {
        let pts = series(figs, &backend, |f| f.batch);
        let c = colour(&backend);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(backend.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Labels the powers of two and leaves the light grid lines unlabelled.
fn power_of_two_label(x: &f64) -> String {
    let r = x.round();
    if r >= 1.0 && (x - r).abs() < 1e-6 && (r as u64).is_power_of_two() {
        format!("{}", r as u64)
    } else {
        String::new()
    }
}

/// Labels 1, 2 and 5 times a power of ten on a log axis; the other light
/// grid lines stay unlabelled so that labels never overlap.
fn decade_label(y: &f64) -> String {
    if *y <= 0.0 {
        return String::new();
    }
    let decade = 10f64.powf(y.log10().floor());
    let mantissa = y / decade;
    if [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
        crate::report::thousands(*y)
    } else {
        String::new()
    }
}

fn smp_plot(path: &Path, figs: &[&Figure]) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let vmax = figs.iter().map(|f| f.vcpus).max().unwrap_or(1).max(2);
    let (y0, y1) = log_range(figs.iter().map(|f| f.per_op.median), 2.0);
    let batch = figs.iter().map(|f| f.batch).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("smp unmap with shootdown: cycles per page (batch {batch})"),
            (FONT, 20),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(76)
        .build_cartesian_2d(0.5f64..(vmax as f64 + 0.5), (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .y_desc("cycles per page, median (log scale)")
        .x_labels(vmax as usize + 1)
        .x_label_formatter(&|x| {
            let r = x.round();
            if (x - r).abs() < 1e-6 && r >= 1.0 {
                format!("{}", r as u64)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&decade_label)
        .max_light_lines(4)
        .draw()?;
    for backend in backends(figs) {
        let pts = series(figs, &backend, |f| f.vcpus);
        let c = colour(&backend);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(backend.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One workload's bar: immediate time over batched time.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub name: String,
    pub ratio: f64,
    pub checksums_match: bool,
}

pub fn workload_bars(log: &Log) -> Vec<Bar> {
    let mut names: Vec<&str> = Vec::new();
    for f in log.suite("workload") {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let q = |b| crate::log::Query { suite: Some("workload"), name: Some(name), backend: Some(b), ..Default::default() };
            let imm = log.find(&q("immediate"))?;
            let bat = log.find(&q("batched"))?;
            let checksums_match = matches!((&imm.checksum, &bat.checksum), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
            Some(Bar { name: name.to_string(), ratio: imm.per_op.median / bat.per_op.median, checksums_match })
        })
        .collect()
}

fn workload_plot(path: &Path, bars: &[Bar]) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars.iter().map(|b| b.ratio).fold(1.0f64, f64::max) * 1.3;
    let n = bars.len() as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "workloads: immediate time / batched time (above 1: batched is faster)",
            (FONT, 20),
        )
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(60)
        // An integer range is inclusive of its end for segmenting.
        .build_cartesian_2d((0u32..n.saturating_sub(1)).into_segmented(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("workload")
        .y_desc("immediate / batched")
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get(*i as usize)
                .map(|b| b.name.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let i = i as u32;
        let c = if b.checksums_match && b.ratio > 1.0 {
            BATCHED
        } else {
            IMMEDIATE
        };
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.ratio),
            ],
            c.mix(0.75).filled(),
        );
        r.set_margin(0, 0, 18, 18);
        r
    }))?;
    // The break-even line: below it batched is slower.
    chart.draw_series(LineSeries::new(
        [(SegmentValue::Exact(0), 1.0), (SegmentValue::Last, 1.0)],
        BLACK.stroke_width(1),
    ))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let note = format!(
            "{:.2}x, {}",
            b.ratio,
            if b.checksums_match {
                "checksums match"
            } else {
                "CHECKSUM MISMATCH"
            }
        );
        let style = (FONT, 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        Text::new(
            note,
            (SegmentValue::CenterOf(i as u32), b.ratio + ymax * 0.02),
            style,
        )
    }))?;
    root.present()?;
    Ok(())
}

//! The cost model: what a figure costs on a platform, from what the guest
//! counted.
//!
//! cycles/op ≈ guest instructions/op × CPI + Σ events/op × cost(event, platform)
//!
//! The instructions come from the counting boot (exact), the events from
//! the queue's counters, and the costs from one of two places:
//! - **this run** ([`Fit`]): the `exits` suite's timed figures, each less
//!   its own instructions at a CPI fitted on the exits suite and the
//!   floor. [`check`] then predicts every timed figure and compares it
//!   with its measurement, so the model is checked where it can be;
//! - **reference platforms** ([`Platform`], platforms.rs): published costs
//!   (sources.rs), as ranges where sources disagree, and as lower bounds
//!   where only a bound is known. [`project`] applies them to every suite.
//!
//! model_report.rs writes the model's sections of report.md and its plot.
//!
//! The events follow how hosts trap page-table work. Under shadow paging
//! KVM lets a leaf table go out of sync (Documentation/virt/kvm/x86/mmu.rst):
//! the first write to it in a sync epoch faults and unsyncs it (the
//! guest's `tables_unsynced`), later writes are plain stores, an `invlpg`
//! exits and syncs its entry, and a CR3 load syncs every unsync table. So
//! there batching saves the invalidation exits, not the stores. Under
//! EPT/NPT nothing of the page-table work exits; what remains is native
//! `invlpg` and CR3 costs, the TLB refill after a full flush, the IPIs of
//! a shootdown, and the software.

use crate::log::{Counters, Figure, Query};
use crate::report::thousands;
use crate::summary::{Agg, FigKind, Summary};
use std::fmt::Write;

pub use crate::model_report::{markdown, plot, suspect, Suspect, COLUMNS};
pub use crate::platforms::{reference, Cost, Platform, RefCost, NATIVE_CPI, REFERENCE};

// --- events -------------------------------------------------------------------

/// What the model prices, each counted by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first store to a leaf table in a sync epoch (`tables_unsynced`):
    /// under shadow paging it faults on the write protection.
    InSyncStore,
    /// Every other PTE store (`pte_writes` − `tables_unsynced`).
    UnsyncStore,
    /// A local `invlpg`.
    Invlpg,
    /// A local full flush: a CR3 load (`full_flushes` + `lazy_tlb_reloads`).
    FullFlush,
    /// An unsync leaf table a CR3 load syncs again (`tables_unsynced`:
    /// every table the epoch unsynced is synced at its end).
    Resync,
    /// Refilling the working set after a full flush, local or remote.
    Refill,
    /// A CR0/CR4 write that reached the register (`cr_writes`).
    CrWrite,
    /// An IPI to one target (`ipis`), sent and delivered.
    Ipi,
    /// A shootdown round (`shootdowns`): where PV_SEND_IPI folds the
    /// round's IPIs into one hypercall, that hypercall.
    Round,
    /// An `invlpg` a target ran for another vCPU's shootdown.
    RemoteInvlpg,
    /// A full flush a target ran for another vCPU's shootdown.
    RemoteFullFlush,
    /// The first access to a freshly made translation (`touches`): a TLB
    /// fill, and under shadow paging a fault that builds the shadow entry.
    Touch,
}

impl Event {
    pub const ALL: [Event; 12] = [
        Event::InSyncStore,
        Event::UnsyncStore,
        Event::Invlpg,
        Event::FullFlush,
        Event::Resync,
        Event::Refill,
        Event::CrWrite,
        Event::Ipi,
        Event::Round,
        Event::RemoteInvlpg,
        Event::RemoteFullFlush,
        Event::Touch,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Event::InSyncStore => "in_sync_store",
            Event::UnsyncStore => "unsync_store",
            Event::Invlpg => "invlpg",
            Event::FullFlush => "full_flush",
            Event::Resync => "resync",
            Event::Refill => "refill",
            Event::CrWrite => "cr_write",
            Event::Ipi => "ipi",
            Event::Round => "round",
            Event::RemoteInvlpg => "remote_invlpg",
            Event::RemoteFullFlush => "remote_full_flush",
            Event::Touch => "touch",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Event::InSyncStore => "PTE store to an in-sync leaf table (first in its epoch)",
            Event::UnsyncStore => "PTE store to an out-of-sync leaf table",
            Event::Invlpg => "`invlpg`",
            Event::FullFlush => "full flush (CR3 load)",
            Event::Resync => "unsync table resynced by a CR3 load",
            Event::Refill => "TLB refill after a full flush",
            Event::CrWrite => "CR0/CR4 write",
            Event::Ipi => "IPI, per target",
            Event::Round => "shootdown round (PV_SEND_IPI: its hypercall)",
            Event::RemoteInvlpg => "remote `invlpg` (a target's handler)",
            Event::RemoteFullFlush => "remote full flush (a target's handler)",
            Event::Touch => "first access to a fresh translation (TLB fill)",
        }
    }
}

/// Events per operation of one figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Events {
    pub per_op: [f64; 12],
}

impl Events {
    pub fn of_counters(c: &Counters, ops: u64) -> Events {
        let n = ops.max(1) as f64;
        let mut e = Events::default();
        let unsynced = c.tables_unsynced.min(c.pte_writes);
        for ev in Event::ALL {
            let v = match ev {
                Event::InSyncStore | Event::Resync => unsynced,
                Event::UnsyncStore => c.pte_writes - unsynced,
                Event::Invlpg => c.invlpg,
                Event::FullFlush => c.full_flushes.saturating_add(c.lazy_tlb_reloads),
                Event::Refill => c
                    .full_flushes
                    .saturating_add(c.lazy_tlb_reloads)
                    .saturating_add(c.remote_full_flushes),
                Event::CrWrite => c.cr_writes,
                Event::Ipi => c.ipis,
                Event::Round => c.shootdowns,
                Event::RemoteInvlpg => c.remote_invlpg,
                Event::RemoteFullFlush => c.remote_full_flushes,
                Event::Touch => c.touches,
            };
            e.per_op[ev as usize] = v as f64 / n;
        }
        e
    }

    pub fn of(f: &Figure) -> Option<Events> {
        f.counters
            .as_ref()
            .map(|c| Events::of_counters(c, f.measured_ops()))
    }

    pub fn get(&self, e: Event) -> f64 {
        self.per_op[e as usize]
    }
}

// --- this run's costs ---------------------------------------------------------

/// The `exits` figure that measures an event on this run, if any. Events
/// the exits suite cannot measure price at zero here (a store does not
/// trap on TCG; a refill and a resync are not measured); the check says
/// so when a figure misses.
pub(crate) fn exit_name(e: Event) -> Option<&'static [&'static str]> {
    match e {
        Event::InSyncStore | Event::UnsyncStore => Some(&["pte_write"]),
        Event::Invlpg | Event::RemoteInvlpg => Some(&["invlpg"]),
        Event::FullFlush | Event::RemoteFullFlush => Some(&["cr3_reload"]),
        Event::CrWrite => Some(&["cr4_write"]),
        Event::Ipi => Some(&["ipi_roundtrip", "self_ipi"]),
        Event::Touch => Some(&["tlb_fill"]),
        Event::Resync | Event::Refill | Event::Round => None,
    }
}

/// One exits figure: timed cycles and counted instructions per operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitFigure {
    pub cycles: f64,
    pub instructions: f64,
}

/// This run's model: a CPI and a cost per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Cycles per guest instruction, fitted on the floor figures and the
    /// `pte_write` exit; None without both counted and timed figures.
    pub cpi: Option<f64>,
    /// How many figures the fit used.
    pub fit_figures: usize,
    /// Per event: its cost here, None where the exits suite did not
    /// measure what prices it.
    pub costs: Vec<(Event, Option<f64>)>,
    /// The exits figures the costs came from.
    pub exits: Vec<(&'static str, ExitFigure)>,
}

/// A timed figure's value: in one boot, or the median across boots.
fn timed(t: &Agg, boot: Option<usize>) -> Option<f64> {
    let v = match boot {
        Some(b) => t.value_in(b)?,
        None => t.median,
    };
    v.is_finite().then_some(v)
}

fn exit_figure(s: &Summary, name: &str, boot: Option<usize>) -> Option<ExitFigure> {
    let q = Query {
        suite: Some("exits"),
        name: Some(name),
        ..Query::default()
    };
    let t = s.find(&q, FigKind::Timed)?;
    let c = s.find(&q, FigKind::Counted)?;
    Some(ExitFigure {
        cycles: timed(t, boot)?,
        instructions: c.median.is_finite().then_some(c.median)?,
    })
}

/// The figures whose twins are both there: (counted, timed), on the
/// run's own machine.
fn pairs<'a>(s: &'a Summary, suite: &'a str) -> impl Iterator<Item = (&'a Agg, &'a Agg)> + 'a {
    s.suite(suite, FigKind::Counted)
        .filter_map(move |c| Some((c, s.twin(c, FigKind::Timed)?)))
}

/// The same on every machine the run booted (the run's own, then boots
/// with another vCPU count, such as the full run's 16-vCPU smp boots).
fn pairs_all<'a>(s: &'a Summary, suite: &'a str) -> impl Iterator<Item = (&'a Agg, &'a Agg)> + 'a {
    s.figures
        .iter()
        .filter(move |a| a.kind == FigKind::Counted && a.key.suite == suite)
        .filter_map(move |c| Some((c, s.twin(c, FigKind::Timed)?)))
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Whether a figure is one the CPI is fitted on: a floor figure whose
/// every cost is a counted event. A `touch` floor from a log that does
/// not declare its touches is left out: each touch is a first access to a
/// fresh translation, which TCG pays for in its software TLB.
fn in_fit(c: &Agg) -> bool {
    c.key.backend == "floor"
        && (!c.key.name.contains("touch") || c.fig.counters.is_some_and(|k| k.touches > 0))
}

impl Fit {
    /// Fits this run. An exits figure costs `C = I × CPI + c`, so an
    /// event's own cost is `c = C − I × CPI`; a floor figure costs
    /// `T = I × CPI + Σ n × c`. Putting the first into the second, each
    /// floor figure (and the bare `pte_write` loop) predicts
    /// `T ≈ CPI × (I − Σ n × I_e) + Σ n × C`, and the CPI is the least
    /// squares fit of those on the relative error: the floor is the same
    /// stores and flushes with no queue, so it holds little but the
    /// instructions and the events.
    pub fn of(s: &Summary) -> Fit {
        Fit::of_boot(s, None)
    }

    /// As [`Fit::of`], on one timed boot's figures alone (`Some(index
    /// into s.boots)`), or on the medians across boots (`None`).
    pub fn of_boot(s: &Summary, boot: Option<usize>) -> Fit {
        let mut exits = Vec::new();
        for e in Event::ALL {
            for name in exit_name(e).unwrap_or(&[]) {
                if exits.iter().any(|(n, _)| n == name) {
                    continue;
                }
                if let Some(f) = exit_figure(s, name, boot) {
                    exits.push((*name, f));
                }
            }
        }
        let find = |e: Event| -> Option<ExitFigure> {
            exit_name(e)?
                .iter()
                .find_map(|n| exits.iter().find(|(x, _)| x == n).map(|(_, f)| *f))
        };
        // The `tlb_fill` loop invalidates before each read: its fill is
        // the loop less the `invlpg` loop.
        let measured = |e: Event| -> Option<ExitFigure> {
            let f = find(e)?;
            if e != Event::Touch {
                return Some(f);
            }
            let inv = find(Event::Invlpg)?;
            Some(ExitFigure {
                cycles: f.cycles - inv.cycles,
                instructions: f.instructions - inv.instructions,
            })
        };
        // Each fit figure as (T, x, b): measured cycles T, and the
        // prediction CPI × x + b, with x its instructions less its events'
        // own exit-loop instructions and b the events' exit-loop cycles.
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        if let Some(f) = exits.iter().find(|(n, _)| *n == "pte_write").map(|x| x.1) {
            points.push((f.cycles, f.instructions, 0.0));
        }
        for suite in ["mm", "smp"] {
            for (c, t) in pairs(s, suite).filter(|(c, _)| in_fit(c)) {
                let Some(ev) = Events::of(&s.counters_source(c).fig) else {
                    continue;
                };
                let Some(y) = timed(t, boot) else {
                    continue;
                };
                let (mut x, mut b) = (c.median, 0.0);
                let mut known = true;
                for e in Event::ALL {
                    let n = ev.get(e);
                    if n == 0.0 || matches!(e, Event::InSyncStore | Event::UnsyncStore) {
                        continue;
                    }
                    match (exit_name(e), measured(e)) {
                        (None, _) => {}
                        (Some(_), Some(m)) => {
                            b += n * m.cycles;
                            x -= n * m.instructions;
                        }
                        (Some(_), None) => known = false,
                    }
                }
                if known {
                    points.push((y, x, b));
                }
            }
        }
        points.retain(|(t, x, b)| *t > 0.0 && t.is_finite() && x.is_finite() && b.is_finite());
        let fit_figures = points.len();
        // Least squares on the relative error, Σ ((CPI·x + b − T) ÷ T)²:
        // a figure whose cost is mostly its events (a floor is mostly its
        // flush) says little about the CPI and weighs little.
        let (num, den) = points.iter().fold((0.0, 0.0), |(n, d), (t, x, b)| {
            (n + x * (t - b) / (t * t), d + x * x / (t * t))
        });
        let cpi = (den > 0.0)
            .then(|| num / den)
            .filter(|c| c.is_finite() && *c > 0.0);
        let costs = Event::ALL
            .iter()
            .map(|e| {
                let c = match exit_name(*e) {
                    None => Some(0.0),
                    Some(_) => match (measured(*e), cpi) {
                        (Some(m), Some(cpi)) => Some((m.cycles - m.instructions * cpi).max(0.0)),
                        _ => None,
                    },
                };
                (*e, c)
            })
            .collect();
        Fit {
            cpi,
            fit_figures,
            costs,
            exits,
        }
    }

    pub fn cost(&self, e: Event) -> Option<f64> {
        self.costs.iter().find(|(x, _)| *x == e).and_then(|x| x.1)
    }

    /// The predicted cycles per operation of a figure with these
    /// instructions and events; None when a counted event has no cost.
    pub fn predict(&self, instructions: f64, ev: &Events) -> Option<f64> {
        let mut sum = instructions * self.cpi?;
        for e in Event::ALL {
            let n = ev.get(e);
            if n > 0.0 {
                sum += n * self.cost(e)?;
            }
        }
        Some(sum)
    }
}

// --- the check on this run ----------------------------------------------------

/// The suites whose figures the check predicts, and the ±25% target.
pub const CHECKED_SUITES: [&str; 5] = ["mm", "cpu", "smp", "scale", "workload"];
pub const TARGET_ERROR: f64 = 0.25;

/// One figure predicted and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub suite: String,
    pub name: String,
    pub backend: String,
    pub batch: u64,
    pub vcpus: u64,
    /// The figure's id, as in results.json (`/smp=N` for a boot of
    /// another machine).
    pub figure_id: String,
    pub instructions: f64,
    pub events: Events,
    pub predicted: f64,
    pub measured: f64,
    /// The median across boots of (predicted − measured) ÷ measured.
    pub error: f64,
    /// The floor figures are in the fit; their error checks only the fit.
    pub in_fit: bool,
    /// The timed figure's spread across boots, (max − min) ÷ median: a
    /// measurement that moves more than the target between boots cannot
    /// be predicted to within it.
    pub spread: f64,
}

impl Check {
    /// The median across boots of (predicted − measured) ÷ measured.
    pub fn error(&self) -> f64 {
        self.error
    }

    pub fn id(&self) -> String {
        self.figure_id.clone()
    }

    /// What the residual would mean if one term alone were wrong: the
    /// CPI, or the cost of one of the events the figure counted.
    pub fn diagnosis(&self, fit: &Fit) -> Vec<(String, String)> {
        let residual = self.measured - self.predicted;
        let mut out = Vec::new();
        if let Some(cpi) = fit.cpi {
            let want = cpi + residual / self.instructions;
            // No CPI can be negative: then the instructions cannot
            // explain the miss.
            if self.instructions > 0.0 && want >= 0.0 {
                out.push((
                    "CPI".to_string(),
                    format!("{cpi:.2} → {want:.2} cycles per instruction"),
                ));
            }
        }
        for e in Event::ALL {
            let n = self.events.get(e);
            // Stores do not trap here, a resync has the full flush's count,
            // and a round is not priced on any measured platform.
            if n <= 0.0
                || matches!(
                    e,
                    Event::UnsyncStore | Event::InSyncStore | Event::Resync | Event::Round
                )
            {
                continue;
            }
            let now = fit.cost(e).unwrap_or(0.0);
            if now + residual / n < 0.0 {
                // No cost can be negative: this term cannot explain it.
                continue;
            }
            out.push((
                e.label().to_string(),
                format!(
                    "{} → {} cycles each",
                    thousands(now),
                    thousands(now + residual / n)
                ),
            ));
        }
        out
    }
}

/// Every figure of the checked suites with a counted and a timed twin
/// and counters, predicted. Each timed boot is predicted with its own
/// fit (`fits`: index into `s.boots`, and that boot's fit), since a
/// shared host runs one boot faster than another; a figure's prediction
/// and measurement are the medians across boots, and its error the median
/// of each boot's error.
///
/// A figure none of whose boots has a fit of its own (a boot of another
/// machine that ran no `exits` suite) is predicted with `pooled`, the fit
/// on the medians across boots.
pub fn check(s: &Summary, fits: &[(usize, Fit)], pooled: &Fit) -> Vec<Check> {
    let mut out = Vec::new();
    for suite in CHECKED_SUITES {
        for (c, t) in pairs_all(s, suite) {
            let Some(ev) = Events::of(&s.counters_source(c).fig) else {
                continue;
            };
            if !c.median.is_finite() {
                continue;
            }
            let (mut preds, mut meas, mut errs) = (Vec::new(), Vec::new(), Vec::new());
            for (boot, fit) in fits {
                let (Some(p), Some(m)) = (fit.predict(c.median, &ev), timed(t, Some(*boot))) else {
                    continue;
                };
                if m > 0.0 && p.is_finite() {
                    preds.push(p);
                    meas.push(m);
                    errs.push((p - m) / m);
                }
            }
            if preds.is_empty() {
                if let (Some(p), Some(m)) = (pooled.predict(c.median, &ev), timed(t, None)) {
                    if m > 0.0 && p.is_finite() {
                        preds.push(p);
                        meas.push(m);
                        errs.push((p - m) / m);
                    }
                }
            }
            let (Some(predicted), Some(measured), Some(error)) =
                (median(preds), median(meas), median(errs))
            else {
                continue;
            };
            out.push(Check {
                suite: suite.to_string(),
                name: c.key.name.clone(),
                backend: c.key.backend.clone(),
                batch: c.key.batch,
                vcpus: c.key.vcpus,
                figure_id: c.key.id(),
                instructions: c.median,
                events: ev,
                predicted,
                measured,
                error,
                in_fit: in_fit(c) && (suite == "mm" || suite == "smp"),
                spread: t.spread(),
            });
        }
    }
    out
}

/// Per suite: figures checked (not in the fit), within the target, the
/// median and the largest |error|.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteError {
    pub suite: String,
    pub figures: usize,
    pub within: usize,
    pub median_abs: f64,
    pub max_abs: f64,
    /// The median signed error, which shows a bias.
    pub median: f64,
    /// Figures whose timed boots spread by more than the target.
    pub unsteady: usize,
}

pub fn suite_errors(checks: &[Check]) -> Vec<SuiteError> {
    CHECKED_SUITES
        .iter()
        .filter_map(|suite| {
            let errs: Vec<f64> = checks
                .iter()
                .filter(|c| c.suite == *suite && !c.in_fit)
                .map(Check::error)
                .collect();
            if errs.is_empty() {
                return None;
            }
            let abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
            Some(SuiteError {
                suite: suite.to_string(),
                figures: errs.len(),
                within: abs.iter().filter(|e| **e <= TARGET_ERROR).count(),
                median_abs: median(abs.clone()).unwrap_or(f64::NAN),
                max_abs: abs.iter().cloned().fold(0.0, f64::max),
                median: median(errs).unwrap_or(f64::NAN),
                unsteady: checks
                    .iter()
                    .filter(|c| c.suite == *suite && !c.in_fit && c.spread > TARGET_ERROR)
                    .count(),
            })
        })
        .collect()
}

// --- projections --------------------------------------------------------------

/// A figure's projected cycles per operation on a platform.
pub fn project_one(p: Platform, instructions: f64, ev: &Events) -> Cost {
    let mut sum = NATIVE_CPI.scale(instructions);
    for e in Event::ALL {
        let n = ev.get(e);
        if n > 0.0 {
            let c = reference(p, e).map_or(Cost::at_least(0.0), |r| r.cost);
            sum = sum.plus(c.scale(n));
        }
    }
    sum
}

/// One projected pair: a figure immediate and batched, on every platform.
#[derive(Debug, Clone, PartialEq)]
pub struct Projected {
    pub suite: String,
    pub name: String,
    pub batch: u64,
    pub vcpus: u64,
    /// Per platform (in [`Platform::ALL`] order): (immediate, batched).
    pub cells: Vec<(Cost, Cost)>,
    /// This run: (immediate, batched) as the fit predicts them, and as
    /// the timed boots measured them (medians across boots).
    pub this_run_predicted: Option<(f64, f64)>,
    pub this_run_measured: Option<(f64, f64)>,
}

impl Projected {
    /// immediate ÷ batched with every cost at its low end, and at its
    /// high end (one consistent guess each, not the widest interval).
    pub fn ratio(&self, i: usize) -> (f64, f64) {
        let (a, b) = self.cells[i];
        (a.lo / b.lo, a.hi / b.hi)
    }

    pub fn label(&self) -> String {
        let mut l = format!("`{} {}`", self.suite, self.name);
        if self.suite == "mm" || self.suite == "cpu" {
            let _ = write!(l, ", batch {}", self.batch);
        }
        if self.vcpus > 1 {
            let _ = write!(l, ", {} vCPUs", self.vcpus);
        }
        l
    }
}

/// The figures projected: per suite, each benchmark at its largest batch
/// (mm, cpu) or its most vCPUs (smp, workload), immediate against batched.
pub fn project(s: &Summary, fit: &Fit) -> Vec<Projected> {
    let mut out: Vec<Projected> = Vec::new();
    for suite in ["mm", "cpu", "smp", "workload"] {
        let mut names: Vec<&str> = Vec::new();
        for a in s.suite(suite, FigKind::Counted) {
            if !names.contains(&a.key.name.as_str()) {
                names.push(&a.key.name);
            }
        }
        for name in names {
            let pick = |backend: &str| {
                s.suite(suite, FigKind::Counted)
                    .filter(|a| a.key.name == name && a.key.backend == backend)
                    .max_by_key(|a| (a.key.vcpus, a.key.batch))
            };
            let (Some(imm), Some(bat)) = (pick("immediate"), pick("batched")) else {
                continue;
            };
            let (Some(ei), Some(eb)) = (Events::of(&imm.fig), Events::of(&bat.fig)) else {
                continue;
            };
            let measured = |a: &Agg| s.twin(a, FigKind::Timed).map(|t| t.median);
            out.push(Projected {
                suite: suite.to_string(),
                name: name.to_string(),
                batch: bat.key.batch,
                vcpus: bat.key.vcpus,
                this_run_predicted: fit
                    .predict(imm.median, &ei)
                    .zip(fit.predict(bat.median, &eb)),
                this_run_measured: measured(imm).zip(measured(bat)),
                cells: Platform::ALL
                    .iter()
                    .map(|p| {
                        (
                            project_one(*p, imm.median, &ei),
                            project_one(*p, bat.median, &eb),
                        )
                    })
                    .collect(),
            });
        }
    }
    out
}

// --- everything, for the report and results.json ------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The fit on the medians across timed boots: the costs the report
    /// shows.
    pub fit: Fit,
    /// Each timed boot's own fit (index into `Summary::boots`), which the
    /// check predicts that boot with.
    pub boot_fits: Vec<(usize, Fit)>,
    pub checks: Vec<Check>,
    pub suites: Vec<SuiteError>,
    pub projected: Vec<Projected>,
}

pub fn build(s: &Summary) -> Model {
    let fit = Fit::of(s);
    let boot_fits: Vec<(usize, Fit)> = s
        .boots
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind() == FigKind::Timed)
        .map(|(i, _)| (i, Fit::of_boot(s, Some(i))))
        .filter(|(_, f)| f.cpi.is_some())
        .collect();
    let checks = check(s, &boot_fits, &fit);
    let suites = suite_errors(&checks);
    let projected = project(s, &fit);
    Model {
        fit,
        boot_fits,
        checks,
        suites,
        projected,
    }
}

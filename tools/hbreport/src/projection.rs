//! The projection: what each `mm` figure would cost in transitions on other
//! platforms. For every figure it takes the counted privileged operations
//! per operation (PTE writes, `invlpg`, CR3 reloads, CR writes, IPIs, from
//! the queue's counters) and multiplies each by a per-operation cost:
//! (a) the costs the `exits` suite measured in this very run, and (b) the
//! published costs in reference.rs.
//!
//! It is arithmetic on counts, not a measurement: it leaves out everything
//! that is not a transition (the stores themselves, cache and TLB misses,
//! the queue's bookkeeping), and it assumes the guest issues the same
//! operations there as here. The report labels it so.
//!
//! The counts come from a counting boot when the run has one (the counters
//! are exact and the same in every counting boot), else from the timed
//! boots. Column (a) needs timed `exits` figures: an instruction count is
//! not a cost, so a counting-only run leaves (a) unknown.

use crate::log::{Figure, Query};
use crate::reference::{self, Cycles, Op, Platform};
use crate::summary::{FigKind, Summary};

/// One column: where the per-operation costs come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Column {
    /// The `exits` suite of this run.
    ThisRun,
    Reference(Platform),
}

impl Column {
    pub fn all() -> Vec<Column> {
        let mut v = vec![Column::ThisRun];
        v.extend(Platform::ALL.iter().map(|p| Column::Reference(*p)));
        v
    }

    pub fn label(self) -> String {
        match self {
            Column::ThisRun => "(a) this run's exits".to_string(),
            Column::Reference(p) => format!("(b) {}", p.label()),
        }
    }
}

/// A projected cost per operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Projected {
    Exactly(f64),
    /// At least this: a lower-bound cost contributed to it.
    AtLeast(f64),
    /// An operation that was counted has no known cost on this column.
    Unknown,
}

impl Projected {
    pub fn value(self) -> Option<f64> {
        match self {
            Projected::Exactly(v) | Projected::AtLeast(v) => Some(v),
            Projected::Unknown => None,
        }
    }
}

/// Counted operations per operation, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpCounts {
    pub pte_writes: f64,
    pub invlpg: f64,
    pub cr3_reloads: f64,
    pub cr_writes: f64,
    pub ipis: f64,
}

impl OpCounts {
    pub fn of(f: &Figure) -> Option<OpCounts> {
        let c = f.counters?;
        let n = f.measured_ops() as f64;
        Some(OpCounts {
            pte_writes: c.pte_writes as f64 / n,
            invlpg: c.invlpg as f64 / n,
            cr3_reloads: c.full_flushes as f64 / n,
            cr_writes: c.cr_writes as f64 / n,
            ipis: c.ipis as f64 / n,
        })
    }

    pub fn get(&self, op: Op) -> f64 {
        match op {
            Op::PteWrite => self.pte_writes,
            Op::Invlpg => self.invlpg,
            Op::Cr3Reload => self.cr3_reloads,
            Op::CrWrite => self.cr_writes,
            Op::Ipi => self.ipis,
        }
    }

    pub fn total(&self) -> f64 {
        Op::ALL.iter().map(|op| self.get(*op)).sum()
    }
}

/// Per-operation costs of one column.
pub trait Costs {
    fn cost(&self, op: Op) -> Cycles;
}

/// The costs the `exits` suite measured (median cycles per operation).
#[derive(Debug, Clone, Default)]
pub struct MeasuredCosts {
    pub by_op: Vec<(Op, f64)>,
}

impl MeasuredCosts {
    /// The timed `exits` medians across boots.
    pub fn from_summary(s: &Summary) -> MeasuredCosts {
        let by_op = Op::ALL
            .iter()
            .filter_map(|op| {
                op.exit_names().iter().find_map(|name| {
                    s.find(
                        &Query {
                            suite: Some("exits"),
                            name: Some(name),
                            ..Query::default()
                        },
                        FigKind::Timed,
                    )
                    .map(|a| (*op, a.median))
                })
            })
            .collect();
        MeasuredCosts { by_op }
    }
}

impl Costs for MeasuredCosts {
    fn cost(&self, op: Op) -> Cycles {
        match self.by_op.iter().find(|(o, _)| *o == op) {
            // The projection prints whole cycles; sub-cycle precision in an
            // exit cost measured with a 26-cycle TSC step would be noise.
            Some((_, c)) => Cycles::Exactly(c.round().clamp(0.0, f64::from(u32::MAX)) as u32),
            None => Cycles::Unknown,
        }
    }
}

/// The published costs of one reference platform.
pub struct ReferenceCosts(pub Platform);

impl Costs for ReferenceCosts {
    fn cost(&self, op: Op) -> Cycles {
        reference::cost(self.0, op).cycles
    }
}

/// Σ count(op) × cost(op). An operation that was not counted costs nothing
/// whatever its price; one that was counted and has no price makes the
/// whole projection unknown.
pub fn project_counts(counts: &OpCounts, costs: &dyn Costs) -> Projected {
    let mut sum = 0.0;
    let mut bound = false;
    for op in Op::ALL {
        let n = counts.get(op);
        if n == 0.0 {
            continue;
        }
        match costs.cost(op) {
            Cycles::NoExit => {}
            Cycles::Exactly(c) => sum += n * f64::from(c),
            Cycles::AtLeast(c) => {
                sum += n * f64::from(c);
                bound = true;
            }
            Cycles::Unknown => return Projected::Unknown,
        }
    }
    if bound {
        Projected::AtLeast(sum)
    } else {
        Projected::Exactly(sum)
    }
}

/// One projected `mm` figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub backend: String,
    pub batch: u64,
    pub counts: OpCounts,
    /// The timed median across boots, when the run has timed boots.
    pub measured_cycles: Option<f64>,
    /// In the order of [`Column::all`].
    pub projected: Vec<Projected>,
}

/// The projection of every `mm` figure that has counters.
#[derive(Debug, Clone)]
pub struct Projection {
    pub columns: Vec<Column>,
    pub measured: MeasuredCosts,
    pub rows: Vec<Row>,
}

pub fn project(s: &Summary) -> Projection {
    let measured = MeasuredCosts::from_summary(s);
    let columns = Column::all();
    // One row per mm figure: the counted one when the run has it.
    let kind = if s.suite("mm", FigKind::Counted).next().is_some() {
        FigKind::Counted
    } else {
        FigKind::Timed
    };
    let rows = s
        .suite("mm", kind)
        .filter_map(|a| {
            let counts = OpCounts::of(&s.counters_source(a).fig)?;
            let projected = columns
                .iter()
                .map(|col| match col {
                    Column::ThisRun => project_counts(&counts, &measured),
                    Column::Reference(p) => project_counts(&counts, &ReferenceCosts(*p)),
                })
                .collect();
            Some(Row {
                name: a.key.name.clone(),
                backend: a.key.backend.clone(),
                batch: a.key.batch,
                counts,
                measured_cycles: s.twin(a, FigKind::Timed).map(|t| t.median),
                projected,
            })
        })
        .collect();
    Projection {
        columns,
        measured,
        rows,
    }
}

impl Projection {
    /// The row for one figure.
    pub fn row(&self, name: &str, backend: &str, batch: u64) -> Option<&Row> {
        self.rows
            .iter()
            .rev()
            .find(|r| r.name == name && r.backend == backend && r.batch == batch)
    }
}

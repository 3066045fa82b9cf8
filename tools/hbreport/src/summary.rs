//! Several boots, one set of figures: the step between reading the logs
//! (log.rs) and everything that reports on them. A results directory holds
//! one serial log per boot: counting boots (QEMU icount, figures in guest
//! instructions, exact) and timed boots (figures in TSC cycles, which move
//! from boot to boot). This module groups the `result` records of every
//! boot by (suite, name, backend, batch, vCPUs, unit) and gives each group
//! one value:
//! - a timed figure is the median across boots, with its min–max spread;
//!   it is *noisy* when that spread exceeds [`NOISY_SPREAD`] of the median;
//! - a counted figure must be the same in every counting boot; when it is
//!   not, the group says so ([`Agg::identical`]) and the report flags it,
//!   because it means something nondeterministic crept into the guest.

use crate::host::Host;
use crate::log::{Env, Figure, Log, Query};

/// A timed figure whose min–max range across boots exceeds this fraction
/// of its median is flagged as noisy (issue 8's threshold: 10%).
pub const NOISY_SPREAD: f64 = 0.10;

/// Which kind of figure: exact counts, or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FigKind {
    /// Guest instructions per operation (icount): identical across boots.
    Counted,
    /// TSC cycles per operation: median across boots.
    Timed,
}

impl FigKind {
    /// The `unit` of a result record.
    pub fn of_unit(unit: &str) -> FigKind {
        if unit == "instructions" {
            FigKind::Counted
        } else {
            FigKind::Timed
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FigKind::Counted => "counted",
            FigKind::Timed => "timed",
        }
    }

    /// What a value of this kind is, per operation.
    pub fn unit_short(self) -> &'static str {
        match self {
            FigKind::Counted => "instructions",
            FigKind::Timed => "cycles",
        }
    }
}

/// One boot: its serial log and what is known of how it ran.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The log's file name, relative (never a machine path).
    pub file: String,
    pub log: Log,
    /// From host.json's entry for this log, when bench.sh recorded one.
    pub accel: Option<String>,
    pub tcg_thread: Option<String>,
}

impl Boot {
    /// Counting when the guest says its TSC counts instructions, else
    /// timed; a log without an env record goes by its first figure.
    pub fn kind(&self) -> FigKind {
        let unit = self
            .log
            .env()
            .and_then(|e| e.unit.clone())
            .or_else(|| self.log.figures().next().map(|f| f.unit.clone()))
            .unwrap_or_default();
        FigKind::of_unit(&unit)
    }

    /// The accelerator: what bench.sh recorded, else what the guest saw
    /// (a counting boot is TCG by construction: QEMU counts instructions
    /// only when it translates them).
    pub fn accel(&self) -> Option<String> {
        if let Some(a) = &self.accel {
            return Some(a.clone());
        }
        if self.kind() == FigKind::Counted {
            return Some("tcg".into());
        }
        let hv = self.log.env().and_then(|e| e.hypervisor.clone())?;
        match hv.as_str() {
            "tcg" | "kvm" => Some(hv),
            _ => None,
        }
    }

    /// How the VMM ran this boot, in words: "TCG, single-threaded, icount".
    /// Unknown parts are left out.
    pub fn mode(&self) -> String {
        let accel = self.accel();
        let mut s = match accel.as_deref() {
            Some("tcg") => "TCG".to_string(),
            Some("kvm") => "KVM".to_string(),
            Some(a) => a.to_string(),
            None => "accelerator unknown".to_string(),
        };
        if accel.as_deref() == Some("tcg") {
            // QEMU refuses multi-threaded TCG with icount.
            let thread = if self.kind() == FigKind::Counted {
                Some("single")
            } else {
                self.tcg_thread.as_deref()
            };
            if let Some(t) = thread {
                s += &format!(", {t}-threaded");
            }
        }
        if self.kind() == FigKind::Counted {
            s += ", icount";
        }
        s
    }
}

/// The identity of a figure across boots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub suite: String,
    pub name: String,
    pub backend: String,
    pub batch: u64,
    pub vcpus: u64,
    pub unit: String,
}

impl Key {
    pub fn of(f: &Figure) -> Key {
        Key {
            suite: f.suite.clone(),
            name: f.name.clone(),
            backend: f.backend.clone(),
            batch: f.batch,
            vcpus: f.vcpus,
            unit: f.unit.clone(),
        }
    }

    /// A stable, readable name: `mm/map_unmap/batched/batch=256/vcpus=1`
    /// (the unit is not in it: a counted and a timed figure of the same
    /// operation share the id and differ in `unit`).
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/batch={}/vcpus={}",
            self.suite, self.name, self.backend, self.batch, self.vcpus
        )
    }
}

/// One figure over every boot that printed it.
#[derive(Debug, Clone)]
pub struct Agg {
    pub key: Key,
    pub kind: FigKind,
    /// The boots (indices into [`Summary::boots`]) that printed it, and the
    /// figure's per-operation median in each.
    pub boots: Vec<usize>,
    pub values: Vec<f64>,
    /// Across boots: the median of `values`, their least and greatest.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The median across boots of each boot's p99 over repetitions.
    pub p99: f64,
    /// Counted figures: every boot printed the same figure (per_op and
    /// counters). Timed figures: always true.
    pub identical: bool,
    /// The first boot's record: ops, reps, counters, checksum.
    pub fig: Figure,
    /// Each boot's checksum, in `boots` order (workloads).
    pub checksums: Vec<Option<String>>,
}

impl Agg {
    /// (max − min) / median across boots; 0 for one boot.
    pub fn spread(&self) -> f64 {
        if self.values.len() < 2 || self.median <= 0.0 {
            return 0.0;
        }
        (self.max - self.min) / self.median
    }

    /// A timed figure whose boots disagree by more than [`NOISY_SPREAD`].
    pub fn noisy(&self) -> bool {
        self.kind == FigKind::Timed && self.spread() > NOISY_SPREAD
    }

    /// The value in boot `i`, if that boot printed the figure.
    pub fn value_in(&self, boot: usize) -> Option<f64> {
        self.boots
            .iter()
            .position(|b| *b == boot)
            .map(|i| self.values[i])
    }

    fn matches(&self, q: &Query<'_>) -> bool {
        q.suite.is_none_or(|s| s == self.key.suite)
            && q.name.is_none_or(|n| n == self.key.name)
            && q.backend.is_none_or(|b| b == self.key.backend)
            && q.batch.is_none_or(|b| b == self.key.batch)
            && q.vcpus.is_none_or(|v| v == self.key.vcpus)
    }
}

/// The median of a non-empty slice (mean of the middle two when even).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        // Halves first: the sum of two values near f64::MAX overflows.
        v[n / 2 - 1] / 2.0 + v[n / 2] / 2.0
    }
}

/// Every boot and the figures over them.
#[derive(Debug, Clone)]
pub struct Summary {
    pub boots: Vec<Boot>,
    pub figures: Vec<Agg>,
    pub host: Host,
}

impl Summary {
    /// Groups the figures of `boots` (in the order given: the first boot
    /// that printed a figure decides where it is listed).
    pub fn new(boots: Vec<Boot>, host: Host) -> Summary {
        let mut figures: Vec<Agg> = Vec::new();
        let mut index: std::collections::HashMap<Key, usize> = Default::default();
        for (b, boot) in boots.iter().enumerate() {
            // A later line of the same boot wins over an earlier one (a
            // rerun of the same figure), as in Log::find.
            let mut mine: Vec<(Key, &Figure)> = Vec::new();
            for f in boot.log.figures() {
                let k = Key::of(f);
                match mine.iter_mut().find(|(mk, _)| *mk == k) {
                    Some(slot) => slot.1 = f,
                    None => mine.push((k, f)),
                }
            }
            for (k, f) in mine {
                match index.get(&k) {
                    Some(&i) => {
                        let a = &mut figures[i];
                        if a.kind == FigKind::Counted
                            && (a.fig.per_op != f.per_op || a.fig.counters != f.counters)
                        {
                            a.identical = false;
                        }
                        a.boots.push(b);
                        a.values.push(f.per_op.median);
                        a.checksums.push(f.checksum.clone());
                        // p99 is recomputed below from every boot.
                    }
                    None => {
                        index.insert(k.clone(), figures.len());
                        figures.push(Agg {
                            kind: FigKind::of_unit(&k.unit),
                            key: k,
                            boots: vec![b],
                            values: vec![f.per_op.median],
                            median: 0.0,
                            min: 0.0,
                            max: 0.0,
                            p99: 0.0,
                            identical: true,
                            fig: f.clone(),
                            checksums: vec![f.checksum.clone()],
                        });
                    }
                }
            }
        }
        for a in &mut figures {
            a.median = median(&a.values);
            a.min = a.values.iter().copied().fold(f64::INFINITY, f64::min);
            a.max = a.values.iter().copied().fold(0.0, f64::max);
            let p99s: Vec<f64> = a
                .boots
                .iter()
                .filter_map(|b| {
                    boots[*b]
                        .log
                        .figures()
                        .filter(|f| Key::of(f) == a.key)
                        .last()
                        .map(|f| f.per_op.p99)
                })
                .collect();
            a.p99 = median(&p99s);
        }
        Summary {
            boots,
            figures,
            host,
        }
    }

    /// The figures of one kind, in report order.
    pub fn of_kind(&self, kind: FigKind) -> impl Iterator<Item = &Agg> {
        self.figures.iter().filter(move |a| a.kind == kind)
    }

    /// The figures of one suite and kind.
    pub fn suite<'a>(&'a self, suite: &'a str, kind: FigKind) -> impl Iterator<Item = &'a Agg> {
        self.of_kind(kind).filter(move |a| a.key.suite == suite)
    }

    /// Every figure of one suite, either kind.
    pub fn suite_any<'a>(&'a self, suite: &'a str) -> impl Iterator<Item = &'a Agg> {
        self.figures.iter().filter(move |a| a.key.suite == suite)
    }

    /// The figure matching every given field, of this kind.
    pub fn find(&self, q: &Query<'_>, kind: FigKind) -> Option<&Agg> {
        self.of_kind(kind).find(|a| a.matches(q))
    }

    /// The same figure in the other unit (counted ↔ timed), if measured.
    pub fn twin(&self, a: &Agg, kind: FigKind) -> Option<&Agg> {
        self.of_kind(kind).find(|b| {
            b.key.suite == a.key.suite
                && b.key.name == a.key.name
                && b.key.backend == a.key.backend
                && b.key.batch == a.key.batch
                && b.key.vcpus == a.key.vcpus
        })
    }

    /// Whether any figure of this kind was measured.
    pub fn has(&self, kind: FigKind) -> bool {
        self.of_kind(kind).next().is_some()
    }

    /// The boots of one kind.
    pub fn boots_of(&self, kind: FigKind) -> impl Iterator<Item = &Boot> {
        self.boots.iter().filter(move |b| b.kind() == kind)
    }

    /// The environment: a timed boot's env when there is one (it carries
    /// the TSC frequency), else the first boot's.
    pub fn env(&self) -> Option<&Env> {
        self.boots_of(FigKind::Timed)
            .find_map(|b| b.log.env())
            .or_else(|| self.boots.iter().find_map(|b| b.log.env()))
    }

    /// The ring's capacity: from env, else the largest `mm` batch.
    pub fn ring_capacity(&self) -> Option<u64> {
        self.env()
            .and_then(|e| e.ring_capacity)
            .or_else(|| self.suite_any("mm").map(|a| a.key.batch).max())
    }

    /// The most vCPUs any figure ran on.
    pub fn max_vcpus(&self) -> Option<u64> {
        self.figures.iter().map(|a| a.key.vcpus).max()
    }

    /// The figure whose counters describe `a`: its counted twin when that
    /// has counters (exact, and the same in every counting boot), else `a`.
    pub fn counters_source<'a>(&'a self, a: &'a Agg) -> &'a Agg {
        self.twin(a, FigKind::Counted)
            .filter(|c| c.fig.counters.is_some())
            .unwrap_or(a)
    }

    /// `a.value / b.value` in every boot that printed both: the least and
    /// the greatest. None when no boot printed both.
    pub fn ratio_range(&self, a: &Agg, b: &Agg) -> Option<(f64, f64)> {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for (i, boot) in a.boots.iter().enumerate() {
            if let Some(bv) = b.value_in(*boot) {
                let r = a.values[i] / bv;
                lo = lo.min(r);
                hi = hi.max(r);
            }
        }
        (lo <= hi).then_some((lo, hi))
    }

    /// Counted figures whose boots disagree: nondeterminism in the guest.
    pub fn counted_differences(&self) -> Vec<&Agg> {
        self.of_kind(FigKind::Counted)
            .filter(|a| !a.identical)
            .collect()
    }

    /// Timed figures flagged noisy.
    pub fn noisy(&self) -> Vec<&Agg> {
        self.of_kind(FigKind::Timed).filter(|a| a.noisy()).collect()
    }

    /// Every boot's exit status is 0.
    pub fn all_succeeded(&self) -> bool {
        self.boots.iter().all(|b| b.log.exit_status() == Some(0))
    }

    /// Whether every boot ran in quick mode (None: unknown).
    pub fn quick(&self) -> Option<bool> {
        let q: Vec<bool> = self
            .boots
            .iter()
            .filter_map(|b| b.log.env().and_then(|e| e.quick))
            .collect();
        if q.is_empty() {
            None
        } else {
            Some(q.iter().all(|x| *x))
        }
    }
}

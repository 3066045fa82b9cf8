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
//!
//! A run may also hold boots of a machine with more vCPUs than the run's
//! own (bench.sh's extra boots at 16 vCPUs for the smp and scale suites).
//! A figure from such a boot is a different measurement even where its
//! parameters are the same (2 vCPUs holding pages on a 16-vCPU machine
//! are not 2 on a 4-vCPU one: idle vCPUs, another CPU topology), so the
//! machine's size is part of the key ([`Key::machine`]): figures of
//! different machines are never merged into one median, nor compared as
//! counting boots that should agree. Everything that reads "the run's
//! figures" ([`Summary::of_kind`], [`Summary::find`]) sees the run's own
//! machine; [`Summary::on_machine`] reads the others.

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
    /// The VMM's command line for this boot (its run-*.log), when found.
    pub launch: Option<crate::vmm::Launch>,
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

    /// The vCPUs this boot's machine had: the guest's env record, else its
    /// boot record's online CPUs, else the VMM command line.
    pub fn vcpus(&self) -> Option<u64> {
        self.log
            .env()
            .and_then(|e| e.vcpus)
            .or_else(|| {
                self.log
                    .boot()
                    .and_then(|b| b.get("cpus_online"))
                    .and_then(|v| v.as_u64())
            })
            .or_else(|| self.launch.as_ref().and_then(|l| l.vcpus))
            .filter(|v| (1..=crate::log::MAX_VCPUS).contains(v))
    }

    /// TCG's threading in this boot: the VMM command line's, else what
    /// host.json says of the timed boots (a counting boot is always
    /// single-threaded: QEMU refuses icount with multi-threaded TCG).
    pub fn tcg_thread(&self) -> Option<String> {
        if self.kind() == FigKind::Counted {
            return Some("single".into());
        }
        self.launch
            .as_ref()
            .filter(|l| l.accel.as_deref() == Some("tcg"))
            .and_then(|l| l.tcg_thread.clone())
            .or_else(|| self.tcg_thread.clone())
    }

    /// Where [`Boot::tcg_thread`] comes from, in words.
    pub fn tcg_thread_source(&self) -> &str {
        match &self.launch {
            Some(l) if l.tcg_thread.is_some() => "the QEMU command line",
            _ if self.tcg_thread.is_some() => "host.json",
            _ => "nowhere",
        }
    }

    /// The accelerator: the VMM command line's, else what bench.sh
    /// recorded, else what the guest saw (a counting boot is TCG by
    /// construction: QEMU counts instructions only when it translates
    /// them).
    pub fn accel(&self) -> Option<String> {
        if let Some(a) = self.launch.as_ref().and_then(|l| l.accel.clone()) {
            return Some(a);
        }
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
            if let Some(t) = self.tcg_thread() {
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
    /// The vCPUs of the machine that measured it, when that is not the
    /// run's own machine ([`Summary::primary_vcpus`]); None: the run's.
    pub machine: Option<u64>,
}

impl Key {
    /// The key of a figure measured on the run's own machine.
    pub fn of(f: &Figure) -> Key {
        Key::on(f, None)
    }

    /// The key of a figure measured on a machine of `machine` vCPUs (None:
    /// the run's own).
    pub fn on(f: &Figure, machine: Option<u64>) -> Key {
        Key {
            suite: f.suite.clone(),
            name: f.name.clone(),
            backend: f.backend.clone(),
            batch: f.batch,
            vcpus: f.vcpus,
            unit: f.unit.clone(),
            machine,
        }
    }

    /// A stable, readable name: `mm/map_unmap/batched/batch=256/vcpus=1`
    /// (the unit is not in it: a counted and a timed figure of the same
    /// operation share the id and differ in `unit`). A figure of another
    /// machine than the run's ends in `/smp=N`, N its vCPUs.
    pub fn id(&self) -> String {
        let mut id = format!(
            "{}/{}/{}/batch={}/vcpus={}",
            self.suite, self.name, self.backend, self.batch, self.vcpus
        );
        if let Some(m) = self.machine {
            id += &format!("/smp={m}");
        }
        id
    }

    /// The same figure in another unit.
    fn same_but_unit(&self, other: &Key) -> bool {
        self.suite == other.suite
            && self.name == other.name
            && self.backend == other.backend
            && self.batch == other.batch
            && self.vcpus == other.vcpus
            && self.machine == other.machine
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
    /// The vCPUs of the run's own machine: host.json's when a boot had
    /// them, else the first boot's that says (None: no boot says).
    pub primary_vcpus: Option<u64>,
}

impl Summary {
    /// Groups the figures of `boots` (in the order given: the first boot
    /// that printed a figure decides where it is listed).
    pub fn new(boots: Vec<Boot>, host: Host) -> Summary {
        // host.json's --smp when some boot had it (a host record of another
        // run must not push every boot onto "another machine"), else the
        // first boot's that says.
        let primary_vcpus = host
            .smp
            .filter(|v| boots.iter().any(|b| b.vcpus() == Some(*v)))
            .or_else(|| boots.iter().find_map(Boot::vcpus));
        let machine_of = |boot: &Boot| boot.vcpus().filter(|v| Some(*v) != primary_vcpus);
        let mut figures: Vec<Agg> = Vec::new();
        let mut index: std::collections::HashMap<Key, usize> = Default::default();
        for (b, boot) in boots.iter().enumerate() {
            let machine = machine_of(boot);
            // A later line of the same boot wins over an earlier one (a
            // rerun of the same figure), as in Log::find.
            let mut mine: Vec<(Key, &Figure)> = Vec::new();
            for f in boot.log.figures() {
                let k = Key::on(f, machine);
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
                    let machine = machine_of(&boots[*b]);
                    boots[*b]
                        .log
                        .figures()
                        .filter(|f| Key::on(f, machine) == a.key)
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
            primary_vcpus,
        }
    }

    /// The figures of one kind measured on the run's own machine, in
    /// report order.
    pub fn of_kind(&self, kind: FigKind) -> impl Iterator<Item = &Agg> {
        self.on_machine(None, kind)
    }

    /// The figures of one kind measured on a machine of `machine` vCPUs
    /// (None: the run's own).
    pub fn on_machine(&self, machine: Option<u64>, kind: FigKind) -> impl Iterator<Item = &Agg> {
        self.figures
            .iter()
            .filter(move |a| a.kind == kind && a.key.machine == machine)
    }

    /// The machines other than the run's own that measured figures, by
    /// their vCPUs, fewest first.
    pub fn other_machines(&self) -> Vec<u64> {
        let mut m: Vec<u64> = self.figures.iter().filter_map(|a| a.key.machine).collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// The boots of the machine `machine` (None: the run's own).
    pub fn boots_on(&self, machine: Option<u64>) -> impl Iterator<Item = &Boot> {
        let primary = self.primary_vcpus;
        self.boots
            .iter()
            .filter(move |b| b.vcpus().filter(|v| Some(*v) != primary) == machine)
    }

    /// The figures of one suite and kind.
    pub fn suite<'a>(&'a self, suite: &'a str, kind: FigKind) -> impl Iterator<Item = &'a Agg> {
        self.of_kind(kind).filter(move |a| a.key.suite == suite)
    }

    /// Every figure of one suite, either kind, on the run's own machine.
    pub fn suite_any<'a>(&'a self, suite: &'a str) -> impl Iterator<Item = &'a Agg> {
        self.figures
            .iter()
            .filter(move |a| a.key.suite == suite && a.key.machine.is_none())
    }

    /// The figure matching every given field, of this kind.
    pub fn find(&self, q: &Query<'_>, kind: FigKind) -> Option<&Agg> {
        self.of_kind(kind).find(|a| a.matches(q))
    }

    /// The same figure in the other unit (counted ↔ timed), on the same
    /// machine, if measured.
    pub fn twin(&self, a: &Agg, kind: FigKind) -> Option<&Agg> {
        self.figures
            .iter()
            .find(|b| b.kind == kind && b.key.same_but_unit(&a.key))
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
    /// the TSC frequency), else the first boot's; the run's own machine's
    /// boots first.
    pub fn env(&self) -> Option<&Env> {
        let own: Vec<&Boot> = self.boots_on(None).collect();
        own.iter()
            .filter(|b| b.kind() == FigKind::Timed)
            .find_map(|b| b.log.env())
            .or_else(|| own.iter().find_map(|b| b.log.env()))
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

    /// Counted figures whose boots disagree: nondeterminism in the guest
    /// (every machine's).
    pub fn counted_differences(&self) -> Vec<&Agg> {
        self.figures
            .iter()
            .filter(|a| a.kind == FigKind::Counted && !a.identical)
            .collect()
    }

    /// Timed figures flagged noisy (every machine's).
    pub fn noisy(&self) -> Vec<&Agg> {
        self.figures
            .iter()
            .filter(|a| a.kind == FigKind::Timed && a.noisy())
            .collect()
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

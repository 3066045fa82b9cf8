//! report.md: the human-readable half of a results directory, written for
//! someone who has never seen the project. It reads top-down the way such
//! a reader asks: what ran and where, what it found (a few headline
//! figures, each with what it means), how to read the rest (every figure
//! and column defined), did it meet the project's targets, what the plots
//! and the full tables show, and what the counts would mean on hypervisors
//! that trap what this platform does not. The complete data is in
//! results.json and results.csv; tables here collapse what repeats.
//!
//! Every table header is a key of [`COLUMNS`], whose definitions the report
//! prints, so no column goes undefined (a test checks it).

use crate::host::Host;
use crate::log::Query;
use crate::model::Model;
use crate::plots::Plot;
use crate::summary::{Agg, FigKind, Summary, NOISY_SPREAD};
use crate::targets::{Status, Target, MM_NAMES};
use std::fmt::Write;

/// A count of cycles or nanoseconds, as people read them: thousands
/// separated, fewer decimals as the number grows.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return if x > 0.0 { "∞".into() } else { "n/a".into() };
    }
    let a = x.abs();
    // Compared after rounding to each branch's precision, so that 999.6
    // prints as "1,000", not "1000", and 99.96 as "100", not "100.0".
    if a.round() >= 1000.0 {
        group(x.round(), 0)
    } else if (a * 10.0).round() >= 1000.0 {
        format!("{x:.0}")
    } else if (a * 100.0).round() >= 1000.0 {
        format!("{x:.1}")
    } else if (a * 1000.0).round() >= 1000.0 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// `x` with thousands separators and `decimals` decimals. Values beyond
/// what an i128 holds are printed in exponent form rather than wrapped.
fn group(x: f64, decimals: usize) -> String {
    if x.abs() >= 1e30 {
        return format!("{x:.3e}");
    }
    let text = format!("{:.*}", decimals, x.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (text, None),
    };
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// An exact instruction count per operation: thousands separated, one
/// decimal where the division left one (the figure is exact; the decimal
/// shows the per-operation share of a whole count).
pub fn exact(x: f64) -> String {
    if !x.is_finite() {
        return thousands(x);
    }
    if (x - x.round()).abs() < 0.05 {
        group(x.round(), 0)
    } else if x.abs() < 10.0 {
        format!("{x:.2}")
    } else {
        group(x, 1)
    }
}

/// A ratio: "24.3x".
pub fn ratio(x: f64) -> String {
    if !x.is_finite() {
        return "∞".into();
    }
    if x >= 100.0 {
        format!("{x:.0}x")
    } else if x >= 10.0 {
        format!("{x:.1}x")
    } else {
        format!("{x:.2}x")
    }
}

/// A per-operation count (flushes, privileged operations): small numbers
/// with enough decimals to show 1/256.
pub(crate) fn count(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(0.0) => "0".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// Text for a table cell: a `|` would split the cell.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A figure's value for a table: counted exact, timed with its spread
/// across boots and the noisy mark.
pub(crate) fn value(a: Option<&Agg>) -> String {
    let Some(a) = a else {
        return "—".into();
    };
    match a.kind {
        FigKind::Counted => {
            let mut v = exact(a.median);
            if !a.identical {
                v += " ⚠ differs";
            }
            v
        }
        FigKind::Timed => {
            let mut v = thousands(a.median);
            if a.values.len() > 1 {
                let pct = a.spread() * 100.0;
                if a.noisy() {
                    v += &format!(" (⚠ {pct:.0}%)");
                } else {
                    v += &format!(" ({pct:.0}%)");
                }
            }
            v
        }
    }
}

/// `a / b` as a ratio cell.
pub(crate) fn div(a: Option<&Agg>, b: Option<&Agg>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => ratio(a.median / b.median),
        _ => "—".into(),
    }
}

/// Every column any table uses, with its definition. Tables name their
/// columns by these keys only.
pub const COLUMNS: &[(&str, &str)] = &[
    ("batch", "operations per flush: how many updates the queue collects before applying them (1 = every operation flushed on its own)"),
    ("vCPUs", "vCPUs holding the pages (smp: the one unmapping plus the readers that must be shot down)"),
    ("instructions/op", "guest instructions per operation, counted by QEMU's icount in a counting boot: exact, the same in every counting boot; a privileged instruction counts as one, whatever the host pays for it"),
    ("cycles/op", "TSC cycles per operation in a timed boot: the median over repetitions within each boot, then the median across timed boots; in brackets the spread, (max − min) ÷ median across boots, marked ⚠ when it exceeds 10%"),
    ("ns/op", "the same timed figure in nanoseconds, from the guest's TSC frequency"),
    ("privileged/op", "privileged operations issued per operation (page-table stores, `invlpg`, full TLB flushes, control-register writes, IPIs), from the queue's counters: what a host that traps them would charge as transitions"),
    ("invalidations/op", "TLB invalidations per operation: `invlpg`s plus full flushes"),
    ("IPIs/page", "inter-processor interrupts sent per page, for shootdowns"),
    ("rounds/page", "shootdown rounds per page: one round interrupts every vCPU that may hold the translations and waits for all of them"),
    ("immediate ÷ batched", "how many times more immediate costs than batched, in the unit named; above 1, batching saves"),
    ("batched ÷ floor", "how many times the floor batched costs: the queue's own overhead (1x would be no overhead)"),
    ("÷ 1 vCPU", "this row's figure over the same figure at 1 vCPU on the same machine: 1.00x is perfectly flat"),
    ("aggregate Mops/s", "millions of operations per second, all vCPUs together: the TSC frequency ÷ the timed cycles/op"),
    ("speed-up", "1 vCPU's timed cycles/op ÷ this row's: the aggregate rate against one vCPU's (2.00x: twice the work per second)"),
    ("IPIs/op", "inter-processor interrupts sent per operation, all vCPUs together, from the queue's counters"),
    ("backend", "immediate (every update applied at once) or batched (through the queue)"),
    ("instructions/MiB", "guest instructions per MiB of memory the operation covers (counted): the figure per page times the pages a MiB takes (256 of 4 KiB, one half of 2 MiB)"),
    ("cycles/MiB", "TSC cycles per MiB covered (timed, median across boots; the spread in brackets)"),
    ("4 KiB ÷ 2 MiB", "how many times more covering a MiB costs with 4 KiB pages than with 2 MiB pages, in the unit named"),
    ("privileged/MiB", "privileged operations per MiB covered, from the queue's counters: what a trapping host would charge per MiB"),
    ("checksum", "a hash of the workload's data at its end; it must be the same under both backends"),
    ("operation", "the privileged instruction the `exits` suite repeats"),
    ("workload", "a whole task built from many mm calls"),
    ("figure", "which operation"),
    ("target", "the project's aim, in one line"),
    ("requirement", "the figure and the threshold it must meet"),
    ("basis", "which kind of figure the verdict uses: instruction counts for the queue's own software cost, timed medians across boots where privileged operations (flushes, shootdowns) are part of the cost, counters for counts of operations"),
    ("measured", "the figures the verdict was computed from"),
    ("verdict", "met, NOT MET, or not evaluated (a figure was missing)"),
    ("log", "the boot's serial log in this directory"),
    ("kind", "counting (QEMU icount: instructions, exact) or timed (TSC cycles)"),
    ("mode", "how QEMU ran the boot: the accelerator, TCG's threading, icount"),
    ("exit", "the guest's exit status (0: success)"),
    ("figures", "result records the boot printed"),
];

pub(crate) fn header(names: &[&str]) -> String {
    let mut h = String::from("|");
    let mut r = String::from("|");
    for n in names {
        let _ = write!(h, " {n} |");
        r += "---|";
    }
    format!("{h}\n{r}")
}

/// Whether `words` occurs in `text` as whole words.
fn has_words(text: &str, words: &str) -> bool {
    text.match_indices(words).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + words.len()..].chars().next();
        before.is_none_or(|c| c == ' ') && after.is_none_or(|c| c == ' ')
    })
}

/// The COLUMNS key a header names: itself, or a key with a backend or a
/// unit before or after it ("batched cycles/op", "immediate ÷ batched
/// instructions"). The longest match wins.
pub fn column_key(header: &str) -> Option<&'static str> {
    COLUMNS
        .iter()
        .chain(crate::model::COLUMNS)
        .map(|(k, _)| *k)
        .filter(|k| has_words(header, k))
        .max_by_key(|k| k.len())
}

/// Every table header cell of a markdown text (a `|` line followed by a
/// `|---` line).
pub fn table_headers(md: &str) -> Vec<String> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    for w in lines.windows(2) {
        if w[0].starts_with('|') && w[1].starts_with("|---") {
            for c in w[0].trim_matches('|').split('|') {
                out.push(c.trim().to_string());
            }
        }
    }
    out
}

/// The COLUMNS keys the tables of `md` use.
fn used_columns(md: &str) -> Vec<&'static str> {
    let mut used = Vec::new();
    for h in table_headers(md) {
        if let Some(k) = column_key(&h) {
            if !used.contains(&k) {
                used.push(k);
            }
        }
    }
    used
}

/// The whole report.
pub fn render(s: &Summary, targets: &[Target], model: &Model, plots: &[Plot]) -> String {
    // The body first, so that the glossary defines exactly the columns
    // its tables use.
    let mut body = String::new();
    targets_section(&mut body, targets);
    plots_section(&mut body, plots);
    figures(&mut body, s);
    crate::model::markdown(&mut body, model);
    boots_section(&mut body, s);
    let used = used_columns(&body);
    let mut out = String::new();
    title(&mut out, s);
    summary(&mut out, s, targets);
    glossary(&mut out, s, &used);
    out += &body;
    out
}

fn is_emulated(s: &Summary) -> bool {
    s.boots.iter().any(|b| b.accel().as_deref() == Some("tcg"))
}

/// "QEMU 7.2.22": the VMM as host.json names it, without the vendor's
/// build suffix.
fn vmm_name(h: &Host) -> String {
    match (&h.vmm, &h.vmm_version) {
        (vmm, Some(v)) => {
            let v = v
                .trim_start_matches("QEMU emulator version ")
                .split(" (")
                .next()
                .unwrap_or_default()
                .trim();
            match vmm.as_deref() {
                Some("qemu") | None => format!("QEMU {v}"),
                Some(_) => v.to_string(),
            }
        }
        (Some(vmm), None) => vmm.clone(),
        (None, None) => "VMM not recorded".into(),
    }
}

/// How the boots of one kind on one machine ran: "TCG, single-threaded,
/// icount". `machine` None: every boot.
fn modes_of(s: &Summary, kind: FigKind, machine: Option<Option<u64>>) -> Option<String> {
    let mut modes: Vec<String> = Vec::new();
    for b in s.boots_of(kind) {
        if let Some(m) = machine {
            if b.vcpus().filter(|v| Some(*v) != s.primary_vcpus) != m {
                continue;
            }
        }
        let m = b.mode();
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    (!modes.is_empty()).then(|| modes.join(" or "))
}

/// One line for the plots' subtitle and the report's "where".
pub fn platform_line(s: &Summary) -> String {
    platform_line_on(s, None)
}

/// The same line for the figures of one machine: `machine` None is the
/// run's own (every boot's modes), Some(n) the boots of n vCPUs.
pub fn platform_line_on(s: &Summary, machine: Option<u64>) -> String {
    let h = &s.host;
    let only = machine.map(Some);
    let modes = match (
        modes_of(s, FigKind::Counted, only),
        modes_of(s, FigKind::Timed, only),
    ) {
        (Some(c), Some(t)) => format!("counting: {c}; timed: {t}"),
        (Some(c), None) => format!("counting: {c}"),
        (None, Some(t)) => format!("timed: {t}"),
        (None, None) => "no boots".into(),
    };
    let vcpus = machine
        .or(s.primary_vcpus)
        .or(h.smp)
        .map(|v| format!("{v} vCPUs"))
        .unwrap_or_else(|| "vCPUs unknown".into());
    let rev = h
        .git_rev
        .as_ref()
        .map(|r| {
            let short: String = r.chars().take(12).collect();
            match h.git_dirty {
                Some(true) => format!("{short}-dirty"),
                _ => short,
            }
        })
        .or_else(|| s.env().and_then(|e| e.git_rev.clone()))
        .unwrap_or_else(|| "revision unknown".into());
    format!(
        "{} · {} · {} · {} · rev {}",
        if h.recorded() {
            vmm_name(h)
        } else {
            "VMM not recorded".into()
        },
        modes,
        h.machine
            .clone()
            .unwrap_or_else(|| "machine not recorded".into()),
        vcpus,
        rev
    )
}

fn title(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "# hyperbatch benchmark report\n");
    if is_emulated(s) {
        let _ = writeln!(
            out,
            "> **Emulated platform.** These boots ran under QEMU TCG, an emulator that translates every guest \
             instruction. A privileged instruction (a TLB flush, a control-register write, an IPI) costs here \
             what the emulator charges for it, not what a CPU or a hypervisor would. The instruction counts and \
             the queue's counters are exact on any platform; the cycle figures describe this emulator only. The \
             *cost model* section checks a model of the cycles on this run, and the *Projection* section \
             applies it with published costs of real hypervisors.\n"
        );
    }
    if !s.all_succeeded() {
        let failed: Vec<String> = s
            .boots
            .iter()
            .filter(|b| b.log.exit_status() != Some(0))
            .map(|b| match b.log.exit_status() {
                Some(st) => format!("`{}` exited with status {st}", b.file),
                None => format!("`{}` has no exit record (the guest did not finish)", b.file),
            })
            .collect();
        let _ = writeln!(
            out,
            "> **A boot failed:** {}. The figures may be incomplete; see *Boots* at the end.\n",
            failed.join("; ")
        );
    }
    if s.quick() == Some(true) {
        let _ = writeln!(
            out,
            "> **Quick mode:** fewer pages and repetitions than a full run, so the figures are noisier and \
             differ from a full run's. Use a full run (`scripts/bench.sh` without `--quick`) for numbers to \
             quote.\n"
        );
    }
}

fn q<'a>(
    suite: &'a str,
    name: &'a str,
    backend: &'a str,
    batch: Option<u64>,
    vcpus: Option<u64>,
) -> Query<'a> {
    Query {
        suite: Some(suite),
        name: Some(name),
        backend: Some(backend),
        batch,
        vcpus,
    }
}

fn summary(out: &mut String, s: &Summary, targets: &[Target]) {
    let _ = writeln!(out, "## Summary\n");
    let counting = s.boots_of(FigKind::Counted).count();
    let timed = s.boots_of(FigKind::Timed).count();
    let mut suites: Vec<&str> = Vec::new();
    for a in &s.figures {
        if !suites.contains(&a.key.suite.as_str()) {
            suites.push(&a.key.suite);
        }
    }
    let boots = match (counting, timed) {
        (0, t) => format!("{t} timed boot{} (figures in TSC cycles; no counting boot)", plural(t)),
        (c, 0) => format!(
            "{c} counting boot{} (QEMU icount: figures are guest instructions, exact; no timed boot)",
            plural(c)
        ),
        (c, t) => format!(
            "{c} counting boot{} (QEMU icount: figures in guest instructions, exact) and {t} timed boot{} \
             (figures in TSC cycles, median across boots)",
            plural(c),
            plural(t)
        ),
    };
    let mode = match s.quick() {
        Some(true) => "quick ",
        Some(false) => "full ",
        None => "",
    };
    let _ = writeln!(
        out,
        "**What ran:** the {mode}benchmarks of hyperbatch (`run=bench`: the {} suites) in {boots}. \
         hyperbatch is a small kernel that queues its page-table and control-register updates per vCPU and \
         applies them in batches; each benchmark runs the same work with the queue (*batched*) and without it \
         (*immediate*).\n",
        suites.join(", ")
    );
    for m in s.other_machines() {
        let on = |k| s.boots_on(Some(m)).filter(|b| b.kind() == k).count();
        let mut ran: Vec<&str> = Vec::new();
        for a in s.figures.iter().filter(|a| a.key.machine == Some(m)) {
            if !ran.contains(&a.key.suite.as_str()) {
                ran.push(&a.key.suite);
            }
        }
        let _ = writeln!(
            out,
            "Of these boots, {} counting and {} timed ran a {m}-vCPU machine with only the {} suite{}: their \
             figures are kept apart from the run's own {}-vCPU ones (never merged into one median) and are \
             reported in their own tables and plots.\n",
            on(FigKind::Counted),
            on(FigKind::Timed),
            ran.join(" and "),
            plural(ran.len()),
            s.primary_vcpus.map_or("?".into(), |v| v.to_string())
        );
    }
    let h = &s.host;
    let host = if h.recorded() {
        format!(
            "{} ({} CPUs), {}",
            h.cpu_model.as_deref().unwrap_or("host CPU not recorded"),
            h.host_cpus.map_or("?".into(), |n| n.to_string()),
            h.kernel.as_deref().unwrap_or("host kernel not recorded")
        )
    } else {
        "not recorded (this report was made from saved serial logs)".into()
    };
    let _ = writeln!(
        out,
        "**Where:** {}. Host: {host}{}. Run started {}.\n",
        platform_line(s),
        h.kvm_line()
            .filter(|_| s.boots.iter().any(|b| b.accel().as_deref() == Some("kvm")))
            .map(|k| format!("; KVM {k}"))
            .unwrap_or_default(),
        h.date.as_deref().unwrap_or("at a time not recorded")
    );
    let n = |st: Status| targets.iter().filter(|t| t.status == st).count();
    let _ = writeln!(
        out,
        "**Targets:** {} met, {} not met, {} not evaluated (see *Targets*).\n",
        n(Status::Met),
        n(Status::NotMet),
        n(Status::Missing)
    );
    let heads = headlines(s);
    if !heads.is_empty() {
        let _ = writeln!(out, "**What it found:**\n");
        for (i, h) in heads.iter().enumerate() {
            let _ = writeln!(out, "{}. {h}", i + 1);
        }
        let _ = writeln!(out);
    }
    let diffs = s.counted_differences();
    if !diffs.is_empty() {
        let _ = writeln!(
            out,
            "> **{} counted figure(s) differ between counting boots**, which should be impossible: something in \
             the guest is not deterministic. They are marked ⚠ differs below; the first is `{}`.\n",
            diffs.len(),
            diffs[0].key.id()
        );
    }
    let noisy = s.noisy();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "{} of {} timed figures are noisy (their boots differ by more than {:.0}%); they are marked ⚠ in \
             the tables. Compare builds on the counted figures, which do not move between boots; for timed \
             figures to quote, run more boots (`--runs`) on a machine with nothing else running.\n",
            noisy.len(),
            s.figures.iter().filter(|a| a.kind == FigKind::Timed).count(),
            NOISY_SPREAD * 100.0
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "20,118 → 6,085 cycles" for a pair in one kind, or None.
fn pair_text(a: Option<&Agg>, b: Option<&Agg>) -> Option<(f64, String)> {
    let (a, b) = (a?, b?);
    (b.median > 0.0).then(|| {
        let f = |x: &Agg| match x.kind {
            FigKind::Counted => exact(x.median),
            FigKind::Timed => thousands(x.median),
        };
        (
            a.median / b.median,
            format!("{} → {} {}", f(a), f(b), a.kind.unit_short()),
        )
    })
}

/// The 3–5 figures a newcomer should see first, each with what it means.
fn headlines(s: &Summary) -> Vec<String> {
    let mut v = Vec::new();
    let cap = s.ring_capacity();
    let get = |qq: &Query<'_>, k| s.find(qq, k);
    // 1. one vCPU, a call per page, at capacity
    if let Some(cap) = cap {
        let qi = q("mm", "map_unmap", "immediate", Some(cap), Some(1));
        let qb = q("mm", "map_unmap", "batched", Some(cap), Some(1));
        let t = pair_text(get(&qi, FigKind::Timed), get(&qb, FigKind::Timed));
        let c = pair_text(get(&qi, FigKind::Counted), get(&qb, FigKind::Counted));
        if t.is_some() || c.is_some() {
            let mut parts = Vec::new();
            if let Some((r, txt)) = &t {
                parts.push(format!("{} less time ({txt} per page)", ratio(*r)));
            }
            if let Some((r, txt)) = &c {
                parts.push(format!("{} fewer instructions ({txt})", ratio(*r)));
            }
            v.push(format!(
                "**Mapping and unmapping pages one call at a time, 1 vCPU, batches of {cap}:** batched costs {}. \
                 Batching replaces an `invlpg` per page with one flush per batch; what is left is the \
                 page-table stores and the mm's own bookkeeping.",
                parts.join(" and ")
            ));
        }
    }
    // 2. what a host intercepts
    let qi = q("mm", "map_unmap", "immediate", Some(256), Some(1));
    let qb = q("mm", "map_unmap", "batched", Some(256), Some(1));
    let pick = |qq: &Query<'_>| get(qq, FigKind::Counted).or(get(qq, FigKind::Timed));
    if let (Some(i), Some(b)) = (pick(&qi), pick(&qb)) {
        let (i, b) = (s.counters_source(i), s.counters_source(b));
        let trapped = |a: &Agg| {
            a.fig.per(|c| {
                (c.invlpg + c.full_flushes + c.cr_writes + c.ipis) as f64 + c.tables_unsynced as f64
            })
        };
        let stores = |a: &Agg| a.fig.per(|c| c.pte_writes as f64);
        if let (Some(ti), Some(tb), Some(si), Some(sb)) =
            (trapped(i), trapped(b), stores(i), stores(b))
        {
            v.push(format!(
                "**The operations a host intercepts fall from {} to {} per map+unmap** (batch 256: TLB \
                 invalidations, control-register writes, IPIs and the first store to a leaf table in each \
                 sync epoch, which shadow paging traps). The page-table stores stay at {} per page immediate \
                 and {} batched, because the guest still writes every entry; they are plain memory writes on EPT/NPT and, \
                 past a table's first, under shadow paging too.",
                count(Some(ti)),
                count(Some(tb)),
                count(Some(si)),
                count(Some(sb))
            ));
        }
    }
    // 3. shootdowns at the most vCPUs
    if let Some(vmax) = s
        .suite_any("smp")
        .map(|a| a.key.vcpus)
        .max()
        .filter(|v| *v > 1)
    {
        let qi = q("smp", "unmap_shootdown", "immediate", None, Some(vmax));
        let qb = q("smp", "unmap_shootdown", "batched", None, Some(vmax));
        let t = pair_text(get(&qi, FigKind::Timed), get(&qb, FigKind::Timed))
            .or_else(|| pair_text(get(&qi, FigKind::Counted), get(&qb, FigKind::Counted)));
        if let Some((r, txt)) = t {
            let ipis = pick(&qi)
                .zip(pick(&qb))
                .and_then(|(i, b)| {
                    Some((
                        s.counters_source(i).fig.ipis_per_op()?,
                        s.counters_source(b).fig.ipis_per_op()?,
                    ))
                })
                .map(|(i, b)| format!(" ({} → {} IPIs per page)", count(Some(i)), count(Some(b))))
                .unwrap_or_default();
            v.push(format!(
                "**Unmapping pages that {vmax} vCPUs hold costs {} less per page batched** ({txt}): one \
                 shootdown round per batch instead of one per page{ipis}.",
                ratio(r)
            ));
        }
    }
    // 4. the queue's own cost, a call per batch and a call per page
    if let Some(cap) = cap {
        let ratio_of = |name: &str| {
            let qb = q("mm", name, "batched", Some(cap), Some(1));
            let qf = q("mm", name, "floor", Some(cap), Some(1));
            let pair = |k| Some((get(&qb, k)?, get(&qf, k)?));
            pair(FigKind::Counted)
                .or_else(|| pair(FigKind::Timed))
                .filter(|(_, f)| f.median > 0.0)
                .map(|(b, f)| {
                    let n = |x: &Agg| match x.kind {
                        FigKind::Counted => exact(x.median),
                        FigKind::Timed => thousands(x.median),
                    };
                    (
                        b.median / f.median,
                        format!("{} vs {} {}", n(b), n(f), b.kind.unit_short()),
                    )
                })
        };
        if let (Some((rr, tr)), Some((rp, tp))) =
            (ratio_of("map_unmap_range"), ratio_of("map_unmap"))
        {
            v.push(format!(
                "**The queue itself costs {} the bare minimum with one call per batch, {} with one call per \
                 page** (map+unmap, batch {cap}: {tr} per page, and {tp}; the floor does the same stores and \
                 one flush by hand with no queue). The difference is each call's entry, checks, table lock and \
                 enqueue: paid once per batch by a range call, once per page by a per-page call.",
                ratio(rr),
                ratio(rp)
            ));
        }
    }
    // 5. workloads
    let mut ws = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for a in s.suite_any("workload") {
        if !names.contains(&a.key.name.as_str()) {
            names.push(&a.key.name);
        }
    }
    for name in names {
        let qi = q("workload", name, "immediate", None, None);
        let qb = q("workload", name, "batched", None, None);
        let t = pair_text(get(&qi, FigKind::Timed), get(&qb, FigKind::Timed))
            .or_else(|| pair_text(get(&qi, FigKind::Counted), get(&qb, FigKind::Counted)));
        if let Some((r, txt)) = t {
            ws.push(format!("{name} {} ({txt} per write)", ratio(r)));
        }
    }
    if !ws.is_empty() {
        v.push(format!(
            "**Whole tasks, immediate ÷ batched:** {}. Above 1x batching is faster; the checksums say whether \
             both backends computed the same data (see *Targets*).",
            ws.join("; ")
        ));
    }
    v
}

fn glossary(out: &mut String, s: &Summary, used: &[&str]) {
    let _ = writeln!(out, "## How to read this report\n");
    let _ = writeln!(
        out,
        "Two kinds of figure, never mixed:\n\n\
         - **Counted** figures come from a *counting boot*: QEMU runs the guest with `-icount shift=0`, so the \
         guest's clock advances by exactly one per guest instruction, and a figure is guest instructions per \
         operation. Two counting boots of the same build print the same figures to the last digit, so a change \
         of 2% is a real change. icount charges a privileged instruction as one instruction, so counts measure \
         software cost, not what a flush or an interrupt costs. With several vCPUs the count includes every \
         vCPU's instructions (the other vCPUs' reading loops too).\n\
         - **Timed** figures come from *timed boots* and are TSC cycles per operation: within a boot, the median \
         over repetitions; across boots, the median of those, with the spread between the boots. They include \
         what privileged operations really cost on this platform, and they move between boots on a shared \
         machine.\n"
    );
    let _ = writeln!(out, "The backends:\n");
    let _ = writeln!(
        out,
        "- **immediate**: every update is applied at once, with its own TLB invalidation and, when other vCPUs \
         may hold the page, its own shootdown round: an unmodified kernel.\n\
         - **batched**: updates go into the calling vCPU's queue and are applied together when it is flushed \
         (the ring is full, the batch ends, or a fault or read needs the pending state): one invalidation and \
         one shootdown round per batch.\n\
         - **floor**: the same page-table stores and one flush per batch, written by hand with no queue, no \
         validation and no API: the least any batching could cost. It is a yardstick, not a backend.\n"
    );
    let _ = writeln!(out, "The benchmarks (one *operation* each):\n");
    let mut seen: Vec<&str> = Vec::new();
    for a in &s.figures {
        let name = a.key.name.as_str();
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let what = match name {
            "map_unmap" => "map one page and unmap it again, **one API call per page** (as code that maps page by page does); batch pages per flush",
            "map_unmap_range" => "the same, but **one `map` and one `unmap` call per batch** of pages, which leaves the queue's own cost with little API overhead around it",
            "map_touch_unmap" => "map a page, write to it (so the TLB caches it), unmap it",
            "protect" => "change a mapped page between read-only and read-write",
            "cr_write" => "write CR4 (its own value back): in CPU lazy mode the queue keeps only the last write to a register",
            "unmap_shootdown" => "unmap a page while other vCPUs hold its translation, so each unmap must interrupt them (a shootdown) before the frame can be reused; per page",
            "cow_snapshot" => "a copy-on-write snapshot: write-protect a working set, then copy each page on its first write (a real protection fault); per write",
            "arena" => "an arena that grows page by page while records are written into it and shrinks from its old end; per write",
            "protect_range" => "the same as `protect`, but **one `protect` call per batch** of pages",
            "map_unmap_2m" | "map_touch_unmap_2m" | "protect_2m" => "the same per-page calls with **2 MiB pages**; per 2 MiB page (*page sizes* below puts both sizes per MiB)",
            "unmap_shootdown_2m" => "`unmap_shootdown` with 2 MiB pages; per 2 MiB page",
            "arena_2m" => "the arena with 2 MiB pages; per write",
            "map_unmap_private" => "N vCPUs at once, each mapping and unmapping batches of 256 pages in a region of its own (one shootdown round per batch to the others, which share the address space); per operation, all vCPUs' operations together",
            "map_unmap_shared" => "N vCPUs at once in one region that all of them read, so every flush must interrupt the others; per operation, all vCPUs' operations together",
            "cpuid" | "pio_out" | "pio_in" | "invlpg" | "cr3_reload" | "cr4_write" | "tlb_fill" | "pte_write"
            | "self_ipi" | "ipi_roundtrip" => {
                continue;
            }
            _ => "a figure this version of the report does not describe",
        };
        let _ = writeln!(out, "- `{name}`: {what}.");
    }
    if s.suite_any("exits").next().is_some() {
        let _ = writeln!(
            out,
            "- `exits` suite: one privileged instruction repeated (`cpuid`, port I/O, `invlpg`, an `invlpg` \
             and a read that refills the translation, a CR3 reload, a CR4 write, a page-table store, a self-IPI, an IPI to another vCPU and back): on a hypervisor each would be a VM \
             exit; under TCG it is what the emulator charges."
        );
    }
    let cap = s.ring_capacity();
    let ceiling = s.env().and_then(|e| e.invlpg_ceiling);
    let _ = writeln!(
        out,
        "\nThe queue holds {} entries per vCPU (the ring's capacity: the largest batch). A flush invalidates \
         page by page with `invlpg` up to {} pages and with one full TLB flush above that (Linux's \
         `tlb_single_page_flush_ceiling` is 33).\n",
        cap.map_or("an unknown number of".into(), |c| c.to_string()),
        ceiling.map_or("a ceiling of".into(), |c| c.to_string())
    );
    let _ = writeln!(out, "The columns of the figure tables:\n");
    for (k, d) in COLUMNS
        .iter()
        .filter(|(k, _)| used.contains(k) && !LOCAL_COLUMNS.contains(k))
    {
        let _ = writeln!(out, "- **{k}**: {d}.");
    }
    let _ = writeln!(out);
}

/// Columns defined where their table is (the targets and the boots), not
/// in the glossary.
const LOCAL_COLUMNS: &[&str] = &[
    "target",
    "requirement",
    "basis",
    "measured",
    "verdict",
    "log",
    "kind",
    "mode",
    "exit",
    "figures",
];

/// The definitions of some columns, as a list.
fn define(out: &mut String, keys: &[&str]) {
    for k in keys {
        if let Some((k, d)) = COLUMNS.iter().find(|(c, _)| c == k) {
            let _ = writeln!(out, "- **{k}**: {d}.");
        }
    }
    let _ = writeln!(out);
}

fn targets_section(out: &mut String, targets: &[Target]) {
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "What the project set out to show, checked against this run. A verdict marked *not in every boot* rests \
         on timed figures whose boots disagree about it.\n"
    );
    define(
        out,
        &["target", "requirement", "basis", "measured", "verdict"],
    );
    let _ = writeln!(
        out,
        "{}",
        header(&["target", "requirement", "basis", "measured", "verdict"])
    );
    for t in targets {
        let verdict = match &t.uncertain {
            Some(_) => format!("{} (not in every boot)", t.status.label()),
            None => t.status.label().to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}: {} |",
            cell(&t.title),
            cell(&t.requirement),
            cell(&t.basis),
            cell(&t.measured),
            verdict,
            cell(&t.margin)
        );
    }
    let _ = writeln!(out, "\nWhat each target means, and why a miss missed:\n");
    let mut said: Vec<&str> = Vec::new();
    for t in targets {
        let mut line = String::new();
        if !said.contains(&t.aim.as_str()) {
            said.push(&t.aim);
            line += &t.aim;
        }
        if let Some(u) = &t.uncertain {
            line += &format!(" The verdict is {}: {u}.", t.status.label());
        }
        if let Some(w) = &t.why {
            line += &format!(" Why it missed: {}.", w.trim_end_matches('.'));
        }
        if !line.is_empty() {
            let _ = writeln!(out, "- **{}**: {}", t.title, line.trim());
        }
    }
    let _ = writeln!(out);
}

fn plots_section(out: &mut String, plots: &[Plot]) {
    if plots.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Plots\n");
    let mut last = "";
    for p in plots {
        if p.caption == last {
            let _ = writeln!(out, "**{}.** Read as the plot above.\n", p.title);
        } else {
            let _ = writeln!(out, "**{}.** {}\n", p.title, p.caption);
        }
        last = &p.caption;
        let _ = writeln!(out, "![{}]({})\n", p.title, p.file);
    }
}

fn figures(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "## Figures\n");
    let _ = writeln!(
        out,
        "Per operation; medians. Every figure, with p99s, ns and per-boot values, is in `results.json` and \
         `results.csv`.\n"
    );
    exits_table(out, s);
    mm_tables(out, s);
    cpu_table(out, s);
    smp_table(out, s);
    crate::vcpus::section(out, s);
    crate::scale::section(out, s);
    crate::pagesize::section(out, s);
    workload_table(out, s);
    other_table(out, s);
}

fn exits_table(out: &mut String, s: &Summary) {
    let mut names: Vec<&str> = Vec::new();
    for a in s.suite_any("exits") {
        if !names.contains(&a.key.name.as_str()) {
            names.push(&a.key.name);
        }
    }
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### exits: one privileged instruction{}\n",
        if is_emulated(s) {
            " (emulation cost under TCG, not VM exits)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{}",
        header(&["operation", "instructions/op", "cycles/op", "ns/op"])
    );
    for name in names {
        let qq = Query {
            suite: Some("exits"),
            name: Some(name),
            ..Query::default()
        };
        let t = s.find(&qq, FigKind::Timed);
        let ns = t
            .and_then(|a| a.fig.ns_per_op.map(|n| n.median))
            .map_or("—".into(), thousands);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            cell(name),
            value(s.find(&qq, FigKind::Counted)),
            value(t),
            ns
        );
    }
    let _ = writeln!(out);
}

fn batches(s: &Summary, suite: &str, name: &str) -> Vec<u64> {
    let mut b: Vec<u64> = s
        .suite_any(suite)
        .filter(|a| a.key.name == name && a.key.vcpus == 1)
        .map(|a| a.key.batch)
        .collect();
    b.sort_unstable();
    b.dedup();
    b
}

fn mm_tables(out: &mut String, s: &Summary) {
    let names = crate::log::ordered(s.suite_any("mm").map(|a| a.key.name.as_str()), MM_NAMES);
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### mm: per operation, 1 vCPU\n\nInstructions and cycles side by side for every figure; privileged/op \
         reads immediate / batched / floor.\n"
    );
    for name in names {
        let _ = writeln!(out, "#### {name}\n");
        let _ = writeln!(
            out,
            "{}",
            header(&[
                "batch",
                "immediate instructions/op",
                "batched instructions/op",
                "floor instructions/op",
                "immediate cycles/op",
                "batched cycles/op",
                "floor cycles/op",
                "immediate ÷ batched instructions",
                "immediate ÷ batched cycles",
                "batched ÷ floor instructions",
                "privileged/op",
            ])
        );
        for b in batches(s, "mm", name) {
            let f = |backend, k| s.find(&q("mm", name, backend, Some(b), Some(1)), k);
            let (ic, bc, fc) = (
                f("immediate", FigKind::Counted),
                f("batched", FigKind::Counted),
                f("floor", FigKind::Counted),
            );
            let (it, bt, ft) = (
                f("immediate", FigKind::Timed),
                f("batched", FigKind::Timed),
                f("floor", FigKind::Timed),
            );
            let priv_of = |c: Option<&Agg>, t: Option<&Agg>| {
                c.or(t)
                    .map(|a| s.counters_source(a).fig.privileged_per_op())
                    .map_or("—".into(), count)
            };
            let _ = writeln!(
                out,
                "| {b} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                value(ic),
                value(bc),
                value(fc),
                value(it),
                value(bt),
                value(ft),
                div(ic, bc),
                div(it, bt),
                div(bc, fc),
                priv_of(ic, it),
                priv_of(bc, bt),
                priv_of(fc, ft)
            );
        }
        let _ = writeln!(out);
    }
}

fn cpu_table(out: &mut String, s: &Summary) {
    let mut names: Vec<&str> = Vec::new();
    for a in s.suite_any("cpu") {
        if !names.contains(&a.key.name.as_str()) {
            names.push(&a.key.name);
        }
    }
    for name in names {
        let _ = writeln!(out, "### cpu: {name}, per write, 1 vCPU\n");
        let _ = writeln!(
            out,
            "{}",
            header(&[
                "batch",
                "immediate instructions/op",
                "batched instructions/op",
                "immediate cycles/op",
                "batched cycles/op",
                "immediate ÷ batched cycles",
                "privileged/op",
            ])
        );
        for b in batches(s, "cpu", name) {
            let f = |backend, k| s.find(&q("cpu", name, backend, Some(b), Some(1)), k);
            let p = |backend| {
                f(backend, FigKind::Counted)
                    .or(f(backend, FigKind::Timed))
                    .map(|a| s.counters_source(a).fig.privileged_per_op())
                    .map_or("—".into(), count)
            };
            let _ = writeln!(
                out,
                "| {b} | {} | {} | {} | {} | {} | {} / {} |",
                value(f("immediate", FigKind::Counted)),
                value(f("batched", FigKind::Counted)),
                value(f("immediate", FigKind::Timed)),
                value(f("batched", FigKind::Timed)),
                div(f("immediate", FigKind::Timed), f("batched", FigKind::Timed)),
                p("immediate"),
                p("batched")
            );
        }
        let _ = writeln!(out);
    }
}

fn smp_table(out: &mut String, s: &Summary) {
    let mut vcpus: Vec<u64> = s.suite_any("smp").map(|a| a.key.vcpus).collect();
    if vcpus.is_empty() {
        return;
    }
    vcpus.sort_unstable();
    vcpus.dedup();
    let batch = s.suite_any("smp").map(|a| a.key.batch).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "### smp: unmap with shootdown, per page (batch {batch})\n\nIPIs/page and rounds/page read immediate / \
         batched.\n"
    );
    shootdown_rows(out, s, &vcpus, |backend, kind, v| {
        s.find(&q("smp", "unmap_shootdown", backend, None, Some(v)), kind)
    });
}

/// The unmap_shootdown table, a row per vCPU count: `find` gives the
/// figure of a backend and kind at that count (the run's own machine, or
/// the 16-vCPU boots).
pub(crate) fn shootdown_rows<'a>(
    out: &mut String,
    s: &'a Summary,
    vcpus: &[u64],
    find: impl Fn(&str, FigKind, u64) -> Option<&'a Agg>,
) {
    let _ = writeln!(
        out,
        "{}",
        header(&[
            "vCPUs",
            "immediate instructions/op",
            "batched instructions/op",
            "immediate cycles/op",
            "batched cycles/op",
            "immediate ÷ batched cycles",
            "IPIs/page",
            "rounds/page",
        ])
    );
    for &v in vcpus {
        let f = |backend, k| find(backend, k, v);
        let counters = |backend| {
            f(backend, FigKind::Counted)
                .or(f(backend, FigKind::Timed))
                .map(|a| s.counters_source(a))
        };
        let (ci, cb) = (counters("immediate"), counters("batched"));
        let ipis = |a: Option<&Agg>| a.and_then(|a| a.fig.ipis_per_op());
        let rounds = |a: Option<&Agg>| a.and_then(|a| a.fig.per(|c| c.shootdowns as f64));
        let _ = writeln!(
            out,
            "| {v} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
            value(f("immediate", FigKind::Counted)),
            value(f("batched", FigKind::Counted)),
            value(f("immediate", FigKind::Timed)),
            value(f("batched", FigKind::Timed)),
            div(f("immediate", FigKind::Timed), f("batched", FigKind::Timed)),
            count(ipis(ci)),
            count(ipis(cb)),
            count(rounds(ci)),
            count(rounds(cb))
        );
    }
    let _ = writeln!(out);
}

fn workload_table(out: &mut String, s: &Summary) {
    let mut names: Vec<&str> = Vec::new();
    for a in s.suite_any("workload") {
        if !names.contains(&a.key.name.as_str()) {
            names.push(&a.key.name);
        }
    }
    if names.is_empty() {
        return;
    }
    let vcpus = s
        .suite_any("workload")
        .map(|a| a.key.vcpus)
        .max()
        .unwrap_or(1);
    let _ = writeln!(
        out,
        "### workload: whole tasks, per write ({vcpus} vCPUs share the memory)\n"
    );
    let _ = writeln!(
        out,
        "{}",
        header(&[
            "workload",
            "immediate instructions/op",
            "batched instructions/op",
            "immediate cycles/op",
            "batched cycles/op",
            "immediate ÷ batched cycles",
            "checksum",
        ])
    );
    for name in names {
        let f = |backend, k| s.find(&q("workload", name, backend, None, None), k);
        let mut sums: Vec<String> = Vec::new();
        for a in s.suite_any("workload").filter(|a| a.key.name == name) {
            for c in a.checksums.iter().flatten() {
                if !sums.iter().any(|x| x.eq_ignore_ascii_case(c)) {
                    sums.push(c.clone());
                }
            }
        }
        let sum = match sums.len() {
            0 => "—".to_string(),
            1 => format!("`{}` in every boot", cell(&sums[0])),
            _ => format!("**DIFFER**: {}", cell(&sums.join(", "))),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            cell(name),
            value(f("immediate", FigKind::Counted)),
            value(f("batched", FigKind::Counted)),
            value(f("immediate", FigKind::Timed)),
            value(f("batched", FigKind::Timed)),
            div(f("immediate", FigKind::Timed), f("batched", FigKind::Timed)),
            sum
        );
    }
    let _ = writeln!(out);
}

fn other_table(out: &mut String, s: &Summary) {
    let known = ["exits", "mm", "cpu", "smp", "scale", "workload"];
    let others: Vec<&Agg> = s
        .figures
        .iter()
        .filter(|a| !known.contains(&a.key.suite.as_str()))
        .collect();
    if others.is_empty() {
        return;
    }
    let _ = writeln!(out, "### other suites\n");
    let _ = writeln!(
        out,
        "{}",
        header(&["figure", "batch", "vCPUs", "instructions/op", "cycles/op"])
    );
    let mut done: Vec<String> = Vec::new();
    for a in others {
        let id = a.key.id();
        if done.contains(&id) {
            continue;
        }
        done.push(id.clone());
        let c = s.twin(a, FigKind::Counted);
        let t = s.twin(a, FigKind::Timed);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            cell(&format!("{}/{}/{}", a.key.suite, a.key.name, a.key.backend)),
            a.key.batch,
            a.key.vcpus,
            value(c),
            value(t)
        );
    }
    let _ = writeln!(out);
}

fn boots_section(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "## Boots\n");
    define(out, &["log", "kind", "mode", "exit", "figures"]);
    let _ = writeln!(
        out,
        "{}",
        header(&["log", "kind", "mode", "exit", "figures"])
    );
    for b in &s.boots {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            cell(&b.file),
            match b.kind() {
                FigKind::Counted => "counting",
                FigKind::Timed => "timed",
            },
            cell(&b.mode()),
            b.log
                .exit_status()
                .map_or("no exit record".into(), |st| st.to_string()),
            b.log.figures().count()
        );
    }
    let _ = writeln!(out);
    let env = s.env().cloned().unwrap_or_default();
    let tsc = match env.tsc_hz {
        Some(hz) => format!(
            "{:.3} GHz, from {}, in steps of {}",
            hz as f64 / 1e9,
            env.tsc_source.as_deref().unwrap_or("an unknown source"),
            match env.tsc_resolution {
                Some(1) => "1 cycle".to_string(),
                Some(r) => format!("{r} cycles"),
                None => "an unknown number of cycles".to_string(),
            }
        ),
        None => "frequency unknown".into(),
    };
    let _ = writeln!(
        out,
        "The guest saw: CPU model {}, hypervisor {}, {} vCPUs, TSC {tsc}, paravirtual features {}; kernel \
         revision {}.\n",
        env.cpu_model.as_deref().unwrap_or("unknown"),
        env.hypervisor.as_deref().unwrap_or("unknown"),
        env.vcpus.map_or("?".into(), |v| v.to_string()),
        if env.pv_features.is_empty() {
            "none".to_string()
        } else {
            env.pv_features.join(", ")
        },
        env.git_rev.as_deref().unwrap_or("unknown")
    );
    for b in &s.boots {
        if !b.log.guest_errors.is_empty() {
            let _ = writeln!(out, "The guest's error messages in `{}`:\n", b.file);
            for e in &b.log.guest_errors {
                let _ = writeln!(out, "    {e}");
            }
            let _ = writeln!(out);
        }
        if !b.log.skipped.is_empty() {
            let _ = writeln!(
                out,
                "`HB` lines of `{}` that did not parse, left out of every table (hbreport `--strict` makes \
                 this an error):\n",
                b.file
            );
            for k in &b.log.skipped {
                let _ = writeln!(
                    out,
                    "- line {}: {} — `{}`",
                    k.line,
                    cell(&k.reason),
                    cell(&k.text.replace('`', "'"))
                );
            }
            let _ = writeln!(out);
        }
    }
}

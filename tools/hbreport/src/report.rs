//! report.md: the human-readable half of a results directory. It reads
//! top-down the way a person asks: where did this run, did it meet the
//! targets, what do the plots show, what are the figures, and what would
//! they mean on a hypervisor that traps what this one does not.

use crate::log::{Figure, Log, Query};
use crate::projection::{Column, Projected, Projection};
use crate::reference::{self, Op, Platform, CONTEXT, REFERENCE_COSTS};
use crate::results::Host;
use crate::targets::{Status, Target, MM_NAMES};
use std::fmt::Write;

/// A count of cycles or nanoseconds, as people read them: thousands
/// separated, fewer decimals as the number grows.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return if x > 0.0 { "∞".into() } else { "n/a".into() };
    }
    let a = x.abs();
    if a >= 1000.0 {
        let n = x.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Nanoseconds, when the figure has them (a counted figure has none).
fn ns(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), thousands)
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
fn count(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(0.0) => "0".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// Text for a table cell: a `|` would split the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
}

/// The whole report.
pub fn render(
    log: &Log,
    host: &Host,
    targets: &[Target],
    proj: &Projection,
    plots: &[String],
) -> String {
    let mut s = String::new();
    header(&mut s, log, host);
    environment(&mut s, log, host);
    problems(&mut s, log);
    targets_section(&mut s, log, targets);
    plots_section(&mut s, plots);
    figures(&mut s, log);
    projection_section(&mut s, log, proj);
    reference_section(&mut s);
    s
}

fn header(s: &mut String, log: &Log, host: &Host) {
    let _ = writeln!(s, "# hyperbatch benchmark report\n");
    let figures = log.figures().count();
    let _ = writeln!(
        s,
        "{figures} figures from one boot, read from `{}` by hbreport {} on {}. Benchmarks, not timed tests: \
         every ratio below comes from this one boot.\n",
        host.log,
        env!("CARGO_PKG_VERSION"),
        host.date
    );
    match log.exit_status() {
        Some(0) => {}
        Some(st) => {
            let _ = writeln!(s, "> **The guest reported failure (exit status {st}).** The figures may be incomplete.\n");
        }
        None => {
            let _ = writeln!(s, "> **The log has no HB exit record:** the guest did not finish; the figures may be incomplete.\n");
        }
    }
    if log.env().and_then(|e| e.quick) == Some(true) {
        let _ = writeln!(
            s,
            "> Quick mode: fewer pages and repetitions than a full run, so the figures are noisier. \
             Use a full run (`scripts/bench.sh` without `--quick`) for numbers to quote.\n"
        );
    }
}

fn environment(s: &mut String, log: &Log, host: &Host) {
    let env = log.env().cloned().unwrap_or_default();
    let _ = writeln!(s, "## Environment\n");
    if log.env().is_none() {
        let _ = writeln!(
            s,
            "The log has no `env` record; only what the host knew is shown.\n"
        );
    }
    let tsc = match env.tsc_hz {
        Some(hz) => format!(
            "{:.3} GHz, from {}, ticks in steps of {} cycles",
            hz as f64 / 1e9,
            opt(env.tsc_source.clone()),
            opt(env.tsc_resolution)
        ),
        None => "unknown".into(),
    };
    let pv = if env.pv_features.is_empty() {
        "none".to_string()
    } else {
        env.pv_features.join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "hypervisor (as the guest sees it)",
            opt(env.hypervisor.clone()),
        ),
        ("accelerator hint (guest)", opt(env.accel_hint.clone())),
        ("accelerator (host)", opt(host.accel.clone())),
        ("machine", opt(host.machine.clone())),
        ("CPU model", opt(env.cpu_model.clone())),
        ("vCPUs", opt(env.vcpus)),
        ("TSC", tsc),
        ("PV features", pv),
        ("git revision", opt(env.git_rev.clone())),
        ("ring capacity", opt(log.ring_capacity())),
        ("invlpg ceiling (pages)", opt(env.invlpg_ceiling)),
        (
            "mode",
            match env.quick {
                Some(true) => "quick".into(),
                Some(false) => "full".into(),
                None => "unknown".into(),
            },
        ),
        ("guest exit status", opt(log.exit_status())),
        ("date (UTC)", host.date.clone()),
        (
            "log",
            format!(
                "`{}`: {} lines, {} HB records, {} skipped",
                host.log,
                log.lines,
                log.records.len(),
                log.skipped.len()
            ),
        ),
    ];
    let _ = writeln!(s, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {} |", cell(&v));
    }
    let _ = writeln!(s);
}

fn problems(s: &mut String, log: &Log) {
    if log.skipped.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Log problems\n");
    let _ = writeln!(
        s,
        "These `HB` lines did not parse and were left out of every table (run hbreport with `--strict` to \
         make this an error):\n"
    );
    for k in &log.skipped {
        let _ = writeln!(
            s,
            "- line {}: {} — `{}`",
            k.line,
            k.reason,
            k.text.replace('`', "'")
        );
    }
    let _ = writeln!(s);
}

fn targets_section(s: &mut String, log: &Log, targets: &[Target]) {
    let _ = writeln!(s, "## Targets\n");
    let n = |st: Status| targets.iter().filter(|t| t.status == st).count();
    let platform = log
        .env()
        .and_then(|e| e.hypervisor.clone())
        .unwrap_or_else(|| "this platform".into());
    let _ = writeln!(
        s,
        "Issue 4's targets, checked against this boot's figures on {platform}: **{} met, {} not met, {} not \
         evaluated**.\n",
        n(Status::Met),
        n(Status::NotMet),
        n(Status::Missing)
    );
    let _ = writeln!(
        s,
        "| target | requirement | measured | verdict | by how much |\n|---|---|---|---|---|"
    );
    for t in targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            cell(&t.title),
            cell(&t.requirement),
            cell(&t.measured),
            t.status.label(),
            cell(&t.margin)
        );
    }
    let _ = writeln!(s);
    let misses: Vec<&Target> = targets.iter().filter(|t| t.why.is_some()).collect();
    if !misses.is_empty() {
        let _ = writeln!(s, "Why the misses, as far as the counters tell:\n");
        for t in misses {
            let _ = writeln!(
                s,
                "- **{}**: {}",
                t.title,
                t.why.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(s);
    }
}

fn plots_section(s: &mut String, plots: &[String]) {
    if plots.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Plots\n");
    for p in plots {
        let _ = writeln!(s, "![{p}]({p})\n");
    }
}

fn figures(s: &mut String, log: &Log) {
    let _ = writeln!(s, "## Figures\n");
    let _ = writeln!(
        s,
        "Medians and 99th percentiles over repetitions; cycles are TSC cycles. Per-operation counts are the \
         queue's counters divided by operations × repetitions.\n"
    );
    exits_table(s, log);
    for (suite, what) in [
        ("mm", "per operation, 1 vCPU"),
        ("cpu", "per CR write, 1 vCPU"),
    ] {
        if log.suite(suite).next().is_none() {
            continue;
        }
        let _ = writeln!(s, "### {suite}: {what}\n");
        let names = crate::log::ordered(log.suite(suite).map(|f| f.name.as_str()), MM_NAMES);
        for name in names {
            let figs: Vec<&Figure> = log.suite(suite).filter(|f| f.name == name).collect();
            let _ = writeln!(s, "#### {name}\n");
            per_op_table(s, log, &figs);
        }
    }
    smp_table(s, log);
    workload_table(s, log);
    let known = ["exits", "mm", "cpu", "smp", "workload"];
    let others: Vec<&Figure> = log
        .figures()
        .filter(|f| !known.contains(&f.suite.as_str()))
        .collect();
    if !others.is_empty() {
        let _ = writeln!(s, "### other suites\n");
        per_op_table(s, log, &others);
    }
}

fn exits_table(s: &mut String, log: &Log) {
    let figs: Vec<&Figure> = log.suite("exits").collect();
    if figs.is_empty() {
        return;
    }
    let _ = writeln!(s, "### exits: one privileged operation\n");
    let _ = writeln!(
        s,
        "| operation | cycles median | cycles p99 | ns median | ns p99 | ops × reps |\n|---|---|---|---|---|---|"
    );
    for f in figs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} × {} |",
            cell(&f.name),
            thousands(f.per_op.median),
            thousands(f.per_op.p99),
            ns(f.ns_per_op.map(|n| n.median)),
            ns(f.ns_per_op.map(|n| n.p99)),
            f.ops,
            f.reps
        );
    }
    let _ = writeln!(s);
}

/// immediate's cycles/op at the same suite, name, batch and vCPUs, over
/// this figure's.
fn vs_immediate(log: &Log, f: &Figure) -> String {
    if f.backend == "immediate" {
        return "1x".into();
    }
    let q = Query {
        suite: Some(&f.suite),
        name: Some(&f.name),
        backend: Some("immediate"),
        batch: Some(f.batch),
        vcpus: Some(f.vcpus),
    };
    match log.find(&q) {
        Some(imm) if f.per_op.median > 0.0 => ratio(imm.per_op.median / f.per_op.median),
        _ => "—".into(),
    }
}

fn sorted<'a>(figs: &[&'a Figure]) -> Vec<&'a Figure> {
    let order = |b: &str| {
        ["immediate", "batched", "floor"]
            .iter()
            .position(|x| *x == b)
            .unwrap_or(3)
    };
    let mut v = figs.to_vec();
    v.sort_by(|a, b| {
        (order(&a.backend), &a.backend, a.vcpus, a.batch).cmp(&(
            order(&b.backend),
            &b.backend,
            b.vcpus,
            b.batch,
        ))
    });
    v
}

fn per_op_table(s: &mut String, log: &Log, figs: &[&Figure]) {
    let _ = writeln!(
        s,
        "| backend | batch | vCPUs | cycles median | cycles p99 | ns median | ns p99 | flushes/op | privileged/op | \
         invalidations/op | immediate ÷ this |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in sorted(figs) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&f.backend),
            f.batch,
            f.vcpus,
            thousands(f.per_op.median),
            thousands(f.per_op.p99),
            ns(f.ns_per_op.map(|n| n.median)),
            ns(f.ns_per_op.map(|n| n.p99)),
            count(f.flushes_per_op()),
            count(f.privileged_per_op()),
            count(f.invalidations_per_op()),
            vs_immediate(log, f)
        );
    }
    let _ = writeln!(s);
}

fn smp_table(s: &mut String, log: &Log) {
    let figs: Vec<&Figure> = log.suite("smp").collect();
    if figs.is_empty() {
        return;
    }
    let _ = writeln!(s, "### smp: unmap with shootdown, per page\n");
    let _ = writeln!(
        s,
        "| name | backend | vCPUs | batch | cycles/page median | p99 | ns/page median | IPIs/page | shootdown \
         rounds/page | privileged/page | immediate ÷ this |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in sorted(&figs) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&f.name),
            cell(&f.backend),
            f.vcpus,
            f.batch,
            thousands(f.per_op.median),
            thousands(f.per_op.p99),
            ns(f.ns_per_op.map(|n| n.median)),
            count(f.ipis_per_op()),
            count(f.per(|c| c.shootdowns)),
            count(f.privileged_per_op()),
            vs_immediate(log, f)
        );
    }
    let _ = writeln!(s);
}

fn workload_table(s: &mut String, log: &Log) {
    let figs: Vec<&Figure> = log.suite("workload").collect();
    if figs.is_empty() {
        return;
    }
    let _ = writeln!(s, "### workload: whole tasks\n");
    let _ = writeln!(
        s,
        "| workload | backend | vCPUs | ns median | ns p99 | cycles median | flushes/op | privileged/op | checksum | \
         immediate ÷ this |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let names = crate::log::ordered(figs.iter().map(|f| f.name.as_str()), &[]);
    for name in names {
        let group: Vec<&Figure> = figs.iter().copied().filter(|f| f.name == name).collect();
        for f in sorted(&group) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&f.name),
                cell(&f.backend),
                f.vcpus,
                ns(f.ns_per_op.map(|n| n.median)),
                ns(f.ns_per_op.map(|n| n.p99)),
                thousands(f.per_op.median),
                count(f.flushes_per_op()),
                count(f.privileged_per_op()),
                f.checksum
                    .as_deref()
                    .map(|c| format!("`{}`", cell(c)))
                    .unwrap_or_else(|| "—".into()),
                vs_immediate(log, f)
            );
        }
    }
    let _ = writeln!(s);
}

fn projected(p: Projected) -> String {
    match p {
        Projected::Exactly(0.0) => "0".into(),
        Projected::Exactly(v) => thousands(v),
        Projected::AtLeast(v) => format!("≥ {}", thousands(v)),
        Projected::Unknown => "n/a".into(),
    }
}

fn column_cost(proj: &Projection, col: Column, op: Op) -> String {
    use crate::projection::Costs;
    match col {
        Column::ThisRun => match proj.measured.cost(op) {
            reference::Cycles::Unknown => "not measured".into(),
            c => c.to_string(),
        },
        Column::Reference(p) => reference::cost(p, op).cycles.to_string(),
    }
}

fn projection_section(s: &mut String, log: &Log, proj: &Projection) {
    let _ = writeln!(
        s,
        "## Projection (arithmetic on counts, not a measurement)\n"
    );
    let _ = writeln!(
        s,
        "**This is a projection.** For each `mm` figure it multiplies the privileged operations the queue \
         counted per operation (PTE writes, `invlpg`, CR3 reloads, CR writes, IPIs) by a cost per operation: \
         (a) what the `exits` suite measured in this run, and (b) published costs for other platforms, cited \
         under *Reference costs*. It counts transitions only: the stores themselves, cache and TLB misses and \
         the queue's own work are left out, and it assumes the guest issues the same operations there as \
         here. \"≥\" marks a column built from a lower bound. It does not predict the time of any run.\n"
    );
    if proj.rows.is_empty() {
        let _ = writeln!(
            s,
            "No `mm` figure carries counters, so there is nothing to project.\n"
        );
        return;
    }
    let _ = writeln!(s, "Cost per operation used for each column, in cycles:\n");
    let mut head = "| operation |".to_string();
    let mut rule = "|---|".to_string();
    for col in &proj.columns {
        head += &format!(" {} |", col.label());
        rule += "---|";
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for op in Op::ALL {
        let mut row = format!("| {} |", op.label());
        for col in &proj.columns {
            row += &format!(" {} |", column_cost(proj, *col, op));
        }
        let _ = writeln!(s, "{row}");
    }
    let _ = writeln!(
        s,
        "\n(a) uses the `exits` figures `pte_write`, `invlpg`, `cr3_reload` (also for other CR writes) and \
         `ipi_roundtrip` (else `self_ipi`).\n"
    );

    let names = crate::log::ordered(proj.rows.iter().map(|r| r.name.as_str()), MM_NAMES);
    if let Some(cap) = log.ring_capacity() {
        capacity_summary(s, proj, &names, cap);
    }
    for name in names {
        let _ = writeln!(s, "### {name}: projected cycles per operation\n");
        let mut head = "| backend | batch | privileged/op | measured here |".to_string();
        let mut rule = "|---|---|---|---|".to_string();
        for col in &proj.columns {
            head += &format!(" {} |", col.label());
            rule += "---|";
        }
        let _ = writeln!(s, "{head}\n{rule}");
        let order = |b: &str| {
            ["immediate", "batched", "floor"]
                .iter()
                .position(|x| *x == b)
                .unwrap_or(3)
        };
        let mut rows: Vec<_> = proj.rows.iter().filter(|r| r.name == name).collect();
        rows.sort_by_key(|a| (order(&a.backend), a.batch));
        for r in rows {
            let mut line = format!(
                "| {} | {} | {} | {} |",
                cell(&r.backend),
                r.batch,
                count(Some(r.counts.total())),
                thousands(r.measured_cycles)
            );
            for p in &r.projected {
                line += &format!(" {} |", projected(*p));
            }
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s);
    }
}

/// immediate against batched at ring capacity, per column: where batching
/// would pay and where it would not.
fn capacity_summary(s: &mut String, proj: &Projection, names: &[&str], cap: u64) {
    let _ = writeln!(
        s,
        "### At the ring's capacity (batch {cap}): projected immediate ÷ batched\n"
    );
    let mut head = "| figure |".to_string();
    let mut rule = "|---|".to_string();
    for col in &proj.columns {
        head += &format!(" {} |", col.label());
        rule += "---|";
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for name in names {
        let (Some(imm), Some(bat)) = (
            proj.row(name, "immediate", cap),
            proj.row(name, "batched", cap),
        ) else {
            continue;
        };
        let mut line = format!("| {} |", cell(name));
        for (i, _) in proj.columns.iter().enumerate() {
            let cellv = match (imm.projected[i].value(), bat.projected[i].value()) {
                (Some(a), Some(b)) if b > 0.0 => format!(
                    "{} ({} vs {})",
                    ratio(a / b),
                    projected(imm.projected[i]),
                    projected(bat.projected[i])
                ),
                (Some(a), Some(_)) if a > 0.0 => "no transitions left".into(),
                (Some(_), Some(_)) => "no transitions".into(),
                _ => "n/a".into(),
            };
            line += &format!(" {cellv} |");
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "\nA ratio built from two lower bounds is indicative only. Under a guest-drained queue every PTE store \
         is still issued, so on shadow paging batching saves the invalidations and IPIs but not the stores; \
         a host that drained the queue itself (the 2007 design) would turn them into one hypercall per flush.\n"
    );
}

fn reference_section(s: &mut String) {
    let _ = writeln!(s, "## Reference costs and sources\n");
    let _ = writeln!(
        s,
        "Which operations leave the guest depends on the platform:\n\n\
         - **KVM with EPT/NPT**: the guest owns its page tables. PTE stores, `invlpg` and CR3 loads run \
         natively; KVM turns INVLPG and CR3-load exiting off. IPIs still exit (the write to the APIC's ICR), \
         unless the CPU virtualizes IPIs.\n\
         - **KVM with shadow paging** (`ept=0`, or no EPT underneath): KVM write-protects the guest's page \
         tables and keeps its own shadow copies, so every PTE store to them faults and is emulated, and \
         `invlpg` and CR3 loads exit so that KVM can bring the shadows in step.\n\
         - **Nested virtualization** (KVM on KVM): an exit of the inner guest (L2) goes to L0, which reflects \
         it to L1; L1's handler then exits to L0 again on its own VMREADs, VMWRITEs and VMRESUME, so one L2 \
         exit costs several L1 exits — about 13 times a plain exit in the figures below. With EPT on EPT, \
         L2's page-table work stays native; when L1 runs L2 with shadow paging (no nested EPT, as on this \
         project's development hosts), every PTE store, `invlpg` and CR3 load pays the nested exit.\n"
    );
    // Each source once, numbered in order of first use; the table cites
    // the numbers.
    let mut sources: Vec<&str> = Vec::new();
    for r in REFERENCE_COSTS {
        if !sources.contains(&r.source) {
            sources.push(r.source);
        }
    }
    let num = |src: &str| sources.iter().position(|x| *x == src).map_or(0, |i| i + 1);
    let _ = writeln!(
        s,
        "| platform | operation | cycles | what it measures | source |\n|---|---|---|---|---|"
    );
    for r in REFERENCE_COSTS {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | [{}] |",
            r.platform.label(),
            r.op.label(),
            r.cycles,
            cell(r.measures),
            num(r.source)
        );
    }
    let _ = writeln!(s, "\nSources:\n");
    for (i, src) in sources.iter().enumerate() {
        let _ = writeln!(s, "{}. {}", i + 1, src);
    }
    let _ = writeln!(s, "\nFor scale:\n");
    for (fig, what) in CONTEXT {
        let _ = writeln!(s, "- **{fig}**: {what}.");
    }
    let _ = writeln!(
        s,
        "\nShadow-paging rows are lower bounds: no published per-operation cost for a shadow-paging page-table \
         write, `invlpg` or CR3 load was found, so they use the cost of a bare exit, which the shadow MMU's \
         work only adds to. The projection for {} therefore understates what batching would save there.",
        Platform::KvmShadow.label()
    );
}

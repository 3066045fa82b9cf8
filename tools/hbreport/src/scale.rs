//! The `scale` suite in the report: N vCPUs mapping and unmapping at once,
//! each in a private region (no common lock; one shootdown round per batch
//! to the others, which share the address space) or all in one shared
//! region (every flush must reach the others, which read it), against 1
//! vCPU. A figure is per operation over every vCPU's operations together:
//! counted, the instructions of every vCPU per operation (flat when
//! nothing serialises or spins); timed, the elapsed cycles of the whole
//! run per operation, whose inverse is the aggregate rate.
//!
//! The suite's figures are read from one machine: the widest one that ran
//! it (bench.sh's extra 16-vCPU boots in a full run, else the run's own), so
//! that every row of a table or a plot shares its idle vCPUs and topology.
//! Its two targets (issue 10):
//! - under icount, private-region instructions per operation at 2, 4 and 8
//!   vCPUs within [`MAX_COUNT_GROWTH`] of 1 vCPU's;
//! - under multi-threaded TCG at `--smp 2`, the private aggregate at least
//!   [`MIN_AGGREGATE_2`] times 1 vCPU's (timed, median across boots). A
//!   run whose timed boots were single-threaded did not measure it: one
//!   host thread runs every vCPU in turn, so no aggregate can exceed 1x,
//!   and the target says so instead of giving a verdict.

use crate::plots::{self, kind_desc, Panel, Plot, Scale, Series, NAMES};
use crate::report::{count, exact, header, platform_line_on, ratio, thousands, value};
use crate::summary::{Agg, FigKind, Summary};
use crate::targets::{at_least, missing, straddles, Status, Target};
use plotters::prelude::SeriesLabelPosition;
use std::fmt::Write;

pub const SUITE: &str = "scale";
pub const PRIVATE: &str = "map_unmap_private";
pub const SHARED: &str = "map_unmap_shared";
/// The vCPU counts the counted target is checked at.
pub const COUNTED_AT: [u64; 3] = [2, 4, 8];
/// Private-region instructions per operation may grow at most this much
/// over 1 vCPU's.
pub const MAX_COUNT_GROWTH: f64 = 0.10;
/// At `--smp 2` under multi-threaded TCG, the private aggregate rate at
/// least this many times 1 vCPU's.
pub const MIN_AGGREGATE_2: f64 = 1.7;
/// The machine the timed target is set on.
pub const AGGREGATE_SMP: u64 = 2;

/// How to measure the timed target when a run did not.
pub const MEASURE_AGGREGATE: &str =
    "HB_TCG_THREAD=multi scripts/bench.sh --smp 2 --extra-smp 0 -- suite=scale";

/// The machines that ran the suite (None: the run's own), widest first.
fn machines(s: &Summary, kind: Option<FigKind>) -> Vec<Option<u64>> {
    let mut ms: Vec<(u64, Option<u64>)> = std::iter::once(None)
        .chain(s.other_machines().into_iter().map(Some))
        .filter_map(|m| {
            let most = s
                .figures
                .iter()
                .filter(|a| a.key.suite == SUITE && a.key.machine == m)
                .filter(|a| kind.is_none_or(|k| a.kind == k))
                .map(|a| a.key.vcpus)
                .max()?;
            Some((most, m))
        })
        .collect();
    // Most vCPUs first; on a tie the run's own machine.
    ms.sort_by_key(|(most, m)| (std::cmp::Reverse(*most), m.is_some()));
    ms.into_iter().map(|(_, m)| m).collect()
}

/// The machine whose scale figures reach the most vCPUs, either kind.
pub fn widest(s: &Summary) -> Option<Option<u64>> {
    machines(s, None).into_iter().next()
}

/// The vCPUs of machine `m` (None: the run's own), if known.
fn machine_vcpus(s: &Summary, m: Option<u64>) -> Option<u64> {
    m.or(s.primary_vcpus)
}

fn machine_name(s: &Summary, m: Option<u64>) -> String {
    match (m, s.primary_vcpus) {
        (Some(v), _) => format!("the {v}-vCPU boots"),
        (None, Some(v)) => format!("the run's own {v}-vCPU boots"),
        (None, None) => "the run's own boots".into(),
    }
}

fn fig<'a>(
    s: &'a Summary,
    m: Option<u64>,
    name: &str,
    vcpus: u64,
    kind: FigKind,
) -> Option<&'a Agg> {
    s.on_machine(m, kind)
        .find(|a| a.key.suite == SUITE && a.key.name == name && a.key.vcpus == vcpus)
}

/// The vCPU counts machine `m` measured `name` at, in order.
fn counts_of(s: &Summary, m: Option<u64>, name: &str) -> Vec<u64> {
    let mut v: Vec<u64> = s
        .figures
        .iter()
        .filter(|a| a.key.suite == SUITE && a.key.name == name && a.key.machine == m)
        .map(|a| a.key.vcpus)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Both targets.
pub fn targets(s: &Summary) -> Vec<Target> {
    vec![counted_target(s), aggregate_target(s)]
}

const COUNTED_AIM: &str = "When N vCPUs each map and unmap in a region of their own at once, the \
     guest's total instructions per operation stay within 10% of one vCPU's at N = 2, 4 and 8: no vCPU \
     spins on a lock another holds (each batch's one shootdown round to the others is counted too).";

fn counted_target(s: &Summary) -> Target {
    let title = "mm calls on different vCPUs do not serialise (counted)".to_string();
    let req = format!(
        "scale {PRIVATE}, icount: instructions/op at N = 2, 4, 8 ≤ 1 vCPU's + {:.0}%",
        MAX_COUNT_GROWTH * 100.0
    );
    let Some(m) = machines(s, Some(FigKind::Counted)).into_iter().next() else {
        return missing(
            title,
            COUNTED_AIM.into(),
            req,
            "no counted `scale` figures in this run (no counting boot ran the suite: `scripts/bench.sh \
             --icount -- suite=scale`)"
                .into(),
        );
    };
    let Some(base) = fig(s, m, PRIVATE, 1, FigKind::Counted).filter(|a| a.median > 0.0) else {
        return missing(
            title,
            COUNTED_AIM.into(),
            req,
            format!(
                "no counted 1-vCPU `{PRIVATE}` figure in {}",
                machine_name(s, m)
            ),
        );
    };
    let mut parts = vec![format!("1: {}", exact(base.median))];
    let mut worst: Option<(u64, f64, &Agg)> = None;
    let mut absent = Vec::new();
    for n in COUNTED_AT {
        match fig(s, m, PRIVATE, n, FigKind::Counted) {
            Some(a) => {
                let g = a.median / base.median - 1.0;
                parts.push(format!("{n}: {} ({:+.1}%)", exact(a.median), g * 100.0));
                if worst.is_none_or(|(_, w, _)| g > w) {
                    worst = Some((n, g, a));
                }
            }
            None => absent.push(n),
        }
    }
    let measured = format!(
        "{} instructions/op, on {}",
        parts.join("; "),
        machine_name(s, m)
    );
    if !absent.is_empty() {
        let most = machine_vcpus(s, m).map_or("an unknown number of".into(), |v| v.to_string());
        let mut t = missing(
            title,
            COUNTED_AIM.into(),
            req,
            format!(
                "no figure at N = {} (the widest machine that ran the suite had {most} vCPUs; a full \
                 `scripts/bench.sh` adds a 16-vCPU boot, or `scripts/bench.sh --icount --smp 8 -- suite=scale`)",
                absent
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        t.measured = measured;
        t.basis = "instruction counts (exact)".into();
        return t;
    }
    let (wn, wg, wa) = worst.expect("COUNTED_AT is not empty");
    let met = wg <= MAX_COUNT_GROWTH;
    let margin = if met {
        format!(
            "worst {:+.1}% at N = {wn} ≤ +{:.0}%: met with {:.1} points to spare",
            wg * 100.0,
            MAX_COUNT_GROWTH * 100.0,
            (MAX_COUNT_GROWTH - wg) * 100.0
        )
    } else {
        format!(
            "{:+.1}% at N = {wn} > +{:.0}%: {:.1} points over",
            wg * 100.0,
            MAX_COUNT_GROWTH * 100.0,
            (wg - MAX_COUNT_GROWTH) * 100.0
        )
    };
    let why = (!met).then(|| {
        let ipis = |a: &Agg| s.counters_source(a).fig.ipis_per_op();
        let flushes = |a: &Agg| s.counters_source(a).fig.flushes_per_op();
        format!(
            "at N = {wn} every operation runs {} more guest instructions than on 1 vCPU ({} → {}); the \
             counters show IPIs/op {} → {} and flushes/op {} → {}, so the growth {}",
            exact(wa.median - base.median),
            exact(base.median),
            exact(wa.median),
            count(ipis(base)),
            count(ipis(wa)),
            count(flushes(base)),
            count(flushes(wa)),
            if ipis(wa).unwrap_or(0.0) > ipis(base).unwrap_or(0.0) * 2.0 + 0.01 {
                "comes with cross-vCPU interrupts that private regions should not need"
            } else {
                "is not shootdowns: it is instructions spent waiting (a contended lock, a spin) or in shared \
                 bookkeeping"
            }
        )
    });
    Target {
        title,
        aim: COUNTED_AIM.into(),
        requirement: req,
        status: if met { Status::Met } else { Status::NotMet },
        basis: "instruction counts (exact)".into(),
        measured,
        margin,
        uncertain: None,
        why,
    }
}

const AGGREGATE_AIM: &str = "Two vCPUs on two host cores do nearly twice the work of one: under \
     multi-threaded TCG at --smp 2, the private-region aggregate rate (operations per second, both vCPUs \
     together) is at least 1.7 times one vCPU's, timed, median across boots.";

/// How the timed boots of machine `m` ran TCG: every boot's threading, or
/// None when a boot does not say.
fn threads_on(s: &Summary, m: Option<u64>) -> Option<Vec<(String, String)>> {
    s.boots_on(m)
        .filter(|b| b.kind() == FigKind::Timed)
        .map(|b| {
            let t = if b.accel().as_deref() == Some("kvm") {
                Some("kvm".to_string())
            } else {
                b.tcg_thread()
            };
            t.map(|t| (t, b.tcg_thread_source().to_string()))
        })
        .collect()
}

fn aggregate_target(s: &Summary) -> Target {
    let title = "Private regions scale across host cores (timed)".to_string();
    let req = format!(
        "scale {PRIVATE}, multi-threaded TCG, --smp {AGGREGATE_SMP}: aggregate at {AGGREGATE_SMP} vCPUs ≥ {} \
         1 vCPU's",
        ratio(MIN_AGGREGATE_2)
    );
    let not_measured = |what: String| {
        missing(
            title.clone(),
            AGGREGATE_AIM.into(),
            req.clone(),
            format!("not measured in this run: {what}; to measure it: `{MEASURE_AGGREGATE}`"),
        )
    };
    // The machine of exactly --smp 2.
    let m = if s.primary_vcpus == Some(AGGREGATE_SMP) {
        None
    } else if s.other_machines().contains(&AGGREGATE_SMP) {
        Some(AGGREGATE_SMP)
    } else {
        let mut why = format!(
            "no boot had {AGGREGATE_SMP} vCPUs (this run's had {})",
            std::iter::once(s.primary_vcpus)
                .chain(s.other_machines().into_iter().map(Some))
                .map(|v| v.map_or("unknown".into(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(" and ")
        );
        let timed: Vec<String> = s
            .boots_of(FigKind::Timed)
            .filter_map(|b| b.tcg_thread())
            .collect();
        if timed.is_empty() {
            why += ", and no timed boot ran multi-threaded TCG";
        } else if timed.iter().all(|t| t != "multi") {
            why += &format!(", and its timed boots ran {}-threaded TCG", timed[0]);
        }
        return not_measured(why);
    };
    let (Some(one), Some(two)) = (
        fig(s, m, PRIVATE, 1, FigKind::Timed),
        fig(s, m, PRIVATE, AGGREGATE_SMP, FigKind::Timed),
    ) else {
        return not_measured(format!(
            "the timed boots at {AGGREGATE_SMP} vCPUs printed no `{PRIVATE}` figure at 1 and {AGGREGATE_SMP} vCPUs"
        ));
    };
    let threads = threads_on(s, m);
    let ratio_now = if two.median > 0.0 {
        one.median / two.median
    } else {
        f64::INFINITY
    };
    let figures = format!(
        "{} vs {} cycles/op at 1 and {AGGREGATE_SMP} vCPUs: aggregate {}",
        thousands(one.median),
        thousands(two.median),
        ratio(ratio_now)
    );
    match threads.as_deref() {
        None => {
            return not_measured(format!(
                "the timed boots' TCG threading is not recorded (no run-*.log with the QEMU command line, no \
                 host.json); they gave {figures}"
            ))
        }
        Some(ts) if ts.iter().any(|(t, _)| t != "multi") => {
            let (t, src) = ts
                .iter()
                .find(|(t, _)| t != "multi")
                .cloned()
                .unwrap_or_default();
            let what = if t == "kvm" {
                "the timed boots ran on KVM, not multi-threaded TCG".to_string()
            } else {
                format!(
                    "the timed boots ran {t}-threaded TCG (from {src}), where one host thread runs every vCPU in \
                     turn, so no aggregate can exceed 1x; they gave {figures}"
                )
            };
            return not_measured(what);
        }
        Some(_) => {}
    }
    let (status, margin) = at_least(ratio_now, MIN_AGGREGATE_2);
    let cores = s
        .host
        .host_cpus
        .map_or("an unrecorded number of".into(), |n| n.to_string());
    let why = (status == Status::NotMet).then(|| {
        // Each vCPU's own pace: at 2 vCPUs an operation of one of them
        // takes twice the elapsed cycles per operation of both.
        let per_vcpu = two.median * AGGREGATE_SMP as f64 / one.median;
        let counted = |v| {
            machines(s, Some(FigKind::Counted))
                .into_iter()
                .find_map(|mm| fig(s, mm, PRIVATE, v, FigKind::Counted))
        };
        let counts = match (counted(1), counted(AGGREGATE_SMP)) {
            (Some(a), Some(b)) if a.median > 0.0 => format!(
                "the guest's instructions per operation stay at {} of 1 vCPU's (counted: {} → {}), so it \
                 does no extra work, and",
                ratio(b.median / a.median),
                exact(a.median),
                exact(b.median)
            ),
            _ => "this run has no counting boot to tell whether the guest did extra work;".into(),
        };
        // How long one repetition lasted: next to a host scheduler's time
        // slice (a few ms), one descheduled vCPU thread stalls the other.
        let rep = tsc_hz(s, m)
            .filter(|h| *h > 0)
            .map(|h| {
                format!(
                    "; one repetition at 2 vCPUs lasted {:.1} ms, comparable to a host scheduler's time slice (a few \
                     milliseconds), so one slice that a vCPU thread spends waiting for a host CPU doubles it",
                    two.fig.ops as f64 * two.median / h as f64 * 1e3
                )
            })
            .unwrap_or_default();
        format!(
            "with two vCPUs each one ran {} slower than alone ({} elapsed cycles per operation of its own, \
             against {}): {counts} the two vCPU threads did not run side by side at full speed on the {cores} \
             host CPUs (other work on the host, or serialisation inside QEMU's TCG){rep}",
            ratio(per_vcpu),
            thousands(two.median * AGGREGATE_SMP as f64),
            thousands(one.median)
        )
    });
    Target {
        title,
        aim: AGGREGATE_AIM.into(),
        requirement: req,
        status,
        basis: format!(
            "timed, median of {} boot{}, multi-threaded TCG on {cores} host CPUs",
            one.boots.len(),
            if one.boots.len() == 1 { "" } else { "s" }
        ),
        measured: figures,
        margin,
        uncertain: straddles(s, FigKind::Timed, one, two, MIN_AGGREGATE_2, true),
        why,
    }
}

/// The guest's TSC frequency on machine `m`'s timed boots, for ops/s.
fn tsc_hz(s: &Summary, m: Option<u64>) -> Option<u64> {
    s.boots_on(m)
        .filter(|b| b.kind() == FigKind::Timed)
        .find_map(|b| b.log.env().and_then(|e| e.tsc_hz))
}

/// report.md's scale section (under *Figures*).
pub fn section(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "### scale: N vCPUs mapping and unmapping at once, per operation\n"
    );
    let Some(m) = widest(s) else {
        let _ = writeln!(
            out,
            "No `scale` figures in this run: the suite did not run (a `suite=` list without it, or a kernel \
             older than the suite). `scripts/bench.sh -- suite=scale` runs it alone.\n"
        );
        return;
    };
    let hz = tsc_hz(s, m);
    let _ = writeln!(
        out,
        "From {}. Each vCPU maps a batch of 256 pages and unmaps them, 32 rounds in private regions and 8 \
         in the shared one (2 in quick mode), all vCPUs at once: *private*, each in a region of its own (no common lock; the \
         others share the address space, so each batch's flush still sends them one shootdown round); \
         *shared*, all in one region that every vCPU reads, 64 pages each, so every flush must interrupt the others. \
         Counted: every vCPU's instructions per operation (flat when nothing serialises). Timed: the whole \
         run's elapsed cycles per operation of all vCPUs; its inverse is the aggregate rate{}.{}\n",
        machine_name(s, m),
        match hz {
            Some(h) => format!(" ({:.3} GHz TSC)", h as f64 / 1e9),
            None => String::new(),
        },
        match threads_on(s, m).as_deref() {
            Some(ts) if !ts.is_empty() && ts.iter().all(|(t, _)| t == "single") => {
                " The timed boots ran single-threaded TCG: one host thread runs the vCPUs in turn, so the \
                 aggregate cannot pass 1x here, and the timed columns show what taking turns costs, not \
                 parallelism."
            }
            _ => "",
        }
    );
    let _ = writeln!(
        out,
        "{}",
        header(&[
            "vCPUs",
            "private instructions/op",
            "private ÷ 1 vCPU",
            "private cycles/op",
            "private aggregate Mops/s",
            "private speed-up",
            "shared instructions/op",
            "shared ÷ 1 vCPU",
            "shared cycles/op",
            "shared IPIs/op",
        ])
    );
    let mut counts = counts_of(s, m, PRIVATE);
    counts.extend(counts_of(s, m, SHARED));
    counts.sort_unstable();
    counts.dedup();
    let rel = |name: &str, v: u64, kind: FigKind| -> String {
        match (fig(s, m, name, 1, kind), fig(s, m, name, v, kind)) {
            (Some(b), Some(a)) if b.median > 0.0 => ratio(a.median / b.median),
            _ => "—".into(),
        }
    };
    for v in counts {
        let f = |name: &str, k| fig(s, m, name, v, k);
        let mops = f(PRIVATE, FigKind::Timed)
            .zip(hz)
            .filter(|(a, _)| a.median > 0.0)
            .map_or("—".into(), |(a, h)| {
                format!("{:.2}", h as f64 / a.median / 1e6)
            });
        let speedup = match (
            fig(s, m, PRIVATE, 1, FigKind::Timed),
            f(PRIVATE, FigKind::Timed),
        ) {
            (Some(b), Some(a)) if a.median > 0.0 => ratio(b.median / a.median),
            _ => "—".into(),
        };
        let ipis = f(SHARED, FigKind::Counted)
            .or(f(SHARED, FigKind::Timed))
            .and_then(|a| s.counters_source(a).fig.ipis_per_op());
        let _ = writeln!(
            out,
            "| {v} | {} | {} | {} | {mops} | {speedup} | {} | {} | {} | {} |",
            value(f(PRIVATE, FigKind::Counted)),
            rel(PRIVATE, v, FigKind::Counted),
            value(f(PRIVATE, FigKind::Timed)),
            value(f(SHARED, FigKind::Counted)),
            rel(SHARED, v, FigKind::Counted),
            value(f(SHARED, FigKind::Timed)),
            count(ipis)
        );
    }
    let _ = writeln!(out);
    // The same suite on the run's own machine, when the table is another's.
    if m.is_some() && s.suite_any(SUITE).next().is_some() {
        // The largest relative difference of a counted median between the
        // two machines at the same N.
        let diffs: Vec<f64> = s
            .suite(SUITE, FigKind::Counted)
            .filter_map(|a| {
                let b = s.on_machine(m, FigKind::Counted).find(|b| {
                    b.key.name == a.key.name
                        && b.key.vcpus == a.key.vcpus
                        && b.key.backend == a.key.backend
                })?;
                (b.median > 0.0).then(|| (a.median / b.median - 1.0).abs())
            })
            .collect();
        let worst = diffs.iter().copied().fold(0.0f64, f64::max);
        let _ = writeln!(
            out,
            "The run's own {}-vCPU boots ran the suite too, up to {} vCPUs (`scale/...` in results.json, without \
             the `…/smp=N` suffix){}.\n",
            s.primary_vcpus.map_or("?".into(), |v| v.to_string()),
            s.suite_any(SUITE).map(|a| a.key.vcpus).max().unwrap_or(0),
            if diffs.is_empty() {
                String::new()
            } else if worst == 0.0 {
                "; their counted medians are identical to these at the same N: idle vCPUs add no instructions"
                    .to_string()
            } else {
                format!(
                    "; their counted medians differ from these at the same N by up to {:.2}%: the machine's \
                     idle vCPUs cost instructions",
                    worst * 100.0
                )
            }
        );
    }
}

/// `scale.svg`: per operation against vCPUs, counted and timed, private
/// and shared.
pub fn plots(s: &Summary) -> Result<Vec<Plot>, plots::Error> {
    let Some(m) = widest(s) else {
        return Ok(Vec::new());
    };
    let panel = |kind: FigKind| {
        let mut series = Vec::new();
        for (i, (name, label)) in [(PRIVATE, "private regions"), (SHARED, "shared region")]
            .iter()
            .enumerate()
        {
            let mut figs: Vec<&Agg> = s
                .on_machine(m, kind)
                .filter(|a| a.key.suite == SUITE && a.key.name == *name)
                .collect();
            figs.sort_by_key(|a| a.key.vcpus);
            if figs.is_empty() {
                continue;
            }
            series.push(Series {
                label: (*label).into(),
                colour: NAMES[i],
                dashed: i == 1,
                wide: false,
                points: figs
                    .iter()
                    .map(|a| (a.key.vcpus as f64, a.median))
                    .collect(),
                band: figs
                    .iter()
                    .map(|a| {
                        let (lo, hi) = plots::band(a);
                        (a.key.vcpus as f64, lo, hi)
                    })
                    .collect(),
            });
        }
        let hline = (kind == FigKind::Counted)
            .then(|| fig(s, m, PRIVATE, 1, kind))
            .flatten()
            .map(|b| {
                (
                    b.median * (1.0 + MAX_COUNT_GROWTH),
                    format!(
                        "target: private ≤ 1 vCPU's + {:.0}%",
                        MAX_COUNT_GROWTH * 100.0
                    ),
                )
            });
        let (t, _) = kind_desc(kind);
        Panel {
            title: t.into(),
            x: Scale::Log2,
            y: Scale::Log10,
            x_desc: "vCPUs mapping and unmapping at once (log2 scale)".into(),
            y_desc: match kind {
                FigKind::Counted => "instructions per op, all vCPUs (log scale)".into(),
                FigKind::Timed => "elapsed cycles per op, median (log scale)".into(),
            },
            series,
            vline: None,
            hline,
            legend: SeriesLabelPosition::UpperLeft,
        }
    };
    let panels: Vec<Panel> = [FigKind::Counted, FigKind::Timed]
        .into_iter()
        .map(panel)
        .collect();
    if !panels.iter().any(Panel::has_points) {
        return Ok(Vec::new());
    }
    let file = "scale.svg".to_string();
    let title = "scale: map+unmap on N vCPUs at once, per operation against vCPUs".to_string();
    let svg =
        plots::figure(&title, &platform_line_on(s, m), &panels).map_err(|e| plots::Error {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    Ok(vec![Plot {
        file,
        title,
        caption: format!(
            "From {}. Left, every vCPU's guest instructions per operation (counted, exact): the private line \
             stays flat when nothing serialises, and the black line is the target's bound (1 vCPU's + 10%); \
             the shared line climbs because every flush interrupts every other vCPU. Right, elapsed cycles \
             per operation of all vCPUs together (timed; lower is a higher aggregate rate){}.",
            machine_name(s, m),
            match threads_on(s, m).as_deref() {
                Some(ts) if !ts.is_empty() && ts.iter().all(|(t, _)| t == "single") =>
                    "; these timed boots ran single-threaded TCG, where the vCPUs take turns on one host thread, \
                     so the line cannot fall below 1 vCPU's",
                _ => "",
            }
        ),
        svg,
    }])
}

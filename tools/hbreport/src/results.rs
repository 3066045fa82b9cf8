//! The machine-readable half of a results directory:
//! - `results.json`: every figure over every boot (the full tables), the
//!   host, each boot with every `HB` record exactly as the guest wrote it,
//!   so later tools never need the serial logs again. Its layout is
//!   versioned ([`RESULTS_SCHEMA`]) and documented in docs/results-schema.md;
//! - `results.csv`: one row per figure, for spreadsheets;
//! - `benchmark.json`: github-action-benchmark's `customSmallerIsBetter`
//!   input (name, unit, value per figure), for a dashboard.

use crate::model::{Event, Model, Platform};
use crate::summary::{Agg, FigKind, Summary};
use serde_json::{json, Value};

/// The layout version of results.json. 1: one boot, its records. 2: many
/// boots, the figures aggregated over them, the host recorded.
pub const RESULTS_SCHEMA: u64 = 2;

/// One figure as results.json holds it.
pub fn figure_json(s: &Summary, a: &Agg) -> Value {
    let f = &a.fig;
    let c = s.counters_source(a);
    json!({
        "id": a.key.id(),
        "suite": a.key.suite,
        "name": a.key.name,
        "backend": a.key.backend,
        "batch": a.key.batch,
        "vcpus": a.key.vcpus,
        "machine_vcpus": a.key.machine.or(s.primary_vcpus),
        "page_bytes": f.page_bytes,
        "unit": a.key.unit,
        "scope": f.scope,
        "kind": a.kind.name(),
        "boots": a.boots.iter().map(|b| s.boots[*b].file.clone()).collect::<Vec<_>>(),
        "values": a.values,
        "median": a.median,
        "min": a.min,
        "max": a.max,
        "spread": a.spread(),
        "noisy": a.noisy(),
        "identical": a.identical,
        "p99": a.p99,
        "ops": f.ops,
        "reps": f.reps,
        "counters": c.fig.counters,
        "events_per_op": {
            "flushes": c.fig.flushes_per_op(),
            "privileged": c.fig.privileged_per_op(),
            "invalidations": c.fig.invalidations_per_op(),
            "ipis": c.fig.ipis_per_op(),
        },
        "checksums": a.checksums,
    })
}

/// A cost range as JSON.
fn cost_json(c: crate::model::Cost) -> Value {
    json!({ "lo": finite(c.lo), "hi": finite(c.hi), "at_least": c.at_least })
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The cost model: this run's fit, every figure checked, every suite's
/// error, and the projections.
fn model_json(m: &Model) -> Value {
    let events = |e: &crate::model::Events| -> Value {
        Value::Object(
            Event::ALL
                .iter()
                .map(|x| (x.key().to_string(), json!(e.get(*x))))
                .collect(),
        )
    };
    json!({
        "cpi": m.fit.cpi.and_then(|c| c.is_finite().then_some(c)),
        "fit_figures": m.fit.fit_figures,
        "costs": Value::Object(
            m.fit
                .costs
                .iter()
                .map(|(e, c)| (e.key().to_string(), c.map_or(Value::Null, finite)))
                .collect(),
        ),
        "checks": m.checks.iter().map(|c| json!({
            "id": c.id(),
            "instructions": finite(c.instructions),
            "events_per_op": events(&c.events),
            "predicted": finite(c.predicted),
            "measured": finite(c.measured),
            "error": finite(c.error()),
            "in_fit": c.in_fit,
        })).collect::<Vec<_>>(),
        "suites": m.suites.iter().map(|se| json!({
            "suite": se.suite,
            "figures": se.figures,
            "within_target": se.within,
            "median_abs_error": finite(se.median_abs),
            "max_abs_error": finite(se.max_abs),
            "median_error": finite(se.median),
        })).collect::<Vec<_>>(),
        "projections": m.projected.iter().map(|p| json!({
            "suite": p.suite,
            "name": p.name,
            "batch": p.batch,
            "vcpus": p.vcpus,
            "platforms": Value::Object(
                Platform::ALL
                    .iter()
                    .zip(&p.cells)
                    .map(|(pl, (i, b))| {
                        (pl.key().to_string(), json!({ "immediate": cost_json(*i), "batched": cost_json(*b) }))
                    })
                    .collect(),
            ),
        })).collect::<Vec<_>>(),
    })
}

/// results.json.
pub fn to_json(s: &Summary, problems: &[String], model: &Model, created: &str) -> String {
    let boots: Vec<Value> = s
        .boots
        .iter()
        .map(|b| {
            let skipped: Vec<Value> = b
                .log
                .skipped
                .iter()
                .map(|k| json!({ "line": k.line, "reason": k.reason, "text": k.text }))
                .collect();
            let env = b
                .log
                .records
                .iter()
                .rev()
                .find(|r| r.event == "env")
                .map(|r| r.value.clone())
                .unwrap_or(Value::Null);
            json!({
                "log": b.file,
                "kind": match b.kind() { FigKind::Counted => "counting", FigKind::Timed => "timed" },
                "mode": b.mode(),
                "accel": b.accel(),
                "tcg_thread": b.tcg_thread(),
                "tcg_thread_from": b.tcg_thread().map(|_| b.tcg_thread_source()),
                "vcpus": b.vcpus(),
                "run_log": b.launch.as_ref().map(|l| l.source.clone()),
                "exit_status": b.log.exit_status(),
                "lines": b.log.lines,
                "figures": b.log.figures().count(),
                "guest_errors": b.log.guest_errors,
                "skipped": skipped,
                "env": env,
                "boot": b.log.boot().cloned(),
                "records": b.log.records.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let h = &s.host;
    let doc = json!({
        "schema": RESULTS_SCHEMA,
        "tool": concat!("hbreport ", env!("CARGO_PKG_VERSION")),
        "created": created,
        "host": {
            "recorded": h.recorded(),
            "date": h.date,
            "cpu_model": h.cpu_model,
            "host_cpus": h.host_cpus,
            "kernel": h.kernel,
            "vmm": h.vmm,
            "vmm_version": h.vmm_version,
            "machine": h.machine,
            "smp": h.smp,
            "mem": h.mem,
            "accel": h.accel,
            "tcg_thread": h.tcg_thread,
            "kvm": h.kvm,
        },
        "project": {
            "git_rev": h.git_rev,
            "dirty": h.git_dirty,
            "kernel_rev": s.env().and_then(|e| e.git_rev.clone()),
        },
        "run": {
            "quick": s.quick(),
            "counting_boots": s.boots_of(FigKind::Counted).count(),
            "timed_boots": s.boots_of(FigKind::Timed).count(),
            "all_succeeded": s.all_succeeded(),
        },
        "figures": s.figures.iter().map(|a| figure_json(s, a)).collect::<Vec<_>>(),
        "model": model_json(model),
        "problems": problems,
        "boots": boots,
    });
    // Pretty: people diff these between runs.
    let mut out =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    out.push('\n');
    out
}

/// A CSV field: quoted when it holds a comma, a quote or a line break
/// (RFC 4180), so a name from the log cannot shift the columns.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

pub const CSV_HEADER: &str = "id,suite,name,backend,batch,vcpus,unit,kind,boots,median,min,max,\
spread,noisy,identical,p99,ops,reps,flushes_per_op,privileged_per_op,invalidations_per_op,\
ipis_per_op,checksum,machine_vcpus,page_bytes";

/// results.csv: one row per figure.
pub fn to_csv(s: &Summary) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for a in &s.figures {
        let c = s.counters_source(a);
        let row = [
            csv_field(&a.key.id()),
            csv_field(&a.key.suite),
            csv_field(&a.key.name),
            csv_field(&a.key.backend),
            a.key.batch.to_string(),
            a.key.vcpus.to_string(),
            csv_field(&a.key.unit),
            a.kind.name().to_string(),
            a.boots.len().to_string(),
            a.median.to_string(),
            a.min.to_string(),
            a.max.to_string(),
            a.spread().to_string(),
            a.noisy().to_string(),
            a.identical.to_string(),
            a.p99.to_string(),
            a.fig.ops.to_string(),
            a.fig.reps.to_string(),
            num(c.fig.flushes_per_op()),
            num(c.fig.privileged_per_op()),
            num(c.fig.invalidations_per_op()),
            num(c.fig.ipis_per_op()),
            csv_field(a.fig.checksum.as_deref().unwrap_or("")),
            a.key
                .machine
                .or(s.primary_vcpus)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            a.fig.page_bytes.map(|v| v.to_string()).unwrap_or_default(),
        ];
        out += &row.join(",");
        out.push('\n');
    }
    out
}

/// The name a dashboard shows for a figure: its id and unit.
pub fn bench_name(id: &str, unit: &str) -> String {
    format!("{id} ({unit})")
}

/// benchmark.json (github-action-benchmark, `tool: customSmallerIsBetter`):
/// an array of `{name, unit, value}` with `range` (half the min–max spread
/// across boots) and `extra`.
pub fn to_benchmark_json(s: &Summary) -> String {
    let rows: Vec<Value> = s
        .figures
        .iter()
        .map(|a| {
            let mut v = json!({
                "name": bench_name(&a.key.id(), &a.key.unit),
                "unit": format!("{}/op", a.key.unit),
                "value": a.median,
            });
            if a.values.len() > 1 {
                v["range"] = json!(format!("± {}", (a.max - a.min) / 2.0));
            }
            v["extra"] = json!(format!(
                "{} {}, {} boot(s), min {} max {}",
                a.kind.name(),
                a.key.unit,
                a.values.len(),
                a.min,
                a.max
            ));
            v
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into());
    out.push('\n');
    out
}

/// The current time in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_from_unix(secs)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC.
pub fn utc_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, public domain algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Every field of results.json (schema 2): its path, its type and what it
/// holds. docs/results-schema.md prints this table (a test keeps the two
/// the same) and [`validate`] checks a file against it.
///
/// Paths: `a.b` is key `b` of object `a`; `a[]` the elements of array
/// `a`. Types: `int`, `number`, `string`, `bool`, `array`, `object`, and
/// `map` (an object whose keys are data, not checked further); a trailing
/// `?` allows null.
pub const FIELDS: &[(&str, &str, &str)] = &[
    ("schema", "int", "the layout version of this file: 2"),
    ("tool", "string", "the hbreport that wrote it, with its version"),
    ("created", "string", "when the report was made (UTC, RFC 3339)"),
    ("host", "object", "the machine the boots ran on, from host.json; all null when the report was made from saved logs alone"),
    ("host.recorded", "bool", "whether host.json was there; false: every host field below is null"),
    ("host.date", "string?", "when bench.sh started the run (UTC, RFC 3339)"),
    ("host.cpu_model", "string?", "the host CPU (`model name` in /proc/cpuinfo)"),
    ("host.host_cpus", "int?", "logical CPUs of the host"),
    ("host.kernel", "string?", "the host kernel: OS, release, architecture"),
    ("host.vmm", "string?", "`qemu` or `cloud-hypervisor`"),
    ("host.vmm_version", "string?", "the VMM's own `--version` line"),
    ("host.machine", "string?", "the QEMU machine type (microvm, pc, q35) or `ch`"),
    ("host.smp", "int?", "vCPUs the guest was given"),
    ("host.mem", "string?", "guest RAM as given to the VMM (`512M`)"),
    ("host.accel", "string?", "the timed boots' accelerator, `tcg` or `kvm` (counting boots are always TCG)"),
    ("host.tcg_thread", "string?", "the timed boots' TCG threading, `single` or `multi` (counting boots are always single)"),
    ("host.kvm", "map", "per KVM module loaded on the host (`kvm_intel`, `kvm_amd`, `kvm`), the parameters that change what a figure means: `ept`/`npt` (off: shadow paging), `nested`, `enable_apicv`/`avic`, `tdp_mmu`; empty when none is loaded"),
    ("project", "object", "the revision measured"),
    ("project.git_rev", "string?", "the project's git commit when bench.sh ran"),
    ("project.dirty", "bool?", "whether tracked files had uncommitted changes then"),
    ("project.kernel_rev", "string?", "the revision the kernel reports in its env record (`git describe --dirty`)"),
    ("run", "object", "what kind of run this is"),
    ("run.quick", "bool?", "every boot ran the quick benchmarks (null: unknown)"),
    ("run.counting_boots", "int", "boots under QEMU icount"),
    ("run.timed_boots", "int", "boots timed with the TSC"),
    ("run.all_succeeded", "bool", "every boot's guest exited with status 0"),
    ("figures", "array", "one entry per figure and unit, over every boot that printed it: the full tables"),
    ("figures[]", "object", "a figure"),
    ("figures[].id", "string", "`suite/name/backend/batch=B/vcpus=V`, and `/smp=N` after it for a figure of an extra boot's machine of N vCPUs; with `unit`, the figure's identity across runs"),
    ("figures[].suite", "string", "the benchmark suite (exits, mm, cpu, smp, scale, workload)"),
    ("figures[].name", "string", "the benchmark"),
    ("figures[].backend", "string", "`immediate`, `batched`, `floor`, or `none` (exits)"),
    ("figures[].batch", "int", "operations per flush"),
    ("figures[].vcpus", "int", "vCPUs involved"),
    ("figures[].machine_vcpus", "int?", "vCPUs of the machine that measured it (the run's own, or an extra boot's: then `id` ends in `/smp=N`); null: unknown"),
    ("figures[].page_bytes", "int?", "the page size one operation works on, in bytes (4096, 2097152; 0: not a page operation); null: the guest did not say"),
    ("figures[].unit", "string", "`instructions` (counted) or `cycles` (timed)"),
    ("figures[].scope", "string", "`all_vcpus` (icount counts every vCPU's instructions) or `elapsed` (time on the measuring vCPU)"),
    ("figures[].kind", "string", "`counted` or `timed`"),
    ("figures[].boots", "array", "the logs (file names) of the boots that printed it"),
    ("figures[].values", "array", "the figure (median over repetitions) in each of those boots, in the same order"),
    ("figures[].median", "number", "the figure: the median of `values`"),
    ("figures[].min", "number", "the least of `values`"),
    ("figures[].max", "number", "the greatest of `values`"),
    ("figures[].spread", "number", "(max − min) ÷ median; 0 for one boot"),
    ("figures[].noisy", "bool", "a timed figure whose spread exceeds 0.10"),
    ("figures[].identical", "bool", "a counted figure that every counting boot printed identically (false: the guest is not deterministic); true for timed figures"),
    ("figures[].p99", "number", "the median across boots of each boot's 99th percentile over repetitions"),
    ("figures[].ops", "int", "operations per repetition (first boot)"),
    ("figures[].reps", "int", "repetitions (first boot)"),
    ("figures[].counters", "map", "the queue's counters over all measured operations (the counting boot's when there is one), as the guest printed them; null for exits"),
    ("figures[].events_per_op", "object", "counters per operation"),
    ("figures[].events_per_op.flushes", "number?", "queue flushes per operation"),
    ("figures[].events_per_op.privileged", "number?", "privileged operations per operation: PTE writes + invlpg + full flushes + CR writes + IPIs"),
    ("figures[].events_per_op.invalidations", "number?", "invlpg + full flushes per operation"),
    ("figures[].events_per_op.ipis", "number?", "IPIs per operation"),
    ("figures[].checksums", "array", "each boot's workload checksum (null where the figure has none)"),
    ("model", "object", "the cost model (report.md, The cost model and Projection): cycles/op ≈ instructions/op × CPI + Σ events/op × cost"),
    ("model.cpi", "number?", "the cycles per guest instruction fitted on this run's floor figures and `pte_write` exit (null: not enough figures)"),
    ("model.fit_figures", "int", "how many figures the CPI was fitted on"),
    ("model.costs", "map", "per event: its cost on this run in cycles, from its `exits` figure less that figure's instructions at the CPI (null: not measured)"),
    ("model.checks", "array", "every figure with counted and timed twins and counters, predicted and measured"),
    ("model.checks[]", "object", "one figure"),
    ("model.checks[].id", "string", "the figure's id, as in `figures[]`"),
    ("model.checks[].instructions", "number?", "its counted instructions per operation"),
    ("model.checks[].events_per_op", "map", "the events the model prices, per operation"),
    ("model.checks[].predicted", "number?", "predicted cycles per operation"),
    ("model.checks[].measured", "number?", "the timed median, cycles per operation"),
    ("model.checks[].error", "number?", "(predicted − measured) ÷ measured"),
    ("model.checks[].in_fit", "bool", "a floor figure, which the CPI was fitted on"),
    ("model.suites", "array", "the check's error per suite, the fit's figures left out"),
    ("model.suites[]", "object", "one suite"),
    ("model.suites[].suite", "string", "the suite"),
    ("model.suites[].figures", "int", "figures checked"),
    ("model.suites[].within_target", "int", "figures within ±25%"),
    ("model.suites[].median_abs_error", "number?", "the median |error|"),
    ("model.suites[].max_abs_error", "number?", "the largest |error|"),
    ("model.suites[].median_error", "number?", "the median signed error (negative: predicted too low)"),
    ("model.projections", "array", "per suite, each benchmark immediate and batched at its largest batch or vCPU count, projected onto every reference platform"),
    ("model.projections[]", "object", "one benchmark"),
    ("model.projections[].suite", "string", "the suite"),
    ("model.projections[].name", "string", "the benchmark"),
    ("model.projections[].batch", "int", "the batched figure's batch"),
    ("model.projections[].vcpus", "int", "vCPUs"),
    ("model.projections[].platforms", "map", "per platform key: `{immediate, batched}`, each `{lo, hi, at_least}` cycles per operation"),
    ("problems", "array", "what `--check` found wrong, one sentence each (empty: the run passed)"),
    ("boots", "array", "every boot, in the order given"),
    ("boots[]", "object", "one boot"),
    ("boots[].log", "string", "its serial log in the results directory"),
    ("boots[].kind", "string", "`counting` or `timed`"),
    ("boots[].mode", "string", "how it ran, in words: `TCG, single-threaded, icount`"),
    ("boots[].accel", "string?", "`tcg` or `kvm`"),
    ("boots[].tcg_thread", "string?", "TCG's threading in this boot, `single` or `multi` (null: not TCG, or not recorded)"),
    ("boots[].tcg_thread_from", "string?", "where `tcg_thread` comes from: `the QEMU command line` (the boot's run log) or `host.json`"),
    ("boots[].vcpus", "int?", "the vCPUs the boot's machine had (the guest's env record, else its boot record, else the VMM command line)"),
    ("boots[].run_log", "string?", "the VMM script's log of this boot (run-*.log) that hbreport read, null when there was none"),
    ("boots[].exit_status", "int?", "the guest's exit status (null: no exit record, the guest did not finish)"),
    ("boots[].lines", "int", "lines in the log"),
    ("boots[].figures", "int", "result records in the log"),
    ("boots[].guest_errors", "array", "the guest's own error lines, the first 20"),
    ("boots[].skipped", "array", "HB lines that did not parse"),
    ("boots[].skipped[]", "object", "one of them"),
    ("boots[].skipped[].line", "int", "its line number"),
    ("boots[].skipped[].reason", "string", "why it did not parse"),
    ("boots[].skipped[].text", "string", "its first 160 characters"),
    ("boots[].env", "map", "the guest's env record as it printed it (null: none)"),
    ("boots[].boot", "map", "the guest's boot record as it printed it (null: none)"),
    ("boots[].records", "array", "every HB record of the log, in order, as the guest printed it"),
];

fn type_ok(v: &Value, ty: &str) -> bool {
    let (ty, nullable) = match ty.strip_suffix('?') {
        Some(t) => (t, true),
        None => (ty, false),
    };
    if v.is_null() {
        return nullable || ty == "map";
    }
    match ty {
        "int" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "bool" => v.is_boolean(),
        "array" => v.is_array(),
        "object" | "map" => v.is_object(),
        _ => false,
    }
}

/// Checks a results.json against [`FIELDS`]: every documented field is
/// there with its type, and every field there is documented. Returns one
/// sentence per problem (empty: it validates).
pub fn validate(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.get("schema").and_then(Value::as_u64) != Some(RESULTS_SCHEMA) {
        problems.push(format!(
            "schema is {}, not {RESULTS_SCHEMA}",
            doc.get("schema").unwrap_or(&Value::Null)
        ));
        return problems;
    }
    let ty_of = |path: &str| FIELDS.iter().find(|f| f.0 == path).map(|f| f.1);
    // Walk the document: every value's path must be documented.
    fn walk(
        v: &Value,
        path: &str,
        ty_of: &dyn Fn(&str) -> Option<&'static str>,
        problems: &mut Vec<String>,
    ) {
        let shown = |p: &str| {
            if p.is_empty() {
                "(top)".to_string()
            } else {
                p.to_string()
            }
        };
        if !path.is_empty() {
            match ty_of(path) {
                None => {
                    problems.push(format!("{} is not a documented field", shown(path)));
                    return;
                }
                Some(ty) => {
                    if !type_ok(v, ty) {
                        problems.push(format!("{path} should be {ty}, is {v}"));
                        return;
                    }
                    if ty == "map" {
                        return;
                    }
                }
            }
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, ty_of, problems);
                }
            }
            Value::Array(a) => {
                let p = format!("{path}[]");
                // Arrays of plain values have no `[]` entry: not walked.
                if ty_of(&p).is_some() {
                    for child in a {
                        walk(child, &p, ty_of, problems);
                    }
                }
            }
            _ => {}
        }
    }
    walk(doc, "", &ty_of, &mut problems);
    // Every documented field of every object present must be there.
    for (path, ty, _) in FIELDS {
        let parts: Vec<&str> = path.split('.').collect();
        let mut values: Vec<&Value> = vec![doc];
        for part in &parts {
            let (key, each) = match part.strip_suffix("[]") {
                Some(k) => (k, true),
                None => (*part, false),
            };
            let mut next = Vec::new();
            for v in values {
                match v.get(key) {
                    Some(c) if each => next.extend(c.as_array().into_iter().flatten()),
                    Some(c) => next.push(c),
                    None if v.is_object() && !each => {
                        problems.push(format!("{path} is missing (type {ty})"));
                    }
                    None => {}
                }
            }
            values = next;
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

//! The serial log: the first step. It finds the machine-readable lines
//! (`HB ` and one JSON object, written by the kernel's `hb` module), keeps
//! them in order, and gives the benchmark ones a type: `env`, `result`,
//! `progress` and `exit`. Every other line is prose for people and is
//! ignored.
//!
//! A malformed `HB` line (not JSON, no `"event"`, a `result` missing a field
//! or with a schema this tool does not know) is skipped with a warning that
//! names its line number, so one garbled line does not cost a whole run its
//! report; the warning reaches report.md and results.json. With `strict`
//! the same line is an error instead, which is what CI wants: the quick
//! bench run checks that every line the guest prints parses.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Marks a machine-readable line (the kernel's `hb::PREFIX`).
pub const PREFIX: &str = "HB ";

/// The `schema` of `result` and `env` records this tool understands (the
/// kernel's `bench::SCHEMA`).
pub const SCHEMA: u64 = 2;

/// The most vCPUs a figure may claim. KVM's x86 `KVM_MAX_VCPUS` is 4096
/// (arch/x86/include/asm/kvm_host.h since Linux 5.15); a larger count is a
/// corrupt record, and would make the vCPU axis of a plot unbounded.
pub const MAX_VCPUS: u64 = 4096;

/// The largest batch a figure may claim: far above any ring (the kernel's
/// holds 256 entries), low enough that a log2 axis stays a few dozen steps.
pub const MAX_BATCH: u64 = 1 << 32;

/// The largest page a figure may claim: x86-64's 1 GiB page.
pub const MAX_PAGE_BYTES: u64 = 1 << 30;

/// How many guest error lines a log keeps (the first ones: later errors
/// are usually consequences).
const GUEST_ERRORS_MAX: usize = 20;

/// Why a log cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Strict mode: the `HB` line at `line` (1-based) is malformed.
    Malformed { line: usize, reason: String },
    /// The log holds no `result` record: there is nothing to report.
    /// `guest_errors` are the guest's own error lines, which say why.
    NoResults {
        hb_lines: usize,
        guest_errors: Vec<String>,
        /// The first HB line skipped as malformed, when one was.
        first_skipped: Option<String>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed { line, reason } => {
                write!(f, "line {line}: malformed HB record: {reason}")
            }
            Error::NoResults {
                hb_lines,
                guest_errors,
                first_skipped,
            } => {
                write!(
                    f,
                    "the log holds no HB result record ({hb_lines} HB lines in all)"
                )?;
                match (guest_errors.first(), first_skipped) {
                    (Some(e), _) => write!(f, "; the guest said: {e}"),
                    (None, Some(k)) => write!(f, "; {k}"),
                    (None, None) => write!(f, ": did the guest run with run=bench?"),
                }
            }
        }
    }
}

impl std::error::Error for Error {}

/// A median and a 99th percentile, and (for the figure itself) the least
/// and the greatest repetition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub p99: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The queue's counters, totals over all measured operations and reps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub enqueued: u64,
    pub flushes: u64,
    pub pte_writes: u64,
    pub invlpg: u64,
    pub full_flushes: u64,
    pub cr_writes: u64,
    pub cr_coalesced: u64,
    pub ipis: u64,
    pub shootdowns: u64,
    pub fault_flushes: u64,
    pub frames_released: u64,
    /// Leaf tables first written in a sync epoch (the shadow-paging unsync
    /// event); absent from logs older than the cost model.
    pub tables_unsynced: u64,
    /// What this vCPU (or, for smp figures, every vCPU) ran for other
    /// vCPUs' shootdowns.
    pub remote_invlpg: u64,
    pub remote_full_flushes: u64,
    /// CR3 reloads on leaving lazy TLB mode.
    pub lazy_tlb_reloads: u64,
    /// First accesses to freshly made translations, as the benchmark
    /// declares them (TLB fills).
    pub touches: u64,
}

/// Counters divided by `ops * reps`, as the guest computed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerOp {
    pub flushes: f64,
    pub privileged: f64,
    pub invalidations: f64,
    pub ipis: f64,
}

/// One `HB {"event":"result",...}` line: one benchmark figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub schema: u64,
    pub suite: String,
    pub name: String,
    pub backend: String,
    pub batch: u64,
    pub vcpus: u64,
    pub ops: u64,
    pub reps: u64,
    /// `instructions` (icount: exact counts) or `cycles` (TSC time).
    pub unit: String,
    /// `all_vcpus` (icount counts every vCPU's instructions) or `elapsed`.
    pub scope: String,
    /// The figure: TSC ticks per operation, in `unit`.
    pub per_op: Stat,
    /// Only for `cycles`, when the TSC frequency is known.
    #[serde(default)]
    pub ns_per_op: Option<Stat>,
    #[serde(default)]
    pub counters: Option<Counters>,
    #[serde(default)]
    pub events_per_op: Option<PerOp>,
    #[serde(default)]
    pub checksum: Option<String>,
    /// The page size one operation works on, in bytes (4096 or 2 MiB; 0:
    /// not a page operation). Absent from records older than the 2 MiB
    /// figures, which were all 4 KiB where they were page operations.
    #[serde(default)]
    pub page_bytes: Option<u64>,
}

impl Figure {
    /// `ops * reps`: what the counters are totals over. [`Figure::check`]
    /// refuses a record whose product overflows, so this never saturates
    /// on a parsed figure; it saturates rather than wraps on a built one.
    pub fn measured_ops(&self) -> u64 {
        self.ops.saturating_mul(self.reps)
    }

    /// A counter divided by the measured operations. The pick returns f64
    /// so that sums of counters near u64::MAX cannot overflow.
    pub fn per(&self, pick: impl Fn(&Counters) -> f64) -> Option<f64> {
        self.counters
            .as_ref()
            .map(|c| pick(c) / self.measured_ops() as f64)
    }

    /// Privileged operations per operation: the guest's figure when it sent
    /// one, else the sum the kernel uses (`queue::Counters::privileged`).
    pub fn privileged_per_op(&self) -> Option<f64> {
        self.events_per_op.map(|p| p.privileged).or_else(|| {
            self.per(|c| {
                c.pte_writes as f64
                    + c.invlpg as f64
                    + c.full_flushes as f64
                    + c.cr_writes as f64
                    + c.ipis as f64
            })
        })
    }

    pub fn flushes_per_op(&self) -> Option<f64> {
        self.events_per_op
            .map(|p| p.flushes)
            .or_else(|| self.per(|c| c.flushes as f64))
    }

    pub fn invalidations_per_op(&self) -> Option<f64> {
        self.events_per_op
            .map(|p| p.invalidations)
            .or_else(|| self.per(|c| c.invlpg as f64 + c.full_flushes as f64))
    }

    pub fn ipis_per_op(&self) -> Option<f64> {
        self.events_per_op
            .map(|p| p.ipis)
            .or_else(|| self.per(|c| c.ipis as f64))
    }

    fn check(&self) -> Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!(
                "schema {} (this hbreport reads schema {SCHEMA})",
                self.schema
            ));
        }
        if self.ops == 0 || self.reps == 0 {
            return Err(format!(
                "ops={} reps={}: a figure needs at least one of each",
                self.ops, self.reps
            ));
        }
        if self.ops.checked_mul(self.reps).is_none() {
            return Err(format!(
                "ops={} reps={}: ops × reps overflows a 64-bit count",
                self.ops, self.reps
            ));
        }
        if self.batch == 0 || self.vcpus == 0 {
            return Err(format!(
                "batch={} vcpus={}: both must be at least 1",
                self.batch, self.vcpus
            ));
        }
        if self.batch > MAX_BATCH || self.vcpus > MAX_VCPUS {
            return Err(format!(
                "batch={} vcpus={}: at most {MAX_BATCH} and {MAX_VCPUS}",
                self.batch, self.vcpus
            ));
        }
        if let Some(b) = self.page_bytes {
            if b != 0 && (!b.is_power_of_two() || b > MAX_PAGE_BYTES) {
                return Err(format!(
                    "page_bytes={b}: a page size is a power of two of at most 1 GiB (or 0)"
                ));
            }
        }
        if self.unit != "instructions" && self.unit != "cycles" {
            return Err(format!(
                "unit {:?}: expected \"instructions\" or \"cycles\"",
                self.unit
            ));
        }
        let ns = self.ns_per_op.iter();
        let extremes = [
            ("per_op.min", self.per_op.min),
            ("per_op.max", self.per_op.max),
        ];
        let events = self.events_per_op.iter().flat_map(|e| {
            [
                ("events_per_op.flushes", e.flushes),
                ("events_per_op.privileged", e.privileged),
                ("events_per_op.invalidations", e.invalidations),
                ("events_per_op.ipis", e.ipis),
            ]
        });
        for (field, v) in [
            ("per_op.median", self.per_op.median),
            ("per_op.p99", self.per_op.p99),
        ]
        .into_iter()
        .chain(ns.flat_map(|n| [("ns_per_op.median", n.median), ("ns_per_op.p99", n.p99)]))
        .chain(extremes.into_iter().filter_map(|(f, v)| v.map(|v| (f, v))))
        .chain(events)
        {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{field} is {v}, not a count"));
            }
        }
        Ok(())
    }
}

/// `HB {"event":"env",...}`: where the figures were measured. Every field is
/// optional so that an older or partial guest still gets a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Env {
    pub schema: Option<u64>,
    pub hypervisor: Option<String>,
    pub accel_hint: Option<String>,
    pub cpu_model: Option<String>,
    pub vcpus: Option<u64>,
    pub tsc_hz: Option<u64>,
    pub tsc_source: Option<String>,
    /// The TSC's unit: `instructions` under icount, else `cycles`.
    pub unit: Option<String>,
    pub tsc_resolution: Option<u64>,
    pub pv_features: Vec<String>,
    pub git_rev: Option<String>,
    pub ring_capacity: Option<u64>,
    pub invlpg_ceiling: Option<u64>,
    pub quick: Option<bool>,
}

/// `HB {"event":"progress",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub suite: String,
    pub state: String,
    #[serde(default)]
    pub seconds: Option<f64>,
}

/// What a record is, for the events this tool uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Env(Box<Env>),
    Result(Box<Figure>),
    Progress(Progress),
    Exit {
        status: i64,
    },
    /// `boot`, `test` and any other event: kept, not interpreted.
    Other,
}

/// One `HB` line that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the log.
    pub line: usize,
    pub event: String,
    /// The object exactly as the guest wrote it.
    pub value: Value,
    pub kind: Kind,
}

/// One `HB` line that did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
    /// The line as it was, cut to a readable length.
    pub text: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: skipped malformed HB record: {}",
            self.line, self.reason
        )
    }
}

/// A parsed log.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
    /// Lines in the log, `HB` or not.
    pub lines: usize,
    /// The guest's own error lines (`[cpuN] ERROR ...`, `!!! cpuN
    /// panicked: ...`), the first few, as printed: they say why a run failed.
    pub guest_errors: Vec<String>,
}

/// Whether a prose line is one of the guest's error reports: the kernel's
/// log backend prints `[cpuN] ERROR message`, its panic handler `!!! ...`.
fn is_guest_error(line: &str) -> bool {
    if line.starts_with("!!! ") {
        return true;
    }
    let Some(rest) = line.strip_prefix("[cpu") else {
        return false;
    };
    let Some((cpu, msg)) = rest.split_once("] ") else {
        return false;
    };
    !cpu.is_empty() && cpu.bytes().all(|b| b.is_ascii_digit()) && msg.starts_with("ERROR")
}

/// How many characters of a bad line a warning keeps.
const SKIPPED_TEXT_MAX: usize = 160;

/// Parses a whole serial log. See the module doc for what `strict` changes.
pub fn parse(text: &str, strict: bool) -> Result<Log, Error> {
    let mut log = Log::default();
    for (i, raw) in text.lines().enumerate() {
        log.lines += 1;
        let line = i + 1;
        // QEMU's file chardev keeps the guest's \r\n.
        let raw = raw.trim_end_matches('\r');
        let Some(json) = raw.strip_prefix(PREFIX) else {
            if log.guest_errors.len() < GUEST_ERRORS_MAX && is_guest_error(raw) {
                log.guest_errors
                    .push(raw.chars().take(SKIPPED_TEXT_MAX).collect());
            }
            continue;
        };
        match parse_record(line, json) {
            Ok(rec) => log.records.push(rec),
            Err(reason) if strict => return Err(Error::Malformed { line, reason }),
            Err(reason) => {
                let text: String = raw.chars().take(SKIPPED_TEXT_MAX).collect();
                log.skipped.push(Skipped { line, reason, text });
            }
        }
    }
    if log.figures().next().is_none() {
        return Err(Error::NoResults {
            hb_lines: log.records.len() + log.skipped.len(),
            first_skipped: log.skipped.first().map(|k| k.to_string()),
            guest_errors: log.guest_errors,
        });
    }
    Ok(log)
}

fn parse_record(line: usize, json: &str) -> Result<Record, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let event = match value.as_object().map(|o| o.get("event")) {
        None => return Err("not a JSON object".into()),
        Some(None) => return Err("no \"event\" field".into()),
        Some(Some(Value::String(s))) => s.clone(),
        Some(Some(other)) => return Err(format!("\"event\" is {other}, not a string")),
    };
    let typed = |what: &str| format!("{what} record: ");
    let kind = match event.as_str() {
        "result" => {
            // serde reads a JSON array as a struct's fields in order, so
            // `"counters":[1,2,3]` would pass as counters: refuse it.
            for key in ["per_op", "ns_per_op", "counters", "events_per_op"] {
                match value.get(key) {
                    None | Some(Value::Null) | Some(Value::Object(_)) => {}
                    Some(other) => {
                        return Err(
                            typed("result") + &format!("\"{key}\" is {other}, not an object")
                        )
                    }
                }
            }
            let fig: Figure = serde_json::from_value(value.clone())
                .map_err(|e| typed("result") + &e.to_string())?;
            fig.check().map_err(|e| typed("result") + &e)?;
            Kind::Result(Box::new(fig))
        }
        "env" => {
            let env: Env =
                serde_json::from_value(value.clone()).map_err(|e| typed("env") + &e.to_string())?;
            if let Some(s) = env.schema.filter(|s| *s != SCHEMA) {
                return Err(format!(
                    "env record: schema {s} (this hbreport reads schema {SCHEMA})"
                ));
            }
            Kind::Env(Box::new(env))
        }
        "progress" => Kind::Progress(
            serde_json::from_value(value.clone())
                .map_err(|e| typed("progress") + &e.to_string())?,
        ),
        "exit" => match value.get("status").and_then(Value::as_i64) {
            Some(status) => Kind::Exit { status },
            None => return Err("exit record: no integer \"status\"".into()),
        },
        _ => Kind::Other,
    };
    Ok(Record {
        line,
        event,
        value,
        kind,
    })
}

impl Log {
    /// Every `result` record, in log order.
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.records.iter().filter_map(|r| match &r.kind {
            Kind::Result(f) => Some(f.as_ref()),
            _ => None,
        })
    }

    /// The last `env` record.
    pub fn env(&self) -> Option<&Env> {
        self.records.iter().rev().find_map(|r| match &r.kind {
            Kind::Env(e) => Some(e.as_ref()),
            _ => None,
        })
    }

    /// The last `boot` record, as the guest wrote it.
    pub fn boot(&self) -> Option<&Value> {
        self.records
            .iter()
            .rev()
            .find(|r| r.event == "boot")
            .map(|r| &r.value)
    }

    /// The kernel command line the guest reports in its `boot` record.
    pub fn cmdline(&self) -> Option<&str> {
        self.boot()?.get("cmdline")?.as_str()
    }

    /// The value of `key=value` on the guest's command line.
    pub fn cmdline_key(&self, key: &str) -> Option<&str> {
        self.cmdline()?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The status of the last `exit` record.
    pub fn exit_status(&self) -> Option<i64> {
        self.records.iter().rev().find_map(|r| match r.kind {
            Kind::Exit { status } => Some(status),
            _ => None,
        })
    }

    /// The figures of one suite, in log order.
    pub fn suite<'a>(&'a self, suite: &'a str) -> impl Iterator<Item = &'a Figure> + 'a {
        self.figures().filter(move |f| f.suite == suite)
    }

    /// The figure matching every given field; a later line wins over an
    /// earlier one (a rerun of the same figure).
    pub fn find(&self, q: &Query<'_>) -> Option<&Figure> {
        self.figures().filter(|f| q.matches(f)).last()
    }

    /// The ring's capacity: from `env`, else the largest `mm` batch.
    pub fn ring_capacity(&self) -> Option<u64> {
        self.env()
            .and_then(|e| e.ring_capacity)
            .or_else(|| self.suite("mm").map(|f| f.batch).max())
    }

    /// The most vCPUs any figure ran on.
    pub fn max_vcpus(&self) -> Option<u64> {
        self.figures().map(|f| f.vcpus).max()
    }
}

/// Selects figures: `None` fields match anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub suite: Option<&'a str>,
    pub name: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub batch: Option<u64>,
    pub vcpus: Option<u64>,
}

impl Query<'_> {
    fn matches(&self, f: &Figure) -> bool {
        self.suite.is_none_or(|s| s == f.suite)
            && self.name.is_none_or(|n| n == f.name)
            && self.backend.is_none_or(|b| b == f.backend)
            && self.batch.is_none_or(|b| b == f.batch)
            && self.vcpus.is_none_or(|v| v == f.vcpus)
    }
}

/// Orders names the way the report lists them: known names first, in the
/// given order, then the rest alphabetically.
pub fn ordered<'a>(names: impl Iterator<Item = &'a str>, known: &[&str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for n in names {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v.sort_by_key(|n| {
        (
            known.iter().position(|k| k == n).unwrap_or(known.len()),
            n.to_string(),
        )
    });
    v
}

//! results.json: the machine-readable half of a results directory. It holds
//! every `HB` record of the log in order, exactly as the guest wrote it,
//! with the environment and what the host knew (accelerator, machine, date),
//! so later tools never need the serial log again.

use crate::log::Log;
use serde_json::{json, Value};

/// The layout version of results.json.
pub const RESULTS_SCHEMA: u64 = 1;

/// What the host side knows about the run.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub accel: Option<String>,
    pub machine: Option<String>,
    /// UTC, RFC 3339.
    pub date: String,
    pub log: String,
}

pub fn to_json(log: &Log, host: &Host) -> String {
    let records: Vec<Value> = log.records.iter().map(|r| r.value.clone()).collect();
    let skipped: Vec<Value> = log
        .skipped
        .iter()
        .map(|s| json!({ "line": s.line, "reason": s.reason, "text": s.text }))
        .collect();
    let env = log
        .records
        .iter()
        .rev()
        .find(|r| r.event == "env")
        .map(|r| r.value.clone())
        .unwrap_or(Value::Null);
    let doc = json!({
        "schema": RESULTS_SCHEMA,
        "tool": concat!("hbreport ", env!("CARGO_PKG_VERSION")),
        "host": {
            "accel": host.accel,
            "machine": host.machine,
            "date": host.date,
            "log": host.log,
        },
        "env": env,
        "exit_status": log.exit_status(),
        "log_lines": log.lines,
        "records": records,
        "skipped": skipped,
    });
    // Pretty: people diff these between runs.
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
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

//! Fuzz target: hbreport's log reader and everything built from it. The
//! input is one to four serial logs, separated by NUL bytes (several boots
//! of one run), as a guest or a corrupted file could write them. Each log is
//! parsed leniently; the ones with figures make a run, whose report,
//! results.json, CSV, dashboard JSON and plots are built in memory.
//!
//! Beyond "no panic, no hang", it checks what a user relies on: the
//! results.json built validates against the documented schema, compare can
//! read it back, and a run compared with itself finds no regression.
#![no_main]

use hbreport::host::Host;
use hbreport::summary::Summary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let host = Host::default();
    let boots: Vec<_> = text
        .split('\0')
        .take(4)
        .enumerate()
        .filter_map(|(i, log)| {
            hbreport::parse_boot(&format!("serial-{i}.log"), log, false, &host).ok()
        })
        .collect();
    if boots.is_empty() {
        return;
    }
    let summary = Summary::new(boots, host);
    let built = match hbreport::build(&summary, "2026-01-01T00:00:00Z") {
        Ok(b) => b,
        // A plot that cannot be drawn is an error the user sees, not a crash.
        Err(_) => return,
    };
    let doc: serde_json::Value =
        serde_json::from_str(&built.results_json).expect("results.json is JSON");
    let problems = hbreport::results::validate(&doc);
    assert!(
        problems.is_empty(),
        "results.json does not validate: {problems:?}"
    );
    let side = hbreport::compare::parse_side("run", &built.results_json)
        .expect("compare reads what report wrote");
    let c = hbreport::compare::compare(side.clone(), side, 0.02);
    assert!(
        c.failures(true).is_empty(),
        "a run regressed against itself"
    );
    assert!(built.report_md.starts_with("# hyperbatch benchmark report"));
});

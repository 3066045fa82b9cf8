//! `hbreport compare OLD NEW`: two results.json files (or the results
//! directories holding them), figure by figure. It answers "did this change
//! make anything slower", in the way each kind of figure allows:
//! - a counted figure (guest instructions per operation, exact) regresses
//!   when NEW exceeds OLD by more than a threshold, 2% by default: unrelated
//!   code moves counts by 1–2% through alignment and inlining, so a smaller
//!   threshold would cry wolf;
//! - a timed figure (cycles, median over boots) is judged against its
//!   spread across boots: it is slower or faster only when the two min–max
//!   ranges do not overlap, and it is not judged at all when either side has
//!   a single boot, since one boot has no spread to judge against;
//! - a figure present in only one of the two runs is listed, not dropped.
//!
//! Only counted regressions fail the comparison by default; timed ones do
//! with `--fail-on-timed` (shared machines move timed medians 1.2x–2.4x
//! between boots, so a gate on them would be a gate on the neighbours).

use crate::report::{ratio, thousands};
use crate::results::bench_name;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Issue 8's default: regressions above 2% of a counted figure fail.
pub const DEFAULT_THRESHOLD: f64 = 0.02;

/// One figure of one side.
#[derive(Debug, Clone, PartialEq)]
pub struct Fig {
    pub id: String,
    pub unit: String,
    pub counted: bool,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub boots: usize,
    pub identical: bool,
}

/// One run, as compare reads it.
#[derive(Debug, Clone)]
pub struct Side {
    /// What the user named (path as given).
    pub label: String,
    pub figures: Vec<Fig>,
    pub quick: Option<bool>,
    pub rev: Option<String>,
    pub mode: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly equal.
    Same,
    /// Counted: within the threshold. Timed: the ranges overlap.
    Within,
    Regressed,
    Improved,
    /// Timed with one boot on a side: no spread to judge against.
    NotJudged,
}

impl Verdict {
    /// The verdict in words; `counted` picks how "within" reads (a counted
    /// figure has no noise, only a threshold).
    pub fn label_for(self, counted: bool) -> &'static str {
        match (self, counted) {
            (Verdict::Within, true) => "within threshold",
            _ => self.label(),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Within => "within noise",
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "improved",
            Verdict::NotJudged => "not judged (one boot)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub old: Fig,
    pub new: Fig,
    /// new / old (∞ when old is 0 and new is not).
    pub ratio: f64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub old: Side,
    pub new: Side,
    pub threshold: f64,
    pub rows: Vec<Row>,
    pub only_old: Vec<Fig>,
    pub only_new: Vec<Fig>,
    /// Things that make the comparison weaker, one sentence each.
    pub warnings: Vec<String>,
}

/// Why a side could not be read.
pub fn load(path: &Path) -> Result<Side, String> {
    let file: PathBuf = if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse_side(&path.display().to_string(), &text).map_err(|e| format!("{}: {e}", file.display()))
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// Reads the figures of a results.json (schema 2).
pub fn parse_side(label: &str, text: &str) -> Result<Side, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    match doc.get("schema").and_then(Value::as_u64) {
        Some(crate::results::RESULTS_SCHEMA) => {}
        Some(1) => {
            return Err(
                "results.json schema 1 (one boot, no aggregated figures): remake the report \
                 with this hbreport (scripts/bench.sh --from-log SERIAL_LOG)"
                    .into(),
            )
        }
        Some(v) => {
            return Err(format!(
                "results.json schema {v}; this hbreport reads schema {}",
                crate::results::RESULTS_SCHEMA
            ))
        }
        None => return Err("no \"schema\": not an hbreport results.json".into()),
    }
    let figs = doc
        .get("figures")
        .and_then(Value::as_array)
        .ok_or("no \"figures\" array")?;
    let mut figures = Vec::new();
    for (i, f) in figs.iter().enumerate() {
        let bad = |what: &str| format!("figures[{i}]: {what}");
        let id = str_of(f, "id").ok_or_else(|| bad("no \"id\""))?;
        let unit = str_of(f, "unit").ok_or_else(|| bad("no \"unit\""))?;
        let kind = str_of(f, "kind").ok_or_else(|| bad("no \"kind\""))?;
        let n = |k: &str| {
            f.get(k)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(&format!("\"{k}\" is not a count")))
        };
        let boots = f
            .get("boots")
            .and_then(Value::as_array)
            .map(Vec::len)
            .ok_or_else(|| bad("no \"boots\" array"))?;
        figures.push(Fig {
            id,
            unit,
            counted: kind == "counted",
            median: n("median")?,
            min: n("min")?,
            max: n("max")?,
            boots,
            identical: f.get("identical").and_then(Value::as_bool).unwrap_or(true),
        });
    }
    let quick = doc.pointer("/run/quick").and_then(Value::as_bool);
    let rev = doc
        .pointer("/project/git_rev")
        .and_then(Value::as_str)
        .or_else(|| doc.pointer("/project/kernel_rev").and_then(Value::as_str))
        .map(|r| r.chars().take(12).collect());
    let modes: Vec<String> = doc
        .get("boots")
        .and_then(Value::as_array)
        .map(|bs| bs.iter().filter_map(|b| str_of(b, "mode")).collect())
        .unwrap_or_default();
    let mut uniq: Vec<String> = Vec::new();
    for m in modes {
        if !uniq.contains(&m) {
            uniq.push(m);
        }
    }
    Ok(Side {
        label: label.to_string(),
        figures,
        quick,
        rev,
        mode: uniq.join(" + "),
    })
}

fn judge(old: &Fig, new: &Fig, threshold: f64) -> (f64, Verdict) {
    let r = if old.median == new.median {
        1.0
    } else if old.median == 0.0 {
        f64::INFINITY
    } else {
        new.median / old.median
    };
    let v = if old.counted {
        if old.median == new.median {
            Verdict::Same
        } else if r > 1.0 + threshold {
            Verdict::Regressed
        } else if r < 1.0 - threshold {
            Verdict::Improved
        } else {
            Verdict::Within
        }
    } else if old.median == new.median && old.min == new.min && old.max == new.max {
        Verdict::Same
    } else if old.boots < 2 || new.boots < 2 {
        Verdict::NotJudged
    } else if new.min > old.max {
        Verdict::Regressed
    } else if new.max < old.min {
        Verdict::Improved
    } else {
        Verdict::Within
    };
    (r, v)
}

pub fn compare(old: Side, new: Side, threshold: f64) -> Comparison {
    let key = |f: &Fig| (f.id.clone(), f.unit.clone());
    let mut rows = Vec::new();
    let mut only_old = Vec::new();
    for o in &old.figures {
        match new.figures.iter().find(|n| key(n) == key(o)) {
            Some(n) => {
                let (ratio, verdict) = judge(o, n, threshold);
                rows.push(Row {
                    old: o.clone(),
                    new: n.clone(),
                    ratio,
                    verdict,
                });
            }
            None => only_old.push(o.clone()),
        }
    }
    let only_new: Vec<Fig> = new
        .figures
        .iter()
        .filter(|n| !old.figures.iter().any(|o| key(o) == key(n)))
        .cloned()
        .collect();
    let mut warnings = Vec::new();
    if let (Some(a), Some(b)) = (old.quick, new.quick) {
        if a != b {
            warnings.push(format!(
                "OLD is a {} run and NEW a {} one: they measure different page counts and repetitions, \
                 so their figures are not comparable",
                if a { "quick" } else { "full" },
                if b { "quick" } else { "full" }
            ));
        }
    }
    for (side, label) in [(&old, "OLD"), (&new, "NEW")] {
        let n = side
            .figures
            .iter()
            .filter(|f| f.counted && !f.identical)
            .count();
        if n > 0 {
            warnings.push(format!(
                "{label} has {n} counted figure(s) that differ between its counting boots: the guest is \
                 not deterministic there, so their comparison is weaker"
            ));
        }
    }
    Comparison {
        old,
        new,
        threshold,
        rows,
        only_old,
        only_new,
        warnings,
    }
}

impl Comparison {
    /// The rows that fail the comparison.
    pub fn failures(&self, fail_on_timed: bool) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regressed && (r.old.counted || fail_on_timed))
            .collect()
    }

    fn count(&self, counted: bool, v: Verdict) -> usize {
        self.rows
            .iter()
            .filter(|r| r.old.counted == counted && r.verdict == v)
            .count()
    }

    /// The printed comparison.
    pub fn render(&self, fail_on_timed: bool) -> String {
        let mut s = String::new();
        let side = |x: &Side| {
            format!(
                "{} (revision {}, {}{})",
                x.label,
                x.rev.as_deref().unwrap_or("unknown"),
                if x.mode.is_empty() {
                    "mode unknown"
                } else {
                    &x.mode
                },
                match x.quick {
                    Some(true) => ", quick",
                    Some(false) => ", full",
                    None => "",
                }
            )
        };
        let _ = writeln!(s, "OLD: {}", side(&self.old));
        let _ = writeln!(s, "NEW: {}", side(&self.new));
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let width = self
            .rows
            .iter()
            .map(|r| r.old.id.len())
            .chain(
                self.only_old
                    .iter()
                    .chain(&self.only_new)
                    .map(|f| f.id.len()),
            )
            .max()
            .unwrap_or(10)
            .max(10);
        let counted: Vec<&Row> = self.rows.iter().filter(|r| r.old.counted).collect();
        if !counted.is_empty() {
            let _ = writeln!(
                s,
                "\nCounted figures (guest instructions per operation, exact; a figure regresses above +{:.1}%):",
                self.threshold * 100.0
            );
            let _ = writeln!(
                s,
                "  {:<width$}  {:>12}  {:>12}  {:>8}  verdict",
                "figure", "old", "new", "new/old"
            );
            for r in counted {
                let _ = writeln!(
                    s,
                    "  {:<width$}  {:>12}  {:>12}  {:>8}  {}{}",
                    r.old.id,
                    thousands(r.old.median),
                    thousands(r.new.median),
                    ratio3(r.ratio),
                    r.verdict.label_for(true),
                    if r.verdict == Verdict::Regressed {
                        format!(" (+{:.1}%)", (r.ratio - 1.0) * 100.0)
                    } else {
                        String::new()
                    }
                );
            }
        }
        let timed: Vec<&Row> = self.rows.iter().filter(|r| !r.old.counted).collect();
        if !timed.is_empty() {
            let _ = writeln!(
                s,
                "\nTimed figures ({} per operation, median over boots [min–max]; judged against the spread \
                 across boots: slower or faster only when the ranges do not overlap):",
                timed[0].old.unit
            );
            let _ = writeln!(
                s,
                "  {:<width$}  {:>24}  {:>24}  {:>8}  verdict",
                "figure", "old", "new", "new/old"
            );
            let range = |f: &Fig| {
                format!(
                    "{} [{}–{}]",
                    thousands(f.median),
                    thousands(f.min),
                    thousands(f.max)
                )
            };
            for r in timed {
                let _ = writeln!(
                    s,
                    "  {:<width$}  {:>24}  {:>24}  {:>8}  {}",
                    r.old.id,
                    range(&r.old),
                    range(&r.new),
                    ratio3(r.ratio),
                    r.verdict.label()
                );
            }
        }
        for (list, what) in [(&self.only_old, "OLD"), (&self.only_new, "NEW")] {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\nOnly in {what} ({}):", list.len());
            for f in list {
                let _ = writeln!(s, "  {:<width$}  {} {}", f.id, thousands(f.median), f.unit);
            }
        }
        let _ = writeln!(s);
        let failures = self.failures(fail_on_timed);
        let _ = writeln!(
            s,
            "Counted: {} same, {} within {:.1}%, {} improved, {} regressed. Timed: {} same, {} within noise, \
             {} faster, {} slower, {} not judged. Only in OLD: {}, only in NEW: {}.",
            self.count(true, Verdict::Same),
            self.count(true, Verdict::Within),
            self.threshold * 100.0,
            self.count(true, Verdict::Improved),
            self.count(true, Verdict::Regressed),
            self.count(false, Verdict::Same),
            self.count(false, Verdict::Within),
            self.count(false, Verdict::Improved),
            self.count(false, Verdict::Regressed),
            self.count(false, Verdict::NotJudged),
            self.only_old.len(),
            self.only_new.len()
        );
        if failures.is_empty() {
            let changed = self.rows.iter().any(|r| r.verdict != Verdict::Same)
                || !self.only_old.is_empty()
                || !self.only_new.is_empty();
            let _ = writeln!(
                s,
                "{}",
                if changed {
                    "No regression beyond the thresholds."
                } else {
                    "No change: every figure is the same."
                }
            );
        } else {
            let _ = writeln!(s, "FAILED: {} figure(s) regressed:", failures.len());
            for r in failures {
                let _ = writeln!(
                    s,
                    "  {} ({}): {} → {} ({})",
                    r.old.id,
                    r.old.unit,
                    thousands(r.old.median),
                    thousands(r.new.median),
                    ratio(r.ratio)
                );
            }
        }
        s
    }

    /// NEW's figures as github-action-benchmark `customSmallerIsBetter`
    /// input, with OLD's value and the verdict in `extra`.
    pub fn bench_json(&self) -> String {
        let rows: Vec<Value> = self
            .new
            .figures
            .iter()
            .map(|f| {
                let mut v = json!({
                    "name": bench_name(&f.id, &f.unit),
                    "unit": format!("{}/op", f.unit),
                    "value": f.median,
                });
                if f.boots > 1 {
                    v["range"] = json!(format!("± {}", (f.max - f.min) / 2.0));
                }
                let row = self
                    .rows
                    .iter()
                    .find(|r| r.new.id == f.id && r.new.unit == f.unit);
                v["extra"] = json!(match row {
                    Some(r) => format!(
                        "old {} new/old {} ({})",
                        r.old.median,
                        ratio3(r.ratio),
                        r.verdict.label_for(r.old.counted)
                    ),
                    None => "not in OLD".to_string(),
                });
                v
            })
            .collect();
        let mut out = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into());
        out.push('\n');
        out
    }
}

/// A ratio close to 1, with enough decimals to show 2%.
fn ratio3(r: f64) -> String {
    if !r.is_finite() {
        "∞".into()
    } else {
        format!("{r:.3}x")
    }
}

/// `--threshold`: a percentage, `2` or `2%`.
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| format!("--threshold must be a percentage such as 2 or 0.5, not '{s}'"))?;
    if !v.is_finite() || !(0.0..=1000.0).contains(&v) {
        return Err(format!(
            "--threshold must be between 0 and 1000 percent, not '{s}'"
        ));
    }
    Ok(v / 100.0)
}

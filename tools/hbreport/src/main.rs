//! The `hbreport` command: the last step of scripts/bench.sh, and the tool
//! that compares two of its results directories. The work is in lib.rs;
//! this file parses the command line and maps outcomes to exit statuses.

use hbreport::compare::{self, DEFAULT_THRESHOLD};
use hbreport::host::{self, Settings};
use hbreport::{run, Options};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: hbreport [report] LOG... --out DIR [--host FILE] [--strict] [--check]
       hbreport compare OLD NEW [--threshold PCT] [--fail-on-timed] [--force]
                                [--bench-json FILE]
       hbreport validate RESULTS
       hbreport host --out FILE [--vmm qemu|cloud-hypervisor] [--vmm-binary PATH]
                     [--machine M] [--smp N] [--mem SIZE] [--accel tcg|kvm]
                     [--tcg-thread single|multi] [--date RFC3339] [--repo DIR]

report (the default): reads the serial logs of one run's boots (counting boots
under QEMU icount, timed boots; any order) and writes DIR/report.md,
results.json, results.csv, benchmark.json and SVG plots.
  --out DIR        the results directory (created if missing)
  --host FILE      host.json as `hbreport host` wrote it during the run (the
                   host, VMM and accelerator); without it they are unknown
  --strict         a malformed HB line is an error (default: skipped, with a
                   warning naming its line, in report.md and on stderr)
  --check          also fail unless every boot printed every suite it ran,
                   each workload's checksums match, every guest exited 0 and
                   every counted figure is the same in every counting boot
                   (the report is written either way)
  exit status: 0 written (and checked), 1 not written or a check failed,
  2 bad usage

compare: OLD and NEW are results directories or results.json files. Prints
every figure's old and new value and their ratio. A counted figure (guest
instructions) regresses when it grows by more than the threshold; a timed
figure (cycles) when its range across boots lies wholly above OLD's.
  --threshold PCT  counted figures: the regression threshold (default 2%)
  --fail-on-timed  also fail on timed regressions (default: report only:
                   timed figures move between boots on shared machines)
  --force          compare a quick run with a full one anyway
  --bench-json F   also write NEW's figures as github-action-benchmark
                   customSmallerIsBetter JSON to F
  exit status: 0 no regression, 1 a figure regressed, 2 bad usage or a run
  that cannot be read or compared

validate: checks a results.json (or the results directory holding it)
against the documented schema (docs/results-schema.md): exit 0 valid, 1 not,
2 unreadable.

host: writes host.json, the facts of the machine this runs on (CPU, kernel,
VMM version, KVM module parameters, git revision) with the run's settings.";

fn value<'a>(it: &mut std::slice::Iter<'a, String>, name: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(format!("{name} needs a value"))
}

fn parse_report(args: &[String]) -> Result<Options, String> {
    let mut logs = Vec::new();
    let mut out = None;
    let mut host = None;
    let mut strict = false;
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(value(&mut it, "--out")?)),
            "--host" => host = Some(PathBuf::from(value(&mut it, "--host")?)),
            "--strict" => strict = true,
            "--check" => check = true,
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            s => {
                let p = PathBuf::from(s);
                if logs.contains(&p) {
                    return Err(format!("the log '{s}' is given twice"));
                }
                logs.push(p);
            }
        }
    }
    if logs.is_empty() {
        return Err("no LOG given".into());
    }
    Ok(Options {
        logs,
        out: out.ok_or("no --out DIR given")?,
        host,
        strict,
        check,
    })
}

#[derive(Debug)]
struct CompareArgs {
    old: PathBuf,
    new: PathBuf,
    threshold: f64,
    fail_on_timed: bool,
    force: bool,
    bench_json: Option<PathBuf>,
}

fn parse_compare(args: &[String]) -> Result<CompareArgs, String> {
    let mut paths = Vec::new();
    let mut threshold = DEFAULT_THRESHOLD;
    let mut fail_on_timed = false;
    let mut force = false;
    let mut bench_json = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threshold" => threshold = compare::parse_threshold(value(&mut it, "--threshold")?)?,
            "--fail-on-timed" => fail_on_timed = true,
            "--force" => force = true,
            "--bench-json" => bench_json = Some(PathBuf::from(value(&mut it, "--bench-json")?)),
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            s => paths.push(PathBuf::from(s)),
        }
    }
    match paths.len() {
        2 => Ok(CompareArgs {
            new: paths.pop().unwrap_or_default(),
            old: paths.pop().unwrap_or_default(),
            threshold,
            fail_on_timed,
            force,
            bench_json,
        }),
        n => Err(format!("compare needs OLD and NEW, got {n} path(s)")),
    }
}

fn parse_host(args: &[String]) -> Result<(PathBuf, Settings), String> {
    let mut out = None;
    let mut s = Settings::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.as_str();
        let mut v = || value(&mut it, a).map(str::to_string);
        match a {
            "--out" => out = Some(PathBuf::from(v()?)),
            "--vmm" => {
                let x = v()?;
                if x != "qemu" && x != "cloud-hypervisor" {
                    return Err(format!("--vmm must be qemu or cloud-hypervisor, not '{x}'"));
                }
                s.vmm = Some(x);
            }
            "--vmm-binary" => s.vmm_binary = Some(v()?),
            "--machine" => s.machine = Some(v()?),
            "--smp" => {
                let x = v()?;
                s.smp = Some(
                    x.parse()
                        .map_err(|_| format!("--smp must be a number, not '{x}'"))?,
                );
            }
            "--mem" => s.mem = Some(v()?),
            "--accel" => s.accel = Some(v()?),
            "--tcg-thread" => s.tcg_thread = Some(v()?),
            "--date" => s.date = Some(v()?),
            "--repo" => s.repo = Some(v()?),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok((out.ok_or("no --out FILE given")?, s))
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("hbreport: {e}\n\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match args.first().map(String::as_str) {
        Some("compare") => main_compare(&args[1..]),
        Some("host") => main_host(&args[1..]),
        Some("validate") => main_validate(&args[1..]),
        Some("report") => main_report(&args[1..]),
        _ => main_report(&args),
    }
}

fn main_report(args: &[String]) -> ExitCode {
    let opts = match parse_report(args) {
        Ok(o) => o,
        Err(e) => return usage_error(&e),
    };
    match run(&opts) {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("hbreport: warning: {w}");
            }
            println!("{}", out.report_md.display());
            println!("{}", out.results_json.display());
            println!("{}", out.results_csv.display());
            for p in &out.plots {
                println!("{}", p.display());
            }
            if out.check_failures.is_empty() {
                return ExitCode::SUCCESS;
            }
            for f in &out.check_failures {
                eprintln!("hbreport: check failed: {f}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("hbreport: {e}");
            ExitCode::from(1)
        }
    }
}

fn main_compare(args: &[String]) -> ExitCode {
    let a = match parse_compare(args) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let (old, new) = match (compare::load(&a.old), compare::load(&a.new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("hbreport compare: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(x), Some(y)) = (old.quick, new.quick) {
        if x != y && !a.force {
            eprintln!(
                "hbreport compare: OLD is a {} run and NEW a {} one; they measure different page counts and \
                 repetitions, so no figure is comparable (--force compares them anyway)",
                if x { "quick" } else { "full" },
                if y { "quick" } else { "full" }
            );
            return ExitCode::from(2);
        }
    }
    let c = compare::compare(old, new, a.threshold);
    print!("{}", c.render(a.fail_on_timed));
    if let Some(path) = &a.bench_json {
        if let Err(e) = std::fs::write(path, c.bench_json()) {
            eprintln!("hbreport compare: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if c.failures(a.fail_on_timed).is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main_validate(args: &[String]) -> ExitCode {
    let [path] = args else {
        return usage_error("validate needs one results.json or results directory");
    };
    let mut file = PathBuf::from(path);
    if file.is_dir() {
        file = file.join("results.json");
    }
    let doc: serde_json::Value = match std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not valid JSON: {e}")))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("hbreport validate: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let problems = hbreport::results::validate(&doc);
    if problems.is_empty() {
        println!(
            "{}: valid results.json (schema {})",
            file.display(),
            hbreport::results::RESULTS_SCHEMA
        );
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("hbreport validate: {}: {p}", file.display());
    }
    ExitCode::from(1)
}

fn main_host(args: &[String]) -> ExitCode {
    let (out, settings) = match parse_host(args) {
        Ok(x) => x,
        Err(e) => return usage_error(&e),
    };
    let h = host::probe(&settings);
    match std::fs::write(&out, h.to_json()) {
        Ok(()) => {
            println!("{}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hbreport host: cannot write {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_compare, parse_host, parse_report};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn report_parses_every_option_and_several_logs() {
        let o = parse_report(&args(&[
            "a.log", "b.log", "--out", "d", "--host", "h.json", "--strict", "--check",
        ]))
        .unwrap();
        assert_eq!(o.logs.len(), 2);
        assert_eq!(o.out.to_str(), Some("d"));
        assert_eq!(o.host.as_deref().and_then(|p| p.to_str()), Some("h.json"));
        assert!(o.strict && o.check);
        assert!(!parse_report(&args(&["x.log", "--out", "d"])).unwrap().check);
    }

    #[test]
    fn report_names_what_is_wrong() {
        assert_eq!(
            parse_report(&args(&["--out", "d"])).unwrap_err(),
            "no LOG given"
        );
        assert_eq!(
            parse_report(&args(&["x.log"])).unwrap_err(),
            "no --out DIR given"
        );
        assert_eq!(
            parse_report(&args(&["x.log", "--out"])).unwrap_err(),
            "--out needs a value"
        );
        assert_eq!(
            parse_report(&args(&["x.log", "--frob"])).unwrap_err(),
            "unknown option '--frob'"
        );
        assert!(parse_report(&args(&["a.log", "a.log", "--out", "d"]))
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn compare_takes_two_paths_and_a_threshold() {
        let c = parse_compare(&args(&["old", "new", "--threshold", "5%"])).unwrap();
        assert_eq!(c.old.to_str(), Some("old"));
        assert_eq!(c.new.to_str(), Some("new"));
        assert!((c.threshold - 0.05).abs() < 1e-12);
        assert!(!c.fail_on_timed);
        assert!(parse_compare(&args(&["old"]))
            .unwrap_err()
            .contains("1 path"));
        assert!(parse_compare(&args(&["a", "b", "--threshold", "x"]))
            .unwrap_err()
            .contains("'x'"));
        assert!(parse_compare(&args(&["a", "b", "--threshold", "-1"]))
            .unwrap_err()
            .contains("between 0 and 1000"));
    }

    #[test]
    fn host_checks_its_options() {
        let (out, s) = parse_host(&args(&[
            "--out",
            "h.json",
            "--vmm",
            "qemu",
            "--smp",
            "4",
            "--machine",
            "q35",
        ]))
        .unwrap();
        assert_eq!(out.to_str(), Some("h.json"));
        assert_eq!(s.smp, Some(4));
        assert!(parse_host(&args(&["--out", "h", "--vmm", "xen"]))
            .unwrap_err()
            .contains("'xen'"));
        assert!(parse_host(&args(&["--out", "h", "--smp", "four"]))
            .unwrap_err()
            .contains("'four'"));
        assert_eq!(parse_host(&args(&[])).unwrap_err(), "no --out FILE given");
    }
}

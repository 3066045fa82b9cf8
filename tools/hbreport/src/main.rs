//! The `hbreport` command: the last step of scripts/bench.sh. It turns the
//! serial log of a `run=bench` boot into a results directory (see lib.rs).

use hbreport::{run, Options};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: hbreport LOG --out DIR [--accel ACCEL] [--machine M] [--strict] [--check]

Reads the serial log of a hyperbatch run=bench boot and writes DIR/results.json,
DIR/report.md and SVG plots.

  --out DIR        the results directory (created if missing)
  --accel ACCEL    the accelerator the host used (tcg, kvm), for the report
  --machine M      the machine or VMM (microvm, pc, q35, cloud-hypervisor)
  --strict         a malformed HB line is an error (default: skipped, with a
                   warning naming its line, in report.md and on stderr)
  --check          also fail unless every suite printed results, each workload's
                   checksums match across backends and the guest exited 0 (the
                   report is written either way)

Exit status: 0 written, 1 the report could not be made or --check failed,
2 bad usage.";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut log = None;
    let mut out = None;
    let mut accel = None;
    let mut machine = None;
    let mut strict = false;
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .filter(|v| !v.is_empty())
                .ok_or(format!("{name} needs a value"))
        };
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--accel" => accel = Some(value("--accel")?),
            "--machine" => machine = Some(value("--machine")?),
            "--strict" => strict = true,
            "--check" => check = true,
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            s if log.is_none() => log = Some(PathBuf::from(s)),
            s => return Err(format!("one LOG only; '{s}' is a second one")),
        }
    }
    Ok(Options {
        log: log.ok_or("no LOG given")?,
        out: out.ok_or("no --out DIR given")?,
        accel,
        machine,
        strict,
        check,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hbreport: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("hbreport: warning: {w}");
            }
            println!("{}", out.report_md.display());
            println!("{}", out.results_json.display());
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

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_every_option() {
        let o = parse_args(&args(&[
            "x.log",
            "--out",
            "d",
            "--accel",
            "tcg",
            "--machine",
            "q35",
            "--strict",
            "--check",
        ]))
        .unwrap();
        assert_eq!(o.log.to_str(), Some("x.log"));
        assert_eq!(o.out.to_str(), Some("d"));
        assert_eq!(o.accel.as_deref(), Some("tcg"));
        assert_eq!(o.machine.as_deref(), Some("q35"));
        assert!(o.strict);
        assert!(o.check);
        assert!(!parse_args(&args(&["x.log", "--out", "d"])).unwrap().check);
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            parse_args(&args(&["--out", "d"])).unwrap_err(),
            "no LOG given"
        );
        assert_eq!(
            parse_args(&args(&["x.log"])).unwrap_err(),
            "no --out DIR given"
        );
        assert_eq!(
            parse_args(&args(&["x.log", "--out"])).unwrap_err(),
            "--out needs a value"
        );
        assert_eq!(
            parse_args(&args(&["x.log", "--frob"])).unwrap_err(),
            "unknown option '--frob'"
        );
        assert!(parse_args(&args(&["a.log", "b.log", "--out", "d"]))
            .unwrap_err()
            .contains("'b.log'"));
    }
}

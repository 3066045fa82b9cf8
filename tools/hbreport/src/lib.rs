//! hbreport: the host end of `run=bench`. It reads the serial logs of the
//! benchmark boots of one run (counting boots under QEMU icount, timed
//! boots) and writes a results directory a person can read:
//! `report.md`, SVG plots, `results.json` (every figure over every boot,
//! the host, every `HB` record), `results.csv` and `benchmark.json`. It
//! also compares two results directories (`compare`), and records the host
//! a run is made on (`host`).
//!
//! The flow is one module per step: [`log`] parses one serial log,
//! [`host`] holds what the host knew, [`summary`] groups the figures of
//! every boot, [`targets`] checks them against the project's targets,
//! [`model`] is the cost model (checked on this run's exits, projected
//! onto the [`platforms`] with the published costs of [`sources`];
//! [`model_report`] writes its sections),
//! [`plots`] draws, [`report`] writes the
//! markdown and [`results`] the JSON and CSV; [`check`] holds what CI
//! requires of a run, [`compare`] judges two runs. [`build`] does the
//! report in memory and [`run`] writes it.

pub mod check;
pub mod compare;
pub mod host;
pub mod log;
pub mod model;
pub mod model_report;
pub mod pagesize;
pub mod platforms;
pub mod plots;
pub mod report;
pub mod results;
pub mod scale;
pub mod sources;
pub mod summary;
pub mod targets;
pub mod vcpus;
pub mod vmm;

use std::fmt;
use std::path::{Path, PathBuf};
use summary::{Boot, Summary};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// One serial log per boot, in the order they ran.
    pub logs: Vec<PathBuf>,
    pub out: PathBuf,
    /// host.json, as bench.sh wrote it.
    pub host: Option<PathBuf>,
    /// A malformed `HB` line is an error instead of a warning.
    pub strict: bool,
    /// Also run the CI checks of check.rs (the report is written anyway).
    pub check: bool,
}

/// What was written.
#[derive(Debug)]
pub struct Outputs {
    pub report_md: PathBuf,
    pub results_json: PathBuf,
    pub results_csv: PathBuf,
    pub benchmark_json: PathBuf,
    pub plots: Vec<PathBuf>,
    /// Lines skipped as malformed, already reported in report.md.
    pub warnings: Vec<String>,
    /// With `check`: what the run lacks (empty: it passed).
    pub check_failures: Vec<String>,
}

/// Why a report could not be made.
#[derive(Debug)]
pub enum Error {
    NoLogs,
    ReadLog { path: PathBuf, err: std::io::Error },
    Log { file: String, err: log::Error },
    Host { path: PathBuf, reason: String },
    CreateOut { path: PathBuf, err: std::io::Error },
    Write { path: PathBuf, err: std::io::Error },
    Plot(plots::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoLogs => write!(f, "no serial log given"),
            Error::ReadLog { path, err } => {
                write!(f, "cannot read the log {}: {err}", path.display())
            }
            Error::Log { file, err } => write!(f, "{file}: {err}"),
            Error::Host { path, reason } => {
                write!(f, "cannot use the host record {}: {reason}", path.display())
            }
            Error::CreateOut { path, err } => {
                write!(
                    f,
                    "cannot create the output directory {}: {err}",
                    path.display()
                )
            }
            Error::Write { path, err } => write!(f, "cannot write {}: {err}", path.display()),
            Error::Plot(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// A log's name in the results directory: its file name, never the path
/// it was read from (a report holds no machine paths).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "serial.log".into())
}

/// Parses one log's text as boot `file`.
pub fn parse_boot(file: &str, text: &str, strict: bool, host: &host::Host) -> Result<Boot, Error> {
    let log = log::parse(text, strict).map_err(|err| Error::Log {
        file: file.to_string(),
        err,
    })?;
    Ok(Boot {
        file: file.to_string(),
        log,
        accel: host.accel.clone(),
        tcg_thread: host.tcg_thread.clone(),
        launch: None,
    })
}

/// The VMM command line of the boot whose serial log is `path`: its
/// run-*.log in the same directory, when there is one that says.
fn launch_of(path: &Path) -> Option<vmm::Launch> {
    let name = vmm::run_log_name(&file_name(path))?;
    let run = path.with_file_name(&name);
    let bytes = std::fs::read(&run).ok()?;
    vmm::parse(&String::from_utf8_lossy(&bytes), &name)
}

/// Reads the logs and the host record.
pub fn load(opts: &Options) -> Result<Summary, Error> {
    if opts.logs.is_empty() {
        return Err(Error::NoLogs);
    }
    let host = match &opts.host {
        None => host::Host::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::Host {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            host::Host::from_json(&text).map_err(|reason| Error::Host {
                path: p.clone(),
                reason,
            })?
        }
    };
    let mut boots = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for path in &opts.logs {
        let bytes = std::fs::read(path).map_err(|err| Error::ReadLog {
            path: path.clone(),
            err,
        })?;
        // Serial logs can hold stray bytes (a reset mid-line); they must
        // not stop the report, and an HB line holding them is reported as
        // malformed.
        let text = String::from_utf8_lossy(&bytes);
        let mut name = file_name(path);
        if names.contains(&name) {
            name = format!("{name} (#{})", names.len() + 1);
        }
        names.push(name.clone());
        let mut boot = parse_boot(&name, &text, opts.strict, &host)?;
        boot.launch = launch_of(path);
        boots.push(boot);
    }
    Ok(Summary::new(boots, host))
}

/// A report, in memory.
#[derive(Debug, Clone)]
pub struct Built {
    pub report_md: String,
    pub results_json: String,
    pub results_csv: String,
    pub benchmark_json: String,
    pub plots: Vec<plots::Plot>,
    pub warnings: Vec<String>,
    pub check_failures: Vec<String>,
}

/// Everything a results directory holds, computed before anything is
/// written, so that a failure leaves no half-written directory.
pub fn build(s: &Summary, created: &str) -> Result<Built, Error> {
    let model = model::build(s);
    let mut plots = plots::draw_all(s).map_err(Error::Plot)?;
    plots.extend(model::plot(s, &model).map_err(Error::Plot)?);
    let targets = targets::evaluate(s);
    let check_failures = check::check_all(s);
    let warnings: Vec<String> = s
        .boots
        .iter()
        .flat_map(|b| {
            b.log
                .skipped
                .iter()
                .map(move |k| format!("{}: {k}", b.file))
        })
        .collect();
    Ok(Built {
        report_md: report::render(s, &targets, &model, &plots),
        results_json: results::to_json(s, &check_failures, &model, created),
        results_csv: results::to_csv(s),
        benchmark_json: results::to_benchmark_json(s),
        plots,
        warnings,
        check_failures,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|err| Error::Write {
        path: path.to_path_buf(),
        err,
    })
}

/// Reads the logs, writes the results directory `opts.out` (created if
/// missing).
pub fn run(opts: &Options) -> Result<Outputs, Error> {
    let s = load(opts)?;
    let built = build(&s, &results::utc_now())?;
    std::fs::create_dir_all(&opts.out).map_err(|err| Error::CreateOut {
        path: opts.out.clone(),
        err,
    })?;
    let mut plots = Vec::new();
    for p in &built.plots {
        let path = opts.out.join(&p.file);
        write_file(&path, &p.svg)?;
        plots.push(path);
    }
    let results_json = opts.out.join("results.json");
    let results_csv = opts.out.join("results.csv");
    let benchmark_json = opts.out.join("benchmark.json");
    let report_md = opts.out.join("report.md");
    write_file(&results_json, &built.results_json)?;
    write_file(&results_csv, &built.results_csv)?;
    write_file(&benchmark_json, &built.benchmark_json)?;
    // Last: its presence means the directory is complete.
    write_file(&report_md, &built.report_md)?;
    Ok(Outputs {
        report_md,
        results_json,
        results_csv,
        benchmark_json,
        plots,
        warnings: built.warnings,
        check_failures: if opts.check {
            built.check_failures
        } else {
            Vec::new()
        },
    })
}

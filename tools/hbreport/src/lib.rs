//! hbreport: the host end of `run=bench`. It reads the serial log of one
//! benchmark boot and writes a results directory a person can read:
//! `results.json` (every `HB` record, in order, with the environment),
//! `report.md` (tables, the targets checked, and a projection onto
//! other hypervisors) and SVG plots.
//!
//! The flow is one module per step: [`log`] parses the serial log,
//! [`targets`] checks the figures against the targets, [`reference`] holds
//! the published exit costs and [`projection`] multiplies counted operations
//! by them, [`plots`] draws, [`report`] writes the markdown and
//! [`results`] the JSON; [`check`] holds what CI requires of a run. [`run`]
//! does all of it for the command line.

pub mod check;
pub mod log;
pub mod plots;
pub mod projection;
pub mod reference;
pub mod report;
pub mod results;
pub mod targets;

use std::fmt;
use std::path::{Path, PathBuf};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub log: PathBuf,
    pub out: PathBuf,
    /// The accelerator the host used (tcg, kvm), as bench.sh knows it.
    pub accel: Option<String>,
    /// The QEMU machine type or VMM (microvm, pc, q35, cloud-hypervisor).
    pub machine: Option<String>,
    /// A malformed `HB` line is an error instead of a warning.
    pub strict: bool,
    /// Also run the CI checks of check.rs (the report is written anyway).
    pub check: bool,
}

/// What was written.
#[derive(Debug)]
pub struct Outputs {
    pub results_json: PathBuf,
    pub report_md: PathBuf,
    pub plots: Vec<PathBuf>,
    /// Lines skipped as malformed, already reported in report.md.
    pub warnings: Vec<String>,
    /// With `check`: what the run lacks (empty: it passed).
    pub check_failures: Vec<String>,
}

/// Why a report could not be made.
#[derive(Debug)]
pub enum Error {
    ReadLog { path: PathBuf, err: std::io::Error },
    Log(log::Error),
    CreateOut { path: PathBuf, err: std::io::Error },
    Write { path: PathBuf, err: std::io::Error },
    Plot(plots::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ReadLog { path, err } => {
                write!(f, "cannot read the log {}: {err}", path.display())
            }
            Error::Log(e) => write!(f, "{e}"),
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

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|err| Error::Write {
        path: path.to_path_buf(),
        err,
    })
}

/// Reads the log, writes results.json, the plots and report.md into
/// `opts.out` (created if missing).
pub fn run(opts: &Options) -> Result<Outputs, Error> {
    let text = std::fs::read(&opts.log).map_err(|err| Error::ReadLog {
        path: opts.log.clone(),
        err,
    })?;
    // Serial logs can hold stray bytes (a reset mid-line); they must not
    // stop the report, and an HB line holding them is reported as malformed.
    let text = String::from_utf8_lossy(&text);
    let parsed = log::parse(&text, opts.strict).map_err(Error::Log)?;
    std::fs::create_dir_all(&opts.out).map_err(|err| Error::CreateOut {
        path: opts.out.clone(),
        err,
    })?;

    let host = results::Host {
        accel: opts.accel.clone(),
        machine: opts.machine.clone(),
        date: results::utc_now(),
        log: opts.log.display().to_string(),
    };
    let results_json = opts.out.join("results.json");
    write_file(&results_json, &results::to_json(&parsed, &host))?;

    let plots = plots::draw_all(&parsed, &opts.out).map_err(Error::Plot)?;
    let targets = targets::evaluate(&parsed);
    let projection = projection::project(&parsed);
    let report_md = opts.out.join("report.md");
    let plot_names: Vec<String> = plots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    write_file(
        &report_md,
        &report::render(&parsed, &host, &targets, &projection, &plot_names),
    )?;

    let warnings = parsed.skipped.iter().map(|s| s.to_string()).collect();
    let check_failures = if opts.check {
        check::check(&parsed)
    } else {
        Vec::new()
    };
    Ok(Outputs {
        results_json,
        report_md,
        plots,
        warnings,
        check_failures,
    })
}

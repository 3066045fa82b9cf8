//! The kernel command line: what to run and how, chosen at boot.
//!
//! [`crate::pvh`] copies the command line out of the boot structure; [`parse`]
//! turns it into a [`Config`] that the kernel consults for the rest of the
//! run. Tokens are separated by whitespace and are `key=value` or a bare
//! `key`; values cannot contain whitespace and there is no quoting. Nothing is
//! ignored: an unknown key, a malformed value, a repeated key or a key that
//! changes nothing for the chosen `run=` (`run=boot test=fault`) is an error
//! that names the key, so a typo never silently runs the wrong experiment.
//! The whole line is at most 2,047 bytes ([`crate::pvh::CMDLINE_MAX`]).
//!
//! Every key lives in one table, [`KEYS`]; adding a key is one entry there
//! plus its field in [`Config`].

use core::fmt;

use log::LevelFilter;

/// The seed used when the command line gives none, so that runs are
/// reproducible by default.
pub const DEFAULT_SEED: u64 = 0x5eed;

/// What the kernel does after booting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Run {
    /// Boot, report the platform, power off.
    Boot,
    /// Run the in-kernel tests.
    Test,
    /// Run the benchmarks (the default: the kernel is its own workload).
    #[default]
    Bench,
    /// Run the randomised stress workload.
    Stress,
    /// Probe the platform's features and costs.
    Probe,
}

impl Run {
    pub const ALL: [Run; 5] = [Run::Boot, Run::Test, Run::Bench, Run::Stress, Run::Probe];

    pub const fn as_str(self) -> &'static str {
        match self {
            Run::Boot => "boot",
            Run::Test => "test",
            Run::Bench => "bench",
            Run::Stress => "stress",
            Run::Probe => "probe",
        }
    }

    fn from_name(name: &str) -> Option<Run> {
        Run::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How privileged MMU and CPU-state updates are issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Each update is applied when it is made: one transition per operation.
    Immediate,
    /// Updates are queued per vCPU and applied at the flush.
    #[default]
    Batched,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Immediate, Backend::Batched];

    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Immediate => "immediate",
            Backend::Batched => "batched",
        }
    }

    fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deliberate fault in the boot path (`inject=`), for the tests that show
/// each one is reported clearly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    /// Re-parse a copy of `hvm_start_info` whose magic is wrong; the boot
    /// must fail with the parser's message.
    StartInfoMagic,
    /// Re-parse a copy of `hvm_start_info` with an empty memory map.
    StartInfoEmptyMap,
    /// Ignore the RSDP, as on a machine without ACPI.
    NoAcpi,
    /// Flip a byte of the MADT before ACPI discovery, so its checksum fails.
    MadtChecksum,
}

impl Inject {
    pub const ALL: [Inject; 4] = [
        Inject::StartInfoMagic,
        Inject::StartInfoEmptyMap,
        Inject::NoAcpi,
        Inject::MadtChecksum,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Inject::StartInfoMagic => "start_info_magic",
            Inject::StartInfoEmptyMap => "start_info_empty_map",
            Inject::NoAcpi => "no_acpi",
            Inject::MadtChecksum => "madt_checksum",
        }
    }

    fn from_name(name: &str) -> Option<Inject> {
        Inject::ALL.into_iter().find(|i| i.as_str() == name)
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed command line. Strings borrow from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config<'a> {
    /// `run=`: what to do after boot.
    pub run: Run,
    /// `pv=`: how updates are issued.
    pub pv: Backend,
    /// `test=`: run only the test with this name.
    pub test: Option<&'a str>,
    /// `seed=`: seed of every pseudo-random workload.
    pub seed: u64,
    /// `ops=`: operation count for benchmarks and stress runs.
    pub ops: Option<u64>,
    /// `quick` or `quick=0|1`: shorter runs, for CI.
    pub quick: bool,
    /// `suite=`: run only this group of tests or benchmarks.
    pub suite: Option<&'a str>,
    /// `log=`: the most verbose log level printed.
    pub log: LevelFilter,
    /// `fail_alloc_at=`: make the frame allocation after this many fail
    /// once, counted from the start of the job (after boot).
    pub fail_alloc_at: Option<u64>,
    /// `skip_cpu=`: leave the CPU with this APIC ID offline (fault injection).
    pub skip_cpu: Option<u32>,
    /// `no_shootdown`: flushes skip the TLB shootdown (fault injection, to
    /// show that the stale-TLB test catches its absence).
    pub no_shootdown: bool,
    /// `soak` or `soak=0|1`: a long stress run (millions of operations
    /// unless `ops=` says otherwise), with progress lines.
    pub soak: bool,
    /// `large` or `large=0|1`: in `run=stress`, each vCPU also maps,
    /// unmaps and protects private slots of 2 MiB pages.
    pub large: bool,
    /// `inject=`: a deliberate fault in the boot path.
    pub inject: Option<Inject>,
    /// `deaf_cpu=`: in `run=stress`, this vCPU (by index, 0 is the boot
    /// CPU) masks interrupts and stops answering IPIs, so the watchdog must
    /// name it (fault injection).
    pub deaf_cpu: Option<u32>,
    /// `icount` or `icount=0|1`: the host runs QEMU with `-icount shift=0`,
    /// so the TSC counts guest instructions, not cycles. Benchmarks then
    /// report instructions per operation (exact and repeatable), and the
    /// boot checks that the TSC really counts instructions.
    pub icount: bool,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            run: Run::default(),
            pv: Backend::default(),
            test: None,
            seed: DEFAULT_SEED,
            ops: None,
            quick: false,
            suite: None,
            log: LevelFilter::Info,
            fail_alloc_at: None,
            skip_cpu: None,
            no_shootdown: false,
            soak: false,
            large: false,
            inject: None,
            deaf_cpu: None,
            icount: false,
        }
    }
}

/// A command-line key: how it is written and how its value is stored.
pub struct Key {
    pub name: &'static str,
    /// What a value must look like, quoted in [`Error::BadValue`].
    pub expected: &'static str,
    /// The value a bare `key` stands for; `None` when a value is required.
    pub bare: Option<&'static str>,
    /// The jobs whose outcome the key can change; with any other `run=` it
    /// is refused ([`Error::NotForRun`]).
    pub runs: &'static [Run],
    /// The configuration with the value applied, or `None` when the value is
    /// malformed.
    set: for<'a> fn(Config<'a>, &'a str) -> Option<Config<'a>>,
}

const NUMBER: &str = "a number (decimal or 0x-hex) that fits in 64 bits";

/// Keys of the boot itself, which every job goes through.
const EVERY_RUN: &[Run] = &Run::ALL;
/// Keys of the mm and its users.
const MM_RUNS: &[Run] = &[Run::Test, Run::Bench, Run::Stress];

/// Every key the kernel understands.
pub const KEYS: &[Key] = &[
    Key {
        name: "run",
        expected: "boot, test, bench, stress or probe",
        bare: None,
        runs: EVERY_RUN,
        set: |c, v| {
            Some(Config {
                run: Run::from_name(v)?,
                ..c
            })
        },
    },
    Key {
        name: "pv",
        expected: "immediate or batched",
        bare: None,
        runs: MM_RUNS,
        set: |c, v| {
            Some(Config {
                pv: Backend::from_name(v)?,
                ..c
            })
        },
    },
    Key {
        name: "test",
        expected: "a test name",
        bare: None,
        runs: &[Run::Test],
        set: |c, v| Some(Config { test: Some(v), ..c }),
    },
    Key {
        name: "seed",
        expected: NUMBER,
        bare: None,
        runs: &[Run::Stress],
        set: |c, v| {
            Some(Config {
                seed: number(v)?,
                ..c
            })
        },
    },
    Key {
        name: "ops",
        expected: NUMBER,
        bare: None,
        runs: &[Run::Stress],
        set: |c, v| {
            Some(Config {
                ops: Some(number(v)?),
                ..c
            })
        },
    },
    Key {
        name: "quick",
        expected: "0 or 1 (or a bare quick)",
        bare: Some("1"),
        runs: &[Run::Bench],
        set: |c, v| match v {
            "0" => Some(Config { quick: false, ..c }),
            "1" => Some(Config { quick: true, ..c }),
            _ => None,
        },
    },
    Key {
        name: "suite",
        expected: "a suite name, or several separated by commas",
        bare: None,
        runs: &[Run::Bench],
        set: |c, v| {
            Some(Config {
                suite: Some(v),
                ..c
            })
        },
    },
    Key {
        name: "log",
        // No `off`: a failing run must still say why (errors always print).
        expected: "error, warn, info, debug or trace (errors always print)",
        bare: None,
        runs: EVERY_RUN,
        set: |c, v| {
            // Lower case only, like every other value (`run=BOOT` is refused
            // too); LevelFilter's own parser would take any case and `off`.
            let log = [
                LevelFilter::Error,
                LevelFilter::Warn,
                LevelFilter::Info,
                LevelFilter::Debug,
                LevelFilter::Trace,
            ]
            .into_iter()
            .find(|l| level_name(*l) == v)?;
            Some(Config { log, ..c })
        },
    },
    Key {
        name: "fail_alloc_at",
        expected: NUMBER,
        bare: None,
        runs: MM_RUNS,
        set: |c, v| {
            Some(Config {
                fail_alloc_at: Some(number(v)?),
                ..c
            })
        },
    },
    Key {
        name: "skip_cpu",
        expected: "a CPU number (decimal or 0x-hex) that fits in 32 bits",
        bare: None,
        runs: EVERY_RUN,
        set: |c, v| {
            Some(Config {
                skip_cpu: Some(u32::try_from(number(v)?).ok()?),
                ..c
            })
        },
    },
    Key {
        name: "no_shootdown",
        expected: "0 or 1 (or a bare no_shootdown)",
        bare: Some("1"),
        runs: MM_RUNS,
        set: |c, v| match v {
            "0" => Some(Config {
                no_shootdown: false,
                ..c
            }),
            "1" => Some(Config {
                no_shootdown: true,
                ..c
            }),
            _ => None,
        },
    },
    Key {
        name: "soak",
        expected: "0 or 1 (or a bare soak)",
        bare: Some("1"),
        runs: &[Run::Stress],
        set: |c, v| match v {
            "0" => Some(Config { soak: false, ..c }),
            "1" => Some(Config { soak: true, ..c }),
            _ => None,
        },
    },
    Key {
        name: "large",
        expected: "0 or 1 (or a bare large)",
        bare: Some("1"),
        runs: &[Run::Stress],
        set: |c, v| match v {
            "0" => Some(Config { large: false, ..c }),
            "1" => Some(Config { large: true, ..c }),
            _ => None,
        },
    },
    Key {
        name: "inject",
        expected: "start_info_magic, start_info_empty_map, no_acpi or madt_checksum",
        bare: None,
        runs: EVERY_RUN,
        set: |c, v| {
            Some(Config {
                inject: Some(Inject::from_name(v)?),
                ..c
            })
        },
    },
    Key {
        name: "deaf_cpu",
        expected: "a CPU index (decimal or 0x-hex) that fits in 32 bits",
        bare: None,
        runs: &[Run::Stress],
        set: |c, v| {
            Some(Config {
                deaf_cpu: Some(u32::try_from(number(v)?).ok()?),
                ..c
            })
        },
    },
    Key {
        name: "icount",
        expected: "0 or 1 (or a bare icount)",
        bare: Some("1"),
        runs: EVERY_RUN,
        set: |c, v| match v {
            "0" => Some(Config { icount: false, ..c }),
            "1" => Some(Config { icount: true, ..c }),
            _ => None,
        },
    },
];

// Duplicates are tracked in a u64 bitmask indexed by table position.
const _: () = assert!(KEYS.len() <= 64);

fn level_name(l: LevelFilter) -> &'static str {
    match l {
        LevelFilter::Off => "off",
        LevelFilter::Error => "error",
        LevelFilter::Warn => "warn",
        LevelFilter::Info => "info",
        LevelFilter::Debug => "debug",
        LevelFilter::Trace => "trace",
    }
}

/// A problem with the command line; each names the key or token at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<'a> {
    /// The key is not in [`KEYS`].
    UnknownKey(&'a str),
    /// The value does not have the form the key needs.
    BadValue {
        key: &'static str,
        value: &'a str,
        expected: &'static str,
    },
    /// The key needs a value but was given none (bare, or `key=`).
    MissingValue(&'static str),
    /// The key appears more than once.
    Duplicate(&'static str),
    /// The key changes nothing for this `run=` (`explicit`: whether `run=`
    /// was given, or is the default).
    NotForRun {
        key: &'static str,
        run: Run,
        explicit: bool,
        runs: &'static [Run],
    },
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownKey(key) => {
                write!(f, "unknown key \"{key}\" on the kernel command line (known keys:")?;
                for k in KEYS {
                    write!(f, " {}", k.name)?;
                }
                f.write_str(")")
            }
            Error::BadValue { key, value, expected } => write!(
                f,
                "bad value \"{value}\" for key \"{key}\" on the kernel command line: expected {expected}"
            ),
            Error::MissingValue(key) => {
                write!(f, "key \"{key}\" on the kernel command line needs a value ({key}=...)")
            }
            Error::Duplicate(key) => {
                write!(f, "key \"{key}\" appears more than once on the kernel command line")
            }
            Error::NotForRun {
                key,
                run,
                explicit,
                runs,
            } => {
                write!(f, "key \"{key}\" changes nothing with run={run}")?;
                if !explicit {
                    f.write_str(" (the default)")?;
                }
                f.write_str("; it applies to ")?;
                for (i, r) in runs.iter().enumerate() {
                    match i {
                        0 => {}
                        _ if i + 1 == runs.len() => f.write_str(" or ")?,
                        _ => f.write_str(", ")?,
                    }
                    write!(f, "run={r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses the whole command line; the first problem found is returned.
pub fn parse(s: &str) -> Result<Config<'_>, Error<'_>> {
    let mut config = Config::default();
    let mut seen = 0u64;
    for token in s.split_whitespace() {
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (token, None),
        };
        let (index, key) = KEYS
            .iter()
            .enumerate()
            .find(|(_, k)| k.name == name)
            .ok_or(Error::UnknownKey(name))?;
        if seen & (1 << index) != 0 {
            return Err(Error::Duplicate(key.name));
        }
        seen |= 1 << index;
        let value = match (value, key.bare) {
            (Some(v), _) if !v.is_empty() => v,
            (None, Some(implied)) => implied,
            _ => return Err(Error::MissingValue(key.name)),
        };
        config = (key.set)(config, value).ok_or(Error::BadValue {
            key: key.name,
            value,
            expected: key.expected,
        })?;
    }
    // After the loop: `run=` may come last.
    let explicit = seen & (1 << RUN_KEY) != 0;
    for (index, key) in KEYS.iter().enumerate() {
        if seen & (1 << index) != 0 && !key.runs.contains(&config.run) {
            return Err(Error::NotForRun {
                key: key.name,
                run: config.run,
                explicit,
                runs: key.runs,
            });
        }
    }
    Ok(config)
}

/// `run`'s index in [`KEYS`].
const RUN_KEY: usize = 0;
const _: () = assert!(matches!(KEYS[RUN_KEY].name.as_bytes(), b"run"));

/// `skip_cpu=` names a CPU that the boot could have started: listed (by
/// APIC ID, in the MADT's startable CPUs) and not the boot CPU. Checked once
/// the firmware tables are read, since the line alone cannot tell.
pub fn check_skip_cpu(
    skip: u32,
    boot_apic_id: u32,
    listed: &[u32],
) -> Result<(), SkipCpuError<'_>> {
    if skip == boot_apic_id {
        return Err(SkipCpuError::BootCpu(skip));
    }
    if !listed.contains(&skip) {
        return Err(SkipCpuError::NotListed { skip, listed });
    }
    Ok(())
}

/// Why `skip_cpu=` cannot apply on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipCpuError<'a> {
    /// It names the boot CPU, which is running this code.
    BootCpu(u32),
    /// No startable CPU has this APIC ID; `listed` are those that do exist.
    NotListed { skip: u32, listed: &'a [u32] },
}

impl fmt::Display for SkipCpuError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SkipCpuError::BootCpu(id) => write!(
                f,
                "skip_cpu={id} is the boot CPU's APIC ID; only another CPU can be left offline"
            ),
            SkipCpuError::NotListed { skip, listed } => {
                write!(f, "skip_cpu={skip}: no startable CPU has APIC ID {skip}")?;
                if listed.is_empty() {
                    return f.write_str(" (no MADT lists any CPU, so only the boot CPU runs)");
                }
                f.write_str(" (the MADT lists APIC IDs")?;
                for (i, id) in listed.iter().enumerate() {
                    write!(f, "{}{id}", if i == 0 { " " } else { ", " })?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A `u64` in decimal or `0x`-hex. Signs, underscores and empty digit
/// strings are rejected, as is anything that overflows.
fn number(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.chars().try_fold(0u64, |acc, c| {
        acc.checked_mul(radix)?
            .checked_add(u64::from(c.to_digit(radix as u32)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults() {
        for line in ["", "   ", "\t\n"] {
            let c = parse(line).unwrap();
            assert_eq!(c, Config::default());
        }
        let c = Config::default();
        assert_eq!(c.run, Run::Bench);
        assert_eq!(c.pv, Backend::Batched);
        assert_eq!(c.seed, DEFAULT_SEED);
        assert_eq!(c.log, LevelFilter::Info);
        assert!(!c.quick);
        assert_eq!(
            (c.test, c.suite, c.ops, c.fail_alloc_at, c.skip_cpu),
            (None, None, None, None, None)
        );
        assert!(!c.soak && !c.large && !c.no_shootdown);
        assert_eq!((c.inject, c.deaf_cpu), (None, None));
        assert!(!c.icount);
    }

    #[test]
    fn every_key_parses() {
        let line = "run=stress pv=immediate seed=0x1F ops=1000 log=debug fail_alloc_at=17 \
                    skip_cpu=1 no_shootdown soak large inject=madt_checksum deaf_cpu=3 icount";
        assert_eq!(
            parse(line).unwrap(),
            Config {
                run: Run::Stress,
                pv: Backend::Immediate,
                seed: 0x1f,
                ops: Some(1000),
                log: LevelFilter::Debug,
                fail_alloc_at: Some(17),
                skip_cpu: Some(1),
                no_shootdown: true,
                soak: true,
                large: true,
                inject: Some(Inject::MadtChecksum),
                deaf_cpu: Some(3),
                icount: true,
                ..Config::default()
            }
        );
        assert_eq!(
            parse("quick suite=mmu").unwrap(),
            Config {
                quick: true,
                suite: Some("mmu"),
                ..Config::default()
            }
        );
        let line = "run=test test=paging.map";
        let c = parse(line).unwrap();
        assert_eq!(
            c,
            Config {
                run: Run::Test,
                test: Some("paging.map"),
                ..Config::default()
            }
        );
        // Names borrow from the input.
        assert!(core::ptr::eq(
            c.test.unwrap().as_ptr(),
            line[line.find("paging").unwrap()..].as_ptr()
        ));
    }

    #[test]
    fn keys_that_change_nothing_are_refused() {
        let err = parse("run=boot test=fault").unwrap_err();
        assert_eq!(
            err,
            Error::NotForRun {
                key: "test",
                run: Run::Boot,
                explicit: true,
                runs: &[Run::Test]
            }
        );
        assert_eq!(
            err.to_string(),
            "key \"test\" changes nothing with run=boot; it applies to run=test"
        );
        // run= may come after the key; the default run is named as such.
        assert!(matches!(
            parse("deaf_cpu=1 run=boot"),
            Err(Error::NotForRun {
                key: "deaf_cpu",
                run: Run::Boot,
                ..
            })
        ));
        assert_eq!(
            parse("test=x").unwrap_err().to_string(),
            "key \"test\" changes nothing with run=bench (the default); it applies to run=test"
        );
        assert_eq!(
            parse("run=test suite=nosuch").unwrap_err().to_string(),
            "key \"suite\" changes nothing with run=test; it applies to run=bench"
        );
        assert_eq!(
            parse("run=probe pv=batched").unwrap_err().to_string(),
            "key \"pv\" changes nothing with run=probe; it applies to run=test, run=bench \
             or run=stress"
        );
        // Even a key at its default value: it still cannot mean anything.
        assert!(parse("run=boot soak=0").is_err());
        // Boot keys go with every job.
        for r in Run::ALL {
            let line = format!("run={r} log=warn skip_cpu=1 inject=no_acpi icount");
            assert_eq!(parse(&line).unwrap().run, r, "{line}");
        }
    }

    #[test]
    fn skip_cpu_must_name_another_listed_cpu() {
        assert_eq!(check_skip_cpu(1, 0, &[0, 1]), Ok(()));
        let err = check_skip_cpu(0, 0, &[0, 1]).unwrap_err();
        assert_eq!(err, SkipCpuError::BootCpu(0));
        assert_eq!(
            err.to_string(),
            "skip_cpu=0 is the boot CPU's APIC ID; only another CPU can be left offline"
        );
        assert_eq!(
            check_skip_cpu(7, 0, &[0, 1]).unwrap_err().to_string(),
            "skip_cpu=7: no startable CPU has APIC ID 7 (the MADT lists APIC IDs 0, 1)"
        );
        assert_eq!(
            check_skip_cpu(1, 0, &[]).unwrap_err().to_string(),
            "skip_cpu=1: no startable CPU has APIC ID 1 (no MADT lists any CPU, so only the \
             boot CPU runs)"
        );
        // A boot CPU that is not APIC ID 0 still may not be skipped.
        assert_eq!(check_skip_cpu(2, 2, &[0, 2]), Err(SkipCpuError::BootCpu(2)));
    }

    #[test]
    fn every_key_applies_somewhere_and_every_run_has_its_keys() {
        for k in KEYS {
            assert!(!k.runs.is_empty(), "{} applies to no run", k.name);
        }
        for r in Run::ALL {
            assert!(KEYS.iter().any(|k| k.name == "run" && k.runs.contains(&r)));
        }
    }

    #[test]
    fn enum_names_round_trip() {
        for r in Run::ALL {
            assert_eq!(parse(&format!("run={r}")).unwrap().run, r);
            assert!(KEYS[0].expected.contains(r.as_str()));
        }
        for b in Backend::ALL {
            assert_eq!(parse(&format!("pv={}", b.as_str())).unwrap().pv, b);
        }
        for i in Inject::ALL {
            assert_eq!(parse(&format!("inject={i}")).unwrap().inject, Some(i));
            let key = KEYS.iter().find(|k| k.name == "inject").unwrap();
            assert!(key.expected.contains(i.as_str()));
        }
        for (name, level) in [
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ] {
            assert_eq!(parse(&format!("log={name}")).unwrap().log, level);
        }
        // Lower case only, as for run=; and no `off`: errors always print.
        for bad in ["TRACE", "Info", "off", "OFF"] {
            let line = format!("log={bad}");
            let err = parse(&line).unwrap_err();
            assert!(
                matches!(err, Error::BadValue { key: "log", .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("errors always print"), "{err}");
        }
        assert!(parse("run=BOOT").is_err());
    }

    #[test]
    fn quick_forms() {
        assert!(parse("quick").unwrap().quick);
        assert!(parse("quick=1").unwrap().quick);
        assert!(!parse("quick=0").unwrap().quick);
        assert_eq!(
            parse("quick=yes"),
            Err(Error::BadValue {
                key: "quick",
                value: "yes",
                expected: "0 or 1 (or a bare quick)"
            })
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(number("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(number("0XaB"), Some(0xab));
        for bad in [
            "18446744073709551616",
            "0x10000000000000000",
            "0x",
            "+5",
            "-1",
            "1_000",
            "12a",
            "0b1",
            " 1",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
        assert_eq!(
            parse("skip_cpu=0xffffffff").unwrap().skip_cpu,
            Some(u32::MAX)
        );
        assert!(matches!(
            parse("skip_cpu=4294967296"),
            Err(Error::BadValue {
                key: "skip_cpu",
                value: "4294967296",
                ..
            })
        ));
        assert_eq!(
            parse("seed=99999999999999999999"),
            Err(Error::BadValue {
                key: "seed",
                value: "99999999999999999999",
                expected: NUMBER
            })
        );
    }

    #[test]
    fn unknown_key() {
        let err = parse("run=test foo=1").unwrap_err();
        assert_eq!(err, Error::UnknownKey("foo"));
        let text = err.to_string();
        assert!(
            text.starts_with("unknown key \"foo\" on the kernel command line"),
            "{text}"
        );
        assert!(text.contains("skip_cpu"), "{text}");
        assert_eq!(parse("console=ttyS0"), Err(Error::UnknownKey("console")));
        assert_eq!(parse("=1"), Err(Error::UnknownKey("")));
        // Keys are case-sensitive.
        assert_eq!(parse("RUN=test"), Err(Error::UnknownKey("RUN")));
    }

    #[test]
    fn bad_values() {
        let err = parse("run=tests").unwrap_err();
        assert_eq!(
            err,
            Error::BadValue {
                key: "run",
                value: "tests",
                expected: "boot, test, bench, stress or probe"
            }
        );
        assert_eq!(
            err.to_string(),
            "bad value \"tests\" for key \"run\" on the kernel command line: \
             expected boot, test, bench, stress or probe"
        );
        assert!(matches!(
            parse("pv=lazy"),
            Err(Error::BadValue {
                key: "pv",
                value: "lazy",
                ..
            })
        ));
        assert!(matches!(
            parse("log=loud"),
            Err(Error::BadValue {
                key: "log",
                value: "loud",
                ..
            })
        ));
        assert!(matches!(
            parse("ops=ten"),
            Err(Error::BadValue {
                key: "ops",
                value: "ten",
                ..
            })
        ));
        assert!(matches!(
            parse("fail_alloc_at=-1"),
            Err(Error::BadValue {
                key: "fail_alloc_at",
                value: "-1",
                ..
            })
        ));
        // Only the first '=' splits: the rest belongs to the value.
        assert!(matches!(
            parse("seed=1=2"),
            Err(Error::BadValue {
                key: "seed",
                value: "1=2",
                ..
            })
        ));
        assert_eq!(parse("run=test test=a=b").unwrap().test, Some("a=b"));
        let err = parse("inject=madt").unwrap_err();
        assert!(matches!(
            err,
            Error::BadValue {
                key: "inject",
                value: "madt",
                ..
            }
        ));
        assert!(err.to_string().contains("start_info_magic"), "{err}");
        assert!(matches!(
            parse("deaf_cpu=-1"),
            Err(Error::BadValue {
                key: "deaf_cpu",
                ..
            })
        ));
        assert!(matches!(
            parse("soak=2"),
            Err(Error::BadValue { key: "soak", .. })
        ));
    }

    #[test]
    fn missing_values() {
        for line in [
            "run",
            "run=",
            "seed",
            "test=",
            "quick=",
            "inject",
            "deaf_cpu=",
        ] {
            let key = line.trim_end_matches('=');
            let err = parse(line).unwrap_err();
            assert_eq!(
                err,
                Error::MissingValue(KEYS.iter().find(|k| k.name == key).unwrap().name)
            );
        }
        assert_eq!(
            Error::MissingValue("seed").to_string(),
            "key \"seed\" on the kernel command line needs a value (seed=...)"
        );
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            parse("seed=1 run=test seed=1"),
            Err(Error::Duplicate("seed"))
        );
        assert_eq!(parse("quick quick=0"), Err(Error::Duplicate("quick")));
        assert_eq!(
            Error::Duplicate("run").to_string(),
            "key \"run\" appears more than once on the kernel command line"
        );
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(parse("bogus run=nope"), Err(Error::UnknownKey("bogus")));
        assert!(matches!(
            parse("run=nope bogus"),
            Err(Error::BadValue { key: "run", .. })
        ));
    }

    #[test]
    fn key_table_is_consistent() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                KEYS[..i].iter().all(|o| o.name != k.name),
                "{} listed twice",
                k.name
            );
            assert!(!k.name.is_empty() && !k.name.contains(['=', ' ']));
            // A bare key's implied value must itself be valid.
            if let Some(v) = k.bare {
                assert!((k.set)(Config::default(), v).is_some(), "{}", k.name);
            }
        }
    }
}

//! How the VMM ran one boot, read from what the VMM script said
//! (`run-*.log` beside each `serial-*.log`): scripts/run-qemu.sh prints
//! QEMU's whole command line before it starts it, so the accelerator, TCG's
//! threading, icount and the vCPU count of every boot are on record there,
//! per boot. The guest cannot tell single- from multi-threaded TCG (its
//! records say only that the hypervisor is TCG), and host.json holds one
//! threading for all timed boots of a run, as bench.sh asked for it; the
//! command line is what QEMU was actually given.

/// What one boot's VMM command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// `tcg` or `kvm` (cloud-hypervisor: `kvm`).
    pub accel: Option<String>,
    /// `single` or `multi` (TCG only).
    pub tcg_thread: Option<String>,
    pub icount: bool,
    /// `-smp N` / `--cpus boot=N`.
    pub vcpus: Option<u64>,
    /// The log it was read from, for the report to cite.
    pub source: String,
}

/// The value after `flag` in a command line split on spaces.
fn after<'a>(words: &[&'a str], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1).copied())
}

/// Reads the last VMM command line of a run log (`source` names the log).
/// None when the log holds none (a hand-made or older directory).
pub fn parse(text: &str, source: &str) -> Option<Launch> {
    let line = text.lines().rev().find_map(|l| {
        let l = l.trim_end_matches('\r');
        let i = l
            .find("qemu-system-")
            .or_else(|| l.find("cloud-hypervisor "))?;
        Some(&l[i..])
    })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut launch = Launch {
        source: source.to_string(),
        ..Launch::default()
    };
    if line.starts_with("cloud-hypervisor") {
        launch.accel = Some("kvm".into());
        launch.vcpus = after(&words, "--cpus")
            .and_then(|v| v.split(',').find_map(|p| p.strip_prefix("boot=")))
            .and_then(|n| n.parse().ok());
        return Some(launch);
    }
    if let Some(a) = after(&words, "-accel") {
        let mut parts = a.split(',');
        launch.accel = parts.next().map(str::to_string);
        launch.tcg_thread = parts
            .find_map(|p| p.strip_prefix("thread="))
            .map(str::to_string);
    }
    launch.icount = words.contains(&"-icount");
    launch.vcpus = after(&words, "-smp")
        .and_then(|v| v.split(',').next())
        .and_then(|n| n.parse().ok());
    Some(launch)
}

/// The run log that belongs to a serial log's file name
/// (`serial-timed-1.log` → `run-timed-1.log`).
pub fn run_log_name(serial: &str) -> Option<String> {
    serial
        .contains("serial-")
        .then(|| serial.replacen("serial-", "run-", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qemu_and_cloud_hypervisor_command_lines() {
        // Recorded: the lines run-qemu.sh printed for a counting and a timed boot.
        let count = "run-qemu: qemu-system-x86_64 -machine microvm,x-option-roms=off -accel tcg,thread=single \
                     -cpu max -icount shift=0,sleep=off,align=off -smp 16 -m 512M -kernel k -append 'run=bench icount'\n\
                     run-qemu: guest exit status 0 (isa-debug-exit, tcg, 81.2 s)\n";
        let l = parse(count, "run-count-1.log").unwrap();
        assert_eq!(l.accel.as_deref(), Some("tcg"));
        assert_eq!(l.tcg_thread.as_deref(), Some("single"));
        assert!(l.icount);
        assert_eq!(l.vcpus, Some(16));
        let timed = "run-qemu: qemu-system-x86_64 -machine microvm -accel tcg,thread=multi -cpu max -smp 2 -m 512M";
        let l = parse(timed, "run-timed-1.log").unwrap();
        assert_eq!(l.tcg_thread.as_deref(), Some("multi"));
        assert!(!l.icount);
        assert_eq!(l.vcpus, Some(2));
        let ch = "run-ch: cloud-hypervisor --kernel k --cpus boot=4 --memory size=512M";
        let l = parse(ch, "run-timed-1.log").unwrap();
        assert_eq!(l.accel.as_deref(), Some("kvm"));
        assert_eq!(l.tcg_thread, None);
        assert_eq!(l.vcpus, Some(4));
        assert_eq!(parse("nothing here\n", "x"), None);
        assert_eq!(
            run_log_name("serial-timed-smp16-2.log").as_deref(),
            Some("run-timed-smp16-2.log")
        );
        assert_eq!(run_log_name("mine.log"), None);
    }
}

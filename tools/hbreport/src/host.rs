//! The host a run was made on: `host.json` in a results directory. bench.sh
//! writes it (`hbreport host`) right after the boots, on the machine that
//! ran them, with the settings it booted with; the report step reads it
//! back. Everything the figures depend on and the guest cannot see goes
//! here: the host CPU and kernel, the VMM and its version, the accelerator
//! and its mode, KVM's module parameters, and the project's revision.
//!
//! A report made from saved logs alone has no host.json; then every field
//! is unknown and the report says "not recorded" rather than describing
//! whatever machine the report happens to be made on.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The layout version of host.json.
pub const HOST_SCHEMA: u64 = 1;

/// KVM module parameters that change what a figure means: two-dimensional
/// paging (`ept` on Intel, `npt` on AMD; off means shadow paging), nested
/// virtualization, and APIC virtualization (`enable_apicv`, AMD `avic`),
/// which decides whether IPIs exit. Read from /sys/module/<module>/parameters.
pub const KVM_PARAMS: &[(&str, &[&str])] = &[
    (
        "kvm_intel",
        &["ept", "nested", "enable_apicv", "unrestricted_guest"],
    ),
    ("kvm_amd", &["npt", "nested", "avic"]),
    ("kvm", &["tdp_mmu"]),
];

/// host.json. Every field is optional: an older or hand-made file still
/// reads, and a missing fact is printed as unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Host {
    pub schema: Option<u64>,
    /// UTC, RFC 3339: when bench.sh started the run.
    pub date: Option<String>,
    /// The host CPU (`model name` of /proc/cpuinfo).
    pub cpu_model: Option<String>,
    pub host_cpus: Option<u64>,
    /// The host kernel: `Linux 6.1.0-18-amd64 x86_64`.
    pub kernel: Option<String>,
    /// `qemu` or `cloud-hypervisor`.
    pub vmm: Option<String>,
    /// The VMM's own `--version` line.
    pub vmm_version: Option<String>,
    pub machine: Option<String>,
    pub smp: Option<u64>,
    pub mem: Option<String>,
    /// The timed boots' accelerator (`tcg` or `kvm`); counting boots are
    /// always TCG.
    pub accel: Option<String>,
    /// The timed boots' TCG threading (`single` or `multi`), under TCG.
    pub tcg_thread: Option<String>,
    /// Per KVM module present on the host, its parameters that matter.
    pub kvm: BTreeMap<String, BTreeMap<String, String>>,
    /// The project's revision and whether the tree had uncommitted changes.
    pub git_rev: Option<String>,
    pub git_dirty: Option<bool>,
}

/// What bench.sh knows and passes on.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub vmm: Option<String>,
    pub vmm_binary: Option<String>,
    pub machine: Option<String>,
    pub smp: Option<u64>,
    pub mem: Option<String>,
    pub accel: Option<String>,
    pub tcg_thread: Option<String>,
    pub date: Option<String>,
    pub repo: Option<String>,
}

fn first_line(cmd: &str, args: &[&str], dir: Option<&str>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The host CPU's model name and the number of logical CPUs.
fn cpu() -> (Option<String>, Option<u64>) {
    let Some(info) = std::fs::read_to_string("/proc/cpuinfo").ok() else {
        return (None, None);
    };
    let model = info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    });
    let n = info
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count() as u64;
    (model, (n > 0).then_some(n))
}

fn kernel() -> Option<String> {
    let os = read_trimmed(Path::new("/proc/sys/kernel/ostype"));
    let rel = read_trimmed(Path::new("/proc/sys/kernel/osrelease"));
    let arch = std::env::consts::ARCH;
    match (os, rel) {
        (Some(o), Some(r)) => Some(format!("{o} {r} {arch}")),
        (None, Some(r)) => Some(format!("{r} {arch}")),
        _ => None,
    }
}

/// The KVM module parameters of [`KVM_PARAMS`] this host exposes.
pub fn kvm_params(sys_module: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (module, params) in KVM_PARAMS {
        let dir = sys_module.join(module).join("parameters");
        if !dir.is_dir() {
            continue;
        }
        let mut found = BTreeMap::new();
        for p in *params {
            if let Some(v) = read_trimmed(&dir.join(p)) {
                found.insert(p.to_string(), v);
            }
        }
        out.insert(module.to_string(), found);
    }
    out
}

/// Reads the facts of the machine this runs on.
pub fn probe(s: &Settings) -> Host {
    let (cpu_model, host_cpus) = cpu();
    let vmm_bin = s.vmm_binary.clone().or_else(|| match s.vmm.as_deref() {
        Some("cloud-hypervisor") => Some("cloud-hypervisor".into()),
        Some("qemu") | None => Some("qemu-system-x86_64".into()),
        Some(_) => None,
    });
    let vmm_version = vmm_bin.and_then(|b| first_line(&b, &["--version"], None));
    let repo = s.repo.as_deref();
    let git_rev = first_line("git", &["rev-parse", "HEAD"], repo);
    // Untracked files are not the build's (results/, target/ are ignored
    // anyway); a modified tracked file is.
    let git_dirty = git_rev.as_ref().and_then(|_| {
        let mut c = Command::new("git");
        c.args(["status", "--porcelain", "--untracked-files=no"]);
        if let Some(d) = repo {
            c.current_dir(d);
        }
        let out = c.output().ok().filter(|o| o.status.success())?;
        Some(!out.stdout.is_empty())
    });
    Host {
        schema: Some(HOST_SCHEMA),
        date: s.date.clone().or_else(|| Some(crate::results::utc_now())),
        cpu_model,
        host_cpus,
        kernel: kernel(),
        vmm: s.vmm.clone().or_else(|| Some("qemu".into())),
        vmm_version,
        machine: s.machine.clone(),
        smp: s.smp,
        mem: s.mem.clone(),
        accel: s.accel.clone(),
        tcg_thread: s.tcg_thread.clone(),
        kvm: kvm_params(Path::new("/sys/module")),
        git_rev,
        git_dirty,
    }
}

impl Host {
    /// Whether any fact was recorded (false: the report was made from logs
    /// alone).
    pub fn recorded(&self) -> bool {
        *self != Host::default()
    }

    pub fn to_json(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    }

    /// Parses host.json; an error names what is wrong.
    pub fn from_json(text: &str) -> Result<Host, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        // serde would read an array as the fields in order, and `[]` as a
        // record with nothing in it.
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        let h: Host = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if let Some(v) = h.schema.filter(|v| *v != HOST_SCHEMA) {
            return Err(format!(
                "host.json schema {v} (this hbreport reads schema {HOST_SCHEMA})"
            ));
        }
        Ok(h)
    }

    /// The KVM parameters in one line: "kvm_intel: ept=Y nested=N ...".
    pub fn kvm_line(&self) -> Option<String> {
        if self.kvm.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .kvm
            .iter()
            .map(|(m, ps)| {
                if ps.is_empty() {
                    format!("{m} (no parameters readable)")
                } else {
                    let kv: Vec<String> = ps.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{m}: {}", kv.join(" "))
                }
            })
            .collect();
        Some(parts.join("; "))
    }

    /// "770c438 (uncommitted changes)".
    pub fn revision(&self) -> Option<String> {
        let rev = self.git_rev.as_ref()?;
        let short: String = rev.chars().take(12).collect();
        Some(match self.git_dirty {
            Some(true) => format!("{short} (with uncommitted changes)"),
            Some(false) => short,
            None => format!("{short} (clean or not: unknown)"),
        })
    }
}

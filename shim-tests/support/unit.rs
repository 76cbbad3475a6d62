//! podckpt's systemd units, as the tests start what they run: every
//! podckptd a test starts runs under podckptd.service's hardening
//! directives, so a directive that stops runc, crun, runsc or CRIU fails the
//! CheckpointPod and RestorePod suites; and the node agent is run under
//! podckpt-agent.service's in the Kubernetes test. systemd does not run
//! here; `setpriv` and `setrlimit` apply what it would. A directive this file
//! cannot apply fails every test, until it is shown to still let the
//! program run and is taught here.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A unit file of `systemd/`.
#[derive(Clone, Copy)]
pub struct Unit {
    pub name: &'static str,
    text: &'static str,
}

pub const PODCKPTD: Unit = Unit {
    name: "podckptd.service",
    text: include_str!("../../systemd/podckptd.service"),
};
pub const AGENT: Unit = Unit {
    name: "podckpt-agent.service",
    text: include_str!("../../systemd/podckpt-agent.service"),
};

/// [Service] settings that confine nothing the backends need, or that
/// systemd alone acts on (start, stop, restart, readiness).
const NOT_CONFINING: &[&str] = &[
    "Type",
    "NotifyAccess",
    "TimeoutStartSec",
    "WatchdogSec",
    "ExecStart",
    "Restart",
    "RestartSec",
    "KillSignal",
    "TimeoutStopSec",
    "LimitNOFILE",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve",
    // The agent's node name and kubeconfig, which each test gives its own.
    "Environment",
];

/// The unit's hardening, as this harness applies it.
#[derive(Debug, Default)]
pub struct Hardening {
    pub no_new_privileges: bool,
    /// Capabilities taken out of the bounding set, as setpriv names them.
    pub dropped: Vec<String>,
    pub limit_core: Option<u64>,
}

/// The unit's `[Service]` settings, by name. systemd combines some repeated
/// settings (CapabilityBoundingSet=) and replaces others; the harness does
/// neither, so a repeated one is refused.
fn service(unit: Unit) -> BTreeMap<&'static str, &'static str> {
    let mut section = "";
    let mut settings = BTreeMap::new();
    for line in unit.text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.is_empty()
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            let previous = settings.insert(key.trim(), value.trim());
            assert!(
                previous.is_none() || key == "Environment",
                "{key} is set twice in systemd/{}; set it once",
                unit.name
            );
        }
    }
    settings
}

pub fn hardening(unit: Unit) -> Hardening {
    let mut hardening = Hardening::default();
    for (key, value) in service(unit) {
        match key {
            "NoNewPrivileges" => {
                hardening.no_new_privileges = match value {
                    "yes" | "true" | "on" | "1" => true,
                    "no" | "false" | "off" | "0" => false,
                    other => panic!("NoNewPrivileges={other}: not a boolean"),
                }
            }
            // Empty: no capability at all.
            "CapabilityBoundingSet" if value.is_empty() => hardening.dropped = vec!["all".into()],
            "CapabilityBoundingSet" => {
                let dropped = value
                    .strip_prefix('~')
                    .expect("CapabilityBoundingSet: the harness applies a deny list (~CAP_...) or none");
                hardening.dropped = dropped
                    .split_whitespace()
                    .map(|c| c.strip_prefix("CAP_").expect("a capability name").to_lowercase())
                    .collect();
            }
            "LimitCORE" => hardening.limit_core = Some(value.parse().expect("LimitCORE: a number")),
            other if NOT_CONFINING.contains(&other) => {}
            other => panic!(
                "systemd/{} sets {other}={value}, which the test harness cannot apply: \
                 show that what it runs still works under it and teach shim-tests/support/unit.rs",
                unit.name
            ),
        }
    }
    hardening
}

/// `program`, to be run as `unit` runs it.
pub fn confined(unit: Unit, program: &Path) -> Command {
    let hardening = hardening(unit);
    let mut command = Command::new("setpriv");
    if hardening.no_new_privileges {
        command.arg("--no-new-privs");
    }
    if !hardening.dropped.is_empty() {
        let dropped: Vec<String> = hardening.dropped.iter().map(|c| format!("-{c}")).collect();
        command.args(["--bounding-set", &dropped.join(",")]);
        // As systemd starts a service: nothing inheritable, so that root's
        // capabilities after exec are exactly the bounding set.
        command.args(["--inh-caps", "-all"]);
    }
    command.arg("--").arg(program);
    if let Some(core) = hardening.limit_core {
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, core, core)
                    .map_err(std::io::Error::from)
            });
        }
    }
    command
}

/// `podckptd` as the unit runs it.
pub fn podckptd() -> Command {
    confined(PODCKPTD, Path::new(env!("CARGO_BIN_EXE_podckptd")))
}

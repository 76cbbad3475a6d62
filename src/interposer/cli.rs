//! Just enough of the runc command line to recognise `create` and `start`
//! and find their bundle, pid file and container id. Everything else is
//! passed to the real runtime untouched.

use std::ffi::{OsStr, OsString};

/// runc's global flags that take a value (`--root /run/...`).
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--rootless", "--criu"];
/// `create` flags that take a value.
const CREATE_WITH_VALUE: [&str; 6] = [
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
    "--pidfd-socket",
];

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The global flags, exactly as given.
    pub global: Vec<OsString>,
    pub root: Option<OsString>,
    /// Where the runtime is to log (`--log`), and whether as JSON lines
    /// (`--log-format json`): containerd's runc shim reports a failed
    /// command's last error-level line from there.
    pub log: Option<OsString>,
    pub log_json: bool,
    pub command: Option<OsString>,
    /// The command's own arguments, exactly as given.
    pub rest: Vec<OsString>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Create {
    pub bundle: Option<OsString>,
    pub pid_file: Option<OsString>,
    pub console_socket: Option<OsString>,
    pub no_pivot: bool,
    pub id: OsString,
}

/// Splits `--flag value` and `--flag=value` forms alike.
fn split_flag(arg: &OsStr) -> (&str, Option<&str>) {
    let s = arg.to_str().unwrap_or("");
    match s.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => (flag, Some(value)),
        _ => (s, None),
    }
}

pub fn parse(args: &[OsString]) -> Invocation {
    let mut inv = Invocation::default();
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = split_flag(&args[i]);
        if !flag.starts_with('-') {
            break;
        }
        inv.global.push(args[i].clone());
        let value = if GLOBAL_WITH_VALUE.contains(&flag) && inline.is_none() {
            i += 1;
            let value = args.get(i).cloned();
            inv.global.extend(value.clone());
            value
        } else {
            inline.map(OsString::from)
        };
        match flag {
            "--root" => inv.root = value,
            "--log" => inv.log = value,
            "--log-format" => inv.log_json = value.is_some_and(|v| v == "json"),
            _ => {}
        }
        i += 1;
    }
    inv.command = args.get(i).cloned();
    inv.rest = args.get(i + 1..).map(<[_]>::to_vec).unwrap_or_default();
    inv
}

/// The arguments of `create`; `None` if there is no container id.
pub fn parse_create(rest: &[OsString]) -> Option<Create> {
    let mut create = Create::default();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let (flag, inline) = split_flag(&rest[i]);
        if !flag.starts_with('-') {
            positional.push(rest[i].clone());
            i += 1;
            continue;
        }
        let value = if CREATE_WITH_VALUE.contains(&flag) {
            match inline {
                Some(v) => Some(OsString::from(v)),
                None => {
                    i += 1;
                    rest.get(i).cloned()
                }
            }
        } else {
            None
        };
        match flag {
            "--bundle" | "-b" => create.bundle = value,
            "--pid-file" => create.pid_file = value,
            "--console-socket" => create.console_socket = value,
            "--no-pivot" => create.no_pivot = true,
            _ => {}
        }
        i += 1;
    }
    create.id = positional.pop()?;
    Some(create)
}

/// Appends `message` as an error to the runtime's log, as runc writes one
/// (logrus, JSON or text), so that a shim that reports the runtime's last
/// logged error reports ours, not what runc logged before it.
pub fn log_error(inv: &Invocation, message: &str) {
    use std::io::Write;
    let Some(path) = &inv.log else { return };
    let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let line = if inv.log_json {
        serde_json::json!({"level": "error", "msg": message, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={message:?}")
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn containerd_shim_create() {
        let inv = parse(&os(&[
            "--root",
            "/run/containerd/runc/k8s.io",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "abc",
        ]));
        assert_eq!(inv.root.as_deref(), Some(OsStr::new("/run/containerd/runc/k8s.io")));
        assert_eq!(inv.log.as_deref(), Some(OsStr::new("/x/log.json")));
        assert!(inv.log_json);
        assert_eq!(inv.command.as_deref(), Some(OsStr::new("create")));
        assert_eq!(inv.global.len(), 6);
        let create = parse_create(&inv.rest).unwrap();
        assert_eq!(create.bundle.as_deref(), Some(OsStr::new("/b")));
        assert_eq!(create.pid_file.as_deref(), Some(OsStr::new("/b/init.pid")));
        assert_eq!(create.id, "abc");
        assert!(!create.no_pivot);
    }

    #[test]
    fn an_error_is_logged_where_the_shim_reads_the_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"container does not exist\"}\n").unwrap();
        let inv = parse(&os(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format=json",
            "create",
            "x",
        ]));
        log_error(&inv, "podckpt-runc: restoring x: \"why\"");
        let last: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(
            (last["level"].as_str(), last["msg"].as_str()),
            (Some("error"), Some("podckpt-runc: restoring x: \"why\""))
        );
        let text = dir.path().join("log");
        let inv = parse(&os(&["--log", text.to_str().unwrap(), "create", "x"]));
        log_error(&inv, "why");
        assert!(
            std::fs::read_to_string(&text)
                .unwrap()
                .contains("level=error msg=\"why\"")
        );
    }

    #[test]
    fn inline_values_and_booleans() {
        let inv = parse(&os(&["--root=/r", "--systemd-cgroup", "start", "abc"]));
        assert_eq!(inv.root.as_deref(), Some(OsStr::new("/r")));
        assert_eq!(inv.command.as_deref(), Some(OsStr::new("start")));
        assert_eq!(inv.rest, os(&["abc"]));
        let create = parse_create(&os(&["--bundle=/b", "--no-pivot", "--console-socket", "/s", "id"])).unwrap();
        assert_eq!(
            (create.bundle.as_deref(), create.no_pivot),
            (Some(OsStr::new("/b")), true)
        );
        assert_eq!(create.console_socket.as_deref(), Some(OsStr::new("/s")));
    }
}

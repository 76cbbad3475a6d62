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
        if GLOBAL_WITH_VALUE.contains(&flag) && inline.is_none() {
            i += 1;
            if let Some(value) = args.get(i) {
                inv.global.push(value.clone());
                if flag == "--root" {
                    inv.root = Some(value.clone());
                }
            }
        } else if flag == "--root" {
            inv.root = inline.map(OsString::from);
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
        assert_eq!(inv.command.as_deref(), Some(OsStr::new("create")));
        assert_eq!(inv.global.len(), 6);
        let create = parse_create(&inv.rest).unwrap();
        assert_eq!(create.bundle.as_deref(), Some(OsStr::new("/b")));
        assert_eq!(create.pid_file.as_deref(), Some(OsStr::new("/b/init.pid")));
        assert_eq!(create.id, "abc");
        assert!(!create.no_pivot);
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

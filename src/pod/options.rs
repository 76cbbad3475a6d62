//! The `options` maps of CheckpointPod and RestorePod: the documented keys
//! and nothing else.

use std::collections::HashMap;

use super::error::PodError;
use crate::backend::CaptureOptions;

/// What CheckpointPod's options ask for: the backend's capture flags, and
/// podckpt's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointOptions {
    pub capture: CaptureOptions,
    /// The checkpoint is on stable storage before the call answers OK.
    pub durable: bool,
}

/// Dump established TCP connections (CRIU `--tcp-established`).
pub const TCP_ESTABLISHED: &str = "podckpt.io/tcp-established";
/// Dump file locks (CRIU `--file-locks`).
pub const FILE_LOCKS: &str = "podckpt.io/file-locks";
/// Skip connections still being set up (CRIU `--tcp-skip-in-flight`).
pub const TCP_SKIP_IN_FLIGHT: &str = "podckpt.io/tcp-skip-in-flight";

/// `false` skips syncing the checkpoint to stable storage, for throw-away
/// warm-start images that a power cut may take. The default is durable.
pub const DURABLE: &str = "podckpt.io/durable";

const KNOWN: [&str; 4] = [TCP_ESTABLISHED, FILE_LOCKS, TCP_SKIP_IN_FLIGHT, DURABLE];

/// RestorePod: `true` serves the restored memory on first touch (CRIU's
/// lazy-pages daemon) and fetches the rest in the background; `false`
/// restores every page before the process runs. Unset, the handler decides.
pub const LAZY_PAGES: &str = "podckpt.io/lazy-pages";

/// What RestorePod's options ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    pub lazy_pages: Option<bool>,
}

fn unknown(key: &str, known: &[&str]) -> PodError {
    PodError::InvalidArgument(format!(
        "unknown option {key:?}; the supported options are {}",
        known.join(", ")
    ))
}

fn flag(key: &str, value: &str) -> Result<bool, PodError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(PodError::InvalidArgument(format!(
            "option {key} must be \"true\" or \"false\", not {value:?}"
        ))),
    }
}

/// RestorePod's options: every key known, every value `true` or `false`.
pub fn parse_restore(options: &HashMap<String, String>) -> Result<RestoreOptions, PodError> {
    let mut parsed = RestoreOptions::default();
    for (key, value) in options {
        match key.as_str() {
            LAZY_PAGES => parsed.lazy_pages = Some(flag(key, value)?),
            _ => return Err(unknown(key, &[LAZY_PAGES])),
        }
    }
    Ok(parsed)
}

/// The capture flags by their keys: the one table both `parse` and
/// `capture_keys` read, so that no option can be parsed yet go unnamed.
fn capture_flags(capture: &mut CaptureOptions) -> [(&'static str, &mut bool); 3] {
    [
        (TCP_ESTABLISHED, &mut capture.tcp_established),
        (FILE_LOCKS, &mut capture.file_locks),
        (TCP_SKIP_IN_FLIGHT, &mut capture.tcp_skip_in_flight),
    ]
}

/// The capture options set in `capture`, by their keys, for a message.
pub fn capture_keys(capture: &CaptureOptions) -> Vec<&'static str> {
    let mut capture = *capture;
    capture_flags(&mut capture)
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
}

/// A backend's refusal of the capture options asked (`refuse_options`),
/// naming them, as CheckpointPod and the pre-flight check both say it.
pub fn refused(capture: &CaptureOptions, backend: &str, why: &str) -> String {
    format!(
        "{} cannot be used with {backend}: {why}",
        capture_keys(capture).join(", ")
    )
}

/// Every key must be known and every value `true` or `false`.
pub fn parse(options: &HashMap<String, String>) -> Result<CheckpointOptions, PodError> {
    let mut parsed = CheckpointOptions {
        capture: CaptureOptions::default(),
        durable: true,
    };
    for (key, value) in options {
        let slot = match key.as_str() {
            DURABLE => &mut parsed.durable,
            key => match capture_flags(&mut parsed.capture).into_iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot,
                None => return Err(unknown(key, &KNOWN)),
            },
        };
        *slot = flag(key, value)?;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_refusal_names_the_options_that_were_set_and_only_those() {
        let asked = parse(&map(&[
            (TCP_ESTABLISHED, "true"),
            (FILE_LOCKS, "false"),
            (TCP_SKIP_IN_FLIGHT, "true"),
        ]))
        .unwrap()
        .capture;
        assert_eq!(capture_keys(&asked), [TCP_ESTABLISHED, TCP_SKIP_IN_FLIGHT]);
        assert_eq!(
            refused(&asked, "runsc", "not here"),
            "podckpt.io/tcp-established, podckpt.io/tcp-skip-in-flight cannot be used with runsc: not here"
        );
        assert!(capture_keys(&CaptureOptions::default()).is_empty());
    }

    #[test]
    fn known_keys_set_their_flags() {
        let o = parse(&map(&[(TCP_ESTABLISHED, "true"), (FILE_LOCKS, "false")])).unwrap();
        assert!(o.capture.tcp_established && !o.capture.file_locks && !o.capture.tcp_skip_in_flight);
        assert!(o.durable, "durable unless asked otherwise");
        assert!(!parse(&map(&[(DURABLE, "false")])).unwrap().durable);
    }

    #[test]
    fn unknown_keys_and_odd_values_are_refused() {
        let err = parse(&map(&[("leave-running", "true")])).unwrap_err();
        assert!(matches!(err, PodError::InvalidArgument(ref m) if m.contains("leave-running")));
        assert!(parse(&map(&[(FILE_LOCKS, "yes")])).is_err());
        assert!(
            parse(&map(&[(LAZY_PAGES, "true")])).is_err(),
            "a restore option is not a checkpoint option"
        );
    }

    #[test]
    fn restore_options() {
        assert_eq!(
            parse_restore(&map(&[])).unwrap().lazy_pages,
            None,
            "unset: the handler decides"
        );
        assert_eq!(
            parse_restore(&map(&[(LAZY_PAGES, "false")])).unwrap().lazy_pages,
            Some(false)
        );
        assert!(parse_restore(&map(&[(LAZY_PAGES, "1")])).is_err());
        assert!(parse_restore(&map(&[(DURABLE, "true")])).is_err());
    }
}

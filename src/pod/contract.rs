//! What RestorePod checks a caller's container config against. The CRI
//! makes image, command, args, working directory, environment and process
//! credentials a description of the checkpointed process: they cannot start
//! or change it, so a config that describes another process is refused
//! rather than silently ignored.

use std::collections::BTreeSet;
use std::fmt::Debug;

use super::error::PodError;
use crate::api::cri;
use crate::archive::ProcessRecord;
use crate::archive::record::{ExpectedProcess, SpecProcess};

/// Compares everything but the image (which the runtime must resolve, see
/// `check_image`) with what the checkpoint recorded of container `name`.
pub fn check_process(name: &str, record: &ProcessRecord, config: &cri::ContainerConfig) -> Result<(), PodError> {
    let found = match (&record.process, &record.spec_process) {
        (Some(recorded), _) => differences(recorded, &ExpectedProcess::from(config)),
        (None, Some(spec)) => spec_differences(spec, config),
        (None, None) => return Err(cannot_validate(name, "the config its process was started with")),
    };
    if found.is_empty() {
        return Ok(());
    }
    Err(PodError::InvalidArgument(format!(
        "container {name:?}: {}",
        found.join("; ")
    )))
}

/// Compares the image the caller's config names, resolved by the runtime to
/// `config_id` (`None`: the config names no image), with the checkpoint's,
/// by identity: another tag of the same image is the same image.
pub fn check_image(
    name: &str,
    record: &ProcessRecord,
    config_image: &str,
    config_id: Option<&str>,
) -> Result<(), PodError> {
    if record.image_id.is_empty() {
        return Err(cannot_validate(name, "its image id"));
    }
    if config_id.map(bare_digest) == Some(bare_digest(&record.image_id)) {
        return Ok(());
    }
    let config = match config_id {
        Some(id) => format!("{config_image} ({id})"),
        None => "none".into(),
    };
    Err(PodError::InvalidArgument(format!(
        "container {name:?}: image differs: checkpoint has {} ({}), config has {config}",
        record.image, record.image_id
    )))
}

/// Every field in which `config` describes another process than the one
/// the runtime resolved into the spec, resolving the config with the image's
/// entrypoint, cmd and environment as recorded with it. `run_as_username`
/// resolves inside the container's own /etc/passwd and is not compared; the
/// uid it gave is, where the config sets one.
pub fn spec_differences(recorded: &SpecProcess, config: &cri::ContainerConfig) -> Vec<String> {
    let mut found = Vec::new();
    let argv = recorded.resolve_argv(config);
    if argv != recorded.argv {
        found.push(format!(
            "command and args differ: checkpoint ran {:?}, config resolves to {argv:?} (command {:?}, args {:?})",
            recorded.argv, config.command, config.args
        ));
    }
    if !config.working_dir.is_empty() && config.working_dir != recorded.cwd {
        found.push(format!(
            "working_dir differs: checkpoint has {:?}, config has {:?}",
            recorded.cwd, config.working_dir
        ));
    }
    // Names only, as in `env_differences`. The hostname is the new pod's,
    // whatever the old one was.
    let changed: BTreeSet<&str> = config
        .envs
        .iter()
        .filter(|kv| kv.key != "HOSTNAME" && recorded.env_value(&kv.key) != Some(kv.value.as_str()))
        .map(|kv| kv.key.as_str())
        .collect();
    if !changed.is_empty() {
        found.push(format!(
            "envs differ (values not shown): not as in the checkpoint {changed:?}"
        ));
    }
    let missing: BTreeSet<&str> = recorded
        .config_env()
        .into_keys()
        .filter(|key| !config.envs.iter().any(|kv| kv.key == *key))
        .collect();
    if !missing.is_empty() {
        found.push(format!(
            "envs differ (values not shown): only in the checkpoint {missing:?}"
        ));
    }
    let context = config.linux.as_ref().and_then(|l| l.security_context.as_ref());
    if let Some(uid) = context.and_then(|c| c.run_as_user.as_ref()).map(|v| v.value)
        && uid != recorded.uid
    {
        found.push(format!(
            "run_as_user differs: checkpoint has {}, config has {uid}",
            recorded.uid
        ));
    }
    if let Some(gid) = context.and_then(|c| c.run_as_group.as_ref()).map(|v| v.value)
        && gid != recorded.gid
    {
        found.push(format!(
            "run_as_group differs: checkpoint has {}, config has {gid}",
            recorded.gid
        ));
    }
    let missing: Vec<i64> = context
        .map(|c| {
            c.supplemental_groups
                .iter()
                .copied()
                .filter(|g| !recorded.additional_gids.contains(g))
                .collect()
        })
        .unwrap_or_default();
    if !missing.is_empty() {
        found.push(format!(
            "supplemental_groups differ: checkpoint has {:?}, config adds {missing:?}",
            recorded.additional_gids
        ));
    }
    found
}

/// An image id without its algorithm: containerd says `sha256:<hex>`, CRI-O
/// the bare hex of the same config digest.
fn bare_digest(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn cannot_validate(name: &str, what: &str) -> PodError {
    PodError::FailedPrecondition(format!(
        "container {name:?}: the checkpoint does not record {what} (the runtime that took it did not report it), so the restore cannot be validated"
    ))
}

/// Every field in which `config` describes another process than
/// `recorded`, as "FIELD differs: checkpoint has X, config has Y".
pub fn differences(recorded: &ExpectedProcess, config: &ExpectedProcess) -> Vec<String> {
    let mut found = Vec::new();
    compare(&mut found, "command", &recorded.command, &config.command);
    compare(&mut found, "args", &recorded.args, &config.args);
    compare(&mut found, "working_dir", &recorded.working_dir, &config.working_dir);
    let (mine, theirs) = (&recorded.credentials, &config.credentials);
    compare(
        &mut found,
        "run_as_user",
        &Unset(mine.run_as_user),
        &Unset(theirs.run_as_user),
    );
    compare(
        &mut found,
        "run_as_group",
        &Unset(mine.run_as_group),
        &Unset(theirs.run_as_group),
    );
    compare(
        &mut found,
        "run_as_username",
        &mine.run_as_username,
        &theirs.run_as_username,
    );
    compare(
        &mut found,
        "supplemental_groups",
        &mine.supplemental_groups,
        &theirs.supplemental_groups,
    );
    if let Some(envs) = env_differences(recorded, config) {
        found.push(envs);
    }
    found
}

fn compare<T: PartialEq + Debug>(found: &mut Vec<String>, field: &str, checkpoint: &T, config: &T) {
    if checkpoint != config {
        let verb = if field.ends_with('s') { "differ" } else { "differs" };
        found.push(format!(
            "{field} {verb}: checkpoint has {checkpoint:?}, config has {config:?}"
        ));
    }
}

/// Names the variables that differ, but not their values: an environment
/// often carries secrets, and this message reaches the caller and its logs.
fn env_differences(recorded: &ExpectedProcess, config: &ExpectedProcess) -> Option<String> {
    let (mine, theirs) = (&recorded.envs, &config.envs);
    let names: BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
    let (mut changed, mut only_checkpoint, mut only_config) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        match (mine.get(name), theirs.get(name)) {
            (Some(a), Some(b)) if a != b => changed.push(name),
            (Some(_), None) => only_checkpoint.push(name),
            (None, Some(_)) => only_config.push(name),
            _ => {}
        }
    }
    let parts: Vec<String> = [
        ("changed", changed),
        ("only in the checkpoint", only_checkpoint),
        ("only in the config", only_config),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what} {names:?}"))
    .collect();
    (!parts.is_empty()).then(|| format!("envs differ (values not shown): {}", parts.join(", ")))
}

/// An optional id shown as the number or `unset`: unset is the image's
/// default, which is not the same request as 0.
#[derive(PartialEq)]
struct Unset(Option<i64>);

impl Debug for Unset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("unset"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::record::Credentials;

    fn recorded() -> ExpectedProcess {
        ExpectedProcess {
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "loop".into()],
            working_dir: "/srv".into(),
            envs: [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())].into(),
            credentials: Credentials {
                run_as_user: Some(1000),
                run_as_group: None,
                run_as_username: String::new(),
                supplemental_groups: [5, 6].into(),
            },
        }
    }

    fn record() -> ProcessRecord {
        ProcessRecord {
            image: "busybox:latest".into(),
            image_id: "sha256:aaaa".into(),
            process: Some(recorded()),
            spec_process: None,
        }
    }

    /// The config a caller sends for the recorded process.
    fn matching() -> cri::ContainerConfig {
        let mut config = cri::ContainerConfig::default();
        recorded().apply_to(&mut config);
        config
    }

    fn security(config: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
        config.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    fn refusal(config: &cri::ContainerConfig) -> String {
        match check_process("web", &record(), config) {
            Err(PodError::InvalidArgument(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn the_same_process_passes() {
        check_process("web", &record(), &matching()).unwrap();
    }

    #[test]
    fn each_field_is_named_with_both_values() {
        type Change = fn(&mut cri::ContainerConfig);
        let cases: [(Change, &str); 7] = [
            (
                |c| c.command = vec!["/bin/bash".into()],
                r#"command differs: checkpoint has ["/bin/sh"], config has ["/bin/bash"]"#,
            ),
            (
                |c| c.args = vec!["-c".into(), "other".into()],
                r#"args differ: checkpoint has ["-c", "loop"], config has ["-c", "other"]"#,
            ),
            (
                |c| c.working_dir = String::new(),
                r#"working_dir differs: checkpoint has "/srv", config has """#,
            ),
            (
                |c| security(c).run_as_user = None,
                "run_as_user differs: checkpoint has 1000, config has unset",
            ),
            (
                |c| security(c).run_as_group = Some(cri::Int64Value { value: 0 }),
                "run_as_group differs: checkpoint has unset, config has 0",
            ),
            (
                |c| security(c).run_as_username = "nobody".into(),
                r#"run_as_username differs: checkpoint has "", config has "nobody""#,
            ),
            (
                |c| security(c).supplemental_groups = vec![5],
                "supplemental_groups differ: checkpoint has {5, 6}, config has {5}",
            ),
        ];
        for (change, expected) in cases {
            let mut config = matching();
            change(&mut config);
            assert_eq!(refusal(&config), format!("container \"web\": {expected}"));
        }
    }

    fn spec_process() -> SpecProcess {
        SpecProcess {
            argv: vec!["/entry".into(), "serve".into(), "--port=80".into()],
            cwd: "/srv".into(),
            env: vec!["PATH=/bin".into(), "TOKEN=secret-value".into(), "HOSTNAME=old".into()],
            uid: 1000,
            gid: 1000,
            additional_gids: [1000, 5].into(),
            image: crate::archive::record::ImageDefaults {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["serve".into()],
                env: vec!["PATH=/bin".into()],
            },
        }
    }

    #[test]
    fn a_config_matches_the_spec_process_it_resolved_to() {
        let record = ProcessRecord {
            spec_process: Some(spec_process()),
            process: None,
            ..record()
        };
        // The image's entrypoint, then the config's args.
        let token = cri::KeyValue {
            key: "TOKEN".into(),
            value: "secret-value".into(),
        };
        let mut config = cri::ContainerConfig {
            args: vec!["serve".into(), "--port=80".into()],
            envs: vec![
                cri::KeyValue {
                    key: "HOSTNAME".into(),
                    value: "new".into(),
                },
                token.clone(),
            ],
            ..Default::default()
        };
        check_process("web", &record, &config).unwrap();
        config.command = vec!["/entry".into()];
        config.working_dir = "/srv".into();
        check_process("web", &record, &config).unwrap();
        // Args that only end the same way are another process.
        let mut shorter = config.clone();
        shorter.command.clear();
        shorter.args = vec!["--port=80".into()];
        assert!(check_process("web", &record, &shorter).is_err());
        // A variable the config had, left out.
        let mut forgetful = config.clone();
        forgetful.envs.retain(|kv| kv.key != "TOKEN");
        let message = check_process("web", &record, &forgetful).unwrap_err().to_string();
        assert!(message.contains(r#"only in the checkpoint {"TOKEN"}"#), "{message}");
        // The config the CLI builds from the record matches it too.
        let mut rebuilt = cri::ContainerConfig::default();
        assert!(record.apply_to(&mut rebuilt));
        check_process("web", &record, &rebuilt).unwrap();

        let mut other = config.clone();
        other.args = vec!["serve".into(), "--port=81".into()];
        other.working_dir = "/tmp".into();
        other
            .envs
            .iter_mut()
            .filter(|kv| kv.key == "TOKEN")
            .for_each(|kv| kv.value = "guess".into());
        let message = match check_process("web", &record, &other) {
            Err(PodError::InvalidArgument(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert!(message.contains("command and args differ"), "{message}");
        assert!(message.contains("working_dir differs"), "{message}");
        assert!(
            message.contains(r#"envs differ (values not shown): not as in the checkpoint {"TOKEN"}"#),
            "{message}"
        );
        assert!(
            !message.contains("secret-value") && !message.contains("guess"),
            "{message}"
        );

        let mut stranger = rebuilt;
        security(&mut stranger).run_as_user = Some(cri::Int64Value { value: 0 });
        assert!(check_process("web", &record, &stranger).is_err());
    }

    #[test]
    fn every_difference_is_reported_at_once() {
        let mut config = matching();
        config.command.clear();
        config.working_dir = "/".into();
        let message = refusal(&config);
        assert!(message.contains("command differs") && message.contains("; working_dir differs"));
    }

    #[test]
    fn envs_are_a_map_and_their_values_stay_secret() {
        let mut config = matching();
        config.envs.reverse();
        config.envs.push(config.envs[0].clone());
        check_process("web", &record(), &config).expect("order and repeats do not matter");

        config.envs = vec![
            cri::KeyValue {
                key: "A".into(),
                value: "secret-value".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "3".into(),
            },
        ];
        let message = refusal(&config);
        assert_eq!(
            message,
            r#"container "web": envs differ (values not shown): changed ["A"], only in the checkpoint ["B"], only in the config ["C"]"#
        );
        assert!(!message.contains("secret-value"));
    }

    #[test]
    fn groups_are_a_set() {
        let mut config = matching();
        security(&mut config).supplemental_groups = vec![6, 5, 6];
        check_process("web", &record(), &config).unwrap();
    }

    #[test]
    fn images_are_compared_by_identity() {
        check_image("web", &record(), "another-tag:v1", Some("sha256:aaaa")).expect("another tag, the same image");
        // CRI-O names the same config digest without its algorithm.
        check_image("web", &record(), "busybox:latest", Some("aaaa")).expect("CRI-O's id of the same image");
        let err = check_image("web", &record(), "busybox:latest", Some("sha256:bbbb")).unwrap_err();
        assert!(matches!(err, PodError::InvalidArgument(_)));
        assert_eq!(
            err.to_string(),
            r#"container "web": image differs: checkpoint has busybox:latest (sha256:aaaa), config has busybox:latest (sha256:bbbb)"#
        );
        let err = check_image("web", &record(), "", None).unwrap_err();
        assert!(err.to_string().ends_with("config has none"), "{err}");
    }

    #[test]
    fn a_record_without_the_process_or_image_cannot_be_validated() {
        let mut record = record();
        record.image_id.clear();
        assert!(matches!(
            check_image("web", &record, "busybox", Some("sha256:aaaa")),
            Err(PodError::FailedPrecondition(_))
        ));
        record.process = None;
        assert!(matches!(
            check_process("web", &record, &matching()),
            Err(PodError::FailedPrecondition(_))
        ));
    }
}

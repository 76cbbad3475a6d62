//! `podckpt-process.json`: podckpt's own record, in each container folder,
//! of the process the checkpoint holds: the image it ran by identity, and
//! the command, arguments, working directory, environment and credentials
//! its container was created with. The CRI makes these the caller's
//! description of the expected process on restore (they cannot change a
//! process that already runs), so RestorePod compares them with this record.
//!
//! The fields come from the runtime's own copy of the ContainerConfig (the
//! verbose ContainerStatus `config` of containerd) where there is one: the
//! OCI spec mixes in the image's environment and entrypoint and what the
//! runtime adds, so it cannot be compared with a ContainerConfig field for
//! field. CRI-O reports no config, only the spec; then the record keeps the
//! spec's process, and a config is compared with it for what a config can
//! say of a resolved process (see [`SpecProcess`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::api::cri;

/// One container's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The image as the container's config named it (else as its status
    /// does); for messages and for rebuilding a config, never for comparison.
    pub image: String,
    /// The image's identity: what the runtime reported as the container's
    /// image id (`sha256:...`). Empty if the runtime reported none.
    pub image_id: String,
    /// `None` when the runtime did not report the container's config.
    pub process: Option<ExpectedProcess>,
    /// The process as the runtime resolved it into the OCI spec, recorded
    /// when the runtime reports no config (CRI-O).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_process: Option<SpecProcess>,
}

/// A process as the OCI spec has it: the image's entrypoint and environment
/// already merged in; and the image's own, to tell them apart again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProcess {
    pub argv: Vec<String>,
    pub cwd: String,
    /// `NAME=value`, in the spec's order (the last of a name wins).
    pub env: Vec<String>,
    pub uid: i64,
    pub gid: i64,
    pub additional_gids: BTreeSet<i64>,
    #[serde(default)]
    pub image: ImageDefaults,
}

/// What an image's OCI config gives a container whose config leaves it out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageDefaults {
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_empty")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", deserialize_with = "null_as_empty")]
    pub cmd: Vec<String>,
    #[serde(rename = "Env", deserialize_with = "null_as_empty")]
    pub env: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `NAME=value` entries by name; a name given twice keeps its last value,
/// as in the process.
fn by_name(env: &[String]) -> BTreeMap<&str, &str> {
    env.iter().filter_map(|kv| kv.split_once('=')).collect()
}

/// Variables the runtime sets itself whatever the image and config say.
const RUNTIME_ENV: [&str; 3] = ["HOSTNAME", "TERM", "PATH"];

/// The fields of a ContainerConfig that describe the checkpointed process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedProcess {
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    /// By name: the order of `envs` changes nothing in the process, and a
    /// name given twice ends with its last value, as in the runtime.
    pub envs: BTreeMap<String, String>,
    pub credentials: Credentials,
}

/// `linux.security_context`'s process identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// `None` is "unset" (the image's user), which is not the same request as 0.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    /// A set: their order and repeats do not change the process's groups.
    pub supplemental_groups: BTreeSet<i64>,
}

impl ProcessRecord {
    /// The record of a container from its CRI status and the runtime's JSON
    /// copy of its ContainerConfig, if the runtime gave one.
    pub fn from_runtime(
        status: &cri::ContainerStatus,
        config: Option<&serde_json::Value>,
        spec: Option<&serde_json::Value>,
        image_config: Option<&serde_json::Value>,
    ) -> serde_json::Result<Self> {
        let config = config.map(GoContainerConfig::deserialize).transpose()?;
        let spec_process = match (&config, spec.map(|spec| &spec["process"])) {
            (None, Some(process)) if process.is_object() => {
                let mut recorded = SpecProcess::from_oci(process)?;
                recorded.image = image_config
                    .map(ImageDefaults::deserialize)
                    .transpose()?
                    .unwrap_or_default();
                Some(recorded)
            }
            _ => None,
        };
        // The status names the image by its first tag, not necessarily the
        // name the config used, which is the one a caller sends again.
        let named = config.as_ref().map(|c| c.image.image.clone()).filter(|i| !i.is_empty());
        // Newer CRI versions split the id off into image_id; where it is
        // empty, image_ref holds it (containerd 1.7).
        let image_id = if status.image_id.is_empty() {
            status.image_ref.clone()
        } else {
            status.image_id.clone()
        };
        Ok(Self {
            image: named
                .or_else(|| status.image.as_ref().map(|i| i.image.clone()))
                .unwrap_or_default(),
            image_id,
            process: config.map(ExpectedProcess::from),
            spec_process,
        })
    }

    /// Writes the checkpointed process into `config`: the config a caller
    /// restores with. `false` if the record has nothing to write.
    pub fn apply_to(&self, config: &mut cri::ContainerConfig) -> bool {
        match (&self.process, &self.spec_process) {
            (Some(process), _) => process.apply_to(config),
            (None, Some(spec)) => spec.apply_to(config),
            (None, None) => return false,
        }
        true
    }
}

impl SpecProcess {
    fn from_oci(process: &serde_json::Value) -> serde_json::Result<Self> {
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct OciUser {
            uid: i64,
            gid: i64,
            additional_gids: Vec<i64>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct OciProcess {
            args: Vec<String>,
            cwd: String,
            env: Vec<String>,
            user: OciUser,
        }
        let oci = OciProcess::deserialize(process)?;
        Ok(Self {
            argv: oci.args,
            cwd: oci.cwd,
            env: oci.env,
            uid: oci.user.uid,
            gid: oci.user.gid,
            additional_gids: oci.user.additional_gids.into_iter().collect(),
            image: ImageDefaults::default(),
        })
    }

    /// The argv a config resolves to with this image, as runtimes resolve it:
    /// the config's command, else the image's entrypoint; then the config's
    /// args, else (with no command) the image's cmd.
    pub fn resolve_argv(&self, config: &cri::ContainerConfig) -> Vec<String> {
        if !config.command.is_empty() {
            return config.command.iter().chain(&config.args).cloned().collect();
        }
        let args = if config.args.is_empty() {
            &self.image.cmd
        } else {
            &config.args
        };
        self.image.entrypoint.iter().chain(args).cloned().collect()
    }

    /// The variables of the process that neither the image nor the runtime
    /// gave it, by name: the ones its config must have set.
    pub fn config_env(&self) -> BTreeMap<&str, &str> {
        let image = by_name(&self.image.env);
        let mut own = by_name(&self.env);
        own.retain(|key, value| !RUNTIME_ENV.contains(key) && image.get(key) != Some(value));
        own
    }

    /// The value the process sees for `name`.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    }

    /// A config that describes this process: the whole argv as its command,
    /// and the variables that came from neither the image nor the runtime.
    fn apply_to(&self, config: &mut cri::ContainerConfig) {
        config.command = self.argv.clone();
        config.args.clear();
        config.working_dir = self.cwd.clone();
        config.envs = self
            .config_env()
            .into_iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.into(),
                value: value.into(),
            })
            .collect();
        let linux = config.linux.get_or_insert_with(Default::default);
        let context = linux.security_context.get_or_insert_with(Default::default);
        context.run_as_user = Some(cri::Int64Value { value: self.uid });
        context.run_as_group = Some(cri::Int64Value { value: self.gid });
        context.run_as_username.clear();
        context.supplemental_groups = self.additional_gids.iter().copied().collect();
    }
}

impl ExpectedProcess {
    /// Writes the checkpointed process into `config`, leaving its
    /// restore-time settings alone: the config a caller restores with.
    pub fn apply_to(&self, config: &mut cri::ContainerConfig) {
        config.command = self.command.clone();
        config.args = self.args.clone();
        config.working_dir = self.working_dir.clone();
        config.envs = self
            .envs
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        let linux = config.linux.get_or_insert_with(Default::default);
        let context = linux.security_context.get_or_insert_with(Default::default);
        let credentials = &self.credentials;
        context.run_as_user = credentials.run_as_user.map(|value| cri::Int64Value { value });
        context.run_as_group = credentials.run_as_group.map(|value| cri::Int64Value { value });
        context.run_as_username = credentials.run_as_username.clone();
        context.supplemental_groups = credentials.supplemental_groups.iter().copied().collect();
    }
}

impl From<&cri::ContainerConfig> for ExpectedProcess {
    fn from(config: &cri::ContainerConfig) -> Self {
        let context = config.linux.as_ref().and_then(|l| l.security_context.as_ref());
        Self {
            command: config.command.clone(),
            args: config.args.clone(),
            working_dir: config.working_dir.clone(),
            envs: config
                .envs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            credentials: Credentials {
                run_as_user: context.and_then(|c| c.run_as_user.as_ref()).map(|v| v.value),
                run_as_group: context.and_then(|c| c.run_as_group.as_ref()).map(|v| v.value),
                run_as_username: context.map(|c| c.run_as_username.clone()).unwrap_or_default(),
                supplemental_groups: context
                    .map(|c| c.supplemental_groups.iter().copied().collect())
                    .unwrap_or_default(),
            },
        }
    }
}

/// The part of a ContainerConfig as Go's encoding/json writes it (how
/// containerd reports it): snake_case keys, and every empty field left out,
/// so each one defaults. An `Int64Value` of 0 is written `{}`, which is
/// still "set".
#[derive(Deserialize, Default)]
#[serde(default)]
struct GoContainerConfig {
    command: Vec<String>,
    args: Vec<String>,
    working_dir: String,
    envs: Vec<GoKeyValue>,
    image: GoImageSpec,
    linux: GoLinux,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoImageSpec {
    image: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoKeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoLinux {
    security_context: GoSecurityContext,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoSecurityContext {
    run_as_user: Option<GoInt64Value>,
    run_as_group: Option<GoInt64Value>,
    run_as_username: String,
    supplemental_groups: Vec<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoInt64Value {
    value: i64,
}

impl From<GoContainerConfig> for ExpectedProcess {
    fn from(go: GoContainerConfig) -> Self {
        let context = go.linux.security_context;
        Self {
            command: go.command,
            args: go.args,
            working_dir: go.working_dir,
            envs: go.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            credentials: Credentials {
                run_as_user: context.run_as_user.map(|v| v.value),
                run_as_group: context.run_as_group.map(|v| v.value),
                run_as_username: context.run_as_username,
                supplemental_groups: context.supplemental_groups.into_iter().collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// containerd 1.7's `config` for a container created with args, a
    /// working directory, an env var, run_as_user 0 and two groups.
    fn containerd_config() -> serde_json::Value {
        json!({
            "args": ["a", "b"],
            "command": ["/bin/sh", "-c", "sleep 100"],
            "envs": [{"key": "A", "value": "1"}, {"key": "EMPTY"}],
            "image": {"image": "podckpt.local/other-name:v1"},
            "linux": {"security_context": {"namespace_options": {"pid": 1}, "run_as_user": {}, "supplemental_groups": [6, 5]}},
            "log_path": "counter.log",
            "metadata": {"name": "counter"},
            "working_dir": "/tmp"
        })
    }

    fn status() -> cri::ContainerStatus {
        cri::ContainerStatus {
            image: Some(cri::ImageSpec {
                image: "podckpt.local/busybox:latest".into(),
                ..Default::default()
            }),
            image_ref: "sha256:1111".into(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_what_containerd_reports() {
        let record = ProcessRecord::from_runtime(&status(), Some(&containerd_config()), None, None).unwrap();
        // The config's name for the image, not the status's first tag.
        assert_eq!(record.image, "podckpt.local/other-name:v1");
        assert_eq!(record.image_id, "sha256:1111");
        let process = record.process.unwrap();
        assert_eq!(process.command, ["/bin/sh", "-c", "sleep 100"]);
        assert_eq!(process.args, ["a", "b"]);
        assert_eq!(process.working_dir, "/tmp");
        assert_eq!(
            process.envs,
            [("A".to_string(), "1".to_string()), ("EMPTY".to_string(), String::new())].into()
        );
        // `{}` is run_as_user 0, set; an absent run_as_group is unset.
        assert_eq!(process.credentials.run_as_user, Some(0));
        assert_eq!(process.credentials.run_as_group, None);
        assert_eq!(process.credentials.supplemental_groups, [5, 6].into());
    }

    #[test]
    fn image_id_wins_over_image_ref_and_a_missing_config_is_none() {
        let mut status = status();
        status.image_id = "sha256:2222".into();
        status.image_ref = "podckpt.local/busybox@sha256:3333".into();
        let record = ProcessRecord::from_runtime(&status, None, None, None).unwrap();
        assert_eq!(record.image_id, "sha256:2222");
        assert_eq!(record.image, "podckpt.local/busybox:latest");
        assert_eq!(record.process, None);
    }

    #[test]
    fn a_config_built_from_the_record_reads_back_the_same() {
        let recorded = ProcessRecord::from_runtime(&status(), Some(&containerd_config()), None, None)
            .unwrap()
            .process
            .unwrap();
        let mut config = cri::ContainerConfig::default();
        recorded.apply_to(&mut config);
        assert_eq!(ExpectedProcess::from(&config), recorded);
    }

    /// CRI-O's runtimeSpec process for the test bed's counter.
    fn crio_spec() -> serde_json::Value {
        json!({"process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "args": ["/bin/sh", "-c", "sleep 100"],
            "env": ["PATH=/usr/bin", "TERM=xterm", "HOSTNAME=old-pod", "PATH=/bin"],
            "cwd": "/"
        }})
    }

    #[test]
    fn without_a_config_the_spec_process_is_recorded() {
        let record = ProcessRecord::from_runtime(
            &status(),
            None,
            Some(&crio_spec()),
            Some(&json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Entrypoint": null})),
        )
        .unwrap();
        assert_eq!(record.process, None);
        let spec = record.spec_process.clone().unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "sleep 100"]);
        assert_eq!(spec.env_value("PATH"), Some("/bin"), "the last value wins");
        assert_eq!(spec.additional_gids, [0].into());
        // A config wins over the spec.
        let both =
            ProcessRecord::from_runtime(&status(), Some(&containerd_config()), Some(&crio_spec()), None).unwrap();
        assert_eq!(both.spec_process, None);
        // The config built from it: the argv whole, no hostname.
        let mut config = cri::ContainerConfig::default();
        assert!(record.apply_to(&mut config));
        assert_eq!(config.command, spec.argv);
        assert!(config.args.is_empty());
        // The image's PATH and the runtime's TERM and HOSTNAME are not the config's.
        assert!(config.envs.is_empty(), "{:?}", config.envs);
        assert_eq!(spec.image.cmd, ["/bin/sh"]);
        assert!(spec.image.entrypoint.is_empty());
        // An image that gives the command: args alone resolve through it.
        let with_entrypoint = SpecProcess {
            image: ImageDefaults {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["default".into()],
                env: vec![],
            },
            ..spec
        };
        let args = cri::ContainerConfig {
            args: vec!["serve".into()],
            ..Default::default()
        };
        assert_eq!(with_entrypoint.resolve_argv(&args), ["/entry", "serve"]);
        assert_eq!(
            with_entrypoint.resolve_argv(&cri::ContainerConfig::default()),
            ["/entry", "default"]
        );
    }

    #[test]
    fn the_record_round_trips_through_its_file_format() {
        let record = ProcessRecord::from_runtime(&status(), Some(&containerd_config()), None, None).unwrap();
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<ProcessRecord>(&text).unwrap(), record);
    }
}

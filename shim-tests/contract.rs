//! RestorePod against the words of the CRI contract, through the shim on
//! the real containerd: the call needs a deadline; the container configs
//! must describe the checkpointed processes (image by identity, command,
//! args, working directory, environment, credentials); the handler must be
//! known and able to restore the checkpoint. Every refusal must leave no
//! sandbox, no restore token and an unchanged checkpoint.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use podckpt::api::cri;
use serial_test::serial;
use tonic::Code;

use crate::support::{self, COUNTER, RestoreCall, Shim, Testbed, testbed, unique};

pub(crate) const DEADLINE: Option<Duration> = Some(Duration::from_secs(60));

/// The test bed's second image: built from the same busybox, but another
/// image (its own config), so another id.
pub(crate) fn pause_image() -> String {
    std::env::var("PODCKPT_TEST_PAUSE_IMAGE").unwrap_or_else(|_| "podckpt.local/pause:latest".into())
}

/// Each entry under `dir` with what any write, chmod, rename or
/// replacement changes: inode, size, mode, mtime and ctime.
fn tree_state(dir: &Path) -> BTreeMap<PathBuf, [i64; 5]> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|entry| {
            let entry = entry.expect("walking the checkpoint");
            let m = entry.metadata().expect("metadata");
            let state = [
                m.ino() as i64,
                m.size() as i64,
                m.mode() as i64,
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                m.ctime_nsec() + m.ctime() * 1_000_000_000,
            ];
            (entry.path().to_owned(), state)
        })
        .collect()
}

/// Sends `call`, which must be refused, and checks that it left nothing: no
/// sandbox of its name in containerd (asked directly), no restore token in
/// the shim's state, the checkpoint as it was.
pub(crate) async fn refused(tb: &Testbed, shim: &Shim, call: RestoreCall, timeout: Option<Duration>) -> tonic::Status {
    let checkpoint = PathBuf::from(&call.request.checkpoint_path);
    let before = tree_state(&checkpoint);
    let name = call.pod_name();
    let status = match call.send(shim, timeout).await {
        Ok((pod, _)) => panic!("pod {} was restored; the call must be refused", pod.id),
        Err(status) => status,
    };
    let sandboxes = support::sandboxes(&mut tb.direct().await).await;
    assert!(
        !sandboxes
            .iter()
            .any(|s| s.metadata.as_ref().is_some_and(|m| m.name == name)),
        "a refused restore left sandbox {name} ({status:?})"
    );
    let tokens = std::fs::read_dir(shim.state_dir().join("restores"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tokens, 0, "a refused restore left a token ({status:?})");
    assert_eq!(
        tree_state(&checkpoint),
        before,
        "a refused restore changed the checkpoint ({status:?})"
    );
    status
}

/// Asserts the code and that the message holds every one of `words`.
pub(crate) fn assert_refusal(case: &str, status: &tonic::Status, code: Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    for word in words {
        assert!(status.message().contains(word), "{case}: {word:?} is not in {status:?}");
    }
}

fn ctr(tb: &Testbed, args: &[&str]) {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(&tb.socket)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("running ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn image_id(tb: &Testbed, image: &str) -> Option<String> {
    let request = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        verbose: false,
    };
    let mut images = support::image_client(&tb.socket).await;
    let status = images.image_status(request).await.expect("ImageStatus").into_inner();
    status.image.map(|i| i.id)
}

/// A name of this test for an image of the test bed, removed at the end.
struct Tag<'a> {
    tb: &'a Testbed,
    name: String,
}

impl<'a> Tag<'a> {
    async fn new(tb: &'a Testbed, image: &str) -> Self {
        let tag = Self {
            tb,
            name: format!("podckpt.local/{}:v1", unique("contract")),
        };
        tag.point_at(image).await;
        tag
    }

    /// Makes the name stand for `image`, once containerd's CRI has seen it.
    async fn point_at(&self, image: &str) {
        ctr(self.tb, &["images", "tag", "--force", image, &self.name]);
        let id = image_id(self.tb, image).await.expect("the image to tag");
        let seen = support::eventually(Duration::from_secs(10), || async {
            image_id(self.tb, &self.name).await.as_deref() == Some(id.as_str())
        })
        .await;
        assert!(seen, "the CRI does not resolve {} to {id}", self.name);
    }
}

impl Drop for Tag<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ctr")
            .arg("-a")
            .arg(&self.tb.socket)
            .args(["-n", "k8s.io", "images", "rm", &self.name])
            .output();
    }
}

/// A counter with every field the contract covers set, so each can differ:
/// args (its `$0`), a working directory, two variables, and credentials,
/// run_as_user 0 among them (which containerd reports as `{}`).
pub(crate) fn described_counter(image: &str) -> cri::ContainerConfig {
    let mut config = support::container_config("counter", image, COUNTER);
    config.args = vec!["counter-arg0".into()];
    config.working_dir = "/tmp".into();
    config.envs = [("GREETING", "hello"), ("MODE", "test")]
        .map(|(key, value)| cri::KeyValue {
            key: key.into(),
            value: value.into(),
        })
        .into();
    let security = security(&mut config);
    security.run_as_user = Some(cri::Int64Value { value: 0 });
    security.run_as_group = Some(cri::Int64Value { value: 0 });
    security.supplemental_groups = vec![1234];
    config
}

/// A change to a config, for the contract's case tables.
pub(crate) type Change<'a> = Box<dyn Fn(&mut cri::ContainerConfig) + 'a>;

pub(crate) fn add_a_variable(config: &mut cri::ContainerConfig) {
    config.envs.push(cri::KeyValue {
        key: "EXTRA".into(),
        value: "1".into(),
    });
}

pub(crate) fn run_as_nobody(config: &mut cri::ContainerConfig) {
    security(config).run_as_user = Some(cri::Int64Value { value: 65534 });
}

pub(crate) fn security(config: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

on_each_runtime!(a_restore_without_a_deadline_is_refused);

async fn a_restore_without_a_deadline_is_refused(tb: Testbed) {
    let shim = Shim::start(&tb);
    let counter = support::container_config("counter", &tb.image, COUNTER);
    let (_keep, checkpoint, _) = support::checkpointed(&shim, "", counter, 1).await;
    let configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    let status = refused(&tb, &shim, RestoreCall::new(&checkpoint, &configs, "podckpt"), None).await;
    assert_refusal("no deadline", &status, Code::InvalidArgument, &["deadline"]);
}

#[tokio::test]
#[serial]
async fn configs_that_describe_another_process_are_refused() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    // The source runs under a name of this test's own, so that the name can
    // later be pointed at another image.
    let ours = Tag::new(&tb, &tb.image).await;
    let (_keep, checkpoint, saved) = support::checkpointed(&shim, "", described_counter(&ours.name), 2).await;
    let another_image = Tag::new(&tb, &pause_image()).await;
    let absent = format!("podckpt.local/{}:none", unique("absent"));

    let cases: Vec<(&str, Change, Code, Vec<String>)> = vec![
        (
            "command",
            Box::new(|c| c.command[2] = "exit 1".into()),
            Code::InvalidArgument,
            vec![
                "command differs".into(),
                r#"config has ["/bin/sh", "-c", "exit 1"]"#.into(),
            ],
        ),
        (
            "args",
            Box::new(|c| c.args.clear()),
            Code::InvalidArgument,
            vec![r#"args differ: checkpoint has ["counter-arg0"], config has []"#.into()],
        ),
        (
            "working directory",
            Box::new(|c| c.working_dir = "/".into()),
            Code::InvalidArgument,
            vec![r#"working_dir differs: checkpoint has "/tmp", config has "/""#.into()],
        ),
        (
            "a changed variable",
            Box::new(|c| c.envs[0].value = "bye".into()),
            Code::InvalidArgument,
            vec![r#"envs differ (values not shown): changed ["GREETING"]"#.into()],
        ),
        (
            "a removed variable",
            Box::new(|c| c.envs.retain(|kv| kv.key != "MODE")),
            Code::InvalidArgument,
            vec![r#"only in the checkpoint ["MODE"]"#.into()],
        ),
        (
            "an added variable",
            Box::new(add_a_variable),
            Code::InvalidArgument,
            vec![r#"only in the config ["EXTRA"]"#.into()],
        ),
        (
            "run_as_user",
            Box::new(run_as_nobody),
            Code::InvalidArgument,
            vec!["run_as_user differs: checkpoint has 0, config has 65534".into()],
        ),
        (
            "run_as_group",
            Box::new(|c| security(c).run_as_group = None),
            Code::InvalidArgument,
            vec!["run_as_group differs: checkpoint has 0, config has unset".into()],
        ),
        (
            "run_as_username",
            Box::new(|c| security(c).run_as_username = "nobody".into()),
            Code::InvalidArgument,
            vec!["run_as_username differs".into()],
        ),
        (
            "supplemental_groups",
            Box::new(|c| security(c).supplemental_groups = vec![1234, 5678]),
            Code::InvalidArgument,
            vec!["supplemental_groups differ: checkpoint has {1234}, config has {1234, 5678}".into()],
        ),
        (
            "another name for another image",
            Box::new(|c| c.image.as_mut().unwrap().image = another_image.name.clone()),
            Code::InvalidArgument,
            vec!["image differs".into(), ours.name.clone(), another_image.name.clone()],
        ),
        (
            "an image absent from the node",
            Box::new(|c| c.image.as_mut().unwrap().image = absent.clone()),
            Code::FailedPrecondition,
            vec![absent.clone(), "not present on the node".into()],
        ),
    ];
    for (case, change, code, words) in &cases {
        let mut configs = support::checkpointed_configs(&checkpoint, &["counter"]);
        change(&mut configs[0]);
        let status = refused(&tb, &shim, RestoreCall::new(&checkpoint, &configs, "podckpt"), DEADLINE).await;
        let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
        words.push(r#"container "counter""#);
        assert_refusal(case, &status, *code, &words);
    }

    // Another name for the same image is the same image: the restore goes
    // ahead, and the process goes on.
    let same_image = Tag::new(&tb, &tb.image).await;
    let mut configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    configs[0].image.as_mut().unwrap().image = same_image.name.clone();
    let (pod, restored) = RestoreCall::new(&checkpoint, &configs, "podckpt")
        .send(&shim, DEADLINE)
        .await
        .expect("RestorePod with another tag of the same image");
    let cid = restored[0].container_id.clone();
    support::start_restored(&shim, &cid).await;
    let client = shim.client().await;
    assert!(support::count_reaches(&client, &cid, saved + 1, Duration::from_secs(10)).await);
    drop(pod);

    // The checkpoint's own image name, now standing for another image.
    ours.point_at(&pause_image()).await;
    let configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    let status = refused(&tb, &shim, RestoreCall::new(&checkpoint, &configs, "podckpt"), DEADLINE).await;
    assert_refusal(
        "the same name for another image",
        &status,
        Code::InvalidArgument,
        &["image differs", &ours.name],
    );
}

#[tokio::test]
#[serial]
async fn handlers_that_cannot_restore_the_checkpoint_are_refused() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start_with(&tb, support::CRUN_HANDLERS, 5);
    let counter = || support::container_config("counter", &tb.image, COUNTER);
    let (_runc_holder, by_runc, _) = support::checkpointed(&shim, "", counter(), 1).await;
    let (_crun_holder, by_crun, _) = support::checkpointed(&shim, "crun", counter(), 1).await;
    // A checkpoint of the format before the process record.
    let (_old_holder, old) = support::copy_dir(&by_runc, "old");
    let mut manifest = support::read_manifest(&old);
    manifest.format_version = 2;
    std::fs::write(old.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();

    let cases: [(&str, &Path, &str, Code, &[&str]); 6] = [
        (
            "an unknown handler",
            &by_runc,
            "no-such-handler",
            Code::InvalidArgument,
            &[r#""no-such-handler""#, r#""podckpt""#, r#""podckpt-crun""#],
        ),
        (
            "the default handler, which runs plain runc",
            &by_runc,
            "",
            Code::FailedPrecondition,
            &["does not run podckpt-runc", r#""podckpt""#],
        ),
        (
            "a known handler that does not restore",
            &by_runc,
            "crun",
            Code::FailedPrecondition,
            &[r#"handler "crun" does not run podckpt-runc"#],
        ),
        (
            "a crun checkpoint through the runc restore handler",
            &by_crun,
            "podckpt",
            Code::FailedPrecondition,
            &[
                r#"backend "criu-crun""#,
                r#"handler "podckpt" restores with "criu-runc""#,
            ],
        ),
        (
            "a runc checkpoint through the crun restore handler",
            &by_runc,
            "podckpt-crun",
            Code::FailedPrecondition,
            &[r#"backend "criu-runc""#, r#""criu-crun""#],
        ),
        (
            "a checkpoint from before the process record",
            &old,
            "podckpt",
            Code::FailedPrecondition,
            &["format version 2", "take the checkpoint again"],
        ),
    ];
    for (case, checkpoint, handler, code, words) in cases {
        let configs = support::checkpointed_configs(checkpoint, &["counter"]);
        let status = refused(&tb, &shim, RestoreCall::new(checkpoint, &configs, handler), DEADLINE).await;
        assert_refusal(case, &status, code, words);
    }
}

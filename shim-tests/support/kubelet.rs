//! The test bed's real kubelet (1.36.2, standalone: static pods from a
//! manifest directory), with a test's podckptd as its runtime, started and
//! stopped by `contrib/testbed.sh kubelet-start|kubelet-stop`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use podckpt::api::cri;

use super::{Runtime, Shim, eventually, missing};

/// Where the test bed keeps the kubelet's manifests and log, unless
/// `testbed.sh env` says otherwise.
const DEFAULT_DIR: &str = "/var/lib/podckpt-testbed/kubelet";
/// The node name the test bed's kubelet runs as: a static pod `NAME` is
/// the pod `NAME-podckpt-node`.
pub const NODE: &str = "podckpt-node";

pub struct Kubelet {
    dir: PathBuf,
    /// Its runtime (podckptd), through which its pods are removed at the end.
    runtime: PathBuf,
}

fn script(subcommand: &str, arg: Option<&Path>) -> std::process::ExitStatus {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/testbed.sh");
    Command::new("bash")
        .arg(script)
        .arg(subcommand)
        .args(arg)
        .status()
        .expect("running testbed.sh")
}

impl Kubelet {
    /// A kubelet whose runtime is `shim`; None (a skip, or a failure under
    /// PODCKPT_REQUIRE_TESTBED=1) where the test bed has no kubelet.
    pub fn start(shim: &Shim) -> Option<Self> {
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bin/kubelet");
        if !binary.exists() {
            missing(&format!(
                "no kubelet at {} (see ../shared/bin/README.md)",
                binary.display()
            ));
            return None;
        }
        let dir = std::env::var("PODCKPT_TEST_KUBELET_DIR").unwrap_or_else(|_| DEFAULT_DIR.into());
        let kubelet = Self {
            dir: dir.into(),
            runtime: shim.socket.clone(),
        };
        // A static pod's UID is a hash of its manifest: pods an earlier run
        // left would count as this run's, restarts and all, from the
        // kubelet's first look at the runtime.
        remove_kubelet_pods(&kubelet.runtime);
        let status = script("kubelet-start", Some(&shim.socket));
        assert!(status.success(), "testbed.sh kubelet-start failed: {status}");
        Some(kubelet)
    }

    /// Puts a static pod's manifest in place whole (the kubelet passes over
    /// hidden files, so it never reads one half-written).
    pub fn apply(&self, name: &str, yaml: &str) {
        let staged = self.dir.join("manifests").join(format!(".{name}.yaml"));
        std::fs::write(&staged, yaml).expect("writing a manifest");
        std::fs::rename(&staged, self.manifest(name)).expect("placing a manifest");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifest(name)).expect("removing a manifest");
    }

    fn manifest(&self, name: &str) -> PathBuf {
        self.dir.join("manifests").join(format!("{name}.yaml"))
    }

    /// The kubelet's own account of static pod `name` in `namespace` (its
    /// `/pods`, on the test bed's loopback port): what the API server would
    /// show as the pod's status.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-fsk", "https://127.0.0.1:10350/pods"])
            .output()
            .expect("running curl");
        let pods: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let full = format!("{name}-{NODE}");
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str() && p["metadata"]["namespace"] == namespace)
            .cloned()
    }

    /// Everything the kubelet has logged since it started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default()
    }

    /// Waits until the kubelet has logged a line holding every one of `words`.
    pub async fn logs(&self, words: &[&str], limit: Duration) -> Option<String> {
        let found = || {
            self.log()
                .lines()
                .find(|line| words.iter().all(|w| line.contains(w)))
                .map(str::to_owned)
        };
        eventually(limit, || async { found().is_some() }).await;
        found()
    }
}

/// Removes, through `runtime`, every sandbox a kubelet made (its
/// `kubernetes.io/config.source` annotation: static pods, and the API
/// server's) with its containers: a kubelet stops what it ran when it
/// stops or its manifest goes, and removes it only a minute later.
pub fn remove_kubelet_pods(runtime: &Path) {
    let socket = runtime.to_owned();
    let ids = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            super::sandboxes(&mut super::runtime_client(&socket).await)
                .await
                .into_iter()
                .filter(|s| s.annotations.contains_key("kubernetes.io/config.source"))
                .map(|s| s.id)
                .collect::<Vec<_>>()
        })
    })
    .join()
    .unwrap_or_default();
    for id in ids {
        super::remove_pod_blocking(runtime, &id);
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let status = script("kubelet-stop", None);
        remove_kubelet_pods(&self.runtime);
        if !status.success() && !std::thread::panicking() {
            panic!("testbed.sh kubelet-stop failed: {status}");
        }
    }
}

/// A static pod as the kubelet runs it: its ready sandbox and the
/// containers in it, by the runtime's account.
pub struct Running {
    pub sandbox: cri::PodSandbox,
    pub containers: Vec<cri::Container>,
}

impl Running {
    /// The running container `name`.
    pub fn container(&self, name: &str) -> Option<&cri::Container> {
        self.containers.iter().find(|c| {
            c.metadata.as_ref().is_some_and(|m| m.name == name)
                && c.state == cri::ContainerState::ContainerRunning as i32
        })
    }
}

/// The ready sandbox of static pod `name` in `namespace`, and its
/// containers, once it has a running container `container`: looked for
/// until `limit` has passed (once, for a limit of zero).
pub async fn running(
    runtime: &mut Runtime,
    namespace: &str,
    name: &str,
    container: &str,
    limit: Duration,
) -> Option<Running> {
    let pod_name = format!("{name}-{NODE}");
    let started = std::time::Instant::now();
    loop {
        for sandbox in super::sandboxes(runtime).await {
            let ours = sandbox
                .metadata
                .as_ref()
                .is_some_and(|m| m.name == pod_name && m.namespace == namespace);
            if !ours || sandbox.state != cri::PodSandboxState::SandboxReady as i32 {
                continue;
            }
            let containers = super::pod_containers(runtime, &sandbox.id).await;
            let pod = Running { sandbox, containers };
            if pod.container(container).is_some() {
                return Some(pod);
            }
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every sandbox, in any state, of pods named `name` in `namespace`.
pub async fn sandboxes_of(runtime: &mut Runtime, namespace: &str, name: &str) -> Vec<cri::PodSandbox> {
    let pod_name = format!("{name}-{NODE}");
    super::sandboxes(runtime)
        .await
        .into_iter()
        .filter(|s| {
            s.metadata
                .as_ref()
                .is_some_and(|m| m.name == pod_name && m.namespace == namespace)
        })
        .collect()
}

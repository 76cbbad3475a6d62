//! The test bed's control plane (etcd, kube-apiserver 1.36.2) with its
//! kubelet registered as node podckpt-node, in front of a test's podckptd,
//! driven as a user drives a cluster: with kubectl
//! (`contrib/testbed.sh cluster-start|cluster-stop`, `kubelet-start SOCKET
//! cluster`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Shim, missing};

const DEFAULT_KUBECTL: &str = "/var/lib/podckpt-testbed/kubectl/usr/bin/kubectl";
const DEFAULT_KUBECONFIG: &str = "/var/lib/podckpt-testbed/cluster/admin.kubeconfig";
/// Where the test bed's overlay of deploy/kubernetes has the agent find
/// podckptd (contrib/testbed/kubernetes/kustomization.yaml).
pub const PODCKPTD_SOCKET: &str = "/run/podckpt-testbed/podckpt.sock";

fn script(args: &[&str]) -> std::process::ExitStatus {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/testbed.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .expect("running testbed.sh")
}

pub struct Cluster {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    runtime: PathBuf,
}

impl Cluster {
    /// The control plane and a registered kubelet whose runtime is `shim`;
    /// None (a skip, or a failure under PODCKPT_REQUIRE_TESTBED=1) where the
    /// test bed has no API server.
    pub fn start(shim: &Shim) -> Option<Self> {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bin");
        if !shared.join("kube-apiserver").exists() || !shared.join("kubelet").exists() {
            missing(&format!("no kube-apiserver or kubelet in {}", shared.display()));
            return None;
        }
        let cluster = Self {
            kubectl: std::env::var("PODCKPT_TEST_KUBECTL")
                .unwrap_or_else(|_| DEFAULT_KUBECTL.into())
                .into(),
            kubeconfig: std::env::var("PODCKPT_TEST_KUBECONFIG")
                .unwrap_or_else(|_| DEFAULT_KUBECONFIG.into())
                .into(),
            runtime: shim.socket.clone(),
        };
        super::kubelet::remove_kubelet_pods(&cluster.runtime);
        assert!(script(&["cluster-start"]).success(), "testbed.sh cluster-start failed");
        let socket = shim.socket.display().to_string();
        assert!(
            script(&["kubelet-start", &socket, "cluster"]).success(),
            "testbed.sh kubelet-start cluster failed"
        );
        Some(cluster)
    }

    /// kubectl as the cluster's admin, or as `user` (impersonated), with
    /// `stdin` fed to it.
    pub fn kubectl_as(&self, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(user) = user {
            command.arg(format!("--as={user}"));
        }
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().expect("running kubectl");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().expect("kubectl")
    }

    /// kubectl as the admin; its output, which must be a success.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_as(None, args, None);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml` as `user` (or the admin).
    pub fn apply(&self, user: Option<&str>, yaml: &str) -> Output {
        self.kubectl_as(user, &["apply", "-f", "-"], Some(yaml))
    }

    /// A test bed command of the control plane (cluster-namespace NS, ...).
    pub fn testbed(&self, args: &[&str]) {
        assert!(script(args).success(), "testbed.sh {} failed", args.join(" "));
    }

    /// An object's JSON, as the admin reads it.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl's JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let kubelet = script(&["kubelet-stop"]);
        let control = script(&["cluster-stop"]);
        super::kubelet::remove_kubelet_pods(&self.runtime);
        let stopped = kubelet.success() && control.success();
        if !stopped && !std::thread::panicking() {
            panic!("stopping the control plane failed");
        }
    }
}

//! The harness for tests against the real containerd of the test bed
//! (`contrib/testbed.sh`): a podckptd process per test, CRI clients for both
//! the shim and containerd itself, and pods that clean up after themselves.

#![allow(dead_code)]

pub mod cluster;
pub mod interop;
pub mod kubelet;
pub mod raw;
pub mod unit;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use podckpt::api::cri;
use podckpt::api::cri::image_service_client::ImageServiceClient;
use podckpt::api::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub const DEFAULT_CONTAINERD: &str = "/run/podckpt-testbed/containerd.sock";
pub const DEFAULT_IMAGE: &str = "podckpt.local/busybox:latest";
pub const DEFAULT_CRIO: &str = "/run/podckpt-testbed/crio.sock";
/// runc's `--root` for the test bed's CRI-O handlers (`runtime_root`).
pub const CRIO_RUNC_ROOT: &str = "/run/podckpt-testbed/crio/runc";

pub type Runtime = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;
pub type PodClient = podckpt::api::pod::runtime_service_client::RuntimeServiceClient<Channel>;

pub const RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";
/// The test bed's second containerd, "node B": its socket, and runc's root
/// for its handlers (their `Root`, plus the namespace).
pub const DEFAULT_CONTAINERD_B: &str = "/run/podckpt-testbed-b/containerd.sock";
pub const NODE_B_RUNC_ROOT: &str = "/run/podckpt-testbed-b/runc/k8s.io";
/// runsc's state root for the test bed's "gvisor" handler (its `Root` under
/// the test bed's run directory, plus the namespace).
pub const RUNSC_ROOT: &str = "/run/podckpt-testbed/runsc/k8s.io";
/// podckptd's handler for the test bed's gVisor pods.
pub const GVISOR_HANDLER: &str = "[handlers.gvisor]\nbackend = \"runsc\"\nruntime = \"runsc\"\nroot = \"/run/podckpt-testbed/runsc/k8s.io\"\nrestore = true\n";

/// runc's own view of a container's state: "running", "paused", ... under
/// either runtime's root (container ids are unique across both).
pub fn runc_status(id: &str) -> String {
    for root in [RUNC_ROOT, CRIO_RUNC_ROOT] {
        let out = Command::new("runc")
            .args(["--root", root, "state", id])
            .output()
            .expect("runc state");
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(status) = state["status"].as_str() {
            return status.to_owned();
        }
    }
    "gone".to_owned()
}

/// Calls CheckpointPod through the shim with a 60 s deadline. An empty
/// `container_ids` selects every running container of the pod, listed here
/// as `podckpt checkpointp` does: the call itself refuses an empty list.
pub async fn checkpoint_pod(
    shim: &Shim,
    pod_id: &str,
    output: &Path,
    container_ids: &[&str],
    options: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    let mut ids: Vec<String> = container_ids.iter().map(|s| s.to_string()).collect();
    if ids.is_empty() {
        ids = running_containers(&mut shim.client().await, pod_id).await;
    }
    checkpoint_pod_exactly(shim, pod_id, output, ids, options).await
}

/// CheckpointPod with `container_ids` sent as given, even empty.
pub async fn checkpoint_pod_exactly(
    shim: &Shim,
    pod_id: &str,
    output: &Path,
    container_ids: Vec<String>,
    options: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(podckpt::api::pod::CheckpointPodRequest {
        pod_sandbox_id: pod_id.into(),
        output_path: output.display().to_string(),
        container_ids,
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    });
    request.set_timeout(Duration::from_secs(60));
    shim.pods().checkpoint_pod(request).await.map(drop)
}

/// Every sandbox `client`'s runtime knows, in any state.
pub async fn sandboxes(client: &mut Runtime) -> Vec<cri::PodSandbox> {
    client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// The ids of the pod's running containers.
pub async fn running_containers(client: &mut Runtime, pod_id: &str) -> Vec<String> {
    pod_containers(client, pod_id)
        .await
        .into_iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| c.id)
        .collect()
}

/// The running test bed, or `None` when this machine has none. Tests that
/// need containerd return early then, unless PODCKPT_REQUIRE_TESTBED=1 (as in
/// CI), where a missing test bed is a failure instead of a skip.
pub struct Testbed {
    /// The CRI socket of the runtime under test (containerd or CRI-O).
    pub socket: PathBuf,
    pub image: String,
    /// runc's `--root` for the runtime's handlers.
    pub runc_root: PathBuf,
}

fn containerd_socket() -> PathBuf {
    PathBuf::from(std::env::var("PODCKPT_TEST_CONTAINERD").unwrap_or_else(|_| DEFAULT_CONTAINERD.into()))
}

fn test_image() -> String {
    std::env::var("PODCKPT_TEST_BUSYBOX_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into())
}

fn reachable(socket: &Path) -> bool {
    nix::unistd::geteuid().is_root() && std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// The test bed's containerd.
pub fn testbed() -> Option<Testbed> {
    testbed_at(containerd_socket(), RUNC_ROOT, "the test bed's containerd")
}

/// The test bed's second containerd, node B: another node to restore on.
pub fn node_b_testbed() -> Option<Testbed> {
    let socket =
        PathBuf::from(std::env::var("PODCKPT_TEST_CONTAINERD_B").unwrap_or_else(|_| DEFAULT_CONTAINERD_B.into()));
    testbed_at(socket, NODE_B_RUNC_ROOT, "the test bed's node B")
}

/// The runtime a benchmark runs on: the test bed's containerd, or its
/// CRI-O when the benchmark was given `--crio`.
pub fn bench_testbed() -> Testbed {
    let tb = if std::env::args().any(|a| a == "--crio") {
        crio_testbed()
    } else {
        testbed()
    };
    tb.expect("the benchmark needs the test bed: contrib/testbed.sh up, as root")
}

/// The test bed's CRI-O, as a test bed whose runtime is CRI-O.
pub fn crio_testbed() -> Option<Testbed> {
    let socket = PathBuf::from(std::env::var("PODCKPT_TEST_CRIO").unwrap_or_else(|_| DEFAULT_CRIO.into()));
    testbed_at(socket, CRIO_RUNC_ROOT, "the test bed's CRI-O")
}

/// The runtime at `socket` (`what`), if this process can reach it.
fn testbed_at(socket: PathBuf, runc_root: &str, what: &str) -> Option<Testbed> {
    if reachable(&socket) {
        return Some(Testbed {
            socket,
            image: test_image(),
            runc_root: runc_root.into(),
        });
    }
    missing(&format!(
        "{what} is not reachable at {} (run `contrib/testbed.sh up` as root)",
        socket.display()
    ));
    None
}

/// Takes every event containerd 1.7 has queued for GetContainerEvents. Its
/// CRI keeps one queue for all callers, filled whether anyone listens or
/// not, so the events of earlier tests (a 64 MiB annotation among them)
/// would otherwise go to the next test that asks, and break a client with
/// gRPC's default 4 or 16 MiB message limit.
///
/// containerd 1.7 never ends that stream itself, and tonic bounds only the
/// wait for its headers, so each round is cut short here, after 300 ms.
pub async fn drain_container_events(tb: &Testbed) {
    let mut client = tb.direct().await;
    loop {
        let mut taken = 0;
        let round = async {
            if let Ok(answer) = client.get_container_events(cri::GetEventsRequest {}).await {
                let mut events = answer.into_inner();
                while let Ok(Some(_)) = events.message().await {
                    taken += 1;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), round).await;
        if taken == 0 {
            return;
        }
    }
}

/// Reports a part of the test bed this machine lacks: a skip, or a failure
/// under PODCKPT_REQUIRE_TESTBED=1.
pub fn missing(why: &str) {
    if std::env::var("PODCKPT_REQUIRE_TESTBED").as_deref() == Ok("1") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
}

impl Testbed {
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs a subcommand of the test bed script (for example `stop-daemon`).
    pub fn script(&self, subcommand: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/testbed.sh");
        let status = Command::new("bash")
            .arg(script)
            .arg(subcommand)
            .status()
            .expect("running testbed.sh");
        assert!(status.success(), "testbed.sh {subcommand} failed: {status}");
    }

    pub async fn direct(&self) -> Runtime {
        runtime_client(&self.socket).await
    }

    /// The runtime's own name for itself: "containerd" or "cri-o".
    pub async fn runtime_name(&self) -> String {
        self.direct()
            .await
            .version(cri::VersionRequest { version: "v1".into() })
            .await
            .expect("Version")
            .into_inner()
            .runtime_name
    }
}

pub use podckpt::cri_client::channel;

pub async fn runtime_client(socket: &Path) -> Runtime {
    podckpt::cri_client::runtime(socket)
}

pub async fn image_client(socket: &Path) -> Images {
    ImageServiceClient::new(channel(socket))
}

/// A podckptd process with its own socket in a temporary directory.
pub struct Shim {
    pub socket: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    grace_seconds: u64,
    /// `--log-level`; with `log_file`, the daemon logs JSON lines there.
    log_level: &'static str,
    log_file: Option<PathBuf>,
    /// The socket its metrics are served on, if they are.
    metrics: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Shim {
    /// A daemon with the default config: its handlers' runc roots are read
    /// from the runtime below, containerd's or CRI-O's.
    pub fn start(tb: &Testbed) -> Self {
        Self::start_with(tb, "", 5)
    }

    /// A daemon reading `toml` as its config file, which gives its calls
    /// `grace_seconds` to finish when it is told to stop.
    pub fn start_with(tb: &Testbed, toml: &str, grace_seconds: u64) -> Self {
        Self::launch(tb, toml, grace_seconds, None, false)
    }

    /// A daemon with the default config that logs at `level`, as JSON lines,
    /// into a file the test reads with `log_lines`.
    pub fn start_logging(tb: &Testbed, level: &'static str) -> Self {
        Self::launch(tb, "", 5, Some(level), false)
    }

    /// A daemon with the default config that serves its metrics on a Unix
    /// socket, read with `metrics`; and so does every daemon `respawn` starts.
    pub fn start_with_metrics(tb: &Testbed) -> Self {
        Self::launch(tb, "", 5, None, true)
    }

    /// A daemon reading `toml` that listens at `socket`, a fixed path that
    /// something else (a DaemonSet's hostPath) names.
    pub fn start_listening_at(tb: &Testbed, toml: &str, socket: &Path) -> Self {
        Self::launch_at(tb, toml, 5, None, false, Some(socket))
    }

    fn launch(tb: &Testbed, toml: &str, grace_seconds: u64, logging: Option<&'static str>, metrics: bool) -> Self {
        Self::launch_at(tb, toml, grace_seconds, logging, metrics, None)
    }

    fn launch_at(
        tb: &Testbed,
        toml: &str,
        grace_seconds: u64,
        logging: Option<&'static str>,
        metrics: bool,
        socket: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = socket.map_or_else(|| dir.path().join("podckpt.sock"), Path::to_owned);
        let metrics = metrics.then(|| dir.path().join("metrics.sock"));
        // The node's own /etc/podckpt/config.toml stays out of the tests.
        let config = dir.path().join("config.toml");
        let mut toml = toml.to_owned();
        if let Some(metrics) = &metrics {
            toml.insert_str(0, &format!("metrics_listen = \"unix://{}\"\n", metrics.display()));
        }
        std::fs::write(&config, toml).expect("writing the shim's config");
        let mut shim = Self {
            socket,
            child: None,
            config,
            grace_seconds,
            log_level: logging.unwrap_or("warn"),
            log_file: logging.map(|_| dir.path().join("podckptd.log")),
            metrics,
            _dir: dir,
        };
        shim.spawn(&tb.endpoint());
        shim
    }

    /// The JSON lines the daemon has logged so far (see `start_logging`).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let path = self.log_file.as_ref().expect("a shim started with start_logging");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn spawn(&mut self, endpoint: &str) {
        let mut command = unit::podckptd();
        command
            .arg("--listen")
            .arg(&self.socket)
            .arg("--runtime-endpoint")
            .arg(endpoint)
            .arg("--config")
            .arg(&self.config)
            .arg("--shutdown-grace-seconds")
            .arg(self.grace_seconds.to_string())
            // Each daemon keeps its own paused-container journal.
            .arg("--state-dir")
            .arg(self.state_dir())
            // Quiet unless RUST_LOG (or the test) asks for more.
            .arg("--log-level")
            .arg(self.log_level)
            .stdin(Stdio::null());
        if let Some(log) = &self.log_file {
            command
                .args(["--log-format", "json"])
                .env_remove("RUST_LOG")
                .stderr(std::fs::File::create(log).expect("the daemon's log file"));
        }
        // A test harness killed outright must not leave a daemon behind that
        // still holds streams open on containerd.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().expect("starting podckptd");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < until,
                "podckptd did not open {}",
                self.socket.display()
            );
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("podckptd exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /metrics` from a daemon started with `start_with_metrics`: the
    /// text, once it answers 200.
    pub async fn metrics(&self) -> Metrics {
        use http_body_util::BodyExt;
        let socket = self.metrics.as_ref().expect("a shim started with start_with_metrics");
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("the metrics socket");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(connection);
        let request = http::Request::get("/metrics")
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.expect("GET /metrics");
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Metrics(String::from_utf8(body.to_vec()).expect("UTF-8 metrics"))
    }

    /// The daemon's `--state-dir`, inside its temporary directory.
    pub fn state_dir(&self) -> PathBuf {
        self._dir.path().join("state")
    }

    /// A client for podckpt's own pod calls.
    pub fn pods(&self) -> PodClient {
        PodClient::new(channel(&self.socket))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("shim running").id()
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("shim running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signalling podckptd");
        child.wait().expect("waiting for podckptd")
    }

    /// SIGKILL, as a crash would; the socket file stays behind.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("shim running");
        child.kill().expect("killing podckptd");
        child.wait().expect("reaping podckptd");
    }

    /// Starts a new daemon on the same socket path.
    pub fn respawn(&mut self, tb: &Testbed) {
        assert!(self.child.is_none(), "the previous daemon is still running");
        self.spawn(&tb.endpoint());
    }

    pub fn restart(&mut self, tb: &Testbed) {
        let status = self.stop();
        assert!(status.success(), "podckptd exited with {status}");
        self.respawn(tb);
    }

    pub async fn client(&self) -> Runtime {
        runtime_client(&self.socket).await
    }

    pub async fn images(&self) -> Images {
        image_client(&self.socket).await
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other test or run uses.
/// A scrape of podckptd's metrics, in the OpenMetrics text format.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample written exactly `series` (name and labels),
    /// or None if there is no such sample.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.parse().expect("a sample's value is a number"))
        })
    }

    /// `value`, which must be there.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("{series} is not in the metrics:\n{}", self.0))
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the kubelet asks for a pod without shareProcessNamespace: network
/// and IPC shared by the pod, a PID namespace per container. (The CRI
/// default, zero, would share PIDs pod-wide.)
pub fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Puts a pod, or a container, in the pod-wide PID namespace
/// (shareProcessNamespace; the CRI's default).
pub fn share_pod_pids(options: Option<&mut cri::NamespaceOption>) {
    options.expect("namespace options").pid = cri::NamespaceMode::Pod as i32;
}

/// The annotation that asks for a pod to be restored from a named
/// checkpoint; written out here so that a change to it in podckpt fails.
pub const RESTORE_FROM: &str = "podckpt.io/restore-from";

/// A Pod manifest up to and including `spec:`: its name, namespace and, if
/// given, the checkpoint it is to be restored from.
pub fn pod_manifest_head(name: &str, namespace: &str, restore_from: Option<&str>) -> String {
    let annotations = restore_from
        .map(|from| format!("  annotations:\n    {RESTORE_FROM}: \"{from}\"\n"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{annotations}spec:\n")
}

/// The namespace options of a pod config made by `pod_config`.
pub fn pod_namespaces(config: &mut cri::PodSandboxConfig) -> Option<&mut cri::NamespaceOption> {
    config
        .linux
        .as_mut()?
        .security_context
        .as_mut()?
        .namespace_options
        .as_mut()
}

/// The namespace options of a container config made by `container_config`.
pub fn container_namespaces(config: &mut cri::ContainerConfig) -> Option<&mut cri::NamespaceOption> {
    config
        .linux
        .as_mut()?
        .security_context
        .as_mut()?
        .namespace_options
        .as_mut()
}

pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: unique("uid"),
            namespace: "podckpt-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: [("podckpt-test".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_config(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            // CRI-O checks signatures against its policy, and then needs
            // the image as the user named it; containerd 1.7 ignores it.
            user_specified_image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: [("podckpt-test-container".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod created for a test. Dropping it stops and removes the sandbox, so a
/// failed assertion leaves nothing behind for the next test.
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    socket: PathBuf,
    log_dir: tempfile::TempDir,
}

impl Pod {
    /// Runs a sandbox through `client`; `socket` is where cleanup goes.
    pub async fn run(client: &mut Runtime, socket: &Path, name: &str) -> Self {
        Self::run_on(client, socket, name, "").await
    }

    /// `run` with a runtime handler of the test bed's containerd.
    pub async fn run_on(client: &mut Runtime, socket: &Path, name: &str, handler: &str) -> Self {
        Self::run_edited(client, socket, name, handler, |_| {}).await
    }

    /// `run_on` with the pod's config changed by `edit` first.
    pub async fn run_edited(
        client: &mut Runtime,
        socket: &Path,
        name: &str,
        handler: &str,
        edit: impl FnOnce(&mut cri::PodSandboxConfig),
    ) -> Self {
        let log_dir = tempfile::tempdir().expect("log dir");
        let mut config = pod_config(&unique(name), log_dir.path());
        edit(&mut config);
        let id = client
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        Self {
            id,
            config,
            socket: socket.to_owned(),
            log_dir,
        }
    }

    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    /// Creates and starts a container running `script`; returns its id.
    pub async fn start_container(&self, client: &mut Runtime, image: &str, name: &str, script: &str) -> String {
        self.start_configured(client, container_config(name, image, script))
            .await
    }

    /// Creates a container of `config` in the pod and starts it; its id.
    pub async fn start_configured(&self, client: &mut Runtime, config: cri::ContainerConfig) -> String {
        let id = self.create_container(client, config).await;
        client
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }

    /// A `COUNTER` named "counter" and a `WRITER` named "writer"; their ids.
    pub async fn start_counter_and_writer(&self, client: &mut Runtime, image: &str) -> (String, String) {
        let counter = self.start_container(client, image, "counter", COUNTER).await;
        let writer = self.start_container(client, image, "writer", WRITER).await;
        (counter, writer)
    }

    /// A container that only sleeps, for calls that need a running one.
    pub async fn start_sleeper(&self, client: &mut Runtime, image: &str, name: &str) -> String {
        self.start_container(client, image, name, "exec sleep 3600").await
    }

    pub async fn create_container(&self, client: &mut Runtime, config: cri::ContainerConfig) -> String {
        client
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id
    }
}

/// Runs `container` (a counter, see `COUNTER`) in a new pod through
/// `handler`, lets it count to `min`, checkpoints the pod into a new
/// directory and removes the pod, as after a node failure or a move.
/// Returns (the directory's holder, the checkpoint, the count just before).
pub async fn checkpointed(
    shim: &Shim,
    handler: &str,
    container: cri::ContainerConfig,
    min: u64,
) -> (tempfile::TempDir, PathBuf, u64) {
    let mut client = shim.client().await;
    let pod = Pod::run_on(&mut client, &shim.socket, "source", handler).await;
    let cid = pod.create_container(&mut client, container).await;
    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    let reached = count_reaches(&client, &cid, min, Duration::from_secs(20)).await;
    assert!(reached, "the counter did not reach {min}");
    let (parent, out) = empty_output("ckpt");
    let before = count(&mut client, &cid).await;
    checkpoint_pod(shim, &pod.id, &out, &[], &[])
        .await
        .expect("CheckpointPod");
    drop(pod);
    (parent, out, before)
}

/// podckptd's handlers for the test bed's crun and podckpt-crun.
pub const CRUN_HANDLERS: &str =
    "[handlers.crun]\nruntime = \"crun\"\n\n[handlers.podckpt-crun]\nruntime = \"crun\"\nrestore = true\n";

/// Each named container's config as the kubelet sends it on restore: the
/// checkpointed process (image, command, args, working directory,
/// environment, credentials) as the checkpoint recorded it, with the test
/// labels and log file around it.
pub fn checkpointed_configs(checkpoint: &Path, names: &[&str]) -> Vec<cri::ContainerConfig> {
    names
        .iter()
        .map(|name| {
            let record = read_process_record(checkpoint, name);
            let mut config = container_config(name, &record.image, "");
            assert!(record.apply_to(&mut config), "no recorded process");
            config
        })
        .collect()
}

/// The process record of container `name` in a checkpoint.
pub fn read_process_record(checkpoint: &Path, name: &str) -> podckpt::archive::ProcessRecord {
    use podckpt::archive::{self, PodOptions};
    let options: PodOptions =
        serde_json::from_slice(&std::fs::read(checkpoint.join(archive::POD_OPTIONS)).expect("reading pod.options"))
            .expect("parsing pod.options");
    let path = checkpoint.join(&options.containers[name]).join(archive::PROCESS_RECORD);
    serde_json::from_slice(&std::fs::read(&path).expect("reading the process record"))
        .expect("parsing the process record")
}

/// A RestorePod request into a new sandbox under a name of its own.
pub struct RestoreCall {
    pub request: podckpt::api::pod::RestorePodRequest,
    pub config: cri::PodSandboxConfig,
    log_dir: tempfile::TempDir,
}

impl RestoreCall {
    pub fn new(checkpoint: &Path, containers: &[cri::ContainerConfig], handler: &str) -> Self {
        use prost::Message;
        let log_dir = tempfile::tempdir().expect("log dir");
        let config = pod_config(&unique("restored"), log_dir.path());
        let request = podckpt::api::pod::RestorePodRequest {
            checkpoint_path: checkpoint.display().to_string(),
            config: config.encode_to_vec(),
            runtime_handler: handler.into(),
            options: Default::default(),
            container_configs: containers.iter().map(|c| c.encode_to_vec()).collect(),
        };
        Self {
            request,
            config,
            log_dir,
        }
    }

    /// The same call with the new sandbox's config changed by `edit`.
    pub fn with_sandbox(mut self, edit: impl FnOnce(&mut cri::PodSandboxConfig)) -> Self {
        use prost::Message;
        edit(&mut self.config);
        self.request.config = self.config.encode_to_vec();
        self
    }

    /// The new pod's name, for looking it up in the runtime.
    pub fn pod_name(&self) -> String {
        self.config.metadata.as_ref().expect("pod metadata").name.clone()
    }

    /// Sends it through the shim, with `timeout` as the call's deadline (or
    /// none); the restored containers are CREATED.
    pub async fn send(
        self,
        shim: &Shim,
        timeout: Option<Duration>,
    ) -> Result<(Pod, Vec<podckpt::api::pod::RestoredContainer>), tonic::Status> {
        install_interposer();
        let mut request = tonic::Request::new(self.request);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let response = shim.pods().restore_pod(request).await?.into_inner();
        let pod = Pod {
            id: response.pod_sandbox_id,
            config: self.config,
            socket: shim.socket.clone(),
            log_dir: self.log_dir,
        };
        Ok((pod, response.restored_containers))
    }
}

impl Pod {
    /// RestorePod through the shim into a new sandbox (handler "podckpt"),
    /// with the checkpointed configs of the named containers.
    pub async fn restore(
        shim: &Shim,
        checkpoint: &Path,
        names: &[&str],
    ) -> Result<(Self, Vec<podckpt::api::pod::RestoredContainer>), tonic::Status> {
        Self::restore_on(shim, checkpoint, names, "podckpt").await
    }

    /// `restore` through a given handler that runs podckpt-runc.
    pub async fn restore_on(
        shim: &Shim,
        checkpoint: &Path,
        names: &[&str],
        handler: &str,
    ) -> Result<(Self, Vec<podckpt::api::pod::RestoredContainer>), tonic::Status> {
        RestoreCall::new(checkpoint, &checkpointed_configs(checkpoint, names), handler)
            .send(shim, Some(Duration::from_secs(60)))
            .await
    }
}

/// RestorePod of a one-container checkpoint, then StartContainer; returns
/// the new pod and the restored container's id.
pub async fn restore_and_start(shim: &Shim, checkpoint: &Path, name: &str) -> (Pod, String) {
    restore_and_start_on(shim, checkpoint, name, "podckpt").await
}

/// `restore_and_start` through a given handler that runs podckpt-runc. The
/// container must have been restored, not started afresh.
pub async fn restore_and_start_on(shim: &Shim, checkpoint: &Path, name: &str, handler: &str) -> (Pod, String) {
    let (pod, restored) = Pod::restore_on(shim, checkpoint, &[name], handler)
        .await
        .expect("RestorePod");
    let cid = restored[0].container_id.clone();
    start_restored(shim, &cid).await;
    (pod, cid)
}

/// StartContainer of a restored container, which must come back restored,
/// not started afresh.
pub async fn start_restored(shim: &Shim, cid: &str) {
    shim.client()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: cid.to_owned(),
        })
        .await
        .expect("StartContainer");
    assert!(was_restored(cid), "container {cid} was started afresh, not restored");
}

/// Whether podckpt-runc restored the container (rather than the runtime
/// starting its config's command): it leaves a record in the runtime's state
/// (for gVisor, beside its waiter).
pub fn was_restored(container_id: &str) -> bool {
    let gvisor = Path::new(RUNSC_ROOT).join("podckpt-waiters");
    [RUNC_ROOT, CRIO_RUNC_ROOT, NODE_B_RUNC_ROOT]
        .iter()
        .map(Path::new)
        .chain([gvisor.as_path()])
        .any(|root| {
            root.join(container_id)
                .join(podckpt::interposer::RESTORE_RECORD)
                .exists()
        })
}

/// Where the test bed's containerd looks for podckpt-runc (its "podckpt"
/// handler); the freshly built one is copied there.
pub const INTERPOSER_PATH: &str = "/run/podckpt-testbed/bin/podckpt-runc";

pub fn install_interposer() {
    let target = Path::new(INTERPOSER_PATH);
    std::fs::create_dir_all(target.parent().unwrap()).expect("interposer dir");
    let staged = target.with_extension("new");
    std::fs::copy(env!("CARGO_BIN_EXE_podckpt-runc"), &staged).expect("copying podckpt-runc");
    std::fs::rename(&staged, target).expect("installing podckpt-runc");
    // Under the names podckpt-crun and podckpt-runsc it wraps crun and
    // runsc (the test bed's "podckpt-crun" and "gvisor" handlers).
    for name in ["podckpt-crun", "podckpt-runsc"] {
        let link = target.with_file_name(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("podckpt-runc", &link).unwrap_or_else(|e| panic!("linking {name}: {e}"));
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_pod_blocking(&self.socket, &self.id);
    }
}

/// A sandbox a test made with raw calls (as a kubelet would), removed
/// through `socket` when the guard goes, however the test ends.
pub struct SandboxGuard {
    pub id: String,
    socket: PathBuf,
}

impl SandboxGuard {
    pub fn new(socket: &Path, id: &str) -> Self {
        Self {
            id: id.to_owned(),
            socket: socket.to_owned(),
        }
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        remove_pod_blocking(&self.socket, &self.id);
    }
}

/// Every container of a pod, in any state.
pub async fn pod_containers(client: &mut Runtime, pod_id: &str) -> Vec<cri::Container> {
    let filter = cri::ContainerFilter {
        pod_sandbox_id: pod_id.into(),
        ..Default::default()
    };
    client
        .list_containers(cri::ListContainersRequest { filter: Some(filter) })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// Stops and removes a pod from a synchronous context (a Drop): Drop cannot
/// await, a thread with its own runtime can.
pub fn remove_pod_blocking(socket: &Path, id: &str) {
    // A test may have stopped the shim it ran the pod through.
    let socket = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => socket.to_owned(),
        Err(_) => containerd_socket(),
    };
    let id = id.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = runtime_client(&socket).await;
            let _ = client
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = client
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        });
    })
    .join()
    .ok();
}

/// Counts up in /tmp/count every 0.2 s; also writes a file and deletes
/// one, so its writable layer has both kinds of change.
pub const COUNTER: &str =
    "echo hi > /tmp/written; rm /bin/yes; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done";

/// Writes a file into its writable layer once, then idles. Not `exec sleep`:
/// a process blocked in nanosleep(2) gets EINTR when CRIU restores it, and
/// busybox sleep exits on EINTR.
pub const WRITER: &str = "echo payload-$$ > /data.txt; while :; do sleep 1; done";

/// The value in a container's /tmp/count (0 if unreadable). The writer
/// truncates before it writes, so an empty read is retried.
/// A counter that also holds `mib` MiB in a shell variable, so that its
/// process memory is that large.
pub fn memory_counter(mib: u64) -> String {
    format!(
        "x=$(head -c {} /dev/zero | tr '\\0' m); i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done",
        mib << 20
    )
}

/// Runs the `podckpt` CLI against `shim` with JSON output, as `uid` (and
/// the group of the same number) when given.
pub fn podckpt_cli(shim: &Shim, uid: Option<u32>, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let endpoint = format!("unix://{}", shim.socket.display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_podckpt"));
    command
        .args(["--runtime-endpoint", &endpoint, "--output", "json"])
        .args(args);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.output().expect("running podckpt")
}

/// An empty directory `name` for a checkpoint, in a temporary parent that
/// lives as long as the returned guard.
pub fn empty_output(name: &str) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join(name);
    std::fs::create_dir(&out).unwrap();
    (parent, out)
}

/// A committed checkpoint in the empty directory `dir` holding `files`
/// (path, bytes), made as podckptd makes one: files first, the manifest of
/// them last, synced; for tests and benchmarks of what reads checkpoints.
pub fn committed_checkpoint(dir: &Path, files: &[(&str, Vec<u8>)]) {
    use podckpt::archive::{Building, Manifest};
    let building = Building::begin(dir);
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let manifest = Manifest::build(dir, "criu-runc", "test", "pod").unwrap();
    building.commit(&serde_json::to_vec(&manifest).unwrap(), true).unwrap();
}

/// Copies a checkpoint directory (files only) to a new place, for tampering.
pub fn copy_dir(from: &Path, name: &str) -> (tempfile::TempDir, PathBuf) {
    let holder = tempfile::tempdir().unwrap();
    let to = holder.path().join(name);
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
    (holder, to)
}

/// The names in `dir`, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The manifest of the checkpoint in `dir`.
pub fn read_manifest(dir: &Path) -> podckpt::archive::Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(podckpt::archive::MANIFEST)).expect("reading the manifest"))
        .expect("parsing the manifest")
}

/// Whether any CRIU process is running on the machine.
pub fn criu_running() -> bool {
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .any(|comm| comm.trim_end() == "criu")
}

pub async fn count(client: &mut Runtime, cid: &str) -> u64 {
    for _ in 0..10 {
        let (out, _) = exec(client, cid, &["cat", "/tmp/count"]).await;
        if let Ok(n) = String::from_utf8_lossy(&out).trim().parse() {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    0
}

/// ContainerStatus of a container that must exist.
pub async fn container_status(client: &mut Runtime, container_id: &str) -> cri::ContainerStatus {
    client
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("container status")
}

/// Whether the container's /tmp/count reaches `at_least` within `limit`.
pub async fn count_reaches(client: &Runtime, cid: &str, at_least: u64, limit: Duration) -> bool {
    eventually(limit, || {
        let mut client = client.clone();
        let cid = cid.to_owned();
        async move { count(&mut client, &cid).await >= at_least }
    })
    .await
}

/// Runs a command in a container and returns (stdout, exit code).
pub async fn exec(client: &mut Runtime, container_id: &str, cmd: &[&str]) -> (Vec<u8>, i32) {
    let request = cri::ExecSyncRequest {
        container_id: container_id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 30,
    };
    let mut attempts = 0;
    loop {
        match client.exec_sync(request.clone()).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                return (resp.stdout, resp.exit_code);
            }
            // runc 1.1 copies itself into the container's state directory
            // with a bind mount before each exec, and that mount now and
            // then fails with EBUSY (seen through CRI-O and containerd
            // alike); another exec works. Nothing of podckpt is involved.
            Err(status) if status.message().contains("could not ensure we are a cloned binary") && attempts < 3 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("ExecSync: {status:?}"),
        }
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The (first) CRIU pages image of the first container folder of a checkpoint.
pub fn pages_image(checkpoint: &Path) -> PathBuf {
    let folder = std::fs::read_dir(checkpoint)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a container folder");
    std::fs::read_dir(folder.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pages-"))
        .expect("a pages image")
}

/// `Dirty:` of /proc/meminfo, in KiB: data written but not yet on disk.
pub fn dirty_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Dirty: in /proc/meminfo")
}

/// The median of a benchmark's rounds.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Where the host sees container `cid`'s root: the rootfs runc was given
/// (its bundle's `rootfs` on containerd, the overlay's mount on CRI-O).
pub fn container_rootfs(tb: &Testbed, cid: &str) -> PathBuf {
    let state = std::fs::read(tb.runc_root.join(cid).join("state.json")).expect("runc's state of the container");
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    PathBuf::from(state["config"]["rootfs"].as_str().expect("a rootfs in runc's state"))
}

/// The pids of the lazy-pages daemon and its supervisor serving
/// `checkpoint`, each with its role ("daemon" or "supervisor").
pub fn lazy_processes(checkpoint: &Path) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let serves = args.iter().any(|a| a.starts_with(checkpoint.to_str().unwrap()));
        let role = match args.get(1).map(String::as_str) {
            Some(podckpt::backend::runc::lazy::DAEMON_COMMAND) => "daemon",
            Some(podckpt::backend::runc::lazy::SUPERVISOR_COMMAND) => "supervisor",
            _ => continue,
        };
        if serves {
            found.push((pid, role.to_owned()));
        }
    }
    found
}

/// The pid of the lazy-pages daemon serving `checkpoint`, if one runs.
pub fn page_daemon(checkpoint: &Path) -> Option<i32> {
    lazy_processes(checkpoint)
        .into_iter()
        .find(|(_, role)| role == "daemon")
        .map(|(pid, _)| pid)
}

/// The page daemon's log of container `cid`, from its bundle (which runc
/// knows on either runtime).
pub fn page_daemon_log(tb: &Testbed, cid: &str) -> String {
    let state = Command::new("runc")
        .arg("--root")
        .arg(&tb.runc_root)
        .args(["state", cid])
        .output()
        .expect("runc state");
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap_or_default();
    let bundle = Path::new(state["bundle"].as_str().unwrap_or_default());
    std::fs::read_to_string(bundle.join("podckpt-restore/lazy-pages.log")).unwrap_or_default()
}

/// A pod `name` of two containers, "a" and "b", each holding 64 MiB and
/// counting (started; the caller waits for the counts it needs).
pub async fn two_counters(client: &mut Runtime, shim: &Shim, tb: &Testbed, name: &str) -> (Pod, String, String) {
    let pod = Pod::run(client, &shim.socket, name).await;
    let a = pod.start_container(client, &tb.image, "a", &memory_counter(64)).await;
    let b = pod.start_container(client, &tb.image, "b", &memory_counter(64)).await;
    (pod, a, b)
}

/// A benchmark's test bed and shim (with `handlers` as podckptd's config),
/// with the freshly built podckpt-runc installed; `None` unless cargo ran
/// the benchmark (`cargo test` runs bench targets without `--bench`).
pub fn bench_shim(handlers: &str) -> Option<(Testbed, Shim)> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let tb = bench_testbed();
    install_interposer();
    let shim = Shim::start_with(&tb, handlers, 5);
    Some((tb, shim))
}

/// What CRIU's own `crit` prints for `args`, which must succeed.
pub fn crit(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new("crit")
        .args(args)
        .output()
        .expect("running crit (python3-pycriu)");
    assert!(
        out.status.success(),
        "crit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CRIU image decoded by `crit`, as JSON.
pub fn crit_decode(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&crit(&["decode".as_ref(), "-i".as_ref(), image.as_os_str()])).expect("crit's JSON")
}

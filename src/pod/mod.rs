//! Pod operations: the `CheckpointPod` and `RestorePod` calls that podckpt
//! answers itself. The tonic service here is a thin wrapper: it checks who
//! is calling and turns domain errors into statuses.

pub(crate) mod capture;
mod checkpoint;
mod checkpoints;
mod contract;
pub mod error;
mod housekeeping;
pub mod journal;
pub mod kept_logs;
pub mod named;
pub mod options;
mod preflight;
mod restore;
mod runtime_roots;
mod sandbox_info;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::api::cri::runtime_service_client::RuntimeServiceClient;
use crate::api::pod::{
    CheckpointPodRequest, CheckpointPodResponse, CreateContainerRequestBytes, CreateContainerResponse,
    RestorePodRequest, RestorePodResponse, RunPodSandboxRequestBytes, RunPodSandboxResponse,
    runtime_service_server::RuntimeService,
};
use crate::api::{CHECKPOINT_POD_PATH, CREATE_CONTAINER_PATH, RESTORE_POD_PATH, RUN_POD_SANDBOX_PATH};
use crate::archive::Seals;
use crate::backend;
use crate::backend::Checkpointer;
use crate::config::{AccessPolicy, DaemonConfig, HandlerConfig};
use crate::metrics::Metrics;
use error::PodError;
use journal::Journal;

pub use restore::answers as restore_answers;

/// The caller's credentials from its Unix socket, attached to each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
}

/// How long reading a handler's runtime root from the runtime may take.
const DISCOVERY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A runtime handler's backend and the settings it was built from.
struct Backend {
    config: HandlerConfig,
    /// The OCI runtime's state directory: the config's, or the runtime's.
    root: std::path::PathBuf,
    checkpointer: Arc<dyn Checkpointer>,
}

#[derive(Clone)]
pub struct PodService {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    runtime: RuntimeServiceClient<Channel>,
    /// The runtime's socket, for what it serves beside the CRI (CRI-O's config).
    runtime_socket: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    handlers: BTreeMap<String, HandlerConfig>,
    /// Each handler's backend, built on first use: its root may have to be
    /// asked of the runtime, which need not be up when podckptd starts.
    backends: tokio::sync::Mutex<BTreeMap<String, Arc<Backend>>>,
    journal: Journal,
    seals: Seals,
    access: AccessPolicy,
    busy: Mutex<HashSet<String>>,
    /// A pruning of seals and tokens is under way (see `housekeeping`).
    tidying: std::sync::atomic::AtomicBool,
    /// Checkpoints and restores under way; see `detached`.
    operations: TaskTracker,
    /// Held while a previous daemon's leftovers are recovered; pod
    /// operations wait for it, ordinary CRI calls do not.
    recovery: Arc<tokio::sync::RwLock<()>>,
    metrics: Metrics,
    /// How fast this node has checkpointed, for the pre-flight estimate.
    rates: preflight::rates::DumpRates,
    /// Checkpoints kept by name: `checkpoint_root/NAMESPACE/NAME`.
    named: named::NamedCheckpoints,
    /// Whether a pod annotated `podckpt.io/restore-from` is restored when
    /// the kubelet creates it.
    restore_from_annotation: bool,
}

fn pod_key(pod: &str) -> String {
    format!("pod:{pod}")
}

fn pod_busy(pod: &str) -> PodError {
    PodError::Busy(format!(
        "pod {pod} is being checkpointed by another call; try again when it has finished"
    ))
}

/// Releases a claim on a pod or an output directory when the operation
/// ends, however it ends.
struct Claim<'a> {
    busy: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl PodService {
    /// `channel` reaches the runtime below; `metrics` counts what the pod
    /// calls do inside (their calls themselves are counted by the router).
    pub fn new(config: &DaemonConfig, channel: Channel, metrics: Metrics) -> Result<Self, PodError> {
        // A backend the config misnames is the operator's mistake, reported
        // at start, not at the first checkpoint.
        for (handler, settings) in &config.handlers {
            backend::for_handler(&settings.backend, &settings.runtime, std::path::Path::new(""))
                .map_err(|why| PodError::InvalidArgument(format!("runtime handler {handler:?}: {why}")))?;
        }
        let journal = Journal::open(&config.state_dir)?;
        let seals = Seals::open(&config.state_dir)?;
        let runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let inner = Inner {
            channel,
            runtime,
            runtime_socket: config.runtime_endpoint.path().to_owned(),
            state_dir: config.state_dir.clone(),
            handlers: config.handlers.clone(),
            backends: Default::default(),
            journal,
            seals,
            access: config.access.clone(),
            busy: Mutex::new(HashSet::new()),
            tidying: std::sync::atomic::AtomicBool::new(false),
            operations: TaskTracker::new(),
            recovery: Arc::new(tokio::sync::RwLock::new(())),
            metrics,
            rates: preflight::rates::DumpRates::open(&config.state_dir),
            named: named::NamedCheckpoints::new(&config.checkpoint_root),
            restore_from_annotation: config.restore_from_annotation,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Resumes, in the background, containers that a previous daemon paused
    /// and did not resume. That may wait for a checkpoint it left running
    /// (up to a minute), so the node's CRI calls are served meanwhile; pod
    /// operations start only after it.
    pub async fn recover(&self) {
        let gate = self.inner.recovery.clone().write_owned().await;
        let journal = self.clone();
        self.inner.operations.spawn(async move {
            match journal.inner.journal.recover().await {
                Ok(recovered) if recovered.entries == 0 => {}
                Ok(recovered) => {
                    journal.inner.metrics.journal_recovered(recovered.entries);
                    info!(
                        entries = recovered.entries,
                        resumed = recovered.resumed,
                        "undid checkpoints a previous podckptd left under way"
                    );
                }
                Err(error) => warn!(%error, "could not read the paused-container journal"),
            }
            drop(gate);
            journal.tidy_in_background();
        });
    }

    /// Waits for the checkpoints and restores under way, so that a daemon
    /// told to stop still resumes what it paused and undoes what it half
    /// created. No new one may start once this is called.
    pub async fn drain(&self) {
        let operations = &self.inner.operations;
        operations.close();
        if !operations.is_empty() {
            info!(operations = operations.len(), "waiting for pod operations to finish");
        }
        operations.wait().await;
    }

    /// Runs a pod operation to its end even if the caller goes away. The
    /// call's own future is dropped when its client disconnects or the
    /// connection is cut at shutdown; dropped half way, a checkpoint would
    /// leave the pod paused and a restore would leave a sandbox behind.
    /// `method` (its gRPC path) names it in the metrics.
    async fn detached<T: Send + 'static>(
        &self,
        method: &str,
        operation: impl Future<Output = Result<T, PodError>> + Send + 'static,
    ) -> Result<T, PodError> {
        if self.inner.operations.is_closed() {
            return Err(PodError::Unavailable("podckptd is shutting down".into()));
        }
        let recovery = self.inner.recovery.clone();
        let in_progress = self.inner.metrics.in_progress(method);
        self.inner
            .operations
            .spawn(async move {
                let _in_progress = in_progress;
                let _recovered = recovery.read_owned().await;
                operation.await
            })
            .await
            .map_err(PodError::task("pod operation"))?
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.inner.runtime.clone()
    }

    fn backend_for(&self, handler: &str) -> Result<&HandlerConfig, PodError> {
        self.inner.handlers.get(handler).ok_or_else(|| {
            PodError::FailedPrecondition(format!(
                "no checkpoint backend is configured for runtime handler {handler:?}; add [handlers.{handler:?}] to the config"
            ))
        })
    }

    /// The backend of a configured handler, with its runtime's state
    /// directory from the config or, where it names none, from the runtime.
    async fn backend(&self, handler: &str, config: &HandlerConfig) -> Result<Arc<Backend>, PodError> {
        let mut backends = self.inner.backends.lock().await;
        if let Some(backend) = backends.get(handler) {
            return Ok(backend.clone());
        }
        let root = match &config.root {
            Some(root) => root.clone(),
            // Every pod call waits on this lock: a runtime that does not
            // answer must not hold them all.
            None => tokio::time::timeout(
                DISCOVERY_LIMIT,
                runtime_roots::discover(self.runtime(), &self.inner.runtime_socket, handler),
            )
            .await
            .unwrap_or_else(|_| Err(format!("the runtime did not answer within {DISCOVERY_LIMIT:?}")))
                .map_err(|why| {
                    PodError::FailedPrecondition(format!(
                        "runtime handler {handler:?}: cannot find its OCI runtime's state directory: {why}; set root in [handlers.{handler:?}] of podckptd's config"
                    ))
                })?,
        };
        info!(handler, root = %root.display(), "checkpoint backend ready");
        let checkpointer = backend::for_handler(&config.backend, &config.runtime, &root).map_err(PodError::Internal)?;
        let backend = Arc::new(Backend {
            config: config.clone(),
            root,
            checkpointer,
        });
        backends.insert(handler.to_owned(), backend.clone());
        Ok(backend)
    }

    fn claim(&self, pod: &str) -> Result<Claim<'_>, PodError> {
        self.claim_key(pod_key(pod)).ok_or_else(|| pod_busy(pod))
    }

    /// Why a checkpoint of `pod` could not start now: another call holds it.
    fn pod_in_use(&self, pod: &str) -> Option<PodError> {
        let busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.contains(&pod_key(pod)).then(|| pod_busy(pod))
    }

    /// Two checkpoints written into one directory would mix their files.
    fn claim_output(&self, output: &std::path::Path) -> Result<Claim<'_>, PodError> {
        self.claim_key(format!("output:{}", output.display())).ok_or_else(|| {
            PodError::Busy(format!(
                "output_path {} is being written by another CheckpointPod call; give each call its own directory",
                output.display()
            ))
        })
    }

    fn claim_key(&self, key: String) -> Option<Claim<'_>> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(key.clone()).then(|| Claim {
            busy: &self.inner.busy,
            key,
        })
    }

    fn authorize<T>(&self, request: &Request<T>, call: &str) -> Result<(), PodError> {
        match request.extensions().get::<PeerCredentials>() {
            Some(peer) if self.inner.access.allows(peer.uid, peer.gid) => Ok(()),
            Some(peer) => Err(PodError::PermissionDenied(format!(
                "{call} is restricted to root and the configured uids and gids; caller uid {} gid {} is not allowed",
                peer.uid, peer.gid
            ))),
            None => Err(PodError::PermissionDenied(format!(
                "{call}: the caller's credentials are unknown"
            ))),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for PodService {
    async fn checkpoint_pod(
        &self,
        request: Request<CheckpointPodRequest>,
    ) -> Result<Response<CheckpointPodResponse>, Status> {
        self.authorize(&request, "CheckpointPod")?;
        self.tidy_in_background();
        let deadline = crate::deadline::grpc_timeout(&request.metadata().clone().into_headers());
        let this = self.clone();
        self.detached(CHECKPOINT_POD_PATH, async move {
            this.checkpoint(deadline, request.into_inner()).await
        })
        .await?;
        Ok(Response::new(CheckpointPodResponse {}))
    }

    async fn restore_pod(&self, request: Request<RestorePodRequest>) -> Result<Response<RestorePodResponse>, Status> {
        self.authorize(&request, "RestorePod")?;
        self.tidy_in_background();
        let deadline = crate::deadline::grpc_timeout(&request.metadata().clone().into_headers());
        let this = self.clone();
        let restored = self
            .detached(RESTORE_POD_PATH, async move {
                this.restore(deadline, request.into_inner()).await
            })
            .await?;
        Ok(Response::new(restored))
    }

    /// Only ever given a pod annotated `podckpt.io/restore-from` (the
    /// router sends every other to the runtime).
    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequestBytes>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        self.authorize(&request, "RunPodSandbox with podckpt.io/restore-from")?;
        self.tidy_in_background();
        let deadline = crate::deadline::grpc_timeout(&request.metadata().clone().into_headers());
        let this = self.clone();
        let created = self
            .detached(RUN_POD_SANDBOX_PATH, async move {
                this.run_annotated_sandbox(deadline, request.into_inner()).await
            })
            .await?;
        Ok(Response::new(created))
    }

    /// As `run_pod_sandbox`: a container of an annotated pod.
    async fn create_container(
        &self,
        request: Request<CreateContainerRequestBytes>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.authorize(&request, "CreateContainer with podckpt.io/restore-from")?;
        let this = self.clone();
        let created = self
            .detached(CREATE_CONTAINER_PATH, async move {
                this.create_annotated_container(request.into_inner()).await
            })
            .await?;
        Ok(Response::new(created))
    }
}

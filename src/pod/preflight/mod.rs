//! The pre-flight check: whether CheckpointPod would succeed on a pod now,
//! with every reason found why not, asked before anything is paused. It
//! reads what the runtime reports and what the backend's engine says of the
//! node; it pauses nothing and writes nothing.

mod features;
pub mod rates;

use std::collections::BTreeSet;
use std::path::Path;

use tonic::{Request, Response, Status};

use super::PodService;
use super::checkpoint::{
    is_ready, is_running, refuse_chosen_criu_options, state_name, validate_output, whole_pod_refusal,
};
use super::error::PodError;
use super::sandbox_info;
use crate::api::cri;
use crate::api::podckpt::{Check, CheckPodRequest, CheckPodResponse, Verdict, preflight_server::Preflight};
use crate::archive::space::{self, human as bytes};
use crate::backend::{CaptureOptions, Checkpointer};

/// The checks found so far.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, verdict: Verdict, name: &str, container: &str, detail: impl Into<String>) {
        self.0.push(Check {
            name: name.to_owned(),
            container_id: container.to_owned(),
            verdict: verdict as i32,
            detail: detail.into(),
        });
    }

    fn pass(&mut self, name: &str, container: &str, detail: impl Into<String>) {
        self.add(Verdict::Pass, name, container, detail);
    }

    fn fail(&mut self, name: &str, container: &str, detail: impl Into<String>) {
        self.add(Verdict::Fail, name, container, detail);
    }

    fn skip(&mut self, name: &str, container: &str, detail: impl Into<String>) {
        self.add(Verdict::Skipped, name, container, detail);
    }
}

/// What a container will take on disk: the memory CRIU writes out and the
/// changes of its writable layer.
#[derive(Default)]
struct Size {
    resident: u64,
    writable_layer: u64,
}

impl PodService {
    pub(super) async fn preflight(&self, request: CheckPodRequest) -> Result<CheckPodResponse, PodError> {
        let pod_id = request.pod_sandbox_id.as_str();
        // Options CheckpointPod would refuse are the caller's mistake too.
        let options = super::options::parse(&request.options)?.capture;
        // An unknown pod is the caller's mistake, not an answer of "no".
        let pod = self.any_pod_status(pod_id).await?;
        let mut checks = Checks::default();
        let mut answer = CheckPodResponse::default();
        if is_ready(&pod) {
            checks.pass("pod-state", "", "ready");
        } else {
            checks.fail(
                "pod-state",
                "",
                "the pod is not ready; only a running pod can be checkpointed",
            );
        }

        let handler = sandbox_info::handler(&pod);
        let backend = async { self.backend(&handler, self.backend_for(&handler)?).await };
        let backend = match backend.await {
            Ok(backend) => Some(backend),
            Err(err) => {
                checks.fail("backend", "", err.to_string());
                None
            }
        };
        if let Some(backend) = &backend {
            let checkpointer = &backend.checkpointer;
            answer.backend = checkpointer.name().to_owned();
            let (version, engine_check) = tokio::join!(checkpointer.engine_version(), checkpointer.engine_check());
            match version {
                Ok(version) => {
                    checks.pass(
                        "backend",
                        "",
                        format!("{} {version} for runtime handler {handler:?}", checkpointer.name()),
                    );
                    answer.engine_version = version;
                }
                Err(err) => checks.fail("backend", "", err.to_string()),
            }
            if let Some(why) = checkpointer.refuse_options(&options) {
                let said = super::options::refused(&options, checkpointer.name(), &why);
                checks.fail("options", "", said);
            }
            match engine_check {
                Ok(Some(said)) => checks.pass("engine-check", "", last_line(&said)),
                Ok(None) => checks.skip(
                    "engine-check",
                    "",
                    format!("{} has no self-check of the node", checkpointer.name()),
                ),
                Err(err) => checks.fail("engine-check", "", err.to_string()),
            }
        }

        let whole_sandbox = backend
            .as_ref()
            .filter(|b| b.checkpointer.captures_sandbox())
            .map(|b| b.checkpointer.name());
        let selected = self
            .check_containers(pod_id, &request.container_ids, whole_sandbox, &mut checks)
            .await?;
        let mut estimated = 0u64;
        if let Some(busy) = self.pod_in_use(pod_id) {
            checks.fail("busy", "", busy.to_string());
        }
        let checkpointer = backend.as_ref().map(|b| b.checkpointer.as_ref());
        for container in &selected {
            let size = self
                .check_container(container, checkpointer, &options, &answer.engine_version, &mut checks)
                .await;
            estimated = estimated
                .saturating_add(size.resident)
                .saturating_add(size.writable_layer);
        }
        answer.container_ids = selected.iter().map(|c| c.id.clone()).collect();
        answer.estimated_bytes = estimated;
        check_output(&request.output_path, &mut checks);
        answer.free_bytes = check_space(&request.output_path, estimated, &mut checks);
        if let Some(backend) = &backend {
            let rate = self.inner.rates.median(backend.checkpointer.name());
            answer.dump_rate_bytes_per_second = rate.unwrap_or_default();
            answer.estimated_seconds = check_time(
                backend.checkpointer.name(),
                estimated,
                rate,
                request.deadline_seconds,
                &mut checks,
            );
        }
        answer.checkpointable = checks.0.iter().all(|c| c.verdict != Verdict::Fail as i32);
        answer.checks = checks.0;
        Ok(answer)
    }

    /// The containers CheckpointPod would be given: those named, or every
    /// running one; each named must be a running container of the pod.
    /// `whole_sandbox`: the backend, if it saves whole sandboxes.
    async fn check_containers(
        &self,
        pod_id: &str,
        wanted: &[String],
        whole_sandbox: Option<&str>,
        checks: &mut Checks,
    ) -> Result<Vec<cri::Container>, PodError> {
        let listed = self.pod_containers(pod_id).await?;
        let running: BTreeSet<String> = listed.iter().filter(|c| is_running(c)).map(|c| c.id.clone()).collect();
        let mut selected = Vec::new();
        if wanted.is_empty() {
            selected.extend(listed.iter().filter(|c| is_running(c)).cloned());
        }
        let mut seen = BTreeSet::new();
        for id in wanted {
            if !seen.insert(id) {
                checks.fail("container-state", id, "named more than once");
                continue;
            }
            match listed.iter().find(|c| &c.id == id) {
                None => checks.fail("container-state", id, format!("not a container of pod {pod_id}")),
                Some(container) if !is_running(container) => checks.fail(
                    "container-state",
                    id,
                    format!(
                        "{}: {}; only a running container can be checkpointed",
                        name(container),
                        state_name(container.state)
                    ),
                ),
                Some(container) => selected.push(container.clone()),
            }
        }
        for container in &selected {
            checks.pass(
                "container-state",
                &container.id,
                format!("{}: {}", name(container), state_name(container.state)),
            );
        }
        if selected.is_empty() && wanted.is_empty() {
            checks.fail("container-state", "", "the pod has no running container to checkpoint");
        }
        if let Some(backend) = whole_sandbox {
            let named: BTreeSet<String> = selected.iter().map(|c| c.id.clone()).collect();
            if let Some(why) = whole_pod_refusal(pod_id, backend, &named, &running) {
                checks.fail("whole-sandbox", "", why);
            }
        }
        Ok(selected)
    }

    /// What the runtime's spec of one container asks for that the backend
    /// cannot carry, and how much it would write. A container that has gone
    /// meanwhile, or that the runtime cannot describe, is a reason of its own.
    async fn check_container(
        &self,
        container: &cri::Container,
        checkpointer: Option<&dyn Checkpointer>,
        options: &CaptureOptions,
        engine_version: &str,
        checks: &mut Checks,
    ) -> Size {
        let id = container.id.as_str();
        match self.verbose_status(id).await {
            Ok((_, info)) => {
                check_spec(id, &info, checks);
                if let Some(checkpointer) = checkpointer {
                    check_processes(id, &info, checkpointer, options, engine_version, checks);
                }
            }
            Err(err) => checks.fail("container-state", id, format!("cannot read its status: {err}")),
        }
        let stats = self
            .runtime()
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.into(),
            })
            .await;
        let stats = match stats {
            Ok(stats) => stats.into_inner().stats.unwrap_or_default(),
            Err(status) => {
                checks.skip(
                    "size",
                    id,
                    format!(
                        "ContainerStats failed ({}); its size is not in the estimate",
                        status.message()
                    ),
                );
                return Size::default();
            }
        };
        let value = |v: Option<cri::UInt64Value>| v.map(|v| v.value).unwrap_or_default();
        let memory = stats.memory.unwrap_or_default();
        // CRIU writes the anonymous memory (rss); a runtime that reports none
        // gives the working set, which counts page cache too: an estimate on
        // the safe side.
        let resident = match value(memory.rss_bytes) {
            0 => value(memory.working_set_bytes),
            rss => rss,
        };
        let writable_layer = value(stats.writable_layer.and_then(|w| w.used_bytes));
        Size {
            resident,
            writable_layer,
        }
    }
}

/// The features of a container's spec, from the runtime's verbose info.
fn check_spec(id: &str, info: &serde_json::Value, checks: &mut Checks) {
    let chosen_criu_config = refuse_chosen_criu_options(id, info).err();
    let spec = &info["runtimeSpec"];
    if spec.is_object() {
        let found = features::unsupported(spec, &features::ThisNode);
        if chosen_criu_config.is_none() && !found.iter().any(|f| f.blocking) {
            checks.pass("features", id, "nothing the backend cannot carry");
        }
        for finding in found {
            if finding.blocking {
                checks.fail(finding.check, id, finding.detail);
            } else {
                checks.skip(finding.check, id, finding.detail);
            }
        }
    } else {
        checks.skip("features", id, "the runtime reported no OCI spec to read");
    }
    if let Some(err) = chosen_criu_config {
        checks.fail("criu-config", id, err.to_string());
    }
}

/// Whether a capture with these options would hold every process of the
/// container and what they hold, as CheckpointPod insists before it pauses.
fn check_processes(
    id: &str,
    info: &serde_json::Value,
    checkpointer: &dyn Checkpointer,
    options: &CaptureOptions,
    engine_version: &str,
    checks: &mut Checks,
) {
    let Some(pid) = info["pid"].as_u64().filter(|pid| *pid > 0) else {
        checks.skip("processes", id, "the runtime reported no process of it");
        return;
    };
    let unfit = checkpointer.unfit(pid as u32, options, engine_version);
    if unfit.is_empty() {
        checks.pass("processes", id, "nothing that a capture would go without or fail on");
    }
    for found in unfit {
        checks.fail(found.check, id, found.reason);
    }
}

/// The directory CheckpointPod would be given: an existing empty one, as it
/// requires; one that does not exist yet is for the caller to make (as
/// `podckpt checkpointp` does).
fn check_output(output: &str, checks: &mut Checks) {
    if output.is_empty() {
        return;
    }
    let path = Path::new(output);
    if path.is_absolute() && !path.exists() {
        checks.skip(
            "output-path",
            "",
            format!("{output} does not exist yet: CheckpointPod needs an existing empty directory (podckpt checkpointp makes it)"),
        );
        return;
    }
    match validate_output(output) {
        Ok(_) => checks.pass("output-path", "", format!("{output} is an empty directory")),
        Err(err) => checks.fail("output-path", "", err.to_string()),
    }
}

/// Free space under `output` against `estimated`; the free bytes, 0 when not checked.
fn check_space(output: &str, estimated: u64, checks: &mut Checks) -> u64 {
    if output.is_empty() {
        checks.skip("space", "", "no output path given");
        return 0;
    }
    let output = Path::new(output);
    if !output.is_absolute() {
        // check_output has said so.
        return 0;
    }
    // The directory need not exist yet: its file system is its nearest
    // existing ancestor's.
    let existing = output.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    match space::available(existing) {
        Ok(available) if available.bytes < estimated => {
            checks.fail(
                "space",
                "",
                format!(
                    "{} has {} free; the checkpoint needs about {} (resident memory plus writable layers)",
                    existing.display(),
                    bytes(available.bytes),
                    bytes(estimated)
                ),
            );
            available.bytes
        }
        Ok(available) => {
            checks.pass(
                "space",
                "",
                format!(
                    "{} has {} free; the checkpoint needs about {}",
                    existing.display(),
                    bytes(available.bytes),
                    bytes(estimated)
                ),
            );
            available.bytes
        }
        Err(error) => {
            checks.fail("space", "", format!("{}: {error}", existing.display()));
            0
        }
    }
}

/// The time `estimated` bytes take at `rate`, against the planned deadline;
/// the estimate in seconds, 0 without a rate.
fn check_time(backend: &str, estimated: u64, rate: Option<u64>, deadline_seconds: u64, checks: &mut Checks) -> f64 {
    let Some(rate) = rate.filter(|r| *r > 0) else {
        checks.skip(
            "time",
            "",
            format!("no checkpoint by {backend} measured on this node yet; the time is not estimated"),
        );
        return 0.0;
    };
    let seconds = estimated as f64 / rate as f64;
    let estimate = format!("about {:.1} s at {}/s, this node's median", seconds, bytes(rate));
    match deadline_seconds {
        0 => checks.skip("time", "", format!("{estimate}; no deadline given to judge it by")),
        limit if seconds > limit as f64 => checks.fail(
            "time",
            "",
            format!("{estimate}: more than the deadline of {limit} s; give CheckpointPod a longer one"),
        ),
        limit => checks.pass("time", "", format!("{estimate}, within the deadline of {limit} s")),
    }
    seconds
}

fn name(container: &cri::Container) -> &str {
    container.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default()
}

/// The last line an engine printed: `criu check` ends with its verdict.
fn last_line(said: &str) -> String {
    said.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("passed")
        .trim()
        .to_owned()
}

#[tonic::async_trait]
impl Preflight for PodService {
    async fn check_pod(&self, request: Request<CheckPodRequest>) -> Result<Response<CheckPodResponse>, Status> {
        self.authorize(&request, "CheckPod")?;
        let deadline = crate::deadline::grpc_timeout(&request.metadata().clone().into_headers());
        let checking = self.preflight(request.into_inner());
        let answer = match deadline {
            Some(limit) => tokio::time::timeout(limit, checking)
                .await
                .unwrap_or(Err(PodError::DeadlineExceeded {
                    limit,
                    undone: "nothing was paused or written",
                }))?,
            None => checking.await?,
        };
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(checks: &Checks) -> Vec<(String, i32)> {
        checks.0.iter().map(|c| (c.name.clone(), c.verdict)).collect()
    }

    #[test]
    fn space_is_judged_on_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let not_yet = dir.path().join("a/b");
        let mut checks = Checks::default();
        let free = check_space(not_yet.to_str().unwrap(), 1, &mut checks);
        assert!(free > 0);
        assert_eq!(verdicts(&checks), [("space".to_owned(), Verdict::Pass as i32)]);
        let mut checks = Checks::default();
        check_space(not_yet.to_str().unwrap(), u64::MAX, &mut checks);
        assert_eq!(checks.0[0].verdict, Verdict::Fail as i32);
        assert!(
            checks.0[0].detail.contains(&dir.path().display().to_string()),
            "{}",
            checks.0[0].detail
        );
        // A relative path is check_output's to report, once.
        let mut checks = Checks::default();
        check_output("relative", &mut checks);
        check_space("relative", 1, &mut checks);
        assert_eq!(verdicts(&checks), [("output-path".to_owned(), Verdict::Fail as i32)]);
    }

    #[test]
    fn time_is_judged_against_the_deadline_only_with_a_rate() {
        let mut checks = Checks::default();
        assert_eq!(check_time("criu-runc", 100 << 20, None, 60, &mut checks), 0.0);
        assert_eq!(
            check_time("criu-runc", 100 << 20, Some(10 << 20), 60, &mut checks),
            10.0
        );
        check_time("criu-runc", 100 << 20, Some(1 << 20), 60, &mut checks);
        check_time("criu-runc", 100 << 20, Some(1 << 20), 0, &mut checks);
        let got: Vec<i32> = checks.0.iter().map(|c| c.verdict).collect();
        let want = [Verdict::Skipped, Verdict::Pass, Verdict::Fail, Verdict::Skipped].map(|v| v as i32);
        assert_eq!(got, want);
        assert!(
            checks.0[2].detail.contains("deadline of 60 s"),
            "{}",
            checks.0[2].detail
        );
    }
}

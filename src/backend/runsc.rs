//! gVisor: `runsc checkpoint` saves a whole sandbox, every container of it
//! stopped together, into one image, with each container's writable layer
//! (it lives in sandbox memory, `--overlay2=root:memory`). Pod consistency
//! comes with it; a subset of the pod's containers cannot be captured.

use std::path::PathBuf;

use super::{
    BackendError, CaptureDirs, CaptureOptions, Checkpointer, ContainerRef, RestoreError, RestoreRequest, Restored,
    command,
};

pub struct RunscCheckpointer {
    binary: PathBuf,
    root: PathBuf,
}

impl RunscCheckpointer {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
        }
    }
}

#[tonic::async_trait]
impl Checkpointer for RunscCheckpointer {
    fn name(&self) -> &str {
        "runsc"
    }

    async fn engine_version(&self) -> Result<String, BackendError> {
        command::version(&self.binary, "runsc version ").await
    }

    // `runsc checkpoint` stops the whole sandbox itself while it saves and
    // lets it go on afterwards; pausing it first would only add a
    // round trip to the freeze.
    async fn pause(&self, _container: &ContainerRef) -> Result<(), BackendError> {
        Ok(())
    }

    async fn resume(&self, _container: &ContainerRef) -> Result<(), BackendError> {
        Ok(())
    }

    async fn capture(
        &self,
        container: &ContainerRef,
        _dirs: &CaptureDirs<'_>,
        _options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "gVisor saves whole sandboxes, not container {} alone",
            container.id
        )))
    }

    /// CRIU's options have no meaning for runsc, which saves the sandbox's
    /// own network stack and file locks whatever is asked.
    fn refuse_options(&self, options: &CaptureOptions) -> Option<String> {
        (*options != CaptureOptions::default()).then(|| {
            "they are CRIU's options, and gVisor saves a sandbox's TCP connections and file locks itself; checkpoint this pod without them".into()
        })
    }

    fn captures_sandbox(&self) -> bool {
        true
    }

    /// runsc refuses an image saved by another runsc version.
    fn restores_only_own_version(&self) -> bool {
        true
    }

    async fn capture_sandbox(
        &self,
        sandbox: &ContainerRef,
        dirs: &CaptureDirs<'_>,
        options: &CaptureOptions,
    ) -> Result<(), BackendError> {
        if let Some(why) = self.refuse_options(options) {
            return Err(BackendError::Unsupported(format!("capture options asked: {why}")));
        }
        let extra = [
            "--image-path".as_ref(),
            dirs.images.as_os_str(),
            "--leave-running".as_ref(),
        ];
        command::run(&self.binary, &self.root, "checkpoint", &sandbox.id, &extra, &[]).await
    }

    /// `runsc restore` of the sandbox's image under this container's id: for
    /// the sandbox (pause) container it starts the sandbox from the image,
    /// for each other container it registers that container with it, matched
    /// by its CRI name. The sandbox runs again once its last container is
    /// registered. The processes' stdio is this process's, which the shim
    /// gave `create`: the container's own.
    fn restore(&self, request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(request.global)
            .arg("restore")
            .arg("--detach")
            .arg("--image-path")
            .arg(request.checkpoint)
            .arg("--bundle")
            .arg(request.bundle);
        if let Some(pid_file) = request.pid_file {
            cmd.arg("--pid-file").arg(pid_file);
        }
        if let Some(console) = request.console_socket {
            cmd.arg("--console-socket").arg(console);
        }
        cmd.arg(request.id);
        let started = std::time::Instant::now();
        let status = cmd
            .status()
            .map_err(|e| RestoreError::Io(format!("running {}: {e}", self.binary.display())))?;
        if !status.success() {
            return Err(RestoreError::Failed {
                runtime: self.binary.clone(),
                status,
                // runsc says why on its stderr, which is the shim's.
                why: String::new(),
            });
        }
        Ok(Restored {
            engine_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_options_are_refused_and_none_is_fine() {
        let runsc = RunscCheckpointer::new("runsc", "/run/runsc");
        assert_eq!(runsc.refuse_options(&CaptureOptions::default()), None);
        let tcp = CaptureOptions {
            tcp_established: true,
            ..Default::default()
        };
        assert!(
            runsc
                .refuse_options(&tcp)
                .is_some_and(|why| why.contains("CRIU's options"))
        );
    }
}

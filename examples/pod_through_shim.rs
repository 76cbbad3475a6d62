//! The main job at this stage: a counter pod run through podckptd on the
//! test bed's containerd, its state read back through the shim, then removed.
//!
//! Usage: pod_through_shim SHIM_SOCKET IMAGE

use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use podckpt::api::cri::{self, runtime_service_client::RuntimeServiceClient};
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(image)) = (args.next(), args.next()) else {
        bail!("usage: pod_through_shim SHIM_SOCKET IMAGE");
    };
    let channel = Endpoint::from_static("http://podckpt.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connecting to podckptd")?;
    let mut rt = RuntimeServiceClient::new(channel);

    let version = rt.version(cri::VersionRequest::default()).await?.into_inner();
    println!(
        "runtime through the shim: {} {}",
        version.runtime_name, version.runtime_version
    );

    let log_dir = std::env::temp_dir().join(format!("podckpt-demo-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "counter".into(),
            uid: format!("demo-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "counter".into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let status = rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.clone(),
        verbose: false,
    });
    let ip = status
        .await?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    println!("pod {} running with IP {ip}", &pod[..12]);

    let result = run_counter(&mut rt, &pod, &pod_config, &image).await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
        .await?;
    std::fs::remove_dir_all(&log_dir).ok();
    println!("pod removed");
    result
}

async fn run_counter(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
) -> anyhow::Result<()> {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "counter".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo count $i; sleep 1; done".into(),
        ],
        log_path: "counter.log".into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    };
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["cat".into(), "/tmp/count".into()],
                timeout: 5,
            })
            .await?
            .into_inner();
        println!("counter = {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    Ok(())
}

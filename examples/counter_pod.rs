//! A minimal CRI client for the demo (no crictl exists on these nodes):
//!
//!   counter_pod run SOCKET IMAGE    starts a counter pod, prints "POD_ID CONTAINER_ID"
//!   counter_pod count SOCKET CID    prints the counter's current value
//!   counter_pod rmp SOCKET POD_ID   stops and removes a pod
//!   counter_pod find SOCKET NAME    waits (up to 90 s) for a ready pod NAME with a running
//!                                   container, prints "POD_ID CONTAINER_ID ATTEMPT"
//!   counter_pod kubelet-pods SOCKET  prints the id of every sandbox a kubelet made

use anyhow::{Context, bail};
use podckpt::api::cri;

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo count $i; sleep 1; done";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(verb), Some(socket)) = (args.first(), args.get(1)) else {
        bail!(
            "usage: counter_pod run SOCKET IMAGE [HANDLER] | count SOCKET CONTAINER | rmp SOCKET POD | find SOCKET NAME"
        );
    };
    let mut rt = podckpt::cri_client::runtime(std::path::Path::new(socket));
    if verb == "kubelet-pods" {
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        for pod in pods
            .iter()
            .filter(|p| p.annotations.contains_key("kubernetes.io/config.source"))
        {
            println!("{}", pod.id);
        }
        return Ok(());
    }
    let arg = args.get(2).context("missing argument")?;
    match verb.as_str() {
        "run" => {
            let uid = format!("demo-{}", std::process::id());
            let log_dir = format!("/var/log/pods/podckpt-demo_counter_{uid}");
            std::fs::create_dir_all(&log_dir)?;
            // The kubelet's namespaces: PIDs per container, so CRIU can give them back.
            let namespaces = cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            };
            let pod_config = cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "counter".into(),
                    uid,
                    namespace: "podckpt-demo".into(),
                    attempt: 0,
                }),
                hostname: "counter".into(),
                log_directory: log_dir,
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(namespaces.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let request = cri::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: args.get(3).cloned().unwrap_or_default(),
            };
            let pod = rt.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
            let config = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "counter".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: arg.clone(),
                    // CRI-O verifies it against its signature policy.
                    user_specified_image: arg.clone(),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into(), "-c".into(), COUNTER.into()],
                log_path: "counter.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: Some(namespaces),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let request = cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(pod_config),
            };
            let cid = rt.create_container(request).await?.into_inner().container_id;
            rt.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await?;
            println!("{pod} {cid}");
        }
        "count" => {
            let request = cri::ExecSyncRequest {
                container_id: arg.clone(),
                cmd: vec!["cat".into(), "/tmp/count".into()],
                timeout: 5,
            };
            let out = rt.exec_sync(request).await?.into_inner();
            println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        }
        "rmp" => {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: arg.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: arg.clone(),
            })
            .await?;
        }
        "find" => {
            let started = std::time::Instant::now();
            loop {
                let pods = rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await?
                    .into_inner()
                    .items;
                let ready = pods.iter().filter(|p| {
                    p.state == cri::PodSandboxState::SandboxReady as i32
                        && p.metadata.as_ref().is_some_and(|m| &m.name == arg)
                });
                for pod in ready {
                    let filter = cri::ContainerFilter {
                        pod_sandbox_id: pod.id.clone(),
                        state: Some(cri::ContainerStateValue {
                            state: cri::ContainerState::ContainerRunning as i32,
                        }),
                        ..Default::default()
                    };
                    let request = cri::ListContainersRequest { filter: Some(filter) };
                    if let Some(c) = rt.list_containers(request).await?.into_inner().containers.first() {
                        let attempt = c.metadata.as_ref().map_or(0, |m| m.attempt);
                        println!("{} {} {attempt}", pod.id, c.id);
                        return Ok(());
                    }
                }
                if started.elapsed() > std::time::Duration::from_secs(90) {
                    bail!("no ready pod {arg} with a running container");
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        other => bail!("unknown verb {other}"),
    }
    Ok(())
}

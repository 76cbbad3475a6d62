//! The `podckpt` command line against the shim: checkpointp, inspectcp and
//! restorep --start, as an operator would run them.

use std::process::Output;
use std::time::Duration;

use crate::support::{self, Pod, Shim};

fn podckpt(shim: &Shim, args: &[&str]) -> Output {
    support::podckpt_cli(shim, None, args)
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "podckpt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

on_each_runtime!(checkpointp_inspectcp_restorep_through_the_cli);

async fn checkpointp_inspectcp_restorep_through_the_cli(tb: support::Testbed) {
    support::install_interposer();
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "cli").await;
    let script = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done";
    let cid = pod.start_container(&mut client, &tb.image, "counter", script).await;
    assert!(support::count_reaches(&client, &cid, 5, Duration::from_secs(10)).await);

    // Read before the checkpoint: the pod runs on after it, so a later read
    // may be ahead of what the checkpoint holds.
    let before = support::count(&mut client, &cid).await;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("from-cli");
    // A unique prefix of the pod id is enough, as with crictl.
    let report = json(&podckpt(
        &shim,
        &["checkpointp", &pod.id[..12], "-o", dir.to_str().unwrap()],
    ));
    assert_eq!(report["pod_sandbox_id"], pod.id.as_str());
    assert!(report["bytes"].as_u64().unwrap() > 0);

    let inspected = json(&podckpt(&shim, &["inspectcp", dir.to_str().unwrap()]));
    assert_eq!(inspected["checksums_ok"], true);
    assert_eq!(inspected["engine_version"], "4.1.1");
    assert_eq!(inspected["containers"][0]["name"], "counter");
    assert_eq!(inspected["containers"][0]["id"], cid.as_str());

    drop(pod);
    let restored = json(&podckpt(
        &shim,
        &["restorep", dir.to_str().unwrap(), "--name", "cli-restored", "--start"],
    ));
    let new_pod = restored["pod_sandbox_id"].as_str().unwrap().to_owned();
    let _cleanup = PodGuard {
        socket: shim.socket.clone(),
        id: new_pod.clone(),
    };
    let new_cid = restored["containers"][0]["container_id"].as_str().unwrap().to_owned();
    assert_eq!(restored["containers"][0]["name"], "counter");
    assert!(
        support::count(&mut client, &new_cid).await >= before,
        "the restored counter started over"
    );

    // A tampered checkpoint: inspectcp says so and exits non-zero.
    let folder = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::write(folder.join("dump.log"), b"tampered").unwrap();
    let out = podckpt(&shim, &["inspectcp", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checksums_ok"], false);
}

/// Removes a pod the CLI created, when the test ends however it ends.
struct PodGuard {
    socket: std::path::PathBuf,
    id: String,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        support::remove_pod_blocking(&self.socket, &self.id);
        // restorep made the pod's log directory, as the kubelet would have.
        if let Ok(entries) = std::fs::read_dir("/var/log/pods") {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("podckpt-test_cli-restored_")
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

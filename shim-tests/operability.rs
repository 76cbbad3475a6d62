//! What an operator sees of podckptd on a node: every call's status in its
//! log.

use std::time::Duration;

use podckpt::api::cri;
use serde_json::Value;
use tonic::Code;

use crate::support::{self, Shim, Testbed, checkpoint_pod_exactly, eventually};

on_each_runtime!(every_call_is_logged_with_its_status);

/// The first line logged with these fields, if any.
fn line_with(shim: &Shim, fields: &[(&str, &str)]) -> Option<Value> {
    shim.log_lines()
        .into_iter()
        .find(|line| fields.iter().all(|(k, v)| line[*k].as_str() == Some(*v)))
}

async fn every_call_is_logged_with_its_status(tb: Testbed) {
    let shim = Shim::start_logging(&tb, "podckpt=debug");
    let mut client = shim.client().await;
    let missing = client
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .expect_err("an unknown container");
    assert_eq!(missing.code(), Code::NotFound);
    client.version(cri::VersionRequest::default()).await.expect("Version");
    let (_parent, out) = support::empty_output("ckpt");
    let refused = checkpoint_pod_exactly(&shim, "no-such-pod", &out, vec!["c".into()], &[])
        .await
        .expect_err("an unknown pod");
    assert_eq!(refused.code(), Code::NotFound);

    // The line is written once the answer is out.
    let logged = eventually(Duration::from_secs(5), || async {
        line_with(&shim, &[("message", "pod call failed")]).is_some()
    })
    .await;
    assert!(logged, "no pod call in the log: {:?}", shim.log_lines());

    let passed = line_with(
        &shim,
        &[
            ("method", "/runtime.v1.RuntimeService/ContainerStatus"),
            ("code", "NOT_FOUND"),
            ("level", "DEBUG"),
        ],
    )
    .unwrap_or_else(|| panic!("the passed-through NOT_FOUND is not in the log: {:?}", shim.log_lines()));
    assert!(passed["elapsed_us"].as_u64().is_some(), "{passed}");
    assert!(
        line_with(
            &shim,
            &[("method", "/runtime.v1.RuntimeService/Version"), ("code", "OK")]
        )
        .is_some(),
        "{:?}",
        shim.log_lines()
    );
    let failed = line_with(&shim, &[("message", "pod call failed"), ("code", "NOT_FOUND")])
        .unwrap_or_else(|| panic!("the failed pod call is not logged at info: {:?}", shim.log_lines()));
    assert_eq!(failed["level"], "INFO");
    assert!(
        failed["method"].as_str().unwrap().ends_with("/CheckpointPod"),
        "{failed}"
    );
    assert!(
        failed["grpc_message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-pod")),
        "the status message is logged: {failed}"
    );
}

//! The pass-through as three real gRPC stacks see it: tonic, grpc-go (the
//! kubelet's and crictl's stack) and grpc C-core (Python grpcio, with its
//! default channel options), on containerd and on CRI-O. Each case is
//! called through podckptd and directly against the runtime, and both must give the same status code,
//! the same message and the same response bytes, except where a case says
//! why not. Each side is one long-lived client, one channel, running the
//! whole table twice: the second round is sent with the HPACK dynamic table
//! that the first one filled, as a kubelet's calls are.

use std::time::Duration;

use podckpt::api::cri;
use prost::Message;
use tonic::Code;

use crate::support::interop::{CallResult, Client, Stack};
use crate::support::{Pod, Testbed};

on_each_runtime!(
    tonic_calls_pass_through_unchanged,
    grpc_go_calls_pass_through_unchanged,
    grpcio_calls_pass_through_unchanged,
);

async fn tonic_calls_pass_through_unchanged(tb: Testbed) {
    same_answers_as_the_runtime(Stack::Tonic, tb).await;
}

async fn grpc_go_calls_pass_through_unchanged(tb: Testbed) {
    same_answers_as_the_runtime(Stack::Go, tb).await;
}

async fn grpcio_calls_pass_through_unchanged(tb: Testbed) {
    same_answers_as_the_runtime(Stack::Python, tb).await;
}

async fn same_answers_as_the_runtime(stack: Stack, tb: Testbed) {
    let Some(mut direct) = Client::start(stack, &tb.socket) else {
        return;
    };
    let shim = crate::support::Shim::start(&tb);
    let mut via_shim = Client::start(stack, &shim.socket).expect("the client started once already");
    let fixture = Fixture::new(&tb).await;
    let runtime_name = tb.runtime_name().await;
    let cases = cases(&tb, &fixture, &runtime_name);
    crate::support::drain_container_events(&tb).await;

    let mut failures = Vec::new();
    for round in 1..=2 {
        for case in &cases {
            if let Err(why) = case.run_pair(&mut via_shim, &mut direct).await {
                failures.push(format!("round {round}, {}: {why}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{stack:?}: {} of {} calls through podckptd did not answer as {runtime_name}:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}

/// A pod with one running container, made directly on containerd, so that
/// the list calls have something of the test's own to list.
struct Fixture {
    pod: Pod,
    pod_name: String,
    container_id: String,
}

impl Fixture {
    async fn new(tb: &Testbed) -> Self {
        let mut client = tb.direct().await;
        let pod = Pod::run(&mut client, &tb.socket, "interop").await;
        let container_id = pod.start_sleeper(&mut client, &tb.image, "sleeper").await;
        let pod_name = pod.config.metadata.as_ref().expect("pod metadata").name.clone();
        Self {
            pod,
            pod_name,
            container_id,
        }
    }
}

fn runtime(method: &str) -> String {
    format!("/runtime.v1.RuntimeService/{method}")
}

fn image_service(method: &str) -> String {
    format!("/runtime.v1.ImageService/{method}")
}

/// containerd's own image API, which takes its namespace from the metadata.
const CONTAINERD_IMAGES_GET: &str = "/containerd.services.images.v1.Images/Get";

/// containerd's `GetImageRequest`: podckpt has no schema for containerd's
/// own API, and one field needs none.
#[derive(Clone, PartialEq, prost::Message)]
struct GetImageRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// What of two answers to the same call must be equal.
#[derive(Clone, Copy, Debug)]
enum Same {
    /// Code, message and every response byte.
    All,
    /// Code, message and the images, in any order: containerd lists its
    /// images from a Go map, so two lists come in different orders.
    ImagesInAnyOrder,
    /// Code, message and the size of each response: containerd's own API
    /// encodes Go maps (an image's descriptor annotations) in random order.
    Sizes,
    /// Only that both calls ended by their deadline; neither messages nor
    /// responses need agree. The server enforces a deadline, and so do the
    /// clients: whichever fires first writes the status. grpc-go says
    /// DEADLINE_EXCEEDED "context deadline exceeded" on either side, C-core
    /// "Deadline Exceeded" or "Stream removed (Deadline Exceeded)", and
    /// tonic's channel reports its own enforcement as CANCELLED "Timeout
    /// expired", so for tonic even the code depends on who was first. CRI-O's
    /// grpc-go resets the stream with CANCEL at the deadline, which clients
    /// report as CANCELLED in words of their own.
    /// Events already queued in containerd (the fixture's own) go to
    /// whichever GetContainerEvents call comes first.
    DeadlinePassed,
    /// Code, message and the decoded responses, as the function compares
    /// them: CRI-O encodes Go maps (labels, runtime handlers) in random
    /// order, so equal answers differ in their bytes.
    Decoded(fn(&CallResult, &CallResult) -> bool),
}

struct Case {
    name: &'static str,
    method: String,
    request: Vec<u8>,
    timeout: Option<Duration>,
    metadata: &'static [(&'static str, &'static str)],
    stream: bool,
    /// What containerd answers (any deadline outcome for
    /// `Same::DeadlinePassed`); checked on the direct call, so that a case
    /// cannot pass by both sides failing the same wrong way.
    expect: Code,
    /// Bytes containerd's answer must hold (an id, a name), so that a case
    /// cannot pass by both sides listing nothing.
    mentions: Option<String>,
    same: Same,
}

/// A unary case with a 10 s deadline, compared byte for byte.
fn case(name: &'static str, method: impl Into<String>, request: impl Message, expect: Code) -> Case {
    Case {
        name,
        method: method.into(),
        request: request.encode_to_vec(),
        timeout: Some(Duration::from_secs(10)),
        metadata: &[],
        stream: false,
        expect,
        mentions: None,
        same: Same::All,
    }
}

impl Case {
    fn timeout(self, timeout: Option<Duration>) -> Self {
        Self { timeout, ..self }
    }

    fn metadata(self, metadata: &'static [(&'static str, &'static str)]) -> Self {
        Self { metadata, ..self }
    }

    fn streaming(self) -> Self {
        Self { stream: true, ..self }
    }

    fn mentions(self, text: &str) -> Self {
        Self {
            mentions: Some(text.to_owned()),
            ..self
        }
    }

    fn same(self, same: Same) -> Self {
        Self { same, ..self }
    }

    async fn run(&self, client: &mut Client) -> CallResult {
        if self.stream {
            client
                .server_stream(&self.method, &self.request, self.timeout, self.metadata, 0)
                .await
        } else {
            client
                .call(&self.method, &self.request, self.timeout, self.metadata)
                .await
        }
    }

    /// Calls through podckptd, then directly, and compares. The runtime
    /// itself fails now and then on a loaded node, whoever calls it: runc
    /// 1.1's exec has answered "could not ensure we are a cloned binary:
    /// Device or resource busy" when sealing its memfd copy raced the
    /// kernel. A pair in which either side did not get the answer the case
    /// asks of the runtime proves nothing about podckptd, so it is run
    /// again, up to `ATTEMPTS` in all, and said on stderr. A pair in which
    /// both sides got it but differ fails at once.
    async fn run_pair(&self, via_shim: &mut Client, direct: &mut Client) -> Result<(), String> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let ours = self.run(via_shim).await;
            let theirs = self.run(direct).await;
            let verdict = self.compare(&ours, &theirs);
            let runtime_failed = !self.expected(&ours) || !self.expected(&theirs);
            if verdict.is_ok() || !runtime_failed || attempt == ATTEMPTS {
                return verdict;
            }
            eprintln!(
                "{}: attempt {attempt} of {ATTEMPTS} is void, the runtime failed: {}",
                self.name,
                verdict.unwrap_err()
            );
            attempt += 1;
        }
    }

    /// Checks containerd's answer (`theirs`), then ours against it.
    fn compare(&self, ours: &CallResult, theirs: &CallResult) -> Result<(), String> {
        let both = format!("through podckptd {ours:?}, directly {theirs:?}");
        if !self.expected(theirs) {
            return Err(format!("the runtime did not answer {:?}: {both}", self.expect));
        }
        if let Some(text) = &self.mentions {
            let all: Vec<u8> = theirs.responses.concat();
            if !all.windows(text.len()).any(|w| w == text.as_bytes()) {
                return Err(format!("the runtime's answer does not mention {text:?}: {both}"));
            }
        }
        let same = match self.same {
            Same::All => ours == theirs,
            Same::ImagesInAnyOrder => {
                (ours.code, &ours.message) == (theirs.code, &theirs.message) && images(ours) == images(theirs)
            }
            Same::Sizes => (ours.code, &ours.message, sizes(ours)) == (theirs.code, &theirs.message, sizes(theirs)),
            Same::DeadlinePassed => deadline_passed(ours),
            Same::Decoded(same) => (ours.code, &ours.message) == (theirs.code, &theirs.message) && same(ours, theirs),
        };
        if same {
            Ok(())
        } else {
            Err(format!("{both} (compared: {:?})", self.same))
        }
    }

    fn expected(&self, answer: &CallResult) -> bool {
        match self.same {
            Same::DeadlinePassed => deadline_passed(answer),
            _ => answer.code() == self.expect,
        }
    }
}

/// How a call that ran out of time ends: DEADLINE_EXCEEDED, or CANCELLED
/// where the client's channel enforced the deadline (tonic: "Timeout
/// expired"), or where a grpc-go server reset the stream with CANCEL when
/// the deadline passed (CRI-O's does; tonic then says "h2 protocol error").
fn deadline_passed(result: &CallResult) -> bool {
    matches!(result.code(), Code::DeadlineExceeded | Code::Cancelled)
}

fn images(result: &CallResult) -> Vec<Vec<cri::Image>> {
    result
        .responses
        .iter()
        .map(|r| {
            let mut images = cri::ListImagesResponse::decode(r.as_slice())
                .expect("ListImagesResponse")
                .images;
            images.sort_by(|a, b| a.id.cmp(&b.id));
            images
        })
        .collect()
}

/// Each response decoded as `M`, then put in a canonical order by `order`.
fn decoded<M: Message + Default>(result: &CallResult, order: fn(&mut M)) -> Vec<M> {
    result
        .responses
        .iter()
        .map(|r| {
            let mut message = M::decode(r.as_slice()).expect("a response of the call's type");
            order(&mut message);
            message
        })
        .collect()
}

/// Sandboxes compared as messages: their labels and annotations are maps.
fn same_sandboxes(ours: &CallResult, theirs: &CallResult) -> bool {
    decoded::<cri::ListPodSandboxResponse>(ours, |_| {}) == decoded(theirs, |_| {})
}

/// Statuses compared with their runtime handlers in name order.
fn same_status(ours: &CallResult, theirs: &CallResult) -> bool {
    let order = |m: &mut cri::StatusResponse| m.runtime_handlers.sort_by(|a, b| a.name.cmp(&b.name));
    decoded::<cri::StatusResponse>(ours, order) == decoded(theirs, order)
}

fn sizes(result: &CallResult) -> Vec<usize> {
    result.responses.iter().map(Vec::len).collect()
}

/// The cases for `runtime` (its Version's name): the CRI's own, and on
/// containerd its own API too.
fn cases(tb: &Testbed, f: &Fixture, runtime_name: &str) -> Vec<Case> {
    let ok = Code::Ok;
    let containerd = runtime_name == "containerd";
    let mut cases = vec![
        // No deadline at all, as the stacks send when none is set.
        case(
            "Version",
            runtime("Version"),
            cri::VersionRequest { version: "v1".into() },
            ok,
        )
        .timeout(None)
        .mentions(runtime_name),
        case("Status", runtime("Status"), cri::StatusRequest { verbose: false }, ok)
            .mentions("RuntimeReady")
            .same(if containerd {
                Same::All
            } else {
                Same::Decoded(same_status)
            }),
        // Filtered to the test's own pod: other pods may come and go.
        case(
            "ListPodSandbox",
            runtime("ListPodSandbox"),
            cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: [("podckpt-test".to_string(), f.pod_name.clone())].into(),
                    ..Default::default()
                }),
            },
            ok,
        )
        .mentions(&f.pod.id)
        .same(if containerd {
            Same::All
        } else {
            Same::Decoded(same_sandboxes)
        }),
        case(
            "ListContainers",
            runtime("ListContainers"),
            cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: f.pod.id.clone(),
                    ..Default::default()
                }),
            },
            ok,
        )
        .mentions(&f.container_id),
        case(
            "ListImages",
            image_service("ListImages"),
            cri::ListImagesRequest { filter: None },
            ok,
        )
        .mentions(&tb.image)
        .same(Same::ImagesInAnyOrder),
        case(
            "ImageStatus",
            image_service("ImageStatus"),
            cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: tb.image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            },
            ok,
        )
        .mentions(&tb.image),
        case(
            "PodSandboxStatus of an unknown pod",
            runtime("PodSandboxStatus"),
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: "no-such-pod".into(),
                verbose: false,
            },
            Code::NotFound,
        ),
        case(
            "ContainerStatus of an unknown container",
            runtime("ContainerStatus"),
            cri::ContainerStatusRequest {
                container_id: "no-such-container".into(),
                verbose: false,
            },
            Code::NotFound,
        ),
        // containerd 1.7 does not implement it; CRI-O cannot write there.
        case(
            "CheckpointContainer",
            runtime("CheckpointContainer"),
            cri::CheckpointContainerRequest {
                container_id: f.container_id.clone(),
                location: "/nonexistent/checkpoint.tar".into(),
                timeout: 0,
            },
            if containerd { Code::Unimplemented } else { Code::Unknown },
        ),
        case("an unknown method", runtime("NoSuchMethod"), (), Code::Unimplemented),
        case(
            "ExecSync past its deadline",
            runtime("ExecSync"),
            cri::ExecSyncRequest {
                container_id: f.container_id.clone(),
                cmd: vec!["sleep".into(), "5".into()],
                timeout: 0,
            },
            Code::DeadlineExceeded,
        )
        .timeout(Some(Duration::from_millis(500)))
        .same(Same::DeadlinePassed),
        // A server stream that never ends by itself on containerd; CRI-O
        // without its pod events (`enable_pod_events`) ends it at once.
        case(
            "GetContainerEvents past its deadline",
            runtime("GetContainerEvents"),
            cri::GetEventsRequest {},
            if containerd { Code::DeadlineExceeded } else { ok },
        )
        .streaming()
        .timeout(Some(Duration::from_millis(300)))
        .same(if containerd { Same::DeadlinePassed } else { Same::All }),
        // Metadata the runtime ignores must not change its answer.
        case(
            "Version with metadata of the caller",
            runtime("Version"),
            cri::VersionRequest { version: "v1".into() },
            ok,
        )
        .metadata(&[("x-podckpt-interop", "a value"), ("x-request-id", "42")]),
    ];
    if !containerd {
        return cases;
    }
    cases.extend([
        // containerd's own API reads its namespace from the request
        // metadata: each answer below depends on it arriving intact.
        case(
            "Images/Get in namespace k8s.io",
            CONTAINERD_IMAGES_GET,
            GetImageRequest { name: tb.image.clone() },
            ok,
        )
        .metadata(&[("containerd-namespace", "k8s.io")])
        .mentions(&tb.image)
        .same(Same::Sizes),
        case(
            "Images/Get in namespace default",
            CONTAINERD_IMAGES_GET,
            GetImageRequest { name: tb.image.clone() },
            Code::NotFound,
        )
        .metadata(&[("containerd-namespace", "default")]),
        case(
            "Images/Get without a namespace",
            CONTAINERD_IMAGES_GET,
            GetImageRequest { name: tb.image.clone() },
            Code::FailedPrecondition,
        ),
    ]);
    cases
}

//! Real gRPC client stacks, to call podckptd and containerd the way real
//! callers do: tonic (in this process), grpc-go (the stack of the kubelet,
//! crictl and critest) and grpc C-core (Python grpcio, default channel
//! options). The last two are the programs in contrib/interop/, which
//! `contrib/testbed.sh install` builds: each holds one channel for its whole
//! life, as a kubelet does, and answers one JSON line per call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use podckpt::api::pod;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tonic::metadata::MetadataKey;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::raw::RawCodec;

/// Where `contrib/testbed.sh install` puts the clients when
/// PODCKPT_TESTBED_DIR is not set (`testbed.sh env` prints the paths).
const DEFAULT_GO: &str = "/var/lib/podckpt-testbed/interop/go/podckpt-interop";
const DEFAULT_PYTHON: &str = "/var/lib/podckpt-testbed/interop/venv/bin/python";
const PYTHON_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/interop/python/podckpt_interop.py");

/// How long past its own deadline (or at all, without one) a call may take
/// before the test gives up on it instead of hanging.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Tonic,
    /// grpc-go, dialled as the kubelet's CRI client dials.
    Go,
    /// grpc C-core through Python's grpcio.
    Python,
}

impl Stack {
    pub const ALL: [Stack; 3] = [Stack::Tonic, Stack::Go, Stack::Python];
}

/// What a stack reported of one call.
#[derive(Clone, PartialEq, Eq)]
pub struct CallResult {
    /// The gRPC status code; 0 is OK.
    pub code: i32,
    /// The status message, exactly as the stack reports it.
    pub message: String,
    /// Every response message, undecoded.
    pub responses: Vec<Vec<u8>>,
}

impl CallResult {
    pub fn code(&self) -> Code {
        Code::from_i32(self.code)
    }

    fn from_status(status: &Status, responses: Vec<Vec<u8>>) -> Self {
        Self {
            code: status.code() as i32,
            message: status.message().to_owned(),
            responses,
        }
    }

    fn ok(responses: Vec<Vec<u8>>) -> Self {
        Self {
            code: 0,
            message: String::new(),
            responses,
        }
    }
}

/// Sizes rather than bytes: a failed assertion stays readable.
impl fmt::Debug for CallResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<String> = self.responses.iter().map(|r| format!("{} bytes", r.len())).collect();
        write!(
            f,
            "{{ code: {} ({:?}), message: {:?}, responses: [{}] }}",
            self.code,
            self.code(),
            self.message,
            sizes.join(", ")
        )
    }
}

/// One call, as every stack takes it.
struct Call<'a> {
    method: &'a str,
    request: &'a [u8],
    timeout: Option<Duration>,
    metadata: &'a [(&'a str, &'a str)],
    /// `Some(max)` for a server-streaming call: read until it ends, or until
    /// `max` messages (when > 0) have come, then cancel.
    stream: Option<usize>,
}

/// A client of one stack with one channel to one socket.
pub struct Client {
    pub stack: Stack,
    transport: Transport,
}

enum Transport {
    Tonic(Channel),
    // Boxed: a client process with its pipes is far larger than a channel.
    Process(Box<Process>),
}

impl Client {
    /// A client of `stack` for `socket`, or `None` when this machine lacks
    /// that stack's client: then the test skips, or fails under
    /// PODCKPT_REQUIRE_TESTBED=1, as for a missing test bed.
    pub fn start(stack: Stack, socket: &Path) -> Option<Self> {
        let transport = match stack {
            Stack::Tonic => Transport::Tonic(super::channel(socket)),
            Stack::Go | Stack::Python => Transport::Process(Box::new(Process::spawn(stack, socket)?)),
        };
        Some(Self { stack, transport })
    }

    /// A unary call. `timeout` `None` sends no deadline at all.
    pub async fn call(
        &mut self,
        method: &str,
        request: &[u8],
        timeout: Option<Duration>,
        metadata: &[(&str, &str)],
    ) -> CallResult {
        self.run(&Call {
            method,
            request,
            timeout,
            metadata,
            stream: None,
        })
        .await
    }

    /// A server-streaming call, read until it ends or, when `max_messages`
    /// is above 0, until that many messages have come; then the client
    /// cancels it, and the result carries CANCELLED.
    pub async fn server_stream(
        &mut self,
        method: &str,
        request: &[u8],
        timeout: Option<Duration>,
        metadata: &[(&str, &str)],
        max_messages: usize,
    ) -> CallResult {
        self.run(&Call {
            method,
            request,
            timeout,
            metadata,
            stream: Some(max_messages),
        })
        .await
    }

    /// A unary `runtime.v1.RuntimeService` call by its method's name.
    pub async fn runtime_call(
        &mut self,
        method: &str,
        request: &impl prost::Message,
        timeout: Option<Duration>,
    ) -> CallResult {
        let path = format!("/runtime.v1.RuntimeService/{method}");
        self.call(&path, &request.encode_to_vec(), timeout, &[]).await
    }

    /// `runtime_call`, which must succeed; its answer, decoded.
    pub async fn runtime_ok<Resp: prost::Message + Default>(
        &mut self,
        method: &str,
        request: &impl prost::Message,
        timeout: Duration,
    ) -> Resp {
        let result = self.runtime_call(method, request, Some(timeout)).await;
        assert_eq!(result.code(), Code::Ok, "{:?} {method}: {}", self.stack, result.message);
        Resp::decode(result.responses[0].as_slice()).expect("a response that decodes")
    }

    /// CheckpointPod or RestorePod, after the type of `request`.
    pub async fn pod_call<R: PodRequest>(&mut self, request: &R, timeout: Option<Duration>) -> CallResult {
        self.call(R::PATH, &request.encode_to_vec(), timeout, &[]).await
    }

    async fn run(&mut self, call: &Call<'_>) -> CallResult {
        let stack = self.stack;
        let limit = call.timeout.unwrap_or_default() + ANSWER_LIMIT;
        let answer = async {
            match &mut self.transport {
                Transport::Tonic(channel) => tonic_call(channel.clone(), call).await,
                Transport::Process(process) => process.call(call).await,
            }
        };
        tokio::time::timeout(limit, answer)
            .await
            .unwrap_or_else(|_| panic!("{stack:?} gave no answer to {} within {limit:?}", call.method))
    }
}

/// A request of podckpt's own pod calls, and the path it is sent to.
pub trait PodRequest: prost::Message {
    const PATH: &'static str;
}

impl PodRequest for pod::CheckpointPodRequest {
    const PATH: &'static str = podckpt::api::CHECKPOINT_POD_PATH;
}

impl PodRequest for pod::RestorePodRequest {
    const PATH: &'static str = podckpt::api::RESTORE_POD_PATH;
}

/// One CheckpointPod or RestorePod call through `stack` to `socket`, on a
/// client of its own; `None` when this machine lacks the stack's client.
pub async fn pod_call<R: PodRequest>(
    stack: Stack,
    socket: &Path,
    request: &R,
    timeout: Option<Duration>,
) -> Option<CallResult> {
    Some(Client::start(stack, socket)?.pod_call(request, timeout).await)
}

/// How long after a call's deadline the tonic client below gives up on it.
const TONIC_DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// A tonic call that ends soon after its deadline. tonic's channel enforces
/// `grpc-timeout` only until the response headers come (and then reports
/// CANCELLED "Timeout expired"); a server stream that has begun runs on
/// however long the server lets it, and containerd 1.7's GetContainerEvents
/// ignores the deadline, waiting for its next event. grpc-go and C-core
/// cancel such a call at the deadline. This client does too, a little later,
/// so that wherever tonic's own enforcement applies, it is what shows.
async fn tonic_call(channel: Channel, call: &Call<'_>) -> CallResult {
    let Some(deadline) = call.timeout else {
        return tonic_call_unbounded(channel, call).await;
    };
    tokio::time::timeout(deadline + TONIC_DEADLINE_GRACE, tonic_call_unbounded(channel, call))
        .await
        .unwrap_or_else(|_| {
            let status = Status::deadline_exceeded("deadline exceeded (enforced by the test's tonic client)");
            CallResult::from_status(&status, Vec::new())
        })
}

async fn tonic_call_unbounded(channel: Channel, call: &Call<'_>) -> CallResult {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    if let Err(e) = grpc.ready().await {
        return CallResult::from_status(&Status::unavailable(e.to_string()), Vec::new());
    }
    let mut request = tonic::Request::new(Bytes::copy_from_slice(call.request));
    if let Some(timeout) = call.timeout {
        request.set_timeout(timeout);
    }
    for (key, value) in call.metadata {
        let key = MetadataKey::from_bytes(key.as_bytes()).expect("metadata key");
        request
            .metadata_mut()
            .insert(key, value.parse().expect("ASCII metadata value"));
    }
    let path = http::uri::PathAndQuery::try_from(call.method).expect("gRPC path");
    let Some(max) = call.stream else {
        return match grpc.unary(request, path, RawCodec).await {
            Ok(response) => CallResult::ok(vec![response.into_inner().to_vec()]),
            Err(status) => CallResult::from_status(&status, Vec::new()),
        };
    };
    let mut stream = match grpc.server_streaming(request, path, RawCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return CallResult::from_status(&status, Vec::new()),
    };
    let mut responses = Vec::new();
    while max == 0 || responses.len() < max {
        match stream.message().await {
            Ok(Some(message)) => responses.push(message.to_vec()),
            Ok(None) => return CallResult::ok(responses),
            Err(status) => return CallResult::from_status(&status, responses),
        }
    }
    // Dropping the stream cancels the call. tonic has no status to report
    // for that, so this says what grpc-go and grpcio say: CANCELLED.
    drop(stream);
    CallResult::from_status(&Status::cancelled("cancelled by the client"), responses)
}

/// A grpc-go or grpcio client process (contrib/interop/).
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// An answer line of the client processes.
#[derive(serde::Deserialize)]
struct Answer {
    code: i32,
    message: String,
    responses: Vec<String>,
}

impl Process {
    fn spawn(stack: Stack, socket: &Path) -> Option<Self> {
        let mut command = client_command(stack)?;
        let mut child = command
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {stack:?} interop client: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Some(Self { child, stdin, stdout })
    }

    async fn call(&mut self, call: &Call<'_>) -> CallResult {
        let metadata: serde_json::Map<String, serde_json::Value> = call
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let mut line = serde_json::json!({
            "method": call.method,
            "request": BASE64.encode(call.request),
            "timeout_ms": call.timeout.map(|t| t.as_millis() as u64),
            "metadata": metadata,
            "stream": call.stream.is_some(),
            "max_messages": call.stream.unwrap_or(0),
        })
        .to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("writing to the interop client");
        self.stdin.flush().await.expect("writing to the interop client");
        let Some(line) = self.stdout.next_line().await.expect("reading the interop client") else {
            panic!("the interop client exited: {:?}", self.child.wait().await);
        };
        let answer: Answer =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("interop client answered {line:?}: {e}"));
        CallResult {
            code: answer.code,
            message: answer.message,
            responses: answer
                .responses
                .iter()
                .map(|r| BASE64.decode(r).expect("base64 response"))
                .collect(),
        }
    }
}

/// The command that runs a stack's client, or `None` (after `missing`) when
/// it is not installed.
fn client_command(stack: Stack) -> Option<Command> {
    let (var, default) = match stack {
        Stack::Go => ("PODCKPT_INTEROP_GO", DEFAULT_GO),
        Stack::Python => ("PODCKPT_INTEROP_PYTHON", DEFAULT_PYTHON),
        Stack::Tonic => unreachable!("tonic runs in the test process"),
    };
    let program = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
    if !program.is_file() {
        super::missing(&format!(
            "{stack:?} interop client not installed: no {} (set {var}, or run `contrib/testbed.sh install` as root)",
            program.display()
        ));
        return None;
    }
    let mut command = Command::new(program);
    if stack == Stack::Python {
        command.arg(PYTHON_CLIENT);
    }
    Some(command)
}

//! podckptd: the CRI shim daemon.

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use podckpt::config::{DaemonArgs, DaemonConfig};
use podckpt::metrics::{self, Metrics};
use podckpt::pod::PodService;
use podckpt::proxy::{self, Router, Upstream};
use podckpt::{readiness, telemetry};

fn main() -> anyhow::Result<()> {
    let args = DaemonArgs::parse();
    let config = DaemonConfig::resolve(&args)?;
    telemetry::init(config.log_format, &config.log_level);
    // One thread: every relayed frame wakes the task on the other side, and
    // on a multi-threaded runtime that wake-up crosses threads. The benchmark
    // measured lower latency and higher throughput this way (docs/BENCHMARKS.md).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let listener = proxy::listener::bind(&config.listen)?;
    // Always kept: what the pod calls and the reconnects count costs nothing
    // next to them. Only the per-call counting in the router is skipped
    // when no one reads the metrics.
    let metrics = Metrics::default();
    let upstream = Upstream::new(config.runtime_endpoint.clone(), config.connect_timeout, metrics.clone());
    let channel = podckpt::cri_client::channel(config.runtime_endpoint.path());
    let pods = PodService::new(&config, channel, metrics.clone())?;
    pods.recover().await;
    let metrics = config.metrics_listen.as_ref().map(|_| metrics);
    let router = Router::new(upstream, pods.clone(), metrics.clone());
    let metrics_server = config.metrics_listen.clone().zip(metrics).map(|(address, metrics)| {
        tokio::spawn(async move {
            if let Err(error) = metrics::server::serve(address.clone(), metrics).await {
                error!(%address, %error, "cannot serve metrics");
            }
        })
    });
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen.display(),
        runtime_endpoint = %config.runtime_endpoint,
        "podckptd serving"
    );
    // Ready for systemd once the socket is bound (above) and the runtime
    // has answered; the calls are served meanwhile, as they come.
    let ready = tokio::spawn(readiness::notify_when_runtime_answers(
        config.runtime_endpoint.path().to_owned(),
    ));
    let watchdog = tokio::spawn(readiness::watchdog());
    let signal = shutdown_signal()?;
    let shutdown = async {
        signal.await;
        readiness::stopping();
    };
    proxy::serve(listener, &config.listen, router, shutdown, config.shutdown_grace).await;
    ready.abort();
    pods.drain().await;
    watchdog.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    info!("podckptd stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
    })
}

//! podckpt-agent: the node agent for PodCheckpoint objects; see `podckpt::agent`.

use clap::Parser;
use podckpt::agent::{AgentArgs, AgentCommand};

fn main() -> anyhow::Result<()> {
    let args = AgentArgs::parse();
    if let Some(AgentCommand::Crd) = args.command {
        print!("{}", podckpt::agent::crd_yaml()?);
        return Ok(());
    }
    podckpt::telemetry::init(args.log_format, &args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(runtime.block_on(podckpt::agent::run(args))?)
}

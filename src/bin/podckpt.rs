//! podckpt: checkpoint and restore whole pods through podckptd.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = podckpt::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(podckpt::cli::run(cli)) {
        Err(podckpt::cli::CliError::NotCheckpointable(why)) => {
            eprintln!("{why}");
            std::process::exit(podckpt::cli::NOT_CHECKPOINTABLE);
        }
        done => Ok(done?),
    }
}

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use endpoint_agent::{config, run};

/// Private endpoints on your own nodes: an XDP data path kept in sync with a YAML model
/// of services, endpoints and acceptance.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data path and keep it in sync with the config until
    /// SIGINT/SIGTERM; then detach and leave nothing behind.
    Run {
        /// The YAML description of the node, services and endpoints.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config and report every problem with its line; change nothing.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run::run(&config))),
        Command::Validate { config } => config::load(&config).map_err(Into::into).map(|loaded| {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            println!(
                "{}: valid ({} services, {} endpoints)",
                config.display(),
                loaded.config.services.len(),
                loaded.config.endpoints.len()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<config::Invalid>() {
                Some(invalid) => eprintln!("{invalid}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

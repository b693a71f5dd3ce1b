use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use endpoint_agent::{
    acceptance::Decision,
    apply::{self, Pinned},
    config, connections, desired,
    facts::Facts,
    host,
    ids::Ids,
    instance::Instance,
    loader,
    plan::{Names, Plan, Shown},
    run, status, validate,
};

/// Private endpoints on your own nodes: an XDP data path kept in sync with a YAML model
/// of services, endpoints and acceptance.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Which agent instance (pins under /sys/fs/bpf/endpoint-agent/NAME, state under
    /// /run/endpoint-agent/NAME); one node may run several.
    #[arg(long, global = true, default_value = "default")]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data path and keep it in sync with the config file (re-read
    /// when it changes and on SIGHUP) until SIGINT/SIGTERM.
    Run {
        /// The YAML description of the node, services and endpoints.
        #[arg(long, short)]
        config: PathBuf,
        /// Where events go as JSON lines: `-` for stdout, or a file to append to.
        #[arg(long, default_value = "-")]
        events: String,
        /// On SIGINT/SIGTERM: `detach` leaves nothing behind; `keep` leaves the data path
        /// (and every connection) running for the next agent to adopt.
        #[arg(long, value_enum, default_value = "detach")]
        on_exit: run::OnExit,
    },
    /// Check a config and report every problem with its line; change nothing.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show exactly what applying the config would change in the running instance's maps.
    Plan {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the running instance: interfaces, attach modes, services, endpoints, counters.
    Status,
    /// List the endpoints of the config by state (connection requests first).
    Connections {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Accept a pendingAcceptance endpoint: marks it available in the config file.
    Accept {
        id: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Reject an endpoint (pendingAcceptance, or available: a revocation) in the file.
    Reject {
        id: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove everything an instance left: links, maps, host changes, state.
    Cleanup,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match execute(cli) {
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

fn execute(cli: Cli) -> Result<()> {
    let instance = Instance::new(&cli.instance)?;
    match cli.command {
        Command::Run {
            config,
            events,
            on_exit,
        } => {
            let _lock = instance.lock()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run::run(run::Options {
                    config,
                    instance,
                    events: Some(events),
                    on_exit,
                }))
        }
        Command::Validate { config } => {
            let loaded = validate::load_file(&config, &Facts::of_this_node()?)?;
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            println!(
                "{}: valid ({} services, {} endpoints)",
                config.display(),
                loaded.config.services.len(),
                loaded.config.endpoints.len()
            );
            Ok(())
        }
        Command::Plan { config } => {
            let loaded = validate::load_file(&config, &Facts::of_this_node()?)?;
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            println!("{}", plan(&instance, &loaded.config)?);
            Ok(())
        }
        Command::Status => {
            print!("{}", status::show(&instance)?);
            Ok(())
        }
        Command::Connections { config } => {
            let facts = Facts::of_this_node()?;
            print!(
                "{}",
                connections::list(&validate::load_file(&config, &facts)?.config)
            );
            Ok(())
        }
        Command::Accept { id, config } => {
            println!("{}", connections::decide(&config, &id, Decision::Accept)?);
            Ok(())
        }
        Command::Reject { id, config } => {
            println!("{}", connections::decide(&config, &id, Decision::Reject)?);
            Ok(())
        }
        Command::Cleanup => {
            let _lock = instance.lock()?;
            loader::remove_pins(&instance)?;
            host::Host::adopt(&instance)?.restore(&instance)?;
            instance.remove()?;
            println!("instance {:?}: removed", instance.name);
            Ok(())
        }
    }
}

/// The plan from what the instance's maps hold (nothing, if it is not running) to
/// `config`.
fn plan(instance: &Instance, config: &config::Config) -> Result<String> {
    let (current, ids, old) = if instance.exists() {
        let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
        let maps = Pinned::open(&instance.pins, &loader::PINNED)?;
        let text = std::fs::read_to_string(instance.state.join("applied.yaml")).unwrap_or_default();
        let old = config::parse("applied.yaml", &text).ok();
        (apply::read(&maps, &ids)?, ids, old)
    } else {
        Default::default()
    };
    let new_ids = ids.assign(config);
    let unhealthy = instance.read("unhealthy.json")?.unwrap_or_default();
    let state = desired::build(config, &new_ids, &unhealthy, host::link)?;
    let plan = Plan::between(&current, &state);
    let links = |c: &config::Config| {
        c.node
            .interfaces
            .iter()
            .filter_map(|i| Some((i.name.clone(), host::link(&i.name).ok()?.ifindex)))
            .collect()
    };
    let names = Names::merge(
        Names::new(&new_ids, &links(config)),
        Names::new(&ids, &old.as_ref().map(links).unwrap_or_default()),
    );
    Ok(Shown {
        plan: &plan,
        names: &names,
    }
    .to_string())
}

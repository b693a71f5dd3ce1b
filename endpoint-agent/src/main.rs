use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use endpoint_agent::{
    acceptance::Decision,
    config, connections,
    facts::Facts,
    flows, host,
    ids::Ids,
    instance::{Instance, Record},
    loader,
    maps::Maps,
    pipeline::{Applied, Inputs, Pipeline},
    plan::Shown,
    run, status, store, validate,
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
    /// Logs for people (`text`) or as JSON lines for log shippers (`json`); RUST_LOG
    /// filters them (default `info`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// Serve Prometheus/OpenMetrics metrics on http://ADDR:PORT/metrics (and
        /// `/healthz`).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
        /// Append a JSON line to FILE when a connection opens and when it ends (client,
        /// endpoint, target, NAT address and port, packets and bytes each way).
        #[arg(long, value_name = "FILE")]
        flow_log: Option<PathBuf>,
        /// Take services, endpoints and DNS settings from a fleet's store, shared by many
        /// nodes (the config file then holds this node's `node:` only).
        #[arg(long, value_name = "etcd://HOST:PORT[,...]/PREFIX", requires = "node")]
        store: Option<store::Location>,
        /// This node's name in the fleet.
        #[arg(long, requires = "store")]
        node: Option<String>,
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
    /// Show the running instance: the config generation in its maps, interfaces and
    /// attach modes, services, endpoints (states, limits, usage), counters. With
    /// `--fleet`: every node of the store's fleet instead, what each applied, and which
    /// are gone.
    Status {
        /// As JSON, for programs.
        #[arg(long)]
        json: bool,
        #[arg(long, requires = "store")]
        fleet: bool,
        #[arg(long, requires = "fleet", value_name = "etcd://HOST:PORT[,...]/PREFIX")]
        store: Option<store::Location>,
    },
    /// The running instance's live connections: consumer network, client, endpoint,
    /// target, NAT address and port, protocol, state and idle time, one per line.
    Flows {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this consumer network's.
        #[arg(long)]
        network: Option<String>,
        /// Only those to this target (IP:PORT).
        #[arg(long)]
        target: Option<std::net::SocketAddr>,
        /// As JSON lines, for programs.
        #[arg(long)]
        json: bool,
    },
    /// List the endpoints of the config by state (connection requests first).
    Connections {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Accept a pendingAcceptance endpoint: marks it available in the config file, or
    /// in the store (a transaction: of two deciding at once, one is told it lost).
    Accept {
        id: String,
        #[command(flatten)]
        model: Model,
    },
    /// Reject an endpoint (pendingAcceptance, or available: a revocation) in the file or
    /// the store.
    Reject {
        id: String,
        #[command(flatten)]
        model: Model,
    },
    /// Move a model between a YAML file and a fleet's store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Remove everything an instance left: links, maps, host changes, state.
    Cleanup,
}

/// Where a command finds the model: a config file or a fleet's store.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Model {
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "etcd://HOST:PORT[,...]/PREFIX")]
    store: Option<store::Location>,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Replace the store's model with the services, endpoints and DNS settings of a
    /// config file (its `node:` stays each node's own).
    Import {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_name = "etcd://HOST:PORT[,...]/PREFIX")]
        store: store::Location,
    },
    /// Print the store's model as YAML.
    Export {
        #[arg(long, value_name = "etcd://HOST:PORT[,...]/PREFIX")]
        store: store::Location,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
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
            metrics,
            flow_log,
            store,
            node,
        } => {
            let _lock = instance.lock()?;
            if let Some(node) = &node
                && (node.is_empty()
                    || node.len() > 128
                    || !node
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
            {
                anyhow::bail!(
                    "--node {node:?}: a node's name is 1 to 128 letters, digits and - _ . : \
                     (it names keys in the store)"
                );
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run::run(run::Options {
                    config,
                    instance,
                    events: Some(events),
                    on_exit,
                    metrics,
                    flow_log,
                    store: store
                        .zip(node)
                        .map(|(location, node)| run::Fleet { location, node }),
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
            let source = config.display().to_string();
            let text =
                std::fs::read_to_string(&config).with_context(|| format!("reading {source}"))?;
            println!("{}", plan(&instance, &source, &text)?);
            Ok(())
        }
        Command::Status {
            json,
            fleet: true,
            store: Some(location),
        } => {
            let fleet = block_on(async { store::Store::connect(&location).await?.fleet().await })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&fleet)?);
            } else {
                print!("{fleet}");
            }
            Ok(())
        }
        Command::Status { json, .. } => {
            if json {
                println!("{}", status::json(&instance)?);
            } else {
                print!("{}", status::show(&instance)?);
            }
            Ok(())
        }
        Command::Flows {
            endpoint,
            network,
            target,
            json,
        } => {
            let filter = flows::Filter {
                endpoint,
                network,
                target,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            flows::list(&instance, &filter, json, &mut out)?;
            std::io::Write::flush(&mut out)?;
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
        Command::Accept { id, model } => decide(model, &id, Decision::Accept),
        Command::Reject { id, model } => decide(model, &id, Decision::Reject),
        Command::Store {
            command: StoreCommand::Import { config, store },
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            // What goes in must be valid: a whole config as `validate` checks it (on this
            // node's facts); a model alone (as `store export` writes it) as YAML, the
            // nodes checking the rest.
            let name = config.display().to_string();
            let whole = serde_yaml::from_str::<serde_yaml::Value>(&text)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
                .get("node")
                .is_some();
            if whole {
                validate::load(&name, &text, &Facts::of_this_node()?)?;
            } else {
                config::parse(&name, &format!("{text}\nnode: {{ interfaces: [] }}\n"))?;
            }
            println!(
                "{}",
                block_on(async { store::Store::connect(&store).await?.import(&text).await })?
            );
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Export { store },
        } => {
            print!(
                "{}",
                block_on(async { store::Store::connect(&store).await?.export().await })?
            );
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

/// Accepts or rejects in the model's file or store.
fn decide(model: Model, id: &str, decision: Decision) -> Result<()> {
    let said = match (model.config, model.store) {
        (Some(config), _) => connections::decide(&config, id, decision)?,
        (_, Some(location)) => block_on(async {
            store::Store::connect(&location)
                .await?
                .decide(id, decision)
                .await
        })?,
        (None, None) => anyhow::bail!("give the model: --config FILE or --store URL"),
    };
    println!("{said}");
    Ok(())
}

/// Runs a store command's future.
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// The plan from what the instance's maps hold (nothing, if it is not running) to the
/// config `text`.
fn plan(instance: &Instance, source: &str, text: &str) -> Result<String> {
    let facts = Facts::of_this_node()?;
    let record: Record = instance.read("record.json")?.unwrap_or_default();
    let applied = if instance.exists() {
        let ids: Ids = instance.read("ids.json")?.unwrap_or_default();
        let maps = Maps::open_pinned(&instance.pins)?;
        let applied_text =
            std::fs::read_to_string(instance.state.join("applied.yaml")).unwrap_or_default();
        Applied {
            contents: Pipeline::read(&maps, &ids)?,
            config: config::parse("applied.yaml", &applied_text).ok(),
            text: applied_text,
            ids,
            ..Applied::default()
        }
    } else {
        Applied::default()
    };
    let unhealthy = instance.read("unhealthy.json")?.unwrap_or_default();
    let verified: std::collections::BTreeSet<String> = instance
        .read::<Vec<endpoint_agent::verification::Record>>(
            endpoint_agent::agent::VERIFICATION_FILE,
        )?
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.status == endpoint_agent::verification::Status::Verified)
        .map(|r| r.name)
        .collect();
    let inputs = Inputs {
        facts: &facts,
        seed: record.seed,
        unhealthy: &unhealthy,
        // As the running agent has it.
        flow_records: applied.contents.settings.flow_records != 0,
        verified: &verified,
        failover: &instance
            .read(endpoint_agent::agent::FAILOVER_FILE)?
            .unwrap_or_default(),
    };
    let proposal = applied.propose(source, text, &inputs)?;
    for warning in &proposal.warnings {
        eprintln!("{warning}");
    }
    Ok(Shown {
        plan: &proposal.plan,
        names: &applied.names(&proposal, &facts),
    }
    .to_string())
}

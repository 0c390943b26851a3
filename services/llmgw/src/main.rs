//! `llmgw`: every service in one process (`all`), or one service each
//! (`edge`, `auth`, `router`, `adapter`, `metering`), plus admin commands.
//! Thin on purpose: the logic lives in the service crates; this file reads
//! the config, wires clients (local or gRPC) and runs named tasks.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use llmgw_edge::{Deps, Edge};
use llmgw_kit::config::Config;
use llmgw_kit::discovery::{self, Service};
use llmgw_kit::grpc;
use llmgw_kit::services::{
    AdapterGrpcServer, AuthGrpcServer, GrpcAdapter, GrpcAuth, GrpcMetering, GrpcRouter, MeteringGrpcServer,
    RouterGrpcServer,
};
use llmgw_kit::shutdown::{self, CancellationToken};
use llmgw_proto as pb;
use tokio::net::TcpListener;
use tonic::service::Routes;

/// mimalloc: the hot path allocates many small, short-lived buffers (JSON,
/// headers, protobuf), where it is markedly faster than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives the memory of freed pages back to the OS only once a
/// thread next works in the allocator after a delay, so a gateway that goes
/// quiet after a burst would keep its peak. Once a second this thread lets
/// it give back what has waited long enough.
fn give_back_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("mi-collect".to_owned())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                collect_allocator();
            }
        });
    if let Err(e) = spawned {
        eprintln!("warning: cannot start the allocator's collector: {e}");
    }
}

#[allow(unsafe_code)]
fn collect_allocator() {
    // SAFETY: `mi_collect` has no preconditions: any thread may call it at
    // any time; without `force` it only frees what is already free.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[derive(Parser)]
#[command(
    name = "llmgw",
    version,
    about = "One OpenAI-compatible API in front of every LLM provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// The gateway's YAML config file.
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Every service in one process, wired with local clients.
    All(ConfigArg),
    /// The public REST/gRPC edge, calling the other services over gRPC.
    Edge(ConfigArg),
    /// The auth service.
    Auth(ConfigArg),
    /// The router service.
    Router(ConfigArg),
    /// The provider-adapter service.
    Adapter(ConfigArg),
    /// The usage-metering service.
    Metering(ConfigArg),
    /// Validates a config file (and the environment it names) without
    /// starting anything or opening a store; prints `ok` or the error, which
    /// names the file and the key, and exits non-zero on error.
    Check(ConfigArg),
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The admin API against the store directly, as a platform admin:
    /// `llmgw admin --config FILE GET /admin/v1/orgs`,
    /// `llmgw admin --config FILE PUT /admin/v1/keys/key_…/policy --body '{"allowed_models": ["gpt-4o*"]}'`.
    /// Prints the JSON answer.
    Admin {
        #[command(flatten)]
        config: ConfigArg,
        /// GET, POST, PUT, PATCH or DELETE.
        method: String,
        /// The REST path, `/admin/v1/...`.
        path: String,
        /// The JSON body.
        #[arg(long)]
        body: Option<String>,
    },
    /// Orgs' own provider credentials (BYOK).
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// An org's spend.
    Usage {
        #[command(flatten)]
        config: ConfigArg,
        /// The org's name.
        #[arg(long)]
        org: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Re-encrypts every stored provider credential with the current master
    /// key (`LLMGW_MASTER_KEY`); those of the previous one need
    /// `LLMGW_MASTER_KEY_PREVIOUS` set. Prints how many were re-encrypted.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates an API key (and the org and project if new); prints the key
    /// alone on the last line. It is shown once and stored only as a hash.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        org: String,
        #[arg(long)]
        project: Option<String>,
        /// The routing config this key's requests use when they name none.
        #[arg(long)]
        routing_config: Option<String>,
        /// `member` (calls the model APIs), `admin` (also administers its
        /// org through `/admin/v1`) or `platform_admin` (every org).
        #[arg(long, default_value = "member")]
        role: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let result = run(cli.command).await;
        // Spans still queued go out before the process ends.
        llmgw_kit::telemetry::shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the config and starts logging, and for a service `role` (`all`,
/// `edge`, …) span export when configured and the allocator's collector.
/// Admin commands (no role) log only warnings, so their stdout and stderr
/// stay readable, and export nothing.
fn load(path: &Path, role: Option<&str>) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = llmgw_kit::config::process_env();
    let config = Config::load(path, &env)?;
    let env_filter = env.get("LLMGW_LOG").map(String::as_str);
    let config_filter = match role {
        None => Some("warn"),
        Some(_) => config.log.as_deref(),
    };
    let export = role.map(|role| llmgw_kit::telemetry::Export {
        config: &config.telemetry,
        role,
    });
    llmgw_kit::telemetry::init(env_filter, config_filter, export)?;
    if role.is_some() {
        give_back_freed_memory();
    }
    for d in &config.disabled_providers {
        tracing::info!(provider = %d.name, reason = %d.reason, "provider disabled");
    }
    Ok(config)
}

/// Writes one line to stdout (the CLI's output, as opposed to logs on stderr).
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::All(c) => all(&load(&c.config, Some("all"))?).await,
        Command::Check(c) => {
            let config = load(&c.config, None)?;
            for d in &config.disabled_providers {
                eprintln!("note: provider `{}` is disabled: {}", d.name, d.reason);
            }
            say(&format!(
                "ok: {} ({} providers, {} models)",
                c.config.display(),
                config.providers.len(),
                config.models.len()
            ))
        }
        Command::Edge(c) => edge(&load(&c.config, Some("edge"))?).await,
        Command::Auth(c) => {
            let config = load(&c.config, Some("auth"))?;
            let store = open_auth(&config).await?;
            let routes = Routes::new(
                pb::auth_server::AuthServer::new(AuthGrpcServer(llmgw_auth::service(store)))
                    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
            );
            serve_one(&config, Service::Auth, &config.services.auth.addr, routes).await
        }
        Command::Router(c) => {
            let config = load(&c.config, Some("router"))?;
            let routes = Routes::new(
                pb::router_server::RouterServer::new(RouterGrpcServer(llmgw_router::service(&config)))
                    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
            );
            serve_one(&config, Service::Router, &config.services.router.addr, routes).await
        }
        Command::Adapter(c) => {
            let config = load(&c.config, Some("adapter"))?;
            // BYOK credentials come from auth over gRPC.
            let auth = GrpcAuth::client(discovery::channel(&config.services, Service::Auth)?);
            let adapter = llmgw_provider_adapter::service_with_credentials(&config, auth)?;
            let routes = Routes::new(
                pb::adapter_server::AdapterServer::new(AdapterGrpcServer(adapter))
                    .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
            );
            serve_one(&config, Service::Adapter, &config.services.adapter.addr, routes).await
        }
        Command::Metering(c) => {
            let config = load(&c.config, Some("metering"))?;
            let store = llmgw_usage_metering::open(&config).await?;
            let stop = CancellationToken::new();
            let retention =
                llmgw_usage_metering::spawn_retention(store.clone(), config.metering.retention, stop.clone());
            let routes = Routes::new(
                pb::metering_server::MeteringServer::new(MeteringGrpcServer(llmgw_usage_metering::service(
                    store,
                )))
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
            );
            let served = serve_one(&config, Service::Metering, &config.services.metering.addr, routes).await;
            stop.cancel();
            if let Some(task) = retention {
                let _ = task.await;
            }
            served
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    config,
                    org,
                    project,
                    routing_config,
                    role,
                },
        } => {
            let config = load(&config.config, None)?;
            if !["member", "admin", "platform_admin"].contains(&role.as_str()) {
                anyhow::bail!("--role is member, admin or platform_admin");
            }
            if let Some(name) = &routing_config {
                let base = name.rsplit_once('@').map_or(name.as_str(), |(n, _)| n);
                if !config.routing.configs.iter().any(|c| c.name == base) {
                    anyhow::bail!("no routing config `{name}` in {}", config.file);
                }
            }
            let store = llmgw_auth::open(&config).await?;
            let created = store.create_key(&org, project.as_deref()).await?;
            if let Some(name) = &routing_config {
                store.set_routing_config(&created.key_id, Some(name)).await?;
            }
            if role != "member" {
                store.set_role(&created.key_id, &role).await?;
            }
            let scope = match &created.project_id {
                Some(p) => format!("org `{}` ({}), project {p}", created.org_name, created.org_id),
                None => format!("org `{}` ({})", created.org_name, created.org_id),
            };
            say(&format!(
                "created key {} for {scope}; it is shown once, store it now:",
                created.key_id
            ))?;
            say(created.key.expose())
        }
        Command::Admin {
            config,
            method,
            path,
            body,
        } => {
            let config = load(&config.config, None)?;
            let store = llmgw_auth::open(&config).await?;
            let route = llmgw_kit::admin::route(&method.to_ascii_uppercase(), &path)?;
            let reply = store
                .admin(pb::AdminCall {
                    // The store's own operator: every org.
                    caller: Some(pb::Principal {
                        role: pb::KeyRole::PlatformAdmin as i32,
                        ..Default::default()
                    }),
                    op: route.op as i32,
                    scope: route.scope.to_owned(),
                    id: route.id,
                    body_json: body.unwrap_or_default(),
                })
                .await?;
            say(&reply.body_json)
        }
        Command::Credentials {
            command: CredentialsCommand::Rotate { config },
        } => {
            let config = load(&config.config, None)?;
            let store = llmgw_auth::open(&config).await?;
            let done = store.rotate_credentials().await?;
            say(&format!(
                "re-encrypted {} provider credentials; {} were already under the current key",
                done.rotated, done.current
            ))
        }
        Command::Usage { config, org, json } => {
            let config = load(&config.config, None)?;
            let auth = llmgw_auth::open(&config).await?;
            let org_id = auth
                .org_id(&org)
                .await?
                .with_context(|| format!("no org named `{org}`"))?;
            let store = llmgw_usage_metering::open(&config).await?;
            let summary = llmgw_usage_metering::service(store)
                .get_usage(pb::UsageQuery {
                    org_id: org_id.clone(),
                })
                .await?;
            if json {
                let by_model: Vec<_> = summary
                    .by_model
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "model": m.model, "provider": m.provider, "requests": m.requests,
                            "input_tokens": m.input_tokens, "output_tokens": m.output_tokens, "cost_usd": m.cost_usd,
                        })
                    })
                    .collect();
                return say(&serde_json::json!({
                    "org": org, "org_id": org_id, "requests": summary.requests,
                    "input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens,
                    "cost_usd": summary.cost_usd, "by_model": by_model,
                })
                .to_string());
            }
            say(&format!(
                "org {org}: {} requests, {} input tokens, {} output tokens, ${:.10}",
                summary.requests, summary.input_tokens, summary.output_tokens, summary.cost_usd
            ))?;
            for m in &summary.by_model {
                say(&format!(
                    "  {} via {}: {} requests, {} input tokens, {} output tokens, ${:.10}",
                    m.model, m.provider, m.requests, m.input_tokens, m.output_tokens, m.cost_usd
                ))?;
            }
            Ok(())
        }
    }
}

/// Opens the auth store; on a first start with an empty store, creates the
/// `default` org and prints its one key, once.
async fn open_auth(config: &Config) -> anyhow::Result<llmgw_auth::AuthStore> {
    let store = llmgw_auth::open(config).await?;
    if let Some(created) = store.ensure_default_org().await? {
        say(&format!(
            "first start: created org `{}` and an API key; it is shown once, store it now:",
            created.org_name
        ))?;
        say(created.key.expose())?;
    }
    Ok(store)
}

async fn bind<A>(what: &str, addr: A) -> anyhow::Result<TcpListener>
where
    A: tokio::net::ToSocketAddrs + std::fmt::Display,
{
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot bind {what} on {addr}"))
}

fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    token
}

async fn all(config: &Config) -> anyhow::Result<()> {
    let shutdown = shutdown_token();
    let auth = open_auth(config).await?;
    let metering = llmgw_usage_metering::open(config).await?;
    let _retention =
        llmgw_usage_metering::spawn_retention(metering.clone(), config.metering.retention, shutdown.clone());
    let auth = llmgw_auth::service(auth);
    let deps = Deps {
        auth: auth.clone(),
        router: llmgw_router::service(config),
        adapter: llmgw_provider_adapter::service_with_credentials(config, auth)?,
        metering: llmgw_usage_metering::service(metering),
        channels: Vec::new(),
    };
    run_edge(config, deps, shutdown).await
}

async fn edge(config: &Config) -> anyhow::Result<()> {
    let shutdown = shutdown_token();
    let s = &config.services;
    let [auth, router, adapter, metering] = [
        Service::Auth,
        Service::Router,
        Service::Adapter,
        Service::Metering,
    ]
    .map(|service| discovery::channel(s, service));
    let (auth, router, adapter, metering) = (auth?, router?, adapter?, metering?);
    let deps = Deps {
        auth: GrpcAuth::client(auth.clone()),
        router: GrpcRouter::client(router.clone()),
        adapter: GrpcAdapter::client(adapter.clone()),
        metering: GrpcMetering::client(metering.clone()),
        // `/health` checks each service over the same channels.
        channels: vec![
            ("auth", auth),
            ("router", router),
            ("adapter", adapter),
            ("metering", metering),
        ],
    };
    run_edge(config, deps, shutdown).await
}

async fn run_edge(config: &Config, deps: Deps, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http = bind("edge http", config.edge.http_addr).await?;
    let grpc_listener = bind("edge grpc", config.edge.grpc_addr).await?;
    tracing::info!(
        http = %http.local_addr()?,
        grpc = %grpc_listener.local_addr()?,
        providers = config.providers.len(),
        models = config.models.len(),
        "llmgw edge listening"
    );
    let registration = tokio::select! {
        registration = discovery::register_if_consul(&config.services, Service::Edge, grpc_listener.local_addr()?) => registration?,
        () = shutdown.cancelled() => None,
    };
    let stop = CancellationToken::new();
    let edge = Edge::build(config, deps)?;
    shutdown::serve_gracefully(
        edge.run(http, grpc_listener, stop.clone()),
        shutdown,
        stop,
        registration,
        &config.shutdown,
    )
    .await?;
    tracing::info!("llmgw stopped");
    Ok(())
}

/// Serves one internal service on `addr` (registered in Consul with
/// Consul discovery) until SIGTERM, then stops gracefully.
async fn serve_one(config: &Config, service: Service, addr: &str, routes: Routes) -> anyhow::Result<()> {
    let what = service.consul_name();
    let signal = shutdown_token();
    let listener = bind(what, addr).await?;
    let (routes, health) = grpc::with_health_and_reflection(routes, &[service.grpc_name()]).await?;
    let routes = grpc::with_metrics(routes);
    let local = listener.local_addr()?;
    tracing::info!(service = what, addr = %local, "llmgw service listening");
    let stop = CancellationToken::new();
    // Serving starts before registering: the agent's first check must find
    // the server up.
    let served = tokio::spawn(grpc::serve(listener, routes, health, stop.clone()));
    // A SIGTERM while the agent is still out of reach ends the retries.
    let registration = tokio::select! {
        registration = discovery::register_if_consul(&config.services, service, local) => match registration {
            Ok(registration) => registration,
            Err(e) => {
                stop.cancel();
                let _ = served.await;
                return Err(e.into());
            }
        },
        () = signal.cancelled() => None,
    };
    let served = async {
        served
            .await
            .map_err(|e| llmgw_kit::GwError::internal(format!("server task: {e}")))?
    };
    shutdown::serve_gracefully(served, signal, stop, registration, &config.shutdown).await?;
    tracing::info!(service = what, "stopped");
    Ok(())
}

//! The peer: LiteLLM's proxy (installed by `scripts/setup-litellm.sh` into
//! its own venv), started against the same OpenAI emulator as the gateway
//! and pinned to the gateway's core, so S1, S2 and S4 through it sit in the
//! same table. It needs nothing from the network: the model cost map is the
//! one shipped in the package (`LITELLM_LOCAL_MODEL_COST_MAP`), telemetry is
//! off, there is no database, and its access log is silenced (the gateway
//! logs no line per request either).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::client::Target;
use crate::procs::{MODEL, Procs};
use crate::report::PEER;

/// The version scripts/setup-litellm.sh installs.
pub const VERSION: &str = "1.82.6";
/// The process label and the key LiteLLM checks (its `master_key`).
pub const LABEL: &str = "litellm";
const MASTER_KEY: &str = "sk-bench-litellm";

/// uvicorn's logging: warnings and errors only, no access log.
const LOG_CONFIG: &str = r#"{"version": 1, "disable_existing_loggers": false,
 "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
 "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
 "loggers": {"uvicorn": {"handlers": ["err"], "level": "WARNING", "propagate": false},
             "uvicorn.error": {"handlers": ["err"], "level": "WARNING", "propagate": false},
             "uvicorn.access": {"handlers": ["err"], "level": "WARNING", "propagate": false}}}
"#;

/// Starts LiteLLM (`bin`, its `litellm` command) on `core`, proxying
/// [`MODEL`] to the emulator at `emulator`, and returns its target (not yet
/// ready: wait with `Procs::wait_ready`).
pub fn start(
    procs: &mut Procs,
    bin: &Path,
    dir: &Path,
    core: Option<usize>,
    emulator: SocketAddr,
    emu_key: &str,
) -> anyhow::Result<Arc<Target>> {
    let port = crate::procs::free_ports(1)?[0];
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      \
             api_base: http://{emulator}/v1\n      api_key: os.environ/EMU_KEY\n\
             general_settings:\n  master_key: {MASTER_KEY}\n\
             litellm_settings:\n  telemetry: false\n"
        ),
    )?;
    let log_config = dir.join("litellm-log.json");
    std::fs::write(&log_config, LOG_CONFIG)?;
    let (config, log_config) = (path_str(&config)?, path_str(&log_config)?);
    let port_s = port.port().to_string();
    procs.spawn(
        LABEL,
        bin,
        core,
        &[
            "--config",
            config,
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "--num_workers",
            "1",
            "--keepalive_timeout",
            "120",
            "--log_config",
            log_config,
        ],
        &[
            ("EMU_KEY", emu_key),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("LITELLM_TELEMETRY", "False"),
            ("LITELLM_LOG", "ERROR"),
            ("DISABLE_ADMIN_UI", "True"),
            ("NO_DOCS", "True"),
        ],
    )?;
    Ok(Arc::new(Target::new(PEER, port, MASTER_KEY)?))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("path {} is not UTF-8", p.display()))
}

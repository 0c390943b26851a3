//! Logging: `tracing` to stderr, filtered by the `LLMGW_LOG` environment
//! variable, else the config's `log`, else `info`.
//! OTLP export arrives with the telemetry issue; spans are already in place.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops. `env_filter`
/// is `LLMGW_LOG` from the environment map the caller read.
pub fn init(env_filter: Option<&str>, config_filter: Option<&str>) {
    let wanted = env_filter.or(config_filter).unwrap_or("info");
    let filter = EnvFilter::try_new(wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

//! Shutdown: one `CancellationToken` per process, cancelled by SIGINT/SIGTERM
//! or by the first task that exits.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT or SIGTERM.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

/// Runs `serve` — a server that stops accepting and drains once `stop` is
/// cancelled — through a graceful stop: when `signal` fires (SIGTERM), the
/// service deregisters from Consul (if it registered) and, once clients
/// have had `deregister_wait` to notice, `stop` is cancelled; what is in
/// flight then has `drain` to finish before `serve` is dropped (cutting
/// what is left). Whatever ends `serve`, the registration is removed.
pub async fn serve_gracefully<T>(
    serve: impl Future<Output = Result<T, crate::GwError>>,
    signal: CancellationToken,
    stop: CancellationToken,
    registration: Option<crate::discovery::Registration>,
    config: &crate::config::ShutdownConfig,
) -> Result<Option<T>, crate::GwError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let deregistered = AtomicBool::new(false);
    let lifecycle = async {
        tokio::select! {
            () = signal.cancelled() => {}
            () = stop.cancelled() => {}
        }
        if let Some(registration) = &registration {
            registration.deregister().await;
            deregistered.store(true, Ordering::Relaxed);
            if !stop.is_cancelled() {
                tokio::time::sleep(config.deregister_wait).await;
            }
        }
        tracing::info!(drain = ?config.drain, "no longer accepting; draining in-flight requests");
        stop.cancel();
        tokio::time::sleep(config.drain).await;
    };
    let result = tokio::select! {
        result = serve => result.map(Some),
        () = lifecycle => {
            tracing::warn!("drain window over; exiting with requests still in flight");
            Ok(None)
        }
    };
    if let Some(registration) = &registration
        && !deregistered.load(Ordering::Relaxed)
    {
        registration.deregister().await;
    }
    result
}

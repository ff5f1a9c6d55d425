//! Admin HTTP servers (tokio + axum), split as kube-proxy splits them: health (/healthz,
//! /livez, /readyz) on the address load balancers and probes reach (`--healthz-bind-address`,
//! default 0.0.0.0:10256), and /metrics and /conntrack (the client address of every flow)
//! with the health routes on `--metrics-bind-address` (default 127.0.0.1:10249). The same
//! address for both serves every route on one listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::dataplane::ConntrackReader;
use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Set once the first sync is programmed.
    pub ready: Arc<AtomicBool>,
    /// Conntrack dump access.
    pub conntrack: ConntrackReader,
}

/// The health routes: what the health address serves.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Every route: what the metrics address serves (health too, as kube-proxy's does).
pub fn router(state: AdminState) -> Router {
    health_router(state.clone()).merge(
        Router::new()
            .route("/metrics", get(metrics))
            .route("/conntrack", get(conntrack))
            .with_state(state),
    )
}

/// kube-proxy's /healthz answer: `lastUpdated` is the time up to which the source's data
/// is known current (the last moment the API server answered; now for the manifests
/// directory, which is always current), `currentTime` is now. Always 200: a daemon serving
/// its last known state during an API outage is healthy, and says how stale it is.
async fn healthz(State(s): State<AdminState>) -> Response {
    let now = std::time::SystemTime::now();
    let last = match s.metrics.source_last_sync.get() {
        0 => now,
        t => std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    };
    Json(serde_json::json!({
        "lastUpdated": humantime::format_rfc3339_seconds(last).to_string(),
        "currentTime": humantime::format_rfc3339_seconds(now).to_string(),
        "stale": now.duration_since(last).map(|d| d.as_secs()).unwrap_or(0),
    }))
    .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn conntrack(State(s): State<AdminState>) -> Response {
    let reader = s.conntrack.clone();
    match tokio::task::spawn_blocking(move || reader.dump()).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("dump failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The two admin addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// /healthz, /livez, /readyz.
    pub health: SocketAddr,
    /// /metrics, /conntrack (and the health routes).
    pub metrics: SocketAddr,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {what} address {addr}: {e}"))
}

/// Binds both addresses (errors name the one that failed) and serves until `stop` resolves.
pub async fn serve(
    addrs: Addresses,
    state: AdminState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = bind(addrs.metrics, "metrics").await?;
    let health = if addrs.health == addrs.metrics {
        None
    } else {
        Some(bind(addrs.health, "healthz").await?)
    };
    tracing::info!(health = %addrs.health, metrics = %addrs.metrics, "admin servers listening");
    let (tx, rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(());
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let all =
        axum::serve(metrics, router(state.clone())).with_graceful_shutdown(stopped(rx.clone()));
    match health {
        None => all.await?,
        Some(h) => {
            let probes = axum::serve(h, health_router(state)).with_graceful_shutdown(stopped(rx));
            tokio::try_join!(async { all.await }, async { probes.await })?;
        }
    }
    Ok(())
}

//! healthCheckNodePort servers (LoadBalancer Services with externalTrafficPolicy Local), as
//! kube-proxy serves them: any path answers JSON with the number of this node's ready
//! endpoints, header `X-Load-Balancing-Endpoint-Weight`, 200 when there is one, else 503. Load
//! balancers use it to send traffic only to nodes that have a local endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::model::ServiceKey;

pub use crate::sync::health_ports::{HealthHandle, HealthUpdate};

struct Served {
    service: ServiceKey,
    local: AtomicUsize,
}

struct Server {
    state: Arc<std::sync::RwLock<Served>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the manager task on the current tokio runtime; `addrs` are the node addresses
/// (wildcards by default) the servers bind.
pub fn spawn(addrs: Vec<IpAddr>) -> HealthHandle {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(manage(addrs, rx));
    tx
}

async fn manage(addrs: Vec<IpAddr>, mut rx: UnboundedReceiver<HealthUpdate>) {
    let mut servers: HashMap<u16, Server> = HashMap::new();
    while let Some(update) = rx.recv().await {
        match update {
            HealthUpdate::Set {
                port,
                service,
                local_endpoints,
            } => {
                if let Some(s) = servers.get(&port) {
                    if let Ok(mut st) = s.state.write() {
                        st.service = service;
                        st.local.store(local_endpoints, Ordering::Relaxed);
                    }
                    continue;
                }
                let state = Arc::new(std::sync::RwLock::new(Served {
                    service: service.clone(),
                    local: AtomicUsize::new(local_endpoints),
                }));
                let mut tasks = Vec::new();
                for ip in &addrs {
                    let addr = SocketAddr::new(*ip, port);
                    match bind(addr).await {
                        Ok(l) => {
                            let app = Router::new().fallback(answer).with_state(state.clone());
                            tasks.push(tokio::spawn(async move {
                                let _ = axum::serve(l, app).await;
                            }));
                        }
                        Err(e) => tracing::error!(
                            service = %service, %addr, error = %e,
                            "cannot serve healthCheckNodePort"
                        ),
                    }
                }
                servers.insert(port, Server { state, tasks });
            }
            HealthUpdate::Remove { port } => {
                if let Some(s) = servers.remove(&port) {
                    for t in s.tasks {
                        t.abort();
                    }
                }
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = tokio::net::TcpSocket::new_v6()?;
            socket2::SockRef::from(&s).set_only_v6(true)?;
            s
        }
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

async fn answer(State(state): State<Arc<std::sync::RwLock<Served>>>) -> Response {
    let (ns, name, n) = match state.read() {
        Ok(s) => (
            s.service.namespace.clone(),
            s.service.name.clone(),
            s.local.load(Ordering::Relaxed),
        ),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let body = serde_json::json!({
        "service": {"namespace": ns, "name": name},
        "localEndpoints": n,
        "serviceProxyHealthy": true,
    });
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                HeaderName::from_static("x-content-type-options"),
                "nosniff".to_string(),
            ),
            (
                HeaderName::from_static("x-load-balancing-endpoint-weight"),
                n.to_string(),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

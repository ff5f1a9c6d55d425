//! `nodeportd conntrack`: reads /conntrack from a running daemon's metrics server.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::ConntrackArgs;
use crate::dataplane::conntrack::Row;

/// Fetches and prints the table; one line per flow, or the JSON as served.
pub fn run(args: ConntrackArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(fetch(args.metrics_bind_address))?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let mut rows: Vec<Row> = serde_json::from_str(&body)?;
    rows.sort_by_key(|r| (r.protocol, r.node, r.client));
    for r in &rows {
        println!("{}", r.line());
    }
    eprintln!(
        "nodeportd conntrack: {} flow entries have been shown.",
        rows.len()
    );
    Ok(())
}

async fn fetch(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the metrics server at {addr} (--metrics-bind-address): {e}")
    })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/conntrack")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let res = send.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        anyhow::bail!("metrics server at {addr} answered {status}: {text}");
    }
    Ok(text)
}

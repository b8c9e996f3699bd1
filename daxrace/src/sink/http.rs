//! The daemon's HTTP endpoint: `/metrics` (Prometheus text format) and
//! `/healthz`. A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size and time, so a slow or hostile client
//! cannot hold the daemon.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source} (is another daxrace or exporter on that port? choose one with --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What /healthz reports.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub hooks_attached: usize,
    pub hooks_missing: usize,
}

pub struct MetricsServer {
    listener: TcpListener,
}

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, metrics: Arc<Mutex<Metrics>>, health: Arc<Mutex<Health>>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                // Out of fds or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (m, h) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m, h)).await;
            });
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: Arc<Mutex<Metrics>>,
    health: Arc<Mutex<Health>>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
            )
            .await;
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = metrics.lock().map(|m| m.render()).unwrap_or_default();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => {
            let h = health.lock().map(|h| h.clone()).unwrap_or_default();
            let body = format!(
                "ok\nhooks_attached {}\nhooks_missing {}\n",
                h.hooks_attached, h.hooks_missing
            );
            respond(&mut stream, "200 OK", "text/plain", body.as_bytes()).await
        }
        "/" => {
            respond(
                &mut stream,
                "200 OK",
                "text/html",
                b"<html><body><h1>daxrace</h1><a href=\"/metrics\">metrics</a> <a href=\"/healthz\">health</a></body></html>\n",
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

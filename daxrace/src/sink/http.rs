//! The daemon's HTTP endpoint: `/metrics` (Prometheus text format) and
//! `/healthz`. A deliberately small HTTP/1.1 server: GET and HEAD only (HEAD
//! gets the headers GET would, and no body), one request per connection,
//! bounded request size and time, and at most [`MAX_CONNECTIONS`] served at
//! once (the rest wait in the kernel's listen backlog), so slow or hostile
//! clients cannot hold the daemon or make it spawn without bound.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the socket systemd passed (LISTEN_FDS) is unusable: {0}")]
    Passed(#[source] std::io::Error),
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
    max_connections: usize,
}

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once: a Prometheus or two, a health check and a
/// person with curl need far fewer; each costs a task and a buffer.
pub const MAX_CONNECTIONS: usize = 16;

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(MetricsServer {
            listener,
            max_connections: MAX_CONNECTIONS,
        })
    }

    /// The listening socket systemd passed (socket activation:
    /// `LISTEN_PID` is this process, `LISTEN_FDS` at least 1, the socket is
    /// fd 3), or None when started otherwise. Under daxrace.socket the
    /// daemon then needs no socket of its own (`RestrictAddressFamilies=none`,
    /// `PrivateNetwork=yes`).
    pub fn from_systemd() -> Result<Option<MetricsServer>, ServeError> {
        const SD_LISTEN_FDS_START: i32 = 3;
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if !ours || count == 0 {
            return Ok(None);
        }
        use std::os::fd::FromRawFd;
        // SAFETY: systemd's protocol hands fd 3 to this process (LISTEN_PID
        // checked above); nothing else in daxrace opens or owns it.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(SD_LISTEN_FDS_START) };
        std_listener
            .set_nonblocking(true)
            .map_err(ServeError::Passed)?;
        // A TCP listener, not some other socket: its local address says so.
        std_listener.local_addr().map_err(ServeError::Passed)?;
        // Not inherited by anything daxrace starts (`trace` runs commands).
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(SD_LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) };
        let listener = TcpListener::from_std(std_listener).map_err(ServeError::Passed)?;
        Ok(Some(MetricsServer {
            listener,
            max_connections: MAX_CONNECTIONS,
        }))
    }

    /// Serves at most `n` connections at once (default [`MAX_CONNECTIONS`]).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, metrics: Arc<Mutex<Metrics>>, health: Arc<Mutex<Health>>) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        loop {
            // A free slot first, then accept: beyond the limit, clients wait
            // in the listen backlog instead of costing the daemon anything.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return; // closed: never happens, the semaphore is ours
            };
            let Ok((stream, _)) = self.listener.accept().await else {
                // Out of fds or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (m, h) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m, h)).await;
                drop(slot);
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
                false,
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
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            false,
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
                head_only,
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
            respond(
                &mut stream,
                head_only,
                "200 OK",
                "text/plain",
                body.as_bytes(),
            )
            .await
        }
        "/" => {
            respond(
                &mut stream,
                head_only,
                "200 OK",
                "text/html",
                b"<html><body><h1>daxrace</h1><a href=\"/metrics\">metrics</a> <a href=\"/healthz\">health</a></body></html>\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                head_only,
                "404 Not Found",
                "text/plain",
                b"not found\n",
            )
            .await
        }
    }
}

/// Writes the response; `head_only` (a HEAD request) keeps the headers,
/// Content-Length included, and leaves out the body (RFC 9110, 9.3.2).
async fn respond(
    stream: &mut TcpStream,
    head_only: bool,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream as StdStream,
    };

    use super::*;

    /// A server on a free loopback port, in its own runtime thread.
    fn start(max_connections: usize) -> SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr"))
                    .await
                    .expect("bind")
                    .with_max_connections(max_connections);
                tx.send(server.local_addr().expect("addr")).expect("send");
                let metrics = Arc::new(Mutex::new(Metrics::new("test")));
                server.serve(metrics, Arc::default()).await;
            });
        });
        rx.recv().expect("the server started")
    }

    fn request(addr: SocketAddr, method: &str, path: &str) -> Vec<u8> {
        let mut s = StdStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        out
    }

    fn split(resp: &[u8]) -> (String, Vec<u8>) {
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header block");
        (
            String::from_utf8_lossy(&resp[..end]).into_owned(),
            resp[end + 4..].to_vec(),
        )
    }

    fn content_length(head: &str) -> usize {
        head.lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("Content-Length")
    }

    #[test]
    fn head_gets_the_headers_of_get_and_no_body() {
        let addr = start(MAX_CONNECTIONS);
        for path in ["/metrics", "/healthz", "/", "/nowhere"] {
            let (get_head, get_body) = split(&request(addr, "GET", path));
            let (head_head, head_body) = split(&request(addr, "HEAD", path));
            assert_eq!(get_head.lines().next(), head_head.lines().next(), "{path}");
            assert_eq!(content_length(&get_head), get_body.len(), "{path}");
            assert!(head_body.is_empty(), "HEAD {path} sent a body");
            if path != "/metrics" {
                // /metrics changes between scrapes (nothing here, but in
                // principle); the others must announce the same length.
                assert_eq!(content_length(&head_head), get_body.len(), "{path}");
            } else {
                assert!(content_length(&head_head) > 0);
            }
        }
        let (head, _) = split(&request(addr, "POST", "/metrics"));
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    }

    #[test]
    fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let addr = start(2);
        // Two clients that connect and say nothing hold both slots.
        let mut idle: Vec<StdStream> = (0..2)
            .map(|_| StdStream::connect(addr).expect("connect"))
            .collect();
        // Let the server accept them.
        std::thread::sleep(Duration::from_millis(200));
        let mut third = StdStream::connect(addr).expect("connect: the backlog takes it");
        third
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .expect("send");
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let waited = third.read(&mut buf);
        assert!(
            matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a third connection was served while two held every slot: {waited:?}"
        );
        // One idle client leaves: its slot serves the waiting one.
        drop(idle.pop());
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = Vec::new();
        third.read_to_end(&mut out).expect("read");
        let (head, body) = split(&out);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.starts_with(b"ok\n"));
    }
}

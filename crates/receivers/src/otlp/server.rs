//! Listening, TLS and connection handling shared by the gRPC and HTTP servers.

use bizpilot_core::ComponentError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;

use super::grpc::{self, GrpcState};
use super::http::{self as otlp_http, HttpState};
use super::ingest::LogLimit;

/// Longest a client may take for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send request headers (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `address` (`host:port`) now, so a taken port is a start error.
pub(crate) fn bind(address: &str) -> Result<TcpListener, ComponentError> {
    let bind_err = |source: std::io::Error| ComponentError::Bind {
        address: address.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = address.to_socket_addrs().map_err(bind_err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "the host resolved to no address");
    for addr in addrs {
        match listen(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(bind_err(last))
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The request handler of one server.
#[derive(Clone)]
pub(crate) enum Handler {
    Grpc(Arc<GrpcState>),
    Http(Arc<HttpState>),
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, req: Request<Incoming>) -> HandlerFuture {
        match self {
            Handler::Grpc(s) => {
                let s = s.clone();
                Box::pin(async move { Ok(grpc::handle(s, req).await) })
            }
            Handler::Http(s) => {
                let s = s.clone();
                Box::pin(async move { Ok(otlp_http::handle(s, req).await) })
            }
        }
    }
}

/// One listening server.
pub(crate) struct Server {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) handler: Handler,
    /// gRPC needs HTTP/2 (also without TLS, with prior knowledge); the HTTP port speaks both.
    pub(crate) http2_only: bool,
    pub(crate) transport: &'static str,
    pub(crate) receiver: String,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub(crate) grace: Duration,
    /// Cancelled once `grace` is over: requests still waiting for room are refused.
    pub(crate) hard_stop: CancellationToken,
}

/// How long refused requests get to be answered once the grace period is over.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

impl Server {
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        if self.http2_only {
            b = b.http2_only();
        }
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        b.http2()
            .timer(TokioTimer::new())
            // Larger windows than the 64 KiB default let big export requests flow without
            // waiting for window updates on every few frames.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(2 << 20)
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }

    /// Accepts connections until `shutdown` is cancelled, then lets in-flight requests
    /// finish (at most `grace`) and returns once every connection is closed.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let builder = Arc::new(self.builder());
        let accept_log = LogLimit::new();
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        conns.spawn(connection(
                            stream,
                            peer,
                            self.tls.clone(),
                            builder.clone(),
                            self.handler.clone(),
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        if accept_log.allow() {
                            tracing::warn!(receiver = %self.receiver, transport = self.transport, error = %e, "cannot accept connections");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        let open = conns.len();
        if open > 0 {
            tracing::debug!(receiver = %self.receiver, transport = self.transport, open, "stopped accepting; waiting for open connections");
        }
        let mut drain = async || {
            while conns.join_next().await.is_some() {}
        };
        if tokio::time::timeout(self.grace, drain()).await.is_err() {
            // Refuse what still waits for room, give the refusals a moment to reach the clients.
            self.hard_stop.cancel();
            if tokio::time::timeout(ANSWER_TIMEOUT, drain()).await.is_err() {
                tracing::warn!(
                    receiver = %self.receiver,
                    transport = self.transport,
                    open = conns.len(),
                    "connections still busy {:?} after shutdown began; closing them",
                    self.grace + ANSWER_TIMEOUT
                );
                conns.shutdown().await;
            }
        }
        // The handler (and with it the pipeline outputs) is dropped here.
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Handler,
    shutdown: CancellationToken,
) {
    match tls {
        None => serve(&builder, stream, handler, &shutdown, peer).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            serve(&builder, stream, handler, &shutdown, peer).await;
        }
    }
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    handler: Handler,
    shutdown: &CancellationToken,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            // Finish requests in flight, refuse new ones, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

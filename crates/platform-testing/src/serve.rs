//! Serving a fake: an actix-web `HttpServer` on a loopback port, on a thread and actix system of its
//! own, with a handle that stops it.
//!
//! A fake keeps answering whatever the test's runtime is doing (blocked, shutting down, or a
//! blocking client on another thread), and stopping it makes the upstream disappear: connections
//! are refused, as in an outage.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::{App, HttpServer, web};

/// A running server. Dropping it stops the server.
#[derive(Debug)]
pub(crate) struct Served {
    addr: SocketAddr,
    handle: Option<ServerHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Binds `127.0.0.1:<port>` (0 picks a free one) and serves the routes `configure` declares,
    /// with `workers` worker threads, on a thread named `name`.
    pub(crate) fn start<F>(
        name: &str,
        port: u16,
        workers: usize,
        configure: F,
    ) -> anyhow::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        Self::start_on(name, Self::bind(port)?, workers, configure)
    }

    /// A listener on `127.0.0.1:<port>`, for a fake whose routes need its address before serving.
    pub(crate) fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(("127.0.0.1", port))
    }

    /// [`Served::start`] on a listener bound already.
    pub(crate) fn start_on<F>(
        name: &str,
        listener: std::net::TcpListener,
        workers: usize,
        configure: F,
    ) -> anyhow::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let addr = listener.local_addr()?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let label = name.to_owned();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let system = actix_web::rt::System::new();
            let result = system.block_on(async move {
                let server = HttpServer::new(move || App::new().configure(configure.clone()))
                    .workers(workers.max(1))
                    // Clients pool connections for long; an idle timeout would race their reuse.
                    .keep_alive(KeepAlive::Os)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener)?
                    .run();
                let _ = handle_tx.send(server.handle());
                server.await
            });
            if let Err(error) = result {
                tracing::error!(%error, server = %label, "fake server stopped with an error");
            }
        })?;
        let handle = handle_rx.recv_timeout(Duration::from_secs(10))?;
        Ok(Self { addr, handle: Some(handle), thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: from now on connections are refused. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // `stop` returns a future that resolves once the server stopped; the server thread
            // ends with it, so joining the thread is the wait.
            drop(handle.stop(false));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

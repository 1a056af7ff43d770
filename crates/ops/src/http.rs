//! The HTTP endpoints every server exposes: `/metrics` (Prometheus text), `/health`
//! (the process answers), `/ready` (it can serve), and, where the server has one, the
//! dashboard (`/`) with its JSON (`/api/status`), and on a metadata server `/api/state`
//! (its applied index and a digest of its state machine). Each server supplies a [`Probe`].

use crate::error::OpsError;
use crate::metrics::Encoder;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The dashboard page: static HTML and JS that polls `/api/status` every second.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What a server tells its HTTP endpoints. The methods may block briefly (they read
/// local state); they run on a blocking thread.
pub trait Probe: Send + Sync + 'static {
    /// Writes the server's metrics.
    fn metrics(&self, enc: &mut Encoder);
    /// `Ok` when the server can serve requests, else why not.
    fn ready(&self) -> Result<(), String>;
    /// The dashboard's data (`/api/status`); `None` when this server has no dashboard.
    fn status(&self) -> Option<Result<serde_json::Value, String>> {
        None
    }
    /// This server's replicated state (`/api/state`): a metadata server answers its last
    /// applied log index and a digest of its state machine, on any server of the group (a
    /// follower too), so replicas can be compared; `None` elsewhere.
    fn state_digest(&self) -> Option<Result<serde_json::Value, String>> {
        None
    }
}

/// The HTTP address a server uses: `http_addr` when set (`""`: none), else the `listen`
/// host with the port + 80 (7400 → 7480, 7500 → 7580; port 0 stays 0, a free port).
pub fn http_listen(http_addr: Option<&str>, listen: &str) -> Option<String> {
    match http_addr {
        Some("") => None,
        Some(a) => Some(a.to_string()),
        None => {
            let (host, port) = listen.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            let port = if port == 0 { 0 } else { port.checked_add(80)? };
            Some(format!("{host}:{port}"))
        }
    }
}

struct Ctx {
    probe: Arc<dyn Probe>,
    started: f64,
}

/// Binds the HTTP listener (before the server reports itself started, so a port in use
/// fails the start).
pub async fn bind(addr: &str) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr).await.map_err(|source| OpsError::Bind { addr: addr.to_string(), source })
}

/// Serves the endpoints on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let app = router(Arc::new(Ctx { probe, started }));
    let r = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = r {
        tracing::warn!(addr = ?addr, error = %e, "HTTP endpoint stopped with an error");
    }
}

/// Binds `addr` and spawns [`serve`]; returns the bound address.
pub async fn spawn(
    addr: &str,
    probe: Arc<dyn Probe>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), OpsError> {
    let listener = bind(addr).await?;
    let local = listener.local_addr().map_err(|source| OpsError::Bind { addr: addr.to_string(), source })?;
    let h = tokio::spawn(serve(listener, probe, shutdown));
    tracing::info!(addr = %local, "HTTP endpoints (/metrics, /health, /ready) serving");
    Ok((local, h))
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/api/status", get(status))
        .route("/api/state", get(state_digest))
        .with_state(ctx)
}

/// Runs a probe method off the async threads.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&dyn Probe) -> T + Send + 'static,
) -> Result<T, OpsError> {
    let probe = ctx.probe.clone();
    tokio::task::spawn_blocking(move || f(&*probe)).await.map_err(|e| OpsError::Internal(e.to_string()))
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Result<Response, OpsError> {
    let started = ctx.started;
    let text = blocking(&ctx, move |p| {
        let mut enc = Encoder::new();
        enc.family("distfs_build_info", "gauge", "Version of the running program (value is always 1).");
        enc.sample("distfs_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        enc.gauge("process_start_time_seconds", "When the HTTP endpoints started, seconds since the epoch.", started);
        p.metrics(&mut enc);
        enc.finish()
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn ready(State(ctx): State<Arc<Ctx>>) -> Result<Response, OpsError> {
    blocking(&ctx, |p| p.ready()).await?.map_err(OpsError::NotReady)?;
    Ok("ready\n".into_response())
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Result<Response, OpsError> {
    let v = blocking(&ctx, |p| p.status()).await?.ok_or(OpsError::NotFound("this server has no dashboard"))?;
    let v = v.map_err(OpsError::Unavailable)?;
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], v.to_string())
        .into_response())
}

async fn state_digest(State(ctx): State<Arc<Ctx>>) -> Result<Response, OpsError> {
    let v =
        blocking(&ctx, |p| p.state_digest()).await?.ok_or(OpsError::NotFound("this server has no replicated state"))?;
    let v = v.map_err(OpsError::Unavailable)?;
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], v.to_string())
        .into_response())
}

async fn index(State(ctx): State<Arc<Ctx>>) -> Response {
    let has_dashboard = blocking(&ctx, |p| p.status().is_some()).await.unwrap_or(false);
    if has_dashboard {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD_HTML).into_response()
    } else {
        "DistFS: /metrics /health /ready\n".into_response()
    }
}

/// The one place where errors become HTTP statuses.
impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let status = match &self {
            OpsError::NotReady(_) | OpsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            OpsError::Bind { .. } | OpsError::Log(_) | OpsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct P(AtomicBool);
    impl Probe for P {
        fn metrics(&self, enc: &mut Encoder) {
            enc.gauge("t_value", "A value.", 42.0);
        }
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("no metadata connection".into())
            }
        }
    }

    #[test]
    fn http_address_follows_listen_unless_set() {
        assert_eq!(http_listen(None, "127.0.0.1:7400").as_deref(), Some("127.0.0.1:7480"));
        assert_eq!(http_listen(None, "127.0.0.1:0").as_deref(), Some("127.0.0.1:0"));
        assert_eq!(http_listen(Some(""), "127.0.0.1:7400"), None);
        assert_eq!(http_listen(Some("10.0.0.1:9100"), "127.0.0.1:7400").as_deref(), Some("10.0.0.1:9100"));
    }

    #[tokio::test]
    async fn endpoints_answer_with_the_right_statuses() {
        let p = Arc::new(P(AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let (addr, h) = spawn("127.0.0.1:0", p.clone(), stop.clone()).await.expect("bind");
        let addr = addr.to_string();
        let get = |path: &'static str| {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || crate::client::get(&addr, path).expect("GET"))
        };
        let r = get("/health").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        let r = get("/ready").await.unwrap();
        assert_eq!(r.status, 503);
        assert!(r.body.contains("no metadata connection"), "{}", r.body);
        p.0.store(true, Ordering::Relaxed);
        assert_eq!(get("/ready").await.unwrap().status, 200);
        let r = get("/metrics").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.contains("t_value 42\n"), "{}", r.body);
        assert!(r.body.contains("distfs_build_info{version="), "{}", r.body);
        assert_eq!(get("/api/status").await.unwrap().status, 404);
        assert_eq!(get("/api/state").await.unwrap().status, 404);
        assert_eq!(get("/nope").await.unwrap().status, 404);
        stop.cancel();
        h.await.unwrap();
    }
}

//! kestra-edge: the reverse proxy in front of Kestra, as tower middleware.
//!
//! [`KestraEdge`] composes the kestra-edge layers, in the order they must run, around the
//! streaming [`proxy::ReverseProxy`], so a custom gateway gets the whole stack
//! in one call. It replaces the nginx block of Kestra's documentation (`proxy_pass`,
//! `proxy_http_version 1.1`, `Host $http_host`, `proxy_read_timeout 600s`,
//! `proxy_buffering off`).
//!
//! Embedding it in your own axum app:
//!
//! ```
//! use axum::{routing::get, Router};
//! use kestra_edge::KestraEdge;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), kestra_edge::BuildError> {
//! let kestra = KestraEdge::builder("http://127.0.0.1:8080")
//!     .read_timeout(Duration::from_secs(600))
//!     .build_router()?;
//!
//! // Your own routes win; everything else goes to Kestra.
//! let app: Router = Router::new()
//!     .route("/healthz", get(|| async { "ok" }))
//!     .merge(kestra);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Serving it yourself with the same accept loop as the `kestra-edge` binary (HTTP/1.1 and
//! h2c, upgrades, header read timeout, graceful shutdown):
//!
//! ```no_run
//! use kestra_edge::{server::Server, KestraEdge};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let edge = KestraEdge::builder("http://127.0.0.1:8080").build::<hyper::body::Incoming>()?;
//! let server = Server::bind("127.0.0.1:8000".parse()?).await?;
//! server.serve(edge, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

use axum::Router;
use http::{Request, Response};
use http_body::Body;
use std::{
    convert::Infallible,
    error::Error as StdError,
    task::{Context, Poll},
    time::Duration,
};
use tower::Service;

pub use kestra_edge_proxy as proxy;
pub use kestra_edge_proxy::{BuildError, ProxyBody};
pub use kestra_edge_server as server;

use kestra_edge_proxy::{ResponseFuture, ReverseProxy, ReverseProxyBuilder};

/// Configures a [`KestraEdge`] stack; every setting is validated by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct KestraEdgeBuilder {
    proxy: ReverseProxyBuilder,
}

impl KestraEdgeBuilder {
    /// See [`ReverseProxyBuilder::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.connect_timeout(timeout);
        self
    }

    /// See [`ReverseProxyBuilder::read_timeout`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.read_timeout(timeout);
        self
    }

    /// See [`ReverseProxyBuilder::preserve_host`].
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.proxy = self.proxy.preserve_host(preserve);
        self
    }

    /// Builds the stack for request bodies of type `B` (hyper's `Incoming` when serving with
    /// [`server::Server`], axum's `Body` inside a `Router`).
    pub fn build<B>(self) -> Result<KestraEdge<B>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        Ok(KestraEdge {
            proxy: self.proxy.build()?,
        })
    }

    /// Builds the stack as an axum [`Router`] that sends every request to Kestra; merge it
    /// into your app or nest it.
    pub fn build_router(self) -> Result<Router, BuildError> {
        Ok(Router::new().fallback_service(self.build::<axum::body::Body>()?))
    }
}

/// The whole kestra-edge stack as one tower service; see the [crate docs](crate).
#[derive(Debug)]
pub struct KestraEdge<B> {
    proxy: ReverseProxy<B>,
}

impl KestraEdge<()> {
    /// Starts configuring a stack in front of the Kestra webserver at `upstream`
    /// (`http://host:port`).
    pub fn builder(upstream: impl Into<String>) -> KestraEdgeBuilder {
        KestraEdgeBuilder {
            proxy: ReverseProxyBuilder::new(upstream),
        }
    }
}

impl<B> Clone for KestraEdge<B> {
    fn clone(&self) -> Self {
        Self {
            proxy: self.proxy.clone(),
        }
    }
}

impl<B> Service<Request<B>> for KestraEdge<B>
where
    ReverseProxy<B>: Service<
        Request<B>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = ResponseFuture,
    >,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.proxy.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        self.proxy.call(req)
    }
}

//! Name resolution, injectable: the proxy resolves a name once, checks the addresses, and
//! dials only those (so a name that answers differently the second time cannot slip
//! through: DNS rebinding).

use std::{future::Future, io, net::SocketAddr, pin::Pin};

/// What [`Resolve::resolve`] returns.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a destination name to the addresses the proxy may dial. Tests inject their own
/// (a name that answers a public address first and a private one later, for instance).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (never an IP literal: those are not resolved), with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a>;
}

/// The system's resolver (`getaddrinfo` on a blocking thread, through Tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

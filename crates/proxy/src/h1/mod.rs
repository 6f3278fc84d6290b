//! kestra-edge's own HTTP/1.1 client path to a plain `http://` upstream, for requests
//! without a body (the UI's API polls, event streams, pages and assets).
//!
//! hyper-util's pooled client drives each upstream connection from a task of its own and
//! hands it requests through a channel, with a shared pool lock, a boxed future and a
//! dispatch hop on every request, and an 8 KiB read buffer held for the connection's whole
//! life. Here the task that serves the client's connection also drives the upstream one:
//! it takes an idle connection from a per-thread pool, writes the request head in one
//! system call, parses the response head with `httparse` (the parser hyper uses), and the
//! response body reads from the socket itself, holding a read buffer only while bytes are
//! in flight. The response head's deadline runs on a timer the thread lends from one
//! exchange to the next (the `timer` module). Requests with a body, upgrades and `https://`
//! upstreams stay on hyper.
//!
//! The framing is strict RFC 9112 (see [`codec`]): `Content-Length` with
//! `Transfer-Encoding`, an invalid or conflicting `Content-Length`, and any
//! `Transfer-Encoding` but exactly `chunked` are refused (502); chunk lines and trailers are
//! bounded and need CRLF; a connection is pooled only after its body was read to the end
//! with nothing after it.

pub mod codec;
pub(crate) mod exchange;
pub(crate) mod pool;
pub(crate) mod timer;

pub use codec::{BodyDecoder, Decoded, Framing, H1Error, Head};

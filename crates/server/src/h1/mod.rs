//! The server's own HTTP/1.1 path for plain-TCP connections: requests without a body (the
//! UI's polls, pages and SSE streams) are read with `httparse` and answered by the
//! connection's own task; everything else goes to hyper on the same connection (see
//! [`codec`]).

pub mod codec;
pub(crate) mod conn;
mod pool;
mod rewind;

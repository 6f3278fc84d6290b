//! What the layer keeps of a request until its access-log line is written: at the end of
//! the response body, or of the tunnel behind a `101`.

use crate::{access_log::Entry, AccessLog};
use bytes::Buf;
use http::{header::CONTENT_ENCODING, HeaderValue, Method, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use kestra_edge_forwarded::ClientAddr;
use kestra_edge_headers::{GatewayAnswer, ServedBy};
use kestra_edge_proxy::UpstreamFailure;
use kestra_edge_upgrade::{TunnelEnd, TunnelObserver};
use pin_project_lite::pin_project;
use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
    time::Instant,
};

/// `X-Request-Id`.
const X_REQUEST_ID: &str = "x-request-id";

/// The access log of a layer, and the upstream to name when no replica is named.
#[derive(Debug, Clone)]
pub(crate) struct Logging {
    pub(crate) log: AccessLog,
    pub(crate) upstream: Option<Arc<str>>,
    /// Around a forward proxy: `connect` and `forward` lines.
    pub(crate) forward_proxy: bool,
}

/// One request's line in the making.
pub(crate) struct Pending {
    log: AccessLog,
    method: Method,
    uri: Uri,
    client: Option<IpAddr>,
    started: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
    status: u16,
    kind: &'static str,
    upstream: Option<Arc<str>>,
    request_id: Option<HeaderValue>,
    bytes_out: u64,
}

impl Pending {
    pub(crate) fn new<B>(
        logging: &Logging,
        req: &http::Request<B>,
        client: Option<IpAddr>,
        started: Instant,
        bytes_in: Option<Arc<AtomicU64>>,
    ) -> Self {
        // What only a forward proxy is asked: `CONNECT host:port` over HTTP/1 (over HTTP/2,
        // CONNECT is RFC 8441's WebSocket), and an absolute-form request.
        let kind = if logging.forward_proxy && req.method() == Method::CONNECT {
            "connect"
        } else if logging.forward_proxy && req.uri().scheme().is_some() {
            "forward"
        } else {
            "http"
        };
        Self {
            log: logging.log.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            client,
            started,
            bytes_in,
            status: 0,
            kind,
            upstream: logging.upstream.clone(),
            request_id: None,
            bytes_out: 0,
        }
    }

    /// The request's method.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// What the response head tells: status, the client a trusted proxy reported, the
    /// replica, the request id.
    pub(crate) fn head<B>(&mut self, response: &Response<B>, event_stream: bool) {
        self.status = response.status().as_u16();
        if event_stream && self.kind == "http" {
            self.kind = "sse";
        }
        let extensions = response.extensions();
        if let Some(client) = extensions.get::<ClientAddr>() {
            self.client = Some(client.0);
        }
        if let Some(served) = extensions.get::<ServedBy>() {
            self.upstream = Some(served.0.clone());
        } else if extensions.get::<GatewayAnswer>().is_some()
            && extensions.get::<UpstreamFailure>().is_none()
        {
            // Answered by the gateway before any upstream was asked (404 outside the
            // context path, 413, 429 …).
            self.upstream = None;
        }
        self.request_id = response.headers().get(X_REQUEST_ID).cloned();
    }

    /// The client went away before the head arrived: status 499, as nginx logs it.
    pub(crate) fn write_unanswered(mut self) {
        self.status = 499;
        self.write("aborted", None);
    }

    fn write(&self, end: &'static str, tunnel: Option<&TunnelEnd>) {
        let (bytes_in, bytes_out) = match tunnel {
            Some(t) => (t.from_client, t.from_upstream),
            None => (
                self.bytes_in
                    .as_ref()
                    .map_or(0, |b| b.load(Ordering::Relaxed)),
                self.bytes_out,
            ),
        };
        // A forward proxy's requests name their destination: `CONNECT host:port`
        // (authority-form), `GET http://host/path` (absolute-form, logged without its query).
        let absolute;
        let target = match (self.uri.authority(), self.uri.scheme_str()) {
            (Some(authority), None) => authority.as_str(),
            (Some(authority), Some(scheme)) if self.kind == "forward" => {
                absolute = format!("{scheme}://{authority}{}", self.uri.path());
                absolute.as_str()
            }
            _ => self.uri.path(),
        };
        self.log.write(&Entry {
            kind: self.kind,
            client: self.client,
            method: self.method.as_str(),
            target,
            status: self.status,
            bytes_in,
            bytes_out,
            duration: self.started.elapsed(),
            upstream: self.upstream.as_deref(),
            request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            end,
        });
    }
}

/// Whether a request may open a tunnel: an HTTP/1.1 upgrade or a CONNECT (RFC 8441's
/// extended CONNECT over HTTP/2).
pub(crate) fn may_tunnel<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(http::header::UPGRADE)
}

/// Whether `response` to a request that may tunnel opened one.
pub(crate) fn opens_tunnel<B>(method: &Method, response: &Response<B>) -> bool {
    let status = response.status();
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// The line of a request whose answer opened a tunnel: written when the tunnel ends (the
/// upgrade layer holds one reference until then), with its bytes each way.
#[derive(Default)]
pub(crate) struct TunnelLine {
    state: Mutex<TunnelState>,
}

#[derive(Default)]
struct TunnelState {
    pending: Option<Box<Pending>>,
    end: Option<TunnelEnd>,
}

impl TunnelLine {
    /// The tunnel opened: its line is written when it ends.
    pub(crate) fn opened(&self, mut pending: Box<Pending>, protocol: Option<&HeaderValue>) {
        pending.kind = match protocol {
            Some(p) if p.as_bytes().eq_ignore_ascii_case(b"websocket") => "websocket",
            _ if pending.kind == "connect" => "connect",
            // RFC 8441's extended CONNECT: the upgrade layer allows only WebSocket.
            _ if pending.method == Method::CONNECT => "websocket",
            _ => "upgrade",
        };
        if let Ok(mut state) = self.state.lock() {
            state.pending = Some(pending);
        }
    }
}

impl TunnelObserver for TunnelLine {
    fn ended(&self, end: &TunnelEnd) {
        if let Ok(mut state) = self.state.lock() {
            state.end = Some(*end);
        }
    }
}

impl Drop for TunnelLine {
    fn drop(&mut self) {
        let state = match self.state.get_mut() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(pending) = state.pending.take() {
            match &state.end {
                Some(end) => pending.write(end.reason, Some(end)),
                // The client never completed the switch.
                None => pending.write("aborted", None),
            }
        }
    }
}

/// What a response body carries besides its frames: the line to write at its end, and the
/// request id to add to one of the gateway's own answers.
pub(crate) struct Extra {
    line: Option<Pending>,
    suffix: Option<bytes::Bytes>,
    inner_done: bool,
}

impl Extra {
    /// `None` when there is nothing to add.
    pub(crate) fn new<B>(line: Option<Pending>, response: &Response<B>) -> Option<Box<Self>> {
        let suffix = request_id_suffix(response);
        (line.is_some() || suffix.is_some()).then(|| {
            Box::new(Self {
                line,
                suffix,
                inner_done: false,
            })
        })
    }

    /// The head is out: a HEAD request's body is never sent, an empty one is done.
    pub(crate) fn at_head(&mut self, head_request: bool, empty: bool) {
        if head_request {
            self.suffix = None;
        }
        if self.suffix.is_none() && (head_request || empty) {
            self.inner_done = true;
            self.finish("done");
        }
    }

    fn finish(&mut self, end: &'static str) {
        if let Some(line) = self.line.take() {
            line.write(end, None);
        }
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the connection closed).
        self.finish("aborted");
    }
}

/// `request id: …` for the body of one of the gateway's own answers that has an id (and
/// that no layer has compressed).
fn request_id_suffix<B>(response: &Response<B>) -> Option<bytes::Bytes> {
    if response.extensions().get::<GatewayAnswer>().is_none()
        || response.headers().contains_key(CONTENT_ENCODING)
    {
        return None;
    }
    let id = response.headers().get(X_REQUEST_ID)?.to_str().ok()?;
    Some(bytes::Bytes::from(format!("request id: {id}\n")))
}

/// What `poll_frame` returns.
type FramePoll<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Polls `inner` for [`TelemetryBody`](crate::TelemetryBody) when it has an [`Extra`].
pub(crate) fn poll_frame_extra<B>(
    mut inner: Pin<&mut B>,
    extra: &mut Extra,
    cx: &mut Context<'_>,
) -> FramePoll<B>
where
    B: Body,
    B::Data: From<bytes::Bytes>,
{
    if !extra.inner_done {
        match ready!(inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(line) = &mut extra.line {
                    if let Some(data) = frame.data_ref() {
                        line.bytes_out += data.remaining() as u64;
                    }
                }
                if extra.suffix.is_none() && inner.is_end_stream() {
                    extra.inner_done = true;
                    extra.finish("done");
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Some(Err(err)) => {
                extra.inner_done = true;
                extra.suffix = None;
                extra.finish("error");
                return Poll::Ready(Some(Err(err)));
            }
            None => extra.inner_done = true,
        }
    }
    if let Some(suffix) = extra.suffix.take() {
        if let Some(line) = &mut extra.line {
            line.bytes_out += suffix.len() as u64;
        }
        extra.finish("done");
        return Poll::Ready(Some(Ok(Frame::data(suffix.into()))));
    }
    extra.finish("done");
    Poll::Ready(None)
}

/// `is_end_stream` of a body with an [`Extra`].
pub(crate) fn is_end_stream_extra<B: Body>(inner: &B, extra: &Extra) -> bool {
    extra.suffix.is_none() && (extra.inner_done || inner.is_end_stream())
}

/// `size_hint` of a body with an [`Extra`].
pub(crate) fn size_hint_extra<B: Body>(inner: &B, extra: &Extra) -> SizeHint {
    let Some(suffix) = &extra.suffix else {
        return if extra.inner_done {
            SizeHint::with_exact(0)
        } else {
            inner.size_hint()
        };
    };
    let add = suffix.len() as u64;
    let inner = if extra.inner_done {
        SizeHint::with_exact(0)
    } else {
        inner.size_hint()
    };
    let mut hint = SizeHint::new();
    hint.set_lower(inner.lower().saturating_add(add));
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper.saturating_add(add));
    }
    hint
}

pin_project! {
    /// The request body the layer hands on: the client's, its bytes counted for the access
    /// log when the log is on and the request has a body.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        counted: Option<Arc<AtomicU64>>,
    }
}

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, counted: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, counted }
    }

    /// The client's body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(counted), Some(Ok(frame))) = (this.counted.as_ref(), &frame) {
            if let Some(data) = frame.data_ref() {
                counted.fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

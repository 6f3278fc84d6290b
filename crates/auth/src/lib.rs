//! Single sign-on in front of Kestra: forward authentication (oauth2-proxy, Authelia,
//! Authentik), and Kestra's own basic-auth credentials presented upstream so that Kestra's
//! login page never shows.
//!
//! Open-source Kestra has only basic auth (mandatory since 0.24); SSO is an Enterprise
//! feature. [`ForwardAuthLayer`] does what nginx `auth_request`, Traefik `ForwardAuth` and
//! Caddy `forward_auth` do, plus the part none of them does for Kestra:
//!
//! - Before a request is forwarded, a bodiless `GET` goes to the auth URL with the client's
//!   `Cookie` (HTTP/2's split cookie fields joined into one), `Authorization` and `Accept`
//!   (oauth2-proxy answers a browser and an API call differently), and
//!   `X-Forwarded-Method`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Uri`
//!   (the path and query exactly as the client sent them, `%2F` kept; before any prefix
//!   strip) and `X-Forwarded-For`, the Traefik/Caddy/oauth2-proxy conventions.
//!   - **2xx** lets the request through; its [`auth_response_header`]s are copied onto the
//!     upstream request and its `Set-Cookie`s (a session refresh) added to the client's
//!     response.
//!   - **Anything else** goes back to the client as it is: status, `Location`,
//!     `WWW-Authenticate`, `Set-Cookie`, every other end-to-end header and the body (up to
//!     [`max_denial_body`], 64 KiB by default), so a 302 to the login page works in a browser.
//!     Kestra is never contacted.
//!   - **Unreachable, broken, or slower than [`timeout`]** (5 s by default; connecting,
//!     the answer and its body all count): 503, Kestra never contacted. Fail closed, always.
//!   - The auth URL is `http://` or `https://`; over TLS the certificate is verified against
//!     the system's roots and the [`auth_ca`] files, and one that does not verify is a 503
//!     like any unreachable service. One pooled keep-alive HTTP/1.1 client (hyper-util's)
//!     serves every request, shared by the layer's clones.
//! - The client's own headers named like an auth-response header are removed from every
//!   request, bypassed ones included: a client never chooses its identity.
//! - [`bypass`] paths skip the check: Kestra's machine endpoints, `{ctx}/ping`,
//!   `{ctx}/api/v1/executions/webhook/` and `{ctx}/api/v1/{tenant}/executions/webhook/`
//!   (`{name}` is any one segment). They are matched on whole segments after normalisation
//!   ([`BypassPath`]), never with a dot segment, and are forwarded as the client sent them,
//!   without Kestra's credentials (Kestra serves them without login).
//! - The allow [`cache`] (off by default) keeps 2xx decisions, with their identity headers,
//!   for a while, keyed by the SHA-256 of the exact `Cookie` and `Authorization` values;
//!   bounded in size; a denial is never cached, nor a request with neither header. A page
//!   load and its SSE reconnects then ask the auth service once. The key holds no path: do
//!   not turn the cache on if your auth service allows per path or method (Authelia rules
//!   by resource).
//! - WebSocket upgrades and SSE streams are checked like any request, once, when they start.
//! - [`kestra_credentials_file`]: see below.
//!
//! ## Where it sits
//!
//! Inside (after) kestra-edge's forwarded-headers layer: it sends the auth service the
//! `X-Forwarded-Proto`, `-Host` and `-For` that layer computed (a client's own claims are
//! gone by then; when an `X-Forwarded-*` was switched off, the layer falls back to `Host`,
//! the TLS marker and the TCP peer). Used without that layer, whatever `X-Forwarded-*` the
//! client sent reaches the auth service. The facade [`kestra_edge`] puts it after the prefix
//! layer too (`KestraEdgeBuilder::forward_auth`): the prefix layer's `OriginalUri` keeps
//! `X-Forwarded-Uri` and the bypass match on the client's path in strip mode.
//!
//! [`kestra_edge`]: https://docs.rs/kestra-edge
//! [`auth_response_header`]: ForwardAuthBuilder::auth_response_header
//! [`max_denial_body`]: ForwardAuthBuilder::max_denial_body
//! [`timeout`]: ForwardAuthBuilder::timeout
//! [`bypass`]: ForwardAuthBuilder::bypass
//! [`cache`]: ForwardAuthBuilder::cache
//! [`kestra_credentials_file`]: ForwardAuthBuilder::kestra_credentials_file
//! [`auth_ca`]: ForwardAuthBuilder::auth_ca
//!
//! ```no_run
//! use kestra_edge_auth::ForwardAuthLayer;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = ForwardAuthLayer::builder()
//!     .url("http://127.0.0.1:4180/oauth2/auth")
//!     .timeout(Duration::from_secs(2))
//!     .auth_response_header("X-Auth-Request-User")
//!     .auth_response_header("X-Auth-Request-Email")
//!     .bypass("/kestra/ping")
//!     .bypass("/kestra/api/v1/executions/webhook/")
//!     .bypass("/kestra/api/v1/{tenant}/executions/webhook/")
//!     .cache(Some(Duration::from_secs(30)))
//!     .kestra_credentials_file("/run/secrets/kestra-credentials")
//!     .build()?;
//! // kestra_edge::KestraEdge::builder("http://kestra:8080").forward_auth(auth)
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```
//!
//! ## Kestra's `BASIC_AUTH` cookie: what Kestra's source says
//!
//! Kestra's UI honours only cookie-based basic auth, not an `Authorization` header a proxy
//! injects (Kestra issue 10874). Read in Kestra's repository (kestra-io/kestra, through the
//! code index and a snapshot of December 2024):
//!
//! - `webserver/src/main/java/io/kestra/webserver/services/BasicAuthService.java`: the cookie
//!   is `BASIC_AUTH` (`BASIC_AUTH_COOKIE_NAME`), its value `base64(username:password)`,
//!   standard base64 with padding (`encodeToken`, `Base64.getEncoder()`). `isAuthenticated`
//!   reads **the cookie first** and the `Authorization: Basic` header only when there is no
//!   cookie; it splits the decoded value at the first `:`. So a stale `BASIC_AUTH` of the
//!   browser's would beat an injected header: the layer replaces the client's cookie too.
//!   The same file names the flag cookie `kestraBasicAuthenticated`
//!   (`BASIC_AUTH_FLAG_COOKIE_NAME`): "Non-HttpOnly cookie mirroring whether BASIC_AUTH is
//!   set, so the UI can read the login state ... It carries no credentials."
//! - `webserver/src/main/java/io/kestra/webserver/filter/AuthenticationFilter.java`: applies
//!   to `/api/v1/**`; lets through `/api/v1/configs/login`, `/api/v1/login`, the configured
//!   open URLs (a raw `startsWith`), management endpoints, and otherwise answers 401 with
//!   `WWW-Authenticate: Basic` unless `isAuthenticated`. It collapses `/+` to `/` before
//!   comparing, which [`BypassPath`] does too. The 2024 snapshot's filter read only the
//!   `Authorization` header.
//! - `webserver/src/main/java/io/kestra/webserver/filter/CsrfTokenFilter.java`: a request
//!   with a `BASIC_AUTH` (or `JWT`) cookie and an unsafe method must carry a valid
//!   `X-CSRF-TOKEN`, else 403; header-authenticated requests are exempt. Hence the layer
//!   injects the cookie only when the client sent cookies (a browser: the UI sends the
//!   token it finds in the `<meta name="csrf-token">` of `/ui/`, per `ui/src/utils/csrf.ts`,
//!   so Kestra's CSRF protection stays on for it), and only the header to cookie-less API
//!   clients, whose POSTs would otherwise be refused.
//! - `ui/src/utils/basicAuth.ts`, newest version: the UI logs in with `POST
//!   {ctx}/api/v1/login` (the server sets the HttpOnly `BASIC_AUTH`) and `isLoggedIn()` is
//!   `document.cookie.split("; ").includes("kestraBasicAuthenticated=true")`. Older
//!   versions kept the flag in `sessionStorage`, then `localStorage`, which no proxy can
//!   set; the oldest (0.24 era) wrote `BASIC_AUTH=base64(user:password);path=/;samesite=strict`
//!   into `document.cookie` itself and treated any `BASIC_AUTH` cookie as logged in.
//! - `webserver/src/test/java/io/kestra/webserver/controllers/api/MiscControllerTest.java`
//!   (a version in the index; `MiscController` itself was read only in versions older than
//!   its login endpoint): `POST /api/v1/login` answers 204 with `BASIC_AUTH` HttpOnly and
//!   `kestraBasicAuthenticated=true` not HttpOnly; `POST /api/v1/logout` clears both
//!   (`Max-Age=0`); webhooks answer without credentials.
//!
//! What the browser must hold is therefore only `kestraBasicAuthenticated=true`, which is
//! not a secret. The layer sets it (`Path=/; SameSite=Strict`, `Secure` when the client used
//! HTTPS, no expiry: the attributes the UI's own cookies had) on a response to an
//! authenticated request whose client lacks it, unless Kestra's response sets or clears it
//! itself (a logout). The credentials themselves only travel upstream: `Authorization` always,
//! the `BASIC_AUTH` cookie for clients that send cookies; every `Set-Cookie: BASIC_AUTH` of
//! Kestra's (its `/login` and `/logout`) is removed from responses, and no other response
//! header is written from them. Not verified against a running Kestra: the versions of the
//! UI that keep the flag in web storage, and the oldest one, still show their login page.

mod body;
mod bypass;
mod cache;
mod check;
mod credentials;
mod layer;
mod service;

pub use body::MessageBody;
pub use bypass::{BypassPath, BypassPathError};
pub use check::{X_FORWARDED_METHOD, X_FORWARDED_URI};
pub use credentials::{CredentialsError, KestraCredentials, BASIC_AUTH_COOKIE, FLAG_COOKIE};
pub use layer::{
    ForwardAuthBuilder, ForwardAuthError, ForwardAuthLayer, DEFAULT_CACHE_CAPACITY,
    DEFAULT_MAX_DENIAL_BODY, DEFAULT_TIMEOUT,
};
pub use service::{ForwardAuth, ResponseFuture};

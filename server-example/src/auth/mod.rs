//! Who is asking: the `--auth` modes, the [`Caller`] every protected handler acts for, and
//! the per-identity rate limit.
//!
//! - `none`: nobody signs in, and a request's `user_id` field scopes history and jobs, as a
//!   single-user tool on 127.0.0.1 needs. The server refuses to listen elsewhere in this
//!   mode unless `--insecure-public` says so ([`check_exposure`]).
//! - `tokens:FILE`: `Authorization: Bearer TOKEN`, looked up in the [`tokens`] file.
//! - `header:NAME`: an authenticating proxy in front (oauth2-proxy's
//!   `X-Auth-Request-User`) names the user; believed only from `--trusted-proxy` addresses.

pub mod rate;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use crate::error::AppError;
use crate::identity::check_user_id;
use crate::state::AppState;
use rate::RateLimiter;
use tokens::TokenStore;

/// Header in which a service token's holder (a web tier) names the user it acts for.
pub const ACT_FOR_HEADER: &str = "x-partialconv-user";

/// How the server learns who is asking (`--auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Nobody signs in; requests name their user in `user_id`.
    None,
    /// Bearer tokens from this file.
    Tokens(PathBuf),
    /// The user is in this header, set by a trusted proxy.
    Header(HeaderName),
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Self::None),
            Some(("tokens", path)) if !path.is_empty() => Ok(Self::Tokens(path.into())),
            Some(("header", name)) => HeaderName::from_str(name)
                .map(Self::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            _ => Err(format!(
                "unknown auth mode `{s}`: expected none, tokens:FILE or header:NAME"
            )),
        }
    }
}

/// Who a request acts for, as the authentication middleware found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `--auth none`: whoever the request's `user_id` names.
    Open,
    /// A signed-in user.
    User(String),
}

impl Caller {
    /// The user a request acts for: the signed-in one, or with `--auth none` the request's
    /// own `user_id`. Naming another user than the signed-in one is 403 `forbidden`.
    pub fn user(&self, requested: Option<String>) -> Result<Option<String>, AppError> {
        let requested = check_user_id(requested)?;
        match self {
            Self::Open => Ok(requested),
            Self::User(me) => match requested {
                Some(other) if &other != me => Err(AppError::Forbidden(format!(
                    "signed in as `{me}`, and a request cannot act for `{other}`"
                ))),
                _ => Ok(Some(me.clone())),
            },
        }
    }

    /// Whose things the caller may see: `None` for everyone's (`--auth none`).
    pub fn scope(&self) -> Option<&str> {
        match self {
            Self::Open => None,
            Self::User(me) => Some(me),
        }
    }

    /// Whether something of `owner`'s is the caller's to see.
    pub fn may_see(&self, owner: &str) -> bool {
        self.scope().is_none_or(|me| me == owner)
    }
}

/// Handlers take the caller as an argument; only routes behind [`authenticate`] have one.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| AppError::internal("a protected handler on a public route"))
    }
}

/// The authentication settings, built once from the flags.
pub struct Auth {
    mode: AuthMode,
    tokens: Option<TokenStore>,
    trusted_proxies: Vec<IpNet>,
    rate: Option<RateLimiter>,
    /// `/metrics` without authentication (`--public-metrics`).
    pub public_metrics: bool,
}

impl Auth {
    /// `trusted_proxies` are CIDRs (a bare address is a /32 or /128); `rate_per_minute` 0 is
    /// no limit.
    pub fn new(
        mode: AuthMode,
        trusted_proxies: &[String],
        rate_per_minute: u32,
        public_metrics: bool,
    ) -> Result<Self, String> {
        let tokens = match &mode {
            AuthMode::Tokens(path) => {
                Some(TokenStore::open(path.clone()).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let trusted_proxies = trusted_proxies
            .iter()
            .map(|p| {
                let p = p.trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("--trusted-proxy `{p}` is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mode,
            tokens,
            trusted_proxies,
            rate: (rate_per_minute > 0).then(|| RateLimiter::per_minute(rate_per_minute)),
            public_metrics,
        })
    }

    /// The mode in effect.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// Whether requests from `peer` may set forwarding and identity headers.
    pub fn is_trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(&ip)))
    }

    /// Who the request is from, or 401 `unauthorized`.
    pub fn identify(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<Caller, AppError> {
        match &self.mode {
            AuthMode::None => Ok(Caller::Open),
            AuthMode::Tokens(_) => {
                let token = bearer(headers).ok_or_else(|| {
                    AppError::Unauthorized("sign in: send `Authorization: Bearer TOKEN`".into())
                })?;
                let store = self.tokens.as_ref().expect("tokens mode has a store");
                let who = store.lookup(token).ok_or_else(|| {
                    AppError::Unauthorized("the token is unknown, revoked or expired".into())
                })?;
                let acting_for = headers.get(ACT_FOR_HEADER).and_then(|v| v.to_str().ok());
                match acting_for {
                    Some(user) if who.service => check_user_id(Some(user.to_owned()))?
                        .map(Caller::User)
                        .ok_or_else(|| AppError::Unauthorized(format!("empty {ACT_FOR_HEADER}"))),
                    Some(_) => Err(AppError::Forbidden(format!(
                        "only a service token may act for another user ({ACT_FOR_HEADER})"
                    ))),
                    None => Ok(Caller::User(who.user)),
                }
            }
            AuthMode::Header(name) => {
                if !self.is_trusted_proxy(peer) {
                    return Err(AppError::Unauthorized(
                        "sign in through the authenticating proxy".into(),
                    ));
                }
                let user = headers.get(name).and_then(|v| v.to_str().ok());
                check_user_id(user.map(str::to_owned))?
                    .map(Caller::User)
                    .ok_or_else(|| AppError::Unauthorized(format!("the proxy sent no `{name}`")))
            }
        }
    }

    /// Takes one request from the caller's bucket, if there is a limit.
    fn admit(&self, caller: &Caller, peer: Option<IpAddr>) -> Result<(), AppError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        // Without sign-in, `user_id` is the client's word: the address is what is known.
        let key = match caller {
            Caller::User(u) => format!("user:{u}"),
            Caller::Open => format!("ip:{}", peer.map(|p| p.to_string()).unwrap_or_default()),
        };
        rate.take(&key)
            .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The peer's address, when the server was started with connect info (the binary is).
fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Middleware of every route that is not public: finds the [`Caller`] (401 without one),
/// applies the rate limit (429), and hands the caller to the handler.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = peer(&req);
    let auth = &state.auth;
    let caller = match auth.identify(req.headers(), peer) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth.admit(&caller, peer) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Middleware of `/metrics`: public with `--public-metrics` (or `--auth none`), else signed
/// in like the rest of the API.
pub async fn metrics_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth.public_metrics {
        return next.run(req).await;
    }
    authenticate(State(state), req, next).await
}

/// Refuses `--auth none` on an address other machines can reach, unless the operator says
/// `--insecure-public`: without sign-in anyone who can connect reads everyone's photos.
pub fn check_exposure(
    mode: &AuthMode,
    addr: SocketAddr,
    insecure_public: bool,
) -> Result<(), String> {
    if *mode == AuthMode::None && !addr.ip().is_loopback() && !insecure_public {
        return Err(format!(
            "refusing to serve {addr} with --auth none: anyone who can connect would see every \
             user's photos. Use --auth tokens:FILE or --auth header:NAME (docs/security.md), \
             bind 127.0.0.1, or pass --insecure-public"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_what_is_wrong() {
        assert_eq!("none".parse::<AuthMode>(), Ok(AuthMode::None));
        assert_eq!(
            "tokens:/etc/pc/tokens".parse::<AuthMode>(),
            Ok(AuthMode::Tokens("/etc/pc/tokens".into()))
        );
        assert_eq!(
            "header:X-Auth-Request-User".parse::<AuthMode>(),
            Ok(AuthMode::Header(HeaderName::from_static(
                "x-auth-request-user"
            )))
        );
        assert!("tokens:"
            .parse::<AuthMode>()
            .unwrap_err()
            .contains("tokens:FILE"));
        assert!("header:bad header"
            .parse::<AuthMode>()
            .unwrap_err()
            .contains("bad header"));
        assert!("oauth".parse::<AuthMode>().unwrap_err().contains("oauth"));
    }

    #[test]
    fn a_signed_in_caller_acts_only_for_itself() {
        let alice = Caller::User("alice".into());
        assert_eq!(alice.user(None).unwrap().as_deref(), Some("alice"));
        assert_eq!(
            alice.user(Some("alice".into())).unwrap().as_deref(),
            Some("alice")
        );
        let err = alice.user(Some("bob".into())).unwrap_err();
        assert_eq!((err.code(), err.status().as_u16()), ("forbidden", 403));
        assert!(alice.may_see("alice") && !alice.may_see("bob"));
        assert_eq!(
            Caller::Open.user(Some("bob".into())).unwrap().as_deref(),
            Some("bob")
        );
        assert!(Caller::Open.may_see("bob"));
    }

    #[test]
    fn none_is_refused_off_loopback_unless_insecure_public() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(check_exposure(&AuthMode::None, public, false)
            .unwrap_err()
            .contains("--insecure-public"));
        assert!(check_exposure(&AuthMode::None, public, true).is_ok());
        assert!(check_exposure(&AuthMode::None, local, false).is_ok());
        let tokens = AuthMode::Tokens("t".into());
        assert!(check_exposure(&tokens, public, false).is_ok());
    }
}

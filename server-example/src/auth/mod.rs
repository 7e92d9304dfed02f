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
pub mod session;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Method};
use ipnet::IpNet;

use crate::error::AppError;
use crate::identity::check_user_id;
use rate::RateLimiter;
use session::{Session, SessionKey};
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
    sessions: Option<SessionKey>,
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
        session_key_file: &std::path::Path,
    ) -> Result<Self, String> {
        let (tokens, sessions) = match &mode {
            AuthMode::Tokens(path) => (
                Some(TokenStore::open(path.clone()).map_err(|e| e.to_string())?),
                Some(
                    SessionKey::load_or_create(session_key_file)
                        .map_err(|e| format!("session key {}: {e}", session_key_file.display()))?,
                ),
            ),
            _ => (None, None),
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
            sessions,
            trusted_proxies,
            rate: (rate_per_minute > 0).then(|| RateLimiter::per_minute(rate_per_minute)),
            public_metrics,
        })
    }

    /// The mode in effect.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// The mode's name for clients: `none`, `tokens` or `header`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            AuthMode::None => "none",
            AuthMode::Tokens(_) => "tokens",
            AuthMode::Header(_) => "header",
        }
    }

    /// Whether requests from `peer` may set forwarding and identity headers.
    pub fn is_trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(&ip)))
    }

    /// Who the request is from, or 401 `unauthorized`. A session cookie counts for a
    /// request that changes something only with an `Origin` of this server (403 otherwise):
    /// a browser sends the cookie with cross-site requests too.
    pub fn identify(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AppError> {
        match &self.mode {
            AuthMode::None => Ok(Caller::Open),
            AuthMode::Tokens(_) => {
                let store = self.tokens.as_ref().expect("tokens mode has a store");
                let Some(token) = bearer(headers) else {
                    let session = self.session(headers).ok_or_else(|| {
                        AppError::Unauthorized(
                            "sign in: send `Authorization: Bearer TOKEN`, or sign in on the page"
                                .into(),
                        )
                    })?;
                    if !is_safe(method) && !same_origin(headers) {
                        return Err(AppError::Forbidden(
                            "a cross-site request with the session cookie is refused".into(),
                        ));
                    }
                    return Ok(Caller::User(session.user));
                };
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

    /// The client's address: the peer's, or behind trusted proxies the nearest address in
    /// `X-Forwarded-For` that is not one of them (the leftmost entries are the client's
    /// word, so they are never believed).
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.is_trusted_proxy(Some(*ip)))
            .or(peer)
    }

    /// Takes one request from the caller's bucket, if there is a limit.
    pub fn admit(&self, caller: &Caller, client: Option<IpAddr>) -> Result<(), AppError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        // Without sign-in, `user_id` is the client's word: the address is what is known.
        let key = match caller {
            Caller::User(u) => format!("user:{u}"),
            Caller::Open => format!("ip:{}", client.map(|p| p.to_string()).unwrap_or_default()),
        };
        rate.take(&key)
            .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })
    }
}

impl Auth {
    /// The session in the request's cookie, while its token is still valid for its user.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let key = self.sessions.as_ref()?;
        let session = cookie(headers, session::COOKIE).and_then(|v| key.verify(v))?;
        let hash = tokens::decode_hash(&session.token_sha256)?;
        let who = self.tokens.as_ref()?.lookup_hash(&hash)?;
        (who.user == session.user).then_some(session)
    }

    /// A session cookie for whoever `token` signs in as; `None` for a token that signs no
    /// one in, or outside `--auth tokens`.
    pub fn sign_in(&self, token: &str) -> Option<(Session, String)> {
        let who = self.tokens.as_ref()?.lookup(token)?;
        let session = Session {
            user: who.user,
            expires: chrono::Utc::now() + session::LIFETIME,
            token_sha256: hex::encode(tokens::hash(token)),
        };
        let value = self.sessions.as_ref()?.sign(&session);
        Some((session, value))
    }

    /// Whether the request reached us over HTTPS: through a trusted proxy that says so (we
    /// never terminate TLS ourselves).
    pub fn is_https(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
        self.is_trusted_proxy(peer)
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

/// GET, HEAD and OPTIONS change nothing.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `Origin` names the host the request was sent to (browsers send it with every
/// request that is not a GET or HEAD).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// Whether the request was addressed to this machine itself (`localhost`, 127.0.0.0/8,
/// `[::1]`): the one place a session cookie may go without `Secure`.
pub fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
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
pub fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The peer's address as a handler argument; `None` without connect info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
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
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::new(
            AuthMode::None,
            &["10.0.0.0/8".into()],
            0,
            false,
            &dir.path().join("key"),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        let proxy = Some("10.0.0.1".parse().unwrap());
        let client = Some("203.0.113.7".parse().unwrap());
        assert_eq!(
            auth.client_ip(&h, proxy),
            client,
            "the nearest untrusted hop"
        );
        let direct = Some("198.51.100.1".parse().unwrap());
        assert_eq!(
            auth.client_ip(&h, direct),
            direct,
            "not from a proxy: ignored"
        );
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

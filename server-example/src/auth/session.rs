//! The page's sign-in: a token entered once is exchanged for a signed session cookie.
//!
//! The cookie is `user|expiry|token-hash` and an HMAC-SHA256 of it under the session key
//! (`--session-key-file`, 32 random bytes made on first start in the data folder, so that
//! replicas given the same file accept each other's cookies). Nothing is stored server-side;
//! the token hash in it ends the session as soon as its token is revoked.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie's name.
pub const COOKIE: &str = "pc_session";

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a valid cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who signed in.
    pub user: String,
    /// When the cookie stops being accepted.
    pub expires: DateTime<Utc>,
    /// Hex SHA-256 of the token that signed in.
    pub token_sha256: String,
}

/// The key cookies are signed with.
pub struct SessionKey(Vec<u8>);

impl SessionKey {
    /// Reads `path`, or makes it (32 random bytes, mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(key) if key.len() >= 32 => return Ok(Self(key)),
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: a session key needs at least 32 bytes", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key: [u8; 32] = rand::random();
        let mut options = std::fs::OpenOptions::new();
        // `create_new`: two replicas starting at once on a shared folder keep the first key.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, &key)?;
                f.sync_all()?;
                Ok(Self(key.to_vec()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
            Err(e) => Err(e),
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }

    /// The cookie value for `session`.
    pub fn sign(&self, session: &Session) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = format!(
            "{}|{}|{}",
            b64.encode(&session.user),
            session.expires.timestamp(),
            session.token_sha256
        );
        let tag = b64.encode(self.mac(&payload).finalize().into_bytes());
        format!("{}.{tag}", b64.encode(payload))
    }

    /// The session in a cookie value, if its signature holds and it has not expired. The
    /// signature is checked in constant time.
    pub fn verify(&self, value: &str) -> Option<Session> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (payload, tag) = value.split_once('.')?;
        let payload = String::from_utf8(b64.decode(payload).ok()?).ok()?;
        self.mac(&payload)
            .verify_slice(&b64.decode(tag).ok()?)
            .ok()?;
        let mut parts = payload.splitn(3, '|');
        let user = String::from_utf8(b64.decode(parts.next()?).ok()?).ok()?;
        let expires = DateTime::from_timestamp(parts.next()?.parse().ok()?, 0)?;
        let token_sha256 = parts.next()?.to_owned();
        (expires > Utc::now()).then_some(Session {
            user,
            expires,
            token_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_verifies_only_unaltered_unexpired_and_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SessionKey::load_or_create(&dir.path().join("session.key")).unwrap();
        let same = SessionKey::load_or_create(&dir.path().join("session.key")).unwrap();
        let other = SessionKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let session = Session {
            user: "alice|admin".into(),
            expires: Utc::now() + chrono::Duration::hours(1),
            token_sha256: "ab".repeat(32),
        };
        let cookie = key.sign(&session);
        let mut expected = session.clone();
        expected.expires = DateTime::from_timestamp(session.expires.timestamp(), 0).unwrap();
        assert_eq!(key.verify(&cookie), Some(expected.clone()));
        assert_eq!(
            same.verify(&cookie),
            Some(expected),
            "a replica with the same file"
        );
        assert_eq!(other.verify(&cookie), None);
        let forged = key.sign(&Session {
            user: "bob".into(),
            ..session.clone()
        });
        let spliced = format!(
            "{}.{}",
            forged.split_once('.').unwrap().0,
            cookie.split_once('.').unwrap().1
        );
        assert_eq!(key.verify(&spliced), None);
        let expired = key.sign(&Session {
            expires: Utc::now() - chrono::Duration::seconds(1),
            ..session
        });
        assert_eq!(key.verify(&expired), None);
        assert_eq!(key.verify("garbage"), None);
    }
}

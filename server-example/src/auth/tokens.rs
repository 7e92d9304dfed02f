//! The `--auth tokens:FILE` file: API tokens mapped to user ids, stored only as hashes.
//!
//! One JSON object per line: `{"user", "sha256", "created", "expires", "service"}`. A token
//! is `pct_` and 32 random bytes in URL-safe base64 (256 bits), shown once when created; the
//! file keeps the SHA-256 of it. Because tokens are high-entropy, looking one up by its hash
//! is safe (nothing about the token can be guessed from timing of a hash-map lookup).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A token's SHA-256.
pub type TokenHash = [u8; 32];

/// Prefix of every token, so that one pasted into the wrong place is recognisable.
pub const TOKEN_PREFIX: &str = "pct_";

/// One line of the tokens file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// The user the token signs in as.
    pub user: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// When `token add` made it.
    pub created: DateTime<Utc>,
    /// After this the token is refused; `None`: never.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
    /// A service token (a web tier's, `--remote-model-token`) may act for the user named in
    /// the request's `x-partialconv-user` header.
    #[serde(default)]
    pub service: bool,
}

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a token entry.
    #[error("{path}:{line}: not a token entry ({reason})")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

/// A fresh token: 256 random bits.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a token, as stored.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads every entry of `path`; a missing file has none.
pub fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TokenFileError::Io {
                path: path.into(),
                source,
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let parse = |reason: String| TokenFileError::Parse {
                path: path.into(),
                line: i + 1,
                reason,
            };
            let entry: TokenEntry = serde_json::from_str(l).map_err(|e| parse(e.to_string()))?;
            decode_hash(&entry.sha256)
                .ok_or_else(|| parse("sha256 is not 64 hex digits".into()))?;
            Ok(entry)
        })
        .collect()
}

/// A hex SHA-256 as bytes.
pub fn decode_hash(hex_digest: &str) -> Option<TokenHash> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

/// Replaces `path` with `entries`, atomically and readable by its owner only.
pub fn write(path: &Path, entries: &[TokenEntry]) -> Result<(), TokenFileError> {
    let io = |source| TokenFileError::Io {
        path: path.into(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).expect("entries serialise"));
        text.push('\n');
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `token add`: a new token for `user`, valid for `days` (forever when `None`). Returns the
/// token, which is stored nowhere.
pub fn add(
    path: &Path,
    user: &str,
    days: Option<u32>,
    service: bool,
) -> Result<String, TokenFileError> {
    let mut entries = read(path)?;
    let token = generate();
    let created = Utc::now();
    entries.push(TokenEntry {
        user: user.to_owned(),
        sha256: hex::encode(hash(&token)),
        created,
        expires: days.map(|d| created + chrono::Duration::days(d.into())),
        service,
    });
    write(path, &entries)?;
    Ok(token)
}

/// `token revoke`: removes every token of `user`; returns how many there were.
pub fn revoke(path: &Path, user: &str) -> Result<usize, TokenFileError> {
    let entries = read(path)?;
    let before = entries.len();
    let kept: Vec<TokenEntry> = entries.into_iter().filter(|e| e.user != user).collect();
    let removed = before - kept.len();
    if removed > 0 {
        write(path, &kept)?;
    }
    Ok(removed)
}

/// Who a token signs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The user id.
    pub user: String,
    /// Whether it is a service token ([`TokenEntry::service`]).
    pub service: bool,
}

/// What identifies a version of the file, so that a change is noticed without reading it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

struct Loaded {
    stamp: Stamp,
    /// `None` when the file could not be read: every token is refused until it can.
    tokens: Option<HashMap<TokenHash, TokenEntry>>,
}

/// The tokens file as the server uses it: reloaded whenever it changes on disk (a `stat`
/// per lookup), so that `token add` and `token revoke` take effect at the next request.
pub struct TokenStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl TokenStore {
    /// Opens `path`, which must be readable now (it may have no tokens yet).
    pub fn open(path: PathBuf) -> Result<Self, TokenFileError> {
        let stamp = stamp(&path);
        let tokens = index(read(&path)?);
        Ok(Self {
            path,
            loaded: RwLock::new(Loaded {
                stamp,
                tokens: Some(tokens),
            }),
        })
    }

    /// The user `token` signs in as, if it is in the file and has not expired.
    pub fn lookup(&self, token: &str) -> Option<TokenUser> {
        self.lookup_hash(&hash(token))
    }

    /// [`lookup`](Self::lookup) by the token's hash, for sessions, which keep only that.
    pub fn lookup_hash(&self, hash: &TokenHash) -> Option<TokenUser> {
        self.refresh();
        let loaded = self.loaded.read().unwrap();
        let entry = loaded.tokens.as_ref()?.get(hash)?;
        if entry.expires.is_some_and(|e| e <= Utc::now()) {
            return None;
        }
        Some(TokenUser {
            user: entry.user.clone(),
            service: entry.service,
        })
    }

    fn refresh(&self) {
        let now = stamp(&self.path);
        if self.loaded.read().unwrap().stamp == now {
            return;
        }
        let mut loaded = self.loaded.write().unwrap();
        if loaded.stamp == now {
            return;
        }
        // Fail closed: a file that cannot be read revokes everything until it can.
        loaded.tokens = match read(&self.path) {
            Ok(entries) => Some(index(entries)),
            Err(e) => {
                tracing::error!("tokens file: {e}; refusing every token until it is fixed");
                None
            }
        };
        loaded.stamp = now;
        tracing::info!(path = %self.path.display(), "tokens file reloaded");
    }
}

fn index(entries: Vec<TokenEntry>) -> HashMap<TokenHash, TokenEntry> {
    entries
        .into_iter()
        .filter_map(|e| Some((decode_hash(&e.sha256)?, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_hashes_and_revoked_by_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let alice = add(&path, "alice", None, false).unwrap();
        let bob = add(&path, "bob", Some(30), false).unwrap();
        assert!(alice.starts_with(TOKEN_PREFIX) && alice.len() == TOKEN_PREFIX.len() + 43);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&bob[TOKEN_PREFIX.len()..]));

        let store = TokenStore::open(path.clone()).unwrap();
        assert_eq!(store.lookup(&alice).unwrap().user, "alice");
        assert_eq!(store.lookup(&bob).unwrap().user, "bob");
        assert_eq!(store.lookup("pct_not-a-token"), None);

        assert_eq!(revoke(&path, "alice").unwrap(), 1);
        assert_eq!(
            store.lookup(&alice),
            None,
            "revocation takes effect at once"
        );
        assert_eq!(store.lookup(&bob).unwrap().user, "bob");
    }

    #[test]
    fn an_expired_token_and_an_unreadable_file_sign_no_one_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = add(&path, "carol", None, false).unwrap();
        let mut entries = read(&path).unwrap();
        entries[0].expires = Some(Utc::now() - chrono::Duration::seconds(1));
        write(&path, &entries).unwrap();
        let store = TokenStore::open(path.clone()).unwrap();
        assert_eq!(store.lookup(&token), None);

        entries[0].expires = None;
        write(&path, &entries).unwrap();
        assert!(store.lookup(&token).is_some());
        std::fs::write(&path, "not json\n").unwrap();
        assert_eq!(store.lookup(&token), None, "fails closed");
    }
}

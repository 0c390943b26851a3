//! Key material: the master key (from the environment or `<data_dir>/master.key`),
//! the keyed hash of API keys, and random keys and ids.
//!
//! Nothing here logs a key, a hash or the master key.

use std::io::Write as _;
use std::path::Path;

use hmac::{Hmac, Mac as _};
use llmgw_kit::GwError;
use llmgw_kit::secret::Secret;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every API key: lets users and secret scanners recognise one.
pub(crate) const KEY_PREFIX: &str = "sk-llmgw-";

/// Base62 characters after the prefix: 43 × log2(62) ≈ 256 bits.
pub(crate) const KEY_BODY_LEN: usize = 43;

/// Longest key worth hashing; anything longer is not one of ours.
pub(crate) const MAX_KEY_LEN: usize = 256;

/// The file that holds the master key when `LLMGW_MASTER_KEY` is not set.
pub(crate) const MASTER_KEY_FILE: &str = "master.key";

/// Domain separation: the master key will also encrypt provider credentials at
/// rest, so API keys are hashed under a key derived for this purpose alone.
const HASH_KEY_LABEL: &[u8] = b"llmgw/api-key-hash/v1";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Hashes API keys: HMAC-SHA256 under a key derived from the master key.
#[derive(Clone)]
pub(crate) struct KeyHasher(HmacSha256);

impl KeyHasher {
    pub(crate) fn new(master_key: &Secret) -> Result<Self, GwError> {
        let derived = mac(master_key.expose().as_bytes())?
            .chain_update(HASH_KEY_LABEL)
            .finalize()
            .into_bytes();
        Ok(Self(mac(&derived)?))
    }

    /// The keyed hash of `api_key`, as lowercase hex (the stored form).
    pub(crate) fn hash(&self, api_key: &str) -> String {
        hex::encode(
            self.0
                .clone()
                .chain_update(api_key.as_bytes())
                .finalize()
                .into_bytes(),
        )
    }
}

fn mac(key: &[u8]) -> Result<HmacSha256, GwError> {
    // HMAC accepts keys of any length; this cannot fail in practice.
    HmacSha256::new_from_slice(key).map_err(|_| GwError::internal("cannot key the api key hash"))
}

/// The master key: `configured` (`LLMGW_MASTER_KEY`) when set, else the one in
/// `<data_dir>/master.key`, created on first use (32 random bytes as hex, mode
/// 0600). Its text is the key material either way, so the file's content can
/// later be moved into the environment unchanged.
pub(crate) fn master_key(configured: Option<&Secret>, data_dir: &Path) -> Result<Secret, GwError> {
    if let Some(key) = configured {
        return Ok(key.clone());
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    if let Some(key) = read_master_key(&path)? {
        return Ok(key);
    }
    let key = hex::encode(random_bytes::<32>()?);
    // On PostgreSQL nothing else may have created data_dir yet.
    std::fs::create_dir_all(data_dir)
        .map_err(|e| GwError::internal(format!("cannot create data_dir {}: {e}", data_dir.display())))?;
    // Write a private temp file, then link it into place: the link fails if
    // another process got there first, and nobody ever reads a half-written key.
    let tmp = data_dir.join(format!(
        "{MASTER_KEY_FILE}.{}.tmp",
        hex::encode(random_bytes::<8>()?)
    ));
    let written = write_private(&tmp, key.as_bytes());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new master key");
            Ok(Secret::new(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_master_key(&path)?
            .ok_or_else(|| GwError::internal(format!("master key file {} vanished", path.display()))),
        Err(e) => Err(GwError::internal(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))),
    }
}

fn read_master_key(path: &Path) -> Result<Option<Secret>, GwError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(GwError::internal(format!(
                "cannot read master key file {}: {e}",
                path.display()
            )));
        }
    };
    let key = text.trim();
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GwError::internal(format!(
            "master key file {} is malformed: expected 64 hex characters",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "master key file is readable by other users; chmod 600 it");
        }
    }
    Ok(Some(Secret::new(key)))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A new API key: `sk-llmgw-` and 43 base62 characters (256 bits).
pub(crate) fn generate_key() -> Result<Secret, GwError> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_BODY_LEN);
    key.push_str(KEY_PREFIX);
    let mut body = 0;
    while body < KEY_BODY_LEN {
        for b in random_bytes::<64>()? {
            // Rejection sampling keeps every character uniform: 248 = 4 × 62.
            if b < 248 && body < KEY_BODY_LEN {
                key.push(char::from(BASE62[usize::from(b % 62)]));
                body += 1;
            }
        }
    }
    Ok(Secret::new(key))
}

/// A new id such as `org_3f…`: a prefix and 128 random bits as hex.
pub(crate) fn new_id(prefix: &str) -> Result<String, GwError> {
    Ok(format!("{prefix}_{}", hex::encode(random_bytes::<16>()?)))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], GwError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| GwError::internal(format!("no randomness available: {e}")))?;
    Ok(buf)
}

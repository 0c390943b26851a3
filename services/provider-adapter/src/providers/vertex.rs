//! Service-account credentials for `type: vertex-ai`: an OAuth 2.0 access
//! token minted with the JWT-bearer grant (RFC 7523, as Google's auth
//! libraries do), cached and refreshed a minute before it expires.
//!
//! The assertion is an RS256 JWT `{iss: client_email, scope: cloud-platform,
//! aud: token_uri, iat, exp: iat + 1h}` signed with the account's private key
//! (PKCS#8 PEM, from the credentials JSON) and POSTed as a form to the
//! account's `token_uri`. One refresh at a time: concurrent callers wait for
//! it rather than each minting a token. Neither the key nor a token ever
//! appears in an error or a log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use llmgw_kit::secret::Secret;
use llmgw_kit::{ErrorCode, GwError};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::http::Peer;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// How long an assertion (and so the token asked for) is valid; Google's maximum.
const LIFETIME: Duration = Duration::from_secs(3600);
/// A token is refreshed this long before it expires, so none expires in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The most of a token response we read.
const TOKEN_BODY_LIMIT: usize = 64 << 10;

/// The parts of a service-account key file we use.
#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Mints and caches access tokens for one service account.
pub(crate) struct TokenSource {
    email: String,
    token_uri: String,
    key: RsaKeyPair,
    rng: SystemRandom,
    cached: Mutex<Option<(Secret, Instant)>>,
    client: reqwest::Client,
}

impl TokenSource {
    /// Reads the service-account JSON; the error says what is wrong without
    /// quoting any of it.
    pub(crate) fn new(credentials: &str, client: reqwest::Client) -> Result<Self, String> {
        let account: ServiceAccount = serde_json::from_str(credentials).map_err(|_| {
            "`credentials` is not a service-account key (JSON with client_email and private_key)".to_owned()
        })?;
        if let Some(kind) = account.kind.as_deref()
            && kind != "service_account"
        {
            return Err(format!(
                "`credentials` is a `{kind}` key; a `service_account` key is required"
            ));
        }
        let der = pem_body(&account.private_key)
            .ok_or_else(|| "`credentials.private_key` is not a PEM private key".to_owned())?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|_| "`credentials.private_key` is not an RSA PKCS#8 private key".to_owned())?;
        let token_uri = account.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        reqwest::Url::parse(&token_uri).map_err(|_| "`credentials.token_uri` is not a URL".to_owned())?;
        Ok(Self {
            email: account.client_email,
            token_uri,
            key,
            rng: SystemRandom::new(),
            cached: Mutex::new(None),
            client,
        })
    }

    /// A valid access token: the cached one, or a fresh one.
    pub(crate) async fn token(&self, peer: &Peer) -> Result<Secret, GwError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && Instant::now() + REFRESH_MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch(peer).await?;
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// Forgets the cached token (the upstream refused it), so the next call
    /// mints a fresh one.
    pub(crate) async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self, peer: &Peer) -> Result<(Secret, Duration), GwError> {
        let name = peer.name();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let assertion = self.assertion(now).map_err(|_| {
            peer.error(
                ErrorCode::Internal,
                format!("provider `{name}`: cannot sign the service-account assertion"),
            )
        })?;
        let request = self
            .client
            .post(&self.token_uri)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(format!("grant_type={GRANT_TYPE}&assertion={assertion}"));
        let mut response = crate::http::dispatch(request)
            .await
            .map_err(|e| peer.send_error(&e))?;
        let status = response.status();
        let body = peer.read_limited(&mut response, TOKEN_BODY_LIMIT, false).await?;
        if !status.is_success() {
            let code = status.as_u16();
            return Err(match code {
                400 | 401 | 403 => peer
                    .error(
                        ErrorCode::UpstreamRejected,
                        format!(
                            "provider `{name}`: google refused the service account's credentials ({code})"
                        ),
                    )
                    .with_upstream_status(code),
                _ => peer.status_error(status, response.headers(), &body),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            peer.error(
                ErrorCode::UpstreamError,
                format!("provider `{name}`: the token endpoint sent an invalid response"),
            )
        })?;
        let lifetime = parsed
            .expires_in
            .map_or(LIFETIME, Duration::from_secs)
            .min(LIFETIME);
        Ok((Secret::new(parsed.access_token), lifetime))
    }

    /// The signed JWT for the token request, issued at `now` (unix seconds).
    pub(crate) fn assertion(&self, now: u64) -> Result<String, ring::error::Unspecified> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iss": self.email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + LIFETIME.as_secs(),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let message = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, message.as_bytes(), &mut signature)?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    #[cfg(test)]
    pub(crate) fn public_key_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.key.public_key().as_ref().to_vec()
    }
}

/// The DER bytes inside a PEM block (`-----BEGIN PRIVATE KEY-----`).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .replace("\\n", "");
    STANDARD.decode(b64).ok()
}

//! Vertex AI's side of the emulator: Google's OAuth token endpoint (`POST /token`, the
//! JWT-bearer grant of RFC 7523) and the bearer check on Vertex routes.
//!
//! The assertion is checked as Google checks it: an RS256 JWT whose signature verifies with
//! the test service account's public key (`test-service-account-key.pem`, a throwaway key
//! made for these tests), with `iss`, the cloud-platform `scope`, an `aud` naming this token
//! endpoint, and a lifetime of at most one hour around now. Tokens it issues start with
//! `ya29.emu-`; Vertex routes accept those only.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State as Extract;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use ring::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

use super::{GoogleError, json_response};
use crate::chat::IdGen;
use crate::record::Outcome;
use crate::routes::State;

/// The test service account's private key; its public half verifies assertions.
const TEST_KEY_PEM: &str = include_str!("test-service-account-key.pem");
const TOKEN_PREFIX: &str = "ya29.emu-";

/// An OAuth error: `{"error", "error_description"}`, answered with 400.
struct OAuthError {
    error: &'static str,
    description: String,
}

fn oauth_error(error: &'static str, description: &str) -> OAuthError {
    OAuthError {
        error,
        description: description.to_owned(),
    }
}

/// `POST /token`.
pub async fn token(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tracker = state.track("POST", "/token", &headers, Some(&body));
    match mint(&headers, &body) {
        Ok(resp) => {
            tracker.finish(Outcome::Completed);
            resp
        }
        Err(e) => {
            tracker.finish(Outcome::Error);
            json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": e.error, "error_description": e.description }).to_string(),
            )
        }
    }
}

fn mint(headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let bad = |d: &str| oauth_error("invalid_request", d);
    let grant = |d: &str| oauth_error("invalid_grant", d);
    if headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| !ct.starts_with("application/x-www-form-urlencoded"))
    {
        return Err(bad("Content-Type must be application/x-www-form-urlencoded."));
    }
    let body = std::str::from_utf8(body).map_err(|_| bad("Invalid body."))?;
    let mut grant_type = None;
    let mut assertion = None;
    for pair in body.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant_type = Some(v),
            Some(("assertion", v)) => assertion = Some(v),
            _ => {}
        }
    }
    if grant_type != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return Err(oauth_error("unsupported_grant_type", "Invalid grant_type."));
    }
    let jwt = assertion.ok_or_else(|| bad("Missing required parameter: assertion"))?;
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(grant("Invalid JWT: not three segments."));
    };
    let decode = |s: &str| -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok() };
    let header = decode(h).ok_or_else(|| grant("Invalid JWT header."))?;
    if header["alg"] != "RS256" {
        return Err(grant("Invalid JWT: alg must be RS256."));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| grant("Invalid JWT Signature."))?;
    let public = public_key().ok_or_else(|| grant("emulator: no test key"))?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{h}.{c}").as_bytes(), &signature)
        .map_err(|_| grant("Invalid JWT Signature."))?;
    let claims = decode(c).ok_or_else(|| grant("Invalid JWT claims."))?;
    if claims["iss"].as_str().is_none_or(str::is_empty) {
        return Err(grant("Invalid JWT: iss is required."));
    }
    if !claims["scope"].as_str().is_some_and(|s| {
        s.split(' ')
            .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    }) {
        return Err(grant("Invalid OAuth scope or ID token audience provided."));
    }
    if !claims["aud"].as_str().is_some_and(|a| a.ends_with("/token")) {
        return Err(grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err(grant("Invalid JWT: iat and exp are required."));
    };
    if exp <= iat || exp - iat > 3600 || iat > now + 300 || exp + 300 < now {
        return Err(grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let token = format!("{TOKEN_PREFIX}{}", IdGen::new().id(""));
    Ok(json_response(
        StatusCode::OK,
        json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }).to_string(),
    ))
}

fn public_key() -> Option<Vec<u8>> {
    let start = TEST_KEY_PEM.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = TEST_KEY_PEM.find("-----END PRIVATE KEY-----")?;
    let b64: String = TEST_KEY_PEM[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD.decode(b64).ok()?;
    let pair = RsaKeyPair::from_pkcs8(&der).ok()?;
    Some(pair.public_key().as_ref().to_vec())
}

/// Vertex routes take only an OAuth access token this emulator issued.
pub fn check_bearer(headers: &HeaderMap) -> Result<(), GoogleError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if t.starts_with(TOKEN_PREFIX) => Ok(()),
        _ => Err(GoogleError {
            status: 401,
            message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.".to_owned(),
        }),
    }
}

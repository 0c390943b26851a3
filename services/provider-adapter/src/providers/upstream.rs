//! Sending to a provider whose error bodies are not OpenAI-shaped: the body
//! is rewritten into OpenAI's error object first, so the one classifier in
//! [`crate::http::Peer`] reads its message and `param`.

use llmgw_kit::GwError;
use reqwest::Response;

use crate::http::Peer;

/// The most of an error body we read: enough for any error object.
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Sends `request` and waits for the headers; a non-2xx answer becomes an
/// error, its body passed through `convert` before it is classified.
pub(crate) async fn send(
    peer: &Peer,
    request: reqwest::RequestBuilder,
    convert: fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<Response, GwError> {
    let mut response = crate::http::dispatch(request)
        .await
        .map_err(|e| peer.send_error(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // Best effort: a body that breaks still leaves the status to classify.
    let body = peer
        .read_limited(&mut response, ERROR_BODY_LIMIT, false)
        .await
        .unwrap_or_default();
    let body = convert(&body).unwrap_or(body);
    Err(peer.status_error(status, response.headers(), &body))
}

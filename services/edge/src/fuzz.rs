//! Entry points for the fuzz targets under `fuzz/` at the repository root:
//! hidden, not an API, free to change with them.

use llmgw_kit::GwError;
use llmgw_proto::ChatRequest;

use crate::anthropic::read::{Route, parse_request};

/// A client's `POST /v1/messages` body (or `/v1/messages/count_tokens`'s),
/// read and checked as the edge does before anything is sent on.
pub fn anthropic_request(body: &[u8], count_tokens: bool) -> Result<ChatRequest, GwError> {
    let route = if count_tokens {
        Route::CountTokens
    } else {
        Route::Messages
    };
    parse_request(body, route)
}

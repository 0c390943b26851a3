//! The OpenAI Chat Completions wire format, both directions, as one module:
//! the edge reads OpenAI requests and writes OpenAI responses and chunks; the
//! OpenAI provider writes requests and reads responses and chunks. Keeping
//! both directions here means one definition of the format and a round-trip
//! test instead of two drifting copies.
//!
//! Reading is typed serde with `serde_path_to_error`, so a bad field is named
//! exactly (`messages[2].content[0].image_url`). Writing borrows from the
//! canonical protobuf values: no clones on the hot path. JSON schemas, tool
//! arguments and `logit_bias` travel as raw JSON text, byte for byte.

mod embeddings;
mod read;
mod write;

pub use embeddings::{
    embeddings_request_json, embeddings_response_json, parse_embeddings_request, parse_embeddings_response,
};
pub use read::{
    UpstreamError, parse_chunk, parse_request, parse_response, parse_upstream_error, raw_json, raw_strict,
    validate_request,
};
pub use write::{chunk_json, request_json, response_json};

use llmgw_proto::{FinishReason, Role};

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User | Role::Unspecified => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

pub fn finish_str(reason: FinishReason) -> Option<&'static str> {
    match reason {
        FinishReason::Unspecified => None,
        FinishReason::Stop => Some("stop"),
        FinishReason::Length => Some("length"),
        FinishReason::ToolCalls => Some("tool_calls"),
        FinishReason::ContentFilter => Some("content_filter"),
        FinishReason::FunctionCall => Some("function_call"),
    }
}

pub(crate) fn parse_finish(s: &str) -> FinishReason {
    match s {
        "stop" | "end_turn" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        "function_call" => FinishReason::FunctionCall,
        _ => FinishReason::Stop,
    }
}

#[cfg(test)]
mod tests;

//! Anthropic's wire objects: the message, the event stream (`event: <type>` then
//! `data: <json>` per event) and the error.

use serde_json::{Value, json};

use super::{ApiError, Block, Plan};
use crate::chat::pieces;

/// How many characters of tool input go in one `input_json_delta`.
const JSON_FRAGMENT: usize = 6;
/// How many events `[emu:abort_mid_stream]` lets through before dropping the connection.
pub const EVENTS_BEFORE_ABORT: usize = 4;
/// A stand-in for the signature Anthropic puts on thinking blocks.
pub(super) const SIGNATURE: &str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";

pub fn error_json(e: &ApiError, request_id: &str) -> Vec<u8> {
    json!({
        "type": "error",
        "error": {"type": e.kind, "message": e.message},
        "request_id": request_id,
    })
    .to_string()
    .into_bytes()
}

fn usage(plan: &Plan<'_>) -> Value {
    json!({
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": plan.output_tokens,
        "service_tier": "standard",
    })
}

fn block_json(block: &Block<'_>) -> Value {
    match block {
        Block::Thinking(text) => json!({"type": "thinking", "thinking": text, "signature": SIGNATURE}),
        Block::Text(text) => json!({"type": "text", "text": text}),
        Block::ToolUse { id, name, input } => {
            let input: Value = serde_json::from_str(input).unwrap_or_else(|_| json!({}));
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
    }
}

pub fn message_json(id: &str, model: &str, plan: &Plan<'_>) -> Vec<u8> {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": plan.blocks.iter().map(block_json).collect::<Vec<_>>(),
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": usage(plan),
    })
    .to_string()
    .into_bytes()
}

/// A whole stream encoded into one buffer, with where each event ends.
pub struct EncodedStream {
    pub buf: Vec<u8>,
    pub ends: Vec<usize>,
}

impl EncodedStream {
    fn event(&mut self, data: &Value) {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("unknown");
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(kind.as_bytes());
        self.buf.extend_from_slice(b"\ndata: ");
        self.buf.extend_from_slice(data.to_string().as_bytes());
        self.buf.extend_from_slice(b"\n\n");
        self.ends.push(self.buf.len());
    }
}

/// The event sequence of a streamed message.
pub fn stream_events(id: &str, model: &str, plan: &Plan<'_>) -> EncodedStream {
    let mut s = EncodedStream {
        buf: Vec::with_capacity(1024),
        ends: Vec::new(),
    };
    let mut start_usage = usage(plan);
    start_usage["output_tokens"] = json!(1);
    s.event(&json!({
        "type": "message_start",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": start_usage,
        },
    }));
    for (index, block) in plan.blocks.iter().enumerate() {
        let start = match block {
            Block::Thinking(_) => json!({"type": "thinking", "thinking": ""}),
            Block::Text(_) => json!({"type": "text", "text": ""}),
            Block::ToolUse { id, name, .. } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": {}})
            }
        };
        s.event(&json!({"type": "content_block_start", "index": index, "content_block": start}));
        if index == 0 {
            s.event(&json!({"type": "ping"}));
        }
        match block {
            Block::Thinking(text) => {
                for piece in pieces(text) {
                    s.event(&json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece}}));
                }
                s.event(&json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": SIGNATURE}}));
            }
            Block::Text(text) => {
                for piece in pieces(text) {
                    s.event(&json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}));
                    if plan.error_mid_stream {
                        s.event(&json!({"type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"}}));
                        return s;
                    }
                }
            }
            Block::ToolUse { input, .. } => {
                // Anthropic's first fragment is often empty.
                let mut fragments = vec![String::new()];
                let chars: Vec<char> = input.chars().collect();
                fragments.extend(chars.chunks(JSON_FRAGMENT).map(|c| c.iter().collect::<String>()));
                for fragment in fragments {
                    s.event(&json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": fragment}}));
                }
            }
        }
        s.event(&json!({"type": "content_block_stop", "index": index}));
    }
    s.event(&json!({
        "type": "message_delta",
        "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
        "usage": {"output_tokens": plan.output_tokens},
    }));
    s.event(&json!({"type": "message_stop"}));
    s
}

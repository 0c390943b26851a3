//! OpenAI's wire objects, serialised straight from borrowed structs: the chat completion,
//! the chunk stream (`data: <json>\n\n` events ending in `data: [DONE]\n\n`) and the error.

use serde::Serialize;
use serde_json::{Value, json};

use crate::chat::{ApiError, Plan, Reply, Usage, pieces};

/// How many characters of tool-call arguments go in one streamed fragment.
const ARGUMENT_FRAGMENT: usize = 6;
/// How many events `[emu:abort_mid_stream]` lets through before dropping the connection.
const EVENTS_BEFORE_ABORT: usize = 4;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

pub fn error_json(e: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: ErrorObject {
            message: &e.message,
            kind: e.kind,
            param: e.param,
            code: e.code,
        },
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    usage: &'a Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: usize,
    message: MessageOut<'a>,
    logprobs: Option<Value>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallOut<'a>>>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// A choice's `logprobs` object: one entry per token (a word with its leading space),
/// each with `top` alternatives, the token itself first.
fn logprobs_json<'t>(tokens: impl Iterator<Item = &'t str>, top: usize) -> Value {
    let content: Vec<Value> = tokens
        .map(|token| {
            let alternatives: Vec<Value> = (0..top)
                .map(|rank| {
                    let alt = if rank == 0 { token.to_owned() } else { format!("{token}~{rank}") };
                    let bytes = alt.as_bytes().to_vec();
                    json!({"token": alt, "logprob": LOGPROB - rank as f64, "bytes": bytes})
                })
                .collect();
            json!({"token": token, "logprob": LOGPROB, "bytes": token.as_bytes(), "top_logprobs": alternatives})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The log-probability of every token the emulator answers with.
const LOGPROB: f64 = -0.25;

/// A `chat.completion` object.
pub fn completion_json(id: &str, created: u64, plan: &Plan<'_>) -> Vec<u8> {
    let choices = plan
        .choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = match (&c.reply, plan.logprobs) {
                (Reply::Text(t), Some(top)) => Some(logprobs_json(pieces(t), top)),
                (Reply::Tools(_), Some(_)) => Some(json!({"content": null, "refusal": null})),
                (_, None) => None,
            };
            let (content, tool_calls) = match &c.reply {
                Reply::Text(t) => (Some(t.as_str()), None),
                Reply::Tools(calls) => (
                    None,
                    Some(
                        calls
                            .iter()
                            .map(|call| ToolCallOut {
                                id: &call.id,
                                kind: "function",
                                function: FunctionOut {
                                    name: call.name,
                                    arguments: &call.arguments,
                                },
                            })
                            .collect(),
                    ),
                ),
            };
            ChoiceOut {
                index,
                message: MessageOut {
                    role: "assistant",
                    content,
                    refusal: None,
                    tool_calls,
                    annotations: [],
                },
                logprobs,
                finish_reason: c.finish_reason,
            }
        })
        .collect();
    serde_json::to_vec(&Completion {
        id,
        object: "chat.completion",
        created,
        model: plan.model,
        choices,
        usage: &plan.usage,
        service_tier: "default",
        system_fingerprint: "fp_emu",
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless `stream_options.include_usage`; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
    /// Side-channel padding OpenAI adds to delta chunks unless `include_obfuscation: false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    obfuscation: Option<&'a str>,
}

const PADDING: &str = "k3Xq9ZpL0vB7mT2w";

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: usize,
    delta: Delta<'a>,
    logprobs: Option<Value>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// A whole stream encoded into one buffer: event `i` is `buf[ends[i-1]..ends[i]]`.
pub struct EncodedStream {
    pub buf: Vec<u8>,
    pub ends: Vec<usize>,
    /// With `[emu:abort_mid_stream]`: how many events to send before dropping the connection.
    pub abort_after: Option<usize>,
}

struct Encoder<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    include_usage: bool,
    obfuscate: bool,
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl<'a> Encoder<'a> {
    fn event(&mut self, choices: &[ChunkChoice<'_>], usage: Option<&Usage>) {
        self.buf.extend_from_slice(b"data: ");
        let chunk = Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            service_tier: "default",
            system_fingerprint: "fp_emu",
            choices,
            usage: self.include_usage.then_some(usage),
            obfuscation: (self.obfuscate && !choices.is_empty())
                .then(|| &PADDING[..1 + self.ends.len() * 7 % (PADDING.len() - 1)]),
        };
        // Serialising these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &chunk);
        self.buf.extend_from_slice(b"\n\n");
        self.ends.push(self.buf.len());
    }

    fn delta(&mut self, index: usize, delta: Delta<'_>, finish_reason: Option<&str>) {
        self.delta_with(index, delta, None, finish_reason);
    }

    fn delta_with(
        &mut self,
        index: usize,
        delta: Delta<'_>,
        logprobs: Option<Value>,
        finish_reason: Option<&str>,
    ) {
        self.event(
            &[ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }],
            None,
        );
    }
}

/// The `chat.completion.chunk` events for `plan`, as OpenAI streams them: per choice a first
/// delta with the role, one delta per word (with its leading space) or, for tool calls, a
/// delta naming each call then argument fragments; a final delta with the finish reason;
/// the usage chunk (`choices: []`) when asked for; `[DONE]`.
pub fn stream_events(id: &str, created: u64, plan: &Plan<'_>) -> EncodedStream {
    let mut enc = Encoder {
        id,
        created,
        model: plan.model,
        include_usage: plan.include_usage,
        obfuscate: plan.obfuscate,
        buf: Vec::with_capacity(512 + 256 * plan.usage.completion_tokens as usize),
        ends: Vec::new(),
    };
    for (index, choice) in plan.choices.iter().enumerate() {
        match &choice.reply {
            Reply::Text(text) => {
                let first = Delta {
                    role: Some("assistant"),
                    content: Some(Some("")),
                    refusal: Some(None),
                    ..Delta::default()
                };
                enc.delta(index, first, None);
                for piece in pieces(text) {
                    let delta = Delta {
                        content: Some(Some(piece)),
                        ..Delta::default()
                    };
                    let logprobs = plan
                        .logprobs
                        .map(|top| logprobs_json(std::iter::once(piece), top));
                    enc.delta_with(index, delta, logprobs, None);
                }
            }
            Reply::Tools(calls) => {
                for (call_index, call) in calls.iter().enumerate() {
                    let head = ToolCallDelta {
                        index: call_index,
                        id: Some(&call.id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(call.name),
                            arguments: "",
                        },
                    };
                    let delta = if call_index == 0 {
                        Delta {
                            role: Some("assistant"),
                            content: Some(None),
                            refusal: Some(None),
                            tool_calls: Some([head]),
                        }
                    } else {
                        Delta {
                            tool_calls: Some([head]),
                            ..Delta::default()
                        }
                    };
                    enc.delta(index, delta, None);
                    for fragment in fragments(&call.arguments, ARGUMENT_FRAGMENT) {
                        let delta = Delta {
                            tool_calls: Some([ToolCallDelta {
                                index: call_index,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: fragment,
                                },
                            }]),
                            ..Delta::default()
                        };
                        enc.delta(index, delta, None);
                    }
                }
            }
        }
    }
    let before_finish = enc.ends.len();
    for (index, choice) in plan.choices.iter().enumerate() {
        enc.delta(index, Delta::default(), Some(choice.finish_reason));
    }
    if plan.include_usage {
        enc.event(&[], Some(&plan.usage));
    }
    enc.buf.extend_from_slice(b"data: [DONE]\n\n");
    enc.ends.push(enc.buf.len());
    let abort_after = plan
        .directives
        .abort_mid_stream
        .then(|| before_finish.min(EVENTS_BEFORE_ABORT));
    EncodedStream {
        buf: enc.buf,
        ends: enc.ends,
        abort_after,
    }
}

/// Splits `s` into pieces of at most `size` characters.
fn fragments(s: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.char_indices().nth(size).map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

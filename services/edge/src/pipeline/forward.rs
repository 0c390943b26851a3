//! OpenAI's pass-through endpoints — legacy completions, images, audio —
//! through the same pipeline as chat: policy (`allowed_endpoints`), rate
//! limits, budgets, routing, attempts with fallback, metering. The body
//! goes to the provider as the client wrote it (its `model` replaced by the
//! target's, in the adapter; Google's providers translate images to Imagen
//! and back) and the answer comes back byte for byte, streamed, while a
//! small tap reads what metering needs:
//!
//! - completions: `usage` from the JSON answer or from an SSE chunk, else
//!   an estimate from the prompt and the streamed text;
//! - images: the number of images (`data` in the answer; in an answer too
//!   large to keep, its `b64_json`/`url` keys counted as it passes; else
//!   `n`) as output units — a catalog price for an image model is per
//!   million images;
//! - transcriptions and translations: the audio's seconds (`duration` of
//!   `verbose_json`, `usage.seconds`, or the last `srt`/`vtt` cue's end) as
//!   input units — a price is per million seconds;
//! - speech: the input's characters as input units (per million characters,
//!   as OpenAI prices TTS).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use llmgw_kit::metrics::GaugeGuard;
use llmgw_kit::services::ForwardStream;
use llmgw_kit::{ErrorCode, GwError};
use llmgw_proto as pb;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::{
    Begun, Hints, MeterGuard, Pipeline, allow_endpoint, cost, count_rejection, estimate_tokens,
    policy_max_tokens,
};
use crate::limits::Quota;
use crate::report::Release;

/// How a pass-through request is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    /// Tokens: `usage` from the answer, else estimated.
    Tokens,
    /// Images made (output units).
    Images { requested: u32 },
    /// Seconds of audio (input units).
    Seconds,
    /// Characters of input (input units), known up front.
    Characters(u32),
}

/// One pass-through request, as the edge read it.
pub struct Forward {
    /// The policy's name for the endpoint: `completions`, `images`, `audio`.
    pub endpoint: &'static str,
    /// The OpenAI path below `/v1` (one the adapter knows).
    pub path: &'static str,
    /// `gen_ai_operation_name` of its metrics.
    pub operation: &'static str,
    pub model: String,
    pub user: Option<String>,
    /// The JSON body, or else `form`.
    pub json: String,
    pub form: Vec<pb::FormField>,
    /// The answer is an event stream (completions with `stream: true`).
    pub streaming: bool,
    /// Characters of prompt or input, for rate limits and estimates.
    pub input_chars: usize,
    /// The most output units the request can cost (budget reservation).
    pub max_output: u32,
    /// `max_tokens` as the client set it (completions), checked against
    /// the policies' limit.
    pub max_tokens: Option<u32>,
    pub meter: Meter,
}

/// A started pass-through answer.
pub struct Forwarded {
    pub status: u16,
    pub content_type: String,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    pub metadata: pb::RoutingMetadata,
    pub quota: Option<Quota>,
}

/// Most answer bytes kept to read metering from (an image answer in
/// `b64_json` can be far larger; its count then comes from `n`).
const TAP_LIMIT: usize = 1 << 20;

impl Pipeline {
    /// Runs a pass-through request to the provider's first byte.
    pub async fn forward(
        &self,
        principal: pb::Principal,
        req: Forward,
        hints: Hints,
    ) -> Result<Forwarded, GwError> {
        self.run_forward(principal, req, hints)
            .await
            .inspect_err(count_rejection)
    }

    async fn run_forward(
        &self,
        principal: pb::Principal,
        req: Forward,
        hints: Hints,
    ) -> Result<Forwarded, GwError> {
        allow_endpoint(&principal, req.endpoint)?;
        if let (Some(asked), Some((limit, scope))) = (req.max_tokens, policy_max_tokens(&principal))
            && asked > limit
        {
            return Err(GwError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "max_tokens {asked} is above the {scope} policy's limit of {limit} tokens per request"
                ),
            )
            .with_param("max_tokens"));
        }
        let estimate = match req.meter {
            Meter::Tokens => estimate_tokens(req.input_chars),
            _ => 0,
        };
        let (quota, debt) = self.rate_limit(&principal, estimate).await?;
        let Begun {
            permit,
            deadline,
            request_id,
            targets,
            mut meta,
            ..
        } = self
            .begin(
                &principal,
                &req.model,
                req.user.clone(),
                pb::Capabilities {
                    streaming: req.streaming,
                    ..Default::default()
                },
                hints,
            )
            .await?;
        let mut guard = MeterGuard::start(
            self.meter.clone(),
            &principal,
            &request_id,
            &req.model,
            req.streaming,
            estimate,
        );
        guard.operation = req.operation;
        guard.debt = debt;
        let input_units = match req.meter {
            Meter::Tokens => u32::try_from(req.input_chars).unwrap_or(u32::MAX),
            Meter::Characters(n) => n,
            Meter::Images { .. } => 0,
            // An hour of audio at most in one upload.
            Meter::Seconds => 3600,
        };
        guard.settle = self
            .reserve(&principal, &request_id, &targets, input_units, req.max_output)
            .await
            .inspect_err(|_| guard.forget())?;
        let adapter = &self.deps.adapter;
        let path = req.path;
        let mut body = Some((req.json, req.form));
        let ((head, rest), target, release) = self
            .run_attempts(targets, deadline, &mut meta, &mut guard, |last, target| {
                // The last try that can happen takes the body; earlier ones copy it.
                let (json, form) = if last { body.take() } else { body.clone() }.unwrap_or_default();
                let call = pb::ForwardRequest {
                    request_id: request_id.clone(),
                    target: Some(target),
                    org_id: principal.org_id.clone(),
                    path: path.to_owned(),
                    json,
                    form,
                };
                async move {
                    let mut stream = adapter.forward(call).await?;
                    // The head arrives with the provider's 2xx headers.
                    match stream.next().await {
                        Some(Ok(head)) => Ok((head, stream)),
                        Some(Err(e)) => Err(e),
                        None => Err(GwError::new(
                            ErrorCode::UpstreamError,
                            "the provider sent no answer",
                        )),
                    }
                }
            })
            .await?;
        let price = target.price.unwrap_or_default();
        let tap = Tap::new(req.meter, req.streaming, req.input_chars);
        let body = tapped(
            rest,
            Running {
                _permit: permit,
                release: Some(release),
                guard,
                price,
                idle: self.stream_idle_timeout,
                tap,
                done: false,
                _streaming: req
                    .streaming
                    .then(|| GaugeGuard::new(&llmgw_kit::metrics::edge().in_flight_streams)),
            },
        );
        Ok(Forwarded {
            status: u16::try_from(head.status).unwrap_or(200),
            content_type: head.content_type,
            body,
            metadata: meta,
            quota,
        })
    }
}

/// What a running pass-through answer holds until it ends.
struct Running {
    _permit: OwnedSemaphorePermit,
    release: Option<Release>,
    guard: MeterGuard,
    price: pb::Price,
    idle: Duration,
    tap: Tap,
    done: bool,
    _streaming: Option<GaugeGuard>,
}

/// Passes the answer through piece by piece, feeding the tap; meters at
/// the end (or, dropped early, the guard meters what was sent as cancelled).
fn tapped(
    inner: ForwardStream,
    running: Running,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    Box::pin(futures_util::stream::unfold(
        (inner, running),
        |(mut inner, mut st)| async move {
            if st.done {
                return None;
            }
            let item = match tokio::time::timeout(st.idle, inner.next()).await {
                Ok(item) => item,
                Err(_) => Some(Err(GwError::new(
                    ErrorCode::UpstreamTimeout,
                    format!("the provider sent nothing for {:?}", st.idle),
                ))),
            };
            match item {
                Some(Ok(chunk)) => {
                    st.tap.feed(&chunk.data);
                    Some((Ok(chunk.data), (inner, st)))
                }
                Some(Err(e)) => {
                    st.done = true;
                    let usage = st.tap.usage(st.guard.prompt_estimate);
                    st.guard.record("error", e.http_status(), Some(&usage));
                    if let Some(r) = st.release.take() {
                        r.failed();
                    }
                    Some((Err(std::io::Error::other(e.to_string())), (inner, st)))
                }
                None => {
                    st.done = true;
                    let mut usage = st.tap.usage(st.guard.prompt_estimate);
                    usage.cost_usd = Some(cost(&st.price, &usage));
                    st.guard.record("ok", 200, Some(&usage));
                    drop(st.release.take());
                    None
                }
            }
        },
    ))
}

/// Reads what metering needs from an answer as it passes.
struct Tap {
    meter: Meter,
    streaming: bool,
    input_chars: usize,
    /// The answer, while it is at most [`TAP_LIMIT`] bytes (not for streams).
    kept: Vec<u8>,
    /// The answer was larger: `kept` is empty.
    overflow: bool,
    /// A stream's unfinished line.
    line: Vec<u8>,
    /// Text streamed so far (completions without usage).
    text_chars: usize,
    /// Usage a stream's chunk reported.
    usage: Option<(u32, u32)>,
    /// Images seen in an image answer (its `b64_json` and `url` keys).
    images: u32,
}

/// The keys of an image in OpenAI's images answer; one per image.
const IMAGE_KEYS: [&[u8]; 2] = [b"\"b64_json\"", b"\"url\""];
/// Bytes carried from one piece to the next, where a key may be split.
const KEY_CARRY: usize = 9;

impl Tap {
    /// A tap that has seen nothing yet.
    fn new(meter: Meter, streaming: bool, input_chars: usize) -> Self {
        Self {
            meter,
            streaming,
            input_chars,
            kept: Vec::new(),
            overflow: false,
            line: Vec::new(),
            text_chars: 0,
            usage: None,
            images: 0,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        // Speech is metered from its input: its audio is not read.
        if matches!(self.meter, Meter::Characters(_)) {
            return;
        }
        if !self.streaming {
            if matches!(self.meter, Meter::Images { .. }) {
                self.count_images(data);
            }
            if self.overflow {
                return;
            }
            if self.kept.len() + data.len() <= TAP_LIMIT {
                self.kept.extend_from_slice(data);
            } else {
                // Too large to read back: metering falls back on the request.
                self.overflow = true;
                self.kept = Vec::new();
            }
            return;
        }
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.event(&line);
            } else if self.line.len() < TAP_LIMIT {
                self.line.push(b);
            }
        }
    }

    /// Counts image keys in `data`, also those split across pieces (the
    /// last bytes are carried in `line`, unused by non-streaming answers).
    /// Quotes are rare in base64, so this is a scan for `"`, no copy.
    fn count_images(&mut self, data: &[u8]) {
        let keys_at = |buf: &[u8], i: usize| {
            IMAGE_KEYS
                .iter()
                .filter(|k| buf[i..].starts_with(k))
                .map(|k| k.len())
                .next()
        };
        let mut found = 0u32;
        // Keys that start in the carried bytes and end in this piece.
        let carried = std::mem::take(&mut self.line);
        let mut joint = carried.clone();
        joint.extend_from_slice(&data[..data.len().min(KEY_CARRY)]);
        for i in (0..carried.len()).filter(|i| joint[*i] == b'"') {
            if keys_at(&joint, i).is_some_and(|len| i + len > carried.len()) {
                found += 1;
            }
        }
        for (i, _) in data.iter().enumerate().filter(|(_, b)| **b == b'"') {
            if keys_at(data, i).is_some() {
                found += 1;
            }
        }
        self.images = self.images.saturating_add(found);
        self.line = if data.len() >= KEY_CARRY {
            data[data.len() - KEY_CARRY..].to_vec()
        } else {
            let mut rest = carried;
            rest.extend_from_slice(data);
            rest[rest.len().saturating_sub(KEY_CARRY)..].to_vec()
        };
    }

    /// One SSE line of a completions stream.
    fn event(&mut self, line: &[u8]) {
        let Some(json) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(json.trim_ascii()) else {
            return;
        };
        if let Some(choices) = v["choices"].as_array() {
            self.text_chars += choices
                .iter()
                .filter_map(|c| c["text"].as_str())
                .map(str::len)
                .sum::<usize>();
        }
        if let Some(u) = token_usage(&v) {
            self.usage = Some(u);
        }
    }

    /// The usage of the answer so far, in the meter's units
    /// (`prompt_estimate`: the guard's, for completions without usage).
    fn usage(&self, prompt_estimate: u32) -> pb::Usage {
        let json = if self.streaming || self.overflow {
            None
        } else {
            serde_json::from_slice::<Value>(&self.kept).ok()
        };
        let (input, output, estimated) = match self.meter {
            Meter::Tokens => match self.usage.or_else(|| json.as_ref().and_then(token_usage)) {
                Some((i, o)) => (i, o, false),
                None => {
                    let text = json
                        .as_ref()
                        .and_then(|v| v["choices"].as_array())
                        .map_or(self.text_chars, |c| {
                            c.iter().filter_map(|c| c["text"].as_str()).map(str::len).sum()
                        });
                    (
                        prompt_estimate.max(estimate_tokens(self.input_chars)),
                        estimate_tokens(text),
                        true,
                    )
                }
            },
            Meter::Images { requested } => match json.as_ref().and_then(|v| v["data"].as_array()) {
                Some(d) => (0, u32::try_from(d.len()).unwrap_or(u32::MAX), false),
                None if self.overflow && self.images > 0 => (0, self.images, false),
                None => (0, requested, true),
            },
            Meter::Seconds => match json.as_ref().and_then(seconds_of_json).or_else(|| {
                (json.is_none() && !self.overflow)
                    .then(|| seconds_of_cues(&self.kept))
                    .flatten()
            }) {
                Some(s) => (s, 0, false),
                None => (0, 0, true),
            },
            Meter::Characters(n) => (n, 0, false),
        };
        pb::Usage {
            prompt_tokens: input,
            completion_tokens: output,
            total_tokens: input.saturating_add(output),
            estimated,
            ..Default::default()
        }
    }
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of an answer.
fn token_usage(v: &Value) -> Option<(u32, u32)> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let n = |k: &str| u[k].as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Some((n("prompt_tokens")?, n("completion_tokens").unwrap_or(0)))
}

/// Seconds of audio a transcription's JSON names: `duration`
/// (`verbose_json`) or `usage.seconds` (`json`), rounded up.
fn seconds_of_json(v: &Value) -> Option<u32> {
    let s = v["duration"]
        .as_f64()
        .or_else(|| v["usage"]["seconds"].as_f64())?;
    (s.is_finite() && s >= 0.0).then(|| s.ceil().min(f64::from(u32::MAX)) as u32)
}

/// The end of the last cue of an `srt` or `vtt` answer, in whole seconds
/// (rounded up): `00:01:02,500 --> 00:01:04,000`.
fn seconds_of_cues(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().rev().find(|l| l.contains("-->"))?;
    let end = line.split("-->").nth(1)?.split_whitespace().next()?;
    let mut secs = 0.0;
    for part in end.replace(',', ".").split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(f64::ceil(secs) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_from_cues_and_json() {
        let srt = b"1\n00:00:00,000 --> 00:00:02,000\nhi\n\n2\n00:01:02,500 --> 00:01:04,200\nbye\n";
        assert_eq!(seconds_of_cues(srt), Some(65));
        let vtt = b"WEBVTT\n\n00:00:00.000 --> 00:00:03.100\nhi\n";
        assert_eq!(seconds_of_cues(vtt), Some(4));
        assert_eq!(seconds_of_cues(b"plain text"), None);
        assert_eq!(seconds_of_json(&serde_json::json!({"duration": 8.47})), Some(9));
        assert_eq!(
            seconds_of_json(&serde_json::json!({"text": "x", "usage": {"type": "duration", "seconds": 3}})),
            Some(3)
        );
    }

    #[test]
    fn stream_usage_and_text_are_read_across_pieces() {
        let mut tap = Tap::new(Meter::Tokens, true, 8);
        tap.feed(b"data: {\"choices\":[{\"text\":\"hel");
        tap.feed(b"lo\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(tap.text_chars, 5);
        assert_eq!(tap.usage, Some((3, 2)));
    }

    #[test]
    fn images_of_an_answer_too_large_to_keep_are_counted_as_they_pass() {
        let mut tap = Tap::new(Meter::Images { requested: 4 }, false, 0);
        let image = "A".repeat(600_000);
        let answer = format!(
            r#"{{"created":1,"data":[{{"b64_json":"{image}","revised_prompt":"say \"url\" "}},{{"b64_json":"{image}"}},{{"url":"https://x"}}]}}"#
        );
        // Pieces of 7 bytes near the keys split them every way, then large ones.
        let bytes = answer.as_bytes();
        let (head, rest) = bytes.split_at(40);
        for piece in head.chunks(7).chain(rest.chunks(65_536)) {
            tap.feed(piece);
        }
        assert!(tap.overflow);
        let usage = tap.usage(0);
        assert_eq!((usage.completion_tokens, usage.estimated), (3, false));
    }
}

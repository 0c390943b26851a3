//! What the fuzz targets share: how an input is run through a decoder, and
//! the properties checked on what comes out. A target fails on a panic (the
//! product code must never panic on bad input), on a hang or an allocation
//! beyond libFuzzer's limits, and on a broken property:
//!
//! - a stream decodes the same whole and cut into pieces, wherever the cuts
//!   fall (framing must not depend on how the network delivers bytes);
//! - a stream whose body is all there never waits (it would hang);
//! - whatever the gateway writes from what it decoded is valid JSON;
//! - a request the edge accepted survives protobuf (the gRPC door) unchanged
//!   and passes validation again.

use llmgw_proto::{ChatChunk, ChatRequest};
use llmgw_provider_adapter::fuzz::{self, Wire};
use prost::Message as _;

/// A small PRNG seeded from the input, so each input is run the same way
/// every time (a crash reproduces) while the mutations vary the cuts.
struct Rng(u64);

impl Rng {
    fn new(data: &[u8]) -> Self {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in data {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(h | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `data` cut into pieces of 1 to 8 bytes, now and then longer.
fn cut<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let r = rng.next();
        let len = if r % 8 == 0 {
            1 + (r >> 8) % 64
        } else {
            1 + (r >> 8) % 8
        };
        let len = usize::try_from(len).unwrap_or(1).min(rest.len());
        let (piece, tail) = rest.split_at(len);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Fails unless `bytes` is one JSON value.
pub fn json(what: &str, bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        panic!(
            "{what} is not valid JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// A chunk with what the decoder makes up itself (ids, times) blanked, for
/// comparing two runs of one stream.
fn normal(wire: Wire, mut chunk: ChatChunk) -> ChatChunk {
    chunk.id.clear();
    chunk.created = 0;
    if matches!(wire, Wire::Gemini | Wire::Ollama) {
        for choice in &mut chunk.choices {
            for call in choice.delta.iter_mut().flat_map(|d| d.tool_calls.iter_mut()) {
                call.id = None;
            }
        }
    }
    chunk
}

/// One provider's decoders on `data`: as a response body, as an error body,
/// and as a stream body (whole, then cut apart; the two must agree).
pub fn decode(wire: Wire, data: &[u8]) {
    let mut rng = Rng::new(data);
    let json_mode = rng.next() % 2 == 0;

    if let Ok(resp) = fuzz::response(wire, data, json_mode) {
        match llmgw_kit::openai::response_json(&resp) {
            Ok(out) => json("the response written from a decoded one", &out),
            Err(e) => panic!("a decoded response could not be written: {e}"),
        }
    }

    let statuses = [400, 401, 403, 404, 408, 413, 422, 429, 500, 503, 529];
    let status = statuses[usize::try_from(rng.next() % 11).unwrap_or(0)];
    let _ = fuzz::error(wire, status, data);

    let whole = fuzz::stream(wire, &[data], json_mode);
    let pieces = cut(data, &mut rng);
    let split = fuzz::stream(wire, &pieces, json_mode);
    assert!(
        !whole.stalled && !split.stalled,
        "the stream waited with its body all there"
    );
    let mut buf = Vec::new();
    for chunk in whole.items.iter().flatten() {
        buf.clear();
        match llmgw_kit::openai::chunk_json(chunk, &mut buf) {
            Ok(()) => json("a chunk written from a decoded one", &buf),
            Err(e) => panic!("a decoded chunk could not be written: {e}"),
        }
    }
    let normalise = |items: Vec<Result<ChatChunk, llmgw_kit::GwError>>| {
        items
            .into_iter()
            .map(|item| item.map(|c| normal(wire, c)))
            .collect::<Vec<_>>()
    };
    let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    let (whole, split) = (normalise(whole.items), normalise(split.items));
    assert!(
        whole == split,
        "the stream decoded differently when cut into pieces of {lens:?}:\nwhole: {whole:?}\ncut:   {split:?}"
    );
}

/// Checks on a request the edge accepted: it survives protobuf unchanged
/// (and, for an OpenAI one, `validated`, validates again, as the gRPC door
/// does), and every provider can be asked it (or says why not) in valid JSON.
pub fn accepted(req: &ChatRequest, validated: bool) {
    let wire = req.encode_to_vec();
    match ChatRequest::decode(wire.as_slice()) {
        Ok(back) => assert!(&back == req, "a request changed through protobuf"),
        Err(e) => panic!("a request did not survive protobuf: {e}"),
    }
    if validated && let Err(e) = llmgw_kit::openai::validate_request(req) {
        panic!("an accepted request fails validation: {e}");
    }
    for body in fuzz::requests(req).into_iter().flatten() {
        json("a provider request", &body);
    }
}

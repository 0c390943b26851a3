//! `POST /v1/embeddings`: a client's request as the edge reads it, and a
//! provider's answer as the adapter reads it, each written back out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmgw_kit::openai;
use llmgw_proto::EncodingFormat;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = openai::parse_embeddings_request(data)
        && let Ok(body) = openai::embeddings_request_json(&req, "model")
    {
        llmgw_fuzz::json("an embeddings request", &body);
    }
    if let Ok(resp) = openai::parse_embeddings_response(data) {
        for format in [EncodingFormat::Float, EncodingFormat::Base64] {
            if let Ok(body) = openai::embeddings_response_json(&resp, format as i32) {
                llmgw_fuzz::json("an embeddings response", &body);
            }
        }
    }
});

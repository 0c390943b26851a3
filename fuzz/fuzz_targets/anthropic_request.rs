//! A client's `POST /v1/messages` (and `/v1/messages/count_tokens`) body:
//! read as the edge does, then written in every provider's wire format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for count_tokens in [false, true] {
        if let Ok(req) = llmgw_edge::fuzz::anthropic_request(data, count_tokens) {
            llmgw_fuzz::accepted(&req, false);
        }
    }
});

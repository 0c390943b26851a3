//! A client's `POST /v1/chat/completions` body: parsed and validated as the
//! edge does, then written in every provider's wire format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = llmgw_kit::openai::parse_request(data) {
        llmgw_fuzz::accepted(&req, true);
    }
});

//! The anthropic wire format's decoders on bytes as the provider would send them:
//! a response body, an error body, and a stream body whole and cut apart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmgw_provider_adapter::fuzz::Wire;

fuzz_target!(|data: &[u8]| llmgw_fuzz::decode(Wire::Anthropic, data));

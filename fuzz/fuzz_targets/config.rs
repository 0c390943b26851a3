//! The config loader: YAML text, `${ENV}` expansion and validation.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = [
        ("OPENAI_API_KEY", "sk-fuzz"),
        ("ANTHROPIC_API_KEY", "sk-ant-fuzz"),
        ("POD_IP", "10.0.0.5"),
        ("EMPTY", ""),
        ("LLMGW_MASTER_KEY", "master-fuzz"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let _ = llmgw_kit::config::Config::parse(text, "fuzz.yaml", &env);
});

//! `[emu:...]` directives: how a test steers the emulator from inside a prompt.
//!
//! They are read from the last user message only and stripped before the text is echoed:
//!
//! | directive | effect |
//! |---|---|
//! | `[emu:delay_ms=N]` | wait N ms before sending the response headers |
//! | `[emu:status=N]` | answer HTTP status N with an OpenAI error object |
//! | `[emu:chunk_delay_ms=N]` | wait N ms between stream chunks |
//! | `[emu:words=N]` | answer with N words instead of the echo |
//! | `[emu:abort_mid_stream]` | send a few chunks, then drop the connection (no `[DONE]`) |
//! | `[emu:finish=length]`, `[emu:finish=content_filter]` | force that `finish_reason` |
//! | `[emu:parallel]` | with ≥2 tools, call the first two |
//! | `[emu:prompt_too_long]` | answer 400 `context_length_exceeded` (param `messages`) |
//!
//! Unknown directives are stripped and ignored.

use std::borrow::Cow;

/// What the directives in one prompt asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub delay_ms: u64,
    pub status: Option<u16>,
    pub chunk_delay_ms: u64,
    pub words: Option<usize>,
    pub abort_mid_stream: bool,
    pub finish: Option<&'static str>,
    pub parallel: bool,
}

const OPEN: &str = "[emu:";

/// Reads the directives in `text` and returns them with the text stripped of them.
/// Text without directives is returned borrowed.
pub fn parse(text: &str) -> (Directives, Cow<'_, str>) {
    let mut d = Directives::default();
    if !text.contains(OPEN) {
        return (d, Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let Some(len) = rest[start..].find(']') else {
            break;
        };
        out.push_str(&rest[..start]);
        apply(&mut d, &rest[start + OPEN.len()..start + len]);
        rest = &rest[start + len + 1..];
        // Removing "a [emu:x] b" leaves one space, not two.
        if out.ends_with(char::is_whitespace) {
            rest = rest.trim_start_matches([' ', '\t']);
        }
    }
    out.push_str(rest);
    let trimmed = out.trim();
    if trimmed.len() != out.len() {
        out = trimmed.to_owned();
    }
    (d, Cow::Owned(out))
}

fn apply(d: &mut Directives, body: &str) {
    let (key, value) = match body.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => (body.trim(), ""),
    };
    match key {
        "delay_ms" => d.delay_ms = value.parse().unwrap_or(0),
        "status" => d.status = value.parse().ok().filter(|s| (100..=999).contains(s)),
        "chunk_delay_ms" => d.chunk_delay_ms = value.parse().unwrap_or(0),
        "words" => d.words = value.parse().ok(),
        "abort_mid_stream" => d.abort_mid_stream = true,
        "parallel" => d.parallel = true,
        "finish" => {
            d.finish = match value {
                "length" => Some("length"),
                "content_filter" => Some("content_filter"),
                "stop" => Some("stop"),
                _ => None,
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_reads_directives() {
        let (d, text) = parse("hello [emu:words=3] world [emu:finish=length][emu:abort_mid_stream]");
        assert_eq!(text, "hello world");
        assert_eq!(d.words, Some(3));
        assert_eq!(d.finish, Some("length"));
        assert!(d.abort_mid_stream);

        let (d, text) = parse("[emu:status=429] hi");
        assert_eq!((d.status, text.as_ref()), (Some(429), "hi"));

        let (d, text) = parse("plain [emu:broken");
        assert_eq!((d, text.as_ref()), (Directives::default(), "plain [emu:broken"));
    }
}

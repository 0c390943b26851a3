use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::http::{HeaderMap, HeaderValue, Uri};

use super::*;

const SECRET: &str = "emu-secret";
const PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";

/// Headers as a gateway would send them, signed with `secret` at `time`.
fn signed(secret: &str, token: Option<&str>, body: &[u8], time: SystemTime) -> HeaderMap {
    let url = format!("http://127.0.0.1:9/{}", PATH.trim_start_matches('/'));
    let identity = Credentials::new(ACCESS_KEY_ID, secret, token.map(str::to_owned), None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        [("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:9"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in instructions.headers() {
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

#[test]
fn verifies_sigv4() {
    let uri: Uri = PATH.parse().unwrap();
    let body = br#"{"messages":[]}"#;
    let now = SystemTime::now();
    let ok = signed(SECRET, None, body, now);
    verify_signature(SECRET, "POST", &uri, &ok, body, now).unwrap();
    let with_token = signed(SECRET, Some("session"), body, now);
    assert!(with_token.contains_key("x-amz-security-token"));
    verify_signature(SECRET, "POST", &uri, &with_token, body, now).unwrap();

    let kind = |h: &HeaderMap, body: &[u8], now| {
        verify_signature(SECRET, "POST", &uri, h, body, now)
            .unwrap_err()
            .kind
    };
    assert_eq!(
        kind(&signed("wrong", None, body, now), body, now),
        "InvalidSignatureException"
    );
    assert_eq!(kind(&ok, b"{\"messages\":[1]}", now), "InvalidSignatureException");
    assert_eq!(
        kind(&HeaderMap::new(), body, now),
        "MissingAuthenticationTokenException"
    );
    assert_eq!(
        kind(&ok, body, now + Duration::from_secs(3600)),
        "InvalidSignatureException",
        "expired"
    );
    let mut other_key = ok.clone();
    let auth = ok["authorization"]
        .to_str()
        .unwrap()
        .replace(ACCESS_KEY_ID, "AKIDOTHER");
    other_key.insert("authorization", HeaderValue::from_str(&auth).unwrap());
    assert_eq!(kind(&other_key, body, now), "UnrecognizedClientException");
    let mut dropped_token = with_token.clone();
    dropped_token.remove("x-amz-security-token");
    assert_eq!(kind(&dropped_token, body, now), "InvalidSignatureException");
}

#[test]
fn parses_amz_dates() {
    let t = parse_amz_date("20150830T123600Z").unwrap();
    assert_eq!(
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        1_440_938_160
    );
    assert!(parse_amz_date("2015-08-30T12:36:00Z").is_none());
}

#[test]
fn validates_like_bedrock() {
    let check = |v: serde_json::Value| validate::request(&v).map(|_| ()).map_err(|e| e.message);
    assert!(check(json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})).is_ok());
    let e = check(json!({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]})).unwrap_err();
    assert!(e.contains("start with a user message"), "{e}");
    let e = check(json!({"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]})).unwrap_err();
    assert!(e.contains("alternate"), "{e}");
    let e = check(json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}], "model": "x"}))
        .unwrap_err();
    assert!(e.contains("extraneous key [model]"), "{e}");
    let tools = json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]});
    let e = check(json!({"toolConfig": tools, "messages": [
        {"role": "user", "content": [{"text": "hi"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "a", "name": "f", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "b", "content": [{"text": "x"}]}}]}
    ]}))
    .unwrap_err();
    assert!(e.contains("toolUseId b"), "{e}");
    let e = check(json!({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "AA=="}}}]}]})).unwrap_err();
    assert!(e.contains("bmp"), "{e}");
}

#[test]
fn frames_decode() {
    use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
    let v = json!({"messages": [{"role": "user", "content": [{"text": "hi there"}]}]});
    let req = validate::request(&v).unwrap();
    let plan = plan(&req, &IdGen::new());
    let (buf, ends) = stream_frames(&plan);
    let mut decoder = MessageFrameDecoder::new();
    let mut rest = bytes::Bytes::from(buf);
    let mut kinds = Vec::new();
    while let DecodedFrame::Complete(m) = decoder.decode_frame(&mut rest).unwrap() {
        let h = m
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type")
            .unwrap();
        kinds.push(h.value().as_string().unwrap().as_str().to_owned());
    }
    assert_eq!(kinds.len(), ends.len());
    assert_eq!(kinds.first().map(String::as_str), Some("messageStart"));
    assert_eq!(kinds.last().map(String::as_str), Some("metadata"));
}

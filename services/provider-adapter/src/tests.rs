//! The adapter against a tiny in-test upstream (axum on `127.0.0.1:0`): what
//! is sent, what is parsed, and how every failure is classified.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::post;
use futures_util::StreamExt as _;
use llmgw_kit::ErrorCode;
use llmgw_kit::config::Config;
use llmgw_kit::openai::{parse_request, request_json};
use llmgw_kit::services::Adapter;
use llmgw_proto::{AdapterRequest, ChatChunk, FinishReason, Target};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::*;

const KEY: &str = "sk-provider-key";
const PATH: &str = "/v1/chat/completions";

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,
"model":"upstream-model-2024","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},
"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn chunk_event(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\
         \"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

fn sse_body() -> String {
    [
        chunk_event(r#"{"role":"assistant","content":""}"#, "null"),
        ": keepalive\n\n".to_owned(),
        chunk_event(r#"{"content":"hel"}"#, "null"),
        chunk_event(r#"{"content":"lo"}"#, "null"),
        chunk_event("{}", r#""stop""#),
        "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[],\
         \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"
            .to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// An upstream answering every call with `respond()`, recording each request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

impl Seen {
    fn take(&self) -> Vec<(HeaderMap, Bytes)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

async fn upstream(respond: impl Fn() -> Response + Clone + Send + Sync + 'static) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let app = Router::new().route(
        PATH,
        post(move |headers: HeaderMap, body: Bytes| {
            let (s, respond) = (s.clone(), respond.clone());
            async move {
                s.0.lock().unwrap().push((headers, body));
                respond()
            }
        }),
    );
    (serve(app).await, seen)
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body.into()).unwrap()
}

fn json(status: u16, body: &'static str) -> impl Fn() -> Response + Clone + Send + Sync + 'static {
    move || reply(status, &[("content-type", "application/json")], body)
}

fn sse(body: String) -> impl Fn() -> Response + Clone + Send + Sync + 'static {
    move || reply(200, &[("content-type", "text/event-stream")], body.clone())
}

/// A body fed by the test: each `Ok` is one write, an `Err` aborts the connection.
fn channel_body() -> (mpsc::UnboundedSender<Result<String, std::io::Error>>, Body) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (tx, Body::from_stream(stream))
}

fn config(addr: SocketAddr) -> Config {
    let yaml = format!(
        "providers:
  - name: emu
    type: openai
    base_url: http://{addr}/v1
    api_key: {KEY}
    organization: org-1
    project: proj-1
  - name: keyless
    type: openai
    base_url: http://{addr}/v1/
"
    );
    Config::parse(&yaml, "test.yaml", &HashMap::new()).unwrap()
}

fn adapter(addr: SocketAddr) -> Adapter {
    service(&config(addr)).unwrap()
}

fn request(provider: &str, stream: bool, timeout_ms: u32) -> AdapterRequest {
    let body = format!(
        r#"{{"model":"client-model","stream":{stream},"temperature":0.5,
        "messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    AdapterRequest {
        org_id: String::new(),
        request_id: "req-1".into(),
        target: Some(Target {
            provider: provider.into(),
            provider_type: "openai".into(),
            model: "upstream-model".into(),
            price: None,
            timeout_ms,
            max_retries: 0,
            ..Default::default()
        }),
        request: Some(parse_request(body.as_bytes()).unwrap()),
    }
}

async fn collect(stream: ChunkStream) -> Vec<Result<ChatChunk, GwError>> {
    stream.collect().await
}

fn content(chunks: &[Result<ChatChunk, GwError>]) -> String {
    chunks
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.as_ref()?.content.clone())
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

// ---- what is sent ----------------------------------------------------------

#[tokio::test]
async fn sends_the_exact_body_and_only_the_providers_headers() {
    let (addr, seen) = upstream(json(200, COMPLETION)).await;
    let adapter = adapter(addr);
    let req = request("emu", false, 5_000);
    adapter.complete(req.clone()).await.unwrap();

    let (headers, body) = seen.take().pop().unwrap();
    let chat = req.request.as_ref().unwrap();
    assert_eq!(body, request_json(chat, "upstream-model", None).unwrap());
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["model"], "upstream-model");
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent.get("stream_options"), None);

    assert_eq!(header(&headers, "authorization"), Some("Bearer sk-provider-key"));
    assert_eq!(header(&headers, "openai-organization"), Some("org-1"));
    assert_eq!(header(&headers, "openai-project"), Some("proj-1"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "accept"), Some("application/json"));
    let names: BTreeSet<&str> = headers.keys().map(|k| k.as_str()).collect();
    let allowed: BTreeSet<&str> = [
        "accept",
        "authorization",
        "content-length",
        "content-type",
        "host",
        "openai-organization",
        "openai-project",
        "user-agent",
    ]
    .into();
    assert!(names.is_subset(&allowed), "unexpected headers: {names:?}");
}

#[tokio::test]
async fn streams_ask_for_usage_and_event_stream() {
    let (addr, seen) = upstream(sse(sse_body())).await;
    let adapter = adapter(addr);
    // A canonical request that says `stream: false` still streams here.
    let req = request("emu", false, 5_000);
    collect(adapter.stream(req).await.unwrap()).await;

    let (headers, body) = seen.take().pop().unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["model"], "upstream-model");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(header(&headers, "accept"), Some("text/event-stream"));
    assert_eq!(header(&headers, "authorization"), Some("Bearer sk-provider-key"));
}

#[tokio::test]
async fn no_key_no_authorization_and_trailing_slash_is_fine() {
    let (addr, seen) = upstream(json(200, COMPLETION)).await;
    adapter(addr)
        .complete(request("keyless", false, 5_000))
        .await
        .unwrap();
    let (headers, _) = seen.take().pop().unwrap();
    assert_eq!(headers.get("authorization"), None);
    assert_eq!(headers.get("openai-organization"), None);
}

#[tokio::test]
async fn target_timeout_zero_uses_the_providers_own() {
    let (addr, _) = upstream(json(200, COMPLETION)).await;
    adapter(addr).complete(request("emu", false, 0)).await.unwrap();
}

// ---- what is parsed --------------------------------------------------------

#[tokio::test]
async fn parses_a_completion() {
    let (addr, _) = upstream(json(200, COMPLETION)).await;
    let resp = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap();
    assert_eq!(resp.id, "chatcmpl-1");
    assert_eq!(resp.model, "upstream-model-2024");
    assert_eq!(resp.choices.len(), 1);
    assert_eq!(resp.choices[0].finish_reason, FinishReason::Stop as i32);
    let usage = resp.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        (3, 1, 4)
    );
}

#[tokio::test]
async fn an_unparseable_body_is_an_upstream_error() {
    let (addr, _) = upstream(json(200, "<html>oops</html>")).await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.message(), "provider `emu` sent an invalid response");
    assert_eq!(err.provider(), Some("emu"));
    assert_eq!(err.http_status(), 502);
}

#[tokio::test]
async fn streams_every_chunk_then_ends_at_done() {
    let (addr, _) = upstream(sse(sse_body())).await;
    let chunks = collect(adapter(addr).stream(request("emu", true, 5_000)).await.unwrap()).await;
    assert_eq!(chunks.len(), 5, "{chunks:?}");
    assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
    assert_eq!(content(&chunks), "hello");
    let first = chunks[0].as_ref().unwrap();
    assert_eq!(
        first.choices[0].delta.as_ref().unwrap().role,
        Some(llmgw_proto::Role::Assistant as i32)
    );
    assert_eq!(
        chunks[3].as_ref().unwrap().choices[0].finish_reason,
        FinishReason::Stop as i32
    );
    assert_eq!(
        chunks[4].as_ref().unwrap().usage.as_ref().unwrap().total_tokens,
        5
    );
}

#[tokio::test]
async fn yields_each_chunk_as_it_arrives() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let (addr, _) = upstream(move || {
        let body = body.lock().unwrap().take().unwrap_or_default();
        reply(200, &[("content-type", "text/event-stream")], body)
    })
    .await;
    let mut stream = adapter(addr).stream(request("emu", true, 5_000)).await.unwrap();
    for word in ["one", "two", "three"] {
        tx.send(Ok(chunk_event(&format!(r#"{{"content":"{word}"}}"#), "null")))
            .unwrap();
        // The next chunk is only sent once this one came out: nothing is buffered.
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            got.choices[0].delta.as_ref().unwrap().content.as_deref(),
            Some(word)
        );
    }
    tx.send(Ok("data: [DONE]\n\n".into())).unwrap();
    assert!(stream.next().await.is_none());
}

// ---- streams that go wrong ---------------------------------------------------

#[tokio::test]
async fn an_error_event_mid_stream_ends_with_an_error() {
    let body = [
        chunk_event(r#"{"content":"hel"}"#, "null"),
        "data: {\"error\":{\"message\":\"the model is overloaded\",\"type\":\"server_error\"}}\n\n".into(),
        chunk_event(r#"{"content":"never"}"#, "null"),
    ]
    .concat();
    let (addr, _) = upstream(sse(body)).await;
    let chunks = collect(adapter(addr).stream(request("emu", true, 5_000)).await.unwrap()).await;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(content(&chunks), "hel");
    let err = chunks[1].as_ref().unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.provider(), Some("emu"));
    assert!(
        err.message().contains("the model is overloaded"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_stream_without_done_closed_early() {
    let body = chunk_event(r#"{"content":"hel"}"#, "null");
    let (addr, _) = upstream(sse(body)).await;
    let chunks = collect(adapter(addr).stream(request("emu", true, 5_000)).await.unwrap()).await;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    let err = chunks[1].as_ref().unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.message(), "provider `emu` closed the stream early");
}

#[tokio::test]
async fn a_connection_aborted_mid_stream_is_an_error_item() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let (addr, _) = upstream(move || {
        let body = body.lock().unwrap().take().unwrap_or_default();
        reply(200, &[("content-type", "text/event-stream")], body)
    })
    .await;
    let mut stream = adapter(addr).stream(request("emu", true, 5_000)).await.unwrap();
    tx.send(Ok(chunk_event(r#"{"content":"hel"}"#, "null"))).unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    tx.send(Err(std::io::Error::other("upstream died"))).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.provider(), Some("emu"));
    assert!(err.message().starts_with("provider `emu`"), "{}", err.message());
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn an_invalid_chunk_is_an_error_item() {
    let body = [
        chunk_event(r#"{"content":"hel"}"#, "null"),
        "data: {not json\n\n".into(),
    ]
    .concat();
    let (addr, _) = upstream(sse(body)).await;
    let chunks = collect(adapter(addr).stream(request("emu", true, 5_000)).await.unwrap()).await;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(
        chunks[1].as_ref().unwrap_err().message(),
        "provider `emu` sent an invalid stream chunk"
    );
}

/// Sends on drop: tells the test the server let go of the response body.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_call() {
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let signal = Arc::new(Mutex::new(Some(DropSignal(Some(dropped_tx)))));
    let (addr, _) = upstream(move || {
        let guard = signal.lock().unwrap().take();
        // One chunk, then a keepalive comment every 20 ms, forever: only the
        // client going away ends this body.
        let first = chunk_event(r#"{"content":"hel"}"#, "null");
        let stream = futures_util::stream::unfold((guard, Some(first)), |(guard, first)| async move {
            let item = match first {
                Some(first) => first,
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ": ping\n\n".to_owned()
                }
            };
            Some((Ok::<_, Infallible>(item), (guard, None)))
        });
        reply(
            200,
            &[("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
    })
    .await;
    let mut stream = adapter(addr).stream(request("emu", true, 5_000)).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), dropped_rx)
        .await
        .expect("the upstream body is still being served after the stream was dropped")
        .unwrap();
}

// ---- failures before the answer ----------------------------------------------

#[tokio::test]
async fn a_refused_connection_is_a_retryable_upstream_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let adapter = adapter(addr);
    for err in [
        adapter.complete(request("emu", false, 5_000)).await.unwrap_err(),
        adapter.stream(request("emu", true, 5_000)).await.err().unwrap(),
    ] {
        assert_eq!(err.code(), ErrorCode::UpstreamError, "{err:?}");
        assert!(err.retryable());
        assert_eq!(err.provider(), Some("emu"));
        assert_eq!(err.http_status(), 502);
        assert!(
            err.message().starts_with("provider `emu`: cannot connect"),
            "{}",
            err.message()
        );
        assert!(!err.message().contains(KEY));
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_per_try() {
    let app = Router::new().route(
        PATH,
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let adapter = adapter(serve(app).await);
    let start = Instant::now();
    for err in [
        adapter.complete(request("emu", false, 200)).await.unwrap_err(),
        adapter.stream(request("emu", true, 200)).await.err().unwrap(),
    ] {
        assert_eq!(err.code(), ErrorCode::UpstreamTimeout, "{err:?}");
        assert!(err.retryable());
        assert_eq!(err.provider(), Some("emu"));
        assert_eq!(err.http_status(), 504);
        assert_eq!(err.message(), "provider `emu`: no answer within 200 ms");
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_non_streaming_timeout_covers_the_whole_body() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let (addr, _) = upstream(move || {
        let body = body.lock().unwrap().take().unwrap_or_default();
        reply(200, &[("content-type", "application/json")], body)
    })
    .await;
    // Headers and half a body arrive; the rest never does.
    tx.send(Ok(COMPLETION[..20].to_owned())).unwrap();
    let err = adapter(addr)
        .complete(request("emu", false, 300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamTimeout, "{err:?}");
    drop(tx);
}

#[tokio::test]
async fn a_429_is_rate_limited_with_retry_after() {
    let (addr, _) = upstream(|| {
        reply(
            429,
            &[("content-type", "application/json"), ("retry-after", "7")],
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
    })
    .await;
    let adapter = adapter(addr);
    for err in [
        adapter.complete(request("emu", false, 5_000)).await.unwrap_err(),
        adapter.stream(request("emu", true, 5_000)).await.err().unwrap(),
    ] {
        assert_eq!(err.code(), ErrorCode::UpstreamRateLimited, "{err:?}");
        assert!(err.retryable());
        assert_eq!(err.retry_after_secs(), Some(7));
        assert_eq!(err.upstream_status(), Some(429));
        assert_eq!(err.http_status(), 429);
        assert_eq!(err.provider(), Some("emu"));
        assert!(err.message().contains("Rate limit reached"), "{}", err.message());
    }
}

#[tokio::test]
async fn a_500_is_a_retryable_upstream_error() {
    let (addr, _) = upstream(json(
        500,
        r#"{"error":{"message":"internal failure","type":"server_error"}}"#,
    ))
    .await;
    let adapter = adapter(addr);
    for err in [
        adapter.complete(request("emu", false, 5_000)).await.unwrap_err(),
        adapter.stream(request("emu", true, 5_000)).await.err().unwrap(),
    ] {
        assert_eq!(err.code(), ErrorCode::UpstreamError, "{err:?}");
        assert!(err.retryable());
        assert_eq!(err.upstream_status(), Some(500));
        assert_eq!(err.http_status(), 502);
        assert_eq!(err.message(), "provider `emu` failed (500): internal failure");
    }
}

#[tokio::test]
async fn a_500_with_an_html_body_still_classifies() {
    let (addr, _) =
        upstream(|| reply(503, &[("content-type", "text/html")], "<html>bad gateway</html>")).await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.message(), "provider `emu` failed (503)");
}

#[tokio::test]
async fn a_400_is_rejected_with_the_upstream_param() {
    let (addr, _) = upstream(json(
        400,
        r#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error",
        "param":"temperature","code":"invalid_value"}}"#,
    ))
    .await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamRejected, "{err:?}");
    assert!(!err.retryable());
    assert_eq!(err.param(), Some("temperature"));
    assert_eq!(err.upstream_status(), Some(400));
    assert_eq!(err.http_status(), 400);
    assert_eq!(err.provider(), Some("emu"));
    assert!(
        err.message().contains("Invalid value for 'temperature'"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_401_blames_the_gateways_credentials_and_hides_the_key() {
    let (addr, _) = upstream(json(
        401,
        r#"{"error":{"message":"Incorrect API key provided: sk-provider-key","type":"invalid_request_error"}}"#,
    ))
    .await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamRejected, "{err:?}");
    assert!(!err.retryable());
    assert_eq!(err.upstream_status(), Some(401));
    assert_eq!(err.http_status(), 502);
    assert!(
        err.message().contains("rejected the gateway's credentials"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains(KEY), "{}", err.message());
    assert!(!format!("{err:?}").contains(KEY));
}

#[tokio::test]
async fn a_408_is_a_timeout() {
    let (addr, _) = upstream(json(408, "{}")).await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamTimeout);
    assert!(err.retryable());
    assert_eq!(err.upstream_status(), Some(408));
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let (elsewhere, seen_elsewhere) = upstream(json(200, COMPLETION)).await;
    let location = format!("http://{elsewhere}{PATH}");
    let (addr, _) = upstream(move || reply(307, &[("location", location.as_str())], "")).await;
    let err = adapter(addr)
        .complete(request("emu", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError, "{err:?}");
    assert_eq!(err.upstream_status(), Some(307));
    assert!(seen_elsewhere.take().is_empty());
}

// ---- the service -------------------------------------------------------------

#[tokio::test]
async fn an_unknown_provider_is_internal() {
    let (addr, seen) = upstream(json(200, COMPLETION)).await;
    let err = adapter(addr)
        .complete(request("nope", false, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert_eq!(err.message(), "unknown provider `nope`");
    let err = adapter(addr)
        .stream(request("nope", true, 5_000))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(seen.take().is_empty());
}

#[tokio::test]
async fn a_provider_type_mismatch_is_internal() {
    let (addr, _) = upstream(json(200, COMPLETION)).await;
    let mut req = request("emu", false, 5_000);
    req.target.as_mut().unwrap().provider_type = "anthropic".into();
    let err = adapter(addr).complete(req).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
}

#[tokio::test]
async fn the_connection_is_reused_after_done() {
    // Two streams in a row over one pooled connection: the server sees one peer port.
    let ports = Arc::new(Mutex::new(Vec::new()));
    let p = ports.clone();
    let app = Router::new().route(
        PATH,
        post(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| {
                let p = p.clone();
                async move {
                    p.lock().unwrap().push(peer.port());
                    // Chunked, one write per event, as a real provider streams.
                    let events: Vec<Result<String, Infallible>> = sse_body()
                        .split_inclusive("\n\n")
                        .map(|e| Ok(e.to_owned()))
                        .collect();
                    let body = Body::from_stream(futures_util::stream::iter(events));
                    reply(200, &[(header::CONTENT_TYPE.as_str(), "text/event-stream")], body)
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap()
    });
    let adapter = adapter(addr);
    for _ in 0..2 {
        let chunks = collect(adapter.stream(request("emu", true, 5_000)).await.unwrap()).await;
        assert!(chunks.iter().all(Result::is_ok));
    }
    let ports = ports.lock().unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0], ports[1], "the second call opened a new connection");
}

// ---- against the OpenAI emulator (tests/emulators) ---------------------------

mod emulator {
    use llmgw_emulators::{Emulator, Options};

    use super::*;

    async fn emulator(api_key: &str) -> Emulator {
        llmgw_emulators::spawn(Options {
            api_key: Some(api_key.into()),
            record: false,
        })
        .await
        .unwrap()
    }

    fn ask(text: &str, stream: bool) -> AdapterRequest {
        let mut req = request("emu", stream, 5_000);
        let body = serde_json::json!({
            "model": "client-model",
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        });
        req.request = Some(parse_request(body.to_string().as_bytes()).unwrap());
        req
    }

    #[tokio::test]
    async fn completes_and_streams_with_usage() {
        let emu = emulator(KEY).await;
        let adapter = adapter(emu.addr);

        let resp = adapter.complete(ask("hello there", false)).await.unwrap();
        assert_eq!(resp.choices.len(), 1);
        assert!(resp.usage.is_some_and(|u| u.total_tokens > 0));

        let chunks = collect(adapter.stream(ask("[emu:words=5] count", true)).await.unwrap()).await;
        assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
        assert!(!content(&chunks).is_empty());
        // `include_usage` is forced on streams: the last chunk carries it.
        let last = chunks.last().unwrap().as_ref().unwrap();
        assert!(
            last.usage.as_ref().is_some_and(|u| u.total_tokens > 0),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_provider_key_is_the_gateways_fault() {
        let emu = emulator("sk-some-other-key").await;
        let err = adapter(emu.addr).complete(ask("hi", false)).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::UpstreamRejected, "{err:?}");
        assert_eq!(err.upstream_status(), Some(401));
        assert_eq!(err.http_status(), 502);
        assert!(!err.message().contains(KEY));
    }

    #[tokio::test]
    async fn failures_classify() {
        let emu = emulator(KEY).await;
        let adapter = adapter(emu.addr);

        let err = adapter
            .stream(ask("[emu:status=503] hi", true))
            .await
            .err()
            .unwrap();
        assert_eq!(
            (err.code(), err.upstream_status()),
            (ErrorCode::UpstreamError, Some(503))
        );
        let err = adapter
            .complete(ask("[emu:status=429] hi", false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::UpstreamRateLimited);

        let chunks = collect(
            adapter
                .stream(ask("[emu:abort_mid_stream] hi", true))
                .await
                .unwrap(),
        )
        .await;
        assert!(chunks.len() >= 2, "{chunks:?}");
        let (last, rest) = chunks.split_last().unwrap();
        assert!(rest.iter().all(Result::is_ok), "{chunks:?}");
        assert_eq!(last.as_ref().unwrap_err().code(), ErrorCode::UpstreamError);

        let mut slow = ask("[emu:delay_ms=2000] hi", true);
        slow.target.as_mut().unwrap().timeout_ms = 100;
        let err = adapter.stream(slow).await.err().unwrap();
        assert_eq!(err.code(), ErrorCode::UpstreamTimeout);
    }
}

// ---- BYOK ------------------------------------------------------------------

/// An auth double holding one credential of org `org_a`, counting lookups.
struct OneCredential {
    base_url: String,
    lookups: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl llmgw_kit::services::AuthService for OneCredential {
    async fn authenticate(
        &self,
        _: llmgw_proto::AuthenticateRequest,
    ) -> Result<llmgw_proto::Principal, GwError> {
        Err(GwError::internal("unused"))
    }
    async fn admin(&self, _: llmgw_proto::AdminCall) -> Result<llmgw_proto::AdminReply, GwError> {
        Err(GwError::internal("unused"))
    }
    async fn admit(&self, _: llmgw_proto::AdmitRequest) -> Result<llmgw_proto::Admission, GwError> {
        Err(GwError::internal("unused"))
    }
    async fn settle(&self, _: llmgw_proto::SettleRequest) -> Result<llmgw_proto::SettleAck, GwError> {
        Err(GwError::internal("unused"))
    }
    async fn get_credential(
        &self,
        req: llmgw_proto::GetCredentialRequest,
    ) -> Result<llmgw_proto::ProviderCredential, GwError> {
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if req.org_id != "org_a" || req.credential_id != "cred_1" {
            return Err(GwError::new(ErrorCode::NotFound, "no such provider credential"));
        }
        Ok(llmgw_proto::ProviderCredential {
            id: "cred_1".into(),
            org_id: "org_a".into(),
            name: "mycred".into(),
            r#type: "openai".into(),
            settings_json: format!(r#"{{"base_url":"{}"}}"#, self.base_url),
            secrets_json: r#"{"api_key":"sk-org-own-key"}"#.into(),
        })
    }
}

fn byok_request(org_id: &str) -> AdapterRequest {
    let mut req = request("mycred", false, 0);
    req.org_id = org_id.into();
    if let Some(t) = req.target.as_mut() {
        t.credential_id = Some("cred_1".into());
        t.byok = true;
    }
    req
}

#[tokio::test]
async fn byok_targets_use_the_orgs_own_credential_fetched_once() {
    let (addr, seen) = upstream(json(200, COMPLETION)).await;
    let auth = Arc::new(OneCredential {
        base_url: format!("http://{addr}/v1"),
        lookups: Default::default(),
    });
    let adapter = service_with_credentials(&config(addr), auth.clone()).unwrap();
    for _ in 0..2 {
        adapter.complete(byok_request("org_a")).await.unwrap();
    }
    let seen = seen.take();
    assert_eq!(seen.len(), 2);
    for (headers, _) in &seen {
        assert_eq!(header(headers, "authorization"), Some("Bearer sk-org-own-key"));
        assert_eq!(header(headers, "openai-organization"), None);
    }
    // Built once, then kept.
    assert_eq!(auth.lookups.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Another org's request for the same credential: auth refuses it, and
    // the cache (keyed by org too) does not answer for it.
    let err = adapter.complete(byok_request("org_b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(!err.message().contains("sk-org-own-key"));

    // Without an auth service, a BYOK target is an error, not a fallback.
    let err = service(&config(addr))
        .unwrap()
        .complete(byok_request("org_a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
}

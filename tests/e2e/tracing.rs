//! Tracing across the split cluster: a real OTLP/gRPC receiver (the
//! `TraceService/Export` server of `opentelemetry-proto`) in this process,
//! five `llmgw` processes exporting to it, and a client `traceparent`. One
//! chat request (and one stream) must come back as one trace holding the
//! spans of every service, each parented within the trace, the root a child
//! of the client's span, the upstream call carrying the trace to the
//! provider, GenAI attributes with the values the response shows — and no
//! secret anywhere in what was exported.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};

use crate::budgets::key_with_policy;
use crate::harness::{EMU_KEY, Extra, Gateway, Shape, sse_data, user};

/// One exported span, flattened for the checks.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    /// 0 unset, 1 ok, 2 error.
    status: i32,
    attrs: HashMap<String, String>,
}

/// What the receiver got: every span, and every export request as text
/// (attributes, events and resources, for the canary search).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    raw: Arc<Mutex<String>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = req.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{req:?}\n"));
        let mut got = Vec::new();
        for rs in &req.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        kind: span.kind,
                        status: span.status.as_ref().map_or(0, |s| s.code),
                        attrs: attrs(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Listens on a free port; the server lives as long as the test's runtime.
    async fn start() -> (SocketAddr, Self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (addr, receiver)
    }

    fn trace(&self, trace_id: &str) -> Vec<Got> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// The spans of `trace_id`, polled until `(service, span name)` of each
    /// of `wanted` is among them (spans come in batches, metering's last).
    async fn until(&self, trace_id: &str, wanted: &[(&str, &str)]) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.trace(trace_id);
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(svc, name)| !spans.iter().any(|s| s.service == *svc && s.name == *name))
                .collect();
            if missing.is_empty() {
                // A moment more for stragglers of the same batch round.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.trace(trace_id);
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: missing {missing:?}; got {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.service, &s.name, &s.span_id, &s.parent))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn one<'a>(spans: &'a [Got], service: &str, name: &str) -> &'a Got {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {service}: {found:#?}");
    found[0]
}

/// Every span's parent is in the trace, except the root's (of `root_service`):
/// the client's span.
fn check_parents(spans: &[Got], root_service: &str) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    let roots: Vec<_> = spans.iter().filter(|s| s.parent == CLIENT_SPAN).collect();
    assert_eq!(roots.len(), 1, "one root, child of the client's span: {roots:#?}");
    assert_eq!(roots[0].service, root_service);
    for s in spans {
        assert!(
            s.parent == CLIENT_SPAN || ids.contains(s.parent.as_str()),
            "span `{}` of {} has a parent outside the trace: {s:#?}",
            s.name,
            s.service
        );
    }
}

/// `child` descends from `ancestor` within `spans`.
fn descends(spans: &[Got], child: &Got, ancestor: &Got) -> bool {
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut at = child;
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        if parent.span_id == ancestor.span_id {
            return true;
        }
        at = parent;
    }
    false
}

/// Each `(service, name)` span descends from `root`.
fn all_under(spans: &[Got], root: &Got, wanted: &[(&str, &str)]) {
    for (service, name) in wanted {
        assert!(
            descends(spans, one(spans, service, name), root),
            "{service} `{name}` is not under `{}`",
            root.name
        );
    }
}

fn attr<'a>(span: &'a Got, key: &str) -> &'a str {
    span.attrs.get(key).map_or_else(
        || panic!("`{}` has no `{key}`: {:#?}", span.name, span.attrs),
        String::as_str,
    )
}

/// The GenAI client span of the upstream call, checked against what the
/// client was answered, and the `traceparent` the provider received.
async fn check_upstream_call(gw: &Gateway, spans: &[Got], service: &str, trace_id: &str, answer: &Value) {
    let chat = one(spans, service, "chat gpt-4o-mini");
    assert_eq!(chat.kind, SpanKind::Client as i32);
    for (key, want) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.system", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", answer["model"].as_str().unwrap()),
        ("server.address", "127.0.0.1"),
    ] {
        assert_eq!(attr(chat, key), want, "{key}");
    }
    assert_eq!(attr(chat, "server.port"), gw.emu.addr.port().to_string());
    assert_eq!(
        attr(chat, "gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"].to_string()
    );
    assert_eq!(
        attr(chat, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].to_string()
    );
    assert_eq!(
        attr(chat, "gen_ai.response.finish_reasons"),
        answer["choices"][0]["finish_reason"].as_str().unwrap()
    );
    assert!(!chat.attrs.contains_key("error.type"), "{:#?}", chat.attrs);
    // The provider got the trace, with the client span as its parent.
    let up = gw.last_upstream().await;
    let traceparent = up["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    assert_eq!(traceparent, format!("00-{trace_id}-{}-01", chat.span_id));
}

/// No secret in any attribute, event or resource of anything exported.
fn check_no_secrets(receiver: &Receiver, keys: &[&str]) {
    let raw = receiver.raw.lock().unwrap();
    assert!(!raw.is_empty());
    for canary in keys.iter().chain([&EMU_KEY, &"Bearer "]) {
        assert!(!raw.contains(canary), "`{canary}` was exported");
    }
    // Nor the prompt (prompt text is not recorded by default).
    assert!(!raw.contains("tell me a traced secret"));
}

/// POSTs a chat request with `key` as a child of the client's span in
/// `trace_id`; it must succeed.
async fn traced_post(gw: &Gateway, key: &str, trace_id: &str, body: &Value) -> reqwest::Response {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r
}

/// A gateway of `shape` exporting spans to a new receiver, keeping
/// `sample_ratio` of new traces, in batches every 100 ms.
async fn traced(shape: Shape, sample_ratio: f64) -> (Gateway, Receiver) {
    // Export batches every 100 ms rather than every 5 s.
    traced_with(shape, sample_ratio, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await
}

/// [`traced`] with the gateway's environment `env`.
async fn traced_with(shape: Shape, sample_ratio: f64, env: &[(&str, &str)]) -> (Gateway, Receiver) {
    let (addr, receiver) = Receiver::start().await;
    let top = format!("telemetry:\n  otlp_endpoint: http://{addr}\n  sample_ratio: {sample_ratio}\n");
    let gw = Gateway::start_extra(
        shape,
        Extra {
            top: &top,
            models: "  - name: embed-small\n    target: emu/text-embedding-3-small\n",
            env,
            ..Extra::default()
        },
    )
    .await;
    (gw, receiver)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_across_the_split_cluster() {
    let (gw, receiver) = traced(Shape::Split, 1.0).await;
    // A budget, so auth admits and settles too.
    let (key, _) = key_with_policy(&gw, json!({"budgets": [{"period": "total", "limit_usd": 100.0}]})).await;

    // ---- a chat completion
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = traced_post(
        &gw,
        &key,
        trace_id,
        &json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": user("tell me a traced secret")}),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw-edge", "POST /v1/chat/completions"),
                ("llmgw-edge", "attempt"),
                ("llmgw-auth", "authenticate"),
                ("llmgw-auth", "admit"),
                ("llmgw-auth", "settle"),
                ("llmgw-router", "route"),
                ("llmgw-adapter", "complete"),
                ("llmgw-adapter", "chat gpt-4o-mini"),
                ("llmgw-metering", "record"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw-edge");
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from([
            "llmgw-edge",
            "llmgw-auth",
            "llmgw-router",
            "llmgw-adapter",
            "llmgw-metering"
        ])
    );
    let root = one(&spans, "llmgw-edge", "POST /v1/chat/completions");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(attr(root, "http.request.method"), "POST");
    assert_eq!(attr(root, "http.route"), "/v1/chat/completions");
    assert_eq!(attr(root, "http.response.status_code"), "200");
    // Each service's spans hang under the edge's, through its gRPC server span.
    all_under(
        &spans,
        root,
        &[
            ("llmgw-auth", "authenticate"),
            ("llmgw-router", "route"),
            ("llmgw-adapter", "chat gpt-4o-mini"),
            ("llmgw-metering", "record"),
        ],
    );
    let grpc = one(&spans, "llmgw-router", "llmgw.v1.Router/Route");
    assert_eq!(grpc.kind, SpanKind::Server as i32);
    assert_eq!(attr(grpc, "rpc.system"), "grpc");
    let complete = one(&spans, "llmgw-adapter", "complete");
    let chat = one(&spans, "llmgw-adapter", "chat gpt-4o-mini");
    assert_eq!(
        chat.parent, complete.span_id,
        "the upstream call is the adapter call's child"
    );
    let attempt = one(&spans, "llmgw-edge", "attempt");
    assert!(descends(&spans, complete, attempt));
    assert_eq!(attr(attempt, "gen_ai.provider.name"), "openai");
    check_upstream_call(&gw, &spans, "llmgw-adapter", trace_id, &answer).await;
    let record = one(&spans, "llmgw-metering", "record");
    assert_eq!(
        attr(record, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].to_string()
    );

    // ---- a stream: the same structure
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let r = traced_post(
        &gw,
        &key,
        trace_id,
        &json!({
            "model": "gpt-4o-mini", "max_tokens": 8, "stream": true,
            "stream_options": {"include_usage": true},
            "messages": user("tell me a traced secret"),
        }),
    )
    .await;
    let events = sse_data(&r.text().await.unwrap());
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // The answer as a whole: model, the finish reason, the usage chunk.
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap()["usage"].clone();
    let answer = json!({
        "model": chunks[0]["model"],
        "usage": usage,
        "choices": [{"finish_reason": finish}],
    });
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw-edge", "POST /v1/chat/completions"),
                ("llmgw-auth", "admit"),
                ("llmgw-auth", "settle"),
                ("llmgw-router", "route"),
                ("llmgw-adapter", "stream"),
                ("llmgw-adapter", "chat gpt-4o-mini"),
                ("llmgw-metering", "record"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw-edge");
    let root = one(&spans, "llmgw-edge", "POST /v1/chat/completions");
    all_under(
        &spans,
        root,
        &[
            ("llmgw-auth", "admit"),
            ("llmgw-router", "route"),
            ("llmgw-adapter", "chat gpt-4o-mini"),
            ("llmgw-metering", "record"),
        ],
    );
    check_upstream_call(&gw, &spans, "llmgw-adapter", trace_id, &answer).await;

    check_no_secrets(&receiver, &[&key, &gw.key]);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_process_traces_rest_and_public_grpc() {
    let (gw, receiver) = traced(Shape::All, 1.0).await;

    // ---- REST: every span from the one process, `llmgw`
    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    let r = traced_post(
        &gw,
        &gw.key,
        trace_id,
        &json!({"model": "gpt-4o-mini", "messages": user("tell me a traced secret")}),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw", "POST /v1/chat/completions"),
                ("llmgw", "authenticate"),
                ("llmgw", "route"),
                ("llmgw", "complete"),
                ("llmgw", "chat gpt-4o-mini"),
                ("llmgw", "record"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw");
    assert!(spans.iter().all(|s| s.service == "llmgw"));
    check_upstream_call(&gw, &spans, "llmgw", trace_id, &answer).await;

    // ---- public gRPC: the trace context comes in the call's metadata
    let trace_id = "7d1e3c1a9b2f4e6d8c0a1b2c3d4e5f60";
    let mut client = llmgw_proto::gateway_client::GatewayClient::connect(format!("http://{}", gw.grpc))
        .await
        .unwrap();
    let mut req = crate::grpc::authed(&gw, crate::grpc::chat_request("tell me a traced secret"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    client.chat(req).await.unwrap();
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw", "llmgw.v1.Gateway/Chat"),
                ("llmgw", "chat gpt-4o-mini"),
                ("llmgw", "record"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw");
    let root = one(&spans, "llmgw", "llmgw.v1.Gateway/Chat");
    assert_eq!(root.parent, CLIENT_SPAN);
    assert_eq!(root.kind, SpanKind::Server as i32);

    // ---- gRPC-Web: the trace context comes in the HTTP/1.1 headers
    let trace_id = "9e4c2b7a1d3f5e6a8b0c2d4e6f8a0b1c";
    let r = crate::grpc::grpc_web_chat(&gw, "tell me a traced secret")
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw", "POST /llmgw.v1.Gateway/Chat"),
                ("llmgw", "chat gpt-4o-mini"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw");
    let root = one(&spans, "llmgw", "POST /llmgw.v1.Gateway/Chat");
    assert_eq!(attr(root, "http.route"), "/llmgw.v1.Gateway/Chat");

    // ---- embeddings: an `embeddings {model}` client span
    let trace_id = "1f2e3d4c5b6a79880123456789abcdef";
    let r = gw
        .client
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&gw.key)
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "embed-small", "input": "alpha"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.unwrap();
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw", "POST /v1/embeddings"),
                ("llmgw", "embed"),
                ("llmgw", "embeddings text-embedding-3-small"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw");
    let call = one(&spans, "llmgw", "embeddings text-embedding-3-small");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(attr(call, "gen_ai.operation.name"), "embeddings");
    assert_eq!(attr(call, "gen_ai.request.model"), "text-embedding-3-small");
    assert_eq!(
        attr(call, "gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"].to_string()
    );

    // ---- a failed upstream call: `error.type` and an error status
    let trace_id = "2a3b4c5d6e7f80910a1b2c3d4e5f6071";
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "dead-model", "messages": user("tell me a traced secret")}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(status >= 500, "{status}");
    let spans = receiver
        .until(
            trace_id,
            &[
                ("llmgw", "POST /v1/chat/completions"),
                ("llmgw", "attempt"),
                ("llmgw", "chat gpt-4o-mini"),
            ],
        )
        .await;
    check_parents(&spans, "llmgw");
    let root = one(&spans, "llmgw", "POST /v1/chat/completions");
    assert_eq!(attr(root, "http.response.status_code"), status.to_string());
    assert_eq!(attr(root, "error.type"), status.to_string());
    assert_eq!(root.status, 2);
    for name in ["attempt", "chat gpt-4o-mini"] {
        let span = one(&spans, "llmgw", name);
        assert_eq!(attr(span, "error.type"), "upstream_error", "{name}");
        assert_eq!(span.status, 2, "{name}");
    }

    check_no_secrets(&receiver, &[&gw.key]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_keeps_sampled_client_traces_and_a_ratio_of_new_ones() {
    let (gw, receiver) = traced(Shape::All, 0.0).await;
    let body = json!({"model": "gpt-4o-mini", "messages": user("hi")});
    // A new trace: none kept at ratio 0.
    let r = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(r.0, 200);
    // A client's sampled trace: kept whatever the ratio (parent-based).
    let trace_id = "3c4d5e6f708192a3b4c5d6e7f8091a2b";
    traced_post(&gw, &gw.key, trace_id, &body).await;
    receiver
        .until(
            trace_id,
            &[("llmgw", "POST /v1/chat/completions"), ("llmgw", "record")],
        )
        .await;
    // A client's unsampled trace: not kept either.
    let unsampled = "4d5e6f708192a3b4c5d6e7f8091a2b3c";
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("traceparent", format!("00-{unsampled}-{CLIENT_SPAN}-00"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A second sampled trace after it, as a barrier: once it is in, the
    // unsampled one would be too.
    let barrier = "5e6f708192a3b4c5d6e7f8091a2b3c4d";
    traced_post(&gw, &gw.key, barrier, &body).await;
    receiver
        .until(
            barrier,
            &[("llmgw", "POST /v1/chat/completions"), ("llmgw", "record")],
        )
        .await;
    let spans = receiver.spans.lock().unwrap().clone();
    let traces: HashSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        HashSet::from([trace_id, barrier]),
        "only the sampled traces"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_still_queued_are_flushed_at_exit() {
    // The default batch delay (5 s): what arrives sooner was flushed at exit.
    let (mut gw, receiver) = traced_with(Shape::All, 1.0, &[]).await;
    let trace_id = "6f708192a3b4c5d6e7f8091a2b3c4d5e";
    let body = json!({"model": "gpt-4o-mini", "messages": user("hi")});
    let sent = Instant::now();
    traced_post(&gw, &gw.key, trace_id, &body).await;
    crate::harness::sigterm(gw.children.remove(0)).await;
    let spans = receiver.trace(trace_id);
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "too slow to tell a flush from a batch"
    );
    for name in ["POST /v1/chat/completions", "chat gpt-4o-mini", "record"] {
        assert!(
            spans.iter().any(|s| s.name == name),
            "`{name}` was not flushed at exit: {spans:#?}"
        );
    }
}

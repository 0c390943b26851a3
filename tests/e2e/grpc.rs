//! The public gRPC API with a real tonic client, gRPC-Web over HTTP/1.1, and
//! health + reflection on every server.

use bytes::{Buf, BufMut, BytesMut};
use futures_util::StreamExt as _;
use llmgw_proto as pb;
use prost::Message as _;
use tonic::metadata::MetadataValue;

use crate::harness::{Gateway, Shape};

/// A gRPC-Web `Gateway/Chat` call of `text` over HTTP/1.1 with the
/// gateway's key, ready to send (or to add headers to).
pub fn grpc_web_chat(gw: &Gateway, text: &str) -> reqwest::RequestBuilder {
    let msg = chat_request(text).encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(msg.len()).unwrap());
    frame.put_slice(&msg);
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .build()
        .unwrap()
        .post(gw.url("/llmgw.v1.Gateway/Chat"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .bearer_auth(&gw.key)
        .body(frame.freeze())
}

pub fn chat_request(text: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: Some(pb::Content {
                value: Some(pb::content::Value::Text(text.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn authed<T>(gw: &Gateway, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {}", gw.key).parse().unwrap();
    req.metadata_mut().insert("authorization", v);
    req
}

fn text_of(resp: &pb::ChatResponse) -> String {
    match resp.choices[0]
        .message
        .as_ref()
        .and_then(|m| m.content.as_ref())
        .and_then(|c| c.value.as_ref())
    {
        Some(pb::content::Value::Text(t)) => t.clone(),
        other => panic!("no text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_grpc_and_grpc_web() {
    let gw = Gateway::start(Shape::All).await;
    let mut client = pb::gateway_client::GatewayClient::connect(format!("http://{}", gw.grpc))
        .await
        .unwrap();

    let resp = client.chat(authed(&gw, chat_request("over grpc"))).await.unwrap();
    let overhead = resp
        .metadata()
        .get("x-llmgw-overhead-ms")
        .expect("the gateway's own time");
    assert!(overhead.to_str().unwrap().parse::<f64>().unwrap() >= 0.0);
    let resp = resp.into_inner();
    assert_eq!(text_of(&resp), "You said: over grpc");
    assert!(resp.usage.unwrap().cost_usd.unwrap() > 0.0);
    assert_eq!(resp.metadata.unwrap().used_provider, "emu");

    let mut stream = client
        .chat_stream(authed(&gw, chat_request("streamed grpc")))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for c in &chunk.choices {
            text.push_str(c.delta.as_ref().and_then(|d| d.content.as_deref()).unwrap_or(""));
        }
    }
    assert_eq!(text, "You said: streamed grpc");

    let models = client
        .list_models(authed(&gw, pb::ListModelsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(models.data.iter().any(|m| m.id == "gpt-4o-mini"));

    // Errors carry a status code and the structured detail.
    let err = client
        .chat(tonic::Request::new(chat_request("no key")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .chat(authed(
            &gw,
            pb::ChatRequest {
                model: "nope".into(),
                ..chat_request("x")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let detail = pb::ErrorDetail::decode(err.details()).unwrap();
    assert_eq!(detail.param.as_deref(), Some("model"));
    let err = client
        .chat(authed(
            &gw,
            pb::ChatRequest {
                messages: vec![],
                ..chat_request("x")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Health and reflection on the public gRPC port.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", gw.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "llmgw.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // gRPC-Web: one HTTP/1.1 POST on the HTTP port.
    let r = grpc_web_chat(&gw, "over grpc-web").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let mut body = r.bytes().await.unwrap();
    let mut message = None;
    let mut trailers = String::new();
    while body.remaining() >= 5 {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        let payload = body.split_to(len);
        if flag & 0x80 == 0 {
            message = Some(pb::ChatResponse::decode(payload).unwrap());
        } else {
            trailers = String::from_utf8_lossy(&payload).to_string();
        }
    }
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert_eq!(
        text_of(&message.expect("a message frame")),
        "You said: over grpc-web"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_answer_health_checks() {
    let gw = Gateway::start(Shape::Split).await;
    // The split edge reached every service already; each also reports
    // SERVING on grpc.health.v1 under its own name.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    for (svc, name) in [
        ("auth", "llmgw.v1.Auth"),
        ("router", "llmgw.v1.Router"),
        ("adapter", "llmgw.v1.Adapter"),
        ("metering", "llmgw.v1.Metering"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{svc}: {{ addr:")))
            .unwrap();
        let addr = line
            .split("addr:")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches('}')
            .trim();
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: name.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
}

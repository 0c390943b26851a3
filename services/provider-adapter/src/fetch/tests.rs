use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::routing::get;
use futures_util::stream;
use llmgw_kit::ErrorCode;

use super::*;

const PARAM: &str = "messages[0].content[1].image_url";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRpixels";

/// A local server with one route per behaviour under test.
async fn server() -> SocketAddr {
    let app = Router::new()
        .route(
            "/cat.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
        )
        .route(
            "/octets",
            get(|| async { ([(header::CONTENT_TYPE, "application/octet-stream")], PNG) }),
        )
        .route(
            "/photo",
            get(|| async { ([(header::CONTENT_TYPE, "image/heic; q=1")], "heic bytes") }),
        )
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html>hi</html>") }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/cat.png")]) }),
        )
        .route(
            "/drawing.svg",
            get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], "<svg/>") }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/ten",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![7u8; 10 << 10]) }),
        )
        .route(
            "/big",
            // Chunked, no Content-Length: the cap must hold while streaming.
            get(|| async {
                let chunks = (0..64).map(|_| Ok::<_, Infallible>(Bytes::from(vec![0u8; 1024])));
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    Body::from_stream(stream::iter(chunks)),
                )
            }),
        )
        .route(
            "/slow",
            get(|| async {
                let chunks = stream::unfold(0u8, |n| async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    (n < 3).then(|| {
                        (
                            Ok::<_, Infallible>(Bytes::from_static(b"\x89PNG\r\n\x1a\n")),
                            n + 1,
                        )
                    })
                });
                ([(header::CONTENT_TYPE, "image/png")], Body::from_stream(chunks))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn local() -> Fetcher {
    Fetcher::for_tests(16 << 10, Duration::from_millis(500))
}

/// A refusal: a 400 naming the param, saying `why`.
fn refused(result: Result<(String, Vec<u8>), GwError>, why: &str) -> GwError {
    let err = result.expect_err("the fetch must be refused");
    assert_eq!(err.code(), ErrorCode::InvalidRequest, "{}", err.message());
    assert_eq!(err.http_status(), 400);
    assert_eq!(err.param(), Some(PARAM));
    assert!(err.message().contains(why), "{}", err.message());
    err
}

#[tokio::test]
async fn fetches_an_image_from_an_allowed_host() {
    let addr = server().await;
    let (mime, bytes) = local()
        .fetch_image(&format!("http://{addr}/cat.png"), PARAM)
        .await
        .unwrap();
    assert_eq!((mime.as_str(), bytes.as_slice()), ("image/png", PNG));
    // Untyped bytes are sniffed; a declared image type is kept without its parameters.
    let (mime, _) = local()
        .fetch_image(&format!("http://{addr}/octets"), PARAM)
        .await
        .unwrap();
    assert_eq!(mime, "image/png");
    let (mime, _) = local()
        .fetch_image(&format!("http://{addr}/photo"), PARAM)
        .await
        .unwrap();
    assert_eq!(mime, "image/heic");
}

#[tokio::test]
async fn refuses_loopback_private_and_link_local_hosts() {
    let addr = server().await;
    let guard = Fetcher::new();
    let port = addr.port();
    // A live server is there, and a secret in the URL is never echoed.
    let err = refused(
        guard
            .fetch_image(&format!("http://127.0.0.1:{port}/cat.png?token=s3cret"), PARAM)
            .await,
        "loopback",
    );
    assert!(!err.message().contains("s3cret") && !err.message().contains("127.0.0.1"));
    refused(
        guard
            .fetch_image(&format!("http://localhost:{port}/cat.png"), PARAM)
            .await,
        "loopback",
    );
    refused(
        guard
            .fetch_image(&format!("http://[::1]:{port}/cat.png"), PARAM)
            .await,
        "loopback",
    );
    refused(
        guard
            .fetch_image("http://169.254.169.254/latest/meta-data/", PARAM)
            .await,
        "link-local",
    );
    refused(
        guard.fetch_image("https://10.0.0.1/x.png", PARAM).await,
        "private",
    );
    refused(
        guard
            .fetch_image("http://[::ffff:192.168.1.1]/x.png", PARAM)
            .await,
        "private",
    );
    refused(
        guard.fetch_image("http://[fd00::1]/x.png", PARAM).await,
        "unique local",
    );
    refused(guard.fetch_image("http://100.64.0.1/x.png", PARAM).await, "CGNAT");
    refused(
        guard.fetch_image("http://0.0.0.0/x.png", PARAM).await,
        "unspecified",
    );
    // The test allowance lets loopback through, and nothing else.
    refused(
        local().fetch_image("http://10.0.0.1/x.png", PARAM).await,
        "private",
    );
    refused(
        local().fetch_image("http://169.254.169.254/x.png", PARAM).await,
        "link-local",
    );
}

#[tokio::test]
async fn refuses_other_schemes_and_credentials() {
    let guard = Fetcher::new();
    refused(guard.fetch_image("file:///etc/passwd", PARAM).await, "only http");
    refused(
        guard.fetch_image("gopher://example.com/", PARAM).await,
        "only http",
    );
    refused(guard.fetch_image("not a url", PARAM).await, "not a valid url");
    refused(
        guard.fetch_image("http://user:pw@example.com/x.png", PARAM).await,
        "credentials",
    );
}

#[tokio::test]
async fn refuses_what_is_not_a_small_quick_image() {
    let addr = server().await;
    let url = |path: &str| format!("http://{addr}{path}");
    refused(local().fetch_image(&url("/page"), PARAM).await, "not an image");
    refused(
        local().fetch_image(&url("/drawing.svg"), PARAM).await,
        "not an image",
    );
    refused(
        local().fetch_image(&url("/redirect"), PARAM).await,
        "redirects are not followed",
    );
    refused(local().fetch_image(&url("/missing"), PARAM).await, "status 404");
    refused(
        local().fetch_image(&url("/big"), PARAM).await,
        "larger than 16384 bytes",
    );
    let started = std::time::Instant::now();
    refused(
        local().fetch_image(&url("/slow"), PARAM).await,
        "longer than 500 ms",
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn classifies_addresses() {
    let no = |s: &str| forbidden(s.parse().unwrap());
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ] {
        assert_eq!(no(public), None, "{public}");
    }
    for (ip, what) in [
        ("127.0.0.2", LOOPBACK),
        ("::1", LOOPBACK),
        ("::ffff:127.0.0.1", LOOPBACK),
        ("::127.0.0.1", LOOPBACK),
        ("172.16.0.1", "a private address"),
        ("192.168.0.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private (unique local) address"),
        ("100.127.255.255", "a shared (CGNAT) address"),
        ("255.255.255.255", "a broadcast address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("::", "an unspecified address"),
        ("64:ff9b::a00:1", "a private address"),
        ("2002:a9fe:a9fe::1", "a link-local address"),
        ("240.0.0.1", "a reserved address"),
    ] {
        assert_eq!(no(ip), Some(what), "{ip}");
    }
}

#[test]
fn sniffs_image_magic() {
    assert_eq!(sniff(PNG), Some("image/png"));
    assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
    assert_eq!(sniff(b"GIF89a.."), Some("image/gif"));
    assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    assert_eq!(sniff(b"<svg"), None);
}

#[tokio::test]
async fn inlines_http_images_only() {
    let addr = server().await;
    let req = llmgw_kit::openai::parse_request(
        serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": format!("http://{addr}/cat.png")}},
            {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}
        ]}]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let out = local()
        .inline_images(&req, ("ol", "ollama"), |_, _| true)
        .await
        .unwrap();
    let Some(content::Value::Parts(parts)) = out.messages[0].content.as_ref().and_then(|c| c.value.as_ref())
    else {
        panic!("parts expected")
    };
    let url = |j: usize| match &parts.parts[j].part {
        Some(content_part::Part::ImageUrl(i)) => i.url.clone(),
        _ => String::new(),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
    assert_eq!(url(1), format!("data:image/png;base64,{b64}"));
    assert_eq!(url(2), "data:image/gif;base64,R0lG");
    // A refusal names the provider and the param.
    let err = Fetcher::new()
        .inline_images(&req, ("ol", "ollama"), |_, _| true)
        .await
        .unwrap_err();
    assert_eq!(err.param(), Some("messages[0].content[1].image_url"));
    assert_eq!(err.provider(), Some("ol"));
    assert!(
        err.message()
            .starts_with("provider `ol` (ollama) takes images as bytes, and the gateway cannot fetch the image url: its host is a loopback address"),
        "{}",
        err.message()
    );
    // Nothing to fetch: borrowed as is.
    let plain = local()
        .inline_images(&req, ("ol", "ollama"), |_, _| false)
        .await
        .unwrap();
    assert!(matches!(plain, Cow::Borrowed(_)));
}

fn with_urls(urls: &[String]) -> ChatRequest {
    let parts: Vec<serde_json::Value> = urls
        .iter()
        .map(|u| serde_json::json!({"type": "image_url", "image_url": {"url": u}}))
        .collect();
    llmgw_kit::openai::parse_request(
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": parts}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

#[tokio::test]
async fn caps_the_images_of_one_request() {
    let addr = server().await;
    let ten = format!("http://{addr}/ten");
    // One 10 KiB image fits the 16 KiB budget; two do not, together.
    let one = with_urls(std::slice::from_ref(&ten));
    let out = local()
        .inline_images(&one, ("ol", "ollama"), |_, _| true)
        .await
        .unwrap();
    assert!(matches!(out, Cow::Owned(_)));
    let err = local()
        .inline_images(
            &with_urls(&[ten.clone(), ten.clone()]),
            ("ol", "ollama"),
            |_, _| true,
        )
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert!(
        err.message().contains("larger than 16384 bytes together"),
        "{}",
        err.message()
    );
    // At most MAX_IMAGES urls are fetched: the next is refused before any fetch.
    let many: Vec<String> = (0..=MAX_IMAGES).map(|_| ten.clone()).collect();
    let err = Fetcher::new()
        .inline_images(&with_urls(&many), ("ol", "ollama"), |_, _| true)
        .await
        .unwrap_err();
    assert_eq!(
        err.param(),
        Some(format!("messages[0].content[{MAX_IMAGES}].image_url").as_str())
    );
    assert!(
        err.message().contains("more than 16 image urls"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn numeric_hosts_are_normalised_before_the_check() {
    let guard = Fetcher::new();
    for url in [
        "http://2130706433/x.png",
        "http://0x7f.1/x.png",
        "http://127.1/x.png",
    ] {
        refused(guard.fetch_image(url, PARAM).await, "loopback");
    }
}

#[tokio::test]
async fn connects_only_to_the_vetted_address() {
    let addr = server().await;
    // `images.invalid` never resolves in DNS (RFC 6761): the fetch can only
    // succeed by connecting to the address the guard vetted.
    let url = format!("http://images.invalid:{}/cat.png", addr.port());
    let (mime, _) = local()
        .with_host("images.invalid", addr.ip())
        .fetch_image(&url, PARAM)
        .await
        .unwrap();
    assert_eq!(mime, "image/png");
    // Without the answer: no resolution (or, on a slow resolver, no time left).
    refused(
        local().fetch_image(&url, PARAM).await,
        "cannot fetch the image url: it",
    );
    // A name answered with a private address is refused, loopback allowed or not.
    refused(
        local()
            .with_host("images.invalid", "10.1.2.3".parse().unwrap())
            .fetch_image(&url, PARAM)
            .await,
        "private",
    );
}

//! The guarded fetch of a client's `image_url`, for providers that only take
//! inline bytes (Ollama, Gemini on AI Studio).
//!
//! A client's URL must never let it reach what the gateway can reach and it
//! cannot: only `http` and `https`; the host is resolved here and refused when
//! any of its addresses is loopback, private, link-local (cloud metadata
//! included), CGNAT, unique-local, multicast, broadcast, unspecified or
//! reserved, IPv4-mapped and embedded forms included; the request then goes
//! only to the vetted addresses (a dedicated client with those addresses
//! pinned and no proxy), so a second DNS answer cannot swap them (rebinding).
//! No redirects; the body is capped while it streams (Content-Length is not
//! trusted) and the whole fetch is capped in time; the answer must be an
//! image (`image/*`, or PNG, JPEG, GIF or WebP by its magic bytes). The
//! images of one request are fetched concurrently, at most [`MAX_IMAGES`] of
//! them and [`MAX_TOTAL_BYTES`] together.
//!
//! Every refusal is a 400 naming the parameter and saying why, without the
//! URL (it may carry a token) or the addresses it resolved to.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use llmgw_kit::GwError;
use llmgw_proto::{ChatRequest, Message, content, content_part};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Url, redirect};

/// The largest image fetched.
const MAX_BYTES: usize = 20 << 20;
/// The longest a fetch may take, from resolving the host to the last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most images fetched for one request.
pub(crate) const MAX_IMAGES: usize = 16;
/// The most bytes fetched for one request, all its images together.
pub(crate) const MAX_TOTAL_BYTES: usize = 48 << 20;

/// Fetches images for providers that need inline bytes. Production code
/// builds it with [`Fetcher::new`]; the test-only constructor may allow
/// loopback (tests have no other network), and config never can.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    /// Loopback addresses allowed (tests only).
    allow_loopback: bool,
    max_bytes: usize,
    max_total_bytes: usize,
    timeout: Duration,
    /// Names answered without DNS (tests only: they prove the connection
    /// goes to the vetted address, not to a second lookup's answer).
    hosts: Vec<(String, IpAddr)>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    /// The production guard: every private range refused.
    pub(crate) fn new() -> Self {
        Self {
            allow_loopback: false,
            max_bytes: MAX_BYTES,
            max_total_bytes: MAX_TOTAL_BYTES,
            timeout: TIMEOUT,
            hosts: Vec::new(),
        }
    }

    /// A guard that lets loopback through (and only loopback), with its own
    /// caps: for tests against a local server.
    #[cfg(test)]
    pub(crate) fn for_tests(max_bytes: usize, timeout: Duration) -> Self {
        Self {
            allow_loopback: true,
            max_bytes,
            max_total_bytes: max_bytes,
            timeout,
            hosts: Vec::new(),
        }
    }

    /// Answers `name` with `ip` instead of asking DNS (tests only).
    #[cfg(test)]
    pub(crate) fn with_host(mut self, name: &str, ip: IpAddr) -> Self {
        self.hosts.push((name.to_owned(), ip));
        self
    }

    /// Fetches the image at `url`: its MIME type and bytes. `param` names
    /// the field in errors (`messages[0].content[1].image_url`).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the one-image form; translators use `inline_images`")
    )]
    pub(crate) async fn fetch_image(&self, url: &str, param: &str) -> Result<(String, Vec<u8>), GwError> {
        self.fetch_within(url, param, &AtomicUsize::new(self.max_bytes))
            .await
    }

    /// [`Self::fetch_image`], taking its bytes from `budget`, shared by the
    /// images of one request.
    async fn fetch_within(
        &self,
        url: &str,
        param: &str,
        budget: &AtomicUsize,
    ) -> Result<(String, Vec<u8>), GwError> {
        let refuse = |why: &str| GwError::invalid(param, format!("cannot fetch the image url: {why}"));
        let url = Url::parse(url).map_err(|_| refuse("it is not a valid url"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("only http and https urls are fetched"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("urls with credentials are not fetched"));
        }
        let host = url.host_str().ok_or_else(|| refuse("it has no host"))?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let fetch = async {
            let addrs = self.resolve(&host, port).await.map_err(|why| refuse(&why))?;
            // Once per process, as for the shared client.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = reqwest::Client::builder()
                .redirect(redirect::Policy::none())
                .no_proxy()
                .tcp_nodelay(true)
                .connect_timeout(self.timeout)
                .user_agent(concat!("llmgw/", env!("CARGO_PKG_VERSION")));
            if literal_ip(&host).is_none() {
                builder = builder.resolve_to_addrs(&host, &addrs);
            }
            let client = builder
                .build()
                .map_err(|_| GwError::internal("cannot build the image fetch client"))?;
            let mut response = client.get(url.clone()).send().await.map_err(|e| {
                refuse(if e.is_connect() {
                    "cannot connect"
                } else {
                    "the request failed"
                })
            })?;
            let status = response.status();
            if status.is_redirection() {
                return Err(refuse(&format!(
                    "it redirects ({}), and redirects are not followed",
                    status.as_u16()
                )));
            }
            if !status.is_success() {
                return Err(refuse(&format!("it answered with status {}", status.as_u16())));
            }
            if response
                .content_length()
                .is_some_and(|n| n > self.max_bytes as u64)
            {
                return Err(refuse(&format!(
                    "the image is larger than {} bytes",
                    self.max_bytes
                )));
            }
            let declared = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| refuse("the response broke off"))?
            {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(refuse(&format!(
                        "the image is larger than {} bytes",
                        self.max_bytes
                    )));
                }
                let taken = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(chunk.len())
                });
                if taken.is_err() {
                    return Err(refuse(&format!(
                        "the request's images are larger than {} bytes together",
                        self.max_total_bytes
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            let mime = match sniff(&body) {
                Some(mime) => mime.to_owned(),
                // A raster type as declared; SVG is markup no provider reads as an image.
                None if declared.starts_with("image/")
                    && declared.len() > "image/".len()
                    && !declared.starts_with("image/svg") =>
                {
                    declared
                }
                None => return Err(refuse("the response is not an image")),
            };
            Ok((mime, body))
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(refuse(&format!(
                "it took longer than {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The host's addresses, each vetted; the reason when any is refused.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let known = self
            .hosts
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, ip)| *ip);
        let addrs: Vec<SocketAddr> = match literal_ip(host).or(known) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| "its host does not resolve".to_owned())?
                .collect(),
        };
        if addrs.is_empty() {
            return Err("its host does not resolve".to_owned());
        }
        for addr in &addrs {
            if let Some(what) = forbidden(addr.ip())
                && !(self.allow_loopback && what == LOOPBACK)
            {
                return Err(format!("its host is {what}, which is not allowed"));
            }
        }
        Ok(addrs)
    }

    /// `req` with every `image_url` that `wanted` picks (by message and
    /// URL; only http(s) URLs are ever fetched) fetched and inlined as a
    /// base64 data URL; borrowed when there is none. Refusals name
    /// `provider` (`` `ol` (ollama) ``), which needs the bytes.
    pub(crate) async fn inline_images<'a>(
        &self,
        req: &'a ChatRequest,
        provider: (&str, &str),
        wanted: impl Fn(&Message, &str) -> bool,
    ) -> Result<Cow<'a, ChatRequest>, GwError> {
        let (name, kind) = provider;
        let refuse = |e: GwError, param: &str| {
            GwError::new(
                e.code(),
                format!(
                    "provider `{name}` ({kind}) takes images as bytes, and the gateway {}",
                    e.message()
                ),
            )
            .with_param(param)
            .with_provider(name)
        };
        // (message, part, url, param) of every image to fetch.
        let mut wanted_images = Vec::new();
        for (i, m) in req.messages.iter().enumerate() {
            let Some(content::Value::Parts(parts)) = m.content.as_ref().and_then(|c| c.value.as_ref()) else {
                continue;
            };
            for (j, part) in parts.parts.iter().enumerate() {
                let Some(content_part::Part::ImageUrl(image)) = &part.part else {
                    continue;
                };
                if !is_http(&image.url) || !wanted(m, &image.url) {
                    continue;
                }
                let param = format!("messages[{i}].content[{j}].image_url");
                if wanted_images.len() == MAX_IMAGES {
                    let e = GwError::invalid(
                        &param,
                        format!("cannot fetch more than {MAX_IMAGES} image urls for one request"),
                    );
                    return Err(refuse(e, &param));
                }
                wanted_images.push((i, j, image.url.as_str(), param));
            }
        }
        if wanted_images.is_empty() {
            return Ok(Cow::Borrowed(req));
        }
        let budget = AtomicUsize::new(self.max_total_bytes);
        let fetched = futures_util::future::try_join_all(wanted_images.iter().map(|(_, _, url, param)| {
            let budget = &budget;
            async move {
                self.fetch_within(url, param, budget)
                    .await
                    .map_err(|e| refuse(e, param))
            }
        }))
        .await?;
        let mut out = req.clone();
        for ((i, j, _, _), (mime, bytes)) in wanted_images.iter().zip(fetched) {
            let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
            if let Some(content::Value::Parts(parts)) =
                out.messages[*i].content.as_mut().and_then(|c| c.value.as_mut())
                && let Some(content_part::Part::ImageUrl(image)) = &mut parts.parts[*j].part
            {
                image.url = format!("data:{mime};base64,{data}");
            }
        }
        Ok(Cow::Owned(out))
    }
}

/// The IP address a URL's host names literally (`10.0.0.1`, `[::1]`).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// An `http://` or `https://` URL (any case).
pub(crate) fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

const LOOPBACK: &str = "a loopback address";

/// Why `ip` may not be fetched from, or `None` when it is a public address.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        LOOPBACK
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "a broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a == 100 && (b & 0xc0) == 64 {
        "a shared (CGNAT) address"
    } else if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b & 0xfe) == 18) {
        "a reserved address"
    } else {
        return None;
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    Some(if ip.is_loopback() {
        LOOPBACK
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a private (unique local) address"
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        "a link-local address"
    } else if s[..6] == [0; 6] {
        // IPv4-compatible `::a.b.c.d` (deprecated): judged as the IPv4 address.
        return forbidden_v4(embedded_v4(s[6], s[7]));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 reaches the embedded IPv4 address.
        return forbidden_v4(embedded_v4(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4 reaches the embedded IPv4 address.
        return forbidden_v4(embedded_v4(s[1], s[2]));
    } else {
        return None;
    })
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// The MIME type of a PNG, JPEG, GIF or WebP by its magic bytes.
fn sniff(body: &[u8]) -> Option<&'static str> {
    if body.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if body.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if body.starts_with(b"GIF87a") || body.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if body.len() >= 12 && &body[..4] == b"RIFF" && &body[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;

//! The service traits and the one client type each.
//!
//! Each service is a plain async trait over the proto messages. A client is an
//! `Arc<dyn Trait>`: built from a local implementation (`llmgw all`: no
//! serialisation, no socket, no extra hop) or from a tonic channel (the
//! `Grpc*` types here), or a test double. The `*GrpcServer` adapters expose a
//! local implementation over tonic, so the remote path is the same trait on
//! both ends.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt as _};
use llmgw_proto as pb;
use pb::adapter_client::AdapterClient;
use pb::auth_client::AuthClient;
use pb::metering_client::MeteringClient;
use pb::router_client::RouterClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::GwError;
use crate::grpc::MAX_MESSAGE_BYTES;
use crate::telemetry::TraceInterceptor;
use crate::upstream;

/// Every internal client's channel: each call carries the caller's trace
/// context (see [`TraceInterceptor`]).
type Traced = InterceptedService<Channel, TraceInterceptor>;

/// A stream of chat chunks, as every hop passes it on.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChatChunk, GwError>> + Send + 'static>>;

/// A passed-through answer (see `Adapter.Forward`): the first item carries
/// the upstream status and content type, every item may carry body bytes.
pub type ForwardStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardChunk, GwError>> + Send + 'static>>;

/// "Who are you, and may you?"
#[async_trait]
pub trait AuthService: Send + Sync + 'static {
    async fn authenticate(&self, req: pb::AuthenticateRequest) -> Result<pb::Principal, GwError>;
    /// One admin API operation on behalf of `call.caller`.
    async fn admin(&self, call: pb::AdminCall) -> Result<pb::AdminReply, GwError>;
    /// Reserves a worst-case cost against the principal's budgets (402).
    async fn admit(&self, req: pb::AdmitRequest) -> Result<pb::Admission, GwError>;
    /// Settles a reservation with the real cost; idempotent.
    async fn settle(&self, req: pb::SettleRequest) -> Result<pb::SettleAck, GwError>;
    /// An org's BYOK credential, decrypted, for the provider-adapter only;
    /// NOT_FOUND unless it belongs to `req.org_id`.
    async fn get_credential(&self, req: pb::GetCredentialRequest) -> Result<pb::ProviderCredential, GwError>;
}

/// The id a principal's policy of `scope` (`org`, `project` or `key`) is
/// about: the key's org, its project (empty when it has none), or itself.
pub fn policy_scope_id<'a>(principal: &'a pb::Principal, scope: &str) -> &'a str {
    match scope {
        "org" => &principal.org_id,
        "project" => principal.project_id.as_deref().unwrap_or_default(),
        _ => &principal.key_id,
    }
}

/// "Which targets, in what order?"
#[async_trait]
pub trait RouterService: Send + Sync + 'static {
    async fn route(&self, req: pb::RouteRequest) -> Result<pb::RoutePlan, GwError>;
    async fn list_models(&self, req: pb::ModelsRequest) -> Result<pb::ModelList, GwError>;
    /// How an attempt went (health, latency, in-flight counts). Never
    /// blocks: a remote router gets reports in batches, in order, and a
    /// report that finds the queue full is dropped.
    fn report(&self, report: pb::AttemptReport);
}

/// "Say it to this provider, and say its answer back."
#[async_trait]
pub trait AdapterService: Send + Sync + 'static {
    async fn complete(&self, req: pb::AdapterRequest) -> Result<pb::ChatResponse, GwError>;
    /// Resolves once the provider has accepted the request (its headers
    /// arrived), so errors before the first byte are still retryable.
    async fn stream(&self, req: pb::AdapterRequest) -> Result<ChunkStream, GwError>;
    async fn embed(&self, req: pb::AdapterEmbeddingsRequest) -> Result<pb::EmbeddingsResponse, GwError>;
    /// An OpenAI-shaped request passed through (legacy completions, images,
    /// audio). Resolves once the provider answered 2xx, so every error
    /// before the first byte is still retryable.
    async fn forward(&self, req: pb::ForwardRequest) -> Result<ForwardStream, GwError>;
}

/// "What did it cost, and who spent it?"
#[async_trait]
pub trait MeteringService: Send + Sync + 'static {
    /// Records a batch; idempotent by `request_id`.
    async fn record(&self, events: Vec<pb::UsageEvent>) -> Result<pb::RecordAck, GwError>;
    async fn get_usage(&self, query: pb::UsageQuery) -> Result<pb::UsageSummary, GwError>;
    /// One org's usage from the daily roll-ups, filtered and grouped. (The
    /// default is for test doubles that only record.)
    async fn query_usage(&self, req: pb::UsageQueryRequest) -> Result<pb::UsageReport, GwError> {
        let _ = req;
        Err(GwError::internal("this metering service cannot query usage"))
    }
}

pub type Auth = Arc<dyn AuthService>;
pub type Router = Arc<dyn RouterService>;
pub type Adapter = Arc<dyn AdapterService>;
pub type Metering = Arc<dyn MeteringService>;

// ---- remote clients -------------------------------------------------------

/// Runs an idempotent call, and once more if it failed in transport (the
/// connection dropped or was refused before the service answered: a status
/// with none of our error detail) — a hiccup on an internal hop should not
/// fail the client's request.
async fn once_more<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    match call().await {
        Err(status)
            if status.details().is_empty()
                && matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
                ) =>
        {
            tracing::debug!(code = ?status.code(), message = status.message(), "internal call failed in transport; once more");
            call().await
        }
        other => other,
    }
}

/// [`AuthService`] over gRPC.
#[derive(Clone)]
pub struct GrpcAuth(AuthClient<Traced>);

impl GrpcAuth {
    /// A client for the service at the other end of `channel`.
    pub fn client(channel: Channel) -> Auth {
        Arc::new(Self(
            AuthClient::with_interceptor(channel, TraceInterceptor)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        ))
    }
}

#[async_trait]
impl AuthService for GrpcAuth {
    async fn authenticate(&self, req: pb::AuthenticateRequest) -> Result<pb::Principal, GwError> {
        Ok(once_more(|| {
            let (mut client, req) = (self.0.clone(), req.clone());
            async move { client.authenticate(req).await }
        })
        .await?
        .into_inner())
    }

    async fn admin(&self, call: pb::AdminCall) -> Result<pb::AdminReply, GwError> {
        Ok(self.0.clone().admin(call).await?.into_inner())
    }

    async fn admit(&self, req: pb::AdmitRequest) -> Result<pb::Admission, GwError> {
        // Idempotent by request id: safe to send again.
        Ok(once_more(|| {
            let (mut client, req) = (self.0.clone(), req.clone());
            async move { client.admit(req).await }
        })
        .await?
        .into_inner())
    }

    async fn settle(&self, req: pb::SettleRequest) -> Result<pb::SettleAck, GwError> {
        Ok(once_more(|| {
            let (mut client, req) = (self.0.clone(), req.clone());
            async move { client.settle(req).await }
        })
        .await?
        .into_inner())
    }

    async fn get_credential(&self, req: pb::GetCredentialRequest) -> Result<pb::ProviderCredential, GwError> {
        Ok(self.0.clone().get_credential(req).await?.into_inner())
    }
}

/// [`RouterService`] over gRPC. Reports go through a queue to one task that
/// sends them in batches, in the order they were made.
#[derive(Clone)]
pub struct GrpcRouter {
    client: RouterClient<Traced>,
    reports: tokio::sync::mpsc::Sender<pb::AttemptReport>,
}

/// Reports waiting for the router at most; beyond it they are dropped.
const REPORT_QUEUE: usize = 16_384;
/// Reports per `Report` call at most.
const REPORT_BATCH: usize = 512;

impl GrpcRouter {
    /// A client for the service at the other end of `channel`. Must be
    /// called within a Tokio runtime (it starts the report sender).
    pub fn client(channel: Channel) -> Router {
        let client = RouterClient::with_interceptor(channel, TraceInterceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (reports, rx) = tokio::sync::mpsc::channel(REPORT_QUEUE);
        tokio::spawn(send_reports(client.clone(), rx));
        Arc::new(Self { client, reports })
    }
}

async fn send_reports(
    mut client: RouterClient<Traced>,
    mut rx: tokio::sync::mpsc::Receiver<pb::AttemptReport>,
) {
    let mut batch = Vec::with_capacity(REPORT_BATCH);
    while rx.recv_many(&mut batch, REPORT_BATCH).await > 0 {
        let reports = std::mem::replace(&mut batch, Vec::with_capacity(REPORT_BATCH));
        if let Err(status) = client.report(pb::ReportBatch { reports }).await {
            // Health is advisory: a lost batch only delays an ejection.
            tracing::debug!(code = ?status.code(), "router report failed");
        }
    }
}

#[async_trait]
impl RouterService for GrpcRouter {
    async fn route(&self, req: pb::RouteRequest) -> Result<pb::RoutePlan, GwError> {
        Ok(once_more(|| {
            let (mut client, req) = (self.client.clone(), req.clone());
            async move { client.route(req).await }
        })
        .await?
        .into_inner())
    }

    async fn list_models(&self, req: pb::ModelsRequest) -> Result<pb::ModelList, GwError> {
        Ok(once_more(|| {
            let (mut client, req) = (self.client.clone(), req.clone());
            async move { client.list_models(req).await }
        })
        .await?
        .into_inner())
    }

    fn report(&self, report: pb::AttemptReport) {
        if self.reports.try_send(report).is_err() {
            tracing::debug!("router report queue full; report dropped");
        }
    }
}

/// [`AdapterService`] over gRPC.
#[derive(Clone)]
pub struct GrpcAdapter(AdapterClient<Traced>);

impl GrpcAdapter {
    /// A client for the service at the other end of `channel`.
    pub fn client(channel: Channel) -> Adapter {
        Arc::new(Self(
            AdapterClient::with_interceptor(channel, TraceInterceptor)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        ))
    }
}

/// Adds the provider time a remote adapter reported in `resp`'s headers to
/// the caller's clock ([`upstream`]); the answer itself is passed on.
fn provider_time<T>(resp: Response<T>) -> T {
    if let Some(spent) = resp
        .metadata()
        .get(upstream::HEADER)
        .and_then(|v| upstream::from_header(v.as_bytes()))
    {
        upstream::add(spent);
    }
    resp.into_inner()
}

/// Waits for a remote stream's first message. The adapter sends it as soon
/// as the provider's first piece arrives, so the wait counts as the
/// provider's time.
async fn first_message<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, Status> {
    let started = std::time::Instant::now();
    let first = stream.message().await;
    upstream::add(started.elapsed());
    first
}

#[async_trait]
impl AdapterService for GrpcAdapter {
    async fn complete(&self, req: pb::AdapterRequest) -> Result<pb::ChatResponse, GwError> {
        Ok(provider_time(self.0.clone().complete(req).await?))
    }

    async fn stream(&self, req: pb::AdapterRequest) -> Result<ChunkStream, GwError> {
        let mut stream = provider_time(self.0.clone().stream(req).await?);
        // The server sends its first message (or error) only once the provider
        // answered, so waiting for it keeps pre-first-byte errors retryable.
        let first = first_message(&mut stream).await?;
        let rest = stream.map(|item| item.map_err(GwError::from));
        Ok(match first {
            Some(first) => Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest)),
            None => Box::pin(futures_util::stream::empty()),
        })
    }

    async fn embed(&self, req: pb::AdapterEmbeddingsRequest) -> Result<pb::EmbeddingsResponse, GwError> {
        Ok(provider_time(self.0.clone().embed(req).await?))
    }

    async fn forward(&self, req: pb::ForwardRequest) -> Result<ForwardStream, GwError> {
        let mut stream = provider_time(self.0.clone().forward(req).await?);
        // As for `stream`: the first message comes once the provider answered.
        let first = first_message(&mut stream).await?;
        let rest = stream.map(|item| item.map_err(GwError::from));
        Ok(match first {
            Some(first) => Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest)),
            None => Box::pin(futures_util::stream::empty()),
        })
    }
}

/// [`MeteringService`] over gRPC: a batch is sent as one client stream.
#[derive(Clone)]
pub struct GrpcMetering(MeteringClient<Traced>);

impl GrpcMetering {
    /// A client for the service at the other end of `channel`.
    pub fn client(channel: Channel) -> Metering {
        Arc::new(Self(
            MeteringClient::with_interceptor(channel, TraceInterceptor)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        ))
    }
}

#[async_trait]
impl MeteringService for GrpcMetering {
    async fn record(&self, events: Vec<pb::UsageEvent>) -> Result<pb::RecordAck, GwError> {
        let stream = futures_util::stream::iter(events);
        Ok(self.0.clone().record(stream).await?.into_inner())
    }

    async fn get_usage(&self, query: pb::UsageQuery) -> Result<pb::UsageSummary, GwError> {
        Ok(self.0.clone().get_usage(query).await?.into_inner())
    }

    async fn query_usage(&self, req: pb::UsageQueryRequest) -> Result<pb::UsageReport, GwError> {
        Ok(self.0.clone().query_usage(req).await?.into_inner())
    }
}

// ---- gRPC servers over local implementations -----------------------------

/// Serves an [`AuthService`] over tonic.
pub struct AuthGrpcServer(pub Auth);

#[async_trait]
impl pb::auth_server::Auth for AuthGrpcServer {
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        Ok(Response::new(self.0.authenticate(req.into_inner()).await?))
    }

    async fn admin(&self, req: Request<pb::AdminCall>) -> Result<Response<pb::AdminReply>, Status> {
        Ok(Response::new(self.0.admin(req.into_inner()).await?))
    }

    async fn admit(&self, req: Request<pb::AdmitRequest>) -> Result<Response<pb::Admission>, Status> {
        Ok(Response::new(self.0.admit(req.into_inner()).await?))
    }

    async fn settle(&self, req: Request<pb::SettleRequest>) -> Result<Response<pb::SettleAck>, Status> {
        Ok(Response::new(self.0.settle(req.into_inner()).await?))
    }

    async fn get_credential(
        &self,
        req: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::ProviderCredential>, Status> {
        Ok(Response::new(self.0.get_credential(req.into_inner()).await?))
    }
}

/// Serves a [`RouterService`] over tonic.
pub struct RouterGrpcServer(pub Router);

#[async_trait]
impl pb::router_server::Router for RouterGrpcServer {
    async fn route(&self, req: Request<pb::RouteRequest>) -> Result<Response<pb::RoutePlan>, Status> {
        Ok(Response::new(self.0.route(req.into_inner()).await?))
    }

    async fn list_models(&self, req: Request<pb::ModelsRequest>) -> Result<Response<pb::ModelList>, Status> {
        Ok(Response::new(self.0.list_models(req.into_inner()).await?))
    }

    async fn report(&self, req: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        for report in req.into_inner().reports {
            self.0.report(report);
        }
        Ok(Response::new(pb::ReportAck {}))
    }
}

/// Serves an [`AdapterService`] over tonic.
pub struct AdapterGrpcServer(pub Adapter);

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::ChatChunk, Status>> + Send + 'static>>;

/// Runs one adapter call on its own provider clock and answers with the
/// figure in the [`upstream::HEADER`] response header.
async fn timed<T>(call: impl Future<Output = Result<T, GwError>>) -> Result<Response<T>, Status> {
    let (answer, spent) = upstream::measure(call).await;
    let mut resp = Response::new(answer?);
    if let Some(spent) = spent {
        resp.metadata_mut()
            .insert(upstream::HEADER, upstream::to_header(spent).into());
    }
    Ok(resp)
}

#[async_trait]
impl pb::adapter_server::Adapter for AdapterGrpcServer {
    async fn complete(&self, req: Request<pb::AdapterRequest>) -> Result<Response<pb::ChatResponse>, Status> {
        let req = req.into_inner();
        tracing::debug!(request_id = %req.request_id, "adapter serves complete");
        timed(self.0.complete(req)).await
    }

    type StreamStream = StatusStream;

    async fn stream(&self, req: Request<pb::AdapterRequest>) -> Result<Response<Self::StreamStream>, Status> {
        let req = req.into_inner();
        tracing::debug!(request_id = %req.request_id, "adapter serves stream");
        timed(async {
            let stream = self.0.stream(req).await?;
            Ok::<Self::StreamStream, GwError>(Box::pin(stream.map(|item| item.map_err(|e| e.to_status()))))
        })
        .await
    }

    async fn embed(
        &self,
        req: Request<pb::AdapterEmbeddingsRequest>,
    ) -> Result<Response<pb::EmbeddingsResponse>, Status> {
        timed(self.0.embed(req.into_inner())).await
    }

    type ForwardStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardChunk, Status>> + Send + 'static>>;

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        timed(async {
            let stream = self.0.forward(req.into_inner()).await?;
            Ok::<Self::ForwardStream, GwError>(Box::pin(stream.map(|item| item.map_err(|e| e.to_status()))))
        })
        .await
    }
}

/// Serves a [`MeteringService`] over tonic; each client stream is one batch.
pub struct MeteringGrpcServer(pub Metering);

/// Events decoded per `record` call before they are written; bounds memory
/// for an endless client stream.
const RECORD_CHUNK: usize = 512;

#[async_trait]
impl pb::metering_server::Metering for MeteringGrpcServer {
    async fn record(
        &self,
        req: Request<tonic::Streaming<pb::UsageEvent>>,
    ) -> Result<Response<pb::RecordAck>, Status> {
        let mut stream = req.into_inner();
        let mut total = pb::RecordAck::default();
        let mut batch = Vec::new();
        while let Some(event) = stream.message().await? {
            batch.push(event);
            if batch.len() >= RECORD_CHUNK {
                let ack = self.0.record(std::mem::take(&mut batch)).await?;
                total.accepted += ack.accepted;
                total.duplicates += ack.duplicates;
            }
        }
        if !batch.is_empty() {
            let ack = self.0.record(batch).await?;
            total.accepted += ack.accepted;
            total.duplicates += ack.duplicates;
        }
        Ok(Response::new(total))
    }

    async fn get_usage(&self, req: Request<pb::UsageQuery>) -> Result<Response<pb::UsageSummary>, Status> {
        Ok(Response::new(self.0.get_usage(req.into_inner()).await?))
    }

    async fn query_usage(
        &self,
        req: Request<pb::UsageQueryRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        Ok(Response::new(self.0.query_usage(req.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An adapter whose provider "took" `spent` on every call (as the real
    /// adapter's HTTP layer records it), and whose stream's first chunk
    /// comes `first_after` later.
    struct Timed {
        spent: Option<Duration>,
        first_after: Duration,
    }

    #[async_trait]
    impl AdapterService for Timed {
        async fn complete(&self, _: pb::AdapterRequest) -> Result<pb::ChatResponse, GwError> {
            if let Some(spent) = self.spent {
                upstream::add(spent);
            }
            Ok(pb::ChatResponse::default())
        }

        async fn stream(&self, _: pb::AdapterRequest) -> Result<ChunkStream, GwError> {
            if let Some(spent) = self.spent {
                upstream::add(spent);
            }
            let wait = self.first_after;
            Ok(Box::pin(futures_util::stream::once(async move {
                tokio::time::sleep(wait).await;
                Ok(pb::ChatChunk::default())
            })))
        }

        async fn embed(&self, _: pb::AdapterEmbeddingsRequest) -> Result<pb::EmbeddingsResponse, GwError> {
            if let Some(spent) = self.spent {
                upstream::add(spent);
            }
            Ok(pb::EmbeddingsResponse::default())
        }

        async fn forward(&self, _: pb::ForwardRequest) -> Result<ForwardStream, GwError> {
            Err(GwError::internal("not used"))
        }
    }

    /// A remote client of `adapter`, served over a real gRPC connection.
    async fn remote(adapter: Timed) -> Adapter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::adapter_server::AdapterServer::new(AdapterGrpcServer(
                    Arc::new(adapter),
                )))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        GrpcAdapter::client(crate::grpc::channel(&format!("http://{addr}")).unwrap())
    }

    #[tokio::test]
    async fn provider_time_crosses_the_grpc_hop() {
        let adapter = remote(Timed {
            spent: Some(Duration::from_millis(40)),
            first_after: Duration::from_millis(50),
        })
        .await;
        // Unary: exactly what the adapter measured; the hop itself is ours.
        let (resp, spent) = upstream::measure(adapter.complete(pb::AdapterRequest::default())).await;
        resp.unwrap();
        assert_eq!(spent, Some(Duration::from_millis(40)));
        let (resp, spent) = upstream::measure(adapter.embed(pb::AdapterEmbeddingsRequest::default())).await;
        resp.unwrap();
        assert_eq!(spent, Some(Duration::from_millis(40)));
        // A stream: the adapter's figure plus the wait for the first chunk,
        // which the adapter sends on as soon as the provider does.
        let (stream, spent) = upstream::measure(adapter.stream(pb::AdapterRequest::default())).await;
        assert_eq!(stream.unwrap().count().await, 1);
        let spent = spent.unwrap();
        assert!(spent >= Duration::from_millis(90), "{spent:?}");
        assert!(spent < Duration::from_secs(5), "{spent:?}");
    }

    #[tokio::test]
    async fn an_adapter_that_measured_nothing_says_nothing() {
        let adapter = remote(Timed {
            spent: None,
            first_after: Duration::ZERO,
        })
        .await;
        let (resp, spent) = upstream::measure(adapter.complete(pb::AdapterRequest::default())).await;
        resp.unwrap();
        assert_eq!(spent, None);
    }
}

//! The error every service returns: an [`ErrorCode`] plus the structured
//! detail that crosses gRPC as `tonic::Status` details. The code alone decides
//! the HTTP status and the `tonic::Code`; metric labels come from
//! [`ErrorCode::as_str_name`], never from the message.

use std::fmt;

pub use llmgw_proto::{ErrorCode, ErrorDetail};
use prost::Message as _;

/// A service error. Boxed so `Result<T, GwError>` stays one pointer wide.
#[derive(Clone, PartialEq)]
pub struct GwError(Box<ErrorDetail>);

impl GwError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = matches!(
            code,
            ErrorCode::UpstreamError
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamRateLimited
                | ErrorCode::Unavailable
        );
        Self(Box::new(ErrorDetail {
            code: code as i32,
            message: message.into(),
            retryable,
            ..ErrorDetail::default()
        }))
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message).with_param(param)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.0.param = Some(param.into());
        self
    }

    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.0.provider = Some(provider.into());
        self
    }

    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.0.upstream_status = Some(u32::from(status));
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.0.retry_after_secs = Some(secs);
        self
    }

    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.0.retryable = retryable;
        self
    }

    pub fn code(&self) -> ErrorCode {
        ErrorCode::try_from(self.0.code).unwrap_or(ErrorCode::Internal)
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn param(&self) -> Option<&str> {
        self.0.param.as_deref()
    }

    pub fn provider(&self) -> Option<&str> {
        self.0.provider.as_deref()
    }

    pub fn retryable(&self) -> bool {
        self.0.retryable
    }

    pub fn upstream_status(&self) -> Option<u16> {
        self.0.upstream_status.and_then(|s| u16::try_from(s).ok())
    }

    pub fn retry_after_secs(&self) -> Option<u32> {
        self.0.retry_after_secs
    }

    pub fn detail(&self) -> &ErrorDetail {
        &self.0
    }

    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            ErrorCode::UpstreamRejected => match self.upstream_status() {
                // A provider's auth failure is the gateway's misconfiguration,
                // not the caller's: never answer 401/403 for it.
                Some(401 | 403) => 502,
                Some(s @ 400..=499) => s,
                _ => 400,
            },
            code => code_http_status(code),
        }
    }

    /// Encodes this error as a `tonic::Status` with the detail attached.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::with_details(
            code_grpc(self.code()),
            self.0.message.clone(),
            self.0.encode_to_vec().into(),
        )
    }

    /// Decodes a `tonic::Status`; one without our detail (a transport failure,
    /// a foreign server) is classified by its gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Ok(detail) = ErrorDetail::decode(status.details())
            && detail.code != ErrorCode::Unspecified as i32
        {
            return Self(Box::new(detail));
        }
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidRequest,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::ResourceExhausted => ErrorCode::RateLimited,
            tonic::Code::DeadlineExceeded => ErrorCode::UpstreamTimeout,
            tonic::Code::Unavailable | tonic::Code::Cancelled => ErrorCode::Unavailable,
            _ => {
                // A failure of the call itself (transport, protocol): worth
                // its whole cause in the log.
                let mut cause = String::new();
                let mut source = std::error::Error::source(status);
                while let Some(e) = source {
                    cause.push_str(": ");
                    cause.push_str(&e.to_string());
                    source = e.source();
                }
                tracing::warn!(code = ?status.code(), message = status.message(), cause, "internal call failed");
                ErrorCode::Internal
            }
        };
        Self::new(code, status.message())
    }
}

/// The error code's name as an OpenAI-style snake_case code: the `code`
/// of the error JSON, and `error.type` on spans.
pub fn error_type(e: &GwError) -> &'static str {
    match e.code() {
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::Unauthenticated => "invalid_api_key",
        ErrorCode::BudgetExceeded => "budget_exceeded",
        ErrorCode::PermissionDenied => "permission_denied",
        ErrorCode::NotFound => "not_found",
        ErrorCode::ModelNotFound => "model_not_found",
        ErrorCode::PayloadTooLarge => "payload_too_large",
        ErrorCode::UnsupportedMediaType => "unsupported_media_type",
        ErrorCode::RateLimited => "rate_limit_exceeded",
        ErrorCode::UpstreamRejected => "upstream_rejected",
        ErrorCode::UpstreamError => "upstream_error",
        ErrorCode::UpstreamTimeout => "upstream_timeout",
        ErrorCode::Unavailable => "service_unavailable",
        ErrorCode::Internal | ErrorCode::Unspecified => "internal_error",
        ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
        ErrorCode::MethodNotAllowed => "method_not_allowed",
        ErrorCode::ContextLengthExceeded => "context_length_exceeded",
    }
}

/// HTTP status of a code.
pub fn code_http_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::InvalidRequest | ErrorCode::UpstreamRejected | ErrorCode::ContextLengthExceeded => 400,
        ErrorCode::Unauthenticated => 401,
        ErrorCode::BudgetExceeded => 402,
        ErrorCode::PermissionDenied => 403,
        ErrorCode::NotFound | ErrorCode::ModelNotFound => 404,
        ErrorCode::MethodNotAllowed => 405,
        ErrorCode::PayloadTooLarge => 413,
        ErrorCode::UnsupportedMediaType => 415,
        ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => 429,
        ErrorCode::UpstreamError => 502,
        ErrorCode::Unavailable => 503,
        ErrorCode::UpstreamTimeout => 504,
        ErrorCode::Internal | ErrorCode::Unspecified => 500,
    }
}

/// gRPC code of a code.
pub fn code_grpc(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::PayloadTooLarge
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::MethodNotAllowed => tonic::Code::InvalidArgument,
        ErrorCode::UpstreamRejected | ErrorCode::ContextLengthExceeded => tonic::Code::FailedPrecondition,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::BudgetExceeded | ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => {
            tonic::Code::ResourceExhausted
        }
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::NotFound | ErrorCode::ModelNotFound => tonic::Code::NotFound,
        ErrorCode::UpstreamError | ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::UpstreamTimeout => tonic::Code::DeadlineExceeded,
        ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
    }
}

impl fmt::Debug for GwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GwError")
            .field("code", &self.code().as_str_name())
            .field("message", &self.0.message)
            .field("param", &self.0.param)
            .field("provider", &self.0.provider)
            .field("upstream_status", &self.0.upstream_status)
            .finish()
    }
}

impl fmt::Display for GwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for GwError {}

impl From<tonic::Status> for GwError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

impl From<GwError> for tonic::Status {
    fn from(err: GwError) -> Self {
        err.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_survives_a_status_round_trip() {
        let err = GwError::new(ErrorCode::UpstreamError, "provider emu: boom")
            .with_provider("emu")
            .with_upstream_status(500)
            .with_param("model");
        let back = GwError::from_status(&err.to_status());
        assert_eq!(back, err);
        assert_eq!(back.http_status(), 502);
        assert!(back.retryable());
    }

    #[test]
    fn foreign_status_is_classified_by_code() {
        let back = GwError::from_status(&tonic::Status::unavailable("connection refused"));
        assert_eq!(back.code(), ErrorCode::Unavailable);
        assert_eq!(back.http_status(), 503);
    }

    #[test]
    fn upstream_rejection_keeps_its_status_but_never_401() {
        let e = GwError::new(ErrorCode::UpstreamRejected, "x").with_upstream_status(422);
        assert_eq!(e.http_status(), 422);
        let e = GwError::new(ErrorCode::UpstreamRejected, "x").with_upstream_status(401);
        assert_eq!(e.http_status(), 502);
    }

    #[test]
    fn every_code_has_a_status() {
        for code in 0..=17 {
            let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::Internal);
            let s = code_http_status(code);
            assert!((400..600).contains(&s), "{code:?} -> {s}");
        }
    }
}

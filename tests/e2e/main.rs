//! End-to-end tests: the real `llmgw` binary as real processes (one process,
//! and five processes talking gRPC), a provider emulator, and real clients
//! (HTTP, tonic gRPC, HTTP/1.1 gRPC-Web). One test binary for the crate.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step is a failed test"
)]

mod harness;

mod admin;
mod budgets;
mod byok;
mod cache;
mod chat;
mod consul;
mod embeddings;
mod errors;
mod grpc;
mod health;
mod hostile;
mod imagen;
mod limits;
mod messages;
mod metering;
mod metrics;
mod provider_anthropic;
mod provider_bedrock;
mod provider_gemini;
mod provider_misc;
mod routing;
mod secrets;
mod soak;
mod surface;
mod tracing;
mod usage;

//! End-to-end tests: the real `llmgw` binary as real processes (one process,
//! and five processes talking gRPC), a provider emulator, and real clients
//! (HTTP, tonic gRPC, HTTP/1.1 gRPC-Web). One test binary for the crate.

mod harness;

mod chat;
mod errors;
mod grpc;

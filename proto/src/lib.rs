//! llmgw's protobuf contracts (`proto/llmgw/v1/*.proto`) and the tonic code
//! generated from them at build time.

/// Everything in package `llmgw.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("llmgw.v1");
}

/// The encoded `FileDescriptorSet` of every llmgw proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("llmgw_descriptor");

pub use v1::*;

/// Names only: the settings and secrets stay out of every log and message.
impl std::fmt::Debug for v1::ProviderCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderCredential")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("type", &self.r#type)
            .finish_non_exhaustive()
    }
}

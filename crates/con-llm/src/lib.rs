//! Model calls for con.
//!
//! [`chat`] is the provider-neutral schema the runner speaks and the daemon
//! records (as JSON blobs): what an agent asked and what the model answered,
//! independent of which provider's wire format carried it. [`openai`] and
//! [`anthropic`] translate it to and from the two wire formats (pure
//! functions); [`LlmClient`] sends it to an [`Endpoint`] over HTTP with a
//! per-attempt timeout and retries; [`Price`] turns [`Usage`] into spend.
//!
//! Only the daemon (the LLM gateway) calls models: it holds the API keys,
//! which live in [`Secret`]s that never print. Over plain HTTP to this
//! host a call goes only to a listener owned by root or a user the
//! endpoint's [`LoopbackTrust`] names (`loopback`), so an agent holding a
//! local model server's port gets neither the key nor the conversation.

pub mod anthropic;
pub mod chat;
mod client;
mod endpoint;
mod error;
mod loopback;
pub mod openai;
mod price;
#[cfg(test)]
mod test_support;

pub use chat::{
    ChatReply, ChatRequest, Message, StopReason, ToolCallRequest, ToolOutcome, ToolSpec, Usage,
};
pub use client::{CallOutcome, LlmClient};
pub use endpoint::{Endpoint, ProviderKind, Secret, default_base_url};
pub use error::LlmError;
pub use loopback::LoopbackTrust;
pub use price::Price;

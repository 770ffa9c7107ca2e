//! Model calls for con.
//!
//! [`chat`] is the provider-neutral schema the runner speaks and the daemon
//! records (as JSON blobs): what an agent asked and what the model answered,
//! independent of which provider's wire format carried it.

pub mod chat;

pub use chat::{ChatReply, ChatRequest, Message, StopReason, ToolCallRequest, ToolOutcome, ToolSpec, Usage};

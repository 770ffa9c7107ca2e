//! Why a model call failed.

use std::time::Duration;

/// Why a model call failed; every message is one line and never contains
/// the API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a non-success HTTP status.
    #[error("provider answered HTTP {status}: {excerpt}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the response body, on one line.
        excerpt: String,
    },
    /// No complete answer within the per-attempt timeout.
    #[error("no answer within {} ms (per-attempt timeout)", .after.as_millis())]
    Timeout {
        /// The per-attempt timeout that expired.
        after: Duration,
    },
    /// The request could not be sent or the answer not received
    /// (connection refused or reset, DNS, TLS, closed early).
    #[error("cannot reach {url}: {detail}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong, from the transport's error chain.
        detail: String,
    },
    /// Nothing listens where a plain-HTTP request to this host would go, so
    /// nothing was sent (see `loopback`): retried, since a local server
    /// may be starting.
    #[error(
        "refused to send to {url}: nothing listens on {addr} (port {}); over plain HTTP on this host con sends only to a listener owned by root or a user in [gateway] loopback_server_users",
        .addr.port()
    )]
    NoListener {
        /// The URL that would have been called.
        url: String,
        /// Where it would have connected.
        addr: std::net::SocketAddr,
    },
    /// A plain-HTTP request to this host would reach a listener owned by a
    /// uid that is not trusted (or its owner cannot be told), so nothing
    /// was sent.
    #[error("refused to send to {url}: {detail}")]
    Untrusted {
        /// The URL that would have been called.
        url: String,
        /// Whose listener it is (uid, user, address and port), or why that
        /// is unknown.
        detail: String,
    },
    /// A success status, but the body is not the expected wire format.
    #[error("unreadable {format} response: {detail}")]
    Decode {
        /// Which wire format was expected (`openai` or `anthropic`).
        format: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A success status whose body is an error object.
    #[error("provider reported an error: {message}")]
    Provider {
        /// The provider's message.
        message: String,
    },
    /// The endpoint cannot be used (missing base URL, empty model…).
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// The HTTP client could not be set up (TLS roots, resolver).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The caller stopped waiting (the daemon is shutting down): the
    /// request may have been processed and billed, the answer is lost.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl LlmError {
    /// A provider's error object (its `message`, or the whole object when
    /// it has none) as a one-line [`LlmError::Provider`].
    pub(crate) fn provider(error: &serde_json::Value) -> Self {
        let message = error
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        LlmError::Provider {
            message: crate::client::one_line(&message, 300),
        }
    }

    /// Whether another attempt may succeed: timeouts, transport failures,
    /// 429 and 5xx. Other 4xx, undecodable bodies and endpoint errors will
    /// not get better by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            LlmError::Timeout { .. } | LlmError::Transport { .. } | LlmError::NoListener { .. } => {
                true
            }
            LlmError::Decode { .. }
            | LlmError::Provider { .. }
            | LlmError::Untrusted { .. }
            | LlmError::Endpoint(_)
            | LlmError::Client(_)
            | LlmError::Interrupted(_) => false,
        }
    }
}

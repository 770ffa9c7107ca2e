//! Where and how to call a model: provider kind, URL, model, key, retry policy.

use std::fmt;
use std::time::Duration;

use con_config::Provider;

use crate::error::LlmError;
use crate::loopback::LoopbackTrust;

/// Which wire format an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI Chat Completions (OpenRouter, OpenAI, local servers).
    OpenAiCompatible,
    /// Anthropic Messages API.
    Anthropic,
}

impl ProviderKind {
    /// The wire format a configured provider speaks.
    pub fn for_provider(provider: Provider) -> ProviderKind {
        match provider {
            Provider::Anthropic => ProviderKind::Anthropic,
            Provider::OpenRouter | Provider::OpenAi | Provider::OpenAiCompatible => {
                ProviderKind::OpenAiCompatible
            }
        }
    }

    /// Short name used in error messages (`openai` or `anthropic`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// The base URL a configured provider uses when `base_url` is not set;
/// `None` for `openai-compatible`, which has no default server.
pub fn default_base_url(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::OpenRouter => Some("https://openrouter.ai/api/v1"),
        Provider::OpenAi => Some("https://api.openai.com/v1"),
        Provider::Anthropic => Some("https://api.anthropic.com"),
        Provider::OpenAiCompatible => None,
    }
}

/// An API key. Its `Debug` and `Display` never show it, so an [`Endpoint`]
/// can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Secret {
        Secret(key.into())
    }

    /// The key itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(key: String) -> Secret {
        Secret(key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything needed to call one model: wire format, server, model, key,
/// and the retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// Wire format.
    pub kind: ProviderKind,
    /// Base URL: `…/v1` for OpenAI-compatible servers (the client appends
    /// `/chat/completions`); the host for Anthropic (the client appends
    /// `/v1/messages`, or just `/messages` if the base already ends in `/v1`).
    pub base_url: String,
    /// Model id as the provider spells it.
    pub model: String,
    /// API key; no auth header is sent without one.
    pub api_key: Option<Secret>,
    /// Limit on one attempt, from sending the request to the end of the body.
    pub timeout: Duration,
    /// Attempts in total (at least one is always made).
    pub max_attempts: u32,
    /// First backoff delay; doubles each retry, with jitter.
    pub backoff_base: Duration,
    /// Longest wait between attempts, including one asked for by `Retry-After`.
    pub backoff_cap: Duration,
    /// Output token cap sent to Anthropic (which requires one) when the
    /// request has none.
    pub max_tokens: u32,
    /// Who, besides root and the client's own uid, may receive this
    /// endpoint's requests when they go in plain HTTP to this host.
    pub loopback_trust: LoopbackTrust,
}

impl Endpoint {
    /// Default per-attempt timeout: long answers with big contexts take minutes.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
    /// Default number of attempts.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
    /// Default first backoff delay.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
    /// Default longest wait between attempts.
    pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
    /// Default Anthropic `max_tokens`.
    pub const DEFAULT_MAX_TOKENS: u32 = 4096;

    /// An endpoint with no key and the default timeout and retry policy.
    pub fn new(
        kind: ProviderKind,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Endpoint {
        Endpoint {
            kind,
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Endpoint::DEFAULT_TIMEOUT,
            max_attempts: Endpoint::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Endpoint::DEFAULT_BACKOFF_BASE,
            backoff_cap: Endpoint::DEFAULT_BACKOFF_CAP,
            max_tokens: Endpoint::DEFAULT_MAX_TOKENS,
            loopback_trust: LoopbackTrust::default(),
        }
    }

    /// The endpoint for a configured provider: its wire format, `base_url`
    /// or the provider's default server, and defaults for the rest.
    pub fn for_provider(
        provider: Provider,
        model: &str,
        base_url: Option<&str>,
        api_key: Option<Secret>,
    ) -> Result<Endpoint, LlmError> {
        if model.trim().is_empty() {
            return Err(LlmError::Endpoint(format!(
                "provider {provider} needs a model"
            )));
        }
        let base_url = base_url
            .or_else(|| default_base_url(provider))
            .ok_or_else(|| LlmError::Endpoint(format!("provider {provider} needs a base_url")))?;
        Ok(Endpoint {
            api_key,
            ..Endpoint::new(ProviderKind::for_provider(provider), base_url, model)
        })
    }

    /// The same endpoint with this key.
    #[must_use]
    pub fn with_api_key(mut self, key: Secret) -> Endpoint {
        self.api_key = Some(key);
        self
    }

    /// The URL requests are POSTed to.
    pub fn url(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        match self.kind {
            ProviderKind::OpenAiCompatible => format!("{base}/chat/completions"),
            ProviderKind::Anthropic if base.ends_with("/v1") => format!("{base}/messages"),
            ProviderKind::Anthropic => format!("{base}/v1/messages"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_map_to_formats_and_servers() {
        let cases = [
            (
                "openrouter",
                ProviderKind::OpenAiCompatible,
                "https://openrouter.ai/api/v1/chat/completions",
            ),
            (
                "openai",
                ProviderKind::OpenAiCompatible,
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "anthropic",
                ProviderKind::Anthropic,
                "https://api.anthropic.com/v1/messages",
            ),
        ];
        for (name, kind, url) in cases {
            let p: Provider = name.parse().unwrap();
            let e = Endpoint::for_provider(p, "m", None, None).unwrap();
            assert_eq!((e.kind, e.url().as_str()), (kind, url), "{name}");
        }
    }

    #[test]
    fn openai_compatible_needs_a_base_url() {
        let err = Endpoint::for_provider(Provider::OpenAiCompatible, "m", None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid endpoint: provider openai-compatible needs a base_url"
        );
        let e = Endpoint::for_provider(
            Provider::OpenAiCompatible,
            "llama",
            Some("http://127.0.0.1:8080/v1/"),
            None,
        )
        .unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:8080/v1/chat/completions");
    }

    #[test]
    fn empty_model_is_refused() {
        assert!(Endpoint::for_provider(Provider::OpenRouter, " ", None, None).is_err());
    }

    #[test]
    fn anthropic_base_may_include_v1() {
        let e = Endpoint::new(ProviderKind::Anthropic, "http://127.0.0.1:9/v1", "c");
        assert_eq!(e.url(), "http://127.0.0.1:9/v1/messages");
    }

    #[test]
    fn debug_and_display_hide_the_key() {
        let e = Endpoint::new(ProviderKind::Anthropic, "http://x", "c")
            .with_api_key(Secret::new("sk-ant-very-secret"));
        let shown = format!(
            "{e:?} {} {:?}",
            Secret::new("sk-ant-very-secret"),
            e.api_key
        );
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

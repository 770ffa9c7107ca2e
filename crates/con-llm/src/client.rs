//! The HTTP client: one call, with per-attempt timeout and retries.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::chat::{ChatReply, ChatRequest};
use crate::endpoint::{Endpoint, ProviderKind};
use crate::error::LlmError;
use crate::{anthropic, loopback, openai};

/// How much of an error body an [`LlmError::Status`] keeps.
const EXCERPT_CHARS: usize = 300;

/// What one [`LlmClient::call`] did, for the record.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOutcome {
    /// The reply, or why there is none (the last attempt's error).
    pub result: Result<ChatReply, LlmError>,
    /// Attempts made (at least 1).
    pub attempts: u32,
    /// HTTP status of the last attempt, if it got one.
    pub status: Option<u16>,
    /// Time from the first request to the outcome, waits included.
    pub latency: Duration,
}

/// Calls models over HTTP. Cheap to clone; clones share a connection pool.
#[derive(Clone, Debug)]
pub struct LlmClient {
    http: reqwest::Client,
}

impl LlmClient {
    /// A client with its own connection pool.
    pub fn new() -> Result<LlmClient, LlmError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("con/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Client(chain(&e)))?;
        Ok(LlmClient { http })
    }

    /// Sends `request` to `endpoint`, retrying 429, 5xx, transport errors
    /// and timeouts up to `endpoint.max_attempts` times. A request that
    /// would go in plain HTTP to a listener on this host that
    /// `endpoint.loopback_trust` does not cover is not sent at all. Between attempts it
    /// waits what `Retry-After` asks, or an exponential backoff with jitter,
    /// never longer than `endpoint.backoff_cap`.
    pub async fn call(&self, endpoint: &Endpoint, request: &ChatRequest) -> CallOutcome {
        let started = Instant::now();
        let body = match endpoint.kind {
            ProviderKind::OpenAiCompatible => openai::encode_request(&endpoint.model, request),
            ProviderKind::Anthropic => {
                anthropic::encode_request(&endpoint.model, endpoint.max_tokens, request)
            }
        };
        let url = endpoint.url();
        let max_attempts = endpoint.max_attempts.max(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.attempt(endpoint, &url, &body).await;
            let retry = match &attempt.result {
                Err(e) if e.is_retryable() && attempts < max_attempts => {
                    Some(attempt.retry_after.map_or_else(
                        || backoff(endpoint, attempts),
                        |d| d.min(endpoint.backoff_cap),
                    ))
                }
                _ => None,
            };
            let Some(wait) = retry else {
                return CallOutcome {
                    result: attempt.result,
                    attempts,
                    status: attempt.status,
                    latency: started.elapsed(),
                };
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, url: &str, body: &Value) -> Attempt {
        // Every attempt, right before it is sent: the listener may have
        // changed hands since the last one.
        if let Err(refused) = loopback::check(url, &endpoint.loopback_trust).await {
            return Attempt::failed(refused, None, None);
        }
        let mut builder = self.http.post(url).timeout(endpoint.timeout).json(body);
        builder = match (endpoint.kind, &endpoint.api_key) {
            (ProviderKind::OpenAiCompatible, Some(key)) => builder.bearer_auth(key.expose()),
            (ProviderKind::OpenAiCompatible, None) => builder,
            (ProviderKind::Anthropic, key) => {
                let b = builder.header("anthropic-version", anthropic::API_VERSION);
                match key {
                    Some(key) => b.header("x-api-key", key.expose()),
                    None => b,
                }
            }
        };
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                LlmError::Timeout {
                    after: endpoint.timeout,
                }
            } else {
                LlmError::Transport {
                    url: url.to_owned(),
                    detail: chain(&e),
                }
            }
        };
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::failed(transport(e), None, None),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::failed(transport(e), Some(status), retry_after),
        };
        if !(200..=299).contains(&status) {
            let mut body = String::from_utf8_lossy(&bytes).into_owned();
            if let Some(key) = endpoint.api_key.as_ref().filter(|k| !k.expose().is_empty()) {
                // Some providers echo (part of) a rejected key. Redact
                // before cutting, so a cut cannot leave half a key behind.
                body = body.replace(key.expose(), "<redacted>");
            }
            let excerpt = one_line(&body, EXCERPT_CHARS);
            return Attempt::failed(
                LlmError::Status { status, excerpt },
                Some(status),
                retry_after,
            );
        }
        let result = serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| LlmError::Decode {
                format: endpoint.kind.as_str(),
                detail: e.to_string(),
            })
            .and_then(|v| match endpoint.kind {
                ProviderKind::OpenAiCompatible => openai::decode_reply(&v),
                ProviderKind::Anthropic => anthropic::decode_reply(&v),
            });
        Attempt {
            result,
            status: Some(status),
            retry_after: None,
        }
    }
}

struct Attempt {
    result: Result<ChatReply, LlmError>,
    status: Option<u16>,
    retry_after: Option<Duration>,
}

impl Attempt {
    fn failed(error: LlmError, status: Option<u16>, retry_after: Option<Duration>) -> Attempt {
        Attempt {
            result: Err(error),
            status,
            retry_after,
        }
    }
}

/// Exponential backoff with "equal jitter": half the delay is fixed, half
/// random, so many clients do not retry in lockstep yet none retries at once.
fn backoff(endpoint: &Endpoint, failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(30);
    let full = endpoint
        .backoff_base
        .saturating_mul(1 << doublings)
        .min(endpoint.backoff_cap);
    let half = full / 2;
    let jitter_ns = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=jitter_ns))
}

/// `Retry-After` as delay-seconds or an HTTP-date; `None` if absent or unreadable.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Not in RFC 9110, but sent by some servers: fractional seconds.
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `text` on one line (whitespace runs collapsed), at most `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// An error and its sources, on one line ("error sending request: connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    one_line(&text, EXCERPT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&headers("0.5")),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = retry_after(&headers(&later)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(120));
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_cap() {
        let mut e = Endpoint::new(ProviderKind::OpenAiCompatible, "http://x", "m");
        e.backoff_base = Duration::from_millis(100);
        e.backoff_cap = Duration::from_millis(1000);
        for _ in 0..50 {
            let first = backoff(&e, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&e, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(&e, 40) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn one_line_collapses_and_truncates() {
        assert_eq!(one_line("a\n  b\tc ", 10), "a b c");
        assert_eq!(one_line("ééééé", 3), "ééé…");
    }
}

//! The HTTP server: one thread, one current-thread Tokio runtime, hyper.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use crate::REQUESTS_PATH;
use crate::step::Step;
use crate::wire::{WireFormat, error_body, reply_body};

/// One request the server received, as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub path: String,
    /// Wire format the path speaks; `None` for paths the server does not serve.
    pub format: Option<WireFormat>,
    /// Headers by lower-cased name (repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, or a JSON string holding the raw text if it was not JSON.
    pub body: Value,
    /// When the request arrived.
    pub received_at: SystemTime,
}

impl RecordedRequest {
    /// A header's value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    steps: Mutex<VecDeque<Step>>,
    requests: Mutex<Vec<RecordedRequest>>,
    steps_served: AtomicU64,
    tool_ids: AtomicU64,
}

// A panicking test thread must not make every later call on the server panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running scripted LLM server; stops when dropped.
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ScriptedServer {
    /// Starts a server on `127.0.0.1` (random port) playing `steps` in order.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound or no thread started — test support
    /// has nothing better to do then; use [`ScriptedServer::try_start`] to
    /// handle it.
    pub fn start(steps: Vec<Step>) -> ScriptedServer {
        match ScriptedServer::try_start(SocketAddr::from(([127, 0, 0, 1], 0)), steps) {
            Ok(server) => server,
            Err(e) => panic!("con-llm-script: cannot start on 127.0.0.1: {e}"),
        }
    }

    /// Starts a server on `listen` playing `steps` in order.
    pub fn try_start(listen: SocketAddr, steps: Vec<Step>) -> std::io::Result<ScriptedServer> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared {
            steps: Mutex::new(steps.into()),
            ..Shared::default()
        });
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("con-llm-script".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || runtime.block_on(accept_loop(listener, shared, stop))
            })?;
        Ok(ScriptedServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends a step to the script.
    pub fn push(&self, step: Step) {
        lock(&self.shared.steps).push_back(step);
    }

    /// Steps not yet played.
    pub fn remaining(&self) -> usize {
        lock(&self.shared.steps).len()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the thread already ended.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread was already printed; re-raising
            // it from a destructor could abort the test process.
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // EMFILE and friends: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
        }
    }
    // Returning drops the runtime's tasks: open connections are closed.
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // A `disconnect` step fires this; dropping the connection future then
    // closes the socket without an answer.
    let hangup = Arc::new(Notify::new());
    let service = service_fn({
        let hangup = Arc::clone(&hangup);
        move |req| handle(req, Arc::clone(&shared), Arc::clone(&hangup))
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = hangup.notified() => {}
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    hangup: Arc<Notify>,
) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let bytes = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                format!("unreadable body: {e}"),
            ));
        }
    };

    if method == Method::GET && path == REQUESTS_PATH {
        let list = serde_json::to_vec(&*lock(&shared.requests)).unwrap_or_default();
        return Ok(json_response(StatusCode::OK, list.into()));
    }

    let format = WireFormat::for_path(&path);
    let parsed = serde_json::from_slice::<Value>(&bytes);
    let body = match &parsed {
        Ok(v) => v.clone(),
        Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted")
        .to_owned();
    lock(&shared.requests).push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        format,
        headers,
        body,
        received_at: SystemTime::now(),
    });

    let Some(format) = format.filter(|_| method == Method::POST) else {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            format!(
                "con-llm-script serves POST …/chat/completions and …/messages, not {method} {path}"
            ),
        ));
    };
    if let Err(e) = parsed {
        return Ok(provider_error(
            format,
            StatusCode::BAD_REQUEST,
            &format!("request body is not JSON: {e}"),
        ));
    }

    let Some(step) = lock(&shared.steps).pop_front() else {
        let served = shared.steps_served.load(Ordering::SeqCst);
        return Ok(provider_error(
            format,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "con-llm-script: script exhausted after {served} steps; {method} {path} was not scripted"
            ),
        ));
    };
    let n = shared.steps_served.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(step.delay()).await;

    Ok(match step {
        Step::Reply(reply) => {
            let mut next_id = || shared.tool_ids.fetch_add(1, Ordering::SeqCst) + 1;
            let body = reply_body(format, &reply, &model, n, &mut next_id);
            json_response(StatusCode::OK, body.to_string().into())
        }
        Step::Error(error) => {
            let Ok(status) = StatusCode::from_u16(error.status) else {
                return Ok(plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "con-llm-script: step {n} has invalid HTTP status {}",
                        error.status
                    ),
                ));
            };
            let mut response = match error.body {
                Some(body) => {
                    let is_json = serde_json::from_str::<Value>(&body).is_ok();
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(if is_json {
                            "application/json"
                        } else {
                            "text/plain; charset=utf-8"
                        }),
                    );
                    r
                }
                None => provider_error(
                    format,
                    status,
                    &format!("scripted {} (step {n})", error.status),
                ),
            };
            *response.status_mut() = status;
            if let Some(value) = error.retry_after {
                match HeaderValue::from_str(&value) {
                    Ok(v) => {
                        response.headers_mut().insert(RETRY_AFTER, v);
                    }
                    Err(_) => {
                        return Ok(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!(
                                "con-llm-script: step {n} has an invalid retry_after {value:?}"
                            ),
                        ));
                    }
                }
            }
            response
        }
        Step::Disconnect(_) => {
            hangup.notify_one();
            return std::future::pending().await;
        }
    })
}

fn provider_error(format: WireFormat, status: StatusCode, message: &str) -> Reply {
    let body = error_body(format, status.as_u16(), message).to_string();
    json_response(status, body.into())
}

fn json_response(status: StatusCode, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn plain(status: StatusCode, text: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

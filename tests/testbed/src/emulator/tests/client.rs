//! A minimal HTTP/1.1 test client for the emulator (hyper-util legacy client). It only
//! ever talks to the emulator's loopback URL it is given.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct TestClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl TestClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, method: Method, path: &str, content_type: &str, body: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .header("user-agent", "emulator-test/1.0")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply { status, body }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a prepared request and decodes the JSON body.
    pub async fn raw(&self, request: Request<Full<Bytes>>) -> Value {
        let response = self.http.request(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, "", "").await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, "application/json", &body.to_string())
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, "application/json", &body.to_string())
            .await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: &str) -> Reply {
        self.send(Method::PATCH, path, content_type, body).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, "", "").await
    }

    /// Opens a watch and returns a line reader over its body.
    pub async fn watch(&self, path: &str) -> WatchStream {
        let request = Request::builder()
            .uri(format!("{}{}", self.base, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "watch {path}");
        WatchStream {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }
}

pub struct WatchStream {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// The next event, or None when the server ended the stream. Waits generously.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout(std::time::Duration::from_secs(30), self.body.frame())
                .await
                .expect("watch produced nothing for 30s");
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self) -> Option<Value> {
        loop {
            let event = self.next().await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }
}

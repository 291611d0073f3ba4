//! The fault-injecting proxy (`dynastream-fault-proxy`, tools/fault_proxy)
//! as the tests drive it: started in front of this test binary's DynamoDB
//! Local, rules added and removed through its control endpoint.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::dynamodb_local;

/// A running `dynastream-fault-proxy` in front of this binary's DynamoDB
/// Local; killed on drop.
pub struct Proxy {
    child: Child,
    /// The proxy's URL, for `endpoint_url` / `AWS_ENDPOINT_URL`.
    pub url: String,
    /// The control endpoint's URL.
    pub control: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    pub fn start() -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dynastream-fault-proxy"))
            .args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(["--upstream", &dynamodb_local().endpoint])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dynastream-fault-proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout piped"))
            .read_line(&mut line)
            .expect("read the proxy's start line");
        let start: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("start line is not JSON ({e}): {line:?}"));
        Proxy {
            child,
            url: start["proxy"].as_str().expect("proxy URL").to_owned(),
            control: start["control"].as_str().expect("control URL").to_owned(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.control))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = self.http.request(request).await.expect("control call");
        let status = answer.status();
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("control answers JSON")
        };
        (status, value)
    }

    pub async fn rule(&self, rule: Value) -> u64 {
        let (status, answer) = self.call(Method::POST, "/rules", Some(rule.clone())).await;
        assert_eq!(status, StatusCode::CREATED, "rule {rule} refused: {answer}");
        answer["id"].as_u64().expect("an id")
    }

    pub async fn remove(&self, id: u64) {
        let (status, _) = self
            .call(Method::DELETE, &format!("/rules/{id}"), None)
            .await;
        assert!(
            status == StatusCode::NO_CONTENT || status == StatusCode::NOT_FOUND,
            "remove rule {id}: {status}"
        );
    }

    pub async fn clear(&self) {
        let (status, _) = self.call(Method::DELETE, "/rules", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    pub async fn stats(&self) -> Value {
        self.call(Method::GET, "/stats", None).await.1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

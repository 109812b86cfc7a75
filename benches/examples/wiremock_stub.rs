//! A wiremock-rs server answering `POST /v1/chat/completions` with a static chat-completion
//! stub equivalent to mock-openai's reply, for benches/mock_vs_wiremock.sh. Prints its URL on
//! the first stdout line and serves until killed.

use std::io::Write as _;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() {
    let server = MockServer::builder()
        .listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .start()
        .await;
    let body = serde_json::json!({
        "id": "chatcmpl-0000000000000000000000000000",
        "object": "chat.completion",
        "created": 1_767_225_600u64,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "{\"tags\":[\"cat\",\"sky\",\"tree\"]}", "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 2837, "completion_tokens": 8, "total_tokens": 2845},
        "service_tier": "default",
        "system_fingerprint": null
    });
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", server.uri());
    let _ = out.flush();
    drop(out);
    std::future::pending::<()>().await;
}

//! TF Serving REST row format (`instances` -> `predictions`), as TF Serving: the outputs must agree
//! with each other on their first dimension (not with the number of instances), and that many rows
//! come back. Fixtures: tests/fixtures/rows (scripts/gen_models.py).
mod common;

use common::*;
use serde_json::{json, Value};

fn rows_repo() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/rows")
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", server.rest_addr))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_follow_the_outputs_first_dimension() {
    let server = TestServer::ready(test_config(rows_repo())).await;
    let x = json!([[1.0, 2.0], [3.0, 4.0]]);

    // One output with 3 rows for 2 instances: 3 predictions.
    let (s, v) = post(&server, "/v1/models/extra_row:predict", json!({"instances": x})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"predictions": [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]}));

    // Two outputs with 2 and 3 rows: 400 naming both.
    let (s, v) = post(&server, "/v1/models/uneven_rows:predict", json!({"instances": x})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"],
        "model 'uneven_rows' version 1: the outputs do not agree on their first dimension ('a' has 2, 'b' has 3), \
         so they cannot be returned as rows in the row format; send \"inputs\" (columnar format) instead"
    );

    // The columnar format carries them as they are.
    let (s, v) = post(&server, "/v1/models/uneven_rows:predict", json!({"inputs": x})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"outputs": {"a": [[1.0, 2.0], [3.0, 4.0]], "b": [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]}}));
    server.stop().await.unwrap();
}

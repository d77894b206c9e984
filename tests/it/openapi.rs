//! `/openapi.json` is generated from the code; `docs/openapi.json` is the committed copy
//! operators read. This test fails when they drift apart.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_in_sync() {
    let generated = custodia::api::openapi::document();
    let committed = std::fs::read_to_string(root_path("docs/openapi.json")).unwrap_or_default();
    assert!(
        committed.trim() == generated.trim(),
        "docs/openapi.json is out of date: run `cargo run -- openapi > docs/openapi.json`"
    );
    let h = Harness::start(Db::sqlite()).await;
    let served: serde_json::Value = h.client.get(h.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(served, serde_json::from_str::<serde_json::Value>(&generated).unwrap());
    for path in ["/v1/customers", "/v1/customers/{id}", "/healthz", "/readyz"] {
        assert!(served["paths"].get(path).is_some(), "{path} missing from the document");
    }
    assert_eq!(served["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

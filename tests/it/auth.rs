//! Authentication as an attacker tries it (threats §1): every forged, expired, misdirected or
//! malformed token gets 401 with `WWW-Authenticate: Bearer`, a stable code, and no echo.

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::support::*;

/// Sends `token` to a customer endpoint and asserts a 401 with `code`.
async fn assert_rejected(h: &Harness, token: &str, code: &str) {
    let r = h
        .client
        .get(h.url("/v1/customers/01900000-0000-7000-8000-000000000000"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "token accepted or wrong status, expected {code}");
    let challenge = r.headers().get("www-authenticate").expect("WWW-Authenticate").to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], code, "{body}");
    assert_eq!(v["status"], 401);
    // Nothing of the token comes back.
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!body.contains(part), "token echoed");
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// The attacker's raw Ed25519 public key (the last 32 bytes of its SPKI DER), base64url.
fn attacker_public_x() -> String {
    let pem = std::fs::read_to_string(root_path("tests/keys/attacker-ed25519.pub.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..])
}

fn example_private() -> Vec<u8> {
    std::fs::read(root_path("keys-example/jwt-ed25519.pem")).unwrap()
}

on_both! {
    async fn forged_and_misused_tokens_are_refused(h) {
        // No credentials at all, or another scheme.
        let r = h.client.get(h.url("/v1/customers/01900000-0000-7000-8000-000000000000")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"custodia\"");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "missing_token");
        let r = h.client.get(h.url("/v1/customers/x")).basic_auth("alice", Some("pw")).send().await.unwrap();
        assert_eq!(r.status(), 401);

        assert_rejected(&h, "not-a-jwt", "malformed_token").await;
        assert_rejected(&h, "a.b.c", "malformed_token").await;

        let claims = claims("mallory", json!({}));
        // alg: none, with and without a signature part.
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "at+jwt", "kid": "example"})), b64(&claims));
        assert_rejected(&h, &none, "malformed_token").await;
        // Algorithm confusion: HS256 keyed with the public key the vault trusts.
        let mut hs = example_header();
        hs.alg = Algorithm::HS256;
        let public = std::fs::read(root_path("keys-example/jwt-ed25519.pub.pem")).unwrap();
        assert_rejected(&h, &sign(&hs, claims.clone(), &public, Algorithm::HS256), "invalid_token").await;
        // Signed by a key the vault does not know, under the trusted kid.
        let attacker = std::fs::read(root_path("tests/keys/attacker-ed25519.pem")).unwrap();
        assert_rejected(&h, &sign(&example_header(), claims.clone(), &attacker, Algorithm::EdDSA), "invalid_token").await;
        // Unknown kid, and no kid.
        let mut unknown = example_header();
        unknown.kid = Some("rotated-away".into());
        assert_rejected(&h, &sign(&unknown, claims.clone(), &example_private(), Algorithm::EdDSA), "invalid_token").await;
        let mut no_kid = example_header();
        no_kid.kid = None;
        assert_rejected(&h, &sign(&no_kid, claims.clone(), &example_private(), Algorithm::EdDSA), "invalid_token").await;
        // The right key under a kid pinned to another algorithm.
        let mut wrong_alg = example_header();
        wrong_alg.kid = Some("test-es256".into());
        assert_rejected(&h, &sign(&wrong_alg, claims.clone(), &example_private(), Algorithm::EdDSA), "invalid_token").await;
        // Header injection: jku and an embedded jwk pointing at the attacker's key.
        let mut jku = example_header();
        jku.jku = Some("https://attacker.invalid/jwks.json".into());
        assert_rejected(&h, &sign(&jku, claims.clone(), &example_private(), Algorithm::EdDSA), "invalid_token").await;
        let mut jwk = example_header();
        jwk.jwk = Some(serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": attacker_public_x()})).unwrap());
        assert_rejected(&h, &sign(&jwk, claims.clone(), &attacker, Algorithm::EdDSA), "invalid_token").await;
        // A token of another kind (an ID token, typ JWT) sent as an access token.
        let mut id_token = example_header();
        id_token.typ = Some("JWT".into());
        assert_rejected(&h, &sign(&id_token, claims.clone(), &example_private(), Algorithm::EdDSA), "invalid_token").await;
        // A tampered payload under a genuine signature.
        let genuine = mint("alice");
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
        assert_rejected(&h, &tampered, "invalid_token").await;
    }

    async fn claims_are_enforced(h) {
        let now = chrono::Utc::now().timestamp();
        assert_rejected(&h, &mint_with("alice", json!({"iss": "https://evil.example"})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"aud": "billing"})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"iss": null})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"aud": null})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"sub": null})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"exp": null})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice", json!({"exp": now - 120})), "token_expired").await;
        assert_rejected(&h, &mint_with("alice", json!({"nbf": now + 300})), "invalid_token").await;
        assert_rejected(&h, &mint_with("alice bob", json!({})), "invalid_token").await;
        assert_rejected(&h, &mint_with("x", json!({"sub": "a\nINFO forged"})), "invalid_token").await;
        // Within the 30 s leeway a just-expired token still works.
        let ok = mint_with("alice", json!({"exp": now - 5}));
        let r = h.client.get(h.url("/v1/customers/01900000-0000-7000-8000-000000000000")).bearer_auth(ok).header("X-Purpose", PURPOSE).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }

    async fn es256_and_rs256_keys_work_when_configured(h) {
        h.grant("svc-billing", "account_manager", "32").await;
        for (kid, file, alg) in [("test-es256", "tests/keys/es256.pem", Algorithm::ES256), ("test-rs256", "tests/keys/rs256.pem", Algorithm::RS256)] {
            let mut header = jsonwebtoken::Header::new(alg);
            header.typ = Some("at+jwt".into());
            header.kid = Some(kid.into());
            let token = sign(&header, claims("svc-billing", json!({})), &std::fs::read(root_path(file)).unwrap(), alg);
            let r = h.client.post(h.url("/v1/customers")).bearer_auth(token).header("X-Purpose", PURPOSE).json(&individual("3201")).send().await.unwrap();
            assert_eq!(r.status(), 201, "{kid}");
        }
    }
}

/// The last 65 bytes of a P-256 SPKI DER are `04 ‖ x ‖ y`.
fn es256_public_xy() -> (String, String) {
    let pem = std::fs::read_to_string(root_path("tests/keys/es256.pub.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4);
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    (enc(&point[1..33]), enc(&point[33..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_join_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (x, y) = es256_public_xy();
    std::fs::write(&jwks, json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-2026", "use": "sig", "alg": "ES256", "x": x, "y": y}]}).to_string()).unwrap();
    let h = Harness::start_with(Db::sqlite(), |c| c.auth.jwks_file = Some(jwks.clone())).await;
    h.grant("svc-crm", "account_manager", "3201").await;
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("idp-2026".into());
    let token = sign(
        &header,
        claims("svc-crm", json!({})),
        &std::fs::read(root_path("tests/keys/es256.pem")).unwrap(),
        Algorithm::ES256,
    );
    let r = h
        .client
        .post(h.url("/v1/customers"))
        .bearer_auth(&token)
        .header("X-Purpose", PURPOSE)
        .json(&individual("3201"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The JWKS key is pinned to ES256: an HS256 token under its kid is refused.
    header.alg = Algorithm::HS256;
    let hs = sign(&header, claims("svc-crm", json!({})), x.as_bytes(), Algorithm::HS256);
    assert_rejected(&h, &hs, "invalid_token").await;
}

#[tokio::test]
async fn unsafe_token_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A symmetric key in the JWKS.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]}).to_string()).unwrap();
    let mut config = test_config(Db::sqlite().url());
    config.auth.jwks_file = Some(jwks);
    assert!(custodia::app::start(&config).await.is_err());
    // Leeway above 30 s.
    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, "[auth]\nleeway_seconds = 300\n").unwrap();
    let err = custodia::config::Config::load(Some(&toml)).unwrap_err().to_string();
    assert!(err.contains("leeway"), "{err}");
    // A PEM that does not match its declared algorithm.
    let mut config = test_config(Db::sqlite().url());
    config.auth.keys[0].algorithm = custodia::config::TokenAlgorithm::RS256;
    assert!(custodia::app::start(&config).await.is_err());
}

/// A token answered from the verified-token cache still expires on time, and revocation
/// still applies to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_still_expire_and_revoke() {
    let h = Harness::start_with(Db::sqlite(), |c| c.auth.leeway_seconds = 0).await;
    let id = h.create(individual("3201")).await;
    let short = mint_with(ALICE, json!({"exp": chrono::Utc::now().timestamp() + 2}));
    let read = |t: &str| {
        h.client.get(h.url(&format!("/v1/customers/{id}"))).bearer_auth(t).header("X-Purpose", PURPOSE).send()
    };
    assert_eq!(read(&short).await.unwrap().status(), 200);
    assert_eq!(read(&short).await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let r = read(&short).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "token_expired");
    let long = mint(ALICE);
    assert_eq!(read(&long).await.unwrap().status(), 200);
    let r =
        h.client.post(h.url("/v1/principals/alice/revoke-tokens")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read(&long).await.unwrap().status(), 401);
}

//! Encryption at rest as an attacker with database access tries it (threats §6): no
//! plaintext in the database, and ciphertext moved, replayed, flipped or truncated is refused
//! with an integrity error — never the wrong data.

use serde_json::{json, Value};

use crate::support::*;

const CANARY_NAME: &str = "金丝雀测试员";
const CANARY_MOBILE: &str = "19912345671";
const CANARY_ID: &str = "44052418800101001X";
const CANARY_EMAIL: &str = "canary.7f3a@example.cn";
const CANARY_ADDRESS: &str = "CANARY-ADDR-九龙路77号";
const CANARY_CARD: &str = "6222021234567890128";

fn canary_body() -> Value {
    json!({"region": "3201", "kind": "individual", "fields": {
        "name": CANARY_NAME, "mobile": CANARY_MOBILE, "resident_id": fix_check(CANARY_ID), "email": CANARY_EMAIL,
        "address": CANARY_ADDRESS, "birth_date": "1880-01-01", "bank_card": CANARY_CARD}})
}

/// Gives a resident ID its correct check character.
fn fix_check(id: &str) -> String {
    let first17 = &id.as_bytes()[..17];
    let check = custodia::domain::identifiers::resident_id_check_char(first17);
    format!("{}{}", &id[..17], check as char)
}

async fn assert_integrity_error(h: &Harness, id: uuid::Uuid, leaks: &[&str]) {
    let r = h.get(&format!("/v1/customers/{id}"), "alice").send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "integrity_error");
    for leak in leaks {
        assert!(!text.contains(leak), "served data despite tampering: {text}");
    }
}

on_both! {
    async fn no_plaintext_in_the_database(h) {
        let id = h.create(canary_body()).await;
        // A second write path too: the update re-seals every field.
        let r = h.patch(&format!("/v1/customers/{id}"), "alice", 1, &json!({"fields": {"email": "second.canary@example.cn"}})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let dump = h.raw_dump().await;
        assert!(dump.len() > 1000, "nothing scanned");
        let rid = fix_check(CANARY_ID);
        for canary in [CANARY_NAME, CANARY_MOBILE, rid.as_str(), CANARY_EMAIL, CANARY_ADDRESS, CANARY_CARD, "second.canary", "1880-01-01"] {
            assert!(!contains(&dump, canary.as_bytes()), "plaintext {canary} found in the database");
            assert!(!contains(&dump, hex(canary.as_bytes()).as_bytes()), "hex of {canary} found in the database");
        }
        // The canaries are really readable through the API, so the scan was meaningful.
        let got: Value = h.get(&format!("/v1/customers/{id}"), "alice").send().await.unwrap().json().await.unwrap();
        assert_eq!(got["fields"]["mobile"], CANARY_MOBILE);
    }

    async fn ciphertext_moved_between_records_is_refused(h) {
        let a = h.create(canary_body()).await;
        let b = h.create(individual("3201")).await;
        // A's sealed mobile copied over B's.
        let n = h.sql("UPDATE customer_fields SET sealed = (SELECT sealed FROM customer_fields WHERE customer_id = $1 AND field = 'mobile') \
                       WHERE customer_id = $2 AND field = 'mobile'", &[Bind::Id(a), Bind::Id(b)]).await;
        assert_eq!(n, 1);
        assert_integrity_error(&h, b, &[CANARY_MOBILE, "13812345678"]).await;
        // A's whole data key and fields moved to B: the wrapped key is bound to A's id.
        let c = h.create(individual("3201")).await;
        h.sql("UPDATE customers SET wrapped_key = (SELECT wrapped_key FROM customers WHERE id = $1) WHERE id = $2", &[Bind::Id(a), Bind::Id(c)]).await;
        h.sql("DELETE FROM customer_fields WHERE customer_id = $1", &[Bind::Id(c)]).await;
        h.sql("INSERT INTO customer_fields (customer_id, field, sealed) SELECT $1, field, sealed FROM customer_fields WHERE customer_id = $2", &[Bind::Id(c), Bind::Id(a)]).await;
        assert_integrity_error(&h, c, &[CANARY_MOBILE, CANARY_NAME]).await;
        // A itself is untouched and still reads.
        let r = h.get(&format!("/v1/customers/{a}"), "alice").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn ciphertext_moved_between_fields_is_refused(h) {
        let a = h.create(canary_body()).await;
        h.sql("UPDATE customer_fields SET sealed = (SELECT sealed FROM customer_fields WHERE customer_id = $1 AND field = 'mobile') \
               WHERE customer_id = $1 AND field = 'email'", &[Bind::Id(a)]).await;
        assert_integrity_error(&h, a, &[CANARY_MOBILE, CANARY_EMAIL]).await;
        // Renaming the row instead of copying the bytes fails the same way.
        let b = h.create(canary_body()).await;
        h.sql("DELETE FROM customer_fields WHERE customer_id = $1 AND field = 'email'", &[Bind::Id(b)]).await;
        h.sql("UPDATE customer_fields SET field = 'email' WHERE customer_id = $1 AND field = 'mobile'", &[Bind::Id(b)]).await;
        assert_integrity_error(&h, b, &[CANARY_MOBILE]).await;
    }

    async fn replayed_flipped_and_truncated_ciphertext_is_refused(h) {
        let a = h.create(canary_body()).await;
        let old = h.sealed(a, "mobile").await;
        let r = h.patch(&format!("/v1/customers/{a}"), "alice", 1, &json!({"fields": {"mobile": "13700001111"}})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Replaying the version-1 ciphertext of the same field into version 2.
        h.sql("UPDATE customer_fields SET sealed = $1 WHERE customer_id = $2 AND field = 'mobile'", &[Bind::Bytes(old.clone()), Bind::Id(a)]).await;
        assert_integrity_error(&h, a, &[CANARY_MOBILE, "13700001111"]).await;

        let b = h.create(canary_body()).await;
        let sealed = h.sealed(b, "mobile").await;
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        h.sql("UPDATE customer_fields SET sealed = $1 WHERE customer_id = $2 AND field = 'mobile'", &[Bind::Bytes(flipped), Bind::Id(b)]).await;
        assert_integrity_error(&h, b, &[CANARY_MOBILE]).await;
        h.sql("UPDATE customer_fields SET sealed = $1 WHERE customer_id = $2 AND field = 'mobile'", &[Bind::Bytes(sealed[..20].to_vec()), Bind::Id(b)]).await;
        assert_integrity_error(&h, b, &[CANARY_MOBILE]).await;
        // An update over a tampered record is refused too, rather than re-sealing bad data.
        let r = h.patch(&format!("/v1/customers/{b}"), "alice", 1, &json!({"vip_level": 3})).send().await.unwrap();
        assert_eq!(r.status(), 500);
        // A wrapped key under an unknown KEK version is a key error, not data.
        let c = h.create(canary_body()).await;
        h.sql("UPDATE customers SET kek_version = 99 WHERE id = $1", &[Bind::Id(c)]).await;
        let r = h.get(&format!("/v1/customers/{c}"), "alice").send().await.unwrap();
        assert_eq!(r.status(), 500);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "key_unavailable");
    }
}

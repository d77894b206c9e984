//! Schema fuzzing: schemathesis (PyPI) generates requests from `/openapi.json` and checks
//! that no answer is a server error and that every answer conforms to the document (status
//! code, content type, headers, body schema). Three principals, so that customer, grant, key
//! and audit operations are all reached past the gate; a bounded, seeded number of examples.
//!
//! `.ci/run` installs schemathesis and sets `CUSTODIA_REQUIRE_SCHEMATHESIS=1`; elsewhere the
//! test says it was skipped when `st` is not on the PATH.
//!
//! Without the common responses the document adds to every operation
//! (`CommonResponses` in src/api/openapi.rs) this fails: a missing token's 401 and a
//! non-JSON body's 415 are undocumented statuses.

use std::io::Write;

use crate::support::*;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

fn schemathesis() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("st")).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var_os("CUSTODIA_REQUIRE_SCHEMATHESIS").is_none(),
            "CUSTODIA_REQUIRE_SCHEMATHESIS is set but schemathesis (`st`) is not on the PATH"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n*** schema fuzzing SKIPPED: schemathesis is not installed (pip install schemathesis) ***\n"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let Some(st) = schemathesis() else { return };
    // A private copy of the key file: the administrator's pass fuzzes key rotation, which
    // rewrites the file it was loaded from.
    let (_keys_dir, keys) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys).await;
    h.create(individual("3201")).await;
    let schema = h.url("/openapi.json");
    // schemathesis keeps a cache (and replays stored failures) in `.schemathesis/` of its
    // working directory: a scratch one, so every run is the seeded run and the checkout stays
    // clean.
    let scratch = tempfile::tempdir().unwrap();
    // One worker: with two, schemathesis generates in two threads of one Python process, and
    // hypothesis parsing its strategies' sources in both at once can trip a race in the `ast`
    // module of CI's CPython 3.11 ("AST constructor recursion depth mismatch", seen once in
    // CI), which schemathesis reports as a failure of the operation it was generating for.
    for (who, purpose) in [(ALICE, PURPOSE), (ROOT_ADMIN, "data_subject_request"), (ROOT_OFFICER, PURPOSE)] {
        let out = tokio::process::Command::new(&st)
            .current_dir(scratch.path())
            .args(["run", &schema, "--checks", CHECKS, "--max-examples", "25", "--seed", "1"])
            .args(["--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color"])
            .args(["-H", &format!("Authorization: Bearer {}", mint(who)), "-H", &format!("X-Purpose: {purpose}")])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text.lines().filter(|l| l.contains(" generated, ")).map(str::trim).collect::<Vec<_>>().join("; ");
        eprintln!("schemathesis as {who}: {summary}");
        assert!(
            out.status.success(),
            "schemathesis as {who} found failures:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

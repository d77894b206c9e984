//! Cost of an authorization decision: casbin evaluated per request versus the decision table
//! the vault evaluates once at start-up. Run with `cargo bench --bench authz`; prints ns/op.

use std::hint::black_box;
use std::time::Instant;

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use custodia::authz::policy::{BUILTIN_MODEL, BUILTIN_POLICY};
use custodia::authz::{Action, Policy};
use custodia::domain::Regions;

fn measure(name: &str, iterations: u32, mut f: impl FnMut() -> bool) {
    for _ in 0..iterations / 10 {
        black_box(f());
    }
    let start = Instant::now();
    let mut allowed = 0u32;
    for _ in 0..iterations {
        allowed += u32::from(black_box(f()));
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    println!("{name:<58} {ns:>10.1} ns/op  ({allowed} allowed)");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let lines = BUILTIN_POLICY.lines().filter(|l| l.starts_with("p,")).count();
    println!("policy: {lines} p lines");
    let model = DefaultModel::from_str(BUILTIN_MODEL).await.expect("model");
    let enforcer = Enforcer::new(model, StringAdapter::new(BUILTIN_POLICY)).await.expect("enforcer");
    measure("casbin enforce (agent, customer.read, customer_service)", 100_000, || {
        enforcer.enforce(("agent", "customer.read", "customer_service")).unwrap_or(false)
    });
    measure("casbin enforce, denied (admin, customer.read, billing)", 100_000, || {
        enforcer.enforce(("admin", "customer.read", "billing")).unwrap_or(false)
    });

    // A policy 20 times larger, as if grants were written into casbin.
    let mut big = String::from(BUILTIN_POLICY);
    for i in 0..(20 * lines) {
        big.push_str(&format!("p, role{i}, customer.read, customer_service\n"));
    }
    let model = DefaultModel::from_str(BUILTIN_MODEL).await.expect("model");
    let big_enforcer = Enforcer::new(model, StringAdapter::new(big)).await.expect("enforcer");
    measure(&format!("casbin enforce over {} p lines", 21 * lines), 10_000, || {
        big_enforcer.enforce(("agent", "customer.read", "customer_service")).unwrap_or(false)
    });

    let policy = Policy::builtin().await.expect("policy");
    measure("decision table (agent, customer.read, customer_service)", 10_000_000, || {
        policy.permits("agent", Action::ReadCustomer, "customer_service")
    });
    let regions = Regions::builtin();
    let (js, nj) = (regions.parse("32").expect("32"), regions.parse_city("3201").expect("3201"));
    measure("scope containment (32 contains 3201)", 10_000_000, || js.contains(&nj));
}

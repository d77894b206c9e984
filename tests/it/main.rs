//! Custodia's integration tests: one binary, one module per capability, all talking to a real
//! server over HTTP on an ephemeral port and to a real database (SQLite, and PostgreSQL when
//! `CUSTODIA_TEST_POSTGRES_URL` is set).

#[macro_use]
mod support;

mod audit;
mod auth;
mod authz;
mod browser;
mod cli;
mod console;
mod crash;
mod customers;
mod encryption;
mod faults;
mod gate;
mod idempotency;
mod lifecycle;
mod logs;
mod metrics;
mod oidc;
mod openapi;
mod ops;
mod schema;
mod views;

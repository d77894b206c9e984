//! Custodia: a customer data vault.
//!
//! The module layout is the architecture (see `docs/ARCHITECTURE.md`):
//! - [`api`] speaks HTTP and nothing else: routing, extraction, problem responses.
//! - [`auth`] turns a bearer token into a [`auth::Principal`]; it decides nothing about access.
//! - [`authz`] decides what a principal may do.
//! - [`vault`] holds the use cases and is the only place that combines authorization,
//!   validation, cryptography and storage.
//! - [`domain`] holds the customer model, the field catalogue, identifier validation, regions.
//! - [`crypto`] owns key material and envelope encryption.
//! - [`store`] owns SQL, behind one trait with a SQLite and a PostgreSQL implementation.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod background;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod mask;
pub mod store;
pub mod telemetry;
pub mod vault;

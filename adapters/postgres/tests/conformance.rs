//! The shared conformance suite against `PostgresStore` on a real server
//! (`CAIRN_PG_URL`; `cargo xtask test` starts one). Reopen = a new pool on
//! the same schema.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use cairn_postgres::LiveUpdates;
use common::PgFactory;

cairn_conformance::conformance_tests!(PgFactory::new(LiveUpdates::Listen));

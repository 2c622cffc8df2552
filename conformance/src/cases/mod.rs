//! The cases, one module per group. Every case is a plain
//! `pub async fn(&dyn StoreFactory) -> CaseResult`, so it can be called from
//! any harness; [`crate::conformance_tests!`] and [`crate::run_suite`] call
//! them all.

pub mod bad_input;
pub mod concurrency;
pub mod contract;
pub mod durability;
pub mod integrity;
pub mod interrupted;
pub mod model;
pub mod subscribe;
pub mod sync;

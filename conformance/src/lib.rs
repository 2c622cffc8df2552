#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod cases;
mod factory;
pub mod faults;
pub mod network;
pub mod util;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

pub use factory::StoreFactory;

/// Why a case failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<cairn::Error> for Failure {
    fn from(e: cairn::Error) -> Self {
        Failure(format!("unexpected store error: {e}"))
    }
}

/// The result of one case. `Ok(Outcome::Skipped)` when the store lacks a
/// capability the case needs.
pub type CaseResult = Result<Outcome, Failure>;

/// How a case that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// The case does not apply to this store (the reason says why).
    Skipped(&'static str),
}

/// Fail the current case unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Failure(format!($($fmt)+)));
        }
    };
}

/// Fail the current case unless the two values are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::Failure(format!(
                "{}\n  left: {:?}\n right: {:?}",
                format!($($fmt)+), l, r
            )));
        }
    }};
}

/// A boxed case future.
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// One case: its group, its name and its function.
#[derive(Clone, Copy)]
pub struct Case {
    /// The group ("contract", "sync", …).
    pub group: &'static str,
    /// The case name, in the contract's words.
    pub name: &'static str,
    /// Runs the case against stores from a factory.
    pub run: for<'a> fn(&'a dyn StoreFactory) -> CaseFuture<'a>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", self.group, self.name)
    }
}

/// Expands `$callback! { group::case, … }` over every case of the suite.
/// This list is the single source of truth for [`all_cases`] and
/// [`conformance_tests!`].
#[macro_export]
#[doc(hidden)]
macro_rules! __for_each_case {
    ($callback:ident ! $args:tt) => {
        $crate::$callback! { $args
            contract::append_stores_new_changes_and_reports_them,
            contract::append_is_idempotent_by_id,
            contract::append_dedups_repeats_within_a_batch,
            contract::empty_append_succeeds_and_changes_nothing,
            contract::append_accepts_missing_deps,
            contract::append_orders_deps_first_within_a_batch,
            contract::get_changes_returns_held_in_order_asked,
            contract::get_metas_matches_get_changes,
            contract::has_changes_answers_each_id,
            contract::find_new_changes_returns_exactly_the_unknown,
            contract::find_new_changes_for_doc_stays_in_doc,
            contract::all_change_ids_is_sorted_and_complete,
            contract::changes_for_doc_is_in_dependency_order,
            contract::changes_for_doc_from_snapshot_keeps_concurrent_branch,
            contract::changes_for_unknown_doc_is_empty,
            contract::scan_is_gapless_and_paged,
            contract::scan_with_zero_limit_is_empty,
            contract::head_counts_changes_and_keeps_epoch,
            contract::range_summary_matches_fingerprint,
            contract::ids_in_range_is_sorted_and_limited,
            contract::coded_symbols_encode_exactly_the_held_ids,
            contract::works_as_dyn_store_in_arc_and_box,
            subscribe::subscribe_delivers_every_append_once,
            subscribe::subscribe_skips_changes_before_it,
            subscribe::slow_subscriber_loses_nothing,
            sync::pull_copies_missing_changes,
            sync::push_copies_missing_changes,
            sync::bidirectional_sync_gives_union,
            sync::incremental_sync_examines_only_new_changes,
            sync::resync_changes_nothing,
            sync::three_stores_in_a_ring_converge,
            sync::sync_with_reference_store_both_ways,
            sync::sync_respects_batch_limits,
            sync::sync_reports_progress_and_can_be_cancelled,
            sync::sync_rejects_by_verifier_and_reports,
            sync::rejected_change_is_reexamined_by_the_next_sync,
            sync::stale_cursor_from_other_epoch_restarts,
            sync::cursor_saved_into_another_target_epoch_restarts,
            sync::reconciliation_sync_transfers_only_the_difference,
            sync::first_pull_into_an_empty_store_scans_in_bounded_batches,
            sync::tampered_change_in_transit_is_rejected_rest_arrive,
            interrupted::interrupted_pull_resumes_without_loss_or_duplicates,
            interrupted::interrupted_push_resumes_without_loss_or_duplicates,
            bad_input::tampered_payload_is_rejected_and_store_unchanged,
            bad_input::tampered_id_is_rejected_and_store_unchanged,
            bad_input::tampered_deps_are_rejected_and_store_unchanged,
            bad_input::bad_change_poisons_whole_batch,
            bad_input::bad_signature_rejected_by_verifying_sync,
            bad_input::wrong_store_id_sync_is_refused,
            integrity::stripped_signature_copy_cannot_shadow_the_genuine_change,
            integrity::garbled_signature_copy_cannot_shadow_the_genuine_change,
            bad_input::oversized_batch_is_refused,
            bad_input::oversized_payload_is_refused,
            concurrency::concurrent_appends_lose_nothing,
            concurrency::concurrent_scans_never_skip_a_sequence,
            concurrency::concurrent_duplicate_appends_store_once,
            model::model_random_operations_match_reference,
            model::convergence_random_histories_and_schedules,
            durability::reopen_keeps_everything_acknowledged,
            durability::reopen_keeps_epoch_and_continues_sequence,
            durability::reopen_keeps_doc_index_and_subscribe_works,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    ([] $($group:ident :: $case:ident),* $(,)?) => {
        &[$($crate::Case {
            group: stringify!($group),
            name: stringify!($case),
            run: |f| Box::pin($crate::cases::$group::$case(f)),
        }),*]
    };
}

/// Every case of the suite, in table order.
pub fn all_cases() -> &'static [Case] {
    __for_each_case!(__case_list![])
}

/// Expand the whole suite into one `#[tokio::test]` per case, inside a
/// module named `conformance`. `$factory` is an expression evaluated afresh
/// in each test.
///
/// ```ignore
/// cairn_conformance::conformance_tests!(MyFactory::new());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__for_each_case!(__emit_tests![$factory]);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit_tests {
    ([$factory:expr] $($group:ident :: $case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                $crate::run_case_or_panic(&factory, stringify!($group), stringify!($case), |f| {
                    Box::pin($crate::cases::$group::$case(f))
                })
                .await;
            }
        )*
    };
}

/// Run one case and panic with its failure message (used by
/// [`conformance_tests!`]).
pub async fn run_case_or_panic(
    factory: &dyn StoreFactory,
    group: &str,
    name: &str,
    run: for<'a> fn(&'a dyn StoreFactory) -> CaseFuture<'a>,
) {
    match run(factory).await {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => {
            println!("{group}::{name} skipped for {}: {why}", factory.name());
        }
        Err(f) => panic!("{group}::{name} failed for {}: {f}", factory.name()),
    }
}

/// One row of [`run_suite`]'s table.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case.
    pub case: Case,
    /// What happened.
    pub result: CaseResult,
    /// How long it took.
    pub elapsed: Duration,
}

/// Run every case (or those whose `group::name` contains `filter`) and
/// print a table; returns the rows. The caller decides what a failure means
/// (the `cairn conformance` command exits non-zero).
pub async fn run_suite(factory: &dyn StoreFactory, filter: Option<&str>) -> Vec<CaseReport> {
    let mut rows = Vec::new();
    println!("conformance suite for {}", factory.name());
    println!("{:<12} {:<64} {:>8}  result", "group", "case", "ms");
    for case in all_cases() {
        let full = format!("{}::{}", case.group, case.name);
        if filter.is_some_and(|f| !full.contains(f)) {
            continue;
        }
        let start = Instant::now();
        let result = (case.run)(factory).await;
        let elapsed = start.elapsed();
        let verdict = match &result {
            Ok(Outcome::Passed) => "pass".to_owned(),
            Ok(Outcome::Skipped(why)) => format!("skip ({why})"),
            Err(f) => format!("FAIL: {}", f.0.lines().next().unwrap_or("")),
        };
        println!(
            "{:<12} {:<64} {:>8}  {verdict}",
            case.group,
            case.name,
            elapsed.as_millis()
        );
        rows.push(CaseReport {
            case: *case,
            result,
            elapsed,
        });
    }
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    let skipped = rows
        .iter()
        .filter(|r| matches!(r.result, Ok(Outcome::Skipped(_))))
        .count();
    println!(
        "{} passed, {} failed, {} skipped",
        rows.len() - failed - skipped,
        failed,
        skipped
    );
    rows
}

/// The workspace README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;

//! The simulator's tests: determinism, many seeds, a replay entry point,
//! and proof that it catches a broken store.

use cairn_sim::{Outcome, SimOptions, run, run_seeds};

fn report(failures: &[Outcome]) -> String {
    failures
        .iter()
        .take(5)
        .map(|o| {
            format!(
                "seed {} failed: {:?}\n  replay: {}",
                o.seed,
                o.violations.iter().take(3).collect::<Vec<_>>(),
                o.replay_command()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn same_seed_same_schedule() {
    for seed in [1, 7, 42, 1234] {
        let a = run(seed, SimOptions::default());
        let b = run(seed, SimOptions::default());
        assert!(a.events > 0);
        assert_eq!(a.trace, b.trace, "seed {seed} is not deterministic");
        assert_eq!(a.violations, b.violations);
    }
    assert_ne!(
        run(1, SimOptions::default()).trace,
        run(2, SimOptions::default()).trace
    );
}

#[test]
fn thousand_seeds() {
    let start = std::time::Instant::now();
    let failures = run_seeds(0, 1_000, SimOptions::default());
    let took = start.elapsed();
    eprintln!(
        "1000 seeds in {took:?} ({:.0} seeds/s)",
        1000.0 / took.as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", report(&failures));
}

/// Replays `CAIRN_SIM_SEED` (default 0) and prints its trace.
#[test]
fn replay() {
    let seed = std::env::var("CAIRN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let o = run(seed, SimOptions::default());
    eprintln!(
        "seed {seed}: trace {} ({} events, {} authored, {} transferred, {} failed syncs, {} unsolicited, {} restarts)",
        o.trace, o.events, o.authored, o.transferred, o.failed_syncs, o.unsolicited, o.restarts
    );
    assert!(o.passed(), "{}", report(&[o]));
}

#[test]
fn a_broken_store_is_caught_with_its_seed() {
    let opts = SimOptions {
        broken_drop_every: Some(3),
        ..SimOptions::default()
    };
    let failures = run_seeds(0, 50, opts);
    assert!(
        !failures.is_empty(),
        "the simulator missed a store that drops changes"
    );
    let o = &failures[0];
    assert!(
        o.violations
            .iter()
            .any(|v| v.contains("broken store") || v.contains("holds")),
        "{:?}",
        o.violations
    );
    assert!(
        o.replay_command()
            .contains(&format!("CAIRN_SIM_SEED={}", o.seed))
    );
    // The failing seed fails the same way again.
    let again = run(o.seed, opts);
    assert_eq!(again.trace, o.trace);
    assert_eq!(again.violations, o.violations);
}

#[test]
#[ignore]
fn stress_100k_seeds() {
    let from = std::env::var("CAIRN_SIM_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let start = std::time::Instant::now();
    let mut failures = Vec::new();
    // In tenths, with progress (a long run says how far it got).
    for tenth in 0..10u64 {
        failures.extend(run_seeds(
            from + tenth * 10_000,
            10_000,
            SimOptions::default(),
        ));
        let took = start.elapsed();
        eprintln!(
            "{} seeds in {took:?} ({:.0} seeds/s), {} failed",
            (tenth + 1) * 10_000,
            ((tenth + 1) * 10_000) as f64 / took.as_secs_f64(),
            failures.len()
        );
    }
    assert!(failures.is_empty(), "{}", report(&failures));
}

#[test]
fn a_store_that_keeps_refused_changes_is_caught() {
    let opts = SimOptions {
        broken_accept_all: true,
        ..SimOptions::default()
    };
    let failures = run_seeds(0, 100, opts);
    assert!(
        !failures.is_empty(),
        "the simulator missed a peer storing refused changes"
    );
    let o = &failures[0];
    assert!(
        o.violations.iter().any(|v| v.contains("policy refuses")),
        "{:?}",
        o.violations
    );
    assert_eq!(run(o.seed, opts).violations, o.violations);
}

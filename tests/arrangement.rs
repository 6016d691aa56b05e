//! The statistics as a difference type inside a real differential arrangement: records
//! added and then retracted (in another grouping and order) leave nothing behind, even
//! though their floating-point sums never cancel exactly.

use differential_dataflow::input::Input;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use proptest::prelude::*;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::progress::frontier::AntichainRef;
use tributary::{Pane, Stats};

type Row = (u8, i64, Vec<f64>);

/// Entries (key, pane, accumulated diff) left in the arrangement after the updates.
fn remaining(adds: Vec<Row>, removes: Vec<Row>) -> Vec<(String, Pane, Stats)> {
    timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        let (mut input, mut trace) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<(String, Pane), Stats>();
            let arranged = collection.arrange_by_key();
            arranged.stream.clone().probe_with(&probe);
            (input, arranged.trace)
        });
        let pane = |t: i64| Pane {
            start: t.div_euclid(10) * 10,
            end: t.div_euclid(10) * 10 + 10,
        };
        for (round, rows) in [adds, removes].into_iter().enumerate() {
            for (key, t, z) in rows {
                let mut stats = Stats::of_row(&z);
                if round == 1 {
                    differential_dataflow::difference::Abelian::negate(&mut stats);
                }
                input.update((format!("k{key}"), pane(t)), stats);
            }
            input.advance_to(round as u64 + 1);
            input.flush();
            trace.set_logical_compaction(AntichainRef::new(&[round as u64 + 1]));
            trace.set_physical_compaction(AntichainRef::new(&[round as u64 + 1]));
            worker.step_while(|| probe.less_than(input.time()));
        }
        // Physical merging is lazy: let empty epochs go by so the spine merges the
        // additions with their retractions and drops what accumulates to zero.
        for round in 3..64u64 {
            input.advance_to(round);
            input.flush();
            trace.set_logical_compaction(AntichainRef::new(&[round]));
            trace.set_physical_compaction(AntichainRef::new(&[round]));
            worker.step_while(|| probe.less_than(input.time()));
        }
        let batches = trace.batches_through(AntichainRef::new(&[])).unwrap();
        let (mut cursor, storage) = cursor_list(batches);
        let mut left = Vec::new();
        while let Some(key) = cursor.get_key(&storage) {
            while let Some(pane) = cursor.get_val(&storage) {
                let mut total = Stats::zero();
                cursor.map_times(&storage, |_, d| {
                    differential_dataflow::difference::Semigroup::plus_equals(&mut total, d)
                });
                left.push((key.clone(), *pane, total));
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        left
    })
}

fn rows(d: usize) -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            0u8..4,
            0i64..100,
            prop::collection::vec(-1e6f64..1e6, d + 1),
        ),
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn adding_then_retracting_leaves_the_arrangement_empty(
        (adds, order) in (1usize..5).prop_flat_map(rows).prop_flat_map(|adds| {
            let n = adds.len();
            (Just(adds), Just(()).prop_perturb(move |_, mut rng| {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                order
            }))
        })
    ) {
        let removes: Vec<Row> = order.iter().map(|&i| adds[i].clone()).collect();
        let left = remaining(adds.clone(), removes);
        prop_assert!(left.iter().all(|(_, _, s)| s.n == 0), "non-empty entries remain: {left:?}");
        prop_assert!(left.is_empty(), "zero entries were not dropped: {left:?}");
    }

    #[test]
    fn partial_retraction_leaves_exact_counts(rows in rows(2)) {
        let half: Vec<Row> = rows.iter().step_by(2).cloned().collect();
        let left = remaining(rows.clone(), half.clone());
        let mut expected = std::collections::BTreeMap::new();
        for (i, (key, t, _)) in rows.iter().enumerate() {
            if i % 2 == 1 {
                *expected.entry((format!("k{key}"), t.div_euclid(10) * 10)).or_insert(0i64) += 1;
            }
        }
        let got: std::collections::BTreeMap<_, _> =
            left.iter().filter(|(_, _, s)| s.n != 0).map(|(k, p, s)| ((k.clone(), p.start), s.n)).collect();
        prop_assert_eq!(got, expected);
    }
}

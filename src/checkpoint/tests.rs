//! The store's write, fold and recovery protocol, on real RocksDB stores.

use std::path::{Path, PathBuf};

use super::*;
use crate::stats::Stats;
use crate::window::{Pane, Time};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pane(start: Time) -> Pane {
    Pane {
        start,
        end: start + 10,
    }
}

fn part(epoch: Epoch, worker: usize) -> Part {
    Part {
        generation: 1,
        epoch,
        worker,
        emitted: vec![],
        puts: 0,
        deletes: 0,
    }
}

fn commit(epoch: Epoch) -> Commit {
    Commit {
        generation: 1,
        epoch,
        workers: 2,
        processes: 1,
        max_seen: vec![100, 200],
        out_offset: Some(7),
        late_offset: None,
        unix_ms: 0,
    }
}

fn state(dir: &Path) -> (Epoch, Vec<(String, Pane, i64)>) {
    let r = recover(dir, "df").unwrap().unwrap();
    let panes = r.panes.into_iter().map(|(k, p, s)| (k, p, s.n)).collect();
    (r.commit.unwrap().epoch, panes)
}

#[test]
fn incomplete_epochs_are_ignored_and_folding_keeps_the_state() {
    let dir = Dir(std::env::temp_dir().join(format!("tributary-ckpt-unit-{}", std::process::id())));
    let store = Store::open(&dir.0, 0, "df").unwrap();
    let s = |n: usize| {
        let mut st = Stats::with_features(1);
        for i in 0..n {
            st.add_row(&[i as f64, 1.0]);
        }
        st
    };
    store
        .write_part(&part(5, 0), &[("a".into(), pane(0), Some(s(1)))])
        .unwrap();
    store
        .write_part(&part(5, 1), &[("b".into(), pane(0), Some(s(2)))])
        .unwrap();
    store.write_commit(&commit(5)).unwrap();
    // Epoch 9: worker 0 wrote its part, worker 1 did not, nothing committed.
    store
        .write_part(
            &part(9, 0),
            &[
                ("a".into(), pane(0), None),
                ("c".into(), pane(10), Some(s(3))),
            ],
        )
        .unwrap();
    drop(store);
    let expected = vec![("a".to_owned(), pane(0), 1), ("b".to_owned(), pane(0), 2)];
    assert_eq!(state(&dir.0), (5, expected));

    // Once epoch 9 is complete, its changes count; folding does not change the state.
    let store = Store::open(&dir.0, 0, "df").unwrap();
    store.write_part(&part(9, 1), &[]).unwrap();
    store.write_commit(&commit(9)).unwrap();
    store.fold(1, 0, 9).unwrap();
    store.fold(1, 1, 9).unwrap();
    drop(store);
    let expected = vec![("b".to_owned(), pane(0), 2), ("c".to_owned(), pane(10), 3)];
    assert_eq!(state(&dir.0), (9, expected));

    // Another dataflow is refused.
    assert!(matches!(
        recover(&dir.0, "other"),
        Err(CheckpointError::Fingerprint { .. })
    ));
    assert!(matches!(
        Store::open(&dir.0, 0, "other"),
        Err(CheckpointError::Fingerprint { .. })
    ));
}

#[test]
fn stores_of_another_generation_missing_or_locked_are_refused_by_name() {
    let dir = Dir(std::env::temp_dir().join(format!("tributary-ckpt-mix-{}", std::process::id())));
    let part_of = |generation, worker| Part {
        generation,
        ..part(5, worker)
    };
    // Generation 2 of a 2-process run: process 0 holds worker 0's part and the
    // commit; process 1's store holds only generation 1 (a stale copy).
    let first = Store::open(&dir.0, 0, "df").unwrap();
    first.write_part(&part_of(2, 0), &[]).unwrap();
    first
        .write_commit(&Commit {
            generation: 2,
            processes: 2,
            ..commit(5)
        })
        .unwrap();
    drop(first);
    let second = Store::open(&dir.0, 1, "df").unwrap();
    second.write_part(&part_of(1, 1), &[]).unwrap();
    // A second writer of the same store, even in this process, is refused by name.
    let locked = Store::open(&dir.0, 1, "df").err().expect("refused");
    assert!(matches!(locked, CheckpointError::Locked { .. }), "{locked}");
    let message = locked.to_string();
    assert!(message.contains("in use by another process"), "{message}");
    assert!(message.contains("process-1/LOCK"), "{message}");
    drop(second);
    let message = recover(&dir.0, "df").expect_err("refused").to_string();
    for part in [
        "process-1: the store of process 1 holds generation 1, not generation 2",
        "it is older",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    // A newer one names process 0's store as the stale one.
    let second = Store::open(&dir.0, 1, "df").unwrap();
    second.write_part(&part_of(3, 1), &[]).unwrap();
    drop(second);
    let message = recover(&dir.0, "df").expect_err("refused").to_string();
    assert!(message.contains("holds generations 1 to 3"), "{message}");
    assert!(
        message.contains("process-0: that store is the stale one"),
        "{message}"
    );
    // The right one is read.
    let second = Store::open(&dir.0, 1, "df").unwrap();
    second.write_part(&part_of(2, 1), &[]).unwrap();
    drop(second);
    assert_eq!(state(&dir.0), (5, vec![]));
    // A missing store of the checkpoint: the shared directory is not shared.
    std::fs::remove_dir_all(process_dir(&dir.0, 1)).unwrap();
    let message = recover(&dir.0, "df").expect_err("refused").to_string();
    assert!(
        message.contains("the store of process 1 does not exist here"),
        "{message}"
    );
    assert!(message.contains("directory all of them share"), "{message}");
    // Process 1 with its store but without process 0's: not started over.
    Store::open(&dir.0, 1, "df").unwrap();
    std::fs::remove_dir_all(process_dir(&dir.0, 0)).unwrap();
    assert!(recover(&dir.0, "df").unwrap().is_none());
    let message = Store::open(&dir.0, 1, "df")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("process 0's store") && message.contains("does not exist here"),
        "{message}"
    );
}

#[test]
fn verify_names_a_missing_part_and_a_store_without_identity_is_refused() {
    let dir =
        Dir(std::env::temp_dir().join(format!("tributary-ckpt-verify-{}", std::process::id())));
    let store = Store::open(&dir.0, 0, "df").unwrap();
    store.write_part(&part(5, 0), &[]).unwrap();
    store.write_commit(&commit(5)).unwrap();
    drop(store);
    let report = verify::verify(&dir.0).unwrap();
    assert!(report.is_damaged(), "{}", report.text);
    assert!(
        report.damage[0].contains("worker 1's part of committed epoch 5"),
        "{:?}",
        report.damage
    );
    assert!(report.older.is_none());
    assert!(matches!(
        recover(&dir.0, "df"),
        Err(CheckpointError::Incomplete { .. })
    ));

    // Once the part is there, the chain is intact.
    let store = Store::open(&dir.0, 0, "df").unwrap();
    store.write_part(&part(5, 1), &[]).unwrap();
    // Without its identity record, the store is damaged: not started over.
    store.db.delete(keys::META).unwrap();
    drop(store);
    for error in [
        Store::open(&dir.0, 0, "df").err(),
        recover(&dir.0, "df").err(),
    ] {
        let message = error.expect("refused").to_string();
        assert!(message.contains("identity record"), "{message}");
        assert!(message.contains("is damaged"), "{message}");
    }
    let report = verify::verify(&dir.0).unwrap();
    assert_eq!(report.damage.len(), 1, "{}", report.text);
    assert!(report.damage[0].contains("identity record"));
}

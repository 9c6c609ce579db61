//! Segments and compaction restore the state they were cut from.

use super::*;
use crate::calendar::Calendar;
use crate::event::{Activity, ActivityType, Event};
use crate::state::Origin;

fn call(id: &str, rep: &str, t: Micros) -> Event {
    Event::Activity(Activity {
        event_id: id.into(),
        occurred_at: t,
        rep_id: rep.into(),
        activity_type: ActivityType::Call,
        duration_s: Some(60),
        outcome: Some("connected".into()),
        deal_id: None,
        account_id: None,
    })
}

/// Cuts `s` as snapshot `id` onto `m`, compacting past `limit`; the files go to `files`.
fn cut(
    s: &mut State,
    m: &Manifest,
    id: u64,
    limit: usize,
    files: &mut BTreeMap<SegmentRef, Segment>,
) -> Manifest {
    let at = SegmentRef {
        snapshot_id: id,
        base: false,
    };
    s.snapshot_id = id;
    let dirty = s.take_dirty();
    let cut = s.encode_segment(&dirty, false, at).unwrap();
    files.insert(at, Segment::decode(&cut.bytes).unwrap());
    let mut next = m.next(s.head(), at, &cut.parts);
    let long = next.overlong(limit);
    if !long.is_empty() {
        let base_at = SegmentRef {
            snapshot_id: id,
            base: true,
        };
        // One part at a time, as a compaction merges them in batches.
        let mut base = SegmentBuilder::new(base_at);
        for k in &long {
            let one = BTreeSet::from([*k]);
            let mut merge = Merge::new(&next, Some(&one));
            for r in next.files(Some(&one)) {
                merge.add(files[&r].clone());
            }
            merge.add_to(&mut base).unwrap();
        }
        let base = base.finish().unwrap();
        next.rebase(&long, &base);
        files.insert(base_at, Segment::decode(&base.bytes).unwrap());
    }
    next
}

fn restored(m: &Manifest, files: &BTreeMap<SegmentRef, Segment>) -> State {
    let mut merge = Merge::new(m, None);
    for r in m.files(None) {
        merge.add(files[&r].clone());
    }
    merge.state()
}

#[test]
fn deltas_and_compaction_restore_the_state_and_chains_stay_bounded() {
    let cal = Calendar::default();
    let horizon = 3 * MICROS_PER_DAY;
    let mut s = State::default();
    let mut m = Manifest::default();
    let mut files = BTreeMap::new();
    for snap in 1..=30u64 {
        for i in 0..20 {
            let t = (snap as i64) * MICROS_PER_DAY / 2 + i;
            let rep = format!("r{}", i % 7);
            s.fold(
                call(&format!("e{snap}-{i}"), &rep, t),
                Origin::default(),
                &cal,
                horizon,
            );
        }
        s.prune(horizon);
        m = cut(&mut s, &m, snap, 3, &mut files);
        assert!(m.chains.values().all(|c| c.len() <= 3), "snapshot {snap}");
        let r = restored(&m, &files);
        assert_eq!(r, s, "snapshot {snap}");
        assert_eq!(r.daily, s.daily);
        assert_eq!(r.seen_activities, s.seen_activities);
        assert_eq!(r.rep_ids, s.rep_ids);
    }
    // The last delta holds only what the last cut touched: 20 activities on one day.
    let last = &files[&SegmentRef {
        snapshot_id: 30,
        base: false,
    }];
    let rows: usize = last
        .parts
        .iter()
        .map(|p| match &p.data {
            PartData::Daily(r) => r.len(),
            PartData::Seen(r) => r.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(rows, 7 + 20);
    // Weeks wholly under the prune floor left the manifest.
    let floor = s.seen_floor.unwrap();
    assert!(m
        .chains
        .keys()
        .filter(|k| k.kind == Kind::Seen)
        .all(|k| k.period >= floor_week(floor)));
}

#[test]
fn a_whole_part_starts_its_chain_again() {
    let m = Manifest::default();
    let k = key(Kind::DeadLetters, 0);
    let at = |id| SegmentRef {
        snapshot_id: id,
        base: false,
    };
    let m = m.next(Head::default(), at(1), &[(k, true)]);
    let m = m.next(Head::default(), at(2), &[(k, true)]);
    assert_eq!(m.chains[&k], vec![at(2)]);
    let d = key(Kind::Daily, 5);
    let m = m.next(Head::default(), at(3), &[(d, false)]);
    let m = m.next(Head::default(), at(4), &[(d, false)]);
    assert_eq!(m.chains[&d], vec![at(3), at(4)]);
}

/// A survey response is held boxed with its ids inline, and its rows in a segment are the
/// bytes they were when it held `String`s: segments written before still restore.
#[test]
fn a_survey_response_is_held_boxed_and_segments_hold_it_as_before() {
    let s = Survey {
        response_id: "resp-7-000123".into(),
        occurred_at: 1_700_000_000_000_000,
        rep_id: "rep-0042".into(),
        survey: "pulse-3".into(),
        score: 9,
        comment: Some("a comment longer than twenty-three bytes".into()),
    };
    assert!(!s.response_id.is_heap_allocated() && !s.rep_id.is_heap_allocated());
    let row: (SmolStr, Box<Survey>) = (s.response_id.clone(), Box::new(s.clone()));
    let as_strings = (
        "resp-7-000123".to_string(),
        (
            "resp-7-000123".to_string(),
            s.occurred_at,
            "rep-0042".to_string(),
            "pulse-3".to_string(),
            9i64,
            Some("a comment longer than twenty-three bytes".to_string()),
        ),
    );
    let bytes = bincode::serialize(&row).unwrap();
    assert_eq!(bytes, bincode::serialize(&as_strings).unwrap());
    assert_eq!(
        bincode::deserialize::<(SmolStr, Box<Survey>)>(&bytes).unwrap(),
        row
    );
}

//! Paging cases of the [`HistoryStore`] conformance suite.

use std::sync::Arc;

use chat_core::events::RoomEvent;
use chat_core::{RoomId, UserId};

use super::{msg, ok, seqs};
use crate::{HistoryStore, PageRange};

fn range(after: Option<u64>, before: Option<u64>, limit: u32) -> PageRange {
    PageRange {
        before,
        after,
        limit,
    }
}

/// (after, before, limit, expected seqs, expected more, why).
type Case = (
    Option<u64>,
    Option<u64>,
    u32,
    &'static [u64],
    bool,
    &'static str,
);

pub(super) async fn page_cases(make: &impl Fn() -> Arc<dyn HistoryStore>) {
    pages_respect_bounds_limits_and_more(make().as_ref()).await;
    pages_of_empty_or_unknown_rooms_are_empty(make().as_ref()).await;
}

/// Room with events 1..=10 (plus a neighbour room that must never leak in).
async fn pages_respect_bounds_limits_and_more(store: &dyn HistoryStore) {
    let (r, neighbour) = (RoomId::generate(), RoomId::generate());
    let a = UserId::generate();
    let events: Vec<RoomEvent> = (1..=10)
        .map(|s| msg(&r, s, &a, &format!("c{s}"), &format!("m{s}")))
        .chain((1..=20).map(|s| msg(&neighbour, s, &a, &format!("c{s}"), "n")))
        .collect();
    // Stored in reverse to prove pages are ordered by seq, not insertion.
    let mut reversed = events.clone();
    reversed.reverse();
    ok(store.append_events(&reversed).await, "append");

    let cases: &[Case] = &[
        (None, None, 3, &[8, 9, 10], true, "newest page"),
        (
            None,
            None,
            10,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            false,
            "exactly all",
        ),
        (
            None,
            None,
            500,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            false,
            "limit above count (store does not cap)",
        ),
        (None, Some(8), 3, &[5, 6, 7], true, "newest before 8"),
        (
            None,
            Some(4),
            5,
            &[1, 2, 3],
            false,
            "before reaches the start",
        ),
        (None, Some(1), 5, &[], false, "nothing before 1"),
        (Some(2), None, 3, &[3, 4, 5], true, "oldest after 2"),
        (
            Some(0),
            None,
            3,
            &[1, 2, 3],
            true,
            "after 0 is from the start",
        ),
        (
            Some(7),
            None,
            5,
            &[8, 9, 10],
            false,
            "after reaches the end",
        ),
        (Some(10), None, 5, &[], false, "nothing after the last"),
        (Some(2), Some(6), 10, &[3, 4, 5], false, "between, all"),
        (
            Some(2),
            Some(6),
            2,
            &[3, 4],
            true,
            "between, oldest first with after",
        ),
        (None, Some(6), 2, &[4, 5], true, "before only, newest first"),
        (Some(5), Some(6), 3, &[], false, "empty open interval"),
        (
            None,
            None,
            0,
            &[],
            true,
            "limit 0 returns nothing but reports more",
        ),
        (Some(9), None, 0, &[], true, "limit 0 with after"),
        (Some(10), None, 0, &[], false, "limit 0 past the end"),
        (None, Some(u64::MAX), 2, &[9, 10], true, "huge before bound"),
    ];
    for (after, before, limit, want, want_more, why) in cases {
        let got = ok(store.page(&r, range(*after, *before, *limit)).await, "page");
        assert_eq!(
            (seqs(&got.events), got.more),
            (want.to_vec(), *want_more),
            "page {why}: after={after:?} before={before:?} limit={limit}"
        );
        assert!(
            got.events.iter().all(|e| e.room == r),
            "page {why}: only the asked room's events"
        );
    }
    let full = ok(store.page(&r, range(None, None, 10)).await, "page");
    assert_eq!(
        full.events,
        events[..10].to_vec(),
        "page: events are returned whole"
    );
}

async fn pages_of_empty_or_unknown_rooms_are_empty(store: &dyn HistoryStore) {
    let r = RoomId::generate();
    for (after, before, limit) in [(None, None, 10), (Some(0), None, 10), (None, None, 0)] {
        let got = ok(
            store.page(&r, range(after, before, limit)).await,
            "page unknown room",
        );
        assert!(
            got.events.is_empty() && !got.more,
            "page: a room without events gives an empty page without more, got {got:?}"
        );
    }
}

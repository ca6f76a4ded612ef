//! The SQLite backend passes the shared conformance suites, in memory and on
//! a file that survives reopening.

use std::sync::Arc;

use chat_core::svc::Room;
use chat_core::{RoomId, UserId};
use chat_store::conformance::{
    history_store_suite, service_account_store_suite, session_store_suite, user_store_suite,
};
use chat_store::{
    HistoryStore, Identity, PageRange, ServiceAccountStore, SessionStore, SqliteStore, UserStore,
};

fn memory() -> SqliteStore {
    SqliteStore::in_memory().expect("in-memory sqlite opens")
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_user_store_suite() {
    user_store_suite(|| Arc::new(memory()) as Arc<dyn UserStore>).await;
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_history_store_suite() {
    history_store_suite(|| Arc::new(memory()) as Arc<dyn HistoryStore>).await;
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_session_store_suite() {
    session_store_suite(|| Arc::new(memory()) as Arc<dyn SessionStore>).await;
}

#[tokio::test]
async fn sqlite_in_memory_passes_the_service_account_store_suite() {
    service_account_store_suite(|| Arc::new(memory()) as Arc<dyn ServiceAccountStore>).await;
}

#[tokio::test]
async fn sqlite_file_shared_by_all_cases_passes_both_suites() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("nested/dir/chat.db")).expect("file opens");
    let s = store.clone();
    history_store_suite(move || Arc::new(s.clone()) as Arc<dyn HistoryStore>).await;
    let s = store.clone();
    session_store_suite(move || Arc::new(s.clone()) as Arc<dyn SessionStore>).await;
    user_store_suite(move || Arc::new(store.clone()) as Arc<dyn UserStore>).await;
}

#[tokio::test]
async fn a_reopened_file_keeps_users_rooms_members_and_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let room = Room {
        id: RoomId::generate(),
        name: "kept".into(),
        created_by: UserId::generate(),
        created_at: 5,
    };
    let user = {
        let store = SqliteStore::open(&path).expect("open");
        let user = store
            .upsert_user(&Identity {
                issuer: "iss".into(),
                subject: "sub".into(),
                name: "N".into(),
                email: None,
            })
            .await
            .expect("upsert");
        store.create_room(&room).await.expect("create room");
        store
            .add_member(&room.id, &user.id, 6)
            .await
            .expect("add member");
        let ev = chat_core::events::RoomEvent {
            v: 1,
            room: room.id.clone(),
            seq: 1,
            ts: 7,
            from: user.id.clone(),
            body: chat_core::events::EventBody::Member {
                user: user.id.clone(),
                op: chat_core::events::MemberOp::Join,
            },
        };
        assert_eq!(store.append_events(&[ev]).await.expect("append"), 1);
        user
    };
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        store.get_user(&user.id).await.expect("get user"),
        Some(user.clone())
    );
    assert_eq!(
        store.get_room(&room.id).await.expect("get room"),
        Some(room.clone())
    );
    assert_eq!(
        store.rooms_of(&user.id).await.expect("rooms"),
        vec![room.id.clone()]
    );
    assert_eq!(store.last_seq(&room.id).await.expect("last seq"), 1);
    let page = store
        .page(
            &room.id,
            PageRange {
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page.events.len(), 1);
}

#[tokio::test]
async fn reads_do_not_wait_behind_a_write_waiting_for_another_process_lock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path).expect("open");
    let (user, room) = (UserId::generate(), RoomId::generate());
    store
        .create_room(&Room {
            id: room.clone(),
            name: "r".into(),
            created_by: user.clone(),
            created_at: 1,
        })
        .await
        .expect("create room");
    store.add_member(&room, &user, 2).await.expect("member");
    // Another process holds the write lock: a write now waits (up to the
    // 5 s busy timeout) holding the store's writing connection.
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other.execute_batch("BEGIN EXCLUSIVE").expect("write lock");
    let writer = store.clone();
    let (w_room, w_user) = (room.clone(), user.clone());
    let ev = chat_core::events::RoomEvent {
        v: 1,
        room: w_room,
        seq: 1,
        ts: 3,
        from: w_user.clone(),
        body: chat_core::events::EventBody::Member {
            user: w_user,
            op: chat_core::events::MemberOp::Join,
        },
    };
    let write = tokio::spawn(async move { writer.append_events(&[ev]).await });
    // Several reads, so that at least the later ones come while the write
    // holds the writing connection: each is answered while it still waits.
    for _ in 0..5 {
        tokio::task::yield_now().await;
        assert_eq!(
            store.rooms_of(&user).await.expect("rooms"),
            vec![room.clone()]
        );
        assert!(store.is_member(&room, &user).await.expect("member"));
        assert!(
            !write.is_finished(),
            "the read waited for the blocked write"
        );
    }
    other.execute_batch("COMMIT").expect("release");
    assert_eq!(
        write
            .await
            .expect("task")
            .expect("the write goes through once released"),
        1
    );
}

//! What a session's token allows. A person's token has no scopes: the
//! person may do whatever their memberships allow. A service account's
//! token carries scopes, and each request needs its capability and a
//! `room:<id>` grant for the room it touches (on top of membership):
//! `send` needs `rooms:post`, `history` `rooms:read`, `room.join` and
//! `room.leave` `rooms:join`, `room.create` `rooms:create`.

use std::collections::HashSet;
use std::sync::Arc;

use chat_core::RoomId;
use chat_core::wire::ClientFrame;

use crate::error::GatewayError;

/// The scopes of a session's token; `None` for people.
#[derive(Debug, Clone, Default)]
pub struct Scopes(Option<Arc<HashSet<String>>>);

impl Scopes {
    /// From a token's `scope` claim (empty: a person).
    pub fn from_claims(scopes: Vec<String>) -> Self {
        if scopes.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(scopes.into_iter().collect())))
        }
    }

    /// True for a person's session.
    pub fn is_person(&self) -> bool {
        self.0.is_none()
    }

    fn has(&self, scope: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.contains(scope))
    }

    fn allows(&self, capability: &str, room: Option<&RoomId>) -> Result<(), GatewayError> {
        if !self.has(capability) {
            return Err(GatewayError::Forbidden(format!(
                "this token lacks the scope {capability}"
            )));
        }
        if let Some(room) = room
            && !self.has(&format!("room:{room}"))
        {
            return Err(GatewayError::Forbidden(format!(
                "this token has no grant for room {room}"
            )));
        }
        Ok(())
    }

    /// Whether this session may make `frame`'s request.
    pub fn check(&self, frame: &ClientFrame) -> Result<(), GatewayError> {
        if self.is_person() {
            return Ok(());
        }
        match frame {
            ClientFrame::Send { room, .. } => self.allows("rooms:post", Some(room)),
            ClientFrame::History { room, .. } => self.allows("rooms:read", Some(room)),
            ClientFrame::RoomJoin { room, .. } | ClientFrame::RoomLeave { room, .. } => {
                self.allows("rooms:join", Some(room))
            }
            ClientFrame::RoomCreate { .. } => self.allows("rooms:create", None),
            ClientFrame::RoomsList { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Auth { .. }
            | ClientFrame::Hello { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn send(r: &str) -> ClientFrame {
        ClientFrame::Send {
            id: chat_core::ClientMsgId::parse("c1").unwrap_or_else(|e| panic!("{e}")),
            room: room(r),
            text: "x".into(),
            retry: false,
        }
    }

    #[test]
    fn a_grant_for_one_room_does_not_reach_another() {
        let s = Scopes::from_claims(vec!["rooms:post".into(), "room:a".into()]);
        assert!(s.check(&send("a")).is_ok());
        assert!(s.check(&send("b")).is_err());
        let history = ClientFrame::History {
            id: None,
            room: room("a"),
            before: None,
            after: None,
            limit: None,
        };
        assert!(s.check(&history).is_err(), "post does not imply read");
        let create = ClientFrame::RoomCreate {
            id: None,
            name: "n".into(),
        };
        assert!(s.check(&create).is_err());
        assert!(
            Scopes::from_claims(vec![]).check(&send("b")).is_ok(),
            "people"
        );
    }
}

//! chat-presence
